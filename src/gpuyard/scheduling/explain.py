"""Plain words for a waiting job's estimate.

e.g. "waiting for 2 GPUs: 4 of 4 busy; the next one frees at about 14:05 UTC (job 812, 80% done)"."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from gpuyard.scheduling.model import Estimate, WaitReason


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _clock(at: datetime, now: datetime, tz: tzinfo) -> str:
    """HH:MM and the zone's name today, else the date too."""
    local, today = at.astimezone(tz), now.astimezone(tz)
    return local.strftime("%H:%M %Z") if local.date() == today.date() else local.strftime("%Y-%m-%d %H:%M %Z")


def explain(estimate: Estimate, *, gpus: int, now: datetime, tz: tzinfo = UTC) -> str:
    """`tz`: the time zone the times are given in (the workstation's own, for its users)."""
    e = estimate
    need = f"waiting for {_plural(gpus, 'GPU')}"
    if e.reason is WaitReason.STARTING:
        return (
            "starting now, ahead of earlier jobs: its time limit ends it before they need its GPUs"
            if (e.backfill)
            else "starting now"
        )
    if e.reason is WaitReason.PREEMPTING:
        who = f"job {e.blocking_job_id}" if e.blocking_job_id is not None else "preemptible jobs"
        return (
            f"starting as soon as {who}, preemptible and behind it in line, has stopped and gone back to "
            "its place in line"
        )
    if e.reason is WaitReason.HELD:
        return "held: it keeps its place in line but does not start until it is released (`gpuyard release`)"
    if e.reason is WaitReason.NO_NODE_FITS:
        return f"{need}: no online node has {gpus} GPUs"
    if e.reason is WaitReason.NO_NODE_ONLINE:
        return f"{need}: no worker node with {gpus} GPUs is online; start one with `gpuyard worker`"
    if e.reason is WaitReason.GPU_HELD_OUTSIDE:
        return f"{need}: processes outside gpuyard hold the GPUs it needs (see `gpuyard gpus`)"
    at = f"at about {_clock(e.start_at, now, tz)}" if e.start_at else "at an unknown time"
    if e.reason is WaitReason.GPUS_BUSY:
        frees = f"the next one frees {at}"
        if e.blocking_job_id is not None:
            done = f", {e.blocking_progress:.0%} done" if e.blocking_progress is not None else ""
            frees += f" (job {e.blocking_job_id}{done})"
        return f"{need}: {e.gpus_busy} of {e.gpus_total} busy; {frees}"
    if e.reason is WaitReason.USER_LIMIT:
        return f"{need}: its owner's limit of GPUs in use is reached; starts {at}, as the owner's jobs end"
    ahead = _plural(e.jobs_ahead, "job")
    if e.reason is WaitReason.BEHIND_HIGHER_PRIORITY:
        return f"{need}: behind {ahead} of higher or equal priority; starts {at}"
    return f"{need}: behind {ahead} submitted earlier; starts {at}"
