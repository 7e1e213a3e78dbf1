"""The producers' Python API: ``send_sms``, ``send_bulk``, ``get_message``.

A message is validated, then committed to the ledger, then published to the broker:
no task can see a row that is not there yet. If publishing fails (the broker is
down), the row stays ``queued`` and the sweeper publishes it when the broker is back,
so a message accepted here is never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from dispatcher import ledger
from dispatcher.config import Settings, get_settings
from dispatcher.db import session_scope
from dispatcher.errors import ValidationError
from dispatcher.validation import NewMessage, validate

log = logging.getLogger("smsdispatch.api")

FIELDS = ("to", "text", "sender", "key", "at", "ttl", "priority", "provider")

# (message id, priority, pinned provider or None)
PublishMany = Callable[[Sequence[tuple[str, str, str | None]]], None]
_publisher: PublishMany | None = None


def use_publisher(publisher: PublishMany | None) -> None:
    """Publish through ``publisher`` instead of Celery (the embedded runner); None
    goes back to Celery."""
    global _publisher
    _publisher = publisher


class IdempotencyConflict(ValidationError):
    """The key was used before with a different payload."""


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


def store(
    items: Sequence[NewMessage], *, source: str = "producer", bulk: bool = False
) -> tuple[list[str], list[int]]:
    """Commit validated messages, honouring idempotency keys. Returns the id of each
    item and the indexes of the ones newly stored (the others existed already)."""
    for _ in range(3):
        try:
            return _store_once(items, source, bulk)
        except IntegrityError:
            # Another producer stored the same key between our look-up and insert:
            # look again, and this time the existing row answers.
            continue
    raise RuntimeError("could not store messages: idempotency keys kept colliding")


def _store_once(items: Sequence[NewMessage], source: str, bulk: bool) -> tuple[list[str], list[int]]:
    ids: list[str | None] = [None] * len(items)
    fresh: list[int] = []
    with session_scope() as s:
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
        new_ids = ledger.insert_messages(s, [items[n] for n in fresh], source=source)
    for n, mid in zip(fresh, new_ids, strict=True):
        ids[n] = mid
    for n, item in enumerate(items):
        if ids[n] is None and item.key:
            ids[n] = ids[first_of_key[item.key]]
    return [i for i in ids if i is not None], fresh


def _publish(items: Sequence[NewMessage], ids: Sequence[str], fresh: Sequence[int]) -> None:
    _publish_due([(ids[n], items[n].priority, items[n].provider) for n in fresh if items[n].send_at is None])


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
) -> str:
    """Queue one SMS; returns its message id. Raises ``ValidationError`` naming the
    field on bad input (nothing is stored then). The same ``key`` returns the same
    message and sends nothing new."""
    fields = {
        "to": to,
        "text": text,
        "sender": sender,
        "key": key,
        "at": at,
        "ttl": ttl,
        "priority": priority,
    }
    fields["provider"] = provider
    settings = get_settings()
    [item] = _validate_many(settings, [fields], bulk=False)
    ids, fresh = store([item])
    _publish([item], ids, fresh)
    return ids[0]


def send_bulk(messages: Iterable[Mapping[str, Any]]) -> list[str]:
    """Queue many SMS in one transaction and one publish round; returns their ids in
    order. Every message is validated first: one bad message stores none."""
    settings = get_settings()
    items = _validate_many(settings, list(messages), bulk=True)
    ids, fresh = store(items, bulk=True)
    _publish(items, ids, fresh)
    return ids


def create_from_task(fields: Mapping[str, Any]) -> str:
    """For ``send_task("smsdispatch.send", kwargs=...)`` from apps that do not import
    us: the same validation and idempotency, stored by the worker itself."""
    settings = get_settings()
    [item] = _validate_many(settings, [fields], bulk=False)
    ids, _ = store([item], source="task")
    return ids[0]


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
    data["attempts"] = [a.model_dump() for a in attempts]
    data["attempt_count"] = msg.attempts
    # What the providers reported charging for it, over every attempt they took.
    costs = [a.cost for a in attempts if a.cost is not None]
    data["cost"] = round(sum(costs), 6) if costs else None
    data["events"] = [e.model_dump() for e in events]
    return data


def cancel_message(message_id: str) -> str | None:
    """Cancel a message that has not gone out (queued or scheduled): it ends
    ``failed``. Returns the old status, or None when it could not be cancelled."""
    from dispatcher.status import OPERATOR_CANCEL_FROM, Status

    with session_scope() as s:
        old = ledger.transition(
            s, message_id, Status.FAILED, source="operator", expect=OPERATOR_CANCEL_FROM,
            detail="cancelled by the operator", fields={"last_error": "cancelled by the operator"},
        )  # fmt: skip
    return old.value if old else None


def retry_message(message_id: str) -> str | None:
    """Send a failed or unknown message again, as a new round with a fresh TTL.
    For an ``unknown`` one the first send may have gone out: the operator decides."""
    from datetime import timedelta

    from dispatcher.models import utcnow
    from dispatcher.status import OPERATOR_RETRY_FROM, Status

    settings = get_settings()
    now = utcnow()
    with session_scope() as s:
        msg = ledger.get(s, message_id)
        if msg is None:
            return None
        old = ledger.transition(
            s, message_id, Status.QUEUED, source="operator", expect=OPERATOR_RETRY_FROM, by_operator=True,
            detail="sent again by the operator",
            fields={"due_at": now, "published_for": now, "tried": "", "retries": 0, "claimed_at": None,
                    "expires_at": now + timedelta(seconds=settings.pipeline.default_ttl)},
        )  # fmt: skip
    if old is None:
        return None
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
