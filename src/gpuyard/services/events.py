"""Ingest what workers report. Every write is conditional on the job's state and attempt, so a late or
duplicated event cannot move a job backwards; log chunks are keyed by offset, so a duplicate is a no-op."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.broker.messages import Finished, Heartbeat, LogChunk, Progress, Started, event_message
from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.tables import attempts, job_progress
from gpuyard.domain.jobs import ACTIVE_STATES, FailureClass, JobState
from gpuyard.domain.retry import end_class
from gpuyard.domain.transitions import sources_of
from gpuyard.domain.webhooks import END_EVENTS
from gpuyard.services.leases import LeaseService
from gpuyard.services.ports import Clock, NoTelemetry, Telemetry
from gpuyard.services.retries import RetryService
from gpuyard.services.scheduler import SchedulerService
from gpuyard.services.usage import UsageService
from gpuyard.services.webhooks import WebhookService

log = logging.getLogger(__name__)

_OUTCOME = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
    "timed_out": JobState.TIMED_OUT,
}


def end_of(event: Finished, job: dict[str, Any]) -> tuple[FailureClass | None, JobState, str | None]:
    """How a reported end ends the job's attempt: (failure class, state it is reported as, detail). As the
    worker says, except where the controller had asked for a stop it may not have seen through
    (domain/retry.py `end_class`): a cancel wins over a preemption, and an attempt being preempted that
    exits non-zero was stopped by it. A preempted attempt is reported `failed`; the retry policy puts the
    job back in line."""
    reported = FailureClass(event.failure_class) if event.failure_class else None
    current = job["attempt"] == event.attempt
    failure = end_class(
        reported,
        preempting=current and job.get("preempt_requested_at") is not None,
        cancelling=current and job.get("cancel_requested_at") is not None,
    )
    detail = event.detail if failure is reported else None
    if failure is FailureClass.CANCELLED:
        return failure, JobState.CANCELLED, detail
    if failure is FailureClass.PREEMPTED:
        detail = detail or "stopped to give its GPUs to a job ahead of it in line"
        return failure, JobState.FAILED, detail
    return failure, _OUTCOME[event.outcome], detail


class EventService:
    def __init__(
        self,
        db: Database,
        scheduler: SchedulerService,
        *,
        clock: Clock,
        usage: UsageService | None = None,
        webhooks: WebhookService | None = None,
        retries: RetryService | None = None,
        leases: LeaseService | None = None,
        telemetry: Telemetry | None = None,
        progress_point_s: float = 2.0,
    ) -> None:
        self._db = db
        self._scheduler = scheduler
        self._clock = clock
        self._usage = usage
        self._webhooks = webhooks
        self._retries = retries or RetryService(webhooks=webhooks, telemetry=telemetry)
        self._leases = leases
        self._telemetry = telemetry or NoTelemetry()
        self._progress_point_s = progress_point_s
        self._last_point_at: dict[tuple[int, int], datetime] = {}

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
            await self._progress(event)
        else:
            await self._finished(event)

    async def _progress(self, event: Progress) -> None:
        now = self._clock()
        key = (event.job_id, event.attempt)
        last = self._last_point_at.get(key)
        keep_point = last is None or (now - last).total_seconds() >= self._progress_point_s
        if event.total is not None and event.step is not None and event.step >= event.total:
            keep_point = True  # the last point of a run always makes it into its series
        async with self._db.write() as conn:
            moved = await jobs_repo.set_progress(
                conn,
                job_id=event.job_id,
                attempt=event.attempt,
                step=event.step,
                total=event.total,
                metrics=event.metrics,
                now=now,
                seq=event.seq,
            )
            if moved and keep_point:
                point = {"job_id": event.job_id, "attempt": event.attempt, "at": now}
                point |= {"step": event.step, "total": event.total, "metrics": event.metrics}
                await conn.execute(repo.insert_ignore(conn, job_progress).values(**point))
        if moved and keep_point:
            self._last_point_at[key] = now

    async def _heartbeat(self, event: Heartbeat) -> None:
        gpus = [g.model_dump(mode="json") for g in event.gpus]
        async with self._db.write() as conn:
            node, changed = await repo.upsert_node(
                conn,
                name=event.node,
                backend=event.backend,
                gpus=gpus,
                now=self._clock(),
                draining=event.draining,
            )
        self._scheduler.note_node(node, beat_at=event.at)
        if self._leases is not None:
            await self._leases.on_heartbeat(event)
        if self._usage is not None and await self._usage.record(event):
            self._kick_webhooks()
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
                job = await jobs_repo.get_job(conn, event.job_id)
                assert job is not None
                dispatched_at = (
                    await conn.execute(
                        select(attempts.c.dispatched_at).where(
                            attempts.c.job_id == event.job_id, attempts.c.number == event.attempt
                        )
                    )
                ).scalar()
                self._telemetry.job_started(
                    wait_s=(event.at - job["submitted_at"]).total_seconds(),
                    dispatch_latency_s=(event.at - dispatched_at).total_seconds() if dispatched_at else None,
                )
                await self._notify(conn, "job.started", job)
        if not moved:
            async with self._db.read() as conn:
                if await jobs_repo.get_job(conn, event.job_id) is None:
                    raise ValueError(f"a start reported for job {event.job_id}, which does not exist")
        if moved:
            log.info(
                "job %s attempt %s running on %s (pid %s)", event.job_id, event.attempt, event.node, event.pid
            )
            self._kick_webhooks()

    async def _finished(self, event: Finished) -> None:
        now = self._clock()
        async with self._db.write() as conn:
            job = await jobs_repo.get_job(conn, event.job_id)
            if job is None:
                raise ValueError(f"an end reported for job {event.job_id}, which does not exist")
            failure, final, detail = end_of(event, job)
            failure_class = failure.value if failure else None
            closed = await jobs_repo.close_attempt(
                conn,
                job_id=event.job_id,
                attempt=event.attempt,
                ended_at=event.at,
                exit_code=event.exit_code,
                signal=event.signal,
                failure_class=failure_class,
            )
            if not closed:  # reported twice, or after its lease had run out: it was dealt with then
                state = None
                log.info(
                    "job %s attempt %s: its end (%s) came after the attempt was closed: ignored",
                    event.job_id,
                    event.attempt,
                    event.outcome,
                )
            elif failure is not None and final in (JobState.FAILED, JobState.TIMED_OUT):
                state = await self._retries.after_failure(
                    conn,
                    job_id=event.job_id,
                    attempt=event.attempt,
                    failure=failure,
                    final_state=final,
                    at=event.at,
                    now=now,
                    values={"exit_code": event.exit_code, "error": detail},
                )
            else:
                moved = await jobs_repo.transition(
                    conn,
                    job_id=event.job_id,
                    attempt=event.attempt,
                    sources=sources_of(final) & ACTIVE_STATES,
                    target=final,
                    now=now,
                    finished_at=event.at,
                    exit_code=event.exit_code,
                    failure_class=failure_class,
                    error=detail,
                )
                state = final if moved else None
            if state is not None and state is not JobState.QUEUED:
                started_at = job["started_at"]
                self._telemetry.job_finished(
                    state=state.value,
                    failure_class=failure_class,
                    run_s=(event.at - started_at).total_seconds() if started_at else None,
                )
                ended = {
                    **job,
                    "state": state.value,
                    "finished_at": event.at,
                    "exit_code": event.exit_code,
                    "failure_class": failure_class,
                    "error": detail,
                }
                await self._notify(conn, END_EVENTS[state.value], ended)
        self._last_point_at.pop((event.job_id, event.attempt), None)
        if state is not None:
            self._kick_webhooks()
            log.info(
                "job %s attempt %s %s on %s (exit %s)",
                event.job_id,
                event.attempt,
                "back in line" if state is JobState.QUEUED else state.value,
                event.node,
                event.exit_code,
            )
            self._scheduler.wake()

    async def _notify(self, conn: AsyncConnection, event: str, job: dict[str, Any]) -> None:
        if self._webhooks is not None:
            await self._webhooks.enqueue(conn, event, job)

    def _kick_webhooks(self) -> None:
        if self._webhooks is not None:
            self._webhooks.kick()
