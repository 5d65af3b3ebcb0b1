"""Shared fixtures: a real RabbitMQ and a real PostgreSQL for the integration tests.

Each uses, in order: the URL in an environment variable, the service running on its standard local port,
or a private instance started for this test session on a free port (and stopped at its end).

    GPUYARD_TEST_AMQP_URL   e.g. amqp://guest:guest@127.0.0.1:5672/
    GPUYARD_TEST_PG_URL     e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/postgres (a superuser)

The fixtures are sync (asyncpg work runs on its own thread) so they work with any event loop scope.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from gpuyard.adapters.broker.local import LocalRabbitmq, amqp_reachable, free_port
from tests.support.postgres import (
    LocalPostgres,
    asyncpg_dsn,
    postgres_accepts,
    run_async,
    sqlalchemy_url,
    with_database,
)

# CI explores the same examples on every run, so a run is reproducible and says the same of one commit;
# locally, property tests keep exploring new examples (and keep those that failed in .hypothesis/).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SYSTEM_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SYSTEM_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An AMQP URL of a RabbitMQ the tests may use (declare their own uniquely named queues on it)."""
    configured = os.environ.get("GPUYARD_TEST_AMQP_URL")
    if configured:
        yield configured
    elif amqp_reachable(SYSTEM_AMQP_URL):
        yield SYSTEM_AMQP_URL
    else:
        with LocalRabbitmq(tmp_path_factory.mktemp("rabbitmq"), port=free_port()) as rabbit:
            yield rabbit.url


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """A SQLAlchemy URL (`postgresql+asyncpg://`) of a PostgreSQL superuser connection."""
    configured = os.environ.get("GPUYARD_TEST_PG_URL")
    if configured:
        yield sqlalchemy_url(configured)
    elif postgres_accepts(SYSTEM_PG_URL):
        yield SYSTEM_PG_URL
    else:
        # Under /tmp, not pytest's tmp dir: as root the server runs as `postgres`, which must reach it.
        base_dir = Path(tempfile.mkdtemp(prefix="gpuyard-pg-"))
        try:
            with LocalPostgres(base_dir, port=free_port()) as server:
                yield server.url
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test (dropped afterwards), as a `postgresql+asyncpg://` URL."""
    import asyncpg  # type: ignore[import-untyped]

    name = f"gpuyard_t_{uuid.uuid4().hex[:16]}"
    admin_dsn = asyncpg_dsn(postgres_admin_url)

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    run_async(lambda: execute(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(postgres_admin_url, name)
    finally:
        run_async(lambda: execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
