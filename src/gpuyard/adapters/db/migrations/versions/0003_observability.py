"""observability: GPU usage per job and per GPU, progress series, webhooks

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("usage_samples", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("gpu_util_mean", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gpu_util_peak", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gpu_mem_mean_mib", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gpu_mem_peak_mib", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("gpu_idle_since", _TS, nullable=True))
    op.create_table(
        "job_usage",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("utilization_pct", sa.Float(), nullable=False),
        sa.Column("memory_used_mib", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt", "at"),
    )
    op.create_table(
        "gpu_usage",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("utilization_pct", sa.Float(), nullable=False),
        sa.Column("memory_used_mib", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("node", "gpu_index", "at"),
    )
    op.create_index("ix_gpu_usage_at", "gpu_usage", ["at"])
    op.create_table(
        "job_progress",
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("step", sa.Float(), nullable=True),
        sa.Column("total", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt", "at"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=128), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("format", sa.String(length=16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column(
            "webhook_id", sa.Integer(), sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=True),
        sa.Column("last_attempt_at", _TS, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_hook", "webhook_deliveries", ["webhook_id", "id"])


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhooks")
    op.drop_table("job_progress")
    op.drop_index("ix_gpu_usage_at", table_name="gpu_usage")
    op.drop_table("gpu_usage")
    op.drop_table("job_usage")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in (
            "gpu_idle_since",
            "gpu_mem_peak_mib",
            "gpu_mem_mean_mib",
            "gpu_util_peak",
            "gpu_util_mean",
            "usage_samples",
        ):
            batch_op.drop_column(column)
