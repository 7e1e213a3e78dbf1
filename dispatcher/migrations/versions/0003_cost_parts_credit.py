"""what providers report back: cost and parts per attempt, credit per balance reading

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


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))
        batch_op.create_index("ix_attempts_provider_finished", ["provider", "finished_at"], unique=False)
    with op.batch_alter_table("balance_readings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credit", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("balance_readings", schema=None) as batch_op:
        batch_op.drop_column("credit")
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_attempts_provider_finished")
        batch_op.drop_column("cost")
        batch_op.drop_column("parts")
