"""SQL for jobs and attempts. Every state change is conditional on the state (and attempt) it leaves."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db.tables import attempts, jobs, users
from gpuyard.domain.jobs import ACTIVE_STATES, JobSpec, JobState, Priority
from gpuyard.domain.retry import DEFAULT_MAX_ATTEMPTS

Row = dict[str, Any]

_JOB_COLUMNS = [*jobs.c, users.c.name.label("user")]
_CURRENT_ATTEMPT = and_(attempts.c.job_id == jobs.c.id, attempts.c.number == jobs.c.attempt)


def _jobs_query() -> Any:
    """Jobs with their owner's name and the node and GPUs of their current attempt."""
    return (
        select(*_JOB_COLUMNS, attempts.c.node, attempts.c.gpu_indices)
        .join(users, users.c.id == jobs.c.user_id)
        .outerjoin(attempts, _CURRENT_ATTEMPT)
    )


def job_values(spec: JobSpec, user_id: int, now: datetime) -> Row:
    """The columns of a job just submitted."""
    return {
        "user_id": user_id,
        "name": spec.name,
        "argv": list(spec.argv),
        "gpus": spec.gpus,
        "priority": spec.priority.value,
        "priority_rank": spec.priority.rank,
        "workdir": spec.workdir,
        "env": dict(spec.env),
        "time_limit_s": spec.time_limit_s,
        "max_attempts": spec.max_attempts or DEFAULT_MAX_ATTEMPTS,
        "retry_on": sorted(f.value for f in spec.retry_on),
        "preemptible": spec.preemptible,
        "preemptions": 0,
        "state": JobState.QUEUED.value,
        "attempt": 0,
        "submitted_at": now,
        "updated_at": now,
    }


async def insert_jobs(
    conn: AsyncConnection, items: Sequence[tuple[JobSpec, int]], *, now: datetime
) -> list[int]:
    """Insert many jobs in one statement; ids come back in the order given."""
    if not items:
        return []
    query = insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True)
    result = await conn.execute(query, [job_values(spec, user_id, now) for spec, user_id in items])
    return [int(job_id) for job_id in result.scalars()]


async def get_job(conn: AsyncConnection, job_id: int) -> Row | None:
    row = (await conn.execute(_jobs_query().where(jobs.c.id == job_id))).mappings().first()
    return dict(row) if row else None


async def get_attempts(conn: AsyncConnection, job_id: int) -> list[Row]:
    query = select(attempts).where(attempts.c.job_id == job_id).order_by(attempts.c.number)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def list_jobs(
    conn: AsyncConnection,
    *,
    states: Collection[str] = (),
    user: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
    newest_first: bool = True,
    name: str | None = None,
    submitted_after: datetime | None = None,
    submitted_before: datetime | None = None,
) -> list[Row]:
    """A page of jobs; `before_id` is the cursor (ids below it when newest first, above otherwise).
    `name` matches part of a job's name, in any case."""
    query = _jobs_query()
    if states:
        query = query.where(jobs.c.state.in_(list(states)))
    if user is not None:
        query = query.where(users.c.name == user)
    if name:
        query = query.where(func.lower(jobs.c.name).contains(name.lower(), autoescape=True))
    if submitted_after is not None:
        query = query.where(jobs.c.submitted_at >= submitted_after)
    if submitted_before is not None:
        query = query.where(jobs.c.submitted_at < submitted_before)
    if before_id is not None:
        query = query.where(jobs.c.id < before_id if newest_first else jobs.c.id > before_id)
    query = query.order_by(jobs.c.id.desc() if newest_first else jobs.c.id).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def pending_jobs(conn: AsyncConnection) -> list[Row]:
    """The wait line as the policy needs it: light columns only (no command, no environment)."""
    query = (
        select(
            jobs.c.id,
            jobs.c.gpus,
            jobs.c.priority_rank,
            jobs.c.time_limit_s,
            jobs.c.name,
            jobs.c.priority,
            jobs.c.submitted_at,
            jobs.c.held_at,
            # a job waiting out its backoff does not start before retry_at, and says why it waits
            jobs.c.retry_at,
            jobs.c.attempt,
            jobs.c.max_attempts,
            jobs.c.failure_class,
            jobs.c.preemptible,
            cast(jobs.c.argv, String).label("command"),  # as text: a key for the history of runtimes
            users.c.name.label("user"),
        )
        .join(users, users.c.id == jobs.c.user_id)
        .where(jobs.c.state == JobState.QUEUED.value)
        .order_by(jobs.c.id)
    )
    return [r._asdict() for r in (await conn.execute(query))]


