"""Ledger operations. Every status change goes through ``transition``: a
compare-and-set on the current status, checked against ``status.can_transition``,
with a ``StatusEvent`` written in the same transaction. Nothing else writes
``messages.status``."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from dispatcher import callbacks, metrics
from dispatcher.decisions import Action, Decision
from dispatcher.models import (
    ATTEMPTS,
    BULK_REQUESTS,
    EVENTS,
    MESSAGES,
    STOP_LIST,
    Attempt,
    BulkRequest,
    Message,
    StatusEvent,
    utcnow,
)
from dispatcher.redact import redact
from dispatcher.status import Status, can_transition
from dispatcher.validation import NewMessage


def _bulk_update(
    session: Session,
    table: Table,
    key: str,
    rows: Sequence[dict[str, Any]],
    fixed: dict[str, Any],
    *,
    where: Sequence[ColumnElement[bool]] = (),
    keep_if_null: frozenset[str] = frozenset(),
    match: Mapping[str, str] | None = None,
) -> list[Any] | None:
    """UPDATE many rows, each with its own values: ``rows`` are ``{key: ..., column:
    value}`` with the same columns, ``fixed`` applies to all. On PostgreSQL one
    statement, ``UPDATE ... FROM unnest(arrays)``, returning the keys it matched: an
    executemany is a statement per row there, and it was the largest part of a
    200-message batch's write-back in the profile. Elsewhere (SQLite, local and
    cheap per statement) an executemany, which cannot say what matched: None.
    Columns in ``keep_if_null`` keep their value where the row's new one is None.
    ``match`` maps row keys to columns each row must still hold (a compare-and-set:
    ``{"_old": "status"}``); those keys are compared, not written."""
    match = match or {}
    names = [n for n in rows[0] if n != key and n not in match]
    checks = list(match)
    if session.get_bind().dialect.name == "postgresql":
        # One array parameter per column, unnested into rows: the statement's text is
        # the same for every batch, so SQLAlchemy compiles it once (a VALUES list with
        # the data in it was compiled anew each time, slower than the round trips).
        types = {n: table.c[match.get(n, n)].type for n in [key, *names, *checks]}
        arrays = [
            bindparam(f"v_{n}", [r[n] for r in rows], type_=ARRAY(types[n])) for n in [key, *names, *checks]
        ]
        v = func.unnest(*arrays).table_valued(*[key, *names, *checks]).render_derived(name="v")
        statement = (
            update(table)
            .where(table.c[key] == v.c[key], *where, *(table.c[match[n]] == v.c[n] for n in checks))
            .values(
                **fixed,
                **{n: func.coalesce(v.c[n], table.c[n]) if n in keep_if_null else v.c[n] for n in names},
            )
            .returning(table.c[key])
        )
        return list(session.execute(statement).scalars())
    many = (
        update(table)
        .where(
            table.c[key] == bindparam(f"v_{key}"),
            *where,
            *(table.c[match[n]] == bindparam(f"v_{n}") for n in checks),
        )
        .values(
            **fixed,
            **{
                n: func.coalesce(bindparam(f"v_{n}"), table.c[n])
                if n in keep_if_null
                else bindparam(f"v_{n}")
                for n in names
            },
        )
    )
    session.connection().execute(many, [{f"v_{n}": r[n] for n in [key, *names, *checks]} for r in rows])
    return None


def new_id() -> str:
    return uuid.uuid4().hex


def insert_messages(
    session: Session, items: Sequence[NewMessage], *, source: str = "producer",
    rejected: Mapping[int, tuple[str, str]] | None = None,
) -> list[str]:  # fmt: skip
    """Insert validated messages with their first event; returns the ids in order.
    ``rejected``: indexes of items refused before any send (the stop list), each
    with its error (what a client looks for: ``stopped``) and the event's detail;
    they are stored ``rejected`` and never published, and counted refused at the door
    (``task`` when ``source`` is ``task``, else ``api``) once the transaction commits."""
    now = utcnow()
    rows: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    refused = rejected or {}
    for n, item in enumerate(items):
        mid = new_id()
        status = Status.REJECTED if n in refused else Status.SCHEDULED if item.send_at else Status.QUEUED
        error, why = refused.get(n, (None, None))
        rows.append(
            {
                "id": mid,
                "key": item.key,
                "payload_hash": item.payload_hash(),
                "to": item.to,
                "region": item.region,
                "text": item.text,
                "sender": item.sender,
                "priority": item.priority,
                "provider_pinned": item.provider,
                "parts": item.parts,
                "encoding": item.encoding,
                "status": status.value,
                "attempts": 0,
                "retries": 0,
                "failovers": 0,
                "tried": "",
                "polls": 0,
                "created_at": now,
                "updated_at": now,
                "send_at": item.send_at,
                "expires_at": item.expires_at,
                "due_at": item.send_at or now,
                "published_for": None if item.send_at or why else now,
                "client": item.client,
                "callback_url": item.callback_url,
                "callback_task": item.callback_task,
                "last_error": error,
                "final_at": now if why else None,
            }
        )
        events.append(
            {"message_id": mid, "at": now, "old_status": None, "new_status": status.value, "source": source,
             "detail": why}
        )  # fmt: skip
    if rows:
        # Bulk statements: one round trip per table, not one per message.
        session.execute(insert(MESSAGES), rows)
        session.execute(insert(EVENTS), events)
        told = [r["id"] for r in rows if r["status"] == Status.REJECTED.value]
        if told:  # a refusal at intake is the one first status an app must hear of
            callbacks.record(session, told, now)
            metrics.count_ends(session, [(None, Status.REJECTED)] * len(told))
            # Stored, but refused at the door (the stop list): counted as it commits.
            door = "task" if source == "task" else "api"
            metrics.count_on_commit(session, metrics.REFUSED, [((door, "stopped"), len(told))])
    return [r["id"] for r in rows]


def _calls_back(old: Status | None, new: Status) -> bool:
    """Whether a status change goes to the message's callback: every change but the
    pipeline's own churn (a claim to ``sending``, and back to ``queued`` for a retry),
    which says nothing an app can act on and would triple the callbacks."""
    return new != Status.SENDING and not (old == Status.SENDING and new == Status.QUEUED)


def find_by_keys(session: Session, keys: Iterable[str]) -> dict[str, Message]:
    keys = [k for k in keys if k]
    if not keys:
        return {}
    found = session.exec(orm_select(Message).where(col(Message.key).in_(keys)))
    return {m.key: m for m in found if m.key}


def get(session: Session, message_id: str) -> Message | None:
    return session.get(Message, message_id)


def transition(
    session: Session,
    message_id: str,
    new: Status,
    *,
    source: str,
    expect: Iterable[Status] | None = None,
    provider: str | None = None,
    raw: str | None = None,
    detail: str | None = None,
    fields: dict[str, Any] | None = None,
    by_operator: bool = False,
) -> Status | None:
    """Move a message to ``new`` if the rules allow it from its current status (and
    it is one of ``expect`` when given). Returns the old status, or None when the
    move was not made (a final status, a backwards move, or another worker won)."""
    allowed = set(expect) if expect is not None else None
    for _ in range(5):
        row = session.execute(
            select(MESSAGES.c.status, MESSAGES.c.provider).where(MESSAGES.c.id == message_id)
        ).first()
        if row is None:
            return None
        current = Status(row.status)
        if not can_transition(current, new, by_operator=by_operator) or (
            allowed is not None and current not in allowed
        ):
            return None
        now = utcnow()
        values: dict[str, Any] = {"status": new.value, "updated_at": now, **(fields or {})}
        if new.is_final:
            values.setdefault("final_at", now)
        elif current.is_final:
            values.setdefault("final_at", None)
        result = session.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == message_id, MESSAGES.c.status == current.value)
            .values(**values)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.execute(
                insert(EVENTS).values(
                    message_id=message_id,
                    at=now,
                    old_status=current.value,
                    new_status=new.value,
                    source=source,
                    provider=provider,
                    raw=redact(raw) if raw else raw,
                    detail=redact(detail) if detail else detail,
                )
            )
            if _calls_back(current, new):
                callbacks.record(session, [message_id], now)
            metrics.count_ends(session, [(values.get("provider") or row.provider or provider, new)])
            return current
        # Another worker changed it between our read and our write: look again.
    return None


def update_fields(session: Session, message_id: str, **fields: Any) -> None:
    fields.setdefault("updated_at", utcnow())
    session.execute(update(MESSAGES).where(MESSAGES.c.id == message_id).values(**fields))


def attempts_of(session: Session, message_id: str) -> list[Attempt]:
    return list(
        session.exec(
            orm_select(Attempt).where(col(Attempt.message_id) == message_id).order_by(col(Attempt.id))
        )
    )


def events_of(session: Session, message_id: str) -> list[StatusEvent]:
    return list(
        session.exec(
            orm_select(StatusEvent)
            .where(col(StatusEvent.message_id) == message_id)
            .order_by(col(StatusEvent.id))
        )
    )


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(MESSAGES.c.status, func.count()).group_by(MESSAGES.c.status)).all()
    return {status: n for status, n in rows}


def transition_many(
    session: Session,
    changes: Sequence[dict[str, Any]],
    new: Status,
    *,
    expect: Status,
    source: str,
    provider: str | None = None,
    due_before: datetime | None = None,
    also: dict[str, Any] | None = None,
    notify: Collection[str] | None = None,
) -> list[str]:
    """The bulk form of ``transition`` for messages all in ``expect``: one UPDATE
    and one INSERT of events. Each change is ``{"id": ..., **fields}`` and may carry
    ``_raw`` and ``_detail`` for its event; ``also`` holds fields set alike on all.
    Returns the ids moved; the others had left ``expect`` (another worker, a final
    status) and are untouched. ``notify``: the ids known to have a callback (the
    send path knows from the claim); None looks them up in the outbox statement."""
    if not can_transition(expect, new):
        raise ValueError(f"{expect.value} -> {new.value} is not an allowed transition")
    if not changes:
        return []
    now = utcnow()
    moved: list[str] = []
    field_names = sorted({k for c in changes for k in c if k not in ("id", "_raw", "_detail")})
    ids = [c["id"] for c in changes]
    fixed: dict[str, Any] = {"status": new.value, "updated_at": now, **(also or {})}
    if new.is_final:
        fixed["final_at"] = now
    if not field_names:
        # The claim: one statement for all, RETURNING the rows it took.
        query = (
            update(MESSAGES)
            .where(MESSAGES.c.id.in_(ids), MESSAGES.c.status == expect.value)
            .values(**fixed)
            .returning(MESSAGES.c.id)
        )
        if due_before is not None:
            query = query.where(MESSAGES.c.due_at <= due_before)
        moved = list(session.execute(query).scalars().all())
    else:
        rows = [{"id": c["id"], **{n: c.get(n) for n in field_names}} for c in changes]
        matched = _bulk_update(
            session, MESSAGES, "id", rows, fixed, where=[MESSAGES.c.status == expect.value]
        )
        if matched is None:  # an executemany cannot say which rows matched: re-read them
            matched = list(
                session.execute(
                    select(MESSAGES.c.id).where(MESSAGES.c.id.in_(ids), MESSAGES.c.status == new.value)
                ).scalars()
            )
        moved = matched
    by_id = {c["id"]: c for c in changes}
    if moved:
        session.execute(
            insert(EVENTS),
            [
                {
                    "message_id": mid, "at": now, "old_status": expect.value, "new_status": new.value,
                    "source": source, "provider": provider,
                    "raw": redact(by_id[mid].get("_raw")) if by_id[mid].get("_raw") else None,
                    "detail": redact(by_id[mid]["_detail"]) if by_id[mid].get("_detail") else None,
                }
                for mid in moved
            ],
        )  # fmt: skip
        told = moved if notify is None else [m for m in moved if m in notify]
        if told and _calls_back(expect, new):
            callbacks.record(session, told, now)
        if new in metrics.ENDS:
            # The provider a change names, else the one all of them share.
            shared = (also or {}).get("provider") or provider
            metrics.count_ends(session, [(by_id[mid].get("provider") or shared, new) for mid in moved])
    return moved


# -- the send path: claim a group, start its attempts, apply its decisions -------------


@dataclass
class Claimed:
    """A message this worker holds (``sending``): what the send path needs of its row,
    read once, by the statement that claimed it."""

    id: str
    to: str
    text: str
    sender: str | None
    priority: str
    provider_pinned: str | None
    attempts: int
    retries: int
    failovers: int
    tried: str
    expires_at: datetime
    last_error: str | None
    # An operator asked to cancel it while a call was in doubt or in flight.
    cancel_requested_at: datetime | None
    # It has a callback: its status changes go to the outbox. Known from the claim, so
    # a group without one costs no outbox statement at all.
    calls_back: bool = False
    # The scope of its number's stop-list entry, if it has one: a number listed after
    # the message was stored is honoured when it is claimed, at no extra statement.
    stop_scope: str | None = None

    @property
    def tried_set(self) -> set[str]:
        return set(filter(None, self.tried.split(",")))


_CLAIMED = [
    *(MESSAGES.c[n] for n in Claimed.__dataclass_fields__ if n not in ("calls_back", "stop_scope")),
    # Through coalesce: SQLite 3.40 answers `column IS NOT NULL` wrongly in an UPDATE's
    # RETURNING (1 for a NULL column; checked by hand), while a function of it is right.
    func.coalesce(MESSAGES.c.callback_url, MESSAGES.c.callback_task).is_not(None).label("calls_back"),
    select(STOP_LIST.c.scope).where(STOP_LIST.c.phone == MESSAGES.c.to).scalar_subquery().label("stop_scope"),
]


def _claimed(rows: Iterable[Any]) -> list[Claimed]:
    return [Claimed(*row) for row in rows]


def claim(session: Session, ids: Sequence[str], now: datetime, *, due_before: datetime,
          source: str = "send", skip_locked: bool = False) -> list[Claimed]:  # fmt: skip
    """``queued`` and due -> ``sending`` for those of ``ids`` still so, in one
    statement that returns what the send path needs; one INSERT of their events.
    A message another worker holds, or not yet due, is left alone. ``skip_locked``
    (PostgreSQL): leave a row another transaction has locked instead of waiting for
    it, for a caller that already holds other rows (waiting could deadlock)."""
    if skip_locked and ids and session.get_bind().dialect.name == "postgresql":
        free = select(MESSAGES.c.id).where(MESSAGES.c.id.in_(list(ids))).with_for_update(skip_locked=True)
        ids = list(session.execute(free).scalars())
    if not ids:
        return []
    rows = session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id.in_(list(ids)), MESSAGES.c.status == Status.QUEUED.value,
               MESSAGES.c.due_at <= due_before)
        .values(status=Status.SENDING.value, claimed_at=now, updated_at=now)
        .returning(*_CLAIMED)
    ).all()  # fmt: skip
    claimed = _claimed(rows)
    _events(session, [c.id for c in claimed], Status.QUEUED, Status.SENDING, source, now)
    return claimed


def peek(session: Session, message_id: str) -> Claimed | None:
    """A message's fields as a claim would return them, without claiming or locking it."""
    row = session.execute(select(*_CLAIMED).where(MESSAGES.c.id == message_id)).first()
    return _claimed([row])[0] if row is not None else None


