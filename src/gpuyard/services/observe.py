"""What /metrics reports about *now* (jobs by state and user, the queue, GPUs and nodes), read at scrape
time from the database and the waiting jobs' estimates (those of `gpuyard queue`: reused while the line
has not changed); and the time series of jobs and GPUs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from gpuyard.adapters.db import dead_repo, jobs_repo, repo, usage_repo
from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.tables import jobs, users, webhook_deliveries
from gpuyard.domain.jobs import JobState
from gpuyard.services.scheduler import PassResult, node_online


@dataclass(frozen=True)
class GpuGauge:
    node: str
    index: int
    uuid: str
    utilization_pct: int | None
    memory_used_mib: int
    memory_total_mib: int
    allocated: bool
    outside_processes: int


@dataclass(frozen=True)
class Snapshot:
    jobs: dict[tuple[str, str], int]  # (state, user) -> jobs
    queue_length: int
    oldest_wait_s: float | None
    next_start_s: float | None  # estimated wait of the job next in line, from the last pass
    idle_gpu_jobs: int
    nodes_up: dict[str, bool]
    gpus: list[GpuGauge]
    webhook_deliveries: dict[str, int] = field(default_factory=dict)  # state -> deliveries
    dead_letters: dict[str, int] = field(default_factory=dict)  # kind -> dead letters not requeued


async def snapshot(
    db: Database, estimates: PassResult | None, *, now: datetime, node_lease_s: float
) -> Snapshot:
    async with db.read() as conn:
        by_state_user = (
            await conn.execute(
                select(jobs.c.state, users.c.name, func.count())
                .join(users, users.c.id == jobs.c.user_id)
                .group_by(jobs.c.state, users.c.name)
            )
        ).all()
        queued = JobState.QUEUED.value
        length, oldest = (
            await conn.execute(
                select(func.count(), func.min(jobs.c.submitted_at)).where(jobs.c.state == queued)
            )
        ).one()
        idle = (
            await conn.execute(
                select(func.count()).where(
                    jobs.c.state == JobState.RUNNING.value, jobs.c.gpu_idle_since.is_not(None)
                )
            )
        ).scalar_one()
        deliveries = (
            await conn.execute(
                select(webhook_deliveries.c.state, func.count()).group_by(webhook_deliveries.c.state)
            )
        ).all()
        nodes = await repo.list_nodes(conn)
        active = await jobs_repo.active_attempts(conn)
        dead = await dead_repo.count_open(conn)
    held = {(a["node"], i) for a in active for i in a["gpu_indices"]}
    gpus = [
        GpuGauge(
            node=node["name"],
            index=gpu["index"],
            uuid=gpu["uuid"],
            utilization_pct=gpu.get("utilization_pct"),
            memory_used_mib=gpu["memory_used_mib"],
            memory_total_mib=gpu["memory_total_mib"],
            allocated=(node["name"], gpu["index"]) in held,
            outside_processes=len(gpu.get("outside", [])),
        )
        for node in nodes
        for gpu in node["gpus"]
    ]
    return Snapshot(
        jobs={(state, user): int(n) for state, user, n in by_state_user},
        queue_length=int(length),
        oldest_wait_s=(now - oldest).total_seconds() if oldest is not None else None,
        next_start_s=_next_start_s(estimates, now),
        idle_gpu_jobs=int(idle),
        nodes_up={n["name"]: node_online(n, now=now, node_lease_s=node_lease_s) for n in nodes},
        gpus=gpus,
        webhook_deliveries={state: int(n) for state, n in deliveries},
        dead_letters={kind: dead.get(kind, 0) for kind in ("job", "message")},
    )


def _next_start_s(last: PassResult | None, now: datetime) -> float | None:
    if last is None:
        return None
    waiting = [e for e in last.decision.estimates.values() if e.position >= 1]
    if not waiting:
        return None
    head = min(waiting, key=lambda e: e.position)
    if head.start_at is None:
        return None
    return max(0.0, (head.start_at - now).total_seconds())


async def job_series(
    db: Database, job: dict[str, Any], *, attempt: int | None, max_points: int
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """(attempt, GPU usage points, progress points) of one of the job's attempts (default: the current)."""
    number = attempt if attempt is not None else job["attempt"]
    async with db.read() as conn:
        gpu = await usage_repo.job_usage_points(conn, job_id=job["id"], attempt=number)
        progress = await usage_repo.job_progress_points(conn, job_id=job["id"], attempt=number)
    return number, usage_repo.thin(gpu, max_points), usage_repo.thin(progress, max_points)


async def gpu_series(db: Database, *, since: datetime) -> dict[tuple[str, int], list[dict[str, Any]]]:
    async with db.read() as conn:
        return await usage_repo.gpu_usage_points(conn, since=since)
