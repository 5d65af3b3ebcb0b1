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


def priority(job: dict[str, Any]) -> str:
    """Its priority, marked when the job is preemptible: `normal (P)`."""
    return f"{job['priority']} (P)" if job.get("preemptible") else str(job["priority"])


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


def hhmm(value: str | None) -> str:
    """A time as people say it: 14:05 today, else with the date."""
    at = parse_time(value)
    if at is None:
        return "-"
    local = at.astimezone()
    today = datetime.now(UTC).astimezone().date()
    return local.strftime("%H:%M") if local.date() == today else local.strftime("%Y-%m-%d %H:%M")


def about(seconds: float | None) -> str:
    """A wait, rounded the way people say it: 40s, 25m, 2h05m, 1d03h."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{minutes}m"
    if s < 86400:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


SOURCE_WORDS = {
    "progress": "from the running jobs' progress",
    "time_limit": "from time limits",
    "history": "from similar past jobs",
    "default": "from the default runtime",
}


def band(wait: dict[str, Any]) -> str:
    """The range around an estimated start, e.g. '13:50-14:20'; '' when there is none."""
    early, late = wait.get("estimated_start_earliest_at"), wait.get("estimated_start_latest_at")
    if not early or not late or early == late:
        return ""
    return f"{hhmm(early)}-{hhmm(late)}"


def why(wait: dict[str, Any]) -> str:
    """`gpuyard why`: where a waiting job stands and why, in plain words (the /jobs/{id}/wait body)."""
    job_id, position = wait["id"], wait["position"]
    if wait["reason"] == "starting" or position == 0:
        return f"Job {job_id} is starting now."
    place = "next in line" if position == 1 else f"{ordinal(position)} in line"
    if wait["held"]:
        sentences = [f"Job {job_id} is held ({place}): `gpuyard release {job_id}` lets it start."]
    else:
        sentences = [f"Job {job_id} is {place}."]
    if wait["estimated_start_at"]:
        details = []
        if band(wait):
            early, late = wait["estimated_start_earliest_at"], wait["estimated_start_latest_at"]
            details.append(f"between {hhmm(early)} and {hhmm(late)}")
        if wait.get("source") in SOURCE_WORDS:
            details.append(SOURCE_WORDS[wait["source"]])
        detail = f" ({'; '.join(details)})" if details else ""
        start = hhmm(wait["estimated_start_at"])
        sentences.append(f"Estimated start {start}{detail}, in {about(wait['estimated_wait_s'])}.")
    elif not wait["held"]:
        sentences.append("No start can be foreseen yet.")
    if wait.get("backfill"):
        sentences.append("It goes ahead of earlier jobs: its time limit shows it delays none of them.")
    text = " ".join(sentences)
    if wait["reason"] != "held":  # a held job's reason only says it is held
        text += f"\nWhy: {wait['reason_text']}"
    return text
