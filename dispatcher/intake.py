"""What the store applies to messages beyond their own validation: the client's
rules (senders, default callback, quiet hours, daily quota), the stop list and the
per-recipient rate. All of it runs in the transaction that stores the messages, so
a quota or a rate cannot be overrun by two producers at once, and a refusal stores
nothing.

Order, per call: ``shape`` (before the idempotency check: a replay gets the same
defaults), then for the messages that are new ``screen`` (the stop list, the
per-recipient rate, the quota), then the insert.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from dispatcher import stoplist
from dispatcher.clients import ClientInfo, get_client
from dispatcher.config import Settings
from dispatcher.errors import LimitExceeded, ValidationError
from dispatcher.keys import scoped_key
from dispatcher.models import CLIENT_USAGE, MESSAGES
from dispatcher.quiet import opens_at, parse_window, zone
from dispatcher.validation import NewMessage


def live_client(session: Session, name: str, field: str = "client") -> ClientInfo:
    client = get_client(session, name)
    if client is None:
        raise ValidationError(field, f"no client {name!r}")
    if client.revoked_at is not None:
        raise ValidationError(field, f"client {name!r} was revoked")
    return client


def shape(
    settings: Settings, items: Sequence[NewMessage], client: ClientInfo | None, prefixes: Sequence[str],
    now: datetime,
) -> list[NewMessage]:  # fmt: skip
    """Each message with its client's defaults and rules applied, and moved to its
    quiet hours' next opening when it is due outside them."""
    # The client's own window ("always" included) wins over the default.
    own = client.send_window if client else None
    window = parse_window(own, "send_window") if own else settings.policy.window()
    out = []
    for item, prefix in zip(items, prefixes, strict=True):
        changes: dict[str, object] = {}
        if client is not None:
            changes["client"] = client.name
            if item.key is not None:
                changes["key"] = scoped_key(client.name, item.key)
            if client.senders:
                if item.sender is None and len(client.senders) == 1:
                    changes["sender"] = client.senders[0]
                elif item.sender not in client.senders:
                    given = "missing" if item.sender is None else f"{item.sender!r} is not"
                    raise ValidationError(
                        f"{prefix}sender",
                        f"{given} one of this client's senders: {', '.join(client.senders)}",
                    )
            if item.callback_url is None and item.callback_task is None:
                changes["callback_url"] = client.callback_url
                changes["callback_task"] = client.callback_task if client.callback_url is None else None
        if window is not None and item.priority == "normal":
            # One-time codes always go; a normal message waits for the window's opening,
            # keeping its whole TTL from then (like an `at`).
            tz = zone(
                item.tz or (client.timezone if client else None) or settings.policy.timezone, f"{prefix}tz"
            )
            due = item.send_at or now
            opening = opens_at(due, window, tz)
            if opening is not None:
                ttl = item.expires_at - max(due, now)
                changes["send_at"] = opening
                changes["expires_at"] = opening + ttl
        out.append(replace(item, **changes) if changes else item)  # type: ignore[arg-type]
    return out


def screen(
    session: Session, settings: Settings, items: Sequence[NewMessage], fresh: Sequence[int],
    prefixes: Sequence[str], client: ClientInfo | None, now: datetime,
) -> dict[int, tuple[str, str]]:  # fmt: skip
    """Check the new messages (indexes ``fresh``) against the stop list, the
    per-recipient rate and the client's quota. Returns the indexes to store as
    ``rejected`` with their error (``stopped``) and why; raises ``LimitExceeded`` when a rate or
    the quota refuses the call (nothing is stored then)."""
    listed = stoplist.stopped(session, {items[n].to for n in fresh})
    stopped: dict[int, tuple[str, str]] = {}
    for n in fresh:
        scope = listed.get(items[n].to)
        if scope is not None and stoplist.blocks(scope, items[n].priority):
            why = f"{items[n].to} is on the stop list" + (" (all messages)" if scope == "all" else "")
            stopped[n] = (stoplist.STOPPED, f"{stoplist.STOPPED}: {why}")
    going = [n for n in fresh if n not in stopped]
    _recipient_rate(session, settings, items, going, prefixes, now)
    if client is not None and client.daily_quota is not None and going:
        _take_quota(session, settings, client, len(going), now)
    return stopped


