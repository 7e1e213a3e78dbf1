"""Quiet hours and per-recipient rates: the parsing of ``policy.send_window`` and
``policy.recipient_limit``, and when a message due outside its window may go.

A window is local time in a zone (``Europe/Moscow`` by default). ``09:00-21:00``
is the usual one for advertising SMS; ``22:00-06:00`` runs over midnight. A message
due outside it waits for the next opening; one-time codes never wait.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dispatcher.errors import ValidationError

_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")
_RATE = re.compile(r"^(\d{1,6})/(?:(\d{1,5})?(second|s|minute|min|m|hour|h|day|d))$")
_UNITS = {"second": 1, "s": 1, "minute": 60, "min": 60, "m": 60, "hour": 3600, "h": 3600, "day": 86400,
          "d": 86400}  # fmt: skip


@dataclass(frozen=True)
class Window:
    """Minutes from local midnight: sending is allowed from ``start`` (inclusive) to
    ``end`` (exclusive); ``start > end`` runs over midnight."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def parse_window(text: str | None, field: str) -> Window | None:
    """``"09:00-21:00"`` -> Window; ``""``, ``"always"`` or ``"00:00-24:00"`` -> None
    (any time). Raises ``ValidationError`` naming ``field``."""
    if text is None or text.strip() in ("", "always", "00:00-24:00"):
        return None
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValidationError(field, f'expected "HH:MM-HH:MM" (e.g. "09:00-21:00"), got {text[:40]!r}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValidationError(field, f"not a time of day in {text!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end % 1440:
        raise ValidationError(field, f'an empty window: {text!r} (use "always" for no quiet hours)')
    return Window(start, end)


def zone(name: str, field: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Moscow``), or a ``ValidationError`` naming ``field``."""
    # "localtime", "posixrules" and "Factory" are files of the tz database that mean the
    # host's own setting (or nothing), not a place: quiet hours would follow the server.
    host = name in ("localtime", "posixrules", "Factory")
    if host or not name or len(name) > 64 or not name.isprintable() or name.startswith("/") or ".." in name:
        raise ValidationError(field, f"not an IANA time zone: {name[:64]!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(field, f"not an IANA time zone: {name!r} (e.g. Europe/Moscow)") from None


def opens_at(now: datetime, window: Window | None, tz: ZoneInfo) -> datetime | None:
    """None when ``now`` is inside ``window``; else the UTC time it next opens."""
    if window is None:
        return None
    local = now.astimezone(tz)
    if window.contains(local.hour * 60 + local.minute):
        return None
    for days in (0, 1, 2):
        day = (local + timedelta(days=days)).date()
        start = datetime(day.year, day.month, day.day, window.start // 60, window.start % 60, tzinfo=tz)
        # A start in a skipped hour (a DST jump) reads as the time after it.
        start = start.astimezone(UTC).astimezone(tz)
        if start > local:
            return start.astimezone(UTC)
    raise AssertionError("a window opens within two days")  # pragma: no cover


@dataclass(frozen=True)
class Rate:
    """At most ``count`` messages per ``seconds``."""

    count: int
    seconds: float

    def __str__(self) -> str:
        for name, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if self.seconds == size:
                return f"{self.count}/{name}"
        return f"{self.count}/{self.seconds:g}s"


def parse_rate(text: str | None, field: str) -> Rate | None:
    """``"5/hour"``, ``"20/day"``, ``"3/10min"`` -> Rate; ``""`` or ``"none"`` -> None."""
    if text is None or text.strip() in ("", "none"):
        return None
    match = _RATE.match(text.strip())
    if not match:
        raise ValidationError(field, f'expected "N/hour", "N/day", "N/10min"..., got {text[:40]!r}')
    count, many, unit = match.groups()
    seconds = float(int(many or 1) * _UNITS[unit])
    if int(count) < 1 or not 1 <= seconds <= 30 * 86400:
        raise ValidationError(field, f"at least 1 message per 1 s to 30 days, got {text!r}")
    return Rate(int(count), seconds)
