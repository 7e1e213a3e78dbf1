"""The producers' Python API: ``send_sms``, ``send_bulk``, ``get_message``.

A message is validated, then committed to the ledger, then published to the broker:
no task can see a row that is not there yet. If publishing fails (the broker is
down), the row stays ``queued`` and the sweeper publishes it when the broker is back,
so a message accepted here is never lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError

from dispatcher import intake, ledger, metrics
from dispatcher.config import Settings, get_settings
from dispatcher.db import session_scope
from dispatcher.errors import IdempotencyConflict, ValidationError
from dispatcher.keys import public_key, scoped_key
from dispatcher.models import utcnow
from dispatcher.validation import MAX_TTL, NewMessage, validate

log = logging.getLogger("smsdispatch.api")

FIELDS = (
    "to",
    "text",
    "sender",
    "key",
    "at",
    "ttl",
    "priority",
    "provider",
    "callback_url",
    "callback_task",
    "tz",
)

# (message id, priority, pinned provider or None)
PublishMany = Callable[[Sequence[tuple[str, str, str | None]]], None]
_publisher: PublishMany | None = None


def use_publisher(publisher: PublishMany | None) -> None:
    """Publish through ``publisher`` instead of Celery (the embedded runner); None
    goes back to Celery."""
    global _publisher
    _publisher = publisher


def _validate_many(settings: Settings, messages: Iterable[Mapping[str, Any]], bulk: bool) -> list[NewMessage]:
    items = []
    for i, fields in enumerate(messages):
        prefix = f"messages[{i}]." if bulk else ""
        if not isinstance(fields, Mapping):
            raise ValidationError(f"messages[{i}]", "expected an object with to and text")
        for name in fields:
            if name not in FIELDS:
                raise ValidationError(f"{prefix}{name}", f"unknown field (known: {', '.join(FIELDS)})")
        if "to" not in fields:
            raise ValidationError(f"{prefix}to", "missing")
        if "text" not in fields:
            raise ValidationError(f"{prefix}text", "missing")
        items.append(validate(settings, prefix=prefix, **dict(fields)))
    return items


@dataclass(frozen=True)
class Stored:
    ids: list[str]  # one per item, in order
    fresh: list[int]  # indexes of the items newly stored (the others existed already)
    due: list[tuple[str, str, str | None]]  # the new ones to publish now: (id, priority, pinned)


def store(
    items: Sequence[NewMessage], *, source: str = "producer", bulk: bool = False, bulk_key: str | None = None,
    client: str | None = None,
) -> Stored:  # fmt: skip
    """Commit validated messages, honouring idempotency keys, the client's rules, the
    stop list and the limits (``dispatcher.intake``). ``bulk_key``: the call's own
    key, tied to the hash of all its items. ``client``: the client sending them."""
    # Each collision means another producer committed the key first (progress), so it
    # cannot go on for ever; with many overlapping calls one may lose several times in
    # a row. A time budget, not a count, bounds a database that keeps failing.
    deadline = time.monotonic() + _STORE_BUDGET
    while True:
        try:
            return _store_once(items, source, bulk, bulk_key, client)
        except IntegrityError:
            # Another producer stored the same key between our look-up and insert:
            # look again, and this time the existing row answers.
            pass
        except DBAPIError as exc:
            # Two overlapping bulk calls on PostgreSQL: the rows are inserted in key
            # order so that they queue rather than deadlock, but a serialization
            # failure or deadlock is still the database asking us to run it again.
            if getattr(exc.orig, "sqlstate", None) not in _RUN_AGAIN:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError("could not store messages: idempotency keys kept colliding")


_STORE_BUDGET = 10.0  # seconds
_RUN_AGAIN = {"40P01", "40001"}  # deadlock_detected, serialization_failure


def bulk_hash(items: Sequence[NewMessage]) -> str:
    """The whole payload of a bulk call: every item as it was given, in order."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.key or ''}\x00{item.payload_hash()}\n".encode())
    return digest.hexdigest()