def claim_mates(session: Session, like: Claimed, now: datetime, limit: int,
                keep: Callable[[str], bool]) -> list[Claimed]:  # fmt: skip
    """Claim up to ``limit`` queued, due, never-tried messages that may share a
    provider call with ``like`` (``like`` itself among them, when it is still free):
    same priority, pinned alike, oldest first, and ``keep(id)`` (their first choice is
    the same provider). On PostgreSQL the candidates are locked with SKIP LOCKED, so
    lingering workers never wait on each other, and the one that runs first takes
    them all: had each first claimed its own message, workers waking together would
    each hold one and skip the rest, and send one call each. SQLite's write lock
    (BEGIN IMMEDIATE) already makes this one step."""
    query = (
        select(MESSAGES.c.id)
        .where(
            MESSAGES.c.status == Status.QUEUED.value,
            MESSAGES.c.due_at <= now,
            MESSAGES.c.priority == like.priority,
            MESSAGES.c.attempts == 0,
            MESSAGES.c.provider_pinned == like.provider_pinned
            if like.provider_pinned
            else MESSAGES.c.provider_pinned.is_(None),
        )
        .order_by(MESSAGES.c.due_at)
        .limit(2 * limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = [m for m in session.execute(query).scalars() if keep(m)][:limit]
    return claim(session, ids, now, due_before=now)


def reclaim_stale(session: Session, message_id: str, now: datetime, stale_before: datetime) -> Claimed | None:
    """Take over a message left ``sending`` by a worker that died: its claim is older
    than any call could take. Returns None when it is not (any longer) so."""
    row = session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == message_id, MESSAGES.c.status == Status.SENDING.value,
               MESSAGES.c.claimed_at < stale_before)
        .values(claimed_at=now, updated_at=now)
        .returning(*_CLAIMED)
    ).first()  # fmt: skip
    return _claimed([row])[0] if row is not None else None


