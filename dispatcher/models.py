"""The ledger's tables, all in one place (SQLModel).

``Message`` is one SMS handed to us; ``Attempt`` is one provider call for it (written
before the call goes out, finished after); ``StatusEvent`` is every status change with
its source. Times are aware UTC datetimes (SQLModel's UTCDateTime stores them in
UTC and gives them back with the zone, SQLite included).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Column, Index, Table, Text, text
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class MessageBase(SQLModel):
    to: str = Field(max_length=15)
    text: str = Field(sa_column=Column(Text, nullable=False))
    sender: str | None = Field(default=None, max_length=15)
    priority: str = Field(default="normal", max_length=8)  # high | normal
    provider_pinned: str | None = Field(default=None, max_length=40)  # send_sms(provider=...)


class Message(MessageBase, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        # the sweeper: queued/scheduled messages that are due
        Index("ix_messages_status_due", "status", "due_at"),
        # in-flight messages per provider and status (the metrics' gauges)
        Index("ix_messages_provider_status_poll", "provider", "status", "next_poll_at"),
        # the pollers: due polls of a provider, oldest first, in one ordered read; only
        # the messages in flight are in it (a claim names the statuses as literals)
        Index(
            "ix_messages_poll_due",
            "provider",
            "next_poll_at",
            postgresql_where=text("status IN ('accepted', 'sent') AND provider_message_id IS NOT NULL"),
            sqlite_where=text("status IN ('accepted', 'sent') AND provider_message_id IS NOT NULL"),
        ),
        # search: by recipient, by the provider's id alone, by client, newest first;
        # retention walks created_at
        Index("ix_messages_to_created", "to", "created_at", "id"),
        # By the provider's id: alone (search), or with the provider (its status reports).
        # One index for both: each index is paid on every insert.
        Index("ix_messages_pmid", "provider_message_id", "provider"),
        # Only clients' rows: the operator's traffic pays nothing for it on insert.
        Index(
            "ix_messages_client_created",
            "client",
            "created_at",
            "id",
            postgresql_where=text("client IS NOT NULL"),
            sqlite_where=text("client IS NOT NULL"),
        ),
        Index("ix_messages_created", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    # The idempotency key; a client's is stored as "client:NAME:KEY" (intake.scoped_key),
    # so that two apps' keys never meet, and shown without the prefix.
    key: str | None = Field(default=None, max_length=300, unique=True)
    payload_hash: str = Field(max_length=64)
    parts: int
    encoding: str = Field(max_length=8)
    status: str = Field(max_length=16)
    provider: str | None = Field(default=None, max_length=40)  # the instance now holding it
    provider_message_id: str | None = Field(default=None, max_length=100)
    attempts: int = 0  # provider calls made, across all providers
    retries: int = 0  # retries on the same provider within the current round
    failovers: int = 0
    tried: str = Field(default="", max_length=400)  # providers failed over in this round, comma-separated
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    send_at: datetime | None = None  # the producer's `at`
    expires_at: datetime  # created + ttl: never sent after this
    due_at: datetime = Field(default_factory=utcnow)  # earliest time of the next send
    published_for: datetime | None = None  # the due_at the last published task targets
    claimed_at: datetime | None = None
    accepted_at: datetime | None = None
    final_at: datetime | None = None
    next_poll_at: datetime | None = None
    polls: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    # The recipient's region (the ISO 3166 code libphonenumber gives its number, or
    # "001" for a non-geographic one: satellite, global services), `to` being its
    # E.164 digits without the +.
    region: str | None = Field(default=None, max_length=3)
    # An operator asked to cancel it while a call for it was in doubt or in flight:
    # the send path settles that call first, then cancels instead of sending again.
    cancel_requested_at: datetime | None = None
    # The client (API key) that sent it; None: the operator or a trusted producer.
    client: str | None = Field(default=None, max_length=64)
    # Where its status changes go: an http(s) URL (signed POST) or a Celery task name.
    callback_url: str | None = Field(default=None, sa_column=Column(Text))
    callback_task: str | None = Field(default=None, max_length=200)
    # Retention replaced its phone and text (retention_mode = "mask"); counts stay.
    masked_at: datetime | None = None


class Client(SQLModel, table=True):
    """An app with its own API key. The key is stored as its SHA-256 (a random key of
    256 bits needs no slow hash); the webhook secret is stored as is, since signing
    needs it."""

    __tablename__ = "clients"

    name: str = Field(primary_key=True, max_length=64)
    key_hash: str = Field(max_length=64, unique=True)
    key_prefix: str = Field(max_length=16)  # the key's first characters, to tell keys apart
    senders: str = Field(default="[]", sa_column=Column(Text, nullable=False))  # JSON list
    daily_quota: int | None = None  # messages per day (policy.timezone's day); None: no limit
    callback_url: str | None = Field(default=None, sa_column=Column(Text))
    callback_task: str | None = Field(default=None, max_length=200)
    webhook_secret: str = Field(max_length=100)
    send_window: str | None = Field(default=None, max_length=11)  # "09:00-21:00"
    timezone: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ClientUsage(SQLModel, table=True):
    """Messages a client stored per day, counted in the transaction that stores them."""

    __tablename__ = "client_usage"

    client: str = Field(primary_key=True, max_length=64)
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD in policy.timezone
    count: int = 0


class Callback(SQLModel, table=True):
    """The outbox of status callbacks: written in the transaction that changes the
    status, delivered by its own task, in order per message."""

    __tablename__ = "callbacks"
    __table_args__ = (
        Index("ix_callbacks_state_next", "state", "next_at"),
        Index("ix_callbacks_message", "message_id", "id"),
        Index("ix_callbacks_created", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=32)
    client: str | None = Field(default=None, max_length=64)
    url: str | None = Field(default=None, sa_column=Column(Text))
    task: str | None = Field(default=None, max_length=200)
    # The message as it was at the change (the payload's fields).
    status: str = Field(max_length=16)
    key: str | None = Field(default=None, max_length=300)
    to: str = Field(max_length=15)
    provider: str | None = Field(default=None, max_length=40)
    provider_message_id: str | None = Field(default=None, max_length=100)
    error: str | None = Field(default=None, sa_column=Column(Text))
    parts: int | None = None
    at: datetime = Field(default_factory=utcnow)  # of the status change
    state: str = Field(default="pending", max_length=12)  # pending | delivered | failed
    tries: int = 0
    next_at: datetime = Field(default_factory=utcnow)  # due, or leased until
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class StopEntry(SQLModel, table=True):
    """A number we must not send to: an opt-out (38-FZ) or a provider's blacklist."""

    __tablename__ = "stop_list"

    phone: str = Field(primary_key=True, max_length=15)  # E.164 digits, as messages.to
    # normal: advertising and bulk only; all: one-time codes too
    scope: str = Field(default="normal", max_length=8)
    # operator | client:NAME | provider:INSTANCE
    source: str = Field(max_length=80)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)


