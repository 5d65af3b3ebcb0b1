"""The scheduler shell: load a snapshot, call the pure policy, apply its decision, publish dispatches.

Passes are serialised and coalesced: every caller of `run_pass()` gets the decision of a pass that started
after its call, and many concurrent callers share one pass. Estimates for every waiting job cost a walk
of the whole line, so only callers that show them ask for them (`current()` answers from the last such
pass while nothing has changed); passes for events and the periodic tick only place jobs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.broker.messages import Dispatch
from gpuyard.adapters.db import history_repo, jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.domain.errors import BrokerUnavailable
from gpuyard.domain.jobs import JobSpec
from gpuyard.scheduling.history import RuntimeHistory, build_history, gpu_seconds_by_user
from gpuyard.scheduling.model import (
    Decision,
    Estimate,
    GpuSlot,
    NodeView,
    PendingJob,
    Preemption,
    Rules,
    RunningJob,
    RuntimeSource,
    ScheduleRequest,
)
from gpuyard.scheduling.policy import Timeline, expected_runtime, extend, schedule
from gpuyard.services.ports import Clock, NoTelemetry, Publisher, Telemetry
from gpuyard.services.preemption import request_preemptions

log = logging.getLogger(__name__)

# A running job's own progress is trusted for its expected end once it has reported this fraction.
_MIN_PROGRESS = 0.01


@dataclass(frozen=True)
class SchedulingConfig:
    """The controller's scheduling settings (see docs/configuration.md)."""

    default_runtime_s: float = 3600.0
    node_lease_s: float = 30.0
    backfill: bool = True
    aging_s: float | None = None
    aging_max_rank: int = 2  # high
    max_gpus_per_user: int | None = None
    fair_share: bool = False
    fair_share_window_s: float = 7 * 86400.0
    links: frozenset[tuple[int, int]] = frozenset()
    history_window_s: float = 30 * 86400.0
    refresh_s: float = 60.0  # how often the history of runtimes and the fair-share usage are re-read
    preempt_grace_s: float = 60.0
    preempt_min_run_s: float = 600.0


@dataclass(frozen=True)
class PassResult:
    now: datetime
    decision: Decision
    pending: dict[int, dict[str, Any]]
    largest_node_gpus: int | None = None


def expected_end(
    row: dict[str, Any], *, now: datetime, history: RuntimeHistory, default_runtime_s: float
) -> tuple[datetime, float | None, RuntimeSource]:
    """When a job holding GPUs should end: from its progress, else the history of similar jobs, else its
    time limit, else the default runtime."""
    began: datetime = row["started_at"] or row["dispatched_at"]
    progress = None
    if row["progress_total"] and row["progress_step"] is not None and row["started_at"] is not None:
        progress = min(max(row["progress_step"] / row["progress_total"], 0.0), 1.0)
    if progress is not None and progress >= _MIN_PROGRESS and row["started_at"] is not None:
        return began + (now - began) / progress, progress, RuntimeSource.PROGRESS
    known = history.expected_runtime_s(
        user=row["user"], name=row["name"], command=json.dumps(row["argv"]), time_limit_s=row["time_limit_s"]
    )
    runtime_s, source = expected_runtime(
        known_s=known, time_limit_s=row["time_limit_s"], default_runtime_s=default_runtime_s
    )
    return began + timedelta(seconds=runtime_s), progress, source


def reported_links(gpus: list[dict[str, Any]]) -> frozenset[tuple[int, int]]:
    """The NVLink pairs a worker reported (NVML), from each GPU's list of linked partners."""
    return frozenset((min(g["index"], p), max(g["index"], p)) for g in gpus for p in g.get("links", ()))


def node_online(node: dict[str, Any], *, now: datetime, node_lease_s: float) -> bool:
    """A node is online while its last heartbeat is younger than the lease."""
    last_seen: datetime = node["last_seen_at"]
    return (now - last_seen).total_seconds() <= node_lease_s


