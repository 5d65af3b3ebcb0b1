"""The RabbitMQ adapter against a real broker: topology, confirmed publishing, manual acks, dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from gpuyard.adapters.broker.rabbitmq import PoisonMessage, RabbitmqBroker
from gpuyard.domain.errors import BrokerUnavailable
from tests.support.stack import delete_broker_objects

pytestmark = pytest.mark.integration


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[RabbitmqBroker]:
    b = RabbitmqBroker(amqp_url, instance="t" + uuid.uuid4().hex[:10])
    await b.connect()
    await b.declare_node_queue("n1")
    try:
        yield b
    finally:
        await b.close()
        await delete_broker_objects(amqp_url, b.instance, ["n1"])


async def test_topology_is_durable_with_dead_lettering(broker: RabbitmqBroker, amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for name in (broker.events_queue, broker.dead_queue, broker.node_queue("n1")):
            await channel.declare_queue(name, passive=True)  # raises if missing


async def test_published_messages_are_consumed_and_acked(broker: RabbitmqBroker) -> None:
    got: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def handler(body: dict[str, Any]) -> None:
        got.append(body)
        if len(got) == 20:
            done.set()

    await broker.consume(broker.node_queue("n1"), handler, serial=True)
    for i in range(20):
        await broker.publish(broker.node_key("n1"), {"type": "x", "i": i})
    await asyncio.wait_for(done.wait(), 10)
    assert [b["i"] for b in got] == list(range(20)), "serial consumption keeps the order"


async def test_unroutable_publish_is_an_error(broker: RabbitmqBroker) -> None:
    with pytest.raises(BrokerUnavailable, match="could not route"):
        await broker.publish(broker.node_key("nobody-listens"), {"type": "dispatch"})


async def test_poison_messages_go_to_the_dead_letter_queue(broker: RabbitmqBroker, amqp_url: str) -> None:
    async def handler(body: dict[str, Any]) -> None:
        if body.get("poison"):
            raise PoisonMessage("bad body")

    await broker.consume(broker.node_queue("n1"), handler)
    await broker.publish(broker.node_key("n1"), {"poison": True})
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await channel.declare_queue(broker.dead_queue, passive=True)
        message = None
        for _ in range(200):
            message = await dead.get(fail=False)
            if message is not None:
                break
            await asyncio.sleep(0.05)
        assert message is not None, "the poison message reached the dead-letter queue"
        assert json.loads(message.body) == {"poison": True}
        await message.ack()


async def test_unreachable_broker_is_a_clear_error() -> None:
    b = RabbitmqBroker("amqp://guest:guest@127.0.0.1:1/", instance="x", connect_timeout_s=2)
    with pytest.raises(BrokerUnavailable, match="Cannot reach RabbitMQ"):
        await b.connect()


async def test_a_lost_connection_is_not_connected_until_it_is_back(amqp_url: str) -> None:
    """What /readyz reports: a connection that is reconnecting is not connected (it used to say it was)."""
    from urllib.parse import urlsplit

    from tests.support.tcp_proxy import TcpProxy

    with TcpProxy(upstream_port=urlsplit(amqp_url).port or 5672) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?reconnect_interval=0.5"
        b = RabbitmqBroker(url, instance="t" + uuid.uuid4().hex[:10])
        states: list[bool] = []
        b.on_connection(states.append)
        await b.connect()
        try:
            assert b.is_connected
            assert proxy.drop_all() == 1
            await wait_until(lambda: not b.is_connected)
            # the listeners hear of it once the connection is up again (just after it reports connected)
            await wait_until(lambda: b.is_connected and states[-1:] == [True])
            assert states[:1] == [False]
        finally:
            await b.close()
            await delete_broker_objects(amqp_url, b.instance, [])


async def wait_until(predicate: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if predicate():
            return
        assert loop.time() < deadline, f"timed out after {timeout_s} s"
        await asyncio.sleep(0.01)
