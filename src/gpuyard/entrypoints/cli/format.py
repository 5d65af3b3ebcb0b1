"""Plain-text rendering for the CLI: durations, times, GPU lists."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def clock(value: str | None) -> str:
    at = parse_time(value)
    if at is None:
        return "-"
    local = at.astimezone()
    today = datetime.now(UTC).astimezone().date()
    return local.strftime("%H:%M:%S") if local.date() == today else local.strftime("%Y-%m-%d %H:%M")


def elapsed(job: dict[str, Any]) -> float | None:
    start = parse_time(job.get("started_at"))
    if start is None:
        return None
    end = parse_time(job.get("finished_at")) or datetime.now(UTC)
    return (end - start).total_seconds()


def gpu_list(job: dict[str, Any]) -> str:
    indices = job.get("gpu_indices")
    if not indices or job.get("state") not in ("dispatched", "running"):
        return str(job["gpus"])
    return f"{job.get('node')}:{','.join(map(str, indices))}"


def progress(job: dict[str, Any]) -> str:
    p = job.get("progress")
    if p is None:
        return "-"
    filled = int(p * 10)
    return f"{'█' * filled}{'·' * (10 - filled)} {p:4.0%}"


def parse_duration(text: str) -> int:
    """'90', '90s', '30m', '2h', '1d', '1h30m' → seconds. Raises ValueError with what to write."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if not text:
        raise ValueError(f"Cannot read the duration {text!r}: write e.g. 90, 90s, 30m, 2h or 1h30m.")
    if text.isdigit():
        return int(text)
    total, number = 0, ""
    for ch in text:
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
        else:
            raise ValueError(f"Cannot read the duration {text!r}: write e.g. 90, 90s, 30m, 2h or 1h30m.")
    if number:
        raise ValueError(f"Cannot read the duration {text!r}: write e.g. 90, 90s, 30m, 2h or 1h30m.")
    return total
