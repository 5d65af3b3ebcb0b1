"""Replay a job trace through the scheduling policy in simulated time, and measure the outcome.

Pure and deterministic: the clock is simulated, the policy is `policy.schedule`, nothing is random.
Events are submissions and job ends; at every event time (simultaneous events batched) one pass runs and its
placements start at once. A job holds its GPUs for its trace runtime, or until its time limit kills it.
The policy sees what the controller would see: jobs carry their time limits and the runtimes history
expects (learnt from the jobs that ended so far, as the controller learns them), never their true
runtimes.

A preemptible job the policy asks to stop gets SIGTERM, saves a checkpoint at once and holds its GPUs for
the whole grace period (`Rules.preempt_grace_s`, the worst case), then waits in line again at its place.
It resumes from the checkpoint: the next attempt runs what was left plus `restart_cost_s` (loading the
checkpoint, warming up again). Work done in the grace period is lost. Each attempt has the job's time
limit. A job whose natural end comes before the grace is over simply ends.
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
_RESTART_COST_S = 60.0  # what a resumed attempt spends before it is back where it stopped

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)  # simulated time 0: the trace's submit_s 0


class SimulationError(GpuyardError):
    """The policy asked for something impossible (a GPU given twice, an unknown job): a policy bug."""

    code = "simulation_error"


def simulate(
    trace: Trace,
    *,
    rules: Rules,
    default_runtime_s: float = 3600.0,
    restart_cost_s: float = _RESTART_COST_S,
) -> SimResult:
    sim = _Simulation(trace, rules=rules, default_runtime_s=default_runtime_s, restart_cost_s=restart_cost_s)
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
    def __init__(
        self, trace: Trace, *, rules: Rules, default_runtime_s: float, restart_cost_s: float
    ) -> None:
        self.trace, self.rules, self.default_runtime_s = trace, rules, default_runtime_s
        self.restart_cost_s = restart_cost_s
        self.nodes = cluster(trace)
        self.waiting: dict[int, TraceJob] = {}
        self.running: dict[int, RunningJob] = {}
        self.busy: set[tuple[str, int]] = set()
        # Heap of (time, job id, token): the end of a job's attempt, or of its stop; only the entry with the
        # job's current token counts (a stop replaces the natural end it comes before).
        self.ends: list[tuple[float, int, int]] = []
        self.wakes: list[float] = []  # heap: passes the policy asked for, to stop preemptible jobs in time
        self.token: dict[int, int] = {}
        self.natural_end_s: dict[int, float] = {}
        self.stopped_at_s: dict[int, float] = {}  # SIGTERM time of the jobs being preempted
        self.left_s: dict[int, float] = {job.job_id: job.runtime_s for job in trace.jobs}  # work not done
        self.attempt_s: dict[int, float] = {}  # when the current attempt started
        self.runs: dict[int, list[tuple[float, float]]] = {}
        self.preempted: dict[int, int] = {}
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
                self.wakes[0] if self.wakes else float("inf"),
            )
            while self.wakes and self.wakes[0] <= now:
                heapq.heappop(self.wakes)
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
            runs=tuple(self.runs.get(job.job_id, ())),
            preemptions=self.preempted.get(job.job_id, 0),
        )

    def _finish_until(self, now: float) -> None:
        while self.ends and self.ends[0][0] <= now:
            end_s, job_id, token = heapq.heappop(self.ends)
            if token != self.token[job_id]:
                continue  # a natural end that a stop came before
            run = self.running.pop(job_id)
            for index in run.gpu_indices:
                self.busy.discard((run.node, index))
            began_s = self.attempt_s[job_id]
            self.runs.setdefault(job_id, []).append((began_s, end_s))
            used = (end_s - began_s) * len(run.gpu_indices)
            self.used_s[run.user] = self.used_s.get(run.user, 0.0) + used
            job = self.jobs_by_id[job_id]
            stopped_s = self.stopped_at_s.pop(job_id, None)
            if stopped_s is not None:  # preempted: back in line with the work after its checkpoint to do
                redo_s = self.restart_cost_s if len(self.runs[job_id]) > 1 else 0.0
                self.left_s[job_id] -= max(0.0, stopped_s - began_s - redo_s)
                self.preempted[job_id] = self.preempted.get(job_id, 0) + 1
                self.waiting[job_id] = job
                continue
            self.end_s[job_id] = end_s
            self._learn(job, sum(e - s for s, e in self.runs[job_id]))

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
        for preemption in decision.preemptions:
            self._stop(preemption.job_id, now)
        due = seconds(decision.preempt_at)
        if due is not None and (not self.wakes or due < self.wakes[0]):
            heapq.heappush(self.wakes, max(due, now + 1.0))
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
                preemptible=job.preemptible,
            )
            for job in sorted(self.waiting.values(), key=lambda j: j.job_id)
        )
        rules = replace(self.rules, usage_s=self._usage(now)) if self.rules.fair_share else self.rules
        running = tuple(self.running.values())
        if rules.aging_s is not None:  # running preemptible jobs age as waiting ones do
            running = tuple(replace(r, waiting_s=now - self.jobs_by_id[r.job_id].submit_s) for r in running)
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

    def _stop(self, job_id: int, now: float) -> None:
        """The policy asked for a preemptible job to stop: SIGTERM now, its GPUs free after the grace."""
        run = self.running.get(job_id)
        job = self.jobs_by_id.get(job_id)
        if run is None or job is None or not job.preemptible:
            raise SimulationError(f"at {now:g} s the policy preempted job {job_id}, which is not preemptible")
        if run.stopping:
            raise SimulationError(f"at {now:g} s the policy preempted job {job_id} a second time")
        stop_s = now + self.rules.preempt_grace_s
        end_at = min(run.expected_end_at, at(stop_s)) if run.expected_end_at else at(stop_s)
        self.running[job_id] = replace(run, stopping=True, expected_end_at=end_at)
        if stop_s < self.natural_end_s[job_id]:
            self.stopped_at_s[job_id] = now
            self.token[job_id] += 1
            heapq.heappush(self.ends, (stop_s, job_id, self.token[job_id]))

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
        resumed = job.job_id in self.runs
        if resumed and known is not None:  # what is left of it, as its progress reports would say
            known = max(known - (job.runtime_s - self.left_s[job.job_id]), 0.0) + self.restart_cost_s
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
            preemptible=job.preemptible,
            seq=job.job_id,
            priority_rank=job.priority.rank,
        )
        self.start_s.setdefault(job.job_id, now)
        self.attempt_s[job.job_id] = now
        run_s = self.left_s[job.job_id] + (self.restart_cost_s if resumed else 0.0)
        if limit_s is not None and run_s > limit_s:
            run_s = limit_s  # killed at its limit
        self.natural_end_s[job.job_id] = now + run_s
        self.token[job.job_id] = self.token.get(job.job_id, 0) + 1
        heapq.heappush(self.ends, (now + run_s, job.job_id, self.token[job.job_id]))
