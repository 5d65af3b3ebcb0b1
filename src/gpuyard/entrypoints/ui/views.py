"""View models: API results in, table rows and sentences out. No Streamlit here, so it is unit-tested."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from gpuyard.client import ApiError, ApiUnreachable
from gpuyard.entrypoints.cli import format as fmt

Job = Mapping[str, Any]
FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out")
RUNNING_STATES = ("dispatched", "running")
STATE_WORDS = {
    "queued": "waiting",
    "dispatched": "starting",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "timed_out": "timed out",
}


def describe_error(error: BaseException, *, api_url: str, timeout_s: float) -> str:
    """What went wrong and what to do, in words for the page (never a traceback)."""
    if isinstance(error, ApiUnreachable):
        if isinstance(error.__cause__, httpx.TimeoutException):
            return (
                f"The gpuyard API at {api_url} did not answer within {timeout_s:g} s: it is busy or stuck. "
                "This page tries again by itself; if it stays this way, look at the controller's log "
                "(the terminal that runs `gpuyard up`)."
            )
        return (
            f"Cannot reach the gpuyard API at {api_url}: it is not running or not at this address. "
            "Start it with `gpuyard up` (or `scripts/run.sh`); this page reconnects by itself once it is up."
        )
    if isinstance(error, ApiError):
        if error.status == 401:
            return (
                "This token is not valid: check that you pasted all of it (it starts with gy_). "
                "An admin creates tokens with `gpuyard admin user add NAME`; the admin's own is in "
                "DATA_DIR/admin.token."
            )
        return error.detail
    return (
        f"Something went wrong in this page ({error.__class__.__name__}). Reload the page; if it happens "
        "again, the UI's log has the details."
    )


# times


def parse_time(value: str | None) -> datetime | None:
    return fmt.parse_time(value)


def when(value: str | None, *, now: datetime | None = None) -> str:
    """A time as people say it, in this machine's time zone: '14:05', 'tomorrow 00:54', 'Mon 07 Dec 09:00'."""
    at = parse_time(value)
    if at is None:
        return "-"
    local = at.astimezone()
    today = (now or utc_now()).astimezone().date()
    if local.date() == today:
        return local.strftime("%H:%M")
    if local.date() == today + timedelta(days=1):
        return local.strftime("tomorrow %H:%M")
    return local.strftime("%a %d %b %H:%M")


def ago(value: str | None, *, now: datetime) -> str:
    at = parse_time(value)
    return "-" if at is None else f"{fmt.about((now - at).total_seconds())} ago"


# submit and wait


def wait_text(wait: Mapping[str, Any]) -> str:
    """Where a waiting job stands and why: 'Job 7 is 3rd in line. Estimated start 14:05 ... Why: ...'."""
    job_id, position = wait["id"], wait.get("position")
    if wait.get("reason") == "starting" or position == 0:
        return f"Job {job_id} is starting now."
    place = place_text(position) if position else "waiting"
    sentences = [
        f"Job {job_id} is held ({place}): release it to let it start."
        if wait.get("held")
        else (f"Job {job_id} is {place}.")
    ]
    if wait.get("estimated_start_at"):
        early, late = wait.get("estimated_start_earliest_at"), wait.get("estimated_start_latest_at")
        between = f"between {when(early)} and {when(late)}" if band_text(wait) else ""
        # A job waiting out its backoff starts at its retry time, whatever the runtimes say.
        backoff = wait.get("reason") == "retry_backoff"
        source = "" if backoff else fmt.SOURCE_WORDS.get(wait.get("source") or "")
        detail = "; ".join(d for d in (between, source) if d)
        start = when(wait["estimated_start_at"])
        detail = f" ({detail})" if detail else ""
        sentences.append(f"Estimated start {start}{detail}, in {fmt.about(wait['estimated_wait_s'])}.")
    elif not wait.get("held"):
        sentences.append("No start can be foreseen yet.")
    if wait.get("backfill"):
        sentences.append("It goes ahead of earlier jobs: its time limit shows it delays none of them.")
    if wait.get("reason") != "held" and wait.get("reason_text"):
        sentences.append(f"Why: {wait['reason_text']}")
    return " ".join(sentences)


