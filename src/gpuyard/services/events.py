"""Ingest what workers report. Every write is conditional on the job's state and attempt, so a late or
duplicated event cannot move a job backwards; log chunks are keyed by offset, so a duplicate is a no-op."""

from __future__ import annotations

import logging
from typing import Any

from gpuyard.adapters.broker.messages import Finished, Heartbeat, LogChunk, Progress, Started, event_message
from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.domain.jobs import ACTIVE_STATES, FailureClass, JobState
from gpuyard.domain.transitions import sources_of
from gpuyard.services.ports import Clock
from gpuyard.services.scheduler import SchedulerService

log = logging.getLogger(__name__)

_OUTCOME = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
    "timed_out": JobState.TIMED_OUT,
}


class EventService:
    def __init__(self, db: Database, scheduler: SchedulerService, *, clock: Clock) -> None:
        self._db = db
        self._scheduler = scheduler
        self._clock = clock

    async def handle(self, body: dict[str, Any]) -> None:
        """Apply one event (raises ValueError for a body that can never be processed)."""
        event = event_message.validate_python(body)
        if isinstance(event, Heartbeat):
            await self._heartbeat(event)
        elif isinstance(event, Started):
            await self._started(event)
        elif isinstance(event, LogChunk):
            async with self._db.write() as conn:
                await repo.add_log_chunk(
                    conn, job_id=event.job_id, attempt=event.attempt, offset=event.offset, data=event.data
                )
        elif isinstance(event, Progress):
            async with self._db.write() as conn:
                await jobs_repo.set_progress(
                    conn,
                    job_id=event.job_id,
                    attempt=event.attempt,
                    step=event.step,
                    total=event.total,
                    metrics=event.metrics,
                    now=self._clock(),
                )
        else:
            await self._finished(event)

    async def _heartbeat(self, event: Heartbeat) -> None:
        gpus = [g.model_dump(mode="json") for g in event.gpus]
        async with self._db.write() as conn:
            node, changed = await repo.upsert_node(
                conn, name=event.node, backend=event.backend, gpus=gpus, now=self._clock()
            )
        self._scheduler.note_node(node)
        if changed:
            log.info("node %s reports %s GPUs (%s)", event.node, len(gpus), event.backend)
            self._scheduler.wake()

    async def _started(self, event: Started) -> None:
        async with self._db.write() as conn:
            moved = await jobs_repo.transition(
                conn,
                job_id=event.job_id,
                attempt=event.attempt,
                sources={JobState.DISPATCHED},
                target=JobState.RUNNING,
                now=self._clock(),
                started_at=event.at,
            )
            await jobs_repo.update_attempt(
                conn, job_id=event.job_id, attempt=event.attempt, started_at=event.at, pid=event.pid
            )
        if moved:
            log.info(
                "job %s attempt %s running on %s (pid %s)", event.job_id, event.attempt, event.node, event.pid
            )

    async def _finished(self, event: Finished) -> None:
        requeue = event.failure_class == FailureClass.GPU_UNAVAILABLE.value
        target = JobState.QUEUED if requeue else _OUTCOME[event.outcome]
        values: dict[str, Any] = (
            {"started_at": None}
            if requeue
            else {
                "finished_at": event.at,
                "exit_code": event.exit_code,
                "failure_class": event.failure_class,
                "error": event.detail,
            }
        )
        async with self._db.write() as conn:
            moved = await jobs_repo.transition(
                conn,
                job_id=event.job_id,
                attempt=event.attempt,
                sources=sources_of(target) & ACTIVE_STATES,
                target=target,
                now=self._clock(),
                **values,
            )
            await jobs_repo.update_attempt(
                conn,
                job_id=event.job_id,
                attempt=event.attempt,
                ended_at=event.at,
                exit_code=event.exit_code,
                signal=event.signal,
                failure_class=event.failure_class,
            )
        if moved:
            log.info(
                "job %s attempt %s %s on %s (exit %s)",
                event.job_id,
                event.attempt,
                "requeued" if requeue else target.value,
                event.node,
                event.exit_code,
            )
            self._scheduler.wake()
