"""The pace of status calls: the rate-limit slots a poll group's calls take, and the count
of status calls a second the operator's views show."""

from __future__ import annotations

import threading
import time
from collections import deque

from dispatcher.coordination import Coordinator

# From the sends' rate-limit bucket a group takes this many seconds' worth of slots at a
# time, and only while the bucket is free: a send never finds it reserved further ahead
# than that (the send path waits at most sending.MAX_RATE_WAIT, a second, for a slot),
# so sends come first and polls take what they leave.
SHARED_SPAN = 0.25


class Slots:
    """Rate-limit slots for one group's calls, one per call (``take``). From a bucket of
    its own (``status_rate_limit``) the group reserves them all at once, up to
    ``patience`` ahead. From the sends' bucket (``shared``) it takes ``SHARED_SPAN``
    seconds' worth at a time, and only while the bucket is free now: a group reserving
    its whole span there would keep the sends from ever finding a slot within their
    second. Calls that find no slot within ``patience`` are not made (``short``)."""

    def __init__(self, coordinator: Coordinator, bucket: str, rate: float, calls: int, *, shared: bool,
                 patience: float) -> None:  # fmt: skip
        self.coordinator, self.bucket, self.rate = coordinator, bucket, rate
        self.left, self.shared, self.patience = calls, shared, patience
        self.deadline = time.monotonic() + patience
        self.short = 0
        self._stash: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> float | None:
        """The monotonic time this call may start at, or None: no slot in time."""
        if self.rate <= 0:
            return time.monotonic()
        with self._lock:
            while not self._stash:
                now = time.monotonic()
                if self.left <= 0 or now >= self.deadline:
                    self.short += 1
                    return None
                take = max(1, min(self.left, int(self.rate * SHARED_SPAN))) if self.shared else self.left
                ok, wait = self.coordinator.rate_reserve(self.bucket, self.rate, take,
                                                         0.0 if self.shared else self.patience)  # fmt: skip
                if ok:
                    self._stash.extend(now + wait + i / self.rate for i in range(take))
                    self.left -= take
                elif self.shared:
                    time.sleep(max(0.0, min(wait, 0.25, self.deadline - now)))
                else:
                    self.deadline = now  # its own bucket is spent further ahead than it waits
            return self._stash.popleft()


def count_status_calls(coordinator: Coordinator, name: str, calls: int) -> None:
    """Count ``calls`` status calls of ``name`` in the current minute's bucket."""
    if calls:
        coordinator.add(f"status_calls:{name}:{int(time.time() // 60)}", calls, ttl=180.0)


def status_calls_per_second(coordinator: Coordinator, name: str) -> float:
    """Status calls of ``name`` per second over the last minute and this one so far."""
    now = time.time()
    minute = int(now // 60)
    calls = sum(int(coordinator.get_value(f"status_calls:{name}:{m}") or 0) for m in (minute - 1, minute))
    return calls / (60.0 + now - minute * 60)