def renew_claims(session: Session, message_ids: Sequence[str], now: datetime) -> None:
    """Keep the claims of messages whose calls are still coming fresh (one UPDATE)."""
    session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id.in_(list(message_ids)), MESSAGES.c.status == Status.SENDING.value)
        .values(claimed_at=now)
    )


def find_bulk_request(session: Session, key: str) -> BulkRequest | None:
    return session.get(BulkRequest, key)


def add_bulk_request(session: Session, key: str, payload_hash: str, ids: Sequence[str]) -> None:
    """Tie a bulk call's key to its payload, in the transaction that stores it: a
    concurrent call with the same key then fails on the primary key and looks again."""
    session.execute(
        insert(BULK_REQUESTS).values(
            key=key, payload_hash=payload_hash, message_ids=json.dumps(list(ids)), created_at=utcnow()
        )
    )


def request_cancel(session: Session, message_id: str, now: datetime) -> bool:
    """Record an operator's cancel of a message a worker holds or whose last call is
    in doubt: the send path settles that call, then cancels instead of sending again.
    False when the message has moved on (taken, final) meanwhile."""
    result = session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id == message_id,
               MESSAGES.c.status.in_([Status.QUEUED.value, Status.SENDING.value]))
        .values(cancel_requested_at=now, updated_at=now)
    )  # fmt: skip
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def cancel_requests(session: Session, message_ids: Sequence[str]) -> dict[str, bool]:
    """Which of ``message_ids`` an operator asked to cancel, each with whether one of
    its calls got no reply (``ambiguous``: it may have gone through)."""
    if not message_ids:
        return {}
    silent = (
        select(ATTEMPTS.c.id)
        .where(ATTEMPTS.c.message_id == MESSAGES.c.id, ATTEMPTS.c.outcome == "ambiguous")
        .exists()
    )
    rows = session.execute(
        select(MESSAGES.c.id, silent).where(
            MESSAGES.c.id.in_(list(message_ids)), MESSAGES.c.cancel_requested_at.is_not(None)
        )
    ).all()
    return {str(mid): bool(maybe) for mid, maybe in rows}


