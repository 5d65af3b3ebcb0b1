"""The scheduling policy: priority, then FIFO; whole GPUs on one node; one job per GPU.

`schedule(request)` is pure and deterministic. It walks the wait line in order and, in simulated time over
the expected runtimes, gives each job the earliest start at which enough GPUs of one node are free and no
job ahead of it starts later. The jobs whose start is `now` are the placements; every job's start is its
estimate, so the line and the estimates cannot disagree.

A job never starts ahead of an earlier job of equal or higher priority. The one exception: a job whose start
cannot be foreseen at all (its GPUs are held by processes outside gpuyard) does not hold up the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gpuyard.scheduling.model import (
    Decision,
    Estimate,
    NodeView,
    PendingJob,
    Placement,
    RunningJob,
    ScheduleRequest,
    WaitReason,
)

# A busy GPU whose job is past its expected end is assumed to free a little after now, never at now.
_OVERDUE_S = 1.0
# A job holds its GPUs for at least this long in simulated time, so a GPU is never given twice at one instant.
_MIN_RUNTIME_S = 1.0


@dataclass
class _Gpu:
    index: int
    free_at: datetime
    holder: int | None  # the job whose expected end is free_at
    holder_progress: float | None = None


@dataclass
class _Node:
    name: str
    gpus: list[_Gpu]  # GPUs gpuyard may use (outside-held ones left out)
    size: int  # all GPUs of the node, outside-held included


def queue_order(pending: tuple[PendingJob, ...]) -> list[PendingJob]:
    """Effective priority (highest first), then submission order."""
    return sorted(pending, key=lambda j: (-j.priority_rank, j.seq))


def expected_runtime_s(job: PendingJob, default_runtime_s: float) -> float:
    if job.expected_runtime_s is not None:
        return job.expected_runtime_s
    if job.time_limit_s is not None:
        return job.time_limit_s
    return default_runtime_s


def schedule(request: ScheduleRequest) -> Decision:
    now = request.now
    nodes = _build_timeline(request)
    total = sum(n.size for n in nodes)
    free_now = {n.name: sum(1 for g in n.gpus if g.free_at <= now) for n in nodes}
    placements: list[Placement] = []
    # (job, start, reason, id and progress of the job whose end the start waits for)
    found: list[tuple[PendingJob, datetime | None, WaitReason, tuple[int | None, float | None]]] = []
    floor = now
    top_rank_ahead = -1
    for job in queue_order(request.pending):
        fit = _earliest_fit(nodes, job.gpus, floor)
        if fit is None:
            found.append((job, None, _unforeseeable_reason(nodes, job.gpus, request.nodes), (None, None)))
        else:
            start_at, node, chosen = fit
            blocker = max(chosen, key=lambda g: (g.free_at, g.index))
            if start_at == now:
                placements.append(Placement(job.job_id, node.name, tuple(sorted(g.index for g in chosen))))
                free_now[node.name] -= job.gpus
                reason = WaitReason.STARTING
            elif any(free >= job.gpus for free in free_now.values()):
                # Enough GPUs are free right now: only the jobs ahead of it hold it back.
                higher = top_rank_ahead > job.priority_rank
                reason = WaitReason.BEHIND_HIGHER_PRIORITY if higher else WaitReason.BEHIND_EARLIER
            else:
                reason = WaitReason.GPUS_BUSY
            waits_on = (blocker.holder, blocker.holder_progress) if blocker.free_at > now else (None, None)
            found.append((job, start_at, reason, waits_on))
            runtime_s = max(expected_runtime_s(job, request.default_runtime_s), _MIN_RUNTIME_S)
            end_at = start_at + timedelta(seconds=runtime_s)
            for gpu in chosen:
                gpu.free_at, gpu.holder, gpu.holder_progress = end_at, job.job_id, None
            floor = start_at
        top_rank_ahead = max(top_rank_ahead, job.priority_rank)
    # Reasons speak of the GPUs as they are once this pass's placements have started.
    busy = total - sum(free_now.values())
    estimates: dict[int, Estimate] = {}
    gpus_ahead = 0
    for position, (job, at, reason, (holder, progress)) in enumerate(found, start=1):
        estimates[job.job_id] = Estimate(
            job_id=job.job_id,
            position=position,
            start_at=at,
            reason=reason,
            gpus_busy=busy,
            gpus_total=total,
            jobs_ahead=position - 1,
            gpus_ahead=gpus_ahead,
            blocking_job_id=holder,
            blocking_progress=progress,
        )
        gpus_ahead += job.gpus
    return Decision(placements=tuple(placements), estimates=estimates)


def _build_timeline(request: ScheduleRequest) -> list[_Node]:
    now = request.now
    default_end = now + timedelta(seconds=request.default_runtime_s)
    holders: dict[tuple[str, int], RunningJob] = {}
    for run in request.running:
        for index in run.gpu_indices:
            holders[(run.node, index)] = run
    nodes: list[_Node] = []
    for view in sorted(request.nodes, key=lambda n: n.name):
        if not view.online:
            continue
        gpus: list[_Gpu] = []
        for slot in sorted(view.gpus, key=lambda s: s.index):
            holder = holders.get((view.name, slot.index))
            if holder is not None:
                end = holder.expected_end_at or default_end
                free_at = max(end, now + timedelta(seconds=_OVERDUE_S))
                gpus.append(_Gpu(slot.index, free_at, holder.job_id, holder.progress))
            elif not slot.outside:
                gpus.append(_Gpu(slot.index, now, None))
        nodes.append(_Node(view.name, gpus, len(view.gpus)))
    return nodes


def _earliest_fit(
    nodes: list[_Node], count: int, floor: datetime
) -> tuple[datetime, _Node, list[_Gpu]] | None:
    """The earliest time ≥ floor at which one node has `count` GPUs free; ties go to the first node."""
    best: tuple[datetime, _Node, list[_Gpu]] | None = None
    for node in nodes:
        if len(node.gpus) < count:
            continue
        by_free = sorted(node.gpus, key=lambda g: (g.free_at, g.index))
        start_at = max(floor, by_free[count - 1].free_at)
        if best is None or start_at < best[0]:
            # Of the GPUs free by then, take those that freed last: long-free runs stay together.
            ready = [g for g in by_free if g.free_at <= start_at]
            chosen = sorted(ready, key=lambda g: (g.free_at, -g.index))[len(ready) - count :]
            best = (start_at, node, chosen)
    return best


def _unforeseeable_reason(nodes: list[_Node], count: int, views: tuple[NodeView, ...]) -> WaitReason:
    if not nodes:
        return WaitReason.NO_NODE_ONLINE
    if all(n.size < count for n in nodes):
        big_offline = any(len(v.gpus) >= count for v in views if not v.online)
        return WaitReason.NO_NODE_ONLINE if big_offline else WaitReason.NO_NODE_FITS
    return WaitReason.GPU_HELD_OUTSIDE
