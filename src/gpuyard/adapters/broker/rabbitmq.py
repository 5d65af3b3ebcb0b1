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
# (body, why it died, the queue it died in, its routing key)
DeadHandler = Callable[[bytes, str, str, str], Awaitable[None]]
ERROR_HEADER = "x-gpuyard-error"
QUEUE_HEADER = "x-gpuyard-queue"
ROUTING_KEY_HEADER = "x-gpuyard-routing-key"


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
        self._dlx: AbstractExchange | None = None
        self._listeners: list[Callable[[bool], None]] = []
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
        """Connected now: a connection that lost its broker and is reconnecting is not."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def connect(self) -> None:
        try:
            self._connection = await aio_pika.connect_robust(self.url, timeout=self._timeout_s)
            self._connection.reconnect_callbacks.add(self._count_reconnect)
            self._connection.close_callbacks.add(self._lost)
            self._publish_channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._declare(self._publish_channel)
            self._dlx = await self._publish_channel.get_exchange(f"{self.prefix}.dlx", ensure=False)
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
        for listener in self._listeners:
            listener(True)

    def _lost(self, *_args: Any) -> None:
        for listener in self._listeners:
            listener(False)

    def on_connection(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(False)` when the connection drops and `listener(True)` once it is back."""
        if listener not in self._listeners:
            self._listeners.append(listener)

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
                await self._dead_letter(message, queue_name, str(e))
            except Exception as e:
                if message.redelivered:
                    log.exception("failed twice to process a message from %s: dead-lettering it", queue_name)
                    await self._dead_letter(message, queue_name, f"failed twice: {e!r}")
                else:
                    log.exception("failed to process a message from %s: it will be redelivered", queue_name)
                    await message.nack(requeue=True)
            else:
                await message.ack()

        await queue.consume(on_message)

    async def _dead_letter(self, message: AbstractIncomingMessage, queue_name: str, why: str) -> None:
        """A copy to the dead-letter exchange that says why, then ack; if that fails, a plain reject (which
        RabbitMQ dead-letters too, without the reason)."""
        copy = aio_pika.Message(
            message.body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={
                ERROR_HEADER: why[:2000],
                QUEUE_HEADER: queue_name,
                ROUTING_KEY_HEADER: message.routing_key or "",
            },
        )
        try:
            if self._dlx is None:
                raise BrokerUnavailable("Not connected to RabbitMQ.")
            await self._dlx.publish(copy, routing_key="", timeout=10)
        except Exception:  # noqa: BLE001 - the reject below still dead-letters it
            await message.reject(requeue=False)
        else:
            await message.ack()

    async def consume_dead(self, handler: DeadHandler) -> None:
        """Hand every dead-lettered message to `handler(body, why, queue, routing_key)`, then ack it."""
        if self._connection is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=16)
        self._consume_channels.append(channel)
        queue = await channel.get_queue(self.dead_queue, ensure=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            headers = message.headers or {}
            why, source, key = _death(headers)
            try:
                await handler(message.body, why, source, key)
            except Exception:
                log.exception("could not record a dead letter: it stays in %s", self.dead_queue)
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
        self._dlx = None
        self._consume_channels.clear()

    def _require_channel(self) -> AbstractChannel:
        if self._publish_channel is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        return self._publish_channel

    def _require_exchange(self) -> AbstractExchange:
        if self._exchange is None:
            raise BrokerUnavailable("Not connected to RabbitMQ.")
        return self._exchange


def _death(headers: dict[str, Any]) -> tuple[str, str, str]:
    """(why, source queue, routing key) of a dead-lettered message, from gpuyard's headers or RabbitMQ's."""
    if ERROR_HEADER in headers:
        return (
            str(headers[ERROR_HEADER]),
            str(headers.get(QUEUE_HEADER, "")),
            str(headers.get(ROUTING_KEY_HEADER, "")),
        )
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths, list) and isinstance(deaths[0], dict):
        death = deaths[0]
        keys = death.get("routing-keys") or [""]
        why = {
            "rejected": "rejected",
            "expired": "expired (its time to live ran out)",
            "maxlen": "the queue was full",
            "delivery_limit": "redelivered too many times",
        }.get(str(death.get("reason")), str(death.get("reason")))
        return why, str(death.get("queue", "")), str(keys[0])
    return "dead-lettered (no reason given)", "", ""


def _safe(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 5672}{parts.path}"