async def active_attempts(conn: AsyncConnection) -> list[Row]:
    """Jobs holding GPUs (dispatched or running) with their current attempt's placement."""
    query = (
        select(*_JOB_COLUMNS, attempts.c.node, attempts.c.gpu_indices, attempts.c.dispatched_at)
        .join(users, users.c.id == jobs.c.user_id)
        .join(attempts, _CURRENT_ATTEMPT)
        .where(jobs.c.state.in_([s.value for s in ACTIVE_STATES]))
        .order_by(jobs.c.id)
    )
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def count_waiting(conn: AsyncConnection, user_ids: Collection[int]) -> dict[int, int]:
    """How many jobs each of these users has waiting (held ones included), in one COUNT query."""
    query = (
        select(jobs.c.user_id, func.count())
        .where(jobs.c.state == JobState.QUEUED.value, jobs.c.user_id.in_(list(user_ids)))
        .group_by(jobs.c.user_id)
    )
    return {int(user_id): int(n) for user_id, n in (await conn.execute(query)).all()}


async def count_by_state(conn: AsyncConnection) -> dict[str, int]:
    query = select(jobs.c.state, func.count()).group_by(jobs.c.state)
    return {state: int(n) for state, n in (await conn.execute(query)).all()}


# A new attempt starts its GPU usage and progress afresh.
_NEW_ATTEMPT_USAGE: dict[str, Any] = {
    "usage_samples": 0,
    "gpu_util_mean": None,
    "gpu_util_peak": None,
    "gpu_mem_mean_mib": None,
    "gpu_mem_peak_mib": None,
    "gpu_idle_since": None,
    "retry_at": None,
    "progress_seq": 0,
    "progress_step": None,  # the last attempt's progress says nothing of this one's
    "progress_total": None,
    "preempt_requested_at": None,
}


async def dispatch(
    conn: AsyncConnection,
    *,
    job_id: int,
    node: str,
    gpu_indices: Sequence[int],
    gpu_uuids: Sequence[str],
    now: datetime,
) -> Row | None:
    """queued → dispatched with a new attempt. Returns what the worker needs (attempt, argv, env, ...),
    or None if the job moved on or was held since the snapshot (a held job never starts)."""
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.state == JobState.QUEUED.value, jobs.c.held_at.is_(None))
        .values(
            state=JobState.DISPATCHED.value, attempt=jobs.c.attempt + 1, updated_at=now, **_NEW_ATTEMPT_USAGE
        )
        .returning(
            jobs.c.attempt,
            jobs.c.name,
            jobs.c.argv,
            jobs.c.workdir,
            jobs.c.env,
            jobs.c.time_limit_s,
            jobs.c.preemptible,
        )
    )
    row = result.mappings().first()
    if row is None:
        return None
    number = row["attempt"]
    await conn.execute(
        insert(attempts).values(
            job_id=job_id,
            number=number,
            node=node,
            gpu_indices=list(gpu_indices),
            gpu_uuids=list(gpu_uuids),
            dispatched_at=now,
        )
    )
    return dict(row)


async def transition(
    conn: AsyncConnection,
    *,
    job_id: int,
    attempt: int | None,
    sources: Collection[JobState],
    target: JobState,
    now: datetime,
    **values: Any,
) -> bool:
    """Move a job to `target` only if it is in one of `sources` (and at `attempt`, when given). A job that
    stops holding GPUs has no preemption pending any more: that ends with its attempt."""
    if target not in ACTIVE_STATES:
        values.setdefault("preempt_requested_at", None)
    query = update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_([s.value for s in sources]))
    if attempt is not None:
        query = query.where(jobs.c.attempt == attempt)
    result = await conn.execute(query.values(state=target.value, updated_at=now, **values))
    return bool(result.rowcount)