def build_request(
    *,
    now: datetime,
    pending: list[dict[str, Any]],
    active: list[dict[str, Any]],
    nodes: list[dict[str, Any]],
    config: SchedulingConfig,
    history: RuntimeHistory | None = None,
    usage_s: dict[str, float] | None = None,
) -> ScheduleRequest:
    history = history or RuntimeHistory()
    running = []
    for row in active:
        end_at, progress, source = expected_end(
            row, now=now, history=history, default_runtime_s=config.default_runtime_s
        )
        asked: datetime | None = row.get("preempt_requested_at")
        if asked is not None:  # being preempted: gone by the end of its grace at the latest
            deadline = asked + timedelta(seconds=config.preempt_grace_s)
            end_at = deadline if end_at is None else min(end_at, deadline)
        gpus = tuple(row["gpu_indices"])
        began: datetime = row["started_at"] or row["dispatched_at"]
        limit_at = None if row["time_limit_s"] is None else began + timedelta(seconds=row["time_limit_s"])
        running.append(
            RunningJob(
                row["id"],
                row["node"],
                gpus,
                end_at,
                progress,
                row["user"],
                source,
                started_at=began,
                time_limit_at=limit_at,
                preemptible=bool(row.get("preemptible")),
                seq=row["id"],
                priority_rank=row.get("priority_rank", 1),
                waiting_s=max(0.0, (now - row["submitted_at"]).total_seconds())
                if row.get("submitted_at")
                else 0.0,
                # a stop asked for and not done yet: a preemption, or a cancel
                stopping=asked is not None or row.get("cancel_requested_at") is not None,
            )
        )
    views = tuple(
        NodeView(
            name=n["name"],
            gpus=tuple(GpuSlot(g["index"], outside=bool(g.get("outside"))) for g in n["gpus"]),
            # a draining node takes no new job: for placement it is as good as offline
            online=node_online(n, now=now, node_lease_s=config.node_lease_s) and not n.get("draining"),
            links=config.links | reported_links(n["gpus"]),
        )
        for n in nodes
    )
    waiting = tuple(
        PendingJob(
            job_id=r["id"],
            seq=r["id"],
            gpus=r["gpus"],
            priority_rank=r["priority_rank"],
            user=r["user"],
            time_limit_s=r["time_limit_s"],
            expected_runtime_s=history.expected_runtime_s(
                user=r["user"], name=r["name"], command=r.get("command"), time_limit_s=r["time_limit_s"]
            ),
            # a job waiting out its retry backoff sits like a held one until then
            held=r.get("held_at") is not None or (r.get("retry_at") is not None and r["retry_at"] > now),
            waiting_s=max(0.0, (now - r["submitted_at"]).total_seconds()),
            preemptible=bool(r.get("preemptible")),
        )
        for r in pending
    )
    rules = Rules(
        backfill=config.backfill,
        aging_s=config.aging_s,
        aging_max_rank=config.aging_max_rank,
        max_gpus_per_user=config.max_gpus_per_user,
        fair_share=config.fair_share,
        usage_s=usage_s or {},
        preempt_min_run_s=config.preempt_min_run_s,
        preempt_grace_s=config.preempt_grace_s,
    )
    return ScheduleRequest(now, waiting, tuple(running), views, config.default_runtime_s, rules)


