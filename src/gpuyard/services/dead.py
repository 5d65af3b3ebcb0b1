"""Dead letters: jobs that used up their attempts, and messages that could not be processed (recorded from
RabbitMQ's dead-letter queue). Listed for their owners (messages: admins), and requeued with one call: a
job goes back in line with a fresh budget of attempts; a message is published again where it was going."""

from __future__ import annotations

import json
import logging
from typing import Any

from gpuyard.adapters.db import dead_repo, jobs_repo
from gpuyard.adapters.db.engine import Database
from gpuyard.domain.errors import DeadLetterNotFound, InvalidTransition, PermissionDenied
from gpuyard.domain.jobs import JobState
from gpuyard.services.auth import User
from gpuyard.services.ports import Clock, Publisher
from gpuyard.services.scheduler import SchedulerService

log = logging.getLogger(__name__)

Row = dict[str, Any]
REQUEUABLE = frozenset({JobState.FAILED, JobState.TIMED_OUT})
MAX_BODY_TEXT = 64 * 1024


class DeadLetterService:
    def __init__(
        self,
        db: Database,
        scheduler: SchedulerService,
        publisher: Publisher,
        *,
        clock: Clock,
        max_attempts_cap: int,
    ) -> None:
        self._db = db
        self._scheduler = scheduler
        self._publisher = publisher
        self._clock = clock
        self._cap = max_attempts_cap

    async def list_dead(self, user: User, *, include_requeued: bool, limit: int) -> list[Row]:
        """Admins see every dead letter; users those of their own jobs."""
        async with self._db.read() as conn:
            return await dead_repo.list_open(
                conn,
                user_id=None if user.is_admin else user.id,
                include_requeued=include_requeued,
                limit=limit,
            )

    async def requeue(self, user: User, dead_id: int) -> Row:
        now = self._clock()
        async with self._db.write() as conn:
            dead = await dead_repo.get(conn, dead_id)
            if dead is None or not (user.is_admin or dead["user_id"] == user.id):
                raise DeadLetterNotFound(
                    f"No dead letter {dead_id} of yours exists. List them with `gpuyard dead`."
                )
            if dead["requeued_at"] is not None:
                raise InvalidTransition(
                    f"Dead letter {dead_id} was requeued already, at {dead['requeued_at']:%H:%M:%S}."
                )
            if dead["kind"] == "job":
                await self._requeue_job(conn, user, dead["job_id"], now=now)
            elif not user.is_admin:
                raise PermissionDenied("Only admins can requeue a message: ask an admin.")
            await dead_repo.mark_requeued(conn, dead_id, now=now)
        if dead["kind"] == "message":
            await self._publisher.publish(dead["routing_key"], dead["body"])
            log.info(
                "dead letter %s: message published again to %s by %s", dead_id, dead["routing_key"], user.name
            )
        else:
            log.info("dead letter %s: job %s back in line, by %s", dead_id, dead["job_id"], user.name)
            self._scheduler.wake()
        return {**dead, "requeued_at": now}

    async def requeue_job(self, user: User, job_id: int) -> None:
        """Send a failed or timed-out job back in line (and close its dead letter, if it has one)."""
        now = self._clock()
        async with self._db.write() as conn:
            await self._requeue_job(conn, user, job_id, now=now)
            await dead_repo.mark_job_requeued(conn, job_id, now=now)
        log.info("job %s back in line, by %s", job_id, user.name)
        self._scheduler.wake()

    async def _requeue_job(self, conn: Any, user: User, job_id: int, *, now: Any) -> None:
        job = await jobs_repo.get_job(conn, job_id)
        if job is None:
            raise InvalidTransition(f"Job {job_id} no longer exists: there is nothing to requeue.")
        if not user.is_admin and job["user_id"] != user.id:
            raise PermissionDenied(
                f"Job {job_id} belongs to {job['user']}: only its owner or an admin can requeue it."
            )
        if JobState(job["state"]) not in REQUEUABLE:
            raise InvalidTransition(
                f"Job {job_id} is {job['state']}: only a failed or timed-out job can be requeued"
                " (submit it again to rerun one that succeeded or was cancelled)."
            )
        budget = min(job["max_attempts"], self._cap)  # a fresh budget on top of the attempts used
        await jobs_repo.transition(
            conn,
            job_id=job_id,
            attempt=None,
            sources=REQUEUABLE,
            target=JobState.QUEUED,
            now=now,
            finished_at=None,
            started_at=None,
            retry_at=None,
            max_attempts=await dead_repo.counted_attempts(conn, job_id) + budget,
        )


def message_body(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A dead message's body: (JSON object, None), or (None, its text, shortened) when it is not one."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None, raw[:MAX_BODY_TEXT].decode(errors="replace")
    if isinstance(body, dict):
        return body, None
    return None, raw[:MAX_BODY_TEXT].decode(errors="replace")
