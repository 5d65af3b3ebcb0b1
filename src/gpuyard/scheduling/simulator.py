"""Replay a job trace through the scheduling policy in simulated time, and measure the outcome.

Pure and deterministic: the clock is simulated, the policy is `policy.schedule`, nothing is random.
Events are submissions and job ends; at every event time (simultaneous events batched) one pass runs and its
placements start at once. A job holds its GPUs for its trace runtime, or until its time limit kills it.
The policy sees what the controller would see: running jobs end at start + time limit, else at start +
`default_runtime_s`; waiting jobs carry their time limit, never their true runtime.
"""

from __future__ import annotations

import heapq
import statistics
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta

from gpuyard.domain.errors import GpuyardError
from gpuyard.domain.jobs import Priority
from gpuyard.scheduling.history import RuntimeHistory, build_history
from gpuyard.scheduling.model import (
    Decision,
    GpuSlot,
    NodeView,
    PendingJob,
    Placement,
    Rules,
    RunningJob,
    ScheduleRequest,
)
from gpuyard.scheduling.policy import expected_runtime, queue_order, schedule
from gpuyard.scheduling.trace import Trace, TraceJob

_HISTORY_RUNS = 200  # the finished runs the history is built from, newest first

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)  # simulated time 0: the trace's submit_s 0


class SimulationError(GpuyardError):
    """The policy asked for something impossible (a GPU given twice, an unknown job): a policy bug."""

    code = "simulation_error"


@dataclass(frozen=True)
class SimRecord:
    """What happened to one job. Times are seconds from the trace's start; None: it never started."""

    job: TraceJob
    estimated_start_s: float | None  # from the pass right after its submission; None: unforeseeable
    start_s: float | None
    end_s: float | None
    backfilled: bool = False  # started while an earlier job of equal or higher priority waited

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.job.submit_s


@dataclass(frozen=True)
class WaitFigures:
    priority: str
    jobs: int
    mean_wait_s: float
    p95_wait_s: float


@dataclass(frozen=True)
class EstimateErrorFigures:
    """|estimated start − real start| / max(real wait, 60 s), over the started jobs that had an estimate."""

    jobs: int
    without_estimate: int
    median: float | None
    p90: float | None


@dataclass(frozen=True)
class SimFigures:
    jobs: int
    started: int
    unstarted: int
    killed_at_limit: int
    gpus: int
    busy_gpu_s: float
    makespan_s: float  # first submission → last end
    lower_bound_s: float  # max(GPU-seconds of all jobs / GPUs, longest job)
    utilization: float  # busy GPU-seconds / (GPUs × makespan)
    utilization_vs_lower_bound: float  # lower bound / makespan
    waits: tuple[WaitFigures, ...]
    backfilled: int
    max_delay_by_later_s: float
    delayed_jobs: int
    estimate_error_limited: EstimateErrorFigures
    estimate_error_unlimited: EstimateErrorFigures
    passes: int


@dataclass(frozen=True)
class SimResult:
    trace: Trace
    rules: Rules
    default_runtime_s: float
    records: tuple[SimRecord, ...]
    figures: SimFigures


def simulate(trace: Trace, *, rules: Rules, default_runtime_s: float = 3600.0) -> SimResult:
    sim = _Simulation(trace, rules=rules, default_runtime_s=default_runtime_s)
    sim.run()
    records = tuple(sim.record(job) for job in trace.jobs)
    figures = compute_figures(trace, records, delays_s=sim.delays_s, passes=sim.passes)
    return SimResult(trace, rules, default_runtime_s, records, figures)