class SchedulerService:
    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        *,
        clock: Clock,
        config: SchedulingConfig,
        max_extend_age_s: float = 5.0,
        max_reuse_age_s: float = 5.0,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._telemetry = telemetry or NoTelemetry()
        self._db = db
        self._publisher = publisher
        self._clock = clock
        self.config = config
        self._max_extend_age_s = max_extend_age_s
        self._max_reuse_age_s = max_reuse_age_s
        self._history = RuntimeHistory()
        self._usage_s: dict[str, float] = {}
        self._refreshed_at: datetime | None = None
        self._lock = asyncio.Lock()
        self._requested = 0
        self._completed = 0
        self._last: PassResult | None = None  # the last pass with estimates
        self._placed = 0
        self._last_placed: PassResult | None = None  # the last pass of either kind
        # The last pass's timeline, for estimating newcomers at the end of the line without a pass;
        # stale once anything else changed (a job ended, a node changed, a submission it missed).
        self._timeline: Timeline | None = None
        self._stale = True
        # Changes to the line or the GPUs that gpuyard itself makes or hears of (submissions, placements,
        # queue controls, ended jobs, changed nodes): the last estimates hold while none has happened.
        self._changes = 0
        self._last_changes = -1  # the count when the last pass with estimates loaded its snapshot
        self._nodes: dict[str, dict[str, Any]] | None = None
        self._beats: dict[str, datetime] = {}  # each node's last heartbeat heard, by its own clock
        self._outbox_lock = asyncio.Lock()
        self._wake_tasks: set[asyncio.Task[Any]] = set()
        # A pass due to stop a preemptible job a grace before a job ahead of it needs its GPUs.
        self._due: tuple[datetime, asyncio.TimerHandle] | None = None

    async def run_pass(self, *, estimates: bool = True) -> PassResult:
        """A pass that started after this call. Without `estimates` it only places jobs: what an event
        (a job ended, a node changed) needs, at a cost that does not grow with a long line."""
        self._requested += 1
        ticket = self._requested
        async with self._lock:
            if self._completed >= ticket and self._last is not None:
                return self._last
            if not estimates and self._placed >= ticket and self._last_placed is not None:
                return self._last_placed
            target = self._requested
            began = time.perf_counter()
            result = await self._pass(estimates=estimates)
            self._telemetry.scheduler_pass(duration_s=time.perf_counter() - began, estimates=estimates)
            self._placed, self._last_placed = target, result
            if estimates:
                self._completed, self._last = target, result
            return result

    async def current(self) -> PassResult:
        """Every waiting job's estimate as of now: the last pass with estimates while nothing has changed
        since it and it is at most `max_reuse_age_s` old (runtimes reported since then wait for the next
        pass), else a new pass."""
        last = self._last
        if (
            last is not None
            and self._last_changes == self._changes
            and (self._clock() - last.now).total_seconds() <= self._max_reuse_age_s
        ):
            return last
        return await self.run_pass()

    @property
    def last(self) -> PassResult | None:
        """The latest pass's result, with or without estimates, if any pass ran."""
        return self._last_placed

    def newcomer(self, job_id: int, *, user: str, spec: JobSpec) -> PendingJob:
        """A job just accepted, as the policy sees it (its expected runtime from history)."""
        command = json.dumps(list(spec.argv))
        return PendingJob(
            job_id=job_id,
            seq=job_id,
            gpus=spec.gpus,
            priority_rank=spec.priority.rank,
            user=user,
            time_limit_s=spec.time_limit_s,
            expected_runtime_s=self._history.expected_runtime_s(
                user=user, name=spec.name, command=command, time_limit_s=spec.time_limit_s
            ),
            preemptible=spec.preemptible,
        )

    def try_extend(self, jobs: list[PendingJob], *, now: datetime) -> list[Estimate] | None:
        """Estimates for jobs just accepted (in submission order) that join the end of the line, from the
        last pass's timeline. None when a real pass is needed (then the timeline is stale)."""
        self._changes += 1  # the line has grown: the last pass's estimates miss the newcomers
        if self._timeline is None or self._stale or self._lock.locked():
            self._stale = True
            return None
        if (now - self._timeline.now).total_seconds() > self._max_extend_age_s:
            self._stale = True
            return None
        estimates = []
        for job in jobs:
            estimate = extend(self._timeline, job)
            if estimate is None:
                self._stale = True
                return None
            estimates.append(estimate)
        return estimates

    def note_node(self, node: dict[str, Any], *, beat_at: datetime | None = None) -> None:
        """A node's heartbeat was recorded (the controller writes nodes, so it can keep them in memory).
        `beat_at`, the heartbeat's own time, goes into the node's dispatches (see domain/lease.py)."""
        if beat_at is not None:
            self._beats[node["name"]] = beat_at
        if self._nodes is not None:
            self._nodes[node["name"]] = node

    def wake(self) -> None:
        """Something changed: ask for a pass soon, without waiting for it."""
        self._stale = True
        self._changes += 1
        task = asyncio.get_running_loop().create_task(self._safe_pass())
        self._wake_tasks.add(task)
        task.add_done_callback(self._wake_tasks.discard)

    async def _safe_pass(self) -> None:
        try:
            await self.run_pass(estimates=False)
        except Exception:
            log.exception("scheduling pass failed")

    async def _pass(self, *, estimates: bool) -> PassResult:
        changes = self._changes
        if estimates:
            self._stale = False  # what changes from here on (a submission, an event) makes it stale again
        now = self._clock()
        async with self._db.read() as conn:
            pending = await jobs_repo.pending_jobs(conn)
            active = await jobs_repo.active_attempts(conn)
            if self._nodes is None:
                self._nodes = {n["name"]: n for n in await repo.list_nodes(conn)}
            if (
                self._refreshed_at is None
                or (now - self._refreshed_at).total_seconds() >= self.config.refresh_s
            ):
                await self._refresh_history(conn, now)
        nodes = sorted(self._nodes.values(), key=lambda n: str(n["name"]))
        request = build_request(
            now=now,
            pending=pending,
            active=active,
            nodes=nodes,
            config=self.config,
            history=self._history,
            usage_s=self._usage_s,
        )
        decision = schedule(request, estimates=estimates)
        if estimates:
            self._timeline = decision.timeline if isinstance(decision.timeline, Timeline) else None
            self._last_changes = changes
        waiting = {r["id"]: r for r in pending}
        if decision.placements:
            # Placed jobs leave the line: estimates that list them as waiting are out of date, and so is
            # an earlier pass's timeline (this pass's own has booked them).
            self._changes += 1
            self._stale = self._stale or not estimates
            rows = await self._apply(decision, pending=waiting, nodes=nodes, now=now)
            await self.flush_outbox(rows)
        if decision.preemptions:
            await self.preempt(decision.preemptions, now=now)
        if decision.preempt_at is not None:
            self._pass_at(decision.preempt_at, now=now)
        largest = max((len(n["gpus"]) for n in nodes), default=None)
        return PassResult(now, decision, waiting, largest)

    def _pass_at(self, at: datetime, *, now: datetime) -> None:
        """Run a pass at `at` (the periodic tick may come too late by up to its period)."""
        if self._due is not None:
            if self._due[0] <= at:  # one comes soon enough already
                return
            self._due[1].cancel()
        delay_s = max((at - now).total_seconds(), 0.0)
        self._due = (at, asyncio.get_running_loop().call_later(delay_s, self._due_now))

    def _due_now(self) -> None:
        self._due = None
        self.wake()

    async def preempt(self, preemptions: Sequence[Preemption], *, now: datetime) -> int:
        """Stop the running preemptible jobs a pass named (services/preemption.py), each once, in one
        transaction; returns how many stops were asked for now."""
        async with self._db.write() as conn:
            rows = await request_preemptions(
                conn, preemptions, publisher=self._publisher, grace_s=self.config.preempt_grace_s, now=now
            )
        if rows:
            self._changes += 1  # the jobs being stopped change the estimates of those waiting for them
            self._stale = True
            await self.flush_outbox(rows)
        return len(rows)

    async def _refresh_history(self, conn: AsyncConnection, now: datetime) -> None:
        """Re-read runtimes of finished jobs and, with fair share, each user's recent GPU time."""
        since = now - timedelta(seconds=self.config.history_window_s)
        self._history = build_history(await history_repo.finished_runs(conn, since=since))
        if self.config.fair_share:
            window_start = now - timedelta(seconds=self.config.fair_share_window_s)
            rows = await history_repo.gpu_time_rows(conn, since=window_start)
            self._usage_s = gpu_seconds_by_user(rows, since=window_start, now=now)
        self._refreshed_at = now

    async def _apply(
        self,
        decision: Decision,
        *,
        pending: dict[int, dict[str, Any]],
        nodes: list[dict[str, Any]],
        now: datetime,
    ) -> list[dict[str, Any]]:
        """Dispatch the placements in one transaction, each with its outbox row; returns the rows."""
        uuids = {n["name"]: {g["index"]: g["uuid"] for g in n["gpus"]} for n in nodes}
        outbox_rows: list[dict[str, Any]] = []
        async with self._db.write() as conn:
            for placement in decision.placements:
                gpu_uuids = [uuids[placement.node][i] for i in placement.gpu_indices]
                job = await jobs_repo.dispatch(
                    conn,
                    job_id=placement.job_id,
                    node=placement.node,
                    gpu_indices=placement.gpu_indices,
                    gpu_uuids=gpu_uuids,
                    now=now,
                )
                if job is None:
                    continue  # cancelled since the snapshot
                attempt = job["attempt"]
                body = Dispatch(
                    job_id=placement.job_id,
                    attempt=attempt,
                    name=job["name"],
                    user=pending[placement.job_id]["user"],
                    argv=job["argv"],
                    workdir=job["workdir"],
                    env=job["env"],
                    gpu_indices=list(placement.gpu_indices),
                    gpu_uuids=gpu_uuids,
                    time_limit_s=job["time_limit_s"],
                    node_beat_at=self._beats.get(placement.node),
                    preemptible=bool(job["preemptible"]),
                )
                key = self._publisher.node_key(placement.node)
                message = body.model_dump(mode="json")
                row_id = await repo.add_outbox(conn, routing_key=key, body=message, now=now)
                outbox_rows.append({"id": row_id, "routing_key": key, "body": message})
                log.info(
                    "job %s attempt %s dispatched to %s GPUs %s",
                    placement.job_id,
                    attempt,
                    placement.node,
                    list(placement.gpu_indices),
                )
        return outbox_rows

    async def flush_outbox(self, rows: list[dict[str, Any]] | None = None) -> int:
        """Publish outbox rows (default: all the database holds unpublished) and mark them published.
        What the broker refuses stays for the next try."""
        async with self._outbox_lock:
            if rows is None:
                async with self._db.read() as conn:
                    rows = await repo.unpublished_outbox(conn)
            return await self._publish(rows)

    async def _publish(self, rows: list[dict[str, Any]]) -> int:
        done: list[int] = []
        try:
            for row in rows:
                await self._publisher.publish(row["routing_key"], row["body"])
                done.append(row["id"])
        except BrokerUnavailable as e:
            log.warning("outbox: %s published, %s left for later: %s", len(done), len(rows) - len(done), e)
        if done:
            async with self._db.write() as conn:
                await repo.mark_published(conn, done, self._clock())
        return len(done)
