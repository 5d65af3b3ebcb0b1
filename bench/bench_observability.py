"""Observability figures on this machine (not a timed test: it prints numbers).

    .venv/bin/python bench/bench_observability.py [--seconds 30]

1. Worker CPU overhead while it samples 4 GPUs once a second: a real `gpuyard worker` (fake GPU backend)
   runs 4 one-GPU jobs that sleep; its CPU time over a window of wall time, as a share of one core. The
   fake backend's own sampling (it reads every process's CPU time from /proc to simulate load) is
   included, so this is an upper bound for the sampling and reporting of NVML.
2. One sample, per backend call: `usage_by_job` over 4 GPUs, and the fake backend's `list_gpus`.
3. Stored GPU series per job-hour: one hour of heartbeats (1 s, 4 GPUs, a 2-GPU job) through the
   controller's UsageService into SQLite; rows and bytes of the job's series (and of the 4 GPUs' series),
   and the controller's CPU time per heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpuyard.adapters.broker.local import LocalRabbitmq, amqp_reachable, free_port  # noqa: E402
from gpuyard.adapters.broker.messages import GpuSample, GpuUse, Heartbeat, JobUsage  # noqa: E402
from gpuyard.adapters.db import jobs_repo, repo  # noqa: E402
from gpuyard.adapters.db.engine import Database  # noqa: E402
from gpuyard.adapters.db.migrate import migrate  # noqa: E402
from gpuyard.adapters.gpu.fake import FakeGpus  # noqa: E402
from gpuyard.domain.jobs import JobState, make_spec  # noqa: E402
from gpuyard.entrypoints.worker.usage import usage_by_job  # noqa: E402
from gpuyard.services.usage import UsageConfig, UsageService  # noqa: E402
from tests.support.stack import running_stack, wait_for  # noqa: E402

SYSTEM_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def worker_overhead(base: Path, amqp_url: str, seconds: float) -> None:
    env = {"GPUYARD_HEARTBEAT_INTERVAL_S": "1"}
    with running_stack(base, amqp_url, extra_env=env) as stack, stack.admin() as admin:
        jobs = [admin.submit("sleep 600", gpus=1, name=f"sleeper-{i}")["id"] for i in range(4)]
        for job_id in jobs:
            stack.wait_state(job_id, "running")
        worker = stack.procs["worker"].pid
        time.sleep(3)  # past start-up
        cpu0, wall0 = cpu_seconds(worker), time.monotonic()
        time.sleep(seconds)
        cpu1, wall1 = cpu_seconds(worker), time.monotonic()
        share = (cpu1 - cpu0) / (wall1 - wall0)
        print(
            f"worker CPU while sampling 4 GPUs once a second, 4 jobs running: {100 * share:.2f} % of one "
            f"core ({1000 * (cpu1 - cpu0) / (wall1 - wall0):.1f} ms of CPU per second, over {seconds:.0f} s)"
        )
        for job_id in jobs:
            admin.cancel(job_id)
        wait_for(lambda: all(stack.job(j)["state"] == "cancelled" for j in jobs), what="the sleepers to stop")


def sample_costs() -> None:
    fake = FakeGpus(4)
    for index, pid in enumerate(range(4)):
        fake.set_job_gpus(os.getpid() if index == 0 else 10_000_000 + pid, [index])
    n = 200
    began = time.perf_counter()
    for _ in range(n):
        gpus = fake.list_gpus()
    list_ms = 1000 * (time.perf_counter() - began) / n
    jobs = {(i, 1): (10_000_000 + i, [i]) for i in range(4)}
    began = time.perf_counter()
    for _ in range(n):
        usage_by_job(gpus, jobs)
    map_ms = 1000 * (time.perf_counter() - began) / n
    print(
        f"one sample of 4 fake GPUs (list_gpus, /proc scan included): {list_ms:.2f} ms; "
        f"mapping processes to 4 jobs: {map_ms:.3f} ms"
    )


async def series_size(base: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{base / 'series.db'}")
    await migrate(db)
    start = datetime(2026, 12, 4, tzinfo=UTC)
    async with db.write() as conn:
        user = await repo.add_user(conn, name="ana", is_admin=False, now=start)
        (job_id,) = await jobs_repo.insert_jobs(
            conn, [(make_spec(command=["true"], gpus=2), user)], now=start
        )
        await jobs_repo.dispatch(
            conn, job_id=job_id, node="n", gpu_indices=[0, 1], gpu_uuids=["a", "b"], now=start
        )
        await jobs_repo.transition(
            conn, job_id=job_id, attempt=1, sources={JobState.DISPATCHED}, target=JobState.RUNNING, now=start
        )
    usage = UsageService(db, clock=lambda: start, config=UsageConfig())
    beats = []
    for second in range(3600):
        utils = [90 + second % 7, 80 + second % 5, 0, 0]
        gpus = [
            GpuSample(
                index=i,
                uuid=f"g{i}",
                name="RTX 3090",
                memory_total_mib=24576,
                memory_used_mib=9000,
                utilization_pct=u,
            )
            for i, u in enumerate(utils)
        ]
        uses = [GpuUse(index=i, utilization_pct=utils[i], memory_used_mib=9000) for i in (0, 1)]
        beats.append(
            Heartbeat(
                node="n",
                backend="fake",
                gpus=gpus,
                at=start + timedelta(seconds=second),
                usage=[JobUsage(job_id=job_id, attempt=1, gpus=uses)],
            )
        )
    began = time.process_time()
    for beat in beats:
        await usage.record(beat)
    cpu_ms = 1000 * (time.process_time() - began) / len(beats)
    async with db.read() as conn:
        sizes = {}
        for table in ("job_usage", "gpu_usage"):
            rows = (await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar_one()
            pages = (
                await conn.exec_driver_sql(f"SELECT sum(pgsize) FROM dbstat WHERE name LIKE '%{table}%'")
            ).scalar_one()
            sizes[table] = (rows, pages)
    await db.dispose()
    (job_rows, job_bytes), (gpu_rows, gpu_bytes) = sizes["job_usage"], sizes["gpu_usage"]
    print(
        f"stored GPU series per job-hour (30 s buckets): {job_rows} rows, {job_bytes / 1024:.1f} KiB in "
        f"SQLite (table and index pages); the 4 GPUs' own series: {gpu_rows} rows, "
        f"{gpu_bytes / 1024:.1f} KiB per hour; controller CPU per heartbeat: {cpu_ms:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        sample_costs()
        asyncio.run(series_size(base))
        if amqp_reachable(SYSTEM_AMQP):
            worker_overhead(base / "stack", SYSTEM_AMQP, args.seconds)
        else:
            with LocalRabbitmq(base / "rabbitmq", port=free_port()) as rabbit:
                worker_overhead(base / "stack", rabbit.url, args.seconds)


if __name__ == "__main__":
    main()