def open_attempts(session: Session, message_ids: Sequence[str]) -> dict[str, Attempt]:
    """The latest attempt still in flight or left unconfirmed, per message that has one."""
    if not message_ids:
        return {}
    found = session.exec(
        orm_select(Attempt)
        .where(col(Attempt.message_id).in_(list(message_ids)),
               col(Attempt.outcome).in_(["in_flight", "unconfirmed"]))
        .order_by(col(Attempt.id))
    )  # fmt: skip
    return {a.message_id: a for a in found}


def start_attempts(session: Session, calls: Sequence[tuple[str, str, str]], now: datetime) -> dict[str, int]:
    """Record provider calls before they go out (``(message id, provider, kind)``),
    so a crash leaves a trace of each: one INSERT, one UPDATE of the counters.
    Returns the attempt id per message."""
    if not calls:
        return {}
    rows = session.execute(
        insert(ATTEMPTS).returning(ATTEMPTS.c.id, ATTEMPTS.c.message_id),
        [{"message_id": m, "provider": p, "kind": k, "started_at": now, "outcome": "in_flight"}
         for m, p, k in calls],
    ).all()  # fmt: skip
    session.execute(
        update(MESSAGES)
        .where(MESSAGES.c.id.in_([m for m, _, _ in calls]))
        .values(attempts=MESSAGES.c.attempts + 1, updated_at=now)
    )
    return {message_id: attempt_id for attempt_id, message_id in rows}


