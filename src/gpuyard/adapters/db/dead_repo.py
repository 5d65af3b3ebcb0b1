"""SQL for dead letters and the counts the retry policy needs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db.tables import attempts, dead_letters, jobs, log_chunks, users
from gpuyard.domain.retry import NOT_COUNTED

Row = dict[str, Any]
LOG_TAIL_BYTES = 4096


async def counted_attempts(conn: AsyncConnection, job_id: int) -> int:
    """Attempts that used up the job's budget (those that never started do not)."""
    query = select(func.count()).where(
        attempts.c.job_id == job_id,
        or_(
            attempts.c.failure_class.is_(None),
            attempts.c.failure_class.not_in([f.value for f in NOT_COUNTED]),
        ),
    )
    return int((await conn.execute(query)).scalar_one())


async def log_tail(
    conn: AsyncConnection, *, job_id: int, attempt: int, limit_bytes: int = LOG_TAIL_BYTES
) -> str:
    """The last `limit_bytes` of an attempt's output."""
    query = (
        select(log_chunks.c.data)
        .where(log_chunks.c.job_id == job_id, log_chunks.c.attempt == attempt)
        .order_by(log_chunks.c.offset.desc())
    )
    tail = b""
    for (data,) in (await conn.execute(query)).all():
        tail = data + tail
        if len(tail) >= limit_bytes:
            break
    return tail[-limit_bytes:].decode(errors="replace")


async def add(conn: AsyncConnection, *, now: datetime, **values: Any) -> int:
    query = insert(dead_letters).values(created_at=now, **values).returning(dead_letters.c.id)
    return int((await conn.execute(query)).scalar_one())


def _listing() -> Any:
    return (
        select(dead_letters, users.c.name.label("user"), users.c.id.label("user_id"))
        .outerjoin(jobs, jobs.c.id == dead_letters.c.job_id)
        .outerjoin(users, users.c.id == jobs.c.user_id)
    )


async def list_open(
    conn: AsyncConnection, *, user_id: int | None, include_requeued: bool, limit: int
) -> list[Row]:
    """Dead letters, newest first; `user_id` limits them to that user's jobs."""
    query = _listing()
    if user_id is not None:
        query = query.where(jobs.c.user_id == user_id)
    if not include_requeued:
        query = query.where(dead_letters.c.requeued_at.is_(None))
    query = query.order_by(dead_letters.c.id.desc()).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def get(conn: AsyncConnection, dead_id: int) -> Row | None:
    row = (await conn.execute(_listing().where(dead_letters.c.id == dead_id))).mappings().first()
    return dict(row) if row else None


async def mark_requeued(conn: AsyncConnection, dead_id: int, *, now: datetime) -> bool:
    query = (
        update(dead_letters)
        .where(dead_letters.c.id == dead_id, dead_letters.c.requeued_at.is_(None))
        .values(requeued_at=now)
    )
    return bool((await conn.execute(query)).rowcount)


async def mark_job_requeued(conn: AsyncConnection, job_id: int, *, now: datetime) -> None:
    """Close the open dead letters of a job that went back in line."""
    await conn.execute(
        update(dead_letters)
        .where(
            dead_letters.c.job_id == job_id,
            dead_letters.c.kind == "job",
            dead_letters.c.requeued_at.is_(None),
        )
        .values(requeued_at=now)
    )


async def count_open(conn: AsyncConnection) -> dict[str, int]:
    query = (
        select(dead_letters.c.kind, func.count())
        .where(dead_letters.c.requeued_at.is_(None))
        .group_by(dead_letters.c.kind)
    )
    return {kind: int(n) for kind, n in (await conn.execute(query)).all()}
