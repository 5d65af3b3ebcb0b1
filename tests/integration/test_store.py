"""The storage layer against both real databases: SQLite (file, WAL) and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gpuyard.adapters.db import jobs_repo, repo
from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.migrate import migrate
from gpuyard.domain.errors import UserExists
from gpuyard.domain.jobs import ACTIVE_STATES, JobState, make_spec

pytestmark = pytest.mark.integration
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    database = Database(url)
    await migrate(database)
    await migrate(database)  # idempotent
    try:
        yield database
    finally:
        await database.dispose()


async def add_job(db: Database, user_id: int, *, gpus: int = 1, preemptible: bool = False) -> int:
    async with db.write() as conn:
        spec = make_spec(command=["true"], gpus=gpus, preemptible=preemptible)
        (job_id,) = await jobs_repo.insert_jobs(conn, [(spec, user_id)], now=NOW)
        return job_id


async def add_user(db: Database, name: str = "ann") -> int:
    async with db.write() as conn:
        return await repo.add_user(conn, name=name, is_admin=False, now=NOW)


async def test_users_and_tokens(db: Database) -> None:
    user_id = await add_user(db)
    async with db.write() as conn:
        await repo.add_token(conn, user_id=user_id, token_hash="h" * 64, now=NOW)
    with pytest.raises(UserExists):
        await add_user(db)
    async with db.read() as conn:
        user = await repo.user_by_token_hash(conn, "h" * 64)
        assert user is not None and user["name"] == "ann"
        assert await repo.user_by_token_hash(conn, "x" * 64) is None
        assert await repo.count_users(conn) == 1


async def test_job_round_trip_keeps_aware_utc_times(db: Database) -> None:
    job_id = await add_job(db, await add_user(db), gpus=2)
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
    assert job is not None
    assert job["state"] == "queued" and job["gpus"] == 2 and job["user"] == "ann" and job["argv"] == ["true"]
    assert job["submitted_at"] == NOW and job["submitted_at"].tzinfo is not None


async def test_dispatch_is_conditional_and_numbers_attempts(db: Database) -> None:
    job_id = await add_job(db, await add_user(db))
    async with db.write() as conn:
        first = await jobs_repo.dispatch(
            conn, job_id=job_id, node="n", gpu_indices=[1], gpu_uuids=["u1"], now=NOW
        )
        again = await jobs_repo.dispatch(
            conn, job_id=job_id, node="n", gpu_indices=[2], gpu_uuids=["u2"], now=NOW
        )
    assert first is not None and first["attempt"] == 1 and first["argv"] == ["true"]
    assert again is None, "a job already dispatched cannot be dispatched twice"
    async with db.read() as conn:
        (active,) = await jobs_repo.active_attempts(conn)
        assert active["gpu_indices"] == [1] and active["node"] == "n"
        assert await jobs_repo.pending_jobs(conn) == []


async def test_transitions_are_conditional_on_state_and_attempt(db: Database) -> None:
    job_id = await add_job(db, await add_user(db))
    async with db.write() as conn:
        await jobs_repo.dispatch(conn, job_id=job_id, node="n", gpu_indices=[0], gpu_uuids=["u"], now=NOW)
        stale = await jobs_repo.transition(
            conn, job_id=job_id, attempt=7, sources={JobState.DISPATCHED}, target=JobState.RUNNING, now=NOW
        )
        ok = await jobs_repo.transition(
            conn, job_id=job_id, attempt=1, sources={JobState.DISPATCHED}, target=JobState.RUNNING, now=NOW
        )
        done = await jobs_repo.transition(
            conn,
            job_id=job_id,
            attempt=1,
            sources=ACTIVE_STATES,
            target=JobState.SUCCEEDED,
            now=NOW,
            exit_code=0,
        )
        late = await jobs_repo.transition(
            conn, job_id=job_id, attempt=1, sources={JobState.DISPATCHED}, target=JobState.RUNNING, now=NOW
        )
    assert (stale, ok, done, late) == (False, True, True, False)
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
    assert job is not None and job["state"] == "succeeded" and job["exit_code"] == 0


async def test_an_attempt_is_closed_once_and_a_late_end_changes_nothing(db: Database) -> None:
    """An attempt lost by its lease, then reported by its worker as succeeded: the record keeps node_lost,
    on which the retry was decided."""
    job_id = await add_job(db, await add_user(db))
    later = NOW + timedelta(seconds=5)
    async with db.write() as conn:
        await jobs_repo.dispatch(conn, job_id=job_id, node="n", gpu_indices=[0], gpu_uuids=["u"], now=NOW)
        lost = await jobs_repo.close_attempt(
            conn, job_id=job_id, attempt=1, ended_at=NOW, failure_class="node_lost"
        )
        late = await jobs_repo.close_attempt(
            conn, job_id=job_id, attempt=1, ended_at=later, exit_code=0, failure_class=None
        )
        nothing = await jobs_repo.close_attempt(conn, job_id=job_id, attempt=2, ended_at=later)
    assert (lost, late, nothing) == (True, False, False)
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
        (attempt,) = await jobs_repo.get_attempts(conn, job_id)
    assert job is not None
    assert (
        attempt["failure_class"] == "node_lost"
        and attempt["ended_at"] == NOW
        and attempt["exit_code"] is None
    )


async def test_a_preemption_is_asked_once_of_a_running_preemptible_attempt_and_ends_with_it(
    db: Database,
) -> None:
    user_id = await add_user(db)
    job_id, plain = await add_job(db, user_id, preemptible=True), await add_job(db, user_id)
    later = NOW + timedelta(seconds=5)
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
    assert job is not None and (job["preemptible"], job["preemptions"], job["preempt_requested_at"]) == (
        True,
        0,
        None,
    )
    async with db.write() as conn:
        waiting = await jobs_repo.request_preemption(conn, job_id=job_id, attempt=0, now=NOW)
        for each in (job_id, plain):
            await jobs_repo.dispatch(conn, job_id=each, node="n", gpu_indices=[0], gpu_uuids=["u"], now=NOW)
        stale = await jobs_repo.request_preemption(conn, job_id=job_id, attempt=2, now=NOW)
        not_preemptible = await jobs_repo.request_preemption(conn, job_id=plain, attempt=1, now=NOW)
        first = await jobs_repo.request_preemption(conn, job_id=job_id, attempt=1, now=NOW)
        again = await jobs_repo.request_preemption(conn, job_id=job_id, attempt=1, now=later)
        started = await jobs_repo.transition(
            conn, job_id=job_id, attempt=1, sources={JobState.DISPATCHED}, target=JobState.RUNNING, now=NOW
        )
        pending = (await jobs_repo.get_job(conn, job_id) or {})["preempt_requested_at"]
        back = await jobs_repo.transition(
            conn, job_id=job_id, attempt=1, sources=ACTIVE_STATES, target=JobState.QUEUED, now=later
        )
        job = await jobs_repo.get_job(conn, job_id)
    assert (waiting, stale, not_preemptible, first, again, started, back) == (
        False,
        False,
        False,
        True,
        False,
        True,
        True,
    )
    assert pending == NOW, "still asked for while it runs"
    assert job is not None and job["preempt_requested_at"] is None, "it ends with the attempt"
    async with db.write() as conn:
        await jobs_repo.request_cancel(conn, job_id=job_id, now=later)
        await jobs_repo.dispatch(conn, job_id=job_id, node="n", gpu_indices=[0], gpu_uuids=["u"], now=later)
        cancelling = await jobs_repo.request_preemption(conn, job_id=job_id, attempt=2, now=later)
    assert cancelling is False, "a job being cancelled is not preempted too"


async def test_the_preemption_migration_goes_down_and_up_again(db: Database) -> None:
    from alembic import command
    from sqlalchemy import inspect
    from sqlalchemy.engine import Connection

    from gpuyard.adapters.db.migrate import alembic_config

    user_id = await add_user(db)
    job_id = await add_job(db, user_id, preemptible=True)

    def run(sync_conn: Connection, revision: str) -> list[str]:
        config = alembic_config()
        config.attributes["connection"] = sync_conn
        if revision == "0005":
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)
        return [c["name"] for c in inspect(sync_conn).get_columns("jobs")]

    async with db.engine.connect() as conn:
        down = await conn.run_sync(run, "0005")
        up = await conn.run_sync(run, "head")
        await conn.commit()
    new = {"preemptible", "preemptions", "preempt_requested_at"}
    assert not new & set(down) and new <= set(up)
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
    assert job is not None and (job["preemptible"], job["preemptions"]) == (False, 0), "defaults for old rows"


async def test_log_chunks_are_idempotent_and_read_in_order(db: Database) -> None:
    job_id = await add_job(db, await add_user(db))
    chunks = [(0, b"hello "), (6, b"world\n"), (12, b"more\n")]
    async with db.write() as conn:
        for offset, data in chunks + chunks[:2]:  # duplicates
            await repo.add_log_chunk(conn, job_id=job_id, attempt=1, offset=offset, data=data)
    async with db.read() as conn:
        assert await repo.read_log(conn, job_id=job_id, attempt=1, offset=0, limit_bytes=1 << 20) == (
            b"hello world\nmore\n",
            17,
        )
        assert await repo.read_log(conn, job_id=job_id, attempt=1, offset=8, limit_bytes=1 << 20) == (
            b"rld\nmore\n",
            17,
        )
        assert await repo.read_log(conn, job_id=job_id, attempt=1, offset=17, limit_bytes=1 << 20) == (
            b"",
            17,
        )
        assert await repo.read_log(conn, job_id=job_id, attempt=2, offset=0, limit_bytes=1 << 20) == (b"", 0)


async def test_log_read_stops_at_a_gap(db: Database) -> None:
    job_id = await add_job(db, await add_user(db))
    async with db.write() as conn:
        await repo.add_log_chunk(conn, job_id=job_id, attempt=1, offset=0, data=b"abc")
        await repo.add_log_chunk(conn, job_id=job_id, attempt=1, offset=10, data=b"later")
    async with db.read() as conn:
        assert await repo.read_log(conn, job_id=job_id, attempt=1, offset=0, limit_bytes=100) == (b"abc", 3)


async def test_outbox_and_nodes(db: Database) -> None:
    async with db.write() as conn:
        first = await repo.add_outbox(conn, routing_key="node.a", body={"x": 1}, now=NOW)
        await repo.add_outbox(conn, routing_key="node.a", body={"x": 2}, now=NOW)
        await repo.mark_published(conn, [first], NOW)
        gpus = [{"index": 0, "uuid": "GPU-0", "outside": []}]
        row, changed = await repo.upsert_node(conn, name="a", backend="fake", gpus=gpus, now=NOW)
        assert changed is True and row["gpus"] == gpus
        later = NOW + timedelta(seconds=1)
        row, changed = await repo.upsert_node(conn, name="a", backend="fake", gpus=gpus, now=later)
        assert changed is False and row["last_seen_at"] == later and row["first_seen_at"] == NOW
    async with db.read() as conn:
        assert [r["body"] for r in await repo.unpublished_outbox(conn)] == [{"x": 2}]
        (node,) = await repo.list_nodes(conn)
        assert node["last_seen_at"] == NOW + timedelta(seconds=1)


async def test_concurrent_writers_do_not_lose_jobs(db: Database) -> None:
    user_id = await add_user(db)
    ids = await asyncio.gather(*(add_job(db, user_id) for _ in range(50)))
    assert len(set(ids)) == 50
    async with db.read() as conn:
        assert (await jobs_repo.count_by_state(conn))["queued"] == 50


async def test_queue_controls_are_conditional_on_a_waiting_job(db: Database) -> None:
    from gpuyard.domain.jobs import Priority

    user_id = await add_user(db)
    waiting, other = await add_job(db, user_id), await add_job(db, user_id)
    later = NOW + timedelta(seconds=5)
    async with db.write() as conn:
        assert await jobs_repo.hold(conn, job_id=waiting, now=later) is True
        assert await jobs_repo.hold(conn, job_id=waiting, now=later) is False, "already held"
        assert await jobs_repo.set_priority(conn, job_id=waiting, priority=Priority.HIGH, now=later) is True
        assert await jobs_repo.set_priority(conn, job_id=waiting, priority=Priority.HIGH, now=later) is False
        held = await jobs_repo.dispatch(
            conn, job_id=waiting, node="n", gpu_indices=[0], gpu_uuids=["u"], now=NOW
        )
        assert held is None, "a held job is never dispatched"
        assert await jobs_repo.count_waiting(conn, [user_id, 999]) == {user_id: 2}
    async with db.read() as conn:
        line = {r["id"]: r for r in await jobs_repo.pending_jobs(conn)}
        assert line[waiting]["held_at"] == later and line[other]["held_at"] is None
        job = await jobs_repo.get_job(conn, waiting)
        assert job is not None and (job["priority"], job["priority_rank"]) == ("high", Priority.HIGH.rank)
    async with db.write() as conn:
        assert await jobs_repo.release(conn, job_id=waiting, now=later) is True
        assert await jobs_repo.release(conn, job_id=waiting, now=later) is False, "not held any more"
        assert (
            await jobs_repo.dispatch(
                conn, job_id=waiting, node="n", gpu_indices=[0], gpu_uuids=["u"], now=NOW
            )
            is not None
        )
        # Dispatched: none of the controls applies any more.
        assert await jobs_repo.hold(conn, job_id=waiting, now=later) is False
        assert await jobs_repo.set_priority(conn, job_id=waiting, priority=Priority.LOW, now=later) is False
        assert await jobs_repo.count_waiting(conn, [user_id]) == {user_id: 1}


async def test_the_migrations_build_exactly_the_schema_the_tables_describe(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from gpuyard.adapters.db.tables import metadata

    def differences(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": False})  # type: ignore[arg-type]
        return [d for d in compare_metadata(context, metadata) if "alembic_version" not in str(d)]

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_gpu_usage_folds_into_series_stats_and_an_idle_flag(db: Database) -> None:
    from gpuyard.adapters.broker.messages import GpuSample, GpuUse, Heartbeat, JobUsage
    from gpuyard.adapters.db import usage_repo
    from gpuyard.services.usage import UsageConfig, UsageService

    user_id = await add_user(db)
    job_id = await add_job(db, user_id, gpus=2)
    async with db.write() as conn:
        await jobs_repo.dispatch(
            conn, job_id=job_id, node="n", gpu_indices=[0, 1], gpu_uuids=["a", "b"], now=NOW
        )
        await jobs_repo.transition(
            conn, job_id=job_id, attempt=1, sources={JobState.DISPATCHED}, target=JobState.RUNNING, now=NOW
        )
    flagged: list[tuple[int, datetime]] = []

    async def on_idle(_conn: object, idle_job: int, _attempt: int, since: datetime) -> None:
        flagged.append((idle_job, since))

    usage = UsageService(
        db,
        clock=lambda: NOW,
        config=UsageConfig(bucket_s=10, idle_after_s=25, idle_below_pct=5),
        on_idle=on_idle,
    )

    def beat(second: int, utils: tuple[int, int], *, running: bool = True) -> Heartbeat:
        gpus = [
            GpuSample(
                index=i, uuid=u, name="g", memory_total_mib=24576, memory_used_mib=4000, utilization_pct=p
            )
            for i, (u, p) in enumerate(zip("ab", utils, strict=True))
        ]
        uses = [GpuUse(index=i, utilization_pct=p, memory_used_mib=4000) for i, p in enumerate(utils)]
        jobs = [JobUsage(job_id=job_id, attempt=1, gpus=uses)] if running else []
        return Heartbeat(node="n", backend="fake", gpus=gpus, usage=jobs, at=NOW + timedelta(seconds=second))

    for second in range(0, 10, 2):  # busy: 90 % and 70 % -> 80 % mean
        await usage.record(beat(second, (90, 70)))
    for second in range(10, 40, 2):  # then idle for 30 s
        assert await usage.record(beat(second, (0, 0))) == (1 if second == 34 else 0)
    assert flagged == [(job_id, NOW + timedelta(seconds=8))]  # idle since the last busy sample
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
    assert job is not None and job["gpu_idle_since"] == NOW + timedelta(seconds=8)
    assert await usage.record(beat(40, (99, 99))) == 0  # busy again: the flag goes
    await usage.record(beat(42, (0, 0), running=False))  # the job ended: its open bucket is written
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
        points = await usage_repo.job_usage_points(conn, job_id=job_id, attempt=1)
        gpu_points = await usage_repo.gpu_usage_points(conn, since=NOW)
    assert job is not None and job["gpu_idle_since"] is None
    assert [(p["at"] - NOW).total_seconds() for p in points] == [0, 10, 20, 30, 40]
    assert [p["utilization_pct"] for p in points] == [80.0, 0.0, 0.0, 0.0, 99.0]
    assert job["usage_samples"] == 21 and job["gpu_util_peak"] == 99.0 and job["gpu_mem_peak_mib"] == 8000
    assert job["gpu_util_mean"] == pytest.approx((5 * 80 + 99) / 21)
    assert [p["utilization_pct"] for p in gpu_points[("n", 0)]] == [90.0, 0.0, 0.0, 0.0]


async def test_an_older_progress_report_never_overwrites_a_newer_one(db: Database) -> None:
    user_id = await add_user(db)
    job_id = await add_job(db, user_id)
    async with db.write() as conn:
        await jobs_repo.dispatch(conn, job_id=job_id, node="n", gpu_indices=[0], gpu_uuids=["a"], now=NOW)

    async def report(seq: int, step: float) -> bool:
        async with db.write() as conn:
            return await jobs_repo.set_progress(
                conn, job_id=job_id, attempt=1, step=step, total=10, metrics={"s": step}, now=NOW, seq=seq
            )

    assert await report(100, 5)
    assert not await report(40, 2)  # delivered late
    assert await report(100, 5)  # the same report again changes nothing
    async with db.read() as conn:
        job = await jobs_repo.get_job(conn, job_id)
    assert job is not None and (job["progress_step"], job["metrics"], job["progress_seq"]) == (
        5,
        {"s": 5},
        100,
    )
