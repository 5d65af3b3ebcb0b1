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


class Telemetry(Protocol):
    """What the services count and time as it happens (Prometheus in production, nothing in unit tests).

    Gauges that describe *now* (jobs by state, GPUs, the queue) are read at scrape time instead."""

    def job_submitted(self, *, outcome: str, count: int = 1) -> None: ...

    def job_started(self, *, wait_s: float, dispatch_latency_s: float | None) -> None: ...

    def job_finished(self, *, state: str, failure_class: str | None, run_s: float | None) -> None: ...

    def scheduler_pass(self, *, duration_s: float, estimates: bool) -> None: ...

    def job_retried(self, *, failure_class: str) -> None: ...

    def job_preempted(self) -> None: ...

    def webhook_delivery(self, *, outcome: str) -> None: ...


class NoTelemetry:
    """Telemetry that records nothing."""

    def job_submitted(self, *, outcome: str, count: int = 1) -> None:
        pass

    def job_started(self, *, wait_s: float, dispatch_latency_s: float | None) -> None:
        pass

    def job_finished(self, *, state: str, failure_class: str | None, run_s: float | None) -> None:
        pass

    def scheduler_pass(self, *, duration_s: float, estimates: bool) -> None:
        pass

    def job_retried(self, *, failure_class: str) -> None:
        pass

    def job_preempted(self) -> None:
        pass

    def webhook_delivery(self, *, outcome: str) -> None:
        pass


class WebhookSender(Protocol):
    """POSTs a body; returns the HTTP status, or raises OSError for a transport failure or time-out."""

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int: ...
