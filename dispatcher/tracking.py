"""Delivery tracking: status polls, status queues, balances.

A message is done when the ledger holds its final status. Beat drives three jobs
per provider instance:

- ``poll_due``: messages in ``accepted``/``sent`` whose next poll is due, as many per
  status call as the provider takes, at most ``polling.max_calls_per_cycle`` calls
  per round; the gap to a message's next poll grows with its age
  (``polling.intervals``); a message with no final status after
  ``pipeline.status_horizon`` becomes ``expired`` (or ``unknown``, ``on_horizon``).
- ``drain_status_queue`` (a kind that ``HAS_STATUS_QUEUE``, an instance with
  ``status_queue`` configured: prostor-sms.ru): up to 1000 changes a call,
  again while the queue stays full. Those messages are polled by id only as a
  fallback, when the queue has not reported them for ``queue_fallback_after``.
- ``read_balances``: every provider's balance, kept as history; a balance under the
  instance's ``balance_threshold`` makes routing skip it.

Every change is a status event carrying the provider's raw value; the transition
rules keep a late or out-of-order reply from undoing a final status.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select, update

from dispatcher import ledger
from dispatcher.config import Settings
from dispatcher.coordination import Coordinator
from dispatcher.db import session_scope
from dispatcher.errors import ProviderError, RetryableError
from dispatcher.models import BALANCES, MESSAGES, utcnow
from dispatcher.providers import make_provider
from dispatcher.providers.base import MessageRef, Provider, StatusReport, chunked
from dispatcher.redact import redact
from dispatcher.status import Status, can_transition

log = logging.getLogger("smsdispatch.tracking")

IN_FLIGHT = (Status.ACCEPTED.value, Status.SENT.value)


@dataclass
class PollStats:
    provider: str
    calls: int = 0
    polled: int = 0
    changed: int = 0
    expired: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def uses_status_queue(provider: Provider) -> bool:
    """The provider pushes statuses into a queue and this instance has one configured."""
    return provider.HAS_STATUS_QUEUE and provider.status_queue is not None


def apply_reports(provider_name: str, reports: Sequence[StatusReport], source: str) -> int:
    """Apply provider reports to the ledger by the provider's message id (and phone,
    where one call carried several phones). Changes are grouped by (current status,
    new status) and written with bulk statements. Returns the number of changes."""
    by_pid: dict[str, list[StatusReport]] = defaultdict(list)
    for report in reports:
        if report.provider_message_id:
            by_pid[report.provider_message_id].append(report)
    if not by_pid:
        return 0
    changed = 0
    with session_scope() as s:
        rows: list[Any] = []
        pids = list(by_pid)
        for start in range(0, len(pids), 1000):
            rows += s.execute(
                select(MESSAGES.c.id, MESSAGES.c.provider_message_id, MESSAGES.c.to, MESSAGES.c.status).where(
                    MESSAGES.c.provider == provider_name,
                    MESSAGES.c.provider_message_id.in_(pids[start : start + 1000]),
                )
            ).all()
        groups: dict[tuple[Status, Status], list[dict[str, Any]]] = defaultdict(list)
        odd: list[tuple[str, str]] = []
        for mid, pid, phone, current_raw in rows:
            current = Status(current_raw)
            for report in by_pid[pid]:
                if report.phone and report.phone != phone:
                    continue
                if report.status == Status.UNKNOWN:
                    # kept visible, nothing changes: a word we do not know, or one the
                    # document leaves open (the adapter says which in `detail`)
                    raw = report.raw_status
                    odd.append((mid, f"{raw} ({report.detail})" if report.detail else raw))
                    continue
                if can_transition(current, report.status):
                    groups[(current, report.status)].append(
                        {"id": mid, "_raw": report.raw_status, "_detail": report.detail or None}
                    )
                    current = report.status  # a later report of the same call builds on this one
        # Apply in status order so that accepted -> sent -> delivered of one message,
        # reported together (a status queue), lands in that order.
        for (current, new), changes in sorted(groups.items(), key=lambda g: (_rank(g[0][0]), _rank(g[0][1]))):
            changed += len(
                ledger.transition_many(s, changes, new, expect=current, source=source, provider=provider_name)
            )
        for mid, raw in odd:
            ledger.update_fields(
                s, mid, last_error=redact(f"status from {provider_name} we do not read as a change: {raw}")
            )
    return changed


def _rank(status: Status) -> int:
    order = [Status.ACCEPTED, Status.SENT, Status.UNKNOWN]
    return order.index(status) if status in order else len(order)


def expire_overdue(settings: Settings, provider_name: str) -> int:
    """Messages with no final status after the horizon become expired (or unknown)."""
    cfg = settings.provider(provider_name)
    horizon = settings.pipeline.status_horizon
    cutoff = utcnow() - timedelta(seconds=horizon)
    target = Status.UNKNOWN if cfg.on_horizon == "unknown" else Status.EXPIRED
    done = 0
    with session_scope() as s:
        ids = (
            s.execute(
                select(MESSAGES.c.id)
                .where(
                    MESSAGES.c.provider == provider_name,
                    MESSAGES.c.status.in_(IN_FLIGHT),
                    MESSAGES.c.accepted_at < cutoff,
                )
                .limit(5000)
            )
            .scalars()
            .all()
        )
        for mid in ids:
            moved = ledger.transition(
                s, mid, target, source="poll", provider=provider_name,
                detail=f"no final status from {provider_name} within {horizon:g}s of acceptance",
            )  # fmt: skip
            done += moved is not None
    return done


# A status call that fails without any reply (refused, reset, connect timeout) says the
# provider is down as a whole; so do this many failed calls in a row of one round.
FAILED_CALLS_IN_A_ROW = 3
POLL_PAUSE_MAX = 600.0  # seconds: the longest a provider's polling is paused


def poll_due(settings: Settings, coordinator: Coordinator, provider: Provider) -> PollStats:
    """One poll round for one provider instance.

    A round always moves through the due list: a message whose status call fails is
    put back by its own next-poll time with the error kept, and the next message is
    asked. Only a failure of the provider as a whole (no reply at all, or
    ``FAILED_CALLS_IN_A_ROW`` failed calls in a row) ends the round, and pauses the
    provider's polling for a while that grows while it lasts."""
    started = time.monotonic()
    name = provider.name
    stats = PollStats(name)
    stats.expired = expire_overdue(settings, name)
    if coordinator.breaker_state(name).state == "open":
        # The provider is down for sends; its status endpoint gets the same rest.
        stats.errors.append("circuit open: not polled")
        return stats
    if coordinator.get_value(f"poll_paused:{name}"):
        stats.errors.append("polling paused after the provider failed as a whole")
        return stats
    pol = settings.polling
    now = utcnow()
    batch = provider.status_batch
    budget = pol.max_calls_per_cycle * batch
    conditions = [
        MESSAGES.c.provider == name,
        MESSAGES.c.status.in_(IN_FLIGHT),
        MESSAGES.c.next_poll_at <= now,
        MESSAGES.c.provider_message_id.is_not(None),
    ]
    if uses_status_queue(provider):
        # The queue reports these; poll only the ones it has been silent about.
        conditions.append(MESSAGES.c.accepted_at <= now - timedelta(seconds=pol.queue_fallback_after))
    with session_scope() as s:
        due = s.execute(
            select(MESSAGES.c.id, MESSAGES.c.provider_message_id, MESSAGES.c.to, MESSAGES.c.polls)
            .where(*conditions)
            .order_by(MESSAGES.c.next_poll_at)
            .limit(budget)
        ).all()
    if not due:
        stats.seconds = time.monotonic() - started
        return stats
    reports: list[StatusReport] = []
    polled: list[Any] = []
    failed: list[tuple[Any, str]] = []  # (row, error) of messages whose check failed
    in_a_row = 0
    paused = False
    for chunk in chunked(due, batch):
        wait = coordinator.rate_acquire(name, provider.config.rate_limit)
        while wait > 0:
            time.sleep(min(wait, 1.0))
            wait = coordinator.rate_acquire(name, provider.config.rate_limit)
        refs = [MessageRef(mid, pid, to) for mid, pid, to, _ in chunk]
        failure: ProviderError | None = None
        try:
            reports.extend(provider.status(refs))
        except ProviderError as exc:
            failure = exc
        except Exception as exc:
            # Not the provider's answer but our failure to read it (an odd reply the
            # adapter trips on): that message's failure all the same, never a stall.
            log.exception("reading a status reply of %s failed", name)
            failure = RetryableError(redact(f"unreadable status reply: {type(exc).__name__}: {exc}"),
                                     provider=name, kind=provider.KIND, http_status=200)  # fmt: skip
        if failure is not None:
            stats.calls += 1
            stats.errors.append(str(failure))
            failed.extend((row, str(failure)) for row in chunk)
            in_a_row += 1
            no_reply = failure.http_status is None and failure.code is None
            if no_reply or in_a_row >= FAILED_CALLS_IN_A_ROW:
                paused = True
                pause = _pause_polling(coordinator, name, pol.interval)
                log.warning("status polls of %s fail (%s): polling paused for %.0fs", name, failure, pause)
                break
            log.warning("status check at %s failed, the message waits its next turn: %s", name, failure)
            continue
        in_a_row = 0
        stats.calls += 1
        polled.extend(chunk)
    if polled and not paused:
        # A round that ended well: the next pause starts short again.
        coordinator.set_value(f"poll_pauses:{name}", "0")
    stats.polled = len(polled)
    stats.changed = apply_reports(name, reports, "poll")
    schedule_next(settings, polled)
    schedule_next(settings, [row for row, _ in failed], errors={row[0]: err for row, err in failed})
    stats.seconds = time.monotonic() - started
    return stats