def _events(
    session: Session, ids: Sequence[str], old: Status, new: Status, source: str, now: datetime
) -> None:
    if ids:
        session.execute(
            insert(EVENTS),
            [{"message_id": m, "at": now, "old_status": old.value, "new_status": new.value, "source": source,
              "provider": None, "raw": None, "detail": None} for m in ids],
        )  # fmt: skip


def apply(session: Session, decisions: Sequence[Decision], now: datetime, *,
          first_poll: Callable[[str], float], source: str = "send",
          notify: Collection[str] | None = None) -> list[str]:  # fmt: skip
    """Apply one step's decisions for a group of ``sending`` messages: finish their
    attempts, move each message as its action says, write the events. A handful of
    set-based statements whatever the group's size. Returns the ids that moved to
    ``queued`` (their tasks are to be published). ``first_poll(provider)``: seconds
    from acceptance to an accepted message's first status poll. ``notify``: as for
    ``transition_many``."""
    _finish_attempts(session, [d for d in decisions if d.attempt_id is not None and d.attempt_outcome], now)
    for action, counter in ((Action.RETRY, metrics.RETRIES), (Action.FAIL_OVER, metrics.FAILOVERS)):
        tally = Counter((d.provider or metrics.NO_PROVIDER,) for d in decisions if d.action == action)
        metrics.count_on_commit(session, counter, tally.items())
    moves: dict[tuple[Status, str], list[dict[str, Any]]] = defaultdict(list)
    stays: list[dict[str, Any]] = []
    for d in decisions:
        status, fields = _change(d, now, first_poll)
        change = {"id": d.message_id, **fields}
        if status is None:
            stays.append(change)
        else:
            moves[(status, d.provider or "")].append(change)
    if stays:
        _bulk_update(session, MESSAGES, "id", stays, {"updated_at": now},
                     where=[MESSAGES.c.status == Status.SENDING.value])  # fmt: skip
    requeued: list[str] = []
    for (status, provider), changes in moves.items():
        # One statement per shape of change: transition_many wants the same columns.
        by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
        for c in changes:
            by_shape[tuple(sorted(c))].append(c)
        for same in by_shape.values():
            moved = transition_many(session, same, status, expect=Status.SENDING, source=source,
                                    provider=provider or None, notify=notify)  # fmt: skip
            if status == Status.QUEUED:
                requeued += moved
    return requeued