async def update_attempt(conn: AsyncConnection, *, job_id: int, attempt: int, **values: Any) -> None:
    await conn.execute(
        update(attempts).where(attempts.c.job_id == job_id, attempts.c.number == attempt).values(**values)
    )


async def close_attempt(
    conn: AsyncConnection, *, job_id: int, attempt: int, ended_at: datetime, **values: Any
) -> bool:
    """Record how an attempt ended, once. False when it was closed already: a late report (of an attempt
    lost by its lease meanwhile, say) changes nothing, so the record keeps what the retry was decided on."""
    result = await conn.execute(
        update(attempts)
        .where(attempts.c.job_id == job_id, attempts.c.number == attempt, attempts.c.ended_at.is_(None))
        .values(ended_at=ended_at, **values)
    )
    return bool(result.rowcount)


def _holding(job_id: int, attempt: int) -> tuple[Any, ...]:
    """The WHERE of a write about a job's attempt that holds GPUs now (dispatched or running)."""
    return (
        jobs.c.id == job_id,
        jobs.c.attempt == attempt,
        jobs.c.state.in_([s.value for s in ACTIVE_STATES]),
    )


async def set_progress(
    conn: AsyncConnection,
    *,
    job_id: int,
    attempt: int,
    step: float | None,
    total: float | None,
    metrics: Row | None,
    now: datetime,
    seq: int = 0,
) -> bool:
    """Record what the current attempt reports; False when the job moved on (a late report) or a newer
    report is recorded already (`seq` grows with each report of an attempt)."""
    result = await conn.execute(
        update(jobs)
        .where(
            *_holding(job_id, attempt),
            jobs.c.progress_seq <= seq,
        )
        .values(progress_step=step, progress_total=total, metrics=metrics, updated_at=now, progress_seq=seq)
    )
    return bool(result.rowcount)


async def request_cancel(conn: AsyncConnection, *, job_id: int, now: datetime) -> None:
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.cancel_requested_at.is_(None))
        .values(cancel_requested_at=now, updated_at=now)
    )


async def request_preemption(conn: AsyncConnection, *, job_id: int, attempt: int, now: datetime) -> bool:
    """Mark a preemptible job's attempt as being stopped for a preemption, once: False when it is not
    holding GPUs at that attempt any more, or a stop (a preemption, a cancel) was asked for already."""
    result = await conn.execute(
        update(jobs)
        .where(
            *_holding(job_id, attempt),
            jobs.c.preemptible.is_(True),
            jobs.c.preempt_requested_at.is_(None),
            jobs.c.cancel_requested_at.is_(None),
        )
        .values(preempt_requested_at=now, updated_at=now)
    )
    return bool(result.rowcount)


# Queue controls on a waiting job. Each is conditional on the job still waiting, so a job dispatched in the
# meantime is left alone; each returns whether it changed the row.

_WAITING = jobs.c.state == JobState.QUEUED.value


async def hold(conn: AsyncConnection, *, job_id: int, now: datetime) -> bool:
    """Hold a waiting job that is not held yet."""
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, _WAITING, jobs.c.held_at.is_(None))
        .values(held_at=now, updated_at=now)
    )
    return bool(result.rowcount)


async def release(conn: AsyncConnection, *, job_id: int, now: datetime) -> bool:
    """Release a held waiting job."""
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, _WAITING, jobs.c.held_at.is_not(None))
        .values(held_at=None, updated_at=now)
    )
    return bool(result.rowcount)


async def set_priority(conn: AsyncConnection, *, job_id: int, priority: Priority, now: datetime) -> bool:
    """Give a waiting job another priority (its submission order, the FIFO tie-break, stays)."""
    result = await conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, _WAITING, jobs.c.priority != priority.value)
        .values(priority=priority.value, priority_rank=priority.rank, updated_at=now)
    )
    return bool(result.rowcount)
