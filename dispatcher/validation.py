"""Validation of a producer's message, before anything is stored.

Every error is a ``ValidationError`` naming the field (``messages[3].to`` in a bulk
call) and the reason; a message that fails is neither stored nor sent.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.config import PhonesConfig, Settings, check_sender
from dispatcher.errors import ConfigError, ValidationError
from dispatcher.phones import Phone, read_phone
from dispatcher.quiet import zone
from dispatcher.segments import MAX_PARTS, count_parts, encoding

PRIORITIES = ("high", "normal")
MAX_TEXT = 2000  # characters; long before that the part limit applies
MAX_TTL = 30 * 24 * 3600.0  # a month: an SMS older than that is not worth sending
MAX_AHEAD = timedelta(days=366)  # how far ahead `at` may be


@dataclass(frozen=True)
class NewMessage:
    """A validated, normalized message ready for the ledger."""

    to: str
    text: str
    sender: str | None
    key: str | None
    send_at: datetime | None
    expires_at: datetime
    priority: str
    provider: str | None
    parts: int
    encoding: str
    # The request as the client gave it, for idempotency: `at` as an instant (send_at
    # is None once it has passed) and `ttl` (expires_at is derived from the time).
    requested_at: datetime | None = None
    requested_ttl: float | None = None
    region: str | None = None  # of `to`, ISO 3166 (RU, KZ); None in rows stored before it
    # Where its status changes go (an http(s) URL or a Celery task name), and the zone
    # its quiet hours are read in; the client's defaults fill them in at store time.
    callback_url: str | None = None
    callback_task: str | None = None
    tz: str | None = None
    client: str | None = None  # the client that sent it (set at store time)

    def payload_hash(self) -> str:
        """What idempotency compares: the same key must come with the same payload.

        Only what the client gave goes in, never a value derived from the clock: the
        identical request sent again after its ``at`` has passed is the same request."""
        payload: dict[str, Any] = {
            "to": self.to,
            "text": self.text,
            "sender": self.sender,
            "send_at": self.requested_at.isoformat() if self.requested_at else None,
            "priority": self.priority,
            "provider": self.provider,
        }
        if self.requested_ttl is not None:  # absent before: hashes of requests without it stay
            payload["ttl"] = self.requested_ttl
        # The same: only when given, so that hashes of requests without them stay.
        for name in ("callback_url", "callback_task", "tz"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _shown(value: Any) -> str:
    """A value for an error message: short, and never raising (repr of a huge int does)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def normalize_phone(value: Any, field: str = "to", phones: PhonesConfig | None = None) -> str:
    """E.164 digits without "+": ``+7 916 123-45-67`` and ``89161234567`` both become
    ``79161234567``. Refuses what cannot receive an SMS (see ``dispatcher.phones``)."""
    return _read_phone(value, field, phones or PhonesConfig()).digits


def _read_phone(value: Any, field: str, phones: PhonesConfig) -> Phone:
    return read_phone(
        value, field, default_region=phones.default_region, allowed_regions=phones.allowed_regions
    )


def _is_noncharacter(code: int) -> bool:
    # U+FDD0..U+FDEF and the last two code points of every plane are reserved for a
    # program's own use (Unicode 15, section 23.7): they mean nothing on a handset.
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def text_problem(text: str) -> str | None:
    """Why ``text`` holds a character no SMS can carry, or None; positions count
    characters from 1.

    Both SMS alphabets (GSM 03.38 and UCS-2, 3GPP TS 23.038) carry newline and carriage
    return (GSM-7 has both; tab goes as UCS-2) and no other control character; a lone
    surrogate has no UTF-16 encoding at all, and NUL also cannot be stored in PostgreSQL.
    """
    for i, ch in enumerate(text, 1):
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return f"an unpaired surrogate (U+{code:04X}) at character {i} cannot be sent in an SMS"
        if (code < 0x20 and ch not in "\n\r\t") or 0x7F <= code <= 0x9F:
            return f"a control character (U+{code:04X}) at character {i} cannot be sent in an SMS"
        if _is_noncharacter(code):
            return f"a Unicode noncharacter (U+{code:04X}) at character {i} cannot be sent in an SMS"
    return None


def _as_utc(value: Any, field: str) -> datetime:
    """An aware datetime or an ISO-8601 string with a zone, as UTC; a time that has no
    UTC form within datetime's years 1 to 9999 is refused, not left to overflow."""
    if isinstance(value, str):
        # fromisoformat takes any character between date and time, NUL included (which
        # PostgreSQL and logs choke on): ISO-8601 has T there, RFC 3339 a space too.
        odd = not value.isascii() or not value.isprintable() or (len(value) > 10 and value[10] not in "Tt ")
        if odd or len(value) > 64:
            raise ValidationError(field, f"not an ISO-8601 time: {value[:64]!r}")
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(field, f"not an ISO-8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValidationError(field, f"expected a datetime or an ISO-8601 string, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "a time needs a zone (UTC or an offset) so that it means one moment")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            field, f"out of range: {value.isoformat()} has no UTC time within years 1 to 9999"
        ) from None