def _pause_polling(coordinator: Coordinator, name: str, interval: float) -> float:
    """Pause a provider's polling: one round's interval, doubling while it fails."""
    pauses = int(coordinator.get_value(f"poll_pauses:{name}") or "0")
    pause = min(interval * 2.0**pauses, POLL_PAUSE_MAX)
    coordinator.set_value(f"poll_pauses:{name}", str(pauses + 1))
    coordinator.set_value(f"poll_paused:{name}", "1", ttl=pause)
    return pause


def schedule_next(settings: Settings, polled: Sequence[Any], errors: dict[str, str] | None = None) -> None:
    """Push each polled message's next poll out by the interval for its age. A message
    whose check failed (``errors``: id -> error) backs off the same way, alone, and
    keeps its error."""
    intervals = settings.polling.intervals
    now = utcnow()
    by_polls: dict[int, list[str]] = defaultdict(list)
    for mid, _pid, _to, polls in polled:
        by_polls[int(polls)].append(mid)
    with session_scope() as s:
        for polls, ids in by_polls.items():
            nxt = now + timedelta(seconds=intervals[min(polls + 1, len(intervals) - 1)])
            if errors:
                for mid in ids:
                    s.execute(
                        update(MESSAGES)
                        .where(MESSAGES.c.id == mid)
                        .values(polls=polls + 1, next_poll_at=nxt,
                                last_error=redact(f"status check failed: {errors[mid]}")[:2000])
                    )  # fmt: skip
                continue
            for start in range(0, len(ids), 500):
                s.execute(
                    update(MESSAGES)
                    .where(MESSAGES.c.id.in_(ids[start : start + 500]))
                    .values(polls=polls + 1, next_poll_at=nxt)
                )


