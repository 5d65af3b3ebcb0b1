"""The private RabbitMQ / PostgreSQL helpers work for real: start, serve, stop."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import aio_pika
import asyncpg  # type: ignore[import-untyped]
import pytest

from gpuyard.adapters.broker.local import LocalRabbitmq, amqp_reachable, free_port
from gpuyard.domain.errors import BrokerUnavailable
from tests.support.postgres import LocalPostgres, postgres_accepts

pytestmark = pytest.mark.integration


async def test_local_rabbitmq_serves_amqp_and_stops(tmp_path: Path) -> None:
    rabbit = LocalRabbitmq(tmp_path / "rabbitmq", port=free_port())
    try:
        url = rabbit.start()
        assert url == f"amqp://guest:guest@127.0.0.1:{rabbit.port}/"
        assert amqp_reachable(url)

        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("gpuyard-local-check", durable=True)
            await channel.default_exchange.publish(aio_pika.Message(body=b"hello"), routing_key=queue.name)
            message = await queue.get(timeout=5, fail=True)
            assert message is not None
            assert message.body == b"hello"
            await message.ack()
    finally:
        rabbit.stop()

    assert not rabbit.running
    assert not amqp_reachable(url, timeout_s=1.0)


def test_amqp_reachable_is_false_for_a_closed_port_and_a_server_that_is_not_amqp() -> None:
    assert not amqp_reachable(f"amqp://guest:guest@127.0.0.1:{free_port()}/", timeout_s=1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        assert not amqp_reachable(f"amqp://127.0.0.1:{silent.getsockname()[1]}/", timeout_s=0.5)


def test_local_rabbitmq_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerUnavailable, match=f"Port {port} .* already in use"):
            LocalRabbitmq(tmp_path, port=port).start()


def test_amqp_url_fixture_answers_amqp(amqp_url: str) -> None:
    assert amqp_reachable(amqp_url)


def test_local_postgres_starts_serves_and_stops() -> None:
    base_dir = Path(tempfile.mkdtemp(prefix="gpuyard-pg-"))  # under /tmp: as root, `postgres` must reach it
    try:
        server = LocalPostgres(base_dir, port=free_port())
        try:
            url = server.start()
            assert url == f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/postgres"
            assert postgres_accepts(url)
        finally:
            server.stop()
        assert not postgres_accepts(url, timeout_s=1.0)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


async def test_pg_url_is_a_fresh_database_we_can_create_tables_in(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://")
    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        await conn.execute("CREATE TABLE probe (id serial PRIMARY KEY, note text NOT NULL)")
        await conn.execute("INSERT INTO probe (note) VALUES ($1)", "ok")
        assert await conn.fetchval("SELECT note FROM probe") == "ok"
    finally:
        await conn.close()
