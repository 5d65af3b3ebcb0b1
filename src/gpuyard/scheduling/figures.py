"""What a simulation measured: each job's record, the figures over all of them, and the report.

Pure functions over the records of `simulator.simulate`; `gpuyard simulate` and bench/bench_scheduling.py
print the report.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from gpuyard.domain.jobs import Priority
from gpuyard.scheduling.model import Rules
from gpuyard.scheduling.trace import Trace, TraceJob


@dataclass(frozen=True)
class SimRecord:
    """What happened to one job. Times are seconds from the trace's start; None: it never started."""

    job: TraceJob
    estimated_start_s: float | None  # from the pass right after its submission; None: unforeseeable
    start_s: float | None
    end_s: float | None
    backfilled: bool = False  # started while an earlier job of equal or higher priority waited
    # When it held its GPUs: one (start, end) per attempt (more than one once preempted).
    runs: tuple[tuple[float, float], ...] = ()
    preemptions: int = 0

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.job.submit_s

    @property
    def held(self) -> tuple[tuple[float, float], ...]:
        """Its runs; a record made without them held its GPUs from its start to its end."""
        if self.runs or self.start_s is None or self.end_s is None:
            return self.runs
        return ((self.start_s, self.end_s),)


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
    lower_bound_s: float  # max(GPU-seconds of all jobs / GPUs, longest job): blind to arrivals
    utilization: float  # busy GPU-seconds / (GPUs × makespan)
    utilization_vs_lower_bound: float  # lower bound / makespan
    arrival_bound_s: float  # the lower bound that respects submission times (see `arrival_bound_s`)
    utilization_vs_arrival_bound: float  # arrival bound / makespan
    idle_while_waiting_gpu_s: float  # GPU-seconds left idle while some job waited
    idle_while_none_waited_gpu_s: float  # GPU-seconds idle with no job waiting (nothing to run)
    waits: tuple[WaitFigures, ...]
    backfilled: int
    preemptions: int  # how many times a preemptible job was stopped for a job ahead of it
    preempted_jobs: int
    redone_gpu_s: float  # GPU-seconds held beyond the work the jobs needed: lost to preemptions
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


ERROR_FLOOR_S = 60.0  # estimate errors are relative to the wait, but never to less than a minute


def compute_figures(
    trace: Trace, records: tuple[SimRecord, ...], *, delays_s: dict[int, float], passes: int
) -> SimFigures:
    started = [r for r in records if r.start_s is not None and r.end_s is not None]
    first_s = min(j.submit_s for j in trace.jobs)
    makespan_s = max((r.end_s or 0.0 for r in started), default=first_s) - first_s
    busy_gpu_s = sum((end - start) * r.job.gpus for r in started for start, end in r.held)
    work_s = sum(j.actual_runtime_s * j.gpus for j in trace.jobs)
    done_s = sum(r.job.actual_runtime_s * r.job.gpus for r in started)
    lower_bound_s = max(work_s / trace.total_gpus, max(j.actual_runtime_s for j in trace.jobs))
    arrival_s = arrival_bound_s(trace)
    idle_waiting_s, idle_none_s = idle_gpu_s(
        records, gpus=trace.total_gpus, since_s=first_s, until_s=first_s + makespan_s
    )
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
        arrival_bound_s=arrival_s,
        utilization_vs_arrival_bound=arrival_s / makespan_s if makespan_s > 0 else 0.0,
        idle_while_waiting_gpu_s=idle_waiting_s,
        idle_while_none_waited_gpu_s=idle_none_s,
        waits=_waits(started),
        backfilled=sum(1 for r in records if r.backfilled),
        preemptions=sum(r.preemptions for r in records),
        preempted_jobs=sum(1 for r in records if r.preemptions),
        redone_gpu_s=max(0.0, busy_gpu_s - done_s),
        max_delay_by_later_s=max(delays_s.values(), default=0.0),
        delayed_jobs=sum(1 for d in delays_s.values() if d > 0),
        estimate_error_limited=_errors([r for r in started if r.job.time_limit_s is not None]),
        estimate_error_unlimited=_errors([r for r in started if r.job.time_limit_s is None]),
        passes=passes,
    )


