"""The controller's composition root: database, broker, scheduler and services, and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import getpass
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.broker.rabbitmq import RabbitmqBroker, retry_while_unavailable
from gpuyard.adapters.db import dead_repo, jobs_repo
from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.migrate import migrate
from gpuyard.adapters.http.webhooks import HttpxWebhookSender
from gpuyard.adapters.metrics.prometheus import PrometheusMetrics
from gpuyard.domain.errors import ConfigurationError
from gpuyard.domain.jobs import Priority
from gpuyard.scheduling.history import parse_links
from gpuyard.services.auth import AuthService, check_user_name
from gpuyard.services.dead import DeadLetterService, message_body
from gpuyard.services.events import EventService
from gpuyard.services.jobs import JobService
from gpuyard.services.leases import LeaseService
from gpuyard.services.ports import Clock, utc_now
from gpuyard.services.retries import RetryService
from gpuyard.services.scheduler import SchedulerService, SchedulingConfig
from gpuyard.services.usage import UsageConfig, UsageService
from gpuyard.services.webhooks import WebhookConfig, WebhookService
from gpuyard.settings import Settings

log = logging.getLogger(__name__)


def default_admin_name() -> str:
    try:
        name = getpass.getuser().lower()
        return check_user_name(name)
    except Exception:
        return "admin"


def scheduling_config(settings: Settings) -> SchedulingConfig:
    try:
        links = parse_links(settings.gpu_links)
    except ValueError as e:
        raise ConfigurationError(str(e)) from e
    return SchedulingConfig(
        default_runtime_s=settings.default_runtime_s,
        node_lease_s=settings.node_lease_s,
        backfill=settings.backfill,
        aging_s=settings.aging_s,
        aging_max_rank=Priority(settings.aging_max_priority).rank,
        max_gpus_per_user=settings.max_gpus_per_user,
        fair_share=settings.fair_share,
        fair_share_window_s=settings.fair_share_window_s,
        links=links,
        preempt_grace_s=settings.preempt_grace_s,
        preempt_min_run_s=settings.preempt_min_run_s,
    )


def hold_data_dir(data_dir: Path) -> TextIO:
    """One controller per data directory: a second one would share its database and its queues."""
    lock = open(data_dir / "controller.lock", "a+")  # noqa: SIM115 - held open while the controller runs
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        lock.close()
        raise ConfigurationError(
            f"Another gpuyard controller (pid {owner}) already uses {data_dir}: stop it, or give this one "
            "its own data directory with --data-dir (and another --port)."
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


class Controller:
    def __init__(self, settings: Settings, *, clock: Clock = utc_now) -> None:
        self.settings = settings
        self.clock = clock
        self.db = Database(settings.db_url)
        self.broker = RabbitmqBroker(settings.amqp_url, instance=settings.instance_name())
        self.metrics = PrometheusMetrics(self.broker)
        self.scheduler = SchedulerService(
            self.db, self.broker, clock=clock, config=scheduling_config(settings), telemetry=self.metrics
        )
        self._sender = HttpxWebhookSender(timeout_s=settings.webhook_timeout_s)
        self.webhooks = WebhookService(
            self.db,
            self._sender,
            clock=clock,
            config=WebhookConfig(
                retry_base_s=settings.webhook_retry_s,
                max_attempts=settings.webhook_max_attempts,
                api_url=settings.api_url,
            ),
            telemetry=self.metrics,
        )
        self.usage = UsageService(
            self.db,
            clock=clock,
            config=UsageConfig(
                bucket_s=settings.usage_bucket_s,
                retention_s=settings.usage_retention_s,
                idle_after_s=settings.idle_gpu_after_s,
                idle_below_pct=settings.idle_gpu_below_pct,
            ),
            on_idle=self._notify_idle,
        )
        self.retries = RetryService(
            webhooks=self.webhooks, telemetry=self.metrics, backoff_base_s=settings.retry_backoff_s
        )
        self.leases = LeaseService(
            self.db, self.scheduler, self.retries, self.broker, clock=clock, lease_s=settings.node_lease_s
        )
        self.events = EventService(
            self.db,
            self.scheduler,
            clock=clock,
            usage=self.usage,
            webhooks=self.webhooks,
            retries=self.retries,
            leases=self.leases,
            telemetry=self.metrics,
            progress_point_s=settings.progress_point_s,
        )
        self.dead = DeadLetterService(
            self.db, self.scheduler, self.broker, clock=clock, max_attempts_cap=settings.max_attempts_cap
        )
        self.jobs = JobService(
            self.db,
            self.scheduler,
            self.broker,
            clock=clock,
            urgent_admins_only=settings.urgent_admins_only,
            max_waiting_jobs_per_user=settings.max_waiting_jobs_per_user,
            webhooks=self.webhooks,
            telemetry=self.metrics,
            max_attempts=settings.max_attempts,
            max_attempts_cap=settings.max_attempts_cap,
        )
        self.auth = AuthService(self.db, clock=clock)
        self.broker_ready = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        await migrate(self.db)
        if await self.auth.ensure_admin(default_admin_name(), self.settings.admin_token_file):
            log.info("admin token written to %s", self.settings.admin_token_file)
        self._tasks.append(asyncio.create_task(self._connect_broker(), name="broker-connect"))
        self._tasks.append(asyncio.create_task(self._tick(), name="scheduler-tick"))
        self._tasks.append(asyncio.create_task(self.webhooks.run(), name="webhook-delivery"))

    def _broker_connection(self, up: bool) -> None:
        """Leases count only while the controller hears RabbitMQ: its own outage condemns no node."""
        if up:
            self.leases.hearing()
        else:
            self.leases.deaf()

    async def _record_dead(self, raw: bytes, why: str, queue: str, routing_key: str) -> None:
        body, text = message_body(raw)
        job_id = body.get("job_id") if body is not None else None
        async with self.db.write() as conn:
            await dead_repo.add(
                conn,
                now=self.clock(),
                kind="message",
                job_id=job_id if isinstance(job_id, int) else None,
                reason=f"{why} (in {queue or 'an unknown queue'})",
                routing_key=routing_key or None,
                body=body if body is not None else {"text": text},
            )
        log.warning("dead letter recorded from %s: %s", queue, why)

    async def _notify_idle(self, conn: AsyncConnection, job_id: int, _attempt: int, _since: datetime) -> None:
        job = await jobs_repo.get_job(conn, job_id)
        if job is not None:
            await self.webhooks.enqueue(conn, "job.idle_gpu", job)

    async def _connect_broker(self) -> None:
        async def connect() -> None:
            await self.broker.connect()
            await self.broker.consume(self.broker.events_queue, self.events.handle, prefetch=256, serial=True)
            await self.broker.consume_dead(self._record_dead)
            self.broker.on_connection(self._broker_connection)

        await retry_while_unavailable(connect, what="connecting to RabbitMQ")
        log.info("connected to RabbitMQ, instance %s", self.broker.instance)
        self.leases.hearing()
        self.broker_ready.set()
        await self.scheduler.flush_outbox()

    async def _tick(self) -> None:
        """The periodic wake-up: a scheduling pass (placements only: estimates are computed when someone
        asks for them) and a retry of unpublished dispatches."""
        while True:
            await asyncio.sleep(self.settings.scheduler_tick_s)
            try:
                await self.leases.check()
                await self.scheduler.run_pass(estimates=False)
                if self.broker_ready.is_set():
                    await self.scheduler.flush_outbox()
            except Exception:
                log.exception("periodic scheduling pass failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.broker.close()
        await self._sender.close()
        await self.db.dispose()
