"""Running jobs as cards: progress and estimated end, GPU use and the idle flag, TensorBoard, and who else
runs what. API results in, fields and sentences out (no Streamlit)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gpuyard.entrypoints.cli import format as fmt
from gpuyard.entrypoints.ui.views import Job, gpus_text, parse_time, when


@dataclass(frozen=True)
class RunningView:
    job_id: int
    title: str
    owner: str
    gpus: str
    elapsed: str
    progress: float | None
    progress_text: str
    ends: str
    metrics: dict[str, Any]
    idle: str = ""  # "GPUs idle since 14:05" while the job is flagged
    usage: str = ""
    tensorboard_url: str | None = None
    tensorboard_text: str = ""


def estimated_end(job: Job, *, now: datetime) -> tuple[datetime | None, str]:
    """When a running job should end, and from what: its progress rate, else its time limit."""
    started = parse_time(job.get("started_at"))
    if started is None:
        return None, ""
    limit_end = started + timedelta(seconds=job["time_limit_s"]) if job.get("time_limit_s") else None
    p = job.get("progress")
    elapsed_s = max((now - started).total_seconds(), 0.0)
    if p is not None and 0 < p <= 1 and elapsed_s > 0:
        end = started + timedelta(seconds=elapsed_s / p)
        if limit_end is not None and end > limit_end:
            return limit_end, "time limit (its progress rate would run past it)"
        return end, "progress"
    if limit_end is not None:
        return limit_end, "time limit"
    return None, ""


def running_view(job: Job, *, now: datetime) -> RunningView:
    started = parse_time(job.get("started_at"))
    p = job.get("progress")
    step, total = job.get("progress_step"), job.get("progress_total")
    if p is not None:
        progress_text = f"{p:.0%}" + (f" (step {_num(step)} of {_num(total)})" if total else "")
    elif job["state"] == "dispatched":
        progress_text = "starting"
    else:
        progress_text = "no progress reported (the job can call gpuyard.report(step=, total=))"
    end, source = estimated_end(job, now=now)
    if end is None:
        ends = "unknown: no progress reported and no time limit"
    else:
        left_s = max((end - now).total_seconds(), 0.0)
        ends = f"{when(end.isoformat(), now=now)} (in {fmt.about(left_s)}; from {source})"
    return RunningView(
        job_id=int(job["id"]),
        title=f"Job {job['id']} · {job['name']}",
        owner=str(job["user"]),
        gpus=gpus_text(job),
        elapsed=fmt.duration((now - started).total_seconds()) if started else "-",
        progress=p,
        progress_text=progress_text,
        ends=ends,
        metrics=dict(job.get("metrics") or {}),
        idle=idle_text(job, now=now),
        usage=usage_text(job),
        tensorboard_url=job.get("tensorboard_url"),
        tensorboard_text=tensorboard_text(job),
    )


def idle_text(job: Job, *, now: datetime | None = None) -> str:
    """'GPUs idle since 14:05' while the job is flagged for holding GPUs it does not use; else ''."""
    since = (job.get("gpu_usage") or {}).get("idle_since")
    if not since:
        return ""
    return f"{'GPU' if job.get('gpus') == 1 else 'GPUs'} idle since {when(since, now=now)}"


def usage_text(job: Job) -> str:
    """What the job has done with its GPUs so far: mean and peak utilization and memory; '' before the
    first usage point."""
    usage = job.get("gpu_usage")
    if not usage:
        return ""
    return (
        f"GPU use {usage['utilization_mean_pct']:.0f}% mean, {usage['utilization_peak_pct']:.0f}% peak · "
        f"memory {usage['memory_mean_mib']:,} MiB mean, {usage['memory_peak_mib']:,} MiB peak"
    )


def tensorboard_text(job: Job) -> str:
    """Its TensorBoard run in words: which run the link opens, where a TensorBoard serves it; else the
    run's name and how to get a link; '' before the job has a run."""
    run = job.get("tensorboard_run")
    if not run:
        return ""
    if job.get("tensorboard_url"):
        return f"Its run {run} in TensorBoard"
    return (
        f"TensorBoard run `{run}` (under DATA_DIR/tensorboard). No TensorBoard is served: start gpuyard "
        "with `gpuyard up --tensorboard-port 6006` and each job links to its run."
    )


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def others_running(gpus: Iterable[Mapping[str, Any]], *, shown: set[int]) -> list[dict[str, Any]]:
    """Running jobs not listed already (other people's), from who holds which GPU."""
    by_job: dict[int, dict[str, Any]] = {}
    for g in gpus:
        job_id = g.get("job_id")
        if job_id is None or job_id in shown:
            continue
        row = by_job.setdefault(
            job_id,
            {"job": job_id, "owner": g["job_user"], "name": g["job_name"], "node": g["node"], "GPUs": ""},
        )
        row["GPUs"] = f"{row['GPUs']}, {g['index']}" if row["GPUs"] else str(g["index"])
    return [by_job[k] for k in sorted(by_job)]
