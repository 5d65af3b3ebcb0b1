"""Use cases on jobs: submit, look up, list, cancel, hold, release, change priority, read logs, and the queue,
wait and GPU views."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gpuyard.adapters.broker.messages import Cancel
from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.domain.errors import (
    InvalidTransition,
    JobNotFound,
    NoNodeFits,
    PermissionDenied,
    QuotaExceeded,
)
from gpuyard.domain.jobs import JobSpec, JobState, Priority
from gpuyard.domain.retry import DEFAULT_MAX_ATTEMPTS, check_max_attempts
from gpuyard.scheduling.model import Estimate
from gpuyard.services.auth import User
from gpuyard.services.ports import Clock, NoTelemetry, Publisher, Telemetry
from gpuyard.services.scheduler import PassResult, SchedulerService
from gpuyard.services.waits import WaitInfo, describe_wait, wait_info
from gpuyard.services.webhooks import WebhookService

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger(__name__)

Row = dict[str, Any]


_UNSET_AT_SUBMIT = (
    "started_at",
    "finished_at",
    "exit_code",
    "failure_class",
    "error",
    "cancel_requested_at",
    "progress_step",
    "progress_total",
    "metrics",
    "node",
    "gpu_indices",
    "held_at",
    "preempt_requested_at",
)


@dataclass(frozen=True)
class Accepted:
    """A submission in the database: its id, when, and its estimate where no pass was needed."""

    job_id: int
    now: datetime
    estimate: Estimate | None


def _new_job_row(job_id: int, user: User, spec: JobSpec, now: datetime) -> Row:
    """The row a job has right after its insert (what get() would read back)."""
    row: Row = dict.fromkeys(_UNSET_AT_SUBMIT)
    row.update(jobs_repo.job_values(spec, user.id, now), id=job_id, user=user.name)
    return row


Submission = tuple[User, JobSpec, "asyncio.Future[Accepted]"]
# A conditional update of a waiting job: (connection, now) -> whether it changed the row.
Change = Callable[["AsyncConnection", datetime], Awaitable[bool]]


def _quota_text(waiting: int, limit: int) -> str:
    limit_text = "the limit per user" if waiting == limit else f"over the limit of {limit} per user"
    return f"You have {waiting} jobs waiting, {limit_text}: wait for some to start, or cancel some."


def _not_waiting(job: Row, *, what: str, hint: str = "") -> InvalidTransition:
    """The error for a queue control (or question) on a job that is not in line (any more)."""
    state = JobState(job["state"])
    where = f"has already ended ({state.value})" if state.is_final else f"is {state.value}"
    return InvalidTransition(f"Job {job['id']} {where}: only a waiting job {what}.{hint}")


class JobService:
    """Jobs' use cases. `urgent_admins_only`: only admins may submit urgent jobs or raise jobs to urgent.
    `max_waiting_jobs_per_user`: how many jobs one user may have waiting at once (None: no limit)."""

    def __init__(
        self,
        db: Database,
        scheduler: SchedulerService,
        publisher: Publisher,
        *,
        clock: Clock,
        urgent_admins_only: bool = True,
        max_waiting_jobs_per_user: int | None = None,
        webhooks: WebhookService | None = None,
        telemetry: Telemetry | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_attempts_cap: int = 10,
    ) -> None:
        self._max_attempts = max_attempts
        self._max_attempts_cap = max_attempts_cap
        self._webhooks = webhooks
        self._telemetry = telemetry or NoTelemetry()
        self._db = db
        self._scheduler = scheduler
        self._publisher = publisher
        self._clock = clock
        self._urgent_admins_only = urgent_admins_only
        self._max_waiting = max_waiting_jobs_per_user
        self._incoming: list[Submission] = []
        self._inserter: asyncio.Task[None] | None = None

    async def submit(self, user: User, spec: JobSpec) -> tuple[Row, WaitInfo | None]:
        """Accept a job (it is in the database when this returns) and say where it stands.

        Concurrent submissions share one transaction and one scheduling pass (group commit)."""
        self._check_priority(user, spec.priority)
        if spec.max_attempts is None:
            spec = dataclasses.replace(spec, max_attempts=min(self._max_attempts, self._max_attempts_cap))
        check_max_attempts(spec.max_attempts or 1, cap=self._max_attempts_cap)
        last = self._scheduler.last or await self._scheduler.run_pass()
        largest = last.largest_node_gpus
        if largest is not None and spec.gpus > largest:
            raise NoNodeFits(
                f"No node has {spec.gpus} GPUs (the largest has {largest}): ask for at most {largest} GPUs."
            )
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._incoming.append((user, spec, future))
        if self._inserter is None or self._inserter.done():
            self._inserter = asyncio.create_task(self._insert_incoming())
        accepted = await future
        log.info(
            "job %s submitted by %s: %s GPUs, %s", accepted.job_id, user.name, spec.gpus, spec.priority.value
        )
        job = _new_job_row(accepted.job_id, user, spec, accepted.now)
        if accepted.estimate is not None:
            return job, describe_wait(accepted.estimate, gpus=spec.gpus, now=accepted.now)
        result = await self._scheduler.run_pass()
        placed = next((p for p in result.decision.placements if p.job_id == accepted.job_id), None)
        if placed is not None:
            job.update(
                state=JobState.DISPATCHED.value,
                attempt=1,
                node=placed.node,
                gpu_indices=list(placed.gpu_indices),
            )
        return job, wait_info(job, result)

    async def _insert_incoming(self) -> None:
        """Insert what was submitted meanwhile in one transaction; estimate the newcomers from the last
        pass's timeline where they simply join the end of the line."""
        while self._incoming:
            batch, self._incoming = self._incoming, []
            now = self._clock()
            try:
                async with self._db.write() as conn:
                    batch = await self._within_quota(conn, batch)
                    ids = await jobs_repo.insert_jobs(
                        conn, [(spec, user.id) for user, spec, _ in batch], now=now
                    )
            except Exception as e:  # every waiting submitter gets the error, none is left hanging
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            if not batch:
                continue
            newcomers = [
                self._scheduler.newcomer(job_id, user=user.name, spec=spec)
                for (user, spec, _), job_id in zip(batch, ids, strict=True)
            ]
            estimates = self._scheduler.try_extend(newcomers, now=now)
            for i, ((_, _, future), job_id) in enumerate(zip(batch, ids, strict=True)):
                if not future.done():
                    future.set_result(Accepted(job_id, now, estimates[i] if estimates else None))

    async def _within_quota(self, conn: AsyncConnection, batch: list[Submission]) -> list[Submission]:
        """The submissions that keep their users within the waiting-jobs limit, counted in the insert's
        own transaction (exact under concurrent submissions); the others get QuotaExceeded."""
        limit = self._max_waiting
        if limit is None:
            return batch
        waiting = await jobs_repo.count_waiting(conn, {user.id for user, _, _ in batch})
        kept = []
        for user, spec, future in batch:
            count = waiting.get(user.id, 0)
            if count >= limit:
                if not future.done():
                    future.set_exception(QuotaExceeded(_quota_text(count, limit)))
                continue
            waiting[user.id] = count + 1
            kept.append((user, spec, future))
        return kept

    def _check_priority(self, user: User, priority: Priority) -> None:
        if priority is Priority.URGENT and self._urgent_admins_only and not user.is_admin:
            raise PermissionDenied("Only admins may use the urgent priority: ask an admin, or use high.")

    async def get(self, user: User, job_id: int, *, with_attempts: bool = False) -> Row:
        async with self._db.read() as conn:
            job = await jobs_repo.get_job(conn, job_id)
            if job is None:
                raise JobNotFound(job_id)
            self._check_owner(user, job, "see it")
            if with_attempts:
                job["attempts"] = await jobs_repo.get_attempts(conn, job_id)
        return job

    async def list_jobs(
        self,
        user: User,
        *,
        states: list[str],
        owner: str | None,
        before_id: int | None,
        limit: int,
        name: str | None = None,
        submitted_after: datetime | None = None,
        submitted_before: datetime | None = None,
    ) -> list[Row]:
        if not user.is_admin:
            if owner not in (None, user.name):
                raise PermissionDenied(f"Only admins can list the jobs of {owner}; you can list your own.")
            owner = user.name
        async with self._db.read() as conn:
            return await jobs_repo.list_jobs(
                conn,
                states=states,
                user=owner,
                before_id=before_id,
                limit=limit,
                name=name,
                submitted_after=submitted_after,
                submitted_before=submitted_before,
            )

    async def cancel(self, user: User, job_id: int) -> Row:
        now = self._clock()
        job = await self.get(user, job_id)
        self._check_owner(user, job, "cancel it")
        state = JobState(job["state"])
        if state.is_final:
            raise InvalidTransition(f"Job {job_id} is already {state.value}: there is nothing to cancel.")
        async with self._db.write() as conn:
            done = await jobs_repo.transition(
                conn,
                job_id=job_id,
                attempt=None,
                sources={JobState.QUEUED, JobState.LOST},
                target=JobState.CANCELLED,
                now=now,
                finished_at=now,
                failure_class="cancelled",
            )
            if done and self._webhooks is not None:
                await self._webhooks.enqueue(conn, "job.cancelled", {**job, "state": "cancelled"})
            if not done:
                current = await jobs_repo.get_job(conn, job_id)
                assert current is not None
                if JobState(current["state"]).holds_gpus:
                    await jobs_repo.request_cancel(conn, job_id=job_id, now=now)
                    attempt = await jobs_repo.get_attempts(conn, job_id)
                    node = attempt[-1]["node"]
                    body = Cancel(job_id=job_id, attempt=current["attempt"]).model_dump(mode="json")
                    await repo.add_outbox(
                        conn, routing_key=self._publisher.node_key(node), body=body, now=now
                    )
        log.info("job %s cancel requested by %s", job_id, user.name)
        if done:
            self._telemetry.job_finished(state="cancelled", failure_class="cancelled", run_s=None)
            if self._webhooks is not None:
                self._webhooks.kick()
            self._scheduler.wake()
        else:
            await self._scheduler.flush_outbox()
        return await self.get(user, job_id)

    async def hold(self, user: User, job_id: int) -> Row:
        """Keep a waiting job from starting. It keeps its place in line; the policy passes over it."""

        async def change(conn: AsyncConnection, now: datetime) -> bool:
            return await jobs_repo.hold(conn, job_id=job_id, now=now)

        return await self._change_waiting(
            user, job_id, action="hold it", what="can be held", done="held", change=change
        )

    async def release(self, user: User, job_id: int) -> Row:
        """Let a held job start again when its turn comes."""

        async def change(conn: AsyncConnection, now: datetime) -> bool:
            return await jobs_repo.release(conn, job_id=job_id, now=now)

        return await self._change_waiting(
            user, job_id, action="release it", what="can be released", done="released", change=change
        )

    async def set_priority(self, user: User, job_id: int, priority: Priority) -> Row:
        """Move a waiting job to another priority; within it, it keeps its submission order."""
        self._check_priority(user, priority)

        async def change(conn: AsyncConnection, now: datetime) -> bool:
            return await jobs_repo.set_priority(conn, job_id=job_id, priority=priority, now=now)

        return await self._change_waiting(
            user,
            job_id,
            action="change its priority",
            what="can change priority",
            done=f"set to {priority.value} priority",
            change=change,
        )

    async def _change_waiting(
        self, user: User, job_id: int, *, action: str, what: str, done: str, change: Change
    ) -> Row:
        """Apply a conditional change to a waiting job of `user` (or any job, for an admin). A change that
        is already in place (hold a held job) changes nothing and is no error."""
        now = self._clock()
        async with self._db.write() as conn:
            job = await jobs_repo.get_job(conn, job_id)
            if job is None:
                raise JobNotFound(job_id)
            self._check_owner(user, job, action)
            changed = await change(conn, now)
            if not changed:
                job = await jobs_repo.get_job(conn, job_id)
                assert job is not None
                if job["state"] != JobState.QUEUED.value:
                    raise _not_waiting(job, what=what)
        if changed:
            log.info("job %s %s by %s", job_id, done, user.name)
            self._scheduler.wake()
        return await self.get(user, job_id)

    async def wait(self, user: User, job_id: int) -> tuple[Row, WaitInfo, datetime]:
        """Where a waiting job stands and why, from the current estimates (and when their pass ran).
        Anyone may ask: everyone sees the queue."""
        async with self._db.read() as conn:
            job = await jobs_repo.get_job(conn, job_id)
        if job is None:
            raise JobNotFound(job_id)
        what, hint = "has a place in line", f" See where it is with `gpuyard show {job_id}`."
        if job["state"] != JobState.QUEUED.value:
            raise _not_waiting(job, what=what, hint=hint)
        result = await self._scheduler.current()
        if job_id not in result.pending:  # it may have joined the line after that pass: ask a new one
            result = await self._scheduler.run_pass()
        info = wait_info(job, result) if job_id in result.pending else None
        if info is None:  # it left the line meanwhile
            async with self._db.read() as conn:
                current = await jobs_repo.get_job(conn, job_id)
            raise JobNotFound(job_id) if current is None else _not_waiting(current, what=what, hint=hint)
        return {**job, **result.pending[job_id]}, info, result.now

    async def logs(
        self, user: User, job_id: int, *, offset: int, attempt: int | None, limit_bytes: int
    ) -> tuple[Row, int, bytes, int]:
        job = await self.get(user, job_id)
        number = attempt if attempt is not None else job["attempt"]
        if number == 0:
            return job, 0, b"", offset
        async with self._db.read() as conn:
            data, next_offset = await repo.read_log(
                conn, job_id=job_id, attempt=number, offset=offset, limit_bytes=limit_bytes
            )
        return job, number, data, next_offset

    async def queue(self) -> tuple[PassResult, list[Row]]:
        """Everyone's waiting jobs in line order, with the current estimates."""
        result = await self._scheduler.current()
        order = sorted(result.decision.estimates.values(), key=lambda e: e.position)
        rows = [result.pending[e.job_id] for e in order if e.job_id in result.pending]
        return result, rows

    async def gpus(self) -> tuple[list[Row], dict[tuple[str, int], Row]]:
        """Nodes with their GPUs, and which job holds each (node, index)."""
        async with self._db.read() as conn:
            nodes = await repo.list_nodes(conn)
            active = await jobs_repo.active_attempts(conn)
        holders = {(a["node"], i): a for a in active for i in a["gpu_indices"]}
        return nodes, holders

    @staticmethod
    def _check_owner(user: User, job: Row, action: str) -> None:
        if not user.is_admin and job["user_id"] != user.id:
            raise PermissionDenied(
                f"Job {job['id']} belongs to {job['user']}: only its owner or an admin can {action}."
            )
