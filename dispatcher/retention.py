"""Retention: what the ledger keeps about people, and for how long (152-FZ).

Messages older than ``policy.retention_days`` are deleted with their attempts, status
events and callbacks, or, with ``policy.retention_mode = "mask"``, kept for reports
with the phone, the text and everything that may quote them (provider replies, error
texts, the idempotency key and payload hash) replaced or cleared. Balance readings,
bulk request keys and per-client daily counts older than the cutoff go too.

Only a message that nothing will move on any more is touched: a final one, or an
``unknown`` one (the horizon gave it up; like a failed one, only an operator would
send it again). One still queued, scheduled, sending, accepted or sent is left and
counted under ``kept_in_flight``.

The work goes in batches of ``policy.retention_batch`` messages, each its own short
transaction, so that no run holds a lock for long: on SQLite the one write lock is
released between batches for the senders, on PostgreSQL the rows of a batch are
locked (``FOR UPDATE SKIP LOCKED``) only until its commit, and a row another
transaction holds is left for the next run instead of waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, func, or_, select, update
from sqlmodel import Session

from dispatcher.config import Settings
from dispatcher.db import session_scope
from dispatcher.errors import ValidationError
from dispatcher.models import (
    ATTEMPTS,
    BALANCES,
    BULK_REQUESTS,
    CALLBACKS,
    CLIENT_USAGE,
    EVENTS,
    MESSAGES,
    utcnow,
)
from dispatcher.quiet import zone
from dispatcher.status import Status
from dispatcher.validation import _as_utc

log = logging.getLogger("smsdispatch.retention")

MODES = ("delete", "mask")
# Statuses no process moves a message out of by itself: the final ones, and unknown
# (the horizon's verdict; an operator may retry it, as a failed one).
SETTLED = frozenset({s.value for s in Status if s.is_final} | {Status.UNKNOWN.value})
IN_FLIGHT = tuple(sorted({s.value for s in Status} - SETTLED))
# What a masked message's `to` becomes: no digit of the number is kept (its region
# stays in `region`, which is what reports by country read).
MASKED_TO = "0"
# One beat run does at most this many batches per table, so it ends well within its
# interval and its run lock; the next run goes on where this one stopped.
BEAT_BATCHES = 20
# Ids per IN (...) list: under SQLite's limit of bound parameters for any batch size.
_CHUNK = 500
COUNTS = (
    "messages", "attempts", "events", "callbacks", "balance_readings", "bulk_requests", "client_usage",
    "masked", "kept_in_flight",
)  # fmt: skip


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _due(before: datetime, mode: str) -> list[ColumnElement[bool]]:
    """The messages this run may delete or mask."""
    where = [MESSAGES.c.created_at < before, MESSAGES.c.status.in_(sorted(SETTLED)), ~_telling()]
    if mode == "mask":
        where.append(MESSAGES.c.masked_at.is_(None))  # masked once is enough
    return where


def _telling() -> ColumnElement[bool]:
    """A callback of the message still waits to be delivered: its app has not heard
    the outcome yet (a purge by hand up to today, an old message retried), and a
    callback is never lost. Kept until it is delivered or given up (callbacks.max_age)."""
    return (
        select(CALLBACKS.c.id)
        .where(CALLBACKS.c.message_id == MESSAGES.c.id, CALLBACKS.c.state == "pending")
        .exists()
    )


def _page(before: datetime, mode: str, limit: int, after: tuple[datetime, str] | None) -> Select[Any]:
    """The next ``limit`` due messages, oldest first along ix_messages_created, after
    the last one the run handled (a kept or skipped row is not read again)."""
    query = select(MESSAGES.c.id, MESSAGES.c.created_at).where(*_due(before, mode))
    if after is not None:
        at, mid = after
        # `created_at >= at` bounds the index scan (a row comparison would not match
        # the one-column index on PostgreSQL); the OR drops the rows of `at` handled.
        query = query.where(
            and_(MESSAGES.c.created_at >= at, or_(MESSAGES.c.created_at > at, MESSAGES.c.id > mid))
        )
    return query.order_by(MESSAGES.c.created_at, MESSAGES.c.id).limit(limit)


def _rowcount(result: Any) -> int:
    return max(int(result.rowcount), 0)


def _delete_messages(session: Session, ids: Sequence[str], counts: dict[str, int]) -> None:
    # Children first: attempts and status_events reference messages.id.
    for chunk in _chunks(ids):
        counts["callbacks"] += _rowcount(
            session.execute(delete(CALLBACKS).where(CALLBACKS.c.message_id.in_(chunk)))
        )
        counts["events"] += _rowcount(session.execute(delete(EVENTS).where(EVENTS.c.message_id.in_(chunk))))
        counts["attempts"] += _rowcount(
            session.execute(delete(ATTEMPTS).where(ATTEMPTS.c.message_id.in_(chunk)))
        )
        counts["messages"] += _rowcount(session.execute(delete(MESSAGES).where(MESSAGES.c.id.in_(chunk))))


def _mask_messages(session: Session, ids: Sequence[str], counts: dict[str, int], now: datetime) -> None:
    for chunk in _chunks(ids):
        # A provider's reply and an error text may quote the number or the text.
        counts["attempts"] += _rowcount(
            session.execute(
                update(ATTEMPTS).where(ATTEMPTS.c.message_id.in_(chunk)).values(raw=None, error=None)
            )
        )
        counts["events"] += _rowcount(
            session.execute(
                update(EVENTS).where(EVENTS.c.message_id.in_(chunk)).values(raw=None, detail=None)
            )
        )
        # A callback row is a copy of the message's fields, `to` among them: it goes.
        counts["callbacks"] += _rowcount(
            session.execute(delete(CALLBACKS).where(CALLBACKS.c.message_id.in_(chunk)))
        )
        # Parts, cost, status, provider, region and the dates stay for reports. The key
        # is the producer's and may hold a user id or the number; the payload hash is
        # of the number and text, and a number is few enough digits to guess from it.
        counts["masked"] += _rowcount(
            session.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id.in_(chunk))
                .values(to=MASKED_TO, text="", key=None, payload_hash="", last_error=None, masked_at=now)
            )
        )


def _messages(
    settings: Settings,
    before: datetime,
    mode: str,
    batch: int,
    max_batches: int | None,
    counts: dict[str, int],
) -> None:
    after: tuple[datetime, str] | None = None
    done = 0
    while max_batches is None or done < max_batches:
        with session_scope(settings.database_url) as s:
            # PostgreSQL: the batch's rows stay as they are until the commit (a status
            # change waits), and a row another transaction holds is left for later.
            rows = s.execute(_page(before, mode, batch, after).with_for_update(skip_locked=True)).all()
            if not rows:
                return
            ids = [r.id for r in rows]
            if mode == "mask":
                _mask_messages(s, ids, counts, utcnow())
            else:
                _delete_messages(s, ids, counts)
        done += 1
        after = (rows[-1].created_at, rows[-1].id)
        if len(rows) < batch:
            return


def _others(
    settings: Settings, before: datetime, batch: int, max_batches: int | None, counts: dict[str, int],
    dry_run: bool,
) -> None:  # fmt: skip
    """Balance readings and bulk request keys older than the cutoff, in batches too;
    the per-client daily counts of days before the cutoff's day (a row per client
    per day: few)."""
    limit = None if max_batches is None else batch * max_batches
    cutoff_day = before.astimezone(zone(settings.policy.timezone, "policy.timezone")).date().isoformat()
    tables = (
        ("balance_readings", BALANCES, BALANCES.c.id, BALANCES.c.at < before),
        ("bulk_requests", BULK_REQUESTS, BULK_REQUESTS.c.key, BULK_REQUESTS.c.created_at < before),
    )
    if dry_run:
        with session_scope(settings.database_url) as s:
            for name, _, key, old in tables:
                sub = select(key).where(old).limit(limit).subquery()
                counts[name] = int(s.execute(select(func.count()).select_from(sub)).scalar_one())
            counts["client_usage"] = int(
                s.execute(select(func.count()).where(CLIENT_USAGE.c.day < cutoff_day)).scalar_one()
            )
        return
    for name, table, key, old in tables:
        done = 0
        while max_batches is None or done < max_batches:
            with session_scope(settings.database_url) as s:
                # In one statement: nothing else refers to these rows.
                gone = _rowcount(s.execute(delete(table).where(key.in_(select(key).where(old).limit(batch)))))
            counts[name] += gone
            done += 1
            if gone < batch:
                break
    with session_scope(settings.database_url) as s:
        counts["client_usage"] = _rowcount(
            s.execute(delete(CLIENT_USAGE).where(CLIENT_USAGE.c.day < cutoff_day))
        )


def _dry_run(
    settings: Settings,
    before: datetime,
    mode: str,
    batch: int,
    max_batches: int | None,
    counts: dict[str, int],
) -> None:
    """What the same call would do, read in one transaction and changed in none."""
    limit = None if max_batches is None else batch * max_batches
    due = select(MESSAGES.c.id).where(*_due(before, mode)).order_by(MESSAGES.c.created_at, MESSAGES.c.id)
    ids = due.limit(limit).subquery()
    with session_scope(settings.database_url) as s:

        def of(table: Any) -> int:
            query = select(func.count()).where(table.c.message_id.in_(select(ids.c.id)))
            return int(s.execute(query).scalar_one())

        messages = int(s.execute(select(func.count()).select_from(ids)).scalar_one())
        counts["masked" if mode == "mask" else "messages"] = messages
        counts["attempts"], counts["events"], counts["callbacks"] = of(ATTEMPTS), of(EVENTS), of(CALLBACKS)


def purge(
    settings: Settings,
    *,
    before: datetime,
    mode: str | None = None,
    dry_run: bool = False,
    batch: int | None = None,
    max_batches: int | None = None,
) -> dict[str, int]:
    """Delete (or mask) what is older than ``before``; the counts of what it did.

    ``messages``, ``attempts``, ``events``, ``callbacks``, ``balance_readings``,
    ``bulk_requests``, ``client_usage``: rows deleted; in mask mode ``masked`` is the
    messages masked and ``attempts`` and ``events`` the rows cleared of their replies
    and details (``callbacks`` are deleted in both modes). ``kept_in_flight``: older
    messages left because they are not settled yet, or a callback of theirs still
    waits to be delivered. ``mode``: ``delete`` or ``mask``
    (default ``policy.retention_mode``); ``batch``: messages per transaction (default
    ``policy.retention_batch``); ``max_batches``: stop after that many transactions
    per table (None: to the end). ``dry_run``: the same counts, nothing changed."""
    mode = mode or settings.policy.retention_mode
    if mode not in MODES:
        raise ValidationError("mode", f"one of {', '.join(MODES)}, got {mode!r}")
    before = _as_utc(before, "before")
    batch = settings.policy.retention_batch if batch is None else batch
    if isinstance(batch, bool) or not 1 <= batch <= 100_000:
        raise ValidationError("batch", f"1 to 100000, got {batch!r}")
    if max_batches is not None and max_batches < 1:
        raise ValidationError("max_batches", f"at least 1, got {max_batches!r}")
    counts = dict.fromkeys(COUNTS, 0)
    with session_scope(settings.database_url) as s:
        # Along ix_messages_status_due: the few messages in flight, not the old ones.
        kept = select(func.count()).where(MESSAGES.c.status.in_(IN_FLIGHT), MESSAGES.c.created_at < before)
        # Driven by the few pending callbacks (ix_callbacks_state_next), not the old rows.
        telling = (
            select(func.count(func.distinct(CALLBACKS.c.message_id)))
            .select_from(CALLBACKS.join(MESSAGES, MESSAGES.c.id == CALLBACKS.c.message_id))
            .where(CALLBACKS.c.state == "pending", MESSAGES.c.created_at < before,
                   MESSAGES.c.status.in_(sorted(SETTLED)))
        )  # fmt: skip
        counts["kept_in_flight"] = int(s.execute(kept).scalar_one()) + int(s.execute(telling).scalar_one())
    if dry_run:
        _dry_run(settings, before, mode, batch, max_batches, counts)
    else:
        _messages(settings, before, mode, batch, max_batches, counts)
    _others(settings, before, batch, max_batches, counts, dry_run)
    if not dry_run and any(counts[k] for k in COUNTS if k != "kept_in_flight"):
        log.info("retention (%s) before %s: %s", mode, before.isoformat(), counts)
    return counts


def cutoff(settings: Settings, now: datetime | None = None) -> datetime:
    """The time before which the ledger keeps nothing: now minus ``retention_days``."""
    return (now or utcnow()) - timedelta(days=settings.policy.retention_days)


def purge_due(settings: Settings) -> dict[str, int]:
    """The beat job's run: what is past ``policy.retention_days``, at most
    ``BEAT_BATCHES`` transactions per table (the next run goes on)."""
    return purge(settings, before=cutoff(settings), max_batches=BEAT_BATCHES)
