"""The thin shell around the retry policy (domain/retry.py): after a failed attempt, in the transaction that
records it, the job goes back in line (keeping its place, not before its backoff) or ends, and a job that
used up its attempts is dead-lettered with its log tail. A preempted attempt takes the same way back in
line, at once and uncounted, and adds to the job's `preemptions`."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db import dead_repo, jobs_repo
from gpuyard.domain.jobs import ACTIVE_STATES, FailureClass, JobState
from gpuyard.domain.retry import BACKOFF_BASE_S, decide
from gpuyard.services.ports import NoTelemetry, Telemetry
from gpuyard.services.webhooks import WebhookService

log = logging.getLogger(__name__)


class RetryService:
    def __init__(
        self,
        *,
        webhooks: WebhookService | None = None,
        telemetry: Telemetry | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self._webhooks = webhooks
        self._telemetry = telemetry or NoTelemetry()
        self._base_s = backoff_base_s

    async def after_failure(
        self,
        conn: AsyncConnection,
        *,
        job_id: int,
        attempt: int,
        failure: FailureClass,
        final_state: JobState,
        at: datetime,
        now: datetime,
        values: dict[str, Any],
    ) -> JobState | None:
        """Apply what follows a failed attempt (whose attempt row is already closed). Returns the job's new
        state, or None when the job had moved on (a stale or duplicate report)."""
        job = await jobs_repo.get_job(conn, job_id)
        if job is None or job["attempt"] != attempt or JobState(job["state"]) not in ACTIVE_STATES:
            return None
        counted = await dead_repo.counted_attempts(conn, job_id)
        retry_on = frozenset(FailureClass(f) for f in job["retry_on"] or [])
        decision = decide(
            failure,
            counted_attempts=counted,
            max_attempts=job["max_attempts"],
            retry_on=retry_on,
            base_s=self._base_s,
        )
        common = {
            "failure_class": failure.value,
            "exit_code": values.get("exit_code"),
            "error": values.get("error"),
        }
        if decision.retry:
            retry_at = at + timedelta(seconds=decision.delay_s) if decision.delay_s else None
            moved = await self._requeue(conn, job, failure=failure, retry_at=retry_at, now=now, values=common)
            if moved:
                log.info(
                    "job %s attempt %s: %s; back in line%s",
                    job_id,
                    attempt,
                    decision.reason,
                    f" from {retry_at:%H:%M:%S}" if retry_at else "",
                )
            return JobState.QUEUED if moved else None
        moved = await jobs_repo.transition(
            conn,
            job_id=job_id,
            attempt=attempt,
            sources=ACTIVE_STATES,
            target=final_state,
            now=now,
            finished_at=at,
            **common,
        )
        if not moved:
            return None
        ended = {**job, **common, "state": final_state.value, "finished_at": at}
        if decision.dead_letter:
            await dead_repo.add(
                conn,
                now=now,
                kind="job",
                job_id=job_id,
                reason=f"Job {job_id} failed: {decision.reason}.",
                failure_class=failure.value,
                attempts=counted,
                log_tail=await dead_repo.log_tail(conn, job_id=job_id, attempt=attempt),
            )
            log.warning("job %s dead-lettered: %s", job_id, decision.reason)
            if self._webhooks is not None:
                await self._webhooks.enqueue(conn, "job.dead_lettered", ended)
        return final_state

    async def _requeue(
        self,
        conn: AsyncConnection,
        job: dict[str, Any],
        *,
        failure: FailureClass,
        retry_at: datetime | None,
        now: datetime,
        values: dict[str, Any],
    ) -> bool:
        """Back in line, keeping its place (its id is its place); a preempted job counts one more
        preemption. False when the job had moved on."""
        preempted = failure is FailureClass.PREEMPTED
        if preempted:
            values = {**values, "preemptions": int(job["preemptions"] or 0) + 1}
        moved = await jobs_repo.transition(
            conn,
            job_id=job["id"],
            attempt=job["attempt"],
            sources=ACTIVE_STATES,
            target=JobState.QUEUED,
            now=now,
            started_at=None,
            retry_at=retry_at,
            **values,
        )
        if moved and preempted:
            self._telemetry.job_preempted()
            if self._webhooks is not None:
                await self._webhooks.enqueue(conn, "job.preempted", {**job, **values, "state": "queued"})
        elif moved:
            self._telemetry.job_retried(failure_class=failure.value)
        return moved