def at(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def seconds(moment: datetime | None) -> float | None:
    return None if moment is None else (moment - EPOCH).total_seconds()


def cluster(trace: Trace) -> tuple[NodeView, ...]:
    gpus = tuple(GpuSlot(i) for i in range(trace.gpus_per_node))
    return tuple(NodeView(f"node{n:02d}", gpus) for n in range(trace.nodes))


class _Simulation:
    def __init__(self, trace: Trace, *, rules: Rules, default_runtime_s: float) -> None:
        self.trace, self.rules, self.default_runtime_s = trace, rules, default_runtime_s
        self.nodes = cluster(trace)
        self.waiting: dict[int, TraceJob] = {}  # insertion order is submission order
        self.running: dict[int, RunningJob] = {}
        self.busy: set[tuple[str, int]] = set()
        self.ends: list[tuple[float, int]] = []  # heap of (end time, job id)
        self.estimate_s: dict[int, float | None] = {}
        self.start_s: dict[int, float] = {}
        self.end_s: dict[int, float] = {}
        self.backfilled: set[int] = set()
        self.delays_s: dict[int, float] = {}  # job id → the most a later job delayed its estimate
        self.used_s: dict[str, float] = {}  # GPU-seconds per user of the jobs that ended
        # What the controller learns from finished jobs: the runs (newest first) and their history.
        self.finished: list[dict[str, object]] = []
        self.history = RuntimeHistory()
        self.jobs_by_id = {job.job_id: job for job in trace.jobs}
        self.passes = 0

    def run(self) -> None:
        jobs, submitted = self.trace.jobs, 0
        while submitted < len(jobs) or self.ends:
            now = min(
                jobs[submitted].submit_s if submitted < len(jobs) else float("inf"),
                self.ends[0][0] if self.ends else float("inf"),
            )
            self._finish_until(now)
            new: list[TraceJob] = []
            while submitted < len(jobs) and jobs[submitted].submit_s <= now:
                new.append(jobs[submitted])
                self.waiting[jobs[submitted].job_id] = jobs[submitted]
                submitted += 1
            self._pass(now, new)

    def record(self, job: TraceJob) -> SimRecord:
        return SimRecord(
            job=job,
            estimated_start_s=self.estimate_s.get(job.job_id),
            start_s=self.start_s.get(job.job_id),
            end_s=self.end_s.get(job.job_id),
            backfilled=job.job_id in self.backfilled,
        )

    def _finish_until(self, now: float) -> None:
        while self.ends and self.ends[0][0] <= now:
            end_s, job_id = heapq.heappop(self.ends)
            run = self.running.pop(job_id)
            for index in run.gpu_indices:
                self.busy.discard((run.node, index))
            self.end_s[job_id] = end_s
            used = (end_s - self.start_s[job_id]) * len(run.gpu_indices)
            self.used_s[run.user] = self.used_s.get(run.user, 0.0) + used
            self._learn(self.jobs_by_id[job_id], end_s - self.start_s[job_id])

    def _learn(self, job: TraceJob, runtime_s: float) -> None:
        """A job that ended teaches the history of runtimes, as finished jobs do in the controller."""
        if job.time_limit_s is not None and runtime_s >= job.time_limit_s:
            return  # killed at its limit: says nothing about how long such a job wants
        run = {"user": job.user, "name": None, "command": None, "time_limit_s": job.time_limit_s}
        self.finished.insert(0, {**run, "runtime_s": runtime_s})
        del self.finished[_HISTORY_RUNS:]
        self.history = build_history(self.finished)

    def _pass(self, now: float, new: list[TraceJob]) -> None:
        request = self._request(now)
        # Estimates are needed for newcomers and to measure backfills. A pass without them stops once no GPU
        # is free, so the many end events of a long line stay cheap; its placements are the same.
        decision = schedule(request, estimates=bool(new))
        self.passes += 1
        backfills = self._backfills(request, decision)
        if backfills and not new:
            full = schedule(request)
            if full.placements != decision.placements:
                raise SimulationError(f"at {now:g} s the policy placed other jobs when asked for estimates")
            decision = full
        for job in new:
            estimate = decision.estimates.get(job.job_id)
            self.estimate_s[job.job_id] = seconds(estimate.start_at) if estimate else None
        self._measure_delays(request, decision, backfills)
        for placement in decision.placements:
            self._start(placement, now)

    def _request(self, now: float) -> ScheduleRequest:
        pending = tuple(
            PendingJob(
                job_id=job.job_id,
                seq=job.job_id,
                gpus=job.gpus,
                priority_rank=job.priority.rank,
                user=job.user,
                time_limit_s=job.time_limit_s,
                expected_runtime_s=self.history.expected_runtime_s(
                    user=job.user, name=None, command=None, time_limit_s=job.time_limit_s
                ),
                waiting_s=now - job.submit_s,
            )
            for job in self.waiting.values()
        )
        rules = replace(self.rules, usage_s=self._usage(now)) if self.rules.fair_share else self.rules
        running = tuple(self.running.values())
        return ScheduleRequest(at(now), pending, running, self.nodes, self.default_runtime_s, rules)

    def _usage(self, now: float) -> dict[str, float]:
        """GPU-seconds per user since the trace began: ended jobs plus the running ones so far."""
        usage = dict(self.used_s)
        for run in self.running.values():
            used = (now - self.start_s[run.job_id]) * len(run.gpu_indices)
            usage[run.user] = usage.get(run.user, 0.0) + used
        return usage

    def _backfills(self, request: ScheduleRequest, decision: Decision) -> dict[int, list[TraceJob]]:
        """Each placed job that starts ahead of waiting jobs submitted before it at an equal or higher
        priority (a backfill), with those jobs. Only jobs the policy's line puts ahead count: fair share
        rightly lets a later job of a user with less GPU time go first."""
        placed = {p.job_id for p in decision.placements}
        still = [job for job in self.waiting.values() if job.job_id not in placed]
        found: dict[int, list[TraceJob]] = {}
        line: dict[int, int] = {}
        for placement in decision.placements:
            job = self.waiting[placement.job_id]
            passed = [j for j in still if j.job_id < job.job_id and j.priority.rank >= job.priority.rank]
            if passed and not line:
                line = {j.job_id: i for i, j in enumerate(queue_order(request.pending, request.rules))}
            passed = [j for j in passed if line[j.job_id] < line[job.job_id]]
            if passed:
                found[job.job_id] = passed
        return found

    def _measure_delays(
        self, request: ScheduleRequest, decision: Decision, backfills: dict[int, list[TraceJob]]
    ) -> None:
        """How much later each passed job's estimate is than in the same pass without the backfilled job."""
        for job_id, passed in backfills.items():
            self.backfilled.add(job_id)
            others = tuple(p for p in request.pending if p.job_id != job_id)
            without = schedule(replace(request, pending=others))
            for earlier in passed:
                with_s = seconds(decision.estimates[earlier.job_id].start_at)
                without_s = seconds(without.estimates[earlier.job_id].start_at)
                if with_s is not None and without_s is not None:
                    delay_s = max(0.0, with_s - without_s)
                    self.delays_s[earlier.job_id] = max(self.delays_s.get(earlier.job_id, 0.0), delay_s)

    def _start(self, placement: Placement, now: float) -> None:
        job = self.waiting.pop(placement.job_id, None)
        if job is None:
            raise SimulationError(f"the policy placed job {placement.job_id}, which is not waiting")
        gpus = [(placement.node, i) for i in placement.gpu_indices]
        node = next((n for n in self.nodes if n.name == placement.node), None)
        if (
            node is None
            or len(set(gpus)) != job.gpus
            or any(i < 0 or i >= len(node.gpus) for i in placement.gpu_indices)
        ):
            raise SimulationError(f"the policy placed job {job.job_id} on {placement.node} {gpus}")
        if any(g in self.busy for g in gpus):
            raise SimulationError(f"the policy gave a busy GPU to job {job.job_id}: {gpus}")
        self.busy.update(gpus)
        limit_s = job.time_limit_s
        known = self.history.expected_runtime_s(user=job.user, name=None, command=None, time_limit_s=limit_s)
        expected_s, source = expected_runtime(
            known_s=known, time_limit_s=limit_s, default_runtime_s=self.default_runtime_s
        )
        self.running[job.job_id] = RunningJob(
            job_id=job.job_id,
            node=placement.node,
            gpu_indices=placement.gpu_indices,
            expected_end_at=at(now + expected_s),
            user=job.user,
            source=source,
            started_at=at(now),
        )
        self.start_s[job.job_id] = now
        heapq.heappush(self.ends, (now + job.actual_runtime_s, job.job_id))


# --- figures -----------------------------------------------------------------------------------------

ERROR_FLOOR_S = 60.0  # estimate errors are relative to the wait, but never to less than a minute


def compute_figures(
    trace: Trace, records: tuple[SimRecord, ...], *, delays_s: dict[int, float], passes: int
) -> SimFigures:
    started = [r for r in records if r.start_s is not None and r.end_s is not None]
    first_s = min(j.submit_s for j in trace.jobs)
    makespan_s = max((r.end_s or 0.0 for r in started), default=first_s) - first_s
    busy_gpu_s = sum(((r.end_s or 0.0) - (r.start_s or 0.0)) * r.job.gpus for r in started)
    work_s = sum(j.actual_runtime_s * j.gpus for j in trace.jobs)
    lower_bound_s = max(work_s / trace.total_gpus, max(j.actual_runtime_s for j in trace.jobs))
    return SimFigures(
        jobs=len(records),
        started=len(started),
        unstarted=len(records) - len(started),
        killed_at_limit=sum(1 for r in started if r.job.actual_runtime_s < r.job.runtime_s),
        gpus=trace.total_gpus,
        busy_gpu_s=busy_gpu_s,
        makespan_s=makespan_s,
        lower_bound_s=lower_bound_s,
        utilization=busy_gpu_s / (trace.total_gpus * makespan_s) if makespan_s > 0 else 0.0,
        utilization_vs_lower_bound=lower_bound_s / makespan_s if makespan_s > 0 else 0.0,
        waits=_waits(started),
        backfilled=sum(1 for r in records if r.backfilled),
        max_delay_by_later_s=max(delays_s.values(), default=0.0),
        delayed_jobs=sum(1 for d in delays_s.values() if d > 0),
        estimate_error_limited=_errors([r for r in started if r.job.time_limit_s is not None]),
        estimate_error_unlimited=_errors([r for r in started if r.job.time_limit_s is None]),
        passes=passes,
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest rank on the sorted values (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _waits(started: list[SimRecord]) -> tuple[WaitFigures, ...]:
    figures = []
    for priority in Priority:
        waits = [r.wait_s or 0.0 for r in started if r.job.priority is priority]
        if waits:
            figures.append(
                WaitFigures(priority.value, len(waits), statistics.fmean(waits), percentile(waits, 0.95))
            )
    return tuple(figures)


def _errors(started: list[SimRecord]) -> EstimateErrorFigures:
    errors = [
        abs(r.estimated_start_s - (r.start_s or 0.0)) / max(r.wait_s or 0.0, ERROR_FLOOR_S)
        for r in started
        if r.estimated_start_s is not None
    ]
    without = len(started) - len(errors)
    if not errors:
        return EstimateErrorFigures(0, without, None, None)
    return EstimateErrorFigures(len(errors), without, statistics.median(errors), percentile(errors, 0.9))


def figures_as_dict(result: SimResult) -> dict[str, object]:
    """The figures and the settings that produced them, as JSON-ready data."""
    rules = result.rules
    return {
        "trace": result.trace.name,
        "cluster": f"{result.trace.nodes}x{result.trace.gpus_per_node}",
        "rules": {
            "backfill": rules.backfill,
            "aging_s": rules.aging_s,
            "fair_share": rules.fair_share,
            "max_gpus_per_user": rules.max_gpus_per_user,
        },
        "default_runtime_s": result.default_runtime_s,
        **asdict(result.figures),
        "unstarted_job_lines": [r.job.line for r in result.records if r.start_s is None],
    }


def format_report(result: SimResult) -> str:
    f, rules, trace = result.figures, result.rules, result.trace
    aging = f"aging every {rules.aging_s:g} s" if rules.aging_s else "no aging"
    limit = f"at most {rules.max_gpus_per_user} GPUs a user" if rules.max_gpus_per_user else "no user limit"
    backfill = "on" if rules.backfill else "off"
    lines = [
        f"{trace.name}: {trace.nodes}x{trace.gpus_per_node} GPUs, backfill {backfill}, "
        f"{aging}, fair share {'on' if rules.fair_share else 'off'}, {limit}, "
        f"default runtime {result.default_runtime_s:g} s",
        _row(
            "jobs",
            f"{f.jobs} ({f.started} started, {f.unstarted} never started, "
            f"{f.killed_at_limit} killed at their time limit)",
        ),
        _row("GPU utilization", f"{f.utilization:.1%} of {f.gpus} GPUs over the makespan"),
        _row("makespan", f"{_duration(f.makespan_s)} ({f.makespan_s:,.0f} s) from the first submission"),
        _row("lower bound", f"{_duration(f.lower_bound_s)} = max(GPU-seconds / GPUs, longest job)"),
        _row("utilization vs lower bound", f"{f.utilization_vs_lower_bound:.1%} (lower bound / makespan)"),
        _row("started by backfill", f"{f.backfilled} jobs"),
        _row("max delay by a later job", f"{f.max_delay_by_later_s:g} s ({f.delayed_jobs} jobs delayed)"),
        _row("scheduling passes", str(f.passes)),
        _row("wait by priority", f"{'jobs':>6} {'mean':>10} {'p95':>10}"),
    ]
    for w in f.waits:
        lines.append(
            _row(
                f"  {w.priority}", f"{w.jobs:>6} {_duration(w.mean_wait_s):>10} {_duration(w.p95_wait_s):>10}"
            )
        )
    lines.append(
        _row(
            "start estimate error",
            f"{'jobs':>6} {'median':>10} {'p90':>10}   |estimate - start| / max(wait, 60 s)",
        )
    )
    for label, e in (
        ("  with time limit", f.estimate_error_limited),
        ("  without time limit", f.estimate_error_unlimited),
    ):
        median = "-" if e.median is None else f"{e.median:.1%}"
        p90 = "-" if e.p90 is None else f"{e.p90:.1%}"
        lines.append(
            _row(label, f"{e.jobs:>6} {median:>10} {p90:>10}   ({e.without_estimate} had no estimate)")
        )
    return "\n".join(lines) + "\n"


def _row(label: str, value: str) -> str:
    return f"  {label:<28}{value}"


def _duration(value_s: float) -> str:
    if value_s < 120:
        return f"{value_s:.0f} s"
    if value_s < 2 * 3600:
        return f"{value_s / 60:.1f} min"
    if value_s < 2 * 86400:
        return f"{value_s / 3600:.1f} h"
    return f"{value_s / 86400:.2f} d"
