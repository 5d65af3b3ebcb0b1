"""The scheduling policy: effective priority, then FIFO; whole GPUs on one node; one job per GPU; backfill.

`schedule(request)` is pure and deterministic. It walks the wait line in order and books every job the
earliest slot in which enough GPUs of one node are free for it, given the bookings of the jobs ahead
(conservative backfill). Jobs whose slot begins now are the placements; every job's slot is its estimate,
so the line and the estimates cannot disagree.

No job is ever delayed by a job behind it: a job may take a slot that begins before an earlier job's slot
only inside a gap the earlier bookings left, and only if its time limit (which the worker enforces) ends it
before the gap closes. Jobs with no time limit only ever book after everything booked on their GPUs.
Without backfill, a job never starts before the job ahead of it.

A preemptible job may take a gap whatever its time limit, if the gap lets it run `preempt_min_run_s`
(or what it should take, if less) and then `preempt_grace_s` to stop: its booking ends where the gap does.
While it runs, the jobs ahead of it in line see its GPUs as free once a stop would have freed them (a grace
from now); one that would start there asks for it to be stopped (`Decision.preemptions`) and starts once it
has. When the walk reaches the running job's own place in line, it is booked on its GPUs until its
expected end or the first booking of a job ahead, whichever comes first, and `Decision.preempt_at` says
when a pass must ask it to stop. So a preemptible job never delays a job ahead of it either.

Times inside are float seconds from `now`: datetimes only at the edges.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from gpuyard.scheduling.booking import INF, Fit, Gpu, Holder, Node
from gpuyard.scheduling.cluster import Cluster
from gpuyard.scheduling.model import (
    Decision,
    Estimate,
    NodeView,
    PendingJob,
    Placement,
    Preemption,
    Rules,
    RunningJob,
    RuntimeSource,
    ScheduleRequest,
    WaitReason,
)

# A busy GPU whose job is past its expected end is assumed to free a little after now, never at now.
_OVERDUE_S = 1.0
# What is left of a preemptible job that will be stopped is booked again, stopped again at most this often.
_REBOOKINGS = 3
# A job holds its GPUs for at least this long in simulated time, so a GPU is never given twice at one instant.
_MIN_RUNTIME_S = 1.0
# How far the true start may fall from the estimate (early, late), as fractions of the wait, by the weakest
# source of the runtimes it depends on. Time limits are upper bounds: starts come earlier, not later.
_BAND = {
    RuntimeSource.PROGRESS: (0.1, 0.1),
    RuntimeSource.TIME_LIMIT: (0.5, 0.0),
    RuntimeSource.HISTORY: (0.3, 0.3),
    RuntimeSource.DEFAULT: (0.5, 1.0),
}
_WEAKNESS = {s: i for i, s in enumerate(RuntimeSource)}


def weakest(a: RuntimeSource, b: RuntimeSource) -> RuntimeSource:
    return a if _WEAKNESS[a] >= _WEAKNESS[b] else b


class _Soft(NamedTuple):
    """A running preemptible job, not yet booked: jobs ahead of it in line may take its GPUs."""

    key: tuple[float, float, int]  # its place in line, as `line_key` gives it
    run: RunningJob
    node: Node
    gpus: tuple[Gpu, ...]
    end: float  # when it should end by itself


class _Slot(NamedTuple):
    runtime: float  # planned
    source: RuntimeSource  # of the planned runtime
    guaranteed: float  # the time limit, or INF
    user_floor: float  # the earliest start the user's GPU limit allows
    fit: Fit | None


class _Step(NamedTuple):
    job: PendingJob
    position: int
    gpus_ahead: int
    start: float | None
    reason: WaitReason
    holder: Holder | None
    source: RuntimeSource
    backfill: bool


def effective_rank(job: PendingJob | RunningJob, rules: Rules) -> int:
    """Priority plus aging (one level per `aging_s` of waiting, up to `aging_max_rank`). A running
    preemptible job ages as if it still waited: the line order of two jobs then changes at most once per
    level, so they cannot take each other's GPUs in turn for ever."""
    if rules.aging_s is None or job.priority_rank >= rules.aging_max_rank:
        return job.priority_rank
    return min(rules.aging_max_rank, job.priority_rank + int(job.waiting_s // rules.aging_s))


def line_key(rank: int, user: str, seq: int, rules: Rules) -> tuple[float, float, int]:
    """A job's place in line (smaller goes first), for waiting and running jobs alike."""
    return (-rank, rules.usage_s.get(user, 0.0) if rules.fair_share else 0.0, seq)


def queue_order(pending: tuple[PendingJob, ...], rules: Rules | None = None) -> list[PendingJob]:
    """Effective priority (highest first); with fair share, less recent GPU time first; then FIFO."""
    rules = rules or Rules()
    if rules.fair_share:
        usage = rules.usage_s
        return sorted(pending, key=lambda j: (-effective_rank(j, rules), usage.get(j.user, 0.0), j.seq))
    if rules.aging_s is None:
        return sorted(pending, key=lambda j: (-j.priority_rank, j.seq))
    return sorted(pending, key=lambda j: (-effective_rank(j, rules), j.seq))


def expected_runtime(
    *, known_s: float | None, time_limit_s: float | None, default_runtime_s: float
) -> tuple[float, RuntimeSource]:
    """A job's expected runtime and its source: what history knows (at most the time limit), else the time
    limit, else the default. The controller and the simulator use it for running jobs too."""
    if known_s is not None:
        return (known_s if time_limit_s is None else min(known_s, time_limit_s)), RuntimeSource.HISTORY
    if time_limit_s is not None:
        return time_limit_s, RuntimeSource.TIME_LIMIT
    return default_runtime_s, RuntimeSource.DEFAULT


def planned_runtime(job: PendingJob, default_runtime_s: float) -> tuple[float, RuntimeSource]:
    """How long a waiting job is planned to hold its GPUs (never less than a moment), and from what."""
    runtime, source = expected_runtime(
        known_s=job.expected_runtime_s, time_limit_s=job.time_limit_s, default_runtime_s=default_runtime_s
    )
    return max(runtime, _MIN_RUNTIME_S), source


class Timeline:
    """The bookings of one pass: after it, the state at the end of the line (see `extend`)."""

    def __init__(self, request: ScheduleRequest) -> None:
        self.now = request.now
        self.rules = request.rules
        self.backfill = request.rules.backfill
        self.user_limit = request.rules.max_gpus_per_user
        self.aging = request.rules.aging_s is not None
        self.default_runtime_s = request.default_runtime_s
        self.views = request.nodes
        # A preemptible running job's GPUs free this long after it is asked to stop (never at once).
        self.grace = max(request.rules.preempt_grace_s, _OVERDUE_S)
        # Fair share reorders the line as GPU time is used: a stopped job would soon stop the one that stopped
        # it, and so on. With it, preemptible jobs are booked and kept like any other.
        self.preempting = request.rules.backfill and not request.rules.fair_share
        self.min_run = max(request.rules.preempt_min_run_s, _MIN_RUNTIME_S)
        nodes, soft = _build_nodes(request, self.grace, preempting=self.preempting)
        self.cluster = Cluster(nodes)
        self.nodes = self.cluster.nodes
        self.soft = soft  # in line order; booked (`seat`) when the walk reaches their place
        self.soft_gpus = {(s.node.name, g.index): s for s in soft for g in s.gpus}
        self.preemptions: list[Preemption] = []
        self.stopped: set[int] = set()  # running preemptible jobs this pass asks to stop
        self.preempt_due = INF  # when the next running preemptible job must be asked to stop
        self.total = sum(n.size for n in self.nodes)
        self.placements: list[Placement] = []
        self.last_start = 0.0  # without backfill, nobody starts before the job ahead
        # The lowest rank in line, running preemptible jobs included: a newcomer of a higher rank goes ahead.
        self.lowest_rank: int | None = min((int(-s.key[0]) for s in soft), default=None)
        self.top_rank = -1
        self.count = 0
        self.gpus_ahead = 0
        self.user_bookings = _user_bookings(request)
        self.free_now = {n.name: sum(1 for g in n.gpus if g.free_for(0.0, INF)) for n in self.nodes}
        # GPUs busy once this pass's placements have started (outside-held ones included).
        self.busy = self.total - sum(self.free_now.values())
        # GPUs free now for at least a moment, by node: none left means no job can start now any more.
        self.open_gpus: dict[str, set[int]] = {}
        for n in self.nodes:
            open_here = {g.index for g in n.gpus if g.free_for(0.0, _MIN_RUNTIME_S)}
            if open_here:
                self.open_gpus[n.name] = open_here

    def open_now(self) -> bool:
        """Whether any GPU is free now, for at least a moment, or could be freed by a preemption: only then
        can a job still start (or preempt) now."""
        return bool(self.open_gpus) or bool(self.soft)

    def slot(self, job: PendingJob) -> _Slot:
        """Where the next job in line would be booked, without booking it."""
        runtime, source = planned_runtime(job, self.default_runtime_s)
        guaranteed = job.time_limit_s if job.time_limit_s is not None else INF
        user_floor = 0.0 if self.user_limit is None else self._user_floor(job, runtime)
        floor = user_floor if self.backfill else max(user_floor, self.last_start)
        length = guaranteed if guaranteed > _MIN_RUNTIME_S else _MIN_RUNTIME_S
        if job.preemptible and self.preempting:
            # A gap it can use for a while before a stop ends it there (or long enough for what it should
            # take), and always longer than a stop takes, unless its time limit ends it sooner.
            length = min(length, max(min(runtime, self.min_run + self.grace), self.grace + _MIN_RUNTIME_S))
        fit = self.cluster.earliest_fit(job.gpus, length, floor)
        return _Slot(runtime, source, guaranteed, user_floor, fit)

    def add(self, job: PendingJob, slot: _Slot | None = None) -> _Step:
        """Book the next job in line (at `slot`, when the caller has just found it)."""
        rank = effective_rank(job, self.rules) if self.aging else job.priority_rank
        if self.soft:
            self.seat(line_key(rank, job.user, job.seq, self.rules))
        if self.lowest_rank is None or rank < self.lowest_rank:
            self.lowest_rank = rank
        if job.held:
            self.count += 1
            return _Step(
                job, self.count, self.gpus_ahead, None, WaitReason.HELD, None, RuntimeSource.DEFAULT, False
            )
        runtime, source, guaranteed, user_floor, fit = slot or self.slot(job)
        if fit is None:
            self.count += 1
            reason = _unforeseeable_reason(self.nodes, job.gpus, self.views)
            return _Step(job, self.count, self.gpus_ahead, None, reason, None, RuntimeSource.DEFAULT, False)
        start, node, gpus = fit
        blocker, start_source = None, source
        stopping = self._preempt(job, node, gpus) if start <= self.grace and self.soft_gpus else None
        if start > 0.0:
            position, gpus_ahead = self.count + 1, self.gpus_ahead
            self.count += 1
            self.gpus_ahead += job.gpus
            blocker, start_source = _blocker(gpus, start, source)
            if stopping is not None:
                reason = WaitReason.PREEMPTING
                blocker = Holder(stopping.job_id, stopping.progress, stopping.source)
            elif self.open_gpus:
                reason = self._reason(job, rank, guaranteed, user_floor)
            else:  # nothing free now (the usual case far down a line): it waits for GPUs
                reason = WaitReason.GPUS_BUSY
        else:
            position, gpus_ahead = 0, 0
            self.placements.append(Placement(job.job_id, node.name, tuple(sorted(g.index for g in gpus))))
            self.free_now[node.name] -= job.gpus
            self.busy += job.gpus
            reason = WaitReason.STARTING
        # The start depends on the ends of the bookings before it; later jobs depend on this one's end too.
        end = start + runtime
        rest = 0.0
        if job.preemptible and self.preempting:  # stopped where the gap closes, if it does before its end
            closes = min(g.busy_from(start) for g in gpus)
            if closes < end:
                rest = end - max(start, closes - self.grace)  # what is left after its SIGTERM
                end = closes
                self.preempt_due = min(self.preempt_due, closes - self.grace)
        holder = Holder(job.job_id, None, weakest(start_source, source))
        self.cluster.book(node, gpus, start, end, holder)
        self._close(node, gpus)
        if rest > 0.0:
            self._rebook(holder, job.gpus, rest, end)
        if self.user_limit is not None:
            self.user_bookings.setdefault(job.user, []).append((start, end, job.gpus))
        backfill = start < self.last_start
        if start > self.last_start:
            self.last_start = start
        if rank > self.top_rank:
            self.top_rank = rank
        return _Step(job, position, gpus_ahead, start, reason, blocker, start_source, backfill)

    def seat(self, key: tuple[float, float, int] | None = None) -> None:
        """Book the running preemptible jobs placed in line before `key` (all of them without one) on their
        GPUs, until their expected end or the first booking of a job ahead of them there."""
        while self.soft and (key is None or self.soft[0].key < key):
            soft = self.soft.pop(0)
            run = soft.run
            holder = Holder(run.job_id, run.progress, run.source)
            if run.job_id in self.stopped:  # stopped now: it runs again, from its place in line
                self._rebook(holder, len(soft.gpus), soft.end, self.grace)
                continue
            for g in soft.gpus:
                self.soft_gpus.pop((soft.node.name, g.index), None)
            end = min(soft.end, *(g.busy_from(self.grace) for g in soft.gpus))
            if end - self.grace >= _MIN_RUNTIME_S:
                self.cluster.book(soft.node, soft.gpus, self.grace, end, holder)
                self._close(soft.node, soft.gpus)
            if end < soft.end:  # a job ahead takes its GPUs then: it must be asked to stop a grace before
                self.preempt_due = min(self.preempt_due, end - self.grace)
                self._rebook(holder, len(soft.gpus), soft.end - (end - self.grace), max(end, self.grace))

    def _rebook(self, holder: Holder, count: int, rest: float, after: float) -> None:
        """Book what is left of a preemptible job that will be stopped (`rest` seconds of it), from `after`
        on, at its place in line: it runs again before the jobs behind it. In gaps, as it would be run, for
        a few more stops; then all of the rest in one stretch, so none of it is left out of the plan."""
        for stops in range(_REBOOKINGS + 1):
            if rest < _MIN_RUNTIME_S:
                return
            last = stops == _REBOOKINGS  # then all the rest in one stretch
            length = rest if last else max(min(rest, self.min_run + self.grace), self.grace + _MIN_RUNTIME_S)
            fit = self.cluster.earliest_fit(count, length, after)
            if fit is None:
                return
            start, node, gpus = fit
            end = min(start + rest, *(g.busy_from(start) for g in gpus))
            self.cluster.book(node, gpus, start, end, holder)
            if end >= start + rest:
                return
            rest -= max(0.0, end - self.grace - start)
            after = end

    def _preempt(self, job: PendingJob, node: Node, gpus: tuple[Gpu, ...]) -> RunningJob | None:
        """The job starts on GPUs of preemptible jobs behind it: ask them to stop. The first one, or None."""
        first: RunningJob | None = None
        for g in gpus:
            soft = self.soft_gpus.get((node.name, g.index))
            if soft is None:
                continue
            self.stopped.add(soft.run.job_id)  # `seat` books the rest of it at its place in line
            for other in soft.gpus:
                del self.soft_gpus[(soft.node.name, other.index)]
            self.preemptions.append(Preemption(soft.run.job_id, job.job_id))
            first = first or soft.run
        return first

    def _close(self, node: Node, gpus: tuple[Gpu, ...]) -> None:
        """Booked GPUs no longer free now: keep `open_gpus` in step."""
        opened = self.open_gpus.get(node.name)
        if opened is not None:
            opened.difference_update([g.index for g in gpus if not g.free_for(0.0, _MIN_RUNTIME_S)])
            if not opened:
                del self.open_gpus[node.name]

    def estimate(self, step: _Step) -> Estimate:
        job, position, gpus_ahead, start, reason, holder, source, backfill = step
        wait = start or 0.0
        early, late = _BAND[source]
        return Estimate(  # positional: ten thousand of these are made in a pass over a long line
            job.job_id,
            position,
            None if start is None else self.now + timedelta(seconds=start),
            reason,
            self.busy,
            self.total,
            position - 1 if position > 1 else 0,
            gpus_ahead,
            None if holder is None else holder.job_id,
            None if holder is None else holder.progress,
            source,
            early * wait,
            late * wait,
            backfill,
        )

    def _reason(self, job: PendingJob, rank: int, guaranteed: float, user_floor: float) -> WaitReason:
        """Why a job that cannot start now waits, while some GPU is free now."""
        if user_floor > 0.0 and self._fits_at(job.gpus, guaranteed, 0.0):
            return WaitReason.USER_LIMIT
        if self._fits_at(job.gpus, guaranteed, 0.0) or any(f >= job.gpus for f in self.free_now.values()):
            return WaitReason.BEHIND_HIGHER_PRIORITY if self.top_rank > rank else WaitReason.BEHIND_EARLIER
        return WaitReason.GPUS_BUSY

    def _user_floor(self, job: PendingJob, length: float) -> float:
        """The earliest time from which the user's limit leaves room for this job for `length` seconds."""
        limit = self.rules.max_gpus_per_user
        if limit is None:
            return 0.0
        bookings = self.user_bookings.get(job.user, [])
        for t in sorted({0.0, *(end for _, end, _ in bookings)}):
            # The user's peak use within [t, t + length): at t, or where one of its bookings begins.
            moments = [t, *(s for s, _, _ in bookings if t < s < t + length)]
            peak = max(sum(g for s, e, g in bookings if s <= m < e) for m in moments)
            if peak + job.gpus <= limit:
                return t
        return 0.0  # a job larger than the limit alone: refused at submission, never stuck here

    def _fits_at(self, count: int, length: float, start: float) -> bool:
        return any(sum(1 for g in n.gpus if g.free_for(start, length)) >= count for n in self.nodes)


def _blocker(
    gpus: tuple[Gpu, ...], start: float, source: RuntimeSource
) -> tuple[Holder | None, RuntimeSource]:
    """The booking a start after now waits for (the one that ends last before it on the job's GPUs), and
    the weakest source of the runtimes behind that start."""
    blocker: Holder | None = None
    blocker_end = 0.0
    start_source: RuntimeSource | None = None
    for gpu in gpus:
        end, holder = gpu.holder_before(start)
        if holder is None:
            continue
        start_source = holder.source if start_source is None else weakest(start_source, holder.source)
        if blocker is None or (end, holder.job_id) > (blocker_end, blocker.job_id):
            blocker, blocker_end = holder, end
    return blocker, (source if start_source is None else start_source)


def schedule(request: ScheduleRequest, *, estimates: bool = True) -> Decision:
    """Placements and, unless `estimates` is False, every waiting job's estimate.

    Without estimates the walk stops as soon as no GPU is free now, even for a moment: nothing behind that
    point can start now, so the placements are the same (and the decision has no timeline to extend)."""
    timeline = Timeline(request)
    steps = []
    for job in queue_order(request.pending, request.rules):
        if not estimates and not timeline.open_now():
            break
        steps.append(timeline.add(job))
    timeline.seat()
    found = {step.job.job_id: timeline.estimate(step) for step in steps} if estimates else {}
    return Decision(
        placements=tuple(timeline.placements),
        estimates=found,
        timeline=timeline if estimates else None,
        preemptions=tuple(timeline.preemptions),
        preempt_at=None
        if timeline.preempt_due == INF
        else timeline.now + timedelta(seconds=timeline.preempt_due),
    )


def extend(timeline: Timeline, job: PendingJob) -> Estimate | None:
    """The estimate of a job that joins the end of the line (submitted after every job in it, at the same
    or a lower priority), from a pass's timeline. None when it does not go last, or when it could start at
    once: then only a real pass may place it."""
    rank = effective_rank(job, timeline.rules)
    if timeline.rules.fair_share or (timeline.lowest_rank is not None and rank > timeline.lowest_rank):
        return None
    if job.held:
        return timeline.estimate(timeline.add(job))
    slot = timeline.slot(job)
    if slot.fit is not None and slot.fit.start <= 0.0:
        return None
    return timeline.estimate(timeline.add(job, slot))


def _build_nodes(
    request: ScheduleRequest, grace: float, *, preempting: bool
) -> tuple[list[Node], list[_Soft]]:
    """The online nodes, their GPUs booked until their running jobs should end; and, when `preempting`, the
    running preemptible jobs that may be stopped (booked only until a stop would end them), in line order."""
    holders: dict[tuple[str, int], RunningJob] = {}
    for run in request.running:
        for index in run.gpu_indices:
            holders[(run.node, index)] = run
    nodes: list[Node] = []
    soft: list[_Soft] = []
    rules = request.rules
    for view in sorted(request.nodes, key=lambda n: n.name):
        if not view.online:
            continue
        gpus: list[Gpu] = []
        stoppable: dict[int, tuple[RunningJob, float, list[Gpu]]] = {}
        for slot in sorted(view.gpus, key=lambda s: s.index):
            held_by = holders.get((view.name, slot.index))
            if held_by is not None:
                holder = Holder(held_by.job_id, held_by.progress, held_by.source)
                end = _running_end(held_by, request)
                if held_by.stopping:  # asked to stop: gone by the end of its grace at the latest
                    end = min(end, grace)
                elif held_by.preemptible and preempting and end > grace:
                    gpu = Gpu(slot.index, grace, holder)
                    stoppable.setdefault(held_by.job_id, (held_by, end, []))[2].append(gpu)
                    gpus.append(gpu)
                    continue
                gpus.append(Gpu(slot.index, end, holder))
            elif not slot.outside:
                gpus.append(Gpu(slot.index, 0.0, None))
        node = Node(view.name, gpus, len(view.gpus), view.links)
        nodes.append(node)
        for run, end, held in stoppable.values():
            key = line_key(effective_rank(run, rules), run.user, run.seq, rules)
            soft.append(_Soft(key, run, node, tuple(held), end))
    soft.sort(key=lambda s: s.key)
    return nodes, soft


def _running_end(run: RunningJob, request: ScheduleRequest) -> float:
    """When a running job should free its GPUs, in seconds from now: its expected end, never after its
    time limit stops it, never before a moment from now. One past its expected end is expected to end
    halfway to its time limit, or without one, to run about as long again as it has: assuming it ends any
    second would book everything behind it right after now and leave no gap."""
    if run.expected_end_at is None:
        return request.default_runtime_s
    end = _seconds(run.expected_end_at, request.now)
    limit = None if run.time_limit_at is None else _seconds(run.time_limit_at, request.now)
    if end <= 0 and run.source is not RuntimeSource.TIME_LIMIT:
        if limit is not None:
            end = limit / 2
        elif run.started_at is not None:
            end = _seconds(request.now, run.started_at)
    if limit is not None and limit < end:
        end = limit
    return max(end, _OVERDUE_S)


def _user_bookings(request: ScheduleRequest) -> dict[str, list[tuple[float, float, int]]]:
    bookings: dict[str, list[tuple[float, float, int]]] = {}
    if request.rules.max_gpus_per_user is None:
        return bookings
    for run in request.running:
        bookings.setdefault(run.user, []).append((0.0, _running_end(run, request), len(run.gpu_indices)))
    return bookings


def _seconds(at: datetime, now: datetime) -> float:
    return (at - now).total_seconds()


def _unforeseeable_reason(nodes: list[Node], count: int, views: tuple[NodeView, ...]) -> WaitReason:
    if not nodes:
        return WaitReason.NO_NODE_ONLINE
    if all(n.size < count for n in nodes):
        big_offline = any(len(v.gpus) >= count for v in views if not v.online)
        return WaitReason.NO_NODE_ONLINE if big_offline else WaitReason.NO_NODE_FITS
    return WaitReason.GPU_HELD_OUTSIDE