def _change(
    d: Decision, now: datetime, first_poll: Callable[[str], float]
) -> tuple[Status | None, dict[str, Any]]:
    """What ``d`` does to its message's row: the new status (None: it stays
    ``sending``) and the fields it sets. ``_raw`` and ``_detail`` go to the event."""
    counters = {k: v for k, v in (("retries", d.retries), ("failovers", d.failovers), ("tried", d.tried))
                if v is not None}  # fmt: skip
    if d.action == Action.ACCEPT:
        taken = d.status if d.status not in (None, Status.UNKNOWN, Status.QUEUED, Status.SENDING) else None
        return taken or Status.ACCEPTED, {
            "provider": d.provider, "provider_message_id": d.provider_message_id, "accepted_at": now,
            "next_poll_at": now + timedelta(seconds=first_poll(d.provider or "")), "retries": 0, "tried": "",
            "last_error": None, "_raw": d.raw, "_detail": d.reason or None,
        }  # fmt: skip
    if d.action in (Action.REJECT, Action.MARK_UNKNOWN):
        refused = Status.REJECTED if d.action == Action.REJECT else Status.UNKNOWN
        return refused, {"provider": d.provider, "last_error": _last_error(d), "_raw": d.code,
                         "_detail": f"{d.reason}: {d.error}" if d.error else d.reason}  # fmt: skip
    if d.action == Action.GIVE_UP:
        return d.status or Status.FAILED, {"last_error": _last_error(d), "_detail": d.reason}
    if d.action in (Action.RETRY, Action.WAIT, Action.EXHAUSTED):
        due = now + timedelta(seconds=d.delay)
        word = {Action.RETRY: "retry", Action.WAIT: "wait", Action.EXHAUSTED: "next round"}[d.action]
        return Status.QUEUED, {
            **counters, "due_at": due, "published_for": due if d.extra.get("publish") else None,
            "claimed_at": None, "last_error": d.error or d.reason,
            "_detail": f"{word} in {d.delay:.1f}s: {d.reason}" + (f": {d.error}" if d.error else ""),
        }  # fmt: skip
    # FAIL_OVER, RESEND, ASK: the message stays with this worker; only counters move.
    return None, {**counters, "last_error": d.error or d.reason}


