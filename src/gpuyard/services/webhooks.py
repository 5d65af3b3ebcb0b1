"""Webhooks: per user (their own jobs) and global (every job, set by admins). A job event writes one
delivery row per matching webhook in the same transaction as the state change it reports, so nothing is
lost to a restart; a delivery loop POSTs them, signed, and retries failures with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gpuyard.adapters.db.engine import Database
from gpuyard.adapters.db.tables import users, webhook_deliveries, webhooks
from gpuyard.domain import webhooks as wh
from gpuyard.domain.errors import PermissionDenied, WebhookNotFound
from gpuyard.services.auth import User
from gpuyard.services.ports import Clock, Telemetry, WebhookSender

log = logging.getLogger(__name__)

Row = dict[str, Any]
_BATCH = 100
_JOB_FIELDS = (
    "id",
    "user",
    "name",
    "state",
    "gpus",
    "priority",
    "attempt",
    "node",
    "gpu_indices",
    "submitted_at",
    "started_at",
    "finished_at",
    "exit_code",
    "failure_class",
    "error",
    "gpu_idle_since",
)


@dataclass(frozen=True)
class WebhookConfig:
    retry_base_s: float = 10.0
    max_attempts: int = 8
    api_url: str | None = None  # for links to jobs in the payloads


class WebhookService:
    def __init__(
        self,
        db: Database,
        sender: WebhookSender,
        *,
        clock: Clock,
        config: WebhookConfig,
        telemetry: Telemetry,
    ) -> None:
        self._db = db
        self._sender = sender
        self._clock = clock
        self.config = config
        self._telemetry = telemetry
        self._wake = asyncio.Event()

    # management

    async def add(
        self, user: User, *, url: str, events: list[str] | None, fmt: str, everyone: bool, secret: str | None
    ) -> Row:
        chosen = wh.check_webhook(url, events, fmt)
        if everyone and not user.is_admin:
            raise PermissionDenied("Only admins can add a webhook for every job: add one for your own jobs.")
        values = {
            "user_id": None if everyone else user.id,
            "url": url,
            "secret": secret or secrets.token_hex(32),
            "events": chosen,
            "format": fmt,
            "created_at": self._clock(),
        }
        async with self._db.write() as conn:
            hook_id = (
                await conn.execute(insert(webhooks).values(**values).returning(webhooks.c.id))
            ).scalar_one()
        return {**values, "id": int(hook_id), "user": None if everyone else user.name}

    async def list_hooks(self, user: User) -> list[Row]:
        """Admins see every webhook, users their own and the global ones."""
        query = select(webhooks, users.c.name.label("user")).outerjoin(
            users, users.c.id == webhooks.c.user_id
        )
        if not user.is_admin:
            query = query.where(or_(webhooks.c.user_id == user.id, webhooks.c.user_id.is_(None)))
        async with self._db.read() as conn:
            return [dict(r) for r in (await conn.execute(query.order_by(webhooks.c.id))).mappings()]

    async def remove(self, user: User, hook_id: int) -> None:
        async with self._db.write() as conn:
            self._check_owner(user, await _get(conn, hook_id))
            await conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.webhook_id == hook_id))
            await conn.execute(delete(webhooks).where(webhooks.c.id == hook_id))

    async def deliveries(self, user: User, hook_id: int, *, limit: int) -> list[Row]:
        """The latest deliveries of a webhook, newest first."""
        async with self._db.read() as conn:
            self._check_owner(user, await _get(conn, hook_id), read=True)
            query = (
                select(webhook_deliveries)
                .where(webhook_deliveries.c.webhook_id == hook_id)
                .order_by(webhook_deliveries.c.id.desc())
                .limit(limit)
            )
            return [dict(r) for r in (await conn.execute(query)).mappings()]

    @staticmethod
    def _check_owner(user: User, hook: Row, *, read: bool = False) -> None:
        if user.is_admin or hook["user_id"] == user.id or (read and hook["user_id"] is None):
            return
        raise PermissionDenied(
            f"Webhook {hook['id']} is not yours: only its owner or an admin can change it."
        )

    # events

    async def enqueue(self, conn: AsyncConnection, event: str, job: Row) -> int:
        """Deliveries of `event` about `job` for every webhook that wants it, in the caller's transaction.
        Call `kick()` once that transaction committed."""
        query = select(webhooks).where(
            or_(webhooks.c.user_id == job["user_id"], webhooks.c.user_id.is_(None))
        )
        hooks = [dict(r) for r in (await conn.execute(query)).mappings() if event in r["events"]]
        if not hooks:
            return 0
        now = self._clock()
        brief = {k: _plain(job.get(k)) for k in _JOB_FIELDS}
        url = f"{self.config.api_url}/api/v1/jobs/{job['id']}" if self.config.api_url else None
        rows = [
            {
                "webhook_id": hook["id"],
                "event": event,
                "job_id": job["id"],
                "body": wh.payload(event, brief, fmt=hook["format"], at=now.isoformat(), job_url=url),
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
            for hook in hooks
        ]
        await conn.execute(insert(webhook_deliveries), rows)
        return len(rows)

    def kick(self) -> None:
        self._wake.set()

    # delivery

    async def run(self) -> None:
        """Deliver what is due, then sleep until kicked or the next retry is due."""
        while True:
            try:
                pause_s = await self.deliver_due()
            except Exception:
                log.exception("webhook delivery round failed")
                pause_s = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=pause_s)
            self._wake.clear()

    async def deliver_due(self) -> float:
        """One round; returns how long until the next delivery is due (at most a minute)."""
        now = self._clock()
        query = (
            select(webhook_deliveries, webhooks.c.url, webhooks.c.secret)
            .join(webhooks, webhooks.c.id == webhook_deliveries.c.webhook_id)
            .where(webhook_deliveries.c.state == "pending", webhook_deliveries.c.next_attempt_at <= now)
            .order_by(webhook_deliveries.c.id)
            .limit(_BATCH)
        )
        async with self._db.read() as conn:
            due = [dict(r) for r in (await conn.execute(query)).mappings()]
        by_hook: dict[int, list[Row]] = {}
        for row in due:
            by_hook.setdefault(row["webhook_id"], []).append(row)
        await asyncio.gather(*(self._deliver_in_order(rows) for rows in by_hook.values()))
        if len(due) == _BATCH:
            return 0.0
        async with self._db.read() as conn:
            next_at = (
                await conn.execute(
                    select(webhook_deliveries.c.next_attempt_at)
                    .where(webhook_deliveries.c.state == "pending")
                    .order_by(webhook_deliveries.c.next_attempt_at)
                    .limit(1)
                )
            ).scalar()
        if next_at is None:
            return 60.0
        due_in_s: float = (next_at - self._clock()).total_seconds()
        return min(60.0, max(0.05, due_in_s))

    async def _deliver_in_order(self, rows: list[Row]) -> None:
        for row in rows:  # one webhook's events go out in the order they happened
            await self._deliver(row)

    async def _deliver(self, row: Row) -> None:
        body = wh.encode(row["body"])
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "gpuyard-webhook",
            "X-Gpuyard-Event": row["event"],
            "X-Gpuyard-Delivery": str(row["id"]),
            wh.SIGNATURE_HEADER: wh.sign(row["secret"], body),
        }
        status: int | None = None
        error: str | None = None
        try:
            status = await self._sender.post(row["url"], body, headers)
        except OSError as e:
            error = str(e) or type(e).__name__
        now = self._clock()
        attempts = row["attempts"] + 1
        values: Row = {
            "attempts": attempts,
            "last_attempt_at": now,
            "last_status": status,
            "last_error": error,
        }
        if status is not None and 200 <= status < 300:
            values.update(state="delivered", delivered_at=now, next_attempt_at=None)
            outcome = "delivered"
        elif attempts >= self.config.max_attempts or not wh.retryable(status):
            values.update(state="failed", next_attempt_at=None)
            outcome = "failed"
            log.warning(
                "webhook delivery %s to %s gave up after %s attempts (%s)",
                row["id"],
                row["url"],
                attempts,
                error or f"HTTP {status}",
            )
        else:
            delay_s = wh.retry_delay_s(attempts, base_s=self.config.retry_base_s)
            values["next_attempt_at"] = now + timedelta(seconds=delay_s)
            outcome = "retry"
        self._telemetry.webhook_delivery(outcome=outcome)
        async with self._db.write() as conn:
            await conn.execute(
                update(webhook_deliveries).where(webhook_deliveries.c.id == row["id"]).values(**values)
            )


def _plain(value: Any) -> Any:
    """JSON-ready: datetimes as ISO 8601."""
    return value.isoformat() if isinstance(value, datetime) else value


async def _get(conn: AsyncConnection, hook_id: int) -> Row:
    row = (await conn.execute(select(webhooks).where(webhooks.c.id == hook_id))).mappings().first()
    if row is None:
        raise WebhookNotFound(f"No webhook {hook_id} exists. List them with `gpuyard webhook list`.")
    return dict(row)