def drain_status_queue(settings: Settings, provider: Provider) -> PollStats:
    """Take status changes off the provider's queue until it is empty (or enough rounds)."""
    started = time.monotonic()
    stats = PollStats(provider.name)
    for _ in range(settings.polling.queue_rounds):
        try:
            reports = provider.drain_status_queue(provider.MAX_QUEUE_DRAIN)
        except ProviderError as exc:
            stats.errors.append(str(exc))
            log.warning("status queue of %s failed: %s", provider.name, exc)
            break
        stats.calls += 1
        stats.polled += len(reports)
        stats.changed += apply_reports(provider.name, reports, "status_queue")
        if len(reports) < provider.MAX_QUEUE_DRAIN:
            break
    stats.seconds = time.monotonic() - started
    return stats


def read_balances(settings: Settings, coordinator: Coordinator) -> list[dict[str, Any]]:
    """Read every enabled provider's balance; keep the history; flag low balances."""
    rows: list[dict[str, Any]] = []
    for pc in settings.enabled_providers:
        provider = make_provider(pc)
        row: dict[str, Any] = {
            "provider": pc.name,
            "amount": None,
            "credit": None,
            "currency": None,
            "error": None,
            "low": False,
        }
        try:
            if not provider.HAS_BALANCE:
                continue
            balance = provider.balance()
            row["amount"], row["credit"], row["currency"] = balance.amount, balance.credit, balance.currency
            # Routing compares its threshold with what can be spent: balance plus credit.
            spendable = balance.spendable
            coordinator.set_value(f"balance:{pc.name}", repr(spendable))
            coordinator.set_value(f"balance_error:{pc.name}", "")
            threshold = pc.balance_threshold
            if threshold is not None and spendable is not None and spendable < threshold:
                row["low"] = True
                log.error(
                    "%s can spend %.2f (balance and credit), under its threshold %.2f: routing skips it "
                    "until topped up", pc.name, spendable, threshold,
                )  # fmt: skip
        except ProviderError as exc:
            row["error"] = str(exc)
            coordinator.set_value(f"balance_error:{pc.name}", str(exc))
        finally:
            provider.close()
        rows.append(row)
    if rows:
        now = utcnow()
        with session_scope() as s:
            s.execute(
                insert(BALANCES),
                [{"provider": r["provider"], "at": now, "amount": r["amount"], "credit": r["credit"],
                  "currency": r["currency"], "error": r["error"]} for r in rows],
            )  # fmt: skip
    return rows
