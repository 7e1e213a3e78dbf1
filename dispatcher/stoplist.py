"""The stop list: numbers we must not send to (issue 13).

A number is listed with a scope: ``normal`` stops advertising and bulk (priority
"normal"), the opt-out 38-FZ makes us honour; ``all`` stops one-time codes too (a
number a provider's global blacklist refuses whatever we send). The source says who
listed it: ``operator``, ``client:NAME``, or ``provider:INSTANCE`` for a number a
provider refused as blacklisted (its code and text are the reason).

Phones are E.164 digits without the "+", as ``messages.to`` holds them; callers
normalize with ``dispatcher.validation.normalize_phone``. Every function works in the
caller's session, so a stop entry commits with whatever else the caller writes (the
send path adds a provider's blacklisted number in the transaction that rejects the
message).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from dispatcher.models import STOP_LIST, utcnow

SCOPES = ("normal", "all")
STOPPED = "stopped"  # the error of a message refused because its number is listed
# Sources whose add may widen an entry but never narrow it: a provider's refusal says
# the number is blocked at least this much, not that an operator's wider scope is wrong.
PROVIDER_SOURCE = "provider:"
CHUNK = 1000  # phones per IN (...): well under SQLite's and PostgreSQL's parameter limits
_PHONE = re.compile(r"[1-9][0-9]{0,14}")  # ASCII only: str.isdigit() takes "²" too
_SOURCE_MAX = 80  # models.StopEntry.source


def _check(phone: str, scope: str = "normal", source: str = "operator") -> None:
    if not isinstance(phone, str) or not _PHONE.fullmatch(phone):
        raise ValueError(f"phone {phone!r}: E.164 digits without the +, as normalize_phone gives them")
    if scope not in SCOPES:
        raise ValueError(f"scope {scope!r}: one of {', '.join(SCOPES)}")
    if not source or len(source) > _SOURCE_MAX:
        raise ValueError(f"source {source!r}: 1 to {_SOURCE_MAX} characters")


def _insert(session: Session) -> Any:
    """The dialect's INSERT, the one with ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(STOP_LIST)


def stopped(session: Session, phones: Collection[str]) -> dict[str, str]:
    """phone -> scope for those of ``phones`` that are listed: one query per 1000."""
    wanted = sorted(set(phones))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), CHUNK):
        rows = session.execute(
            select(STOP_LIST.c.phone, STOP_LIST.c.scope).where(
                STOP_LIST.c.phone.in_(wanted[start : start + CHUNK])
            )
        ).all()
        found.update({phone: scope for phone, scope in rows})
    return found


def blocks(scope: str, priority: str) -> bool:
    """Whether an entry of ``scope`` stops a message of ``priority``: a ``normal``
    entry stops normal-priority traffic only; ``all`` stops one-time codes too."""
    if scope == "all":
        return True
    return scope == "normal" and priority == "normal"


def add(
    session: Session,
    phone: str,
    *,
    scope: str = "normal",
    source: str = "operator",
    reason: str | None = None,
    only_if_source: str | None = None,
) -> bool:
    """List ``phone``; True when it was not listed before.

    An existing entry: a provider-sourced add only widens it (``normal`` -> ``all``,
    taking the new source and reason then) and never narrows it; any other add
    (operator, client) sets the scope as given, and the source, keeping the old reason
    when none is given. ``created_at`` stays the first listing's. ``only_if_source``:
    an existing entry is changed only if it has that source (a client may not take
    over, narrow or later delete an entry someone else made); decided in the write
    itself, so two clients listing a number at once cannot both win.
    """
    _check(phone, scope, source)
    reason = clean_reason(reason)
    now = utcnow()
    # RETURNING names the rows inserted: rowcount is -1 for an INSERT under psycopg.
    inserted = session.execute(
        _insert(session)
        .values(phone=phone, scope=scope, source=source, reason=reason, created_at=now)
        .on_conflict_do_nothing(index_elements=[STOP_LIST.c.phone])
        .returning(STOP_LIST.c.phone)
    ).all()
    if inserted:
        return True
    # Listed already (the INSERT above changed nothing and raced nobody: a conflict).
    if source.startswith(PROVIDER_SOURCE):
        if scope == "all":
            session.execute(
                update(STOP_LIST)
                .where(STOP_LIST.c.phone == phone, STOP_LIST.c.scope != "all")
                .values(scope="all", source=source, reason=reason)
            )
        return False
    mine = [STOP_LIST.c.source == only_if_source] if only_if_source is not None else []
    session.execute(
        update(STOP_LIST)
        .where(STOP_LIST.c.phone == phone, *mine)
        .values(scope=scope, source=source, reason=STOP_LIST.c.reason if reason is None else reason)
    )
    return False


