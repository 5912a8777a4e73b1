"""alarm fingerprints (a reused alarm_id must say the same) and refused alarms

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 00:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ecs.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("alarms") as batch:
        batch.add_column(sa.Column("fingerprint", sa.String(length=32), nullable=True))
    op.create_table(
        "alarm_refusals",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("alarm_id", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=8), nullable=False),
        sa.Column("at", ecs.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_alarm_refusals")),
    )
    op.create_index("ix_alarm_refusals_at", "alarm_refusals", ["at", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alarm_refusals_at", table_name="alarm_refusals")
    op.drop_table("alarm_refusals")
    with op.batch_alter_table("alarms") as batch:
        batch.drop_column("fingerprint")
