"""preemptible jobs: jobs.preemptible, preemptions, preempt_requested_at

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("preemptible", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("preempt_requested_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in ("preempt_requested_at", "preemptions", "preemptible"):
            batch_op.drop_column(column)
