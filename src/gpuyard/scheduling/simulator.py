"""Replay a job trace through the scheduling policy in simulated time, and measure the outcome.

Pure and deterministic: the clock is simulated, the policy is `policy.schedule`, nothing is random.
Events are submissions and job ends; at every event time (simultaneous events batched) one pass runs and its
placements start at once. A job holds its GPUs for its trace runtime, or until its time limit kills it.
The policy sees what the controller would see: jobs carry their time limits and the runtimes history
expects (learnt from the jobs that ended so far, as the controller learns them), never their true
runtimes.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from gpuyard.domain.errors import GpuyardError
from gpuyard.scheduling.figures import SimRecord, SimResult, compute_figures
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
            time_limit_at=None if limit_s is None else at(now + limit_s),
        )
        self.start_s[job.job_id] = now
        heapq.heappush(self.ends, (now + job.actual_runtime_s, job.job_id))
