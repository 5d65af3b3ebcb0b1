"""Use cases on jobs: submit, look up, list, cancel, read logs, and the queue and GPU views."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gpuyard.adapters.broker.messages import Cancel
from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.domain.errors import InvalidTransition, JobNotFound, NoNodeFits, PermissionDenied
from gpuyard.domain.jobs import JobSpec, JobState
from gpuyard.scheduling.explain import explain
from gpuyard.scheduling.model import Estimate, PendingJob
from gpuyard.services.auth import User
from gpuyard.services.ports import Clock, Publisher
from gpuyard.services.scheduler import PassResult, SchedulerService

log = logging.getLogger(__name__)

Row = dict[str, Any]
# Times in reasons are in the workstation's own time zone: the one its users live in.
LOCAL_TZ = datetime.now().astimezone().tzinfo or UTC


@dataclass(frozen=True)
class WaitInfo:
    position: int | None
    estimated_start_at: Any
    estimated_wait_s: float | None
    reason: str
    reason_text: str


def wait_info(job: Row, result: PassResult) -> WaitInfo | None:
    """Where a waiting (or just placed) job stands, from a scheduling pass."""
    estimate = result.decision.estimates.get(job["id"])
    return None if estimate is None else describe_wait(estimate, gpus=job["gpus"], now=result.now)


def describe_wait(estimate: Estimate, *, gpus: int, now: datetime) -> WaitInfo:
    wait_s = None
    if estimate.start_at is not None:
        wait_s = max(0.0, (estimate.start_at - now).total_seconds())
    return WaitInfo(
        position=estimate.position,
        estimated_start_at=estimate.start_at,
        estimated_wait_s=wait_s,
        reason=estimate.reason.value,
        reason_text=explain(estimate, gpus=gpus, now=now, tz=LOCAL_TZ),
    )


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


class JobService:
    def __init__(
        self, db: Database, scheduler: SchedulerService, publisher: Publisher, *, clock: Clock
    ) -> None:
        self._db = db
        self._scheduler = scheduler
        self._publisher = publisher
        self._clock = clock
        self._incoming: list[tuple[User, JobSpec, asyncio.Future[Accepted]]] = []
        self._inserter: asyncio.Task[None] | None = None

    async def submit(self, user: User, spec: JobSpec) -> tuple[Row, WaitInfo | None]:
        """Accept a job (it is in the database when this returns) and say where it stands.

        Concurrent submissions share one transaction and one scheduling pass (group commit)."""
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
                    ids = await jobs_repo.insert_jobs(
                        conn, [(spec, user.id) for user, spec, _ in batch], now=now
                    )
            except Exception as e:  # every waiting submitter gets the error, none is left hanging
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            newcomers = [
                PendingJob(job_id, job_id, spec.gpus, spec.priority.rank, user.name, spec.time_limit_s)
                for (user, spec, _), job_id in zip(batch, ids, strict=True)
            ]
            estimates = self._scheduler.try_extend(newcomers, now=now)
            for i, ((_, _, future), job_id) in enumerate(zip(batch, ids, strict=True)):
                if not future.done():
                    future.set_result(Accepted(job_id, now, estimates[i] if estimates else None))

    async def get(self, user: User, job_id: int, *, with_attempts: bool = False) -> Row:
        async with self._db.read() as conn:
            job = await jobs_repo.get_job(conn, job_id)
            if job is None:
                raise JobNotFound(job_id)
            self._check_owner(user, job, "see")
            if with_attempts:
                job["attempts"] = await jobs_repo.get_attempts(conn, job_id)
        return job

    async def list_jobs(
        self, user: User, *, states: list[str], owner: str | None, before_id: int | None, limit: int
    ) -> list[Row]:
        if not user.is_admin:
            if owner not in (None, user.name):
                raise PermissionDenied(f"Only admins can list the jobs of {owner}; you can list your own.")
            owner = user.name
        async with self._db.read() as conn:
            return await jobs_repo.list_jobs(
                conn, states=states, user=owner, before_id=before_id, limit=limit
            )

    async def cancel(self, user: User, job_id: int) -> Row:
        now = self._clock()
        job = await self.get(user, job_id)
        self._check_owner(user, job, "cancel")
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
            self._scheduler.wake()
        else:
            await self._scheduler.flush_outbox()
        return await self.get(user, job_id)

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
        """Everyone's waiting jobs in line order, with the estimates of a fresh pass."""
        result = await self._scheduler.run_pass()
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
    def _check_owner(user: User, job: Row, verb: str) -> None:
        if not user.is_admin and job["user_id"] != user.id:
            raise PermissionDenied(
                f"Job {job['id']} belongs to {job['user']}: only its owner or an admin can {verb} it."
            )
