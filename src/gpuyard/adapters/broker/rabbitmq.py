"""Everything RabbitMQ-specific: topology, confirmed publishing, manual-ack consuming, dead-lettering.

Topology of one installation (`instance`, <i> below):
  exchange gpuyard.<i>       direct, durable   node.<name> → queue gpuyard.<i>.node.<name>
                                               events      → queue gpuyard.<i>.events
  exchange gpuyard.<i>.dlx   fanout, durable   → queue gpuyard.<i>.dead (what could not be processed)
Messages are persistent and published with confirms and `mandatory`, so an unroutable one is an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from gpuyard.domain.errors import BrokerUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None]]


async def retry_while_unavailable(
    action: Callable[[], Awaitable[None]], *, what: str, first_delay_s: float = 0.5, max_delay_s: float = 10.0
) -> None:
    """Run `action` until it gets through, waiting longer after each BrokerUnavailable (up to a cap)."""
    delay_s = first_delay_s
    while True:
        try:
            await action()
            return
        except BrokerUnavailable as e:
            log.warning("%s: %s; retrying in %.1f s", what, e, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, max_delay_s)


class PoisonMessage(Exception):
    """A message that can never be processed: it goes to the dead-letter queue at once."""


class RabbitmqBroker:
    def __init__(self, url: str, *, instance: str, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.instance = instance
        self.prefix = f"gpuyard.{instance}"
        self._timeout_s = connect_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._consume_channels: list[AbstractChannel] = []
        self.publish_failures = 0  # counted for /metrics
        self.reconnects = 0

    @property
    def events_queue(self) -> str:
        return f"{self.prefix}.events"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    def node_queue(self, node: str) -> str:
        return f"{self.prefix}.node.{node}"

    @staticmethod
    def node_key(node: str) -> str:
        return f"node.{node}"

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(self.url, timeout=self._timeout_s)
            self._connection.reconnect_callbacks.add(self._count_reconnect)
            self._publish_channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._declare(self._publish_channel)
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as e:
            await self.close()
            raise BrokerUnavailable(
                f"Cannot reach RabbitMQ at {_safe(self.url)}: {e!r}. Start it (`rabbitmq-server -detached`) "
                "or point GPUYARD_AMQP_URL at a running broker."
            ) from e

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(self.prefix, aio_pika.ExchangeType.DIRECT, durable=True)
        dlx = await channel.declare_exchange(f"{self.prefix}.dlx", aio_pika.ExchangeType.FANOUT, durable=True)
        dead = await channel.declare_queue(self.dead_queue, durable=True)
        await dead.bind(dlx)
        events = await self._declare_queue(channel, self.events_queue)
        await events.bind(exchange, routing_key="events")
        return exchange

    async def _declare_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        return await channel.declare_queue(
            name, durable=True, arguments={"x-dead-letter-exchange": f"{self.prefix}.dlx"}
        )

    async def declare_node_queue(self, node: str) -> None:
        channel = self._require_channel()
        queue = await self._declare_queue(channel, self.node_queue(node))
        await queue.bind(self._require_exchange(), routing_key=self.node_key(node))

    async def publish(self, routing_key: str, body: dict[str, Any]) -> None:
        """Publish a persistent message and wait for the broker's confirm."""
        message = aio_pika.Message(
            json.dumps(body, default=str).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._require_exchange().publish(
                message, routing_key=routing_key, mandatory=True, timeout=10
            )
        except aio_pika.exceptions.PublishError as e:
            self.publish_failures += 1
            raise BrokerUnavailable(f"RabbitMQ could not route a message to {routing_key!r}: {e!r}") from e
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError, BrokerUnavailable) as e:
            self.publish_failures += 1
            raise BrokerUnavailable(f"Publishing to {routing_key!r} failed: {e!r}") from e

    def _count_reconnect(self, _connection: Any) -> None:
        self.reconnects += 1

    async def dead_letter_count(self) -> int:
        """Messages waiting in this instance's dead-letter queue."""
        if self._connection is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        try:  # a channel of its own: a failed passive declare closes the channel it ran on
            async with self._connection.channel() as channel:
                queue = await channel.declare_queue(self.dead_queue, passive=True)
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError) as e:
            raise BrokerUnavailable(f"Cannot count dead letters: {e!r}") from e
        return int(queue.declaration_result.message_count or 0)

    async def consume(
        self, queue_name: str, handler: Handler, *, prefetch: int = 64, serial: bool = False
    ) -> None:
        """Consume with manual acks: ack after `handler` returns; dead-letter poison; requeue once else.

        `serial` handles one message at a time, in delivery order.
        """
        if self._connection is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        self._consume_channels.append(channel)
        queue = await channel.get_queue(queue_name, ensure=True)

        lock = asyncio.Lock() if serial else None

        async def on_message(message: AbstractIncomingMessage) -> None:
            if lock is None:
                await handle(message)
                return
            async with lock:
                await handle(message)

        async def handle(message: AbstractIncomingMessage) -> None:
            try:
                body = json.loads(message.body)
                if not isinstance(body, dict):
                    raise PoisonMessage("message body is not a JSON object")
                await handler(body)
            except (PoisonMessage, ValueError) as e:
                log.error("dead-lettering a message from %s: %s", queue_name, e)
                await message.reject(requeue=False)
            except Exception:
                log.exception("failed to process a message from %s", queue_name)
                await message.nack(requeue=not message.redelivered)
            else:
                await message.ack()

        await queue.consume(on_message)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        self._connection = None
        self._publish_channel = None
        self._exchange = None
        self._consume_channels.clear()

    def _require_channel(self) -> AbstractChannel:
        if self._publish_channel is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        return self._publish_channel

    def _require_exchange(self) -> AbstractExchange:
        if self._exchange is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        return self._exchange


def _safe(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 5672}{parts.path}"
