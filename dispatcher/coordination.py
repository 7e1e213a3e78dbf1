"""State shared by every worker: circuit breakers and rate limits per provider
instance, locks, the last known balances.

``RedisCoordinator`` keeps it in Redis (the broker's server) with Lua scripts that
read Redis' own clock, so workers on several hosts agree. ``MemoryCoordinator`` is
its in-process twin for the embedded demo and for unit tests; the contract tests run
over both.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

PREFIX = "smsd:"

# What breaker_allows answers: falsy only when the provider is to be skipped.
SKIP, CLOSED, PROBE = 0, 1, 2


@dataclass
class BreakerState:
    state: str  # closed | open | half-open
    failures: int
    opens: int
    retry_in: float  # seconds until an open breaker lets a probe through


class Coordinator:
    """Plain base class; see the two implementations below."""

    def breaker_allows(self, name: str, probe_ttl: float) -> int:
        """CLOSED: use it. PROBE: the breaker is half-open and this caller holds the
        one probe for ``probe_ttl`` seconds. SKIP (0): open, or another probe is out."""
        raise NotImplementedError

    def breaker_failure(self, name: str, threshold: int, cooldown: float) -> bool:
        """Record a provider-level or transient failure; True when the breaker is open."""
        raise NotImplementedError

    def breaker_success(self, name: str) -> None:
        raise NotImplementedError

    def breaker_state(self, name: str) -> BreakerState:
        raise NotImplementedError

    def rate_acquire(self, name: str, per_second: float) -> float:
        """Take one slot; 0.0 when granted, else the seconds to wait (nothing taken)."""
        raise NotImplementedError

    def acquire_lock(self, name: str, ttl: float) -> bool:
        raise NotImplementedError

    def release_lock(self, name: str) -> None:
        raise NotImplementedError

    def set_value(self, name: str, value: str) -> None:
        raise NotImplementedError

    def get_value(self, name: str) -> str | None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


# -- Redis --------------------------------------------------------------------------

_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

_ALLOW = (
    _NOW
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return 1 end
if now < open_until then return 0 end
-- half-open: let one probe through at a time; a probe that never reports expires
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe_until then return 0 end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
return 2
"""
)

_FAIL = (
    _NOW
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local cooldown = tonumber(ARGV[2])
if open_until > 0 then
  if now >= open_until then
    -- the probe failed: open again for another cool-down
    redis.call('HSET', KEYS[1], 'open_until', now + cooldown, 'probe_until', 0, 'failures', 0)
    redis.call('HINCRBY', KEYS[1], 'opens', 1)
  end
  return 1
end
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'open_until', now + cooldown, 'probe_until', 0, 'failures', 0)
  redis.call('HINCRBY', KEYS[1], 'opens', 1)
  return 1
end
return 0
"""
)

# GCRA without burst: the key holds the earliest time of the next slot.
_RATE = (
    _NOW
    + """
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then return tat - now end
redis.call('SET', KEYS[1], now + interval, 'PX', interval + 1000)
return 0
"""
)

_STATE = (
    _NOW
    + """