MAX_REASON = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_reason(reason: str | None) -> str | None:
    """A reason fit to store and print: a provider's reply text may carry control
    characters (a terminal escape in `stop list`) and be of any length."""
    if reason is None:
        return None
    return _CONTROL.sub("\ufffd", reason)[:MAX_REASON]


def add_many(
    session: Session, entries: Sequence[tuple[str, str, str | None]], *, scope: str = "normal"
) -> int:
    """List many numbers from providers' reports at once: ``(phone, source, reason)``
    each, all with ``scope``. Widen-only, as ``add`` is for a provider: an entry already
    listed stays as it is unless this add widens it to ``all``. Returns how many numbers
    were newly listed. A phone given twice counts once (its first source and reason).
    Rows go in phone order, so two such adds in parallel cannot deadlock."""
    first: dict[str, tuple[str, str | None]] = {}
    for phone, source, reason in entries:
        _check(phone, scope, source)
        first.setdefault(phone, (source, clean_reason(reason)))
    if not first:
        return 0
    now = utcnow()
    rows = [
        {"phone": p, "scope": scope, "source": s, "reason": r, "created_at": now}
        for p, (s, r) in sorted(first.items())
    ]
    new = 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        new += len(
            session.execute(
                _insert(session)
                .values(chunk)
                .on_conflict_do_nothing(index_elements=[STOP_LIST.c.phone])
                .returning(STOP_LIST.c.phone)
            ).all()
        )
    if scope == "all":
        # Those listed before as `normal` are widened; the rows just inserted already
        # say `all` and match nothing here.
        for row in rows:
            session.execute(
                update(STOP_LIST)
                .where(STOP_LIST.c.phone == row["phone"], STOP_LIST.c.scope != "all")
                .values(scope="all", source=row["source"], reason=row["reason"])
            )
    return new


def remove(session: Session, phone: str, *, only_if_source: str | None = None) -> bool:
    """Take ``phone`` off the list; True when it was listed (with that source, when
    ``only_if_source`` is given: a client removes only what it added)."""
    _check(phone)
    mine = [STOP_LIST.c.source == only_if_source] if only_if_source is not None else []
    done = session.execute(delete(STOP_LIST).where(STOP_LIST.c.phone == phone, *mine))
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def entries(
    session: Session,
    *,
    source: str | None = None,
    source_prefix: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Listed numbers in phone order, ``limit`` of them after the phone ``after``
    (keyset paging: pass the last phone of a page to get the next), only those whose
    source is ``source`` (``client:shop``) or starts with ``source_prefix``
    (``provider:``) when given.
    Each is a dict of phone, scope, source, reason and created_at (aware UTC)."""
    if not 1 <= limit <= 10000:
        raise ValueError(f"limit {limit}: from 1 to 10000")
    query = select(
        STOP_LIST.c.phone, STOP_LIST.c.scope, STOP_LIST.c.source, STOP_LIST.c.reason, STOP_LIST.c.created_at
    )
    if source is not None:
        query = query.where(STOP_LIST.c.source == source)
    if source_prefix:
        # A literal prefix: "%" and "_" in it match themselves.
        escaped = source_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(STOP_LIST.c.source.like(escaped + "%", escape="\\"))
    if after is not None:
        query = query.where(STOP_LIST.c.phone > after)
    rows = session.execute(query.order_by(STOP_LIST.c.phone).limit(limit)).mappings().all()
    return [dict(r) for r in rows]


def count(session: Session) -> int:
    """How many numbers are listed."""
    return int(session.execute(select(func.count()).select_from(STOP_LIST)).scalar_one())
