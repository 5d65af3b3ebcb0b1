"""GPU usage over time, from the samples in worker heartbeats: per job (its record's mean and peak, a
downsampled series) and per GPU (a downsampled series for the last hours), and the idle-GPU flag.

Samples are folded into buckets of `bucket_s` in memory and written once a bucket closes, so a heartbeat a
second costs a database write every bucket, not every second. A controller restart loses at most the open
bucket. A job is flagged idle when none of its GPUs was busier than `idle_below_pct` for `idle_after_s`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.broker.messages import Heartbeat
from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.repo import insert_ignore
from gpuyard.adapters.db.tables import gpu_usage, job_usage, jobs
from gpuyard.domain.jobs import JobState
from gpuyard.services.ports import Clock

log = logging.getLogger(__name__)

JobKey = tuple[int, int]
GpuKey = tuple[str, int]
# Called in the transaction that flags a job idle (job id, attempt, idle since): notifications.
K = TypeVar("K", tuple[int, int], tuple[str, int])
OnIdle = Callable[[AsyncConnection, int, int, datetime], Awaitable[None]]


@dataclass(frozen=True)
class UsageConfig:
    bucket_s: float = 30.0
    retention_s: float = 7 * 86400.0  # how long per-GPU series are kept (per-job series live with the job)
    idle_after_s: float = 1800.0
    idle_below_pct: float = 5.0


@dataclass
class Bucket:
    start: datetime
    util_sum: float = 0.0
    util_peak: float = 0.0
    mem_sum: float = 0.0
    mem_peak: int = 0
    samples: int = 0

    def add(self, util_pct: float, mem_mib: int, *, util_peak: float | None = None) -> None:
        self.util_sum += util_pct
        self.util_peak = max(self.util_peak, util_pct if util_peak is None else util_peak)
        self.mem_sum += mem_mib
        self.mem_peak = max(self.mem_peak, mem_mib)
        self.samples += 1

    @property
    def util_mean(self) -> float:
        return self.util_sum / self.samples


def bucket_start(at: datetime, bucket_s: float) -> datetime:
    seconds = at.timestamp()
    return datetime.fromtimestamp(seconds - seconds % bucket_s, UTC)


class UsageService:
    def __init__(self, db: Database, *, clock: Clock, config: UsageConfig, on_idle: OnIdle | None = None):
        self._db = db
        self._clock = clock
        self.config = config
        self._on_idle = on_idle
        self._jobs: dict[JobKey, Bucket] = {}
        self._gpus: dict[GpuKey, Bucket] = {}
        self._node_jobs: dict[str, set[JobKey]] = {}
        self._last_busy: dict[JobKey, datetime] = {}
        self._idle: set[JobKey] | None = None  # loaded from the database on first use
        self._pruned_at: datetime | None = None

    async def record(self, beat: Heartbeat) -> int:
        """Fold one heartbeat's samples in; write what closed (buckets, ended jobs, idle flags). Returns how
        many jobs it has just flagged idle (their notifications are in the database once this returns)."""
        at = beat.at if beat.at.tzinfo else beat.at.replace(tzinfo=UTC)
        closed_gpus: list[tuple[GpuKey, Bucket]] = []
        closed_jobs: list[tuple[JobKey, Bucket]] = []
        for gpu in beat.gpus:
            if gpu.utilization_pct is not None:
                self._fold(
                    self._gpus,
                    (beat.node, gpu.index),
                    at,
                    float(gpu.utilization_pct),
                    gpu.memory_used_mib,
                    closed_gpus,
                )
        seen: set[JobKey] = set()
        busy: dict[JobKey, bool] = {}
        for use in beat.usage:
            key = (use.job_id, use.attempt)
            seen.add(key)
            utils = [float(g.utilization_pct) for g in use.gpus if g.utilization_pct is not None]
            if not utils:
                continue
            memory = sum(g.memory_used_mib or 0 for g in use.gpus)
            self._fold(self._jobs, key, at, sum(utils) / len(utils), memory, closed_jobs, peak=max(utils))
            busy[key] = max(utils) >= self.config.idle_below_pct
        for gone in self._node_jobs.get(beat.node, set()) - seen:  # ended since the last heartbeat
            bucket = self._jobs.pop(gone, None)
            if bucket is not None:
                closed_jobs.append((gone, bucket))
            self._last_busy.pop(gone, None)
        self._node_jobs[beat.node] = seen
        if self._idle is None:
            self._idle = await self._load_idle()
        flips = self._idle_flips(busy, at)
        prune = self._pruned_at is None or at - self._pruned_at > timedelta(minutes=10)
        if closed_gpus or closed_jobs or flips or prune:
            async with self._db.write() as conn:
                await self._write(conn, closed_gpus, closed_jobs, flips)
                if prune:
                    cutoff = at - timedelta(seconds=self.config.retention_s)
                    await conn.execute(delete(gpu_usage).where(gpu_usage.c.at < cutoff))
                    self._pruned_at = at
        return sum(1 for _, since in flips if since is not None)

    def _fold(
        self,
        buckets: dict[K, Bucket],
        key: K,
        at: datetime,
        util_pct: float,
        mem_mib: int,
        closed: list[tuple[K, Bucket]],
        *,
        peak: float | None = None,
    ) -> None:
        start = bucket_start(at, self.config.bucket_s)
        bucket = buckets.get(key)
        if bucket is not None and bucket.start != start:
            closed.append((key, bucket))
            bucket = None
        if bucket is None:
            bucket = buckets[key] = Bucket(start)
        bucket.add(util_pct, mem_mib, util_peak=peak)

    def _idle_flips(self, busy: dict[JobKey, bool], at: datetime) -> list[tuple[JobKey, datetime | None]]:
        """(job, idle since) for jobs that became idle, (job, None) for flagged jobs busy again."""
        assert self._idle is not None
        flips: list[tuple[JobKey, datetime | None]] = []
        for key, is_busy in busy.items():
            last_busy = self._last_busy.setdefault(key, at)
            if is_busy:
                self._last_busy[key] = at
                if key in self._idle:
                    self._idle.discard(key)
                    flips.append((key, None))
            elif key not in self._idle and (at - last_busy).total_seconds() >= self.config.idle_after_s:
                self._idle.add(key)
                flips.append((key, last_busy))
        return flips

    async def _load_idle(self) -> set[JobKey]:
        query = select(jobs.c.id, jobs.c.attempt).where(
            jobs.c.state == JobState.RUNNING.value, jobs.c.gpu_idle_since.is_not(None)
        )
        async with self._db.read() as conn:
            return {(int(i), int(a)) for i, a in (await conn.execute(query)).all()}

    async def _write(
        self,
        conn: AsyncConnection,
        closed_gpus: list[tuple[GpuKey, Bucket]],
        closed_jobs: list[tuple[JobKey, Bucket]],
        flips: list[tuple[JobKey, datetime | None]],
    ) -> None:
        if closed_gpus:
            rows = [{"node": node, "gpu_index": index, **_point(b)} for (node, index), b in closed_gpus]
            await conn.execute(insert_ignore(conn, gpu_usage), rows)
        if closed_jobs:
            rows = [
                {"job_id": job_id, "attempt": attempt, **_point(b)} for (job_id, attempt), b in closed_jobs
            ]
            await conn.execute(insert_ignore(conn, job_usage), rows)
            for key, bucket in closed_jobs:
                await _add_to_job_stats(conn, key, bucket)
        for (job_id, attempt), since in flips:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.state == JobState.RUNNING.value)
                .values(gpu_idle_since=since)
            )
            if since is not None:
                log.info("job %s attempt %s: its GPUs have been idle since %s", job_id, attempt, since)
                if self._on_idle is not None:
                    await self._on_idle(conn, job_id, attempt, since)


def _point(b: Bucket) -> dict[str, object]:
    """A closed bucket as a point of a series: its start, mean utilization and peak memory."""
    return {"at": b.start, "utilization_pct": round(b.util_mean, 1), "memory_used_mib": b.mem_peak}


async def _add_to_job_stats(conn: AsyncConnection, key: JobKey, b: Bucket) -> None:
    """Fold a closed bucket into the job's running mean and peak (of its current attempt only)."""
    n = jobs.c.usage_samples
    total = n + b.samples
    await conn.execute(
        update(jobs)
        .where(jobs.c.id == key[0], jobs.c.attempt == key[1])
        .values(
            usage_samples=total,
            gpu_util_mean=(func.coalesce(jobs.c.gpu_util_mean, 0.0) * n + b.util_sum) / total,
            gpu_mem_mean_mib=(func.coalesce(jobs.c.gpu_mem_mean_mib, 0.0) * n + b.mem_sum) / total,
            gpu_util_peak=case(
                (func.coalesce(jobs.c.gpu_util_peak, -1.0) < b.util_peak, b.util_peak),
                else_=jobs.c.gpu_util_peak,
            ),
            gpu_mem_peak_mib=case(
                (func.coalesce(jobs.c.gpu_mem_peak_mib, -1) < b.mem_peak, b.mem_peak),
                else_=jobs.c.gpu_mem_peak_mib,
            ),
        )
    )