local h = redis.call('HMGET', KEYS[1], 'open_until', 'failures', 'opens')
return {now, tonumber(h[1] or '0'), tonumber(h[2] or '0'), tonumber(h[3] or '0')}
"""
)


class RedisCoordinator(Coordinator):
    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
        self._allow = self.client.register_script(_ALLOW)
        self._fail = self.client.register_script(_FAIL)
        self._rate = self.client.register_script(_RATE)
        self._state = self.client.register_script(_STATE)

    def breaker_allows(self, name: str, probe_ttl: float) -> int:
        return int(self._allow(keys=[f"{PREFIX}breaker:{name}"], args=[int(probe_ttl * 1000)]))

    def breaker_failure(self, name: str, threshold: int, cooldown: float) -> bool:
        key = f"{PREFIX}breaker:{name}"
        return int(self._fail(keys=[key], args=[threshold, int(cooldown * 1000)])) == 1

    def breaker_success(self, name: str) -> None:
        self.client.hset(
            f"{PREFIX}breaker:{name}", mapping={"failures": 0, "open_until": 0, "probe_until": 0}
        )

    def breaker_state(self, name: str) -> BreakerState:
        now, open_until, failures, opens = (int(x) for x in self._state(keys=[f"{PREFIX}breaker:{name}"]))
        return _state_of(now / 1000, open_until / 1000, failures, opens)

    def rate_acquire(self, name: str, per_second: float) -> float:
        if per_second <= 0:
            return 0.0
        interval = max(1, int(1000 / per_second))
        return int(self._rate(keys=[f"{PREFIX}rate:{name}"], args=[interval])) / 1000.0

    def acquire_lock(self, name: str, ttl: float) -> bool:
        return bool(self.client.set(f"{PREFIX}lock:{name}", "1", nx=True, px=int(ttl * 1000)))

    def release_lock(self, name: str) -> None:
        self.client.delete(f"{PREFIX}lock:{name}")

    def set_value(self, name: str, value: str) -> None:
        self.client.set(f"{PREFIX}value:{name}", value)

    def get_value(self, name: str) -> str | None:
        value: Any = self.client.get(f"{PREFIX}value:{name}")
        return value.decode() if isinstance(value, bytes) else value

    def reset(self) -> None:
        keys = list(self.client.scan_iter(f"{PREFIX}*"))
        if keys:
            self.client.delete(*keys)


def _state_of(now: float, open_until: float, failures: int, opens: int) -> BreakerState:
    if open_until == 0:
        return BreakerState("closed", failures, opens, 0.0)
    if now < open_until:
        return BreakerState("open", failures, opens, open_until - now)
    return BreakerState("half-open", failures, opens, 0.0)


# -- in memory ------------------------------------------------------------------------


class MemoryCoordinator(Coordinator):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, dict[str, float]] = {}
        self._tat: dict[str, float] = {}
        self._locks: dict[str, float] = {}
        self._values: dict[str, str] = {}

    def _b(self, name: str) -> dict[str, float]:
        return self._breakers.setdefault(
            name, {"open_until": 0.0, "probe_until": 0.0, "failures": 0, "opens": 0}
        )

    def breaker_allows(self, name: str, probe_ttl: float) -> int:
        now = time.monotonic()
        with self._lock:
            b = self._b(name)
            if b["open_until"] == 0:
                return CLOSED
            if now < b["open_until"] or now < b["probe_until"]:
                return SKIP
            b["probe_until"] = now + probe_ttl
            return PROBE

    def breaker_failure(self, name: str, threshold: int, cooldown: float) -> bool:
        now = time.monotonic()
        with self._lock:
            b = self._b(name)
            if b["open_until"] > 0:
                if now >= b["open_until"]:
                    b.update(open_until=now + cooldown, probe_until=0.0, failures=0, opens=b["opens"] + 1)
                return True
            b["failures"] += 1
            if b["failures"] >= threshold:
                b.update(open_until=now + cooldown, probe_until=0.0, failures=0, opens=b["opens"] + 1)
                return True
            return False

    def breaker_success(self, name: str) -> None:
        with self._lock:
            self._b(name).update(failures=0, open_until=0.0, probe_until=0.0)

    def breaker_state(self, name: str) -> BreakerState:
        with self._lock:
            b = dict(self._b(name))
        return _state_of(time.monotonic(), b["open_until"], int(b["failures"]), int(b["opens"]))

    def rate_acquire(self, name: str, per_second: float) -> float:
        if per_second <= 0:
            return 0.0
        interval = 1.0 / per_second
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(name, now), now)
            if tat > now:
                return tat - now
            self._tat[name] = tat + interval
            return 0.0

    def acquire_lock(self, name: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._locks.get(name, 0) > now:
                return False
            self._locks[name] = now + ttl
            return True

    def release_lock(self, name: str) -> None:
        with self._lock:
            self._locks.pop(name, None)

    def set_value(self, name: str, value: str) -> None:
        with self._lock:
            self._values[name] = value

    def get_value(self, name: str) -> str | None:
        with self._lock:
            return self._values.get(name)

    def reset(self) -> None:
        with self._lock:
            self._breakers.clear()
            self._tat.clear()
            self._locks.clear()
            self._values.clear()


_coordinators: dict[str, Coordinator] = {}
_clock = threading.Lock()


def coordinator_for(broker_url: str) -> Coordinator:
    """Redis when the broker is Redis, else the in-process twin (embedded runs)."""
    with _clock:
        found = _coordinators.get(broker_url)
        if found is None:
            if broker_url.startswith(("redis://", "rediss://")):
                found = RedisCoordinator(broker_url)
            else:
                found = MemoryCoordinator()
            _coordinators[broker_url] = found
        return found


def forget_coordinators() -> None:
    """Drop cached clients (after a fork: a Redis connection must not be shared)."""
    with _clock:
        _coordinators.clear()
