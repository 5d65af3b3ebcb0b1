"""What the past says: runtimes of finished jobs (for estimates) and recent GPU time per user (fair share)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db.tables import attempts, jobs, users
from gpuyard.domain.jobs import JobState

Row = dict[str, Any]


async def finished_runs(conn: AsyncConnection, *, since: datetime, limit: int = 5000) -> list[Row]:
    """Jobs that succeeded since `since`, newest first: who, what, and how long they ran."""
    query = (
        select(
            users.c.name.label("user"),
            jobs.c.name,
            cast(jobs.c.argv, String).label("command"),
            jobs.c.time_limit_s,
            jobs.c.started_at,
            jobs.c.finished_at,
        )
        .join(users, users.c.id == jobs.c.user_id)
        .where(
            jobs.c.state == JobState.SUCCEEDED.value,
            jobs.c.finished_at >= since,
            jobs.c.started_at.is_not(None),
        )
        .order_by(jobs.c.finished_at.desc())
        .limit(limit)
    )
    return [r._asdict() for r in await conn.execute(query)]


async def gpu_time_rows(conn: AsyncConnection, *, since: datetime) -> list[Row]:
    """Attempts that held GPUs since `since`: user, GPU indices, start and end (None: still running)."""
    query = (
        select(
            users.c.name.label("user"),
            attempts.c.gpu_indices,
            attempts.c.started_at,
            attempts.c.ended_at,
        )
        .join(jobs, jobs.c.id == attempts.c.job_id)
        .join(users, users.c.id == jobs.c.user_id)
        .where(
            attempts.c.started_at.is_not(None),
            or_(attempts.c.ended_at.is_(None), and_(attempts.c.ended_at >= since)),
        )
    )
    return [r._asdict() for r in await conn.execute(query)]