def _store_once(
    items: Sequence[NewMessage], source: str, bulk: bool, bulk_key: str | None, client_name: str | None
) -> Stored:
    ids: list[str | None] = [None] * len(items)
    fresh: list[int] = []
    settings = get_settings()
    now = utcnow()
    prefixes = [f"messages[{n}]." if bulk else "" for n in range(len(items))]
    with session_scope() as s:
        client = intake.live_client(s, client_name) if client_name is not None else None
        items = intake.shape(settings, items, client, prefixes, now)
        bulk_key = scoped_key(client_name, bulk_key)
        if bulk_key is not None:
            whole = bulk_hash(items)
            known = ledger.find_bulk_request(s, bulk_key)
            if known is not None:
                if known.payload_hash != whole:
                    first = f"{known.created_at:%Y-%m-%d %H:%M:%S} UTC"
                    raise IdempotencyConflict(
                        "Idempotency-Key", f"already used for a different bulk payload (first used {first})"
                    )
                return Stored(list(json.loads(known.message_ids)), [], [])
        existing = ledger.find_by_keys(s, {i.key for i in items if i.key})
        first_of_key: dict[str, int] = {}
        for n, item in enumerate(items):
            prefix = f"messages[{n}]." if bulk else ""
            if item.key and item.key in existing:
                found = existing[item.key]
                if found.payload_hash != item.payload_hash():
                    raise IdempotencyConflict(
                        f"{prefix}key", f"already used for a different message ({found.id})"
                    )
                ids[n] = found.id
            elif item.key and item.key in first_of_key:
                earlier = items[first_of_key[item.key]]
                if earlier.payload_hash() != item.payload_hash():
                    raise IdempotencyConflict(
                        f"{prefix}key", "used twice in this call with different messages"
                    )
            else:
                if item.key:
                    first_of_key[item.key] = n
                fresh.append(n)
        stopped = intake.screen(s, settings, items, fresh, prefixes, client, now)
        # Keyed rows in key order: two calls that share keys then take the unique
        # index's locks in the same order, and the second waits instead of deadlocking.
        order = sorted(fresh, key=lambda n: (items[n].key is None, items[n].key or ""))
        new_ids = ledger.insert_messages(
            s, [items[n] for n in order], source=source, rejected={i: stopped[n] for i, n in enumerate(order)
                                                                   if n in stopped},
        )  # fmt: skip
        for n, mid in zip(order, new_ids, strict=True):
            ids[n] = mid
        for n, item in enumerate(items):
            if ids[n] is None and item.key:
                ids[n] = ids[first_of_key[item.key]]
        done = [i for i in ids if i is not None]
        if bulk_key is not None:
            ledger.add_bulk_request(s, bulk_key, whole, done)
    due = [(done[n], items[n].priority, items[n].provider) for n in fresh
           if items[n].send_at is None and n not in stopped]  # fmt: skip
    return Stored(done, sorted(fresh), due)


def _publish_due(due: Sequence[tuple[str, str, str | None]]) -> None:
    """Publish committed messages; if the broker is down they stay queued in the
    ledger and the sweeper publishes them later."""
    if not due:
        return
    try:
        if _publisher is not None:
            _publisher(due)
        else:
            from dispatcher.broker import publish_many

            publish_many(due)
    except Exception as exc:  # the broker is down: the sweeper publishes them later
        log.warning(
            "%d message(s) stored but not published (%s); the sweeper will publish them", len(due), exc
        )


def send_sms(
    to: str,
    text: str,
    sender: str | None = None,
    key: str | None = None,
    at: Any = None,
    ttl: float | None = None,
    priority: str = "normal",
    provider: str | None = None,
    *,
    callback_url: str | None = None,
    callback_task: str | None = None,
    tz: str | None = None,
    client: str | None = None,
) -> str:
    """Queue one SMS; returns its message id. Raises ``ValidationError`` naming the
    field on bad input (nothing is stored then), ``LimitExceeded`` when the client's
    quota or the per-recipient rate refuses it. The same ``key`` returns the same
    message and sends nothing new. A number on the stop list is stored ``rejected``
    (error ``stopped``) and never sent.

    ``callback_url`` (or ``callback_task``, a Celery task name) gets its status
    changes; ``tz`` is the zone its quiet hours are read in; ``client`` names the
    client sending it (its senders, quota, defaults apply)."""
    fields = {
        "to": to, "text": text, "sender": sender, "key": key, "at": at, "ttl": ttl, "priority": priority,
        "provider": provider, "callback_url": callback_url, "callback_task": callback_task, "tz": tz,
    }  # fmt: skip
    settings = get_settings()
    with metrics.refusals("api"):
        [item] = _validate_many(settings, [fields], bulk=False)
        done = store([item], client=client)
    _publish_due(done.due)
    return done.ids[0]


def send_bulk(
    messages: Iterable[Mapping[str, Any]], *, key: str | None = None, client: str | None = None
) -> list[str]:
    """Queue many SMS in one transaction and one publish round; returns their ids in
    order. Every message is validated first: one bad message stores none.

    ``key`` is the call's idempotency key (HTTP ``Idempotency-Key``): a message
    without its own key gets ``KEY:N``; the same call again answers the same ids and
    sends nothing new, and the key with any other payload (a superset included) is
    an ``IdempotencyConflict``."""
    listed = list(messages)
    with metrics.refusals("api", n=len(listed)):  # send_validated counts its own
        items = _validate_many(get_settings(), keyed(listed, key), bulk=True)
    return send_validated(items, key=key, client=client)


