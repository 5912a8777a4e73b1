"""statement deliveries, delivery targets, skipped deliveries

A delivery is now of an alert or of a statement (exactly one); an SMS or cell-broadcast delivery
records the targets inside the area it went to; a delivery with no target there is skipped.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "status IN ('pending', 'delivered', 'refused', 'skipped')"
OLD_STATUSES = "status IN ('pending', 'delivered', 'refused')"


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("statement_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("targets", sa.JSON(), nullable=True))
        batch_op.alter_column("alert_id", existing_type=sa.String(length=64), nullable=True)
        batch_op.drop_constraint(op.f("ck_deliveries_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_deliveries_status"), sa.text(STATUSES))
        batch_op.create_check_constraint(
            op.f("ck_deliveries_one_subject"), sa.text("(alert_id IS NULL) <> (statement_id IS NULL)")
        )
        batch_op.create_foreign_key(
            op.f("fk_deliveries_statement_id_statements"), "statements", ["statement_id"], ["id"]
        )
        batch_op.create_unique_constraint("uq_deliveries_statement_once", ["statement_id", "channel_id", "round"])
        batch_op.create_index("ix_deliveries_statement", ["statement_id"], unique=False)


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE statement_id IS NOT NULL OR status = 'skipped'")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_statement")
        batch_op.drop_constraint("uq_deliveries_statement_once", type_="unique")
        batch_op.drop_constraint(op.f("fk_deliveries_statement_id_statements"), type_="foreignkey")
        batch_op.drop_constraint(op.f("ck_deliveries_one_subject"), type_="check")
        batch_op.drop_constraint(op.f("ck_deliveries_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_deliveries_status"), sa.text(OLD_STATUSES))
        batch_op.alter_column("alert_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("targets")
        batch_op.drop_column("statement_id")
