"""stock_minimums, low_stock_alerts (one open per depot and item), expiry_warnings (one per lot)

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ecs.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stock_minimums",
        sa.Column("depot_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.String(length=64), nullable=False),
        sa.Column("minimum", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", ecs.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("minimum >= 0", name=op.f("ck_stock_minimums_minimum_not_negative")),
        sa.ForeignKeyConstraint(["depot_id"], ["depots.id"], name=op.f("fk_stock_minimums_depot_id_depots")),
        sa.ForeignKeyConstraint(["item"], ["items.code"], name=op.f("fk_stock_minimums_item_items")),
        sa.PrimaryKeyConstraint("depot_id", "item", name=op.f("pk_stock_minimums")),
    )
    op.create_table(
        "low_stock_alerts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("depot_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.String(length=64), nullable=False),
        sa.Column("minimum", sa.BigInteger(), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("exercise", sa.Boolean(), nullable=False),
        sa.Column("raised_at", ecs.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", ecs.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cleared_available", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["depot_id"], ["depots.id"], name=op.f("fk_low_stock_alerts_depot_id_depots")),
        sa.ForeignKeyConstraint(["item"], ["items.code"], name=op.f("fk_low_stock_alerts_item_items")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_low_stock_alerts")),
    )
    op.create_index(
        "uq_low_stock_alerts_open",
        "low_stock_alerts",
        ["depot_id", "item"],
        unique=True,
        sqlite_where=sa.text("cleared_at IS NULL"),
        postgresql_where=sa.text("cleared_at IS NULL"),
    )
    op.create_index("ix_low_stock_alerts_open", "low_stock_alerts", ["cleared_at", "id"], unique=False)
    op.create_table(
        "expiry_warnings",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("depot_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.String(length=64), nullable=False),
        sa.Column("lot", sa.String(length=64), nullable=False),
        sa.Column("expiry", sa.Date(), nullable=False),
        sa.Column("on_hand", sa.BigInteger(), nullable=False),
        sa.Column("exercise", sa.Boolean(), nullable=False),
        sa.Column("warned_at", ecs.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["depot_id"], ["depots.id"], name=op.f("fk_expiry_warnings_depot_id_depots")),
        sa.ForeignKeyConstraint(["item"], ["items.code"], name=op.f("fk_expiry_warnings_item_items")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expiry_warnings")),
    )
    op.create_index("uq_expiry_warnings_lot", "expiry_warnings", ["depot_id", "item", "lot"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_expiry_warnings_lot", table_name="expiry_warnings")
    op.drop_table("expiry_warnings")
    op.drop_index("ix_low_stock_alerts_open", table_name="low_stock_alerts")
    op.drop_index("uq_low_stock_alerts_open", table_name="low_stock_alerts")
    op.drop_table("low_stock_alerts")
    op.drop_table("stock_minimums")
