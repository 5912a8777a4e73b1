"""reservations.edxl_message_id / edxl_element_id: the EDXL-RM request a reservation came from

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("edxl_message_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("edxl_element_id", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reservations", schema=None) as batch_op:
        batch_op.drop_column("edxl_element_id")
        batch_op.drop_column("edxl_message_id")
