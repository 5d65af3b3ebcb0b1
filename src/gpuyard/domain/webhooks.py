"""Webhooks, the pure parts: which events exist, how a body is signed, when a failed delivery is retried,
and the payloads (gpuyard's JSON, or Slack-compatible `{"text": ...}`)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlsplit

from gpuyard.domain.errors import InvalidWebhook
from gpuyard.domain.text import quote

EVENTS = (
    "job.started",
    "job.finished",
    "job.failed",
    "job.cancelled",
    "job.dead_lettered",
    "job.idle_gpu",
    "job.preempted",
)
FORMATS = ("json", "slack")
SIGNATURE_HEADER = "X-Gpuyard-Signature"
MAX_RETRY_DELAY_S = 3600.0

# The final state of a job -> the event its end sends.
END_EVENTS = {
    "succeeded": "job.finished",
    "failed": "job.failed",
    "timed_out": "job.failed",
    "cancelled": "job.cancelled",
}


def check_webhook(url: str, events: list[str] | None, fmt: str) -> list[str]:
    """Validate a webhook's URL, events and format; returns its events (every event when none given)."""
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname, parts.port  # each raises ValueError on a malformed URL
    except ValueError as e:
        raise InvalidWebhook(f"Webhook URL {quote(url)} is malformed ({e}): give e.g. https://host/") from e
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidWebhook(f"Webhook URL {quote(url)} is not an http(s) URL: give e.g. https://host/path.")
    if not url.isprintable() or " " in url:
        raise InvalidWebhook(
            f"Webhook URL {quote(url)} contains spaces or control characters: percent-encode them (%20)."
        )
    chosen = list(dict.fromkeys(events)) if events else list(EVENTS)
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown:
        raise InvalidWebhook(f"Unknown webhook events {quote(unknown)}: use some of {', '.join(EVENTS)}.")
    if fmt not in FORMATS:
        raise InvalidWebhook(f"Unknown webhook format {quote(fmt)}: use json or slack.")
    return chosen


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, body), signature)


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


def retry_delay_s(attempts: int, *, base_s: float) -> float:
    """How long to wait after the `attempts`-th failed try: base, 2×, 4×, ... up to an hour."""
    return float(min(base_s * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY_S))


def retryable(status: int | None) -> bool:
    """A transport error, a server error, a time-out or a rate limit is retried; other 4xx are final."""
    return status is None or status >= 500 or status in (408, 425, 429)


def summary(event: str, job: dict[str, Any]) -> str:
    """One line for people: what happened to which job."""
    who = f"job {job['id']} ({job['name']}, {job['user']})"
    if event == "job.started":
        return f"gpuyard: {who} started on {job.get('node') or '?'} GPUs {job.get('gpu_indices')}"
    if event == "job.idle_gpu":
        return f"gpuyard: {who} holds {job['gpus']} GPU(s) it has not used since {job.get('gpu_idle_since')}"
    if event == "job.failed":
        why = job.get("failure_class") or job["state"]
        return f"gpuyard: {who} failed ({why}, exit code {job.get('exit_code')})"
    if event == "job.preempted":
        return f"gpuyard: {who} was preempted for a job ahead of it: it is back in its place in line"
    if event == "job.dead_lettered":
        return f"gpuyard: {who} was dead-lettered: {job.get('error') or 'it cannot run'}"
    return f"gpuyard: {who} {job['state']}"


def payload(event: str, job: dict[str, Any], *, fmt: str, at: str, job_url: str | None) -> dict[str, Any]:
    text = summary(event, job) + (f" {job_url}" if job_url else "")
    if fmt == "slack":
        return {"text": text}
    return {"event": event, "at": at, "job": job, "url": job_url, "text": text}
