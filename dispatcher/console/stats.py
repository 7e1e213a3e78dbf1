"""The console's SQL: set-based statements, one session per page.

Percentiles are exact, never taken from a sample: PostgreSQL computes them with
``percentile_cont``; SQLite, which has no such aggregate, numbers each provider's rows
in order with a window function and returns only the two rows around each wanted
rank, which are interpolated here the way ``percentile_cont`` does (rank
``(n - 1) * q``, linear between its neighbours). Either way the database sorts, and
at most four rows per provider come back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Float, Integer, case, cast, func, literal, or_, select
from sqlmodel import Session

from dispatcher import ledger
from dispatcher.callbacks import public_url
from dispatcher.config import Settings
from dispatcher.db import session_scope
from dispatcher.decisions import Action
from dispatcher.errors import ValidationError
from dispatcher.keys import public_key
from dispatcher.models import ATTEMPTS, BALANCES, CALLBACKS, MESSAGES, utcnow
from dispatcher.redact import redact
from dispatcher.search import COLUMNS, decode_cursor, encode_cursor, statement
from dispatcher.sending.policy import POLICY
from dispatcher.status import Status
from dispatcher.validation import text_problem

A, M, B = ATTEMPTS, MESSAGES, BALANCES

WINDOWS: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
QUANTILES = (0.5, 0.95)
# Attempt outcome words, from the send path's table: taken, refused (the message), and
# the rest, where the provider failed us (a refused message is the provider working).
ACCEPTED = tuple(sorted({rule.attempt for rule in POLICY.values() if rule.action == Action.ACCEPT}))
REFUSED = tuple(sorted({rule.attempt for rule in POLICY.values() if rule.action == Action.REJECT}))
ERRORS = tuple(sorted({rule.attempt for rule in POLICY.values()} - {*ACCEPTED, *REFUSED}))
SPEND_DAYS = 14
BALANCE_DAYS = 7
BALANCE_POINTS = 120  # at most this many buckets per provider in the balance history
PAGE = 50  # messages per search page
STATEMENT_TIMEOUT = 15  # seconds a page's SQL may take on PostgreSQL
MAX_QUERY = 200  # characters in the search box
# The statuses not final yet (as /metrics counts them): ``unknown`` waits for an operator.
IN_PIPE = tuple(st for st in Status if not st.is_final)

_ID = re.compile(r"[0-9a-f]{1,32}")
_PHONEISH = re.compile(r"[+0-9 ()\-.\t]+")


# -- search -------------------------------------------------------------------------

SEARCH_BY = {
    "any": "anything",
    "to": "recipient",
    "key": "idempotency key",
    "id": "message id",
    "pmid": "provider's message id",
}
# search() names the argument at fault as the API spells it; the page names its own field.
_FIELD_LABEL = {
    "to": "recipient",
    "key": "idempotency key",
    "provider_message_id": "provider's message id",
    "client": "client",
    "status": "status",
    "cursor": "page",
    "q": "search",
}


def field_label(name: str) -> str:
    return _FIELD_LABEL.get(name, name)


@dataclass
class Found:
    rows: list[dict[str, Any]]
    next: str | None
    notes: list[str] = field(default_factory=list)  # why an interpretation of the query was skipped


def find_messages(
    settings: Settings,
    q: str,
    by: str = "any",
    *,
    client: str | None = None,
    status: str | None = None,
    cursor: str | None = None,
    limit: int = PAGE,
) -> Found:
    """Messages matching ``q`` read as ``by`` (``any``: as each of them that fits),
    newest first, with ``dispatcher.search``'s statement and keyset cursor; the rows
    of several readings are merged in that same order. Raises ``ValidationError``
    naming the field at fault."""
    if by not in SEARCH_BY:
        raise ValidationError("by", f"one of {', '.join(SEARCH_BY)}")
    if len(q) > MAX_QUERY:
        raise ValidationError("q", f"at most {MAX_QUERY} characters, got {len(q)}")
    if q and text_problem(q):
        raise ValidationError("q", "control characters are not allowed")
    if cursor is not None:
        decode_cursor(cursor)  # refuses a mangled cursor before any reading is tried
    common: dict[str, Any] = {"client": client or None, "status": status or None, "cursor": cursor,
                              "limit": limit}  # fmt: skip
    # Built first: refuses a bad client or status (a NUL, say) for every reading, the
    # by-id one included, which filters on them by hand; run when there is no query.
    unfiltered = statement(settings, **common)
    queries: list[Any] = []
    notes: list[str] = []
    by_id: str | None = None
    if not q:
        queries.append(unfiltered)
    elif by == "id":
        if not _ID.fullmatch(q):
            raise ValidationError("id", "a message id is 1 to 32 lowercase hex characters")
        by_id = q
    elif by != "any":
        name = {"to": "to", "key": "key", "pmid": "provider_message_id"}[by]
        filters: dict[str, Any] = {name: q}
        queries.append(statement(settings, **filters, **common))
    else:
        for name in ("to", "key", "provider_message_id"):
            try:
                reading: dict[str, Any] = {name: q}
                queries.append(statement(settings, **reading, **common))
            except ValidationError as exc:
                if exc.field in ("client", "status", "cursor"):
                    raise
                if name == "to" and _PHONEISH.fullmatch(q):
                    notes.append(f"not read as a phone number: {exc.reason}")
        if _ID.fullmatch(q):
            by_id = q
    rows: dict[str, dict[str, Any]] = {}
    more = False
    with bounded(settings) as s:
        for query in queries:
            found = s.execute(query).mappings().all()
            more = more or len(found) > limit
            rows.update({r["id"]: dict(r) for r in found[:limit]})
        if by_id is not None and cursor is None:
            conditions: list[ColumnElement[bool]] = [M.c.id == by_id]
            if client:
                conditions.append(M.c.client == client)
            if status:
                conditions.append(M.c.status == status)
            rows.update({r["id"]: dict(r) for r in s.execute(select(*COLUMNS).where(*conditions)).mappings()})
    ordered = sorted(rows.values(), key=lambda r: (r["created_at"], r["id"]), reverse=True)
    more = more or len(ordered) > limit
    ordered = ordered[:limit]
    for row in ordered:
        row["key"] = public_key(row["key"], row["client"])
        row["last_error"] = redact(row["last_error"]) if row["last_error"] else None
    following = encode_cursor(ordered[-1]["created_at"], ordered[-1]["id"]) if more and ordered else None
    return Found(ordered, following, notes)


# -- a message's timeline ------------------------------------------------------------


@dataclass
class Timeline:
    message: dict[str, Any]
    entries: list[dict[str, Any]]  # attempts and status events, in time order
    callbacks: list[dict[str, Any]]


def _clean(value: Any) -> Any:
    # Raw replies were redacted when stored; redacted again here because a secret
    # configured since (a new provider password) is masked only from now on.
    return redact(value) if isinstance(value, str) and value else value


def timeline(settings: Settings, message_id: str) -> Timeline | None:
    """A message with every attempt and status event in time order, and its
    callbacks; None when there is no such message."""
    if not message_id or len(message_id) > 32 or text_problem(message_id):
        raise ValidationError("id", "a message id is 1 to 32 printable characters")
    with bounded(settings) as s:
        message = ledger.get(s, message_id)
        if message is None:
            return None
        msg = message.model_dump()
        attempts = [a.model_dump() for a in ledger.attempts_of(s, message_id)]
        events = [e.model_dump() for e in ledger.events_of(s, message_id)]
        callbacks = (
            s.execute(select(CALLBACKS).where(CALLBACKS.c.message_id == message_id).order_by(CALLBACKS.c.id))
            .mappings()
            .all()
        )
    msg.pop("payload_hash", None)
    msg["key"] = public_key(msg["key"], msg["client"])
    msg["last_error"] = _clean(msg["last_error"])
    msg["callback_url"] = public_url(msg["callback_url"], mark=True)
    entries: list[dict[str, Any]] = []
    for a in attempts:
        entry = {k: _clean(v) for k, v in a.items()}
        entries.append({"type": "attempt", "at": a["started_at"], **entry})
    for e in events:
        entry = {k: _clean(v) for k, v in e.items()}
        entries.append({"type": "event", **entry})
    # An attempt starts before the event it causes; at the same instant, attempt first.
    entries.sort(key=lambda e: (e["at"], e["type"] != "attempt", e["id"]))
    rows = []
    for c in callbacks:
        row = dict(c)
        row["url"] = public_url(row["url"], mark=True)
        row["key"] = public_key(row["key"], row["client"])
        row["error"], row["last_error"] = _clean(row["error"]), _clean(row["last_error"])
        rows.append(row)
    return Timeline(msg, entries, rows)


# -- providers ----------------------------------------------------------------------


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    if dialect == "postgresql":
        return cast(func.extract("epoch", end - start), Float)
    # SQLite keeps these as ISO text; julianday reads them, in days.
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _epoch(column: Any, dialect: str) -> ColumnElement[float]:
    if dialect == "postgresql":
        return cast(func.extract("epoch", column), Float)
    return (func.julianday(column) - 2440587.5) * 86400.0


def _day(column: Any, dialect: str) -> ColumnElement[str]:
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.date(column)


def interpolate(ranked: dict[int, float], n: int, q: float) -> float | None:
    """``percentile_cont(q)`` of ``n`` values from those at ranks (0-based) around
    ``(n - 1) * q``."""
    if n <= 0:
        return None
    pos = (n - 1) * q
    lo = math.floor(pos)
    low = ranked[lo]
    if lo + 1 >= n or pos == lo:
        return low
    return low + (ranked[lo + 1] - low) * (pos - lo)


def percentiles(
    s: Session, names: Sequence[str], end: Any, since: datetime, *, delivered: bool = False
) -> dict[str, dict[str, Any]]:
    """Per provider: p50 and p95 seconds from creation to ``end`` (a messages
    column) of the messages created since ``since`` that have it, and their count.
    Messages with a send time of their own are left out: their wait was asked for."""
    dialect = s.get_bind().dialect.name
    seconds = _seconds_between(M.c.created_at, end, dialect)
    conditions = [M.c.provider.in_(names), M.c.created_at >= since, end.is_not(None), M.c.send_at.is_(None)]
    if delivered:
        conditions.append(M.c.status == Status.DELIVERED.value)
    out: dict[str, dict[str, Any]] = {}
    if dialect == "postgresql":
        query = (
            select(M.c.provider, func.count(),
                   *[func.percentile_cont(q).within_group(seconds) for q in QUANTILES])
            .where(*conditions).group_by(M.c.provider)
        )  # fmt: skip
        for provider, n, *values in s.execute(query).all():
            out[provider] = {
                "n": int(n),
                **{f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, values, strict=True)},
            }
        return out
    inner = (
        select(
            M.c.provider.label("provider"),
            seconds.label("s"),
            func.row_number().over(partition_by=M.c.provider, order_by=seconds).label("rank"),
            func.count().over(partition_by=M.c.provider).label("n"),
        )
        .where(*conditions)
        .subquery()
    )
    wanted = []
    for q in QUANTILES:
        floor_rank = cast((inner.c.n - 1) * literal(q), Float)
        # CAST AS INTEGER truncates: the floor of a rank that is never negative.
        low = cast(floor_rank, Integer)
        wanted += [inner.c.rank - 1 == low, inner.c.rank - 1 == low + 1]
    ranked: dict[str, dict[int, float]] = {}
    counts: dict[str, int] = {}
    for provider, value, rank, n in s.execute(
        select(inner.c.provider, inner.c.s, inner.c.rank, inner.c.n).where(or_(*wanted))
    ).all():
        ranked.setdefault(provider, {})[int(rank) - 1] = float(value)
        counts[provider] = int(n)
    for provider, n in counts.items():
        out[provider] = {
            "n": n,
            **{f"p{round(q * 100)}": interpolate(ranked[provider], n, q) for q in QUANTILES},
        }
    return out


@dataclass
class ProviderStats:
    # provider -> window -> calls, accepted, errors, rejected, acceptance, error_rate,
    # and the accepted calls' parts and cost (None: no provider said)
    rates: dict[str, dict[str, dict[str, Any]]]
    to_accepted: dict[str, dict[str, dict[str, Any]]]  # window -> provider -> n, p50, p95
    to_delivered: dict[str, dict[str, dict[str, Any]]]
    spend: list[dict[str, Any]]  # provider, day, cost, parts, messages
    balances: list[dict[str, Any]]  # provider, at, amount, readings, errors
    balance_bucket_s: int


@contextmanager
def bounded(settings: Settings) -> Iterator[Session]:
    """A page's session: its SQL gives up after ``STATEMENT_TIMEOUT`` on PostgreSQL
    (the providers page reads every message of the last day), and the page answers
    503 rather than hang. Every ledger read of a page goes through one of these, the
    ones it asks of other modules (``ops.provider_rows``, ``callbacks.backlog``) too."""
    with session_scope(settings.database_url, statement_timeout=STATEMENT_TIMEOUT) as s:
        yield s


def provider_stats(settings: Settings, names: Sequence[str], now: datetime | None = None) -> ProviderStats:
    """Everything the providers page shows from the ledger, in one session."""
    now = now or utcnow()
    names = list(names)
    day_ago, hour_ago = now - WINDOWS["day"], now - WINDOWS["hour"]
    with bounded(settings) as s:
        dialect = s.get_bind().dialect.name
        recent = case((A.c.finished_at >= hour_ago, 1), else_=0)
        # ix_attempts_provider_finished serves the provider list and the time range.
        counted = s.execute(
            select(A.c.provider, A.c.outcome, recent, func.count(), func.sum(A.c.parts), func.sum(A.c.cost))
            .where(A.c.provider.in_(names), A.c.finished_at >= day_ago)
            .group_by(A.c.provider, A.c.outcome, recent)
        ).all()
        to_accepted = {w: percentiles(s, names, M.c.accepted_at, now - d) for w, d in WINDOWS.items()}
        to_delivered = {
            w: percentiles(s, names, M.c.final_at, now - d, delivered=True) for w, d in WINDOWS.items()
        }
        day = _day(A.c.finished_at, dialect)
        spend_rows = s.execute(
            select(A.c.provider, day, func.sum(A.c.cost), func.sum(A.c.parts), func.count())
            .where(A.c.provider.in_(names), A.c.finished_at >= now - timedelta(days=SPEND_DAYS),
                   A.c.outcome.in_(ACCEPTED))
            .group_by(A.c.provider, day)
            .order_by(day, A.c.provider)
        ).all()  # fmt: skip
        since = now - timedelta(days=BALANCE_DAYS)
        first, last = s.execute(
            select(func.min(B.c.at), func.max(B.c.at)).where(B.c.provider.in_(names), B.c.at >= since)
        ).one()
        balances: list[dict[str, Any]] = []
        size = 60
        if first is not None and last is not None:
            span = (_aware(last) - _aware(first)).total_seconds()
            # Buckets sized to the readings there are: a few minutes of them still draw a line.
            size = max(1, math.ceil(span / BALANCE_POINTS))
            bucket = func.floor(_epoch(B.c.at, dialect) / size)
            for provider, n, amount, readings, errors in s.execute(
                select(B.c.provider, bucket, func.avg(B.c.amount), func.count(), func.count(B.c.error))
                .where(B.c.provider.in_(names), B.c.at >= since)
                .group_by(B.c.provider, bucket)
                .order_by(bucket, B.c.provider)
            ).all():  # fmt: skip
                balances.append({
                    "provider": provider, "at": datetime.fromtimestamp(int(n) * size, UTC),
                    "amount": None if amount is None else round(float(amount), 2),
                    "readings": int(readings), "errors": int(errors),
                })  # fmt: skip
    rates: dict[str, dict[str, dict[str, Any]]] = {
        n: {
            w: {"calls": 0, "accepted": 0, "errors": 0, "rejected": 0, "parts": 0, "cost": None}
            for w in WINDOWS
        }
        for n in names
    }
    for provider, outcome, in_hour, count, parts, cost in counted:
        for window in ("hour", "day") if in_hour else ("day",):
            r = rates[provider][window]
            r["calls"] += int(count)
            if outcome in ACCEPTED:
                # What the provider reported it counted and charged for the calls it took.
                r["accepted"] += int(count)
                r["parts"] += int(parts or 0)
                if cost is not None:
                    r["cost"] = (r["cost"] or 0.0) + float(cost)
            elif outcome in ERRORS:
                r["errors"] += int(count)
            elif outcome in REFUSED:
                r["rejected"] += int(count)
    for per in rates.values():
        for r in per.values():
            r["acceptance"] = r["accepted"] / r["calls"] if r["calls"] else None
            r["error_rate"] = r["errors"] / r["calls"] if r["calls"] else None
            r["cost"] = None if r["cost"] is None else round(r["cost"], 4)
    spend = [
        {"provider": p, "day": str(d), "cost": None if c is None else round(float(c), 4),
         "parts": None if parts is None else int(parts), "messages": int(n)}
        for p, d, c, parts, n in spend_rows
    ]  # fmt: skip
    return ProviderStats(rates, to_accepted, to_delivered, spend, balances, size)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# -- queues -------------------------------------------------------------------------


def in_pipe(s: Session) -> dict[str, int]:
    """Messages per status not yet final (``ix_messages_status_due`` serves it), read
    in a page's session (``bounded``)."""
    found: dict[str, int] = dict(
        s.execute(
            select(M.c.status, func.count())
            .where(M.c.status.in_([st.value for st in IN_PIPE]))
            .group_by(M.c.status)
        ).all()
    )
    return {st.value: int(found.get(st.value, 0)) for st in IN_PIPE}
