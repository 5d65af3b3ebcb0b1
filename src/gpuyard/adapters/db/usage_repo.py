"""SQL for the time series: a job's GPU usage and reported metrics, and each GPU's usage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db.tables import gpu_usage, job_progress, job_usage

Row = dict[str, Any]


def thin(rows: list[Row], max_points: int) -> list[Row]:
    """At most `max_points` rows, evenly spaced, the last one always kept."""
    if len(rows) <= max_points:
        return rows
    stride = -(-len(rows) // max_points)
    kept = rows[::stride]
    if kept[-1] is not rows[-1]:
        kept[-1] = rows[-1]
    return kept


async def job_usage_points(conn: AsyncConnection, *, job_id: int, attempt: int) -> list[Row]:
    query = (
        select(job_usage.c.at, job_usage.c.utilization_pct, job_usage.c.memory_used_mib)
        .where(job_usage.c.job_id == job_id, job_usage.c.attempt == attempt)
        .order_by(job_usage.c.at)
    )
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def job_progress_points(conn: AsyncConnection, *, job_id: int, attempt: int) -> list[Row]:
    query = (
        select(job_progress.c.at, job_progress.c.step, job_progress.c.total, job_progress.c.metrics)
        .where(job_progress.c.job_id == job_id, job_progress.c.attempt == attempt)
        .order_by(job_progress.c.at)
    )
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def gpu_usage_points(conn: AsyncConnection, *, since: datetime) -> dict[tuple[str, int], list[Row]]:
    query = (
        select(gpu_usage)
        .where(gpu_usage.c.at >= since)
        .order_by(gpu_usage.c.node, gpu_usage.c.gpu_index, gpu_usage.c.at)
    )
    series: dict[tuple[str, int], list[Row]] = {}
    for r in (await conn.execute(query)).mappings():
        series.setdefault((r["node"], r["gpu_index"]), []).append(
            {"at": r["at"], "utilization_pct": r["utilization_pct"], "memory_used_mib": r["memory_used_mib"]}
        )
    return series