def keyed(messages: Iterable[Mapping[str, Any]], key: str | None) -> list[Mapping[str, Any]]:
    """The messages of a bulk call with ``key``, each without a key of its own given
    ``KEY:N``."""
    listed = list(messages)
    if key is None:
        return listed
    # isprintable: no control or format characters (a header read as latin-1 brings
    # C1 controls), which a per-message key would refuse under another name.
    if not isinstance(key, str) or not key or len(key) > 190 or not key.isprintable():
        raise ValidationError("Idempotency-Key", "expected 1 to 190 printable characters")
    return [
        {**fields, "key": f"{key}:{n}"} if isinstance(fields, Mapping) and "key" not in fields else fields
        for n, fields in enumerate(listed)
    ]


def send_validated(
    items: Sequence[NewMessage], *, key: str | None = None, client: str | None = None
) -> list[str]:
    """``send_bulk`` for messages already through ``validate`` (with ``keyed``'s
    keys): the CLI checks a file line by line to name the line, and must not pay for
    a second check of 10,000 numbers."""
    with metrics.refusals("api", n=len(items)):
        done = store(items, bulk=True, bulk_key=key, client=client)
    _publish_due(done.due)
    return done.ids


def create_from_task(fields: Mapping[str, Any], *, task_id: str | None = None) -> str:
    """For ``send_task("smsdispatch.send", kwargs=...)`` from apps that do not import
    us: the same validation and idempotency, stored by the worker itself.

    Without a ``key`` of its own the message is keyed by the task id
    (``task:ID``): a task redelivered after its worker died, or retried after the
    database failed at commit, finds the message it stored and stores no second."""
    settings = get_settings()
    client = None
    if isinstance(fields, Mapping) and "client" in fields:
        # An app on the broker may say which client it sends for: its rules apply.
        fields = dict(fields)
        client = fields.pop("client")
        if client is not None and not isinstance(client, str):
            raise ValidationError("client", "expected a client's name")
    if task_id and isinstance(fields, Mapping) and fields.get("key") is None:
        fields = {**fields, "key": f"task:{task_id}"}
    [item] = _validate_many(settings, [fields], bulk=False)
    done = store([item], source="task", client=client)
    return done.ids[0]


def get_message(message_id: str) -> dict[str, Any] | None:
    """The message with its attempts and status events, as plain data."""
    with session_scope() as s:
        msg = ledger.get(s, message_id)
        if msg is None:
            return None
        attempts = ledger.attempts_of(s, message_id)
        events = ledger.events_of(s, message_id)
    data = msg.model_dump()
    data.pop("payload_hash", None)
    data["key"] = public_key(msg.key, msg.client)
    data["attempts"] = [a.model_dump() for a in attempts]
    data["attempt_count"] = msg.attempts
    # What the providers reported charging for it, over every attempt they took.
    costs = [a.cost for a in attempts if a.cost is not None]
    data["cost"] = round(sum(costs), 6) if costs else None
    data["events"] = [e.model_dump() for e in events]
    return data


@dataclass(frozen=True)
class Cancel:
    """What an operator's cancel came to.

    ``outcome``: ``cancelled`` (it ends ``failed`` and is never sent), ``requested``
    (a call for it is in doubt or in flight: once that call is settled, it is
    cancelled unless the provider has it, in which case it is tracked as sent),
    ``refused`` (it has gone out or is final), ``missing``."""

    outcome: str
    old: str | None  # its status before the cancel
    status: str | None  # its status now
    reason: str


def cancel(message_id: str) -> Cancel:
    """Cancel a message that has not gone out. A ``queued`` message whose last call
    is in doubt (no reply came: the provider may have it) is not marked failed on
    the spot, which would be a lie if the provider then delivers it: the cancel is
    recorded and the send path settles the doubt first."""
    from dispatcher.status import OPERATOR_CANCEL_FROM, Status

    with session_scope() as s:
        msg = ledger.get(s, message_id)
        if msg is None:
            return Cancel("missing", None, None, f"no message {message_id}")
        current = Status(msg.status)
        doubt = ledger.open_attempts(s, [message_id]).get(message_id) if current == Status.QUEUED else None
        if current in OPERATOR_CANCEL_FROM and doubt is None:
            # Waiting to be sent again after a call that got no reply (a provider
            # at-least-once): that call may have gone through, so the truth is unknown.
            tries = ledger.attempts_of(s, message_id) if msg.attempts else []
            silent = [a.provider for a in tries if a.outcome == "ambiguous"]
            maybe = bool(silent)
            why = "cancelled by the operator"
            if silent:
                why += f"; an earlier call to {silent[-1]} got no reply and may have gone through"
            end = Status.UNKNOWN if maybe else Status.FAILED
            old = ledger.transition(
                s, message_id, end, source="operator", expect=OPERATOR_CANCEL_FROM, detail=why,
                fields={"last_error": why, "cancel_requested_at": None},
            )  # fmt: skip
            if old is not None:
                return Cancel("cancelled", old.value, end.value, why)
            current = Status(ledger.get(s, message_id).status)  # type: ignore[union-attr]
        if current in (Status.QUEUED, Status.SENDING) and ledger.request_cancel(s, message_id, utcnow()):
            where = f"a call to {doubt.provider} is in doubt" if doubt else "a worker holds it"
            return Cancel(
                "requested", current.value, current.value,
                f"{where}: it is cancelled once that call is settled, unless the provider has it",
            )  # fmt: skip
        current = Status(ledger.get(s, message_id).status)  # type: ignore[union-attr]
        return Cancel(
            "refused", current.value, current.value,
            f"cannot cancel a message in {current.value} (only queued, scheduled or sending)",
        )  # fmt: skip


