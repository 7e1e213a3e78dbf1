"""apps as clients: API keys with quotas, the status callback outbox, the stop list, search indexes

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = True) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("callback_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("callback_task", sa.String(length=200), nullable=True))
        batch_op.add_column(_ts("masked_at"))
        # Room for a client's prefix ("client:NAME:") before a key of 200.
        batch_op.alter_column("key", existing_type=sa.String(length=200), type_=sa.String(length=300))
    with op.batch_alter_table("bulk_requests", schema=None) as batch_op:
        batch_op.alter_column("key", existing_type=sa.String(length=200), type_=sa.String(length=300))
    # Outside the batch: on PostgreSQL a big ledger gets each index in its own statement.
    op.create_index("ix_messages_to_created", "messages", ["to", "created_at", "id"])
    # The provider's id first: search looks it up alone, status reports with the
    # provider; one index serves both (each index is paid on every insert).
    op.create_index("ix_messages_pmid", "messages", ["provider_message_id", "provider"])
    op.drop_index("ix_messages_provider_message_id", table_name="messages")
    # Only clients' rows: the operator's traffic pays nothing for it on insert.
    op.create_index(
        "ix_messages_client_created",
        "messages",
        ["client", "created_at", "id"],
        postgresql_where=sa.text("client IS NOT NULL"),
        sqlite_where=sa.text("client IS NOT NULL"),
    )
    op.create_index("ix_messages_created", "messages", ["created_at", "id"])
    op.create_table(
        "clients",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("senders", sa.Text(), nullable=False),
        sa.Column("daily_quota", sa.Integer(), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("callback_task", sa.String(length=200), nullable=True),
        sa.Column("webhook_secret", sa.String(length=100), nullable=False),
        sa.Column("send_window", sa.String(length=11), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        _ts("created_at", nullable=False),
        _ts("revoked_at"),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("key_hash"),
    )
    op.create_table(
        "client_usage",
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("client", "day"),
    )
    op.create_table(
        "callbacks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("task", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=300), nullable=True),
        sa.Column("to", sa.String(length=15), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=True),
        sa.Column("provider_message_id", sa.String(length=100), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("parts", sa.Integer(), nullable=True),
        _ts("at", nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        _ts("next_at", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("delivered_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_callbacks_state_next", "callbacks", ["state", "next_at"])
    op.create_index("ix_callbacks_message", "callbacks", ["message_id", "id"])
    op.create_index("ix_callbacks_created", "callbacks", ["created_at"])
    op.create_table(
        "stop_list",
        sa.Column("phone", sa.String(length=15), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("phone"),
    )


def downgrade() -> None:
    op.drop_table("stop_list")
    op.drop_index("ix_callbacks_created", table_name="callbacks")
    op.drop_index("ix_callbacks_message", table_name="callbacks")
    op.drop_index("ix_callbacks_state_next", table_name="callbacks")
    op.drop_table("callbacks")
    op.drop_table("client_usage")
    op.drop_table("clients")
    op.drop_index("ix_messages_created", table_name="messages")
    op.drop_index("ix_messages_client_created", table_name="messages")
    op.create_index("ix_messages_provider_message_id", "messages", ["provider", "provider_message_id"])
    op.drop_index("ix_messages_pmid", table_name="messages")
    op.drop_index("ix_messages_to_created", table_name="messages")
    with op.batch_alter_table("bulk_requests", schema=None) as batch_op:
        batch_op.alter_column("key", existing_type=sa.String(length=300), type_=sa.String(length=200))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.alter_column("key", existing_type=sa.String(length=300), type_=sa.String(length=200))
        batch_op.drop_column("masked_at")
        batch_op.drop_column("callback_task")
        batch_op.drop_column("callback_url")
        batch_op.drop_column("client")
