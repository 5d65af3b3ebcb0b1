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


@dataclass(frozen=True)
class _Step:
    job: PendingJob
    position: int
    gpus_ahead: int
    start_at: datetime | None
    reason: WaitReason
    waits_on: int | None
    waits_on_progress: float | None


class Timeline:
    """The simulation of one pass: every GPU's free time once the jobs added so far (in line order) run.

    After a pass it is the state at the end of the line, so a job that joins the end can be estimated
    from it (`extend`) without simulating the whole line again.
    """

    def __init__(self, request: ScheduleRequest) -> None:
        self.now = request.now
        self.default_runtime_s = request.default_runtime_s
        self.views = request.nodes
        self.nodes = _build_timeline(request)
        self.total = sum(n.size for n in self.nodes)
        self.free_now = {n.name: sum(1 for g in n.gpus if g.free_at <= self.now) for n in self.nodes}
        self.placements: list[Placement] = []
        self.floor = self.now
        self.top_rank = -1
        self.lowest_rank: int | None = None
        self.count = 0
        self.gpus_ahead = 0

    @property
    def busy(self) -> int:
        """GPUs busy once this pass's placements have started (outside-held ones included)."""
        return self.total - sum(self.free_now.values())

    def add(self, job: PendingJob) -> _Step:
        """Simulate the next job in line: the earliest start at which it fits, never before the one ahead."""
        fit = _earliest_fit(self.nodes, job.gpus, self.floor)
        starts_now = fit is not None and fit[0] == self.now
        # Positions count the jobs that wait: one that starts in this pass is no longer in line (0).
        position, gpus_ahead = (0, 0) if starts_now else (self.count + 1, self.gpus_ahead)
        if not starts_now:
            self.count += 1
            self.gpus_ahead += job.gpus
        higher_ahead = self.top_rank > job.priority_rank
        self.top_rank = max(self.top_rank, job.priority_rank)
        self.lowest_rank = (
            job.priority_rank if self.lowest_rank is None else min(self.lowest_rank, job.priority_rank)
        )
        if fit is None:
            reason = _unforeseeable_reason(self.nodes, job.gpus, self.views)
            return _Step(job, position, gpus_ahead, None, reason, None, None)
        start_at, node, chosen = fit
        blocker = max(chosen, key=lambda g: (g.free_at, g.index))
        if start_at == self.now:
            self.placements.append(Placement(job.job_id, node.name, tuple(sorted(g.index for g in chosen))))
            self.free_now[node.name] -= job.gpus
            reason = WaitReason.STARTING
        elif any(free >= job.gpus for free in self.free_now.values()):
            # Enough GPUs are free right now: only the jobs ahead of it hold it back.
            reason = WaitReason.BEHIND_HIGHER_PRIORITY if higher_ahead else WaitReason.BEHIND_EARLIER
        else:
            reason = WaitReason.GPUS_BUSY
        waits = blocker.free_at > self.now
        step = _Step(
            job,
            position,
            gpus_ahead,
            start_at,
            reason,
            blocker.holder if waits else None,
            blocker.holder_progress if waits else None,
        )
        runtime_s = max(expected_runtime_s(job, self.default_runtime_s), _MIN_RUNTIME_S)
        end_at = start_at + timedelta(seconds=runtime_s)
        for gpu in chosen:
            gpu.free_at, gpu.holder, gpu.holder_progress = end_at, job.job_id, None
        self.floor = start_at
        return step

    def estimate(self, step: _Step) -> Estimate:
        return Estimate(
            job_id=step.job.job_id,
            position=step.position,
            start_at=step.start_at,
            reason=step.reason,
            gpus_busy=self.busy,
            gpus_total=self.total,
            jobs_ahead=max(step.position - 1, 0),
            gpus_ahead=step.gpus_ahead,
            blocking_job_id=step.waits_on,
            blocking_progress=step.waits_on_progress,
        )


def schedule(request: ScheduleRequest) -> Decision:
    timeline = Timeline(request)
    steps = [timeline.add(job) for job in queue_order(request.pending)]
    estimates = {step.job.job_id: timeline.estimate(step) for step in steps}
    return Decision(placements=tuple(timeline.placements), estimates=estimates, timeline=timeline)


def extend(timeline: Timeline, job: PendingJob) -> Estimate | None:
    """The estimate of a job that joins the end of the line (submitted after every job in it, at the same
    or a lower priority), from a pass's timeline. None when it does not go last, or when it could start at
    once: then only a real pass may place it."""
    if timeline.lowest_rank is not None and job.priority_rank > timeline.lowest_rank:
        return None
    fit = _earliest_fit(timeline.nodes, job.gpus, timeline.floor)
    if fit is not None and fit[0] <= timeline.now:
        return None
    return timeline.estimate(timeline.add(job))


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
