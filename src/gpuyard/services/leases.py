"""Leases: a node's heartbeats renew the lease of every attempt it runs.

- A node silent for the lease (counted only while the controller itself hears RabbitMQ, so an outage of
  the controller's own connection never condemns a node) is lost: its attempts end as `node_lost` and
  the retry policy sends their jobs back in line. The worker fences itself first: one that cannot renew
  its lease stops its jobs (see the worker), so the next attempt never overlaps the last.
- An attempt the node reports that the controller considers over (its job moved on to another attempt,
  or ended) is stale: the node is told to kill it.
- An attempt the controller considers running (or dispatched) that its node, heartbeating, does not
  report for the lease (the worker restarted and the job did not survive; the dispatch never arrived)
  is lost too.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select

from gpuyard.adapters.broker.messages import Cancel, Heartbeat
from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.tables import jobs
from gpuyard.domain.errors import BrokerUnavailable
from gpuyard.domain.jobs import ACTIVE_STATES, FailureClass, JobState
from gpuyard.services.ports import Clock, Publisher
from gpuyard.services.retries import RetryService
from gpuyard.services.scheduler import SchedulerService

log = logging.getLogger(__name__)

JobKey = tuple[int, int]
_KILL_RESEND_S = 5.0


class LeaseService:
    def __init__(
        self,
        db: Database,
        scheduler: SchedulerService,
        retries: RetryService,
        publisher: Publisher,
        *,
        clock: Clock,
        lease_s: float,
    ) -> None:
        self._db = db
        self._scheduler = scheduler
        self._retries = retries
        self._publisher = publisher
        self._clock = clock
        self.lease_s = lease_s
        self._hearing_since: datetime | None = None  # since when the controller hears RabbitMQ
        self._reported: dict[JobKey, datetime] = {}  # when a node last reported each attempt
        self._killed: dict[JobKey, datetime] = {}

    def hearing(self) -> None:
        """The controller (re)connected to RabbitMQ: leases count from now at the earliest."""
        self._hearing_since = self._clock()

    def deaf(self) -> None:
        self._hearing_since = None

    async def on_heartbeat(self, beat: Heartbeat) -> None:
        """Renew the node's attempts; tell it to kill the stale ones."""
        now = self._clock()
        reported = [(int(j), int(a)) for j, a in beat.running]
        for key in reported:
            self._reported[key] = now
        if not reported:
            return
        query = select(jobs.c.id, jobs.c.attempt, jobs.c.state).where(jobs.c.id.in_([j for j, _ in reported]))
        async with self._db.read() as conn:
            current = {int(i): (int(a), JobState(s)) for i, a, s in (await conn.execute(query)).all()}
        for job_id, attempt in reported:
            live = current.get(job_id)
            if live is not None and live[0] == attempt and live[1] in ACTIVE_STATES:
                continue
            last = self._killed.get((job_id, attempt))
            if last is not None and (now - last).total_seconds() < _KILL_RESEND_S:
                continue
            self._killed[(job_id, attempt)] = now
            log.warning(
                "node %s runs job %s attempt %s, which is over: telling it to kill it",
                beat.node,
                job_id,
                attempt,
            )
            try:
                await self._publisher.publish(
                    self._publisher.node_key(beat.node),
                    Cancel(job_id=job_id, attempt=attempt).model_dump(mode="json"),
                )
            except BrokerUnavailable as e:
                log.warning(
                    "could not tell node %s to kill job %s attempt %s: %s", beat.node, job_id, attempt, e
                )

    async def check(self) -> int:
        """End the attempts whose lease ran out; returns how many."""
        if self._hearing_since is None:
            return 0
        now = self._clock()
        lease = timedelta(seconds=self.lease_s)
        async with self._db.read() as conn:
            nodes = {n["name"]: n for n in await repo.list_nodes(conn)}
            active = await jobs_repo.active_attempts(conn)
        expired: list[tuple[dict[str, object], str]] = []
        for row in active:
            node = nodes.get(str(row["node"]))
            key = (int(row["id"]), int(row["attempt"]))
            heard = max(filter(None, [node["last_seen_at"] if node else None, self._hearing_since]))
            if now - heard > lease:
                expired.append((row, f"node {row['node']} sent no heartbeat for {self.lease_s:.0f} s"))
                continue
            # Running, or dispatched (a worker acks a dispatch within seconds of taking it), yet its node,
            # heartbeating, has not listed it for the whole lease: the attempt is gone.
            began = row["started_at"] if row["state"] == JobState.RUNNING.value else row["dispatched_at"]
            since = max(filter(None, [self._reported.get(key), began, self._hearing_since]))
            if now - since > lease:
                expired.append((row, f"node {row['node']} has not reported it for {self.lease_s:.0f} s"))
        for row, why in expired:
            await self._lose(row, why, now=now)
        if expired:
            self._scheduler.wake()
        return len(expired)

    async def _lose(self, row: dict[str, object], why: str, *, now: datetime) -> None:
        job_id, attempt = int(str(row["id"])), int(str(row["attempt"]))
        async with self._db.write() as conn:
            closed = await jobs_repo.close_attempt(
                conn, job_id=job_id, attempt=attempt, ended_at=now, failure_class=FailureClass.NODE_LOST.value
            )
            if not closed:  # its end was reported since the check read it
                return
            state = await self._retries.after_failure(
                conn,
                job_id=job_id,
                attempt=attempt,
                failure=FailureClass.NODE_LOST,
                final_state=JobState.FAILED,
                at=now,
                now=now,
                values={"error": f"Attempt {attempt} was lost: {why}."},
            )
        self._reported.pop((job_id, attempt), None)
        if state is not None:
            log.warning("job %s attempt %s lost (%s): %s", job_id, attempt, why, state.value)
