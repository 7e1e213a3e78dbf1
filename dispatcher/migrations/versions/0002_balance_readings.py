"""balance readings: the history of provider balances

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "balance_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Float(), nullable=True),
        sa.Column("currency", sa.String(length=16), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("balance_readings", schema=None) as batch_op:
        batch_op.create_index("ix_balance_readings_provider_at", ["provider", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("balance_readings", schema=None) as batch_op:
        batch_op.drop_index("ix_balance_readings_provider_at")
    op.drop_table("balance_readings")
