"""When to ask about a message: its first status poll comes when its provider usually
delivers, learnt from what the polls find; the next ones follow ``polling.intervals``.

What a poll can tell is censored: one that finds a message delivered says only that it
was delivered by then, not when. The p50 of "accepted -> delivered as we learnt it"
therefore includes our own poll lag, and a first poll set from it moves later each
time it is learnt again, up to its ceiling. What a first poll finds is exact, though:
whether the message was final by then. So the first poll's delay is where half the
first polls find a final status, which is the p50 of the provider's time from
acceptance to a final status as a poll sees it. Each poll group's write-back tallies
its first polls made on time (a poll that lagged would find more messages final and
pull the delay down when polling is already behind); every ``LEARN_EVERY`` seconds
the share that found one moves the delay down when it is high and up when it is low,
at most halving or doubling it a step, within ``polling.first_poll_floor`` and
``polling.intervals[0]``. Until ``MIN_SAMPLES`` first polls are tallied, the first
poll comes at ``intervals[0]``, as it always did.

After the first poll the schedule is anchored on acceptance: the polls fall at
``intervals[0]``, then ``intervals[0] + intervals[1]``, ... (the last gap repeating),
the first such point at least ``first_poll_floor`` ahead. A learnt first poll is one
point more before them; a poll that came late skips the points it missed rather than
crowding after them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.config import ProviderConfig, Settings
from dispatcher.coordination import Coordinator
from dispatcher.errors import ConfigError
from dispatcher.providers import adapter_class

log = logging.getLogger("smsdispatch.tracking")

TARGET = 0.5  # the share of first polls that should find a final status: the p50
BAND = 0.1  # within TARGET +- BAND the delay stays as it is
LEARN_EVERY = 30.0  # seconds between two steps of one provider's delay
MIN_SAMPLES = 20  # first polls a step needs; fewer: they wait for the next look
CACHED = 5.0  # seconds a process keeps a delay it read


@dataclass(frozen=True)
class Learnt:
    """One provider's first-poll delay and what it was learnt from."""

    delay: float  # seconds from acceptance to the first poll
    share: float | None  # of the last step's first polls, those that found a final status
    samples: int  # first polls in that step


def next_poll(
    accepted_at: datetime | None, now: datetime, intervals: tuple[float, ...], floor: float
) -> datetime:
    """The next poll after one made ``now``: the first of ``accepted_at +
    intervals[0]``, ``+ intervals[1]``, ... (the last gap repeating) at least ``floor``
    seconds after ``now``."""
    if accepted_at is None:
        return now + timedelta(seconds=intervals[0])
    wanted = (now - accepted_at).total_seconds() + floor
    at = 0.0
    for gap in intervals:
        at += gap
        if at >= wanted:
            return accepted_at + timedelta(seconds=at)
    last = intervals[-1]
    return accepted_at + timedelta(seconds=at + math.ceil((wanted - at) / last) * last)


def step(delay: float, share: float, floor: float, ceiling: float) -> float:
    """The next first-poll delay after a step in which ``share`` of the first polls
    found a final status: at most halved (all found one) or doubled (none did)."""
    if abs(share - TARGET) <= BAND:
        return delay
    factor: float = 2.0 ** (2.0 * (TARGET - share))
    return min(ceiling, max(floor, delay * factor))


def uses_queue(cfg: ProviderConfig) -> bool:
    """The instance's statuses come through a status queue (prostor's)."""
    return bool(adapter_class(cfg.kind).HAS_STATUS_QUEUE and cfg.option("status_queue"))


class FirstPolls:
    """Each provider's first-poll delay, shared by every worker through the coordinator.
    Read by the send path at each acceptance (kept for ``CACHED`` seconds per process),
    fed by the poll groups (``record``), stepped by the poll rounds (``learn``)."""

    def __init__(self, settings: Settings, coordinator: Coordinator) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self._seen: dict[str, tuple[float, float]] = {}  # name -> (delay, monotonic time read)
        self._lock = threading.Lock()

    @property
    def ceiling(self) -> float:
        return self.settings.polling.intervals[0]

    @property
    def floor(self) -> float:
        return min(self.settings.polling.first_poll_floor, self.ceiling)

    def delay(self, name: str) -> float:
        """Seconds from acceptance to the first poll of a message of ``name``. An
        instance whose statuses come through a status queue is polled by id only after
        the queue's silence (``polling.queue_fallback_after``): its first poll is then."""
        try:
            cfg = self.settings.provider(name)
        except ConfigError:  # an instance no longer configured: the plain schedule
            return self.ceiling
        if uses_queue(cfg):
            return self.settings.polling.queue_fallback_after
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(name)
        if seen is not None and now - seen[1] < CACHED:
            return seen[0]
        found = self.ceiling
        try:
            raw = self.coordinator.get_value(f"poll_first:{name}")
            if raw is not None:
                found = min(self.ceiling, max(self.floor, float(raw)))
        except Exception as exc:  # advice only: the coordinator away costs a later first poll
            log.debug("first-poll delay of %s unreadable: %s", name, exc)
        with self._lock:
            self._seen[name] = (found, now)
        return found

    def next_poll(self, accepted_at: datetime | None, now: datetime) -> datetime:
        return next_poll(accepted_at, now, self.settings.polling.intervals, self.floor)

    def record(self, name: str, first: int, final: int) -> None:
        """``first`` first polls made on time, of which ``final`` found a final status."""
        if first:
            self.coordinator.tally(f"poll_first:{name}", {"n": first, "final": final})

    def learnt(self, name: str) -> Learnt:
        """The delay and the step it was last set on (for the operator's views)."""
        raw = self.coordinator.get_value(f"poll_first_share:{name}")
        share, samples = None, 0
        if raw:
            left, _, right = raw.partition("/")
            share, samples = float(left), int(right or 0)
        with self._lock:
            self._seen.pop(name, None)
        return Learnt(self.delay(name), share, samples)

    def learn(self, name: str) -> Learnt | None:
        """One step of ``name``'s delay, at most every ``LEARN_EVERY`` seconds and only on
        ``MIN_SAMPLES`` first polls; None when it is not time yet. The poll round of each
        provider calls it under that round's lock, so steps never overlap."""
        if self.coordinator.acquire_lock(f"poll_first_step:{name}", ttl=LEARN_EVERY) is None:
            return None  # stepped less than LEARN_EVERY ago (the lock lapses, never released)
        taken = self.coordinator.take_tally(f"poll_first:{name}")
        n, final = taken.get("n", 0), taken.get("final", 0)
        if n < MIN_SAMPLES:
            if n:
                self.coordinator.tally(f"poll_first:{name}", taken)  # kept for the next look
            return None
        share = final / n
        with self._lock:
            self._seen.pop(name, None)
        old = self.delay(name)
        new = step(old, share, self.floor, self.ceiling)
        self.coordinator.set_value(f"poll_first:{name}", repr(new))
        self.coordinator.set_value(f"poll_first_share:{name}", f"{share:.3f}/{n}")
        with self._lock:
            self._seen[name] = (new, time.monotonic())
        if new != old:
            log.info("%s: %.0f%% of %d first polls found a final status; first poll now %.2f s after "
                     "acceptance (was %.2f s)", name, share * 100, n, new, old)  # fmt: skip
        return Learnt(new, share, n)