def cancel_message(message_id: str) -> str | None:
    """The old status when the message was cancelled or its cancel recorded (see
    ``cancel``), None otherwise."""
    done = cancel(message_id)
    return done.old if done.outcome in ("cancelled", "requested") else None


def retry_message(message_id: str) -> str | None:
    """Send a failed or unknown message again, as a new round with a fresh TTL (its
    own TTL's length, from now or from its ``at``). A message whose ``at`` is still
    ahead (cancelled before its time) goes back to ``scheduled`` for that time, not
    out at once. For an ``unknown`` one the first send may have gone out: the
    operator decides."""
    from datetime import timedelta

    from dispatcher.status import OPERATOR_RETRY_FROM, Status

    settings = get_settings()
    now = utcnow()
    with session_scope() as s:
        msg = ledger.get(s, message_id)
        if msg is None:
            return None
        start = msg.send_at if msg.send_at is not None and msg.send_at > now else now
        # Its TTL's length: from when its current window began (its `at`, its creation,
        # or the last operator retry, whichever is latest) to its expiry; so a second
        # retry gives the same length again, not one grown by the days in between.
        again = (Status.QUEUED, Status.SCHEDULED)
        events = ledger.events_of(s, message_id)
        retried = [e.at for e in events if e.source == "operator" and e.new_status in again]
        began = max(t for t in (msg.send_at, msg.created_at, *retried) if t is not None)
        ttl = min((msg.expires_at - began).total_seconds(), MAX_TTL)
        if ttl <= 0:
            ttl = settings.pipeline.default_ttl
        status = Status.SCHEDULED if start > now else Status.QUEUED
        old = ledger.transition(
            s, message_id, status, source="operator", expect=OPERATOR_RETRY_FROM, by_operator=True,
            detail="sent again by the operator" + (f", at its time {start:%Y-%m-%d %H:%M:%S} UTC"
                                                    if status == Status.SCHEDULED else ""),
            fields={"due_at": start, "published_for": None if status == Status.SCHEDULED else now,
                    "tried": "", "retries": 0, "claimed_at": None, "cancel_requested_at": None,
                    "expires_at": start + timedelta(seconds=ttl)},
        )  # fmt: skip
    if old is None:
        return None
    if status == Status.QUEUED:
        _publish_due([(message_id, msg.priority, msg.provider_pinned)])
    return old.value


def list_messages(
    status: str | None = None,
    provider: str | None = None,
    since: Any = None,
    until: Any = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Messages newest first, filtered by status, provider and creation time."""
    from sqlalchemy import select

    from dispatcher.models import MESSAGES as M
    from dispatcher.status import Status
    from dispatcher.validation import _as_utc

    if status is not None and status not in {s.value for s in Status}:
        raise ValidationError("status", f"one of {', '.join(s.value for s in Status)}")
    if not 1 <= limit <= 10000:
        raise ValidationError("limit", "from 1 to 10000")
    query = select(
        M.c.id, M.c.to, M.c.status, M.c.provider, M.c.provider_message_id, M.c.priority, M.c.parts,
        M.c.attempts, M.c.created_at, M.c.updated_at, M.c.last_error,
    )  # fmt: skip
    if status:
        query = query.where(M.c.status == status)
    if provider:
        query = query.where(M.c.provider == provider)
    if since is not None:
        query = query.where(M.c.created_at >= _as_utc(since, "since"))
    if until is not None:
        query = query.where(M.c.created_at < _as_utc(until, "until"))
    with session_scope() as s:
        rows = s.execute(query.order_by(M.c.created_at.desc()).limit(limit)).mappings().all()
    return [dict(r) for r in rows]
