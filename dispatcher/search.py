"""Searching the ledger: by recipient, idempotency key, the provider's id or client,
newest first, a page at a time.

Pages are cut by keyset, not offset: the cursor holds the last row's
``(created_at, id)`` and the next page starts strictly below it. A message stored
between two pages is newer than the cursor, so it neither shifts nor repeats a row
of the walk in progress (an offset would show the page's last row again).

Each filter is written so that one index serves both the filter and the order, and
the database reads about ``limit`` index entries per page however big the ledger:
``to`` -> ``ix_messages_to_created``, ``provider_message_id`` -> ``ix_messages_pmid`` (its first column),
``client`` -> ``ix_messages_client_created``, nothing -> ``ix_messages_created``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select

from dispatcher.config import Settings
from dispatcher.db import session_scope
from dispatcher.errors import ValidationError
from dispatcher.keys import public_key, scoped_key
from dispatcher.models import MESSAGES as M
from dispatcher.status import Status
from dispatcher.validation import _as_utc, normalize_phone, text_problem

MAX_LIMIT = 1000
_VERSION = 1
_CHECK = 8  # bytes of checksum: a cursor mangled in transit is refused, not misread
_MAX_CURSOR = 400  # characters; a real one is about 110

COLUMNS = (
    M.c.id, M.c.to, M.c.status, M.c.provider, M.c.provider_message_id, M.c.priority, M.c.parts,
    M.c.attempts, M.c.key, M.c.client, M.c.created_at, M.c.updated_at, M.c.last_error,
)  # fmt: skip


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECK).digest()


def encode_cursor(created_at: datetime, message_id: str) -> str:
    """The opaque cursor after the row ``(created_at, message_id)``."""
    payload = json.dumps({"c": created_at.isoformat(), "i": message_id}, separators=(",", ":"))
    body = bytes([_VERSION]) + payload.encode()
    return base64.urlsafe_b64encode(body + _checksum(body)).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(created_at, id)`` of the row a cursor follows; ``ValidationError("cursor")``
    for anything ``encode_cursor`` did not make."""
    bad = ValidationError(
        "cursor", "not a cursor this API gave out (pass `next` from the previous page as is)"
    )
    if not isinstance(cursor, str) or not cursor or len(cursor) > _MAX_CURSOR or not cursor.isascii():
        raise bad
    try:
        # validate=True: the lax decoder skips characters outside the alphabet, so a
        # cursor with junk inside would still decode.
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    body, check = raw[:-_CHECK], raw[-_CHECK:]
    if len(body) < 2 or body[0] != _VERSION or _checksum(body) != check:
        raise bad
    try:
        data = json.loads(body[1:].decode())
    except (UnicodeDecodeError, ValueError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"c", "i"}:
        raise bad
    created, message_id = data["c"], data["i"]
    if not isinstance(created, str) or not isinstance(message_id, str) or not 1 <= len(message_id) <= 32:
        raise bad
    if text_problem(message_id):
        raise bad
    try:
        return _as_utc(created, "cursor"), message_id
    except ValidationError:
        raise bad from None


def _text(value: Any, field: str, longest: int) -> str:
    if not isinstance(value, str) or not value or len(value) > longest or text_problem(value):
        raise ValidationError(field, f"expected 1 to {longest} printable characters")
    return value


def search(
    settings: Settings,
    *,
    client: str | None = None,
    to: str | None = None,
    key: str | None = None,
    provider_message_id: str | None = None,
    status: str | None = None,
    provider: str | None = None,
    since: Any = None,
    until: Any = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Messages matching every filter given, newest first (by ``created_at``, then
    ``id``), at most ``limit``; with the cursor of the next page, or None on the last.

    ``to`` is read as ``send_sms`` reads it, so ``+7 916 123-45-67`` and
    ``89161234567`` find the same rows. ``since`` and ``until`` bound ``created_at``
    (``since`` included, ``until`` not). Raises ``ValidationError`` naming the
    argument at fault."""
    query = statement(
        settings, client=client, to=to, key=key, provider_message_id=provider_message_id, status=status,
        provider=provider, since=since, until=until, limit=limit, cursor=cursor,
    )  # fmt: skip
    with session_scope(settings.database_url) as s:
        rows = [dict(r) for r in s.execute(query).mappings().all()]
    for row in rows:
        row["key"] = public_key(row["key"], row["client"])
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"])


def statement(
    settings: Settings,
    *,
    client: str | None = None,
    to: str | None = None,
    key: str | None = None,
    provider_message_id: str | None = None,
    status: str | None = None,
    provider: str | None = None,
    since: Any = None,
    until: Any = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Select[Any]:
    """The query ``search`` runs (``limit + 1`` rows), checked as ``search`` checks
    its arguments: for EXPLAIN."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValidationError("limit", f"from 1 to {MAX_LIMIT}")
    if status is not None and status not in {s.value for s in Status}:
        raise ValidationError("status", f"one of {', '.join(s.value for s in Status)}")
    conditions: list[ColumnElement[bool]] = []
    if to is not None:
        conditions.append(M.c.to == normalize_phone(to, "to", settings.phones))
    if key is not None:
        # A client's keys live in its own namespace (intake.scoped_key).
        conditions.append(M.c.key == scoped_key(client, _text(key, "key", 200)))
    if provider_message_id is not None:
        conditions.append(M.c.provider_message_id == _text(provider_message_id, "provider_message_id", 100))
    if client is not None:
        from dispatcher.clients import check_name

        conditions.append(M.c.client == check_name(client, "client"))
    if status is not None:
        conditions.append(M.c.status == status)
    if provider is not None:
        conditions.append(M.c.provider == _text(provider, "provider", 40))
    if since is not None:
        conditions.append(M.c.created_at >= _as_utc(since, "since"))
    if until is not None:
        conditions.append(M.c.created_at < _as_utc(until, "until"))
    if cursor is not None:
        after, last_id = decode_cursor(cursor)
        # Not the row value (created_at, id) < (c, i): PostgreSQL matches a row
        # comparison to an index only when its columns are the index's, and none of
        # ours ends in id. `created_at <= c` bounds the index scan; the OR only
        # drops the rows of the cursor's own instant already shown.
        conditions.append(and_(M.c.created_at <= after, or_(M.c.created_at < after, M.c.id < last_id)))
    # One row more than asked: whether another page exists, without a count.
    return select(*COLUMNS).where(*conditions).order_by(M.c.created_at.desc(), M.c.id.desc()).limit(limit + 1)