def arrival_bound_s(trace: Trace) -> float:
    """A lower bound on the makespan that respects submission times: the work submitted at or after any
    moment t needs at least (t − first submission) + its GPU-seconds / GPUs, and each job its submission
    plus its runtime. No schedule, with or without foresight, ends sooner."""
    first_s = min(j.submit_s for j in trace.jobs)
    bound_s = work_after_s = 0.0
    for job in sorted(trace.jobs, key=lambda j: j.submit_s, reverse=True):
        work_after_s += job.actual_runtime_s * job.gpus
        since_s = job.submit_s - first_s
        bound_s = max(bound_s, since_s + work_after_s / trace.total_gpus, since_s + job.actual_runtime_s)
    return bound_s


def idle_gpu_s(
    records: tuple[SimRecord, ...], *, gpus: int, since_s: float, until_s: float
) -> tuple[float, float]:
    """GPU-seconds idle within [since_s, until_s] while some job waited, and while none did."""
    changes: list[tuple[float, int, int]] = []  # (moment, change of busy GPUs, change of waiting jobs)
    for r in records:
        changes.append((r.job.submit_s, 0, 1))
        held = r.held
        for i, (start, end) in enumerate(held):  # a preempted job waits again between its runs
            changes.append((start, r.job.gpus, -1))
            changes.append((end, -r.job.gpus, 0 if i == len(held) - 1 else 1))
        if r.start_s is not None and not held:  # started, never ended
            changes.append((r.start_s, r.job.gpus, -1))
    changes.sort()
    busy = waiting = 0
    moment_s = since_s
    idle_waiting_s = idle_none_s = 0.0
    for at_s, busy_change, waiting_change in [*changes, (until_s, 0, 0)]:
        span_s = min(at_s, until_s) - moment_s
        if span_s > 0:
            if waiting:
                idle_waiting_s += (gpus - busy) * span_s
            else:
                idle_none_s += (gpus - busy) * span_s
            moment_s = min(at_s, until_s)
        busy += busy_change
        waiting += waiting_change
    return idle_waiting_s, idle_none_s


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
            "aging_max_rank": rules.aging_max_rank,
            "fair_share": rules.fair_share,
            "max_gpus_per_user": rules.max_gpus_per_user,
            "preempt_grace_s": rules.preempt_grace_s,
            "preempt_min_run_s": rules.preempt_min_run_s,
        },
        "default_runtime_s": result.default_runtime_s,
        **asdict(result.figures),
        "unstarted_job_lines": [r.job.line for r in result.records if r.start_s is None],
    }


def format_report(result: SimResult) -> str:
    f, rules, trace = result.figures, result.rules, result.trace
    most = "normal" if rules.aging_max_rank <= 1 else "high"
    aging = f"aging every {rules.aging_s:g} s up to {most}" if rules.aging_s else "no aging"
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
        _row(
            "bound with arrivals",
            f"{_duration(f.arrival_bound_s)} = max over t of t + GPU-seconds submitted from t on / GPUs",
        ),
        _row(
            "utilization vs that bound",
            f"{f.utilization_vs_arrival_bound:.1%} (bound with arrivals / makespan)",
        ),
        _row(
            "idle GPU time",
            f"{_duration(f.idle_while_waiting_gpu_s)} while jobs waited, "
            f"{_duration(f.idle_while_none_waited_gpu_s)} while none waited (GPU-time)",
        ),
        _row("started by backfill", f"{f.backfilled} jobs"),
        _row(
            "preemptions",
            f"{f.preemptions} of {f.preempted_jobs} jobs, "
            f"{_duration(f.redone_gpu_s)} of GPU-time lost to them",
        ),
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
