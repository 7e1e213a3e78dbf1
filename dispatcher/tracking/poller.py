"""Status polls in groups, as sends go.

A poll round (beat, ``dispatch``, every ``polling.interval`` per provider instance)
makes no call: it counts the due polls and publishes poll groups on ``sms.poll``, as
many as the due polls fill (bounded by the status rate limit and by the groups
already waiting), so every worker consuming that queue polls. A group (``poll_group``):

1. claims up to ``polling.group_calls`` calls' worth of due polls in one statement
   (``ledger.claim_polls``: SKIP LOCKED on PostgreSQL, the write lock on SQLite), so
   two workers never ask about one message in one round;
2. takes its rate-limit slots at once (status calls share the instance's
   ``rate_limit`` with sends unless ``status_rate_limit`` is set) and makes its calls
   concurrently on the process's call threads (``ProviderPool``, the send path's);
3. writes every answer back in one transaction (``ledger.apply_polls``), riding out a
   database restart as the send path's write-back does.

A call that fails is its own message's failure: it backs off alone with the error
kept. Only the provider failing as a whole (a call with no reply at all, or
``FAILED_CALLS_IN_A_ROW`` failures in a row) stops the group's calls not yet made and
pauses the provider's polling: one round's interval, doubling while it lasts.

prostor-sms.ru's status queue (``drain_queue``) is drained while it stays full, each
drain written in one transaction (``ledger.apply_reports``); a queue still full after
``polling.queue_rounds`` drains is taken on by the next task at once.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dispatcher import ledger
from dispatcher.config import ProviderConfig, Settings
from dispatcher.coordination import Coordinator
from dispatcher.db import session_scope, write_through_outage
from dispatcher.errors import ProviderError, RetryableError
from dispatcher.ledger import Horizon, PollClaim, PollResult
from dispatcher.models import utcnow
from dispatcher.providers.base import MessageRef, Provider, StatusReport
from dispatcher.providers.pool import ProviderPool
from dispatcher.redact import redact
from dispatcher.status import Status
from dispatcher.tracking.pace import Slots, count_status_calls
from dispatcher.tracking.timing import FirstPolls, uses_queue

log = logging.getLogger("smsdispatch.tracking")

# A status call that fails without any reply (refused, reset, connect timeout) says the
# provider is down as a whole; so do this many failed calls in a row of one group.
FAILED_CALLS_IN_A_ROW = 3
POLL_PAUSE_MAX = 600.0  # seconds: the longest a provider's polling is paused
LEASE_MARGIN = 30.0  # seconds a claim outlives its group's worst case
MAX_GROUPS_PER_ROUND = 200  # poll groups one round may publish for one provider
MAX_GROUP_MESSAGES = 2000  # messages one group's write-back (one transaction) holds at most
UNASKED_EVERY = 60.0  # seconds between two looks for messages no poll will end
# Past the horizon, the polls of a message that get no answer go on this many of the
# longest gap before it ends unknown.
HORIZON_GRACE = 4
# A group's calls in flight at once: a few runners on the process's call threads, each
# taking the next call as it finishes one (a thread handoff per call cost more CPU than
# the waiting it saves; many groups run at once under load anyway).
CALLS_IN_FLIGHT = 8

# (provider, tickets, expires): publish one poll-group task per ticket, each expiring
# unrun after that many seconds (a round later publishes afresh).
PublishGroups = Callable[[str, Sequence[str], float], None]


@dataclass
class PollStats:
    provider: str
    calls: int = 0
    polled: int = 0
    changed: int = 0
    expired: int = 0
    due: int = 0  # polls due when the round looked
    published: int = 0  # poll groups the round published
    seconds: float = 0.0
    more: bool = False  # a status queue still full when the task stopped draining
    errors: list[str] = field(default_factory=list)


def uses_status_queue(provider: Provider) -> bool:
    """The provider pushes statuses into a queue and this instance has one configured."""
    return provider.HAS_STATUS_QUEUE and provider.status_queue is not None


def quiet_before(settings: Settings, cfg: ProviderConfig, now: datetime) -> datetime | None:
    """For an instance whose statuses come through a status queue, the acceptance time
    before which the queue has been silent long enough for a poll by id (None: every
    message is polled)."""
    if not uses_queue(cfg):
        return None
    return now - timedelta(seconds=settings.polling.queue_fallback_after)


class Poller:
    def __init__(self, settings: Settings, coordinator: Coordinator, calls: ProviderPool,
                 publish_groups: PublishGroups, first_polls: FirstPolls | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.coordinator = coordinator
        self.calls = calls
        self.publish_groups = publish_groups
        self.first_polls = first_polls if first_polls is not None else FirstPolls(settings, coordinator)

    # -- what a round and a group share ---------------------------------------------------

    def _group_calls(self, provider: Provider) -> int:
        """Status calls per group: ``polling.group_calls``, fewer for a provider asked
        many ids a call (a group's write-back is one transaction: a few thousand rows),
        and never over ``max_calls_per_cycle``."""
        cap = self.settings.polling.max_calls_per_cycle
        calls = min(self.settings.polling.group_calls, max(1, MAX_GROUP_MESSAGES // provider.status_batch))
        return min(calls, cap) if cap else calls

    def horizon(self, cfg: ProviderConfig, now: datetime) -> Horizon:
        seconds = self.settings.pipeline.status_horizon
        target = Status.UNKNOWN if cfg.on_horizon == "unknown" else Status.EXPIRED
        grace = HORIZON_GRACE * max(self.settings.polling.intervals)
        return Horizon(now - timedelta(seconds=seconds), seconds, target,
                       f"no final status from {cfg.name} within {seconds:g}s of acceptance",
                       now - timedelta(seconds=seconds + grace))  # fmt: skip

    def _resting(self, name: str, stats: PollStats) -> tuple[bool, bool]:
        """Whether the provider's polling rests now: its breaker is open (its status
        endpoint gets the rest its sends get), or it failed as a whole lately; and
        whether it has paused lately (a pause to forget once a group goes well)."""
        if self.coordinator.breaker_state(name).state == "open":
            stats.errors.append("circuit open: not polled")
            return True, True
        paused, pauses = self.coordinator.get_values([f"poll_paused:{name}", f"poll_pauses:{name}"])
        if paused:
            stats.errors.append("polling paused after the provider failed as a whole")
            return True, True
        return False, pauses not in (None, "0")

    # -- the round (beat) -----------------------------------------------------------------

    def dispatch(self, name: str) -> PollStats:
        """One poll round of ``name``: end what no poll will end, step the first-poll
        delay, and publish the poll groups the due polls fill."""
        started = time.monotonic()
        stats = PollStats(name)
        cfg = self.settings.provider(name)
        now = utcnow()
        if self.coordinator.acquire_lock(f"poll_unasked:{name}", ttl=UNASKED_EVERY) is not None:
            # Rare (no provider id; polls that never came), and a read of the provider's
            # messages in flight: once a minute whichever worker runs the round (the lock
            # lapses, never released). Before the rest below, so a provider paused for
            # days still ends its messages.
            with session_scope() as s:
                stats.expired = ledger.expire_unasked(s, name, self.horizon(cfg, now), now)
        if self._resting(name, stats)[0]:
            return stats
        quiet = quiet_before(self.settings, cfg, now)
        if quiet is None:
            try:
                self.first_polls.learn(name)
            except Exception:  # learning is advice: a failed step leaves the delay as it was
                log.warning("first-poll delay of %s not stepped", name, exc_info=True)
        provider = self.calls.get(name)
        cap = min(100_000, MAX_GROUPS_PER_ROUND * self._group_calls(provider) * provider.status_batch)
        with session_scope() as s:
            stats.due, _ = ledger.due_polls(s, name, now, quiet_before=quiet, cap=cap)
        if stats.due:
            stats.published = self._publish(provider, stats.due)
        stats.seconds = time.monotonic() - started
        return stats

    def _publish(self, provider: Provider, due: int) -> int:
        pol = self.settings.polling
        calls = self._group_calls(provider)
        want = math.ceil(due / (calls * provider.status_batch))
        _, rate = provider.config.status_rate
        if rate > 0:
            # What the rate lets through in one round, and one group to spare.
            want = min(want, math.ceil(rate * pol.interval / calls) + 1)
        if pol.max_calls_per_cycle:
            # Whole groups within the cap (a group is never larger than the cap).
            want = min(want, max(1, pol.max_calls_per_cycle // calls))
        want = min(want, MAX_GROUPS_PER_ROUND)
        # Groups published and not yet started hold a ticket each (a group takes its own
        # off as it starts; one that expired unrun lapses with its task): a round tops
        # them up instead of piling more behind them.
        key, expires = f"poll_groups:{provider.name}", max(3 * pol.interval, 30.0)
        more = max(0, want - self.coordinator.tickets_held(key))
        if more:
            tickets = [uuid.uuid4().hex for _ in range(more)]
            self.coordinator.tickets_add(key, tickets, expires)
            try:
                self.publish_groups(provider.name, tickets, expires)
            except Exception:
                for ticket in tickets:  # not published: not waiting either
                    self.coordinator.tickets_take(key, ticket)
                raise
        return more

    # -- a group (any worker of sms.poll) -------------------------------------------------

    def patience(self, cfg: ProviderConfig, calls: int) -> float:
        """How long a group's calls wait for rate-limit slots in all: a round, and the
        group's own spread at the rate."""
        _, rate = cfg.status_rate
        return self.settings.polling.interval + (calls / rate if rate > 0 else 0.0)

    def lease(self, cfg: ProviderConfig, calls: int) -> float:
        """How long a group's claim holds: its wait for slots (the first up to
        ``patience`` away, the others following at the rate), its calls in turn at their
        worst (``CALLS_IN_FLIGHT`` at a time), and a margin. No call starts later than
        its worst case before the lease ends (``_ask``)."""
        turns = math.ceil(calls / min(CALLS_IN_FLIGHT, self.settings.pipeline.call_concurrency))
        _, rate = cfg.status_rate
        spread = calls / rate if rate > 0 else 0.0
        return LEASE_MARGIN + turns * (cfg.connect_timeout + cfg.timeout) + self.patience(cfg, calls) + spread

    def poll_group(self, name: str, ticket: str | None = None) -> PollStats:
        """Claim a group of due polls of ``name``, ask the provider, write the answers
        back. ``ticket``: the one its round published it with (taken off: started)."""
        started = time.monotonic()
        stats = PollStats(name)
        if ticket is not None:
            try:
                self.coordinator.tickets_take(f"poll_groups:{name}", ticket)
            except Exception as exc:  # advice only: the ticket lapses, a round may publish less
                log.debug("poll group ticket of %s not taken: %s", name, exc)
        resting, paused_lately = self._resting(name, stats)
        if resting:
            return stats
        provider = self.calls.get(name)
        cfg = provider.config
        calls, batch = self._group_calls(provider), provider.status_batch
        now = utcnow()
        lease = self.lease(cfg, calls)
        lease_until = now + timedelta(seconds=lease)
        # The last moment a call may start and still end before the lease does.
        last_start = time.monotonic() + lease - (cfg.connect_timeout + cfg.timeout) - LEASE_MARGIN / 2
        with session_scope() as s:
            claims = ledger.claim_polls(s, name, now, calls * batch, lease_until,
                                        quiet_before=quiet_before(self.settings, cfg, now))  # fmt: skip
        if not claims:
            stats.seconds = time.monotonic() - started
            return stats
        units = [claims[i : i + batch] for i in range(0, len(claims), batch)]
        bucket, rate = cfg.status_rate
        slots = Slots(self.coordinator, bucket, rate, len(units), shared=cfg.status_rate_limit is None,
                      patience=self.patience(cfg, len(units)))  # fmt: skip
        results, failures, whole = self._ask(provider, units, slots, last_start)
        stats.calls = sum(1 for u in results if u and u[0].asked)
        stats.polled = sum(1 for u in results for r in u if r.asked and r.error is None)
        stats.errors += [str(f) for f in failures]
        if slots.short:
            stats.errors.append(
                f"rate limit: {slots.short} calls found no slot; their messages wait their turn"
            )
        counts = self._write(name, [r for unit in results for r in unit], lease_until)
        stats.changed = counts.get("final", 0) + counts.get("changed", 0) + counts.get("horizon", 0)
        try:
            count_status_calls(self.coordinator, name, stats.calls)
            if quiet_before(self.settings, cfg, now) is None:  # a queue's instance learns nothing
                self.first_polls.record(name, counts.get("first", 0), counts.get("first_final", 0))
        except Exception as exc:  # the operator's figure and learning: advice only
            log.debug("status calls of %s not counted: %s", name, exc)
        if whole is not None:
            pause = self._pause(name)
            log.warning("status polls of %s fail (%s): polling paused for %.0fs", name, whole, pause)
        elif stats.polled and paused_lately:
            # A group that went well: the next pause starts short again.
            self.coordinator.set_value(f"poll_pauses:{name}", "0")
        stats.seconds = time.monotonic() - started
        return stats

    def _write(self, name: str, results: list[PollResult], lease_until: datetime) -> dict[str, int]:
        """The group's answers in one transaction. They exist only in this worker's memory:
        a database restart is ridden out, as the send path's write-back does."""
        cfg = self.settings.provider(name)
        pol = self.settings.polling
        on_time = max(2 * pol.interval, 5.0)  # a first poll made later than this teaches nothing

        def write() -> dict[str, int]:
            at = utcnow()
            with session_scope() as s:
                return ledger.apply_polls(
                    s, name, results, at, lease_until=lease_until, horizon=self.horizon(cfg, at),
                    on_time=on_time, next_due=lambda c: self.first_polls.next_poll(c.accepted_at, at),
                )  # fmt: skip

        return write_through_outage(write)

    def _ask(
        self, provider: Provider, units: list[list[PollClaim]], slots: Slots, last_start: float
    ) -> tuple[list[list[PollResult]], list[ProviderError], ProviderError | None]:
        """The group's status calls, each at its rate-limit slot, ``CALLS_IN_FLIGHT`` at a
        time. This task's thread waits for the slots and hands each call over when its
        slot comes, so the process's call threads (the send path's too) only ever wait
        on a provider. Returns each unit's results, the failures, and the failure that
        says the provider is down as a whole. A call not made (the provider down as a
        whole, no slot in time, too late for the lease) leaves its messages unasked."""
        lock = threading.Lock()
        stop = threading.Event()
        state: dict[str, int] = {"in_a_row": 0}
        failures: list[ProviderError] = []
        whole: list[ProviderError] = []
        results: list[list[PollResult]] = [[PollResult(c, [], asked=False) for c in unit] for unit in units]

        def one(unit: list[PollClaim]) -> list[PollResult]:
            refs = [MessageRef(c.id, c.provider_message_id, c.to) for c in unit]
            failure: ProviderError | None = None
            try:
                reports = provider.status(refs)
                found = _matched(unit, reports)
            except ProviderError as exc:
                failure = exc
            except Exception as exc:
                # Not the provider's answer but our failure to read it (an odd reply the
                # adapter trips on): that message's failure all the same, never a stall.
                log.exception("reading a status reply of %s failed", provider.name)
                said = redact(f"unreadable status reply: {type(exc).__name__}: {exc}")
                failure = RetryableError(said, provider=provider.name, kind=provider.KIND, http_status=200)
            with lock:
                if failure is None:
                    state["in_a_row"] = 0
                else:
                    failures.append(failure)
                    state["in_a_row"] += 1
                    no_reply = failure.http_status is None and failure.code is None
                    if (no_reply or state["in_a_row"] >= FAILED_CALLS_IN_A_ROW) and not whole:
                        whole.append(failure)
                        stop.set()
            if failure is not None:
                log.warning("status check at %s failed, the message waits its next turn: %s", provider.name,
                            failure)  # fmt: skip
                return [PollResult(c, [], error=str(failure)) for c in unit]
            return found

        handed: queue.SimpleQueue[int | None] = queue.SimpleQueue()

        def runner() -> None:
            while (i := handed.get()) is not None:
                results[i] = one(units[i])

        runners = min(len(units), CALLS_IN_FLIGHT)
        futures = [self.calls.submit(runner) for _ in range(runners)] if runners > 1 else []
        for i in range(len(units)):
            if stop.is_set():
                break
            try:
                at = slots.take()
            except Exception as exc:  # the coordinator away: no slot, the rest keep their turn
                log.warning("no rate-limit slot for status calls of %s: %s", provider.name, exc)
                break
            if at is None or at > last_start:
                break
            if at > time.monotonic():
                time.sleep(at - time.monotonic())
            if stop.is_set():
                break
            if futures:
                handed.put(i)
            else:
                results[i] = one(units[i])
        for _ in futures:
            handed.put(None)
        wait(futures)
        for f in futures:
            f.result()
        return results, failures, whole[0] if whole else None

    def _pause(self, name: str) -> float:
        """Pause a provider's polling: one round's interval, doubling while it fails."""
        pauses = int(self.coordinator.get_value(f"poll_pauses:{name}") or "0")
        pause = min(self.settings.polling.interval * 2.0**pauses, POLL_PAUSE_MAX)
        self.coordinator.set_value(f"poll_pauses:{name}", str(pauses + 1))
        self.coordinator.set_value(f"poll_paused:{name}", "1", ttl=pause)
        return pause

    # -- the status queue -----------------------------------------------------------------

    def drain_queue(self, name: str) -> PollStats:
        """Take status changes off the provider's queue while it stays full (up to
        ``polling.queue_rounds`` drains; ``more`` when it was still full then)."""
        started = time.monotonic()
        stats = PollStats(name)
        provider = self.calls.get(name)
        full = provider.MAX_QUEUE_DRAIN
        for _ in range(self.settings.polling.queue_rounds):
            try:
                reports = provider.drain_status_queue(full)
            except ProviderError as exc:
                stats.errors.append(str(exc))
                log.warning("status queue of %s failed: %s", name, exc)
                break
            stats.calls += 1
            stats.polled += len(reports)
            stats.changed += self.apply_queue(name, reports)
            if len(reports) < full:
                break
        else:
            stats.more = True
        try:
            count_status_calls(self.coordinator, name, stats.calls)
        except Exception as exc:  # the operator's figure only
            log.debug("status calls of %s not counted: %s", name, exc)
        stats.seconds = time.monotonic() - started
        return stats

    def apply_queue(self, name: str, reports: Sequence[StatusReport]) -> int:
        """One drain's changes, written in one transaction: they were taken off the
        provider's queue and exist nowhere else, so a database restart is ridden out."""

        def write() -> int:
            with session_scope() as s:
                return ledger.apply_reports(s, name, reports, utcnow(), source="status_queue")

        return write_through_outage(write) if reports else 0


def _matched(unit: Sequence[PollClaim], reports: Sequence[StatusReport]) -> list[PollResult]:
    """Each claimed message with the reports that name it: by the provider's id, and the
    phone where a report gives one (one id may have carried several phones)."""
    by_pid: dict[str, list[StatusReport]] = defaultdict(list)
    for r in reports:
        if r.provider_message_id:
            by_pid[r.provider_message_id].append(r)
    return [
        PollResult(c, [r for r in by_pid.get(c.provider_message_id, []) if not r.phone or r.phone == c.to])
        for c in unit
    ]
