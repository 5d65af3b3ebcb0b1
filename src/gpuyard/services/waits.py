"""Where a waiting job stands, from a scheduling pass: place in line, estimated start with its band, and
why it waits, in words."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gpuyard.scheduling.explain import explain
from gpuyard.scheduling.model import Estimate
from gpuyard.services.scheduler import PassResult

# Times in reasons are in the workstation's own time zone: the one its users live in.
LOCAL_TZ = datetime.now().astimezone().tzinfo or UTC


@dataclass(frozen=True)
class WaitInfo:
    """Where a waiting job stands. `source` is where the runtimes behind the estimate come from (a
    RuntimeSource value; None for a job placed by an earlier pass); the earliest/latest pair is the band
    around the estimated start that follows from it; `backfill` marks a job that starts ahead of earlier
    ones because its time limit proves it delays none of them."""

    position: int | None
    estimated_start_at: datetime | None
    estimated_wait_s: float | None
    reason: str
    reason_text: str
    source: str | None = None
    estimated_start_earliest_at: datetime | None = None
    estimated_start_latest_at: datetime | None = None
    backfill: bool = False


STARTING_NOW = WaitInfo(
    position=0, estimated_start_at=None, estimated_wait_s=0.0, reason="starting", reason_text="starting now"
)


def wait_info(job: dict[str, Any], result: PassResult) -> WaitInfo | None:
    """Where a waiting (or just placed) job stands, from a scheduling pass."""
    estimate = result.decision.estimates.get(job["id"])
    if estimate is None:
        return None
    info = describe_wait(estimate, gpus=job["gpus"], now=result.now)
    retry_at = job.get("retry_at")
    if retry_at is not None and retry_at > result.now and job.get("held_at") is None:
        return backing_off(info, job, retry_at=retry_at, now=result.now)
    return info


def backing_off(info: WaitInfo, job: dict[str, Any], *, retry_at: datetime, now: datetime) -> WaitInfo:
    """A job waiting out its backoff after a failed attempt keeps its place and says why, and until when."""
    failure = job.get("failure_class") or "a failure"
    text = (
        f"retrying after {failure}: attempt {job['attempt'] + 1} of {job['max_attempts']} starts no earlier "
        f"than {retry_at.astimezone(LOCAL_TZ):%H:%M:%S}; it keeps its place in line"
    )
    return WaitInfo(
        position=info.position,
        estimated_start_at=retry_at,
        estimated_wait_s=max(0.0, (retry_at - now).total_seconds()),
        reason="retry_backoff",
        reason_text=text,
        source=info.source,
        estimated_start_earliest_at=retry_at,
        estimated_start_latest_at=None,
        backfill=False,
    )


def describe_wait(estimate: Estimate, *, gpus: int, now: datetime) -> WaitInfo:
    start = estimate.start_at
    wait_s = earliest = latest = None
    if start is not None:
        wait_s = max(0.0, (start - now).total_seconds())
        # A job cannot start before now, however wide the band.
        earliest = max(start - timedelta(seconds=estimate.early_s), min(start, now))
        latest = start + timedelta(seconds=estimate.late_s)
    return WaitInfo(
        position=estimate.position,
        estimated_start_at=start,
        estimated_wait_s=wait_s,
        reason=estimate.reason.value,
        reason_text=explain(estimate, gpus=gpus, now=now, tz=LOCAL_TZ),
        source=estimate.source.value,
        estimated_start_earliest_at=earliest,
        estimated_start_latest_at=latest,
        backfill=estimate.backfill,
    )
