"""Sends webhook deliveries with httpx."""

from __future__ import annotations

import httpx


class HttpxWebhookSender:
    def __init__(self, *, timeout_s: float) -> None:
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as e:
            raise OSError(f"{type(e).__name__}: {e}") from e
        return response.status_code

    async def close(self) -> None:
        await self._client.aclose()