class BulkRequest(SQLModel, table=True):
    """A bulk call's Idempotency-Key, tied to the hash of its whole payload: the same
    key with another payload is a conflict, the same payload answers the same ids."""

    __tablename__ = "bulk_requests"

    key: str = Field(primary_key=True, max_length=300)
    payload_hash: str = Field(max_length=64)
    message_ids: str = Field(sa_column=Column(Text, nullable=False))  # JSON list, in order
    created_at: datetime = Field(default_factory=utcnow)


class Attempt(SQLModel, table=True):
    __tablename__ = "attempts"
    # what each provider was paid and sent, by day (`smsdispatch providers`)
    __table_args__ = (Index("ix_attempts_provider_finished", "provider", "finished_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="messages.id", index=True, max_length=32)
    provider: str = Field(max_length=40)
    kind: str = Field(max_length=16)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    duration_ms: float | None = None
    # in_flight | accepted | retry | failover | reject | ambiguous | reconciled | lost
    outcome: str = Field(default="in_flight", max_length=16)
    http_status: int | None = None
    provider_code: str | None = Field(default=None, max_length=100)
    raw: str | None = Field(default=None, sa_column=Column(Text))  # the reply, redacted
    error: str | None = Field(default=None, sa_column=Column(Text))
    # What the provider reported for an accepted message: SMS parts it counted and what
    # it charged (in its own unit: roubles, or credits). None: it did not say.
    parts: int | None = None
    cost: float | None = None


class StatusEvent(SQLModel, table=True):
    __tablename__ = "status_events"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(foreign_key="messages.id", index=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)
    old_status: str | None = Field(default=None, max_length=16)
    new_status: str = Field(max_length=16)
    # producer | send | poll | status_queue | sweeper | operator | reconcile
    source: str = Field(max_length=16)
    provider: str | None = Field(default=None, max_length=40)
    raw: str | None = Field(default=None, sa_column=Column(Text))  # the provider's own value
    detail: str | None = Field(default=None, sa_column=Column(Text))


class BalanceReading(SQLModel, table=True):
    """One balance read of one provider instance: the history behind `balance`."""

    __tablename__ = "balance_readings"
    __table_args__ = (Index("ix_balance_readings_provider_at", "provider", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=40)
    at: datetime = Field(default_factory=utcnow)
    amount: float | None = None
    credit: float | None = None  # credit beyond the balance (prostor-sms.ru)
    currency: str | None = Field(default=None, max_length=16)
    error: str | None = Field(default=None, sa_column=Column(Text))


def _table(model: type[SQLModel]) -> Table:
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


# Core tables for typed queries (SQLModel's class attributes type as plain values).
MESSAGES = _table(Message)
ATTEMPTS = _table(Attempt)
EVENTS = _table(StatusEvent)
BALANCES = _table(BalanceReading)
BULK_REQUESTS = _table(BulkRequest)
CLIENTS = _table(Client)
CLIENT_USAGE = _table(ClientUsage)
CALLBACKS = _table(Callback)
STOP_LIST = _table(StopEntry)
