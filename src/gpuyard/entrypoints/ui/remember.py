"""Keeping a sign-in for the browser session, so that reloading the tab does not ask for the token again.

The token never reaches the browser. After a sign-in, the page loads a one-time link (a ticket) whose
answer sets a session cookie (no expiry: the browser drops it when it closes; HttpOnly, SameSite=Strict)
holding a random session id. A new page session in the same browser finds that id in its cookies, and
the token it stands for here, in this process's memory. Signing out, or restarting the UI, forgets it.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "gpuyard_session"
ROUTE = "/gpuyard/remember"
TICKET_TTL_S = 120.0
SESSION_TTL_S = 7 * 86400.0
MAX_SESSIONS = 10_000


@dataclass
class SessionBook:
    """Session ids and one-time tickets, both standing for a token. Thread-safe: the UI's page sessions
    run on threads of their own, and the cookie route on the server's event loop."""

    _sessions: dict[str, tuple[str, float]] = field(default_factory=dict)
    _tickets: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, token: str, *, now: float | None = None) -> tuple[str, str]:
        """A new session for `token`: its (session id, one-time ticket that sets the cookie)."""
        now = time.monotonic() if now is None else now
        sid, ticket = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._lock:
            self._expire(now)
            self._sessions[sid] = (token, now)
            self._tickets[ticket] = (sid, now)
        return sid, ticket

    def redeem(self, ticket: str, *, now: float | None = None) -> str | None:
        """The session id of a ticket, once; None for an unknown or stale one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            found = self._tickets.pop(ticket, None)
        if found is None or now - found[1] > TICKET_TTL_S:
            return None
        return found[0]

    def token(self, sid: str, *, now: float | None = None) -> str | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            found = self._sessions.get(sid)
            if found is None or now - found[1] > SESSION_TTL_S:
                self._sessions.pop(sid, None)
                return None
            return found[0]

    def forget(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def _expire(self, now: float) -> None:
        self._tickets = {k: v for k, v in self._tickets.items() if now - v[1] <= TICKET_TTL_S}
        if len(self._sessions) >= MAX_SESSIONS:  # the oldest go first
            for sid in sorted(self._sessions, key=lambda s: self._sessions[s][1])[
                : len(self._sessions) // 10
            ]:
                del self._sessions[sid]


BOOK = SessionBook()


async def remember_route(request: Request) -> Response:
    """GET /gpuyard/remember?ticket=…: set the session cookie of a ticket (an empty answer either way)."""
    sid = BOOK.redeem(request.query_params.get("ticket", ""))
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    if sid is not None:
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
    return response