def _last_error(d: Decision) -> str:
    # A decision that overrides the call's own word (an operator's cancel) says why first.
    said = d.extra.get("last_error")
    return str(said) if said else (d.error or d.reason)


def _finish_attempts(session: Session, decisions: Sequence[Decision], now: datetime) -> None:
    if not decisions:
        return
    rows = [
        {"id": d.attempt_id, "outcome": d.attempt_outcome, "finished_at": now,
         "duration_ms": (now - d.attempt_started).total_seconds() * 1000.0 if d.attempt_started else None,
         "http_status": d.http_status, "provider_code": d.code,
         "raw": redact(d.raw) if d.raw else d.raw, "error": redact(d.error) if d.error else d.error,
         "parts": d.parts, "cost": d.cost}
        for d in decisions
    ]  # fmt: skip
    # A settle (asked by our id, or the guarantee) keeps the wire context of the call.
    _bulk_update(
        session,
        ATTEMPTS,
        "id",
        rows,
        {},
        keep_if_null=frozenset({"http_status", "provider_code", "raw", "error", "parts", "cost"}),
    )


# The statements of delivery tracking live in a module of their own, on the primitives
# above (``_bulk_update``); imported last, so that they find those defined.
from dispatcher.ledger.polls import (  # noqa: E402
    POLLED,
    Horizon,
    Move,
    PollClaim,
    PollResult,
    apply_polls,
    apply_reports,
    claim_polls,
    due_polls,
    expire_unasked,
    record_balances,
    release_polls,
    transition_rows,
    walk,
)

__all__ = [
    "POLLED", "Claimed", "Horizon", "Move", "PollClaim", "PollResult", "apply", "apply_polls",
    "apply_reports", "claim", "claim_polls", "due_polls", "expire_unasked", "record_balances",
    "release_polls", "transition_rows", "walk",
]  # fmt: skip
