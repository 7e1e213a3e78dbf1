"""Validation of a producer's message, before anything is stored.

Every error is a ``ValidationError`` naming the field (``messages[3].to`` in a bulk
call) and the reason; a message that fails is neither stored nor sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.config import Settings, check_sender
from dispatcher.errors import ConfigError, ValidationError
from dispatcher.segments import MAX_PARTS, count_parts, encoding

PRIORITIES = ("high", "normal")
_PHONE_JUNK = re.compile(r"[\s()\-.]")
MAX_TEXT = 2000  # characters; long before that the part limit applies
MAX_TTL = 30 * 24 * 3600.0  # a month: an SMS older than that is not worth sending
# NUL and other C0 controls (PostgreSQL refuses NUL in text; no phone shows them).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def normalize_phone(value: Any, field: str = "to") -> str:
    """Digits with the country code: ``+7 916 123-45-67`` and ``89161234567`` both
    become ``79161234567``."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValidationError(field, "expected a phone number as a string")
    raw = str(value).strip()
    if not raw:
        raise ValidationError(field, "empty phone number")
    plus = raw.startswith("+")
    digits = _PHONE_JUNK.sub("", raw[1:] if plus else raw)
    # str.isdigit() also takes Arabic-Indic and other Unicode digits: ASCII only.
    if not re.fullmatch(r"[0-9]+", digits):
        raise ValidationError(field, f"only digits, spaces, ()-. and a leading + are allowed: {raw!r}")
    if not plus:
        # Russian national forms: 8 916 ... (trunk prefix) and 916 ... (ten digits).
        if len(digits) == 11 and digits.startswith("8"):
            digits = "7" + digits[1:]
        elif len(digits) == 10 and digits.startswith("9"):
            digits = "7" + digits
    if digits.startswith("0"):
        raise ValidationError(field, f"a country code cannot start with 0: {raw!r}")
    if digits.startswith("7") and len(digits) != 11:
        raise ValidationError(field, f"a +7 number has 11 digits, got {len(digits)}: {raw!r}")
    if not 10 <= len(digits) <= 15:
        raise ValidationError(
            field, f"an international number has 10 to 15 digits, got {len(digits)}: {raw!r}"
        )
    return digits


def _as_utc(value: Any, field: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(field, f"not an ISO-8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValidationError(field, "expected a datetime or an ISO-8601 string")
    if value.tzinfo is None:
        raise ValidationError(field, "a time needs a zone (UTC or an offset) so that it means one moment")
    return value.astimezone(UTC)


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
    prefix: str = "",
    now: datetime | None = None,
) -> NewMessage:
    """Check and normalize one message; ``prefix`` is put before field names."""
    now = now or datetime.now(UTC)
    phone = normalize_phone(to, f"{prefix}to")

    if not isinstance(text, str):
        raise ValidationError(f"{prefix}text", "expected a string")
    if not text.strip():
        raise ValidationError(f"{prefix}text", "empty text")
    if _CONTROL.search(text):
        raise ValidationError(
            f"{prefix}text", "control characters other than newline and tab are not allowed"
        )
    if len(text) > MAX_TEXT:
        raise ValidationError(f"{prefix}text", f"{len(text)} characters, more than {MAX_TEXT}")
    parts = count_parts(text)
    if parts > MAX_PARTS:
        enc = encoding(text)
        per = "153 GSM-7" if enc == "gsm7" else "67 UCS-2"
        raise ValidationError(
            f"{prefix}text", f"{parts} SMS parts ({per} characters each), more than the limit of {MAX_PARTS}"
        )

    if sender is not None:
        if not isinstance(sender, str):
            raise ValidationError(f"{prefix}sender", "expected a string")
        try:
            check_sender(sender, f"{prefix}sender")
        except ConfigError as exc:
            raise ValidationError(f"{prefix}sender", exc.reason) from None

    if key is not None and (not isinstance(key, str) or not key or len(key) > 200 or _CONTROL.search(key)):
        raise ValidationError(
            f"{prefix}key", "expected a non-empty string of at most 200 printable characters"
        )

    if priority not in PRIORITIES:
        raise ValidationError(f"{prefix}priority", f"one of {', '.join(PRIORITIES)}, got {priority!r}")

    if provider is not None:
        names = [p.name for p in settings.providers if p.enabled]
        if provider not in names:
            raise ValidationError(
                f"{prefix}provider", f"no enabled provider instance {provider!r} ({', '.join(names)})"
            )

    send_at = _as_utc(at, f"{prefix}at") if at is not None else None
    if ttl is None:
        ttl_seconds = settings.pipeline.default_ttl
    elif isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise ValidationError(
            f"{prefix}ttl", f"expected seconds, more than 0 and at most {MAX_TTL:.0f}, got {ttl!r}"
        )
    else:
        ttl_seconds = float(ttl)
    start = max(send_at, now) if send_at else now
    expires_at = start + timedelta(seconds=ttl_seconds)
    if send_at and send_at > now + timedelta(days=366):
        raise ValidationError(f"{prefix}at", "more than a year ahead")

    return NewMessage(
        to=phone,
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
    )