def validate(
    settings: Settings,
    *,
    to: Any,
    text: Any,
    sender: Any = None,
    key: Any = None,
    at: Any = None,
    ttl: Any = None,
    priority: Any = "normal",
    provider: Any = None,
    callback_url: Any = None,
    callback_task: Any = None,
    tz: Any = None,
    prefix: str = "",
    now: datetime | None = None,
) -> NewMessage:
    """Check and normalize one message; ``prefix`` is put before field names."""
    now = now or datetime.now(UTC)
    phone = _read_phone(to, f"{prefix}to", settings.phones)

    if not isinstance(text, str):
        raise ValidationError(f"{prefix}text", "expected a string")
    if not text.strip():
        raise ValidationError(f"{prefix}text", "empty text")
    if len(text) > MAX_TEXT:
        raise ValidationError(f"{prefix}text", f"{len(text)} characters, more than {MAX_TEXT}")
    problem = text_problem(text)
    if problem:
        raise ValidationError(f"{prefix}text", problem)
    parts = count_parts(text)
    if parts > MAX_PARTS:
        # Counted as they are billed: an escape pair or an emoji is never split, so a
        # part can carry less than its full 153 septets or 67 code units.
        per = (
            "153 GSM-7 septets each; ^{}\\[~]|€ take two"
            if encoding(text) == "gsm7"
            else "67 UCS-2 code units each; an emoji takes two"
        )
        raise ValidationError(
            f"{prefix}text", f"{parts} SMS parts ({per}), more than the limit of {MAX_PARTS}"
        )

    if sender is not None:
        if not isinstance(sender, str):
            raise ValidationError(f"{prefix}sender", "expected a string")
        try:
            check_sender(sender, f"{prefix}sender")
        except ConfigError as exc:
            raise ValidationError(f"{prefix}sender", exc.reason) from None

    if key is not None and (not isinstance(key, str) or not key or len(key) > 200 or text_problem(key)):
        raise ValidationError(
            f"{prefix}key", "expected a non-empty string of at most 200 printable characters"
        )

    if priority not in PRIORITIES:
        raise ValidationError(f"{prefix}priority", f"one of {', '.join(PRIORITIES)}, got {_shown(priority)}")

    if provider is not None:
        names = [p.name for p in settings.providers if p.enabled]
        if provider not in names:
            raise ValidationError(
                f"{prefix}provider", f"no enabled provider instance {_shown(provider)} ({', '.join(names)})"
            )

    if callback_url is not None:
        if not isinstance(callback_url, str):
            raise ValidationError(f"{prefix}callback_url", "expected a string")
        problem = url_problem(callback_url, settings.callbacks.allow_private)
        if problem:
            raise ValidationError(f"{prefix}callback_url", problem)
    if callback_task is not None:
        from dispatcher.callbacks import check_task_name

        if not isinstance(callback_task, str):
            raise ValidationError(f"{prefix}callback_task", "expected a string")
        check_task_name(callback_task, f"{prefix}callback_task")
    if callback_url is not None and callback_task is not None:
        raise ValidationError(f"{prefix}callback_task", "give callback_url or callback_task, not both")
    if tz is not None:
        if not isinstance(tz, str):
            raise ValidationError(f"{prefix}tz", "expected a string")
        zone(tz, f"{prefix}tz")

    send_at = _as_utc(at, f"{prefix}at") if at is not None else None
    if ttl is None:
        ttl_seconds = settings.pipeline.default_ttl
    elif isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise ValidationError(
            f"{prefix}ttl", f"expected seconds, more than 0 and at most {MAX_TTL:.0f}, got {_shown(ttl)}"
        )
    else:
        ttl_seconds = float(ttl)
    # Before expires_at is computed: 9999-12-31 plus a TTL is past datetime's range.
    if send_at and send_at > now + MAX_AHEAD:
        raise ValidationError(f"{prefix}at", f"more than a year ahead: {send_at.isoformat()}")
    start = max(send_at, now) if send_at else now
    expires_at = start + timedelta(seconds=ttl_seconds)

    return NewMessage(
        to=phone.digits,
        text=text,
        sender=sender,
        key=key,
        send_at=send_at if send_at and send_at > now else None,
        expires_at=expires_at,
        priority=priority,
        provider=provider,
        parts=parts,
        encoding=encoding(text),
        requested_at=send_at,
        requested_ttl=None if ttl is None else float(ttl),
        region=phone.region,
        callback_url=callback_url,
        callback_task=callback_task,
        tz=tz,
    )


_url_checks: dict[tuple[str, bool], tuple[float, str | None]] = {}


def url_problem(url: str, allow_private: bool) -> str | None:
    """``callbacks.check_url`` remembered for a minute: a bulk call of 10,000 messages
    with one callback URL resolves it once, not 10,000 times."""
    from dispatcher.callbacks import check_url

    now = time.monotonic()
    known = _url_checks.get((url, allow_private))
    if known is not None and now - known[0] < 60.0:
        return known[1]
    problem = check_url(url, allow_private=allow_private)
    if len(_url_checks) > 1000:
        _url_checks.clear()
    _url_checks[(url, allow_private)] = (now, problem)
    return problem