def _recipient_rate(
    session: Session, settings: Settings, items: Sequence[NewMessage], going: Sequence[int],
    prefixes: Sequence[str], now: datetime,
) -> None:  # fmt: skip
    for priority in ("high", "normal"):
        rate = settings.policy.rate(priority)
        mine = [n for n in going if items[n].priority == priority]
        if rate is None or not mine:
            continue
        phones = sorted({items[n].to for n in mine})
        if session.get_bind().dialect.name == "postgresql":
            # Two producers storing to one number at once would both count the same
            # rows and both pass: a transaction-long lock per number (in one order, so
            # two bulk calls cannot deadlock) makes the count and insert one step.
            # SQLite's write lock (BEGIN IMMEDIATE) does that already.
            session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended('smsdispatch:rcpt:' || p, 0))"
                     " FROM unnest(CAST(:phones AS text[])) AS p ORDER BY p"),
                {"phones": phones},
            )  # fmt: skip
        since = now - timedelta(seconds=rate.seconds)
        counted = {
            to: (n, first)
            for to, n, first in session.execute(
                select(MESSAGES.c.to, func.count(), func.min(MESSAGES.c.created_at))
                .where(
                    MESSAGES.c.to.in_(phones), MESSAGES.c.created_at > since, MESSAGES.c.priority == priority,
                    MESSAGES.c.last_error.is_distinct_from(stoplist.STOPPED),
                )
                .group_by(MESSAGES.c.to)
            ).all()
        }  # fmt: skip
        seen: Counter[str] = Counter()
        for n in mine:
            to = items[n].to
            seen[to] += 1
            before, first = counted.get(to, (0, None))
            if before + seen[to] > rate.count:
                wait = (
                    (first + timedelta(seconds=rate.seconds) - now).total_seconds() if first else rate.seconds
                )
                raise LimitExceeded(
                    f"{prefixes[n]}to",
                    f"recipient_rate: more than {rate} {priority}-priority messages to {to}",
                    code="recipient_rate",
                    retry_after=max(1.0, wait),
                )


def _take_quota(session: Session, settings: Settings, client: ClientInfo, n: int, now: datetime) -> None:
    """Count ``n`` messages against the client's quota for today (its zone's day):
    one conditional UPDATE, so concurrent producers cannot overrun it."""
    assert client.daily_quota is not None
    tz = zone(client.timezone or settings.policy.timezone, "timezone")
    local = now.astimezone(tz)
    day = local.date().isoformat()
    dialect = session.get_bind().dialect.name
    make = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(make(CLIENT_USAGE).values(client=client.name, day=day, count=0).on_conflict_do_nothing())
    done = session.execute(
        update(CLIENT_USAGE)
        .where(CLIENT_USAGE.c.client == client.name, CLIENT_USAGE.c.day == day,
               CLIENT_USAGE.c.count + n <= client.daily_quota)
        .values(count=CLIENT_USAGE.c.count + n)
    )  # fmt: skip
    if done.rowcount != 1:  # type: ignore[attr-defined]
        used = session.execute(
            select(CLIENT_USAGE.c.count).where(
                CLIENT_USAGE.c.client == client.name, CLIENT_USAGE.c.day == day
            )
        ).scalar_one()
        midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=tz)
        raise LimitExceeded(
            "daily_quota",
            f"quota: {used} of {client.daily_quota} messages used today ({day}, {tz.key}); {n} more refused",
            code="quota",
            retry_after=float(math.ceil((midnight - now).total_seconds())),
        )