def job_status_text(job: Job) -> str:
    """A job that is not waiting, in one sentence."""
    job_id, state = job["id"], job["state"]
    where = gpus_text(job)
    if state == "dispatched":
        return f"Job {job_id} started: it is being launched on {where}."
    if state == "running":
        return f"Job {job_id} is running on {where} since {when(job.get('started_at'))}."
    if state == "queued":
        return f"Job {job_id} is waiting."
    ended = STATE_WORDS.get(state, state)
    tail = f" (exit code {job['exit_code']})" if job.get("exit_code") not in (None, 0) else ""
    return f"Job {job_id} {ended}{tail} at {when(job.get('finished_at'))}."


def gpus_text(job: Job) -> str:
    indices = job.get("gpu_indices")
    if not indices or job.get("state") not in RUNNING_STATES:
        return f"{job['gpus']} GPU{'s' if job['gpus'] != 1 else ''}"
    word = "GPU" if len(indices) == 1 else "GPUs"
    return f"{job.get('node')} {word} {', '.join(map(str, indices))}"


# queue


def queue_rows(entries: Iterable[Mapping[str, Any]], *, me: str) -> list[dict[str, Any]]:
    rows = []
    for q in entries:
        start = when(q.get("estimated_start_at"))
        band = band_text(q)
        rows.append(
            {
                "pos": q["position"],
                "job": q["id"],
                "owner": f"{q['user']} (you)" if q["user"] == me else q["user"],
                "name": q["name"],
                "GPUs": q["gpus"],
                "priority": _priority(q),
                "est. start": start + (f" ({band})" if band else ""),
                "wait": fmt.about(q.get("estimated_wait_s")),
                "why": "held: release it to let it start" if q.get("held") else q["reason_text"],
            }
        )
    return rows


def _priority(entry: Mapping[str, Any]) -> str:
    """Its priority, and whether it is held or waiting out a backoff after a failed attempt."""
    if entry.get("held"):
        return f"{entry['priority']}, held"
    if entry.get("reason") == "retry_backoff":
        return f"{entry['priority']}, retrying"
    if entry.get("preemptible"):
        return f"{entry['priority']}, preemptible"
    return str(entry["priority"])


def band_text(wait: Mapping[str, Any]) -> str:
    """The range around an estimated start, short: '13:50–14:20' (dates only when not today)."""
    early, late = wait.get("estimated_start_earliest_at"), wait.get("estimated_start_latest_at")
    if not early or not late or early == late:
        return ""
    return f"{when(early)}–{when(late)}"


def place_text(position: int) -> str:
    return "next in line" if position == 1 else f"{fmt.ordinal(position)} in line"


def may_act(item: Mapping[str, Any], *, me: str, is_admin: bool) -> bool:
    return is_admin or item["user"] == me


def queue_summary(entries: Sequence[Mapping[str, Any]], *, me: str) -> str:
    if not entries:
        return "Nobody is waiting: a job submitted now starts as soon as its GPUs are free."
    mine = [q for q in entries if q["user"] == me]
    text = f"{len(entries)} job{'s' if len(entries) != 1 else ''} waiting"
    if mine:
        first = mine[0]
        start = when(first.get("estimated_start_at"))
        text += f"; {len(mine)} of them yours, the first ({first['id']}) is {place_text(first['position'])}"
        text += f", estimated start {start}" if first.get("estimated_start_at") else ""
    return text + "."


def job_choice(item: Mapping[str, Any]) -> str:
    """How a job reads in a pick list."""
    place = f", {place_text(item['position'])}" if item.get("position") else ""
    return f"{item['id']} · {item['name']} ({item['user']}{place})"


def utc_now() -> datetime:
    return datetime.now(UTC)
