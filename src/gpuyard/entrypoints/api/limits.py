"""A cap on request bodies: one over the cap is refused with 413 as soon as it shows, never read whole."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The largest valid submission is about 4.2 MB of JSON (256 environment variables of 16 KiB, a 64 KiB
# command); \u-escaped non-ASCII text can triple that. Anything larger cannot be a valid request.
MiB = 1024 * 1024
MAX_BODY_BYTES = 16 * MiB


def too_large(max_bytes: int) -> HTTPException:
    size = f"{max_bytes // MiB} MiB" if max_bytes % MiB == 0 else f"{max_bytes} bytes"
    return HTTPException(
        413,
        f"The request body is larger than {size}: no valid request is that large. "
        "Put a long command in a script, and large settings in a file the job reads.",
    )


def declared_length(scope: Scope) -> int | None:
    """The Content-Length as a number; None when absent or not a number. Any length of more than 20 digits
    reads as 10**20, so no header is too long to convert."""
    value = Headers(scope=scope).get("content-length")
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else 10**20


class BodySizeLimit:
    """ASGI middleware. A declared Content-Length over `max_bytes`, or a streamed body that grows past it,
    raises 413 (HTTPException) when the route reads the body; the error handlers turn it into the usual
    error body. GET and HEAD requests pass untouched: no route reads their bodies, and a streamed answer's
    disconnect watch must not fail on one."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if declared is not None and declared > self.max_bytes:
                raise too_large(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)
