"""status polls that scale like the send path: a partial index of the due polls

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

# The messages a poll can ask about: in flight, with the provider's id to ask by.
_IN_FLIGHT = "status IN ('accepted', 'sent') AND provider_message_id IS NOT NULL"


def upgrade() -> None:
    # A poll group claims the oldest due polls of one provider: one ordered range of this
    # index, however many messages are in flight or final. Built in the migration's
    # transaction, which holds writes to `messages` while it reads them; on a large
    # ledger create it beforehand without a lock (README, Delivery tracking) and this finds it.
    op.create_index(
        "ix_messages_poll_due",
        "messages",
        ["provider", "next_poll_at"],
        postgresql_where=sa.text(_IN_FLIGHT),
        sqlite_where=sa.text(_IN_FLIGHT),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_poll_due", table_name="messages")
