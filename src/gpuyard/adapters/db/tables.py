"""The database schema (SQLAlchemy Core). Alembic migrations under migrations/ create it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone and hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database: use an aware UTC datetime")
        return (
            value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)
        )

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("argv", JSON, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("priority", String(16), nullable=False),
    Column("priority_rank", Integer, nullable=False),
    Column("workdir", Text, nullable=True),
    Column("env", JSON, nullable=False),
    Column("time_limit_s", Integer, nullable=True),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("submitted_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("finished_at", UtcDateTime(), nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("failure_class", String(32), nullable=True),
    Column("error", Text, nullable=True),
    Column("cancel_requested_at", UtcDateTime(), nullable=True),
    Column("progress_step", Float, nullable=True),
    Column("progress_total", Float, nullable=True),
    Column("metrics", JSON, nullable=True),
    Column("progress_seq", BigInteger, nullable=False, default=0),  # of the report shown (see set_progress)
    Column("updated_at", UtcDateTime(), nullable=False),
    # Set while its owner or an admin holds the job: it keeps its place in line but does not start.
    Column("held_at", UtcDateTime(), nullable=True),
    # GPU usage of the current attempt, from the worker's samples (utilization in %, memory in MiB)
    Column("usage_samples", Integer, nullable=False, default=0),
    Column("gpu_util_mean", Float, nullable=True),
    Column("gpu_util_peak", Float, nullable=True),
    Column("gpu_mem_mean_mib", Float, nullable=True),
    Column("gpu_mem_peak_mib", Integer, nullable=True),
    Column("gpu_idle_since", UtcDateTime(), nullable=True),  # set while flagged as sitting idle on its GPUs
    # retries (domain/retry.py): the job's budget, the failures of its own it wants retried, and the
    # earliest start of its next attempt while it waits after a failure
    Column("max_attempts", Integer, nullable=False, default=3),
    Column("retry_on", JSON, nullable=False, default=list),
    Column("retry_at", UtcDateTime(), nullable=True),
    # preemption (docs/job-environment.md): the job may be stopped and put back in its place for a job ahead
    # of it; how often that happened; set while a stop for it is asked and its attempt has not ended
    Column("preemptible", Boolean, nullable=False, default=False),
    Column("preemptions", Integer, nullable=False, default=0),
    Column("preempt_requested_at", UtcDateTime(), nullable=True),
)
Index("ix_jobs_state_order", jobs.c.state, jobs.c.priority_rank, jobs.c.id)
Index("ix_jobs_user_state", jobs.c.user_id, jobs.c.state)

attempts = Table(
    "attempts",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("node", String(255), nullable=False),
    Column("gpu_indices", JSON, nullable=False),
    Column("gpu_uuids", JSON, nullable=False),
    Column("dispatched_at", UtcDateTime(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=True),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("pid", Integer, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("signal", Integer, nullable=True),
    Column("failure_class", String(32), nullable=True),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("backend", String(32), nullable=False),
    Column("gpus", JSON, nullable=False),
    Column("first_seen_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("draining", Boolean, nullable=False, default=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("routing_key", String(300), nullable=False),
    Column("body", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime(), nullable=True),
)
Index("ix_outbox_unpublished", outbox.c.published_at, outbox.c.id)

log_chunks = Table(
    "log_chunks",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True, autoincrement=False),
    Column("end_offset", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# Time series, downsampled: one row per bucket (GPUYARD_USAGE_BUCKET_S) per attempt or per GPU.

job_usage = Table(
    "job_usage",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("at", UtcDateTime(), primary_key=True),
    Column("utilization_pct", Float, nullable=False),  # mean over the bucket and the job's GPUs
    Column("memory_used_mib", Integer, nullable=False),  # peak over the bucket, summed over the job's GPUs
)

gpu_usage = Table(
    "gpu_usage",
    metadata,
    Column("node", String(255), primary_key=True),
    Column("gpu_index", Integer, primary_key=True),
    Column("at", UtcDateTime(), primary_key=True),
    Column("utilization_pct", Float, nullable=False),
    Column("memory_used_mib", Integer, nullable=False),
)
Index("ix_gpu_usage_at", gpu_usage.c.at)

job_progress = Table(
    "job_progress",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("at", UtcDateTime(), primary_key=True),
    Column("step", Float, nullable=True),
    Column("total", Float, nullable=True),
    Column("metrics", JSON, nullable=False),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=True),  # NULL: global
    Column("url", Text, nullable=False),
    Column("secret", String(128), nullable=False),
    Column("events", JSON, nullable=False),
    Column("format", String(16), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("webhook_id", Integer, ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(32), nullable=False),
    Column("job_id", Integer, nullable=True),
    Column("body", JSON, nullable=False),
    Column("state", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UtcDateTime(), nullable=True),
    Column("last_attempt_at", UtcDateTime(), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("delivered_at", UtcDateTime(), nullable=True),
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.state, webhook_deliveries.c.next_attempt_at)
Index("ix_webhook_deliveries_hook", webhook_deliveries.c.webhook_id, webhook_deliveries.c.id)

# What could not run or could not be processed: a job that used up its attempts, or a message RabbitMQ
# dead-lettered (bad body, unknown job, failed twice). Kept until requeued (then marked) or deleted.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # job | message
    Column("job_id", Integer, nullable=True),
    Column("reason", Text, nullable=False),
    Column("failure_class", String(32), nullable=True),
    Column("attempts", Integer, nullable=True),
    Column("log_tail", Text, nullable=True),
    Column("routing_key", String(300), nullable=True),
    Column("body", JSON, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("requeued_at", UtcDateTime(), nullable=True),
)
Index("ix_dead_letters_open", dead_letters.c.requeued_at, dead_letters.c.id)
