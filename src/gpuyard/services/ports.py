"""The seams the services depend on: a few Protocols and aliases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Publisher(Protocol):
    """Publishes a persistent message and returns once the broker confirmed it."""

    async def publish(self, routing_key: str, body: dict[str, Any]) -> None: ...

    def node_key(self, node: str) -> str: ...
