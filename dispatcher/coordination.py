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
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from dispatcher.redis_conn import client_for, is_redis

PREFIX = "smsd:"

# What breaker_allows answers: falsy only when the provider is to be skipped.
SKIP, CLOSED, PROBE = 0, 1, 2
# What gate answers besides those: the last balance read is under the threshold.
LOW_BALANCE = 3


@dataclass(frozen=True)
class Gate:
    """One provider's standing for a group of messages, read in one round trip."""

    decision: int  # SKIP, CLOSED, PROBE or LOW_BALANCE
    failures: int  # consecutive failures so far (0: a success need not be recorded)


class Lease:
    """A lock this caller holds. ``release`` frees it only while it is still ours: a
    holder slower than the lock's TTL finds someone else holding it and leaves that
    alone (answering False)."""

    def release(self) -> bool:
        raise NotImplementedError


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

    def gate(self, name: str, probe_ttl: float, balance_threshold: float | None) -> Gate:
        """``breaker_allows`` and the balance check in one call: LOW_BALANCE when the
        last balance read is under ``balance_threshold`` (nothing is taken then)."""
        raise NotImplementedError

    def breaker_failure(self, name: str, threshold: int, cooldown: float, count: int = 1) -> bool:
        """Record ``count`` provider-level or transient failures; True when the
        breaker is open."""
        raise NotImplementedError

    def breaker_success(self, name: str) -> None:
        raise NotImplementedError

    def breaker_state(self, name: str) -> BreakerState:
        raise NotImplementedError

    def rate_acquire(self, name: str, per_second: float, cost: int = 1) -> float:
        """Take ``cost`` slots (one call carrying ``cost`` messages); 0.0 when granted,
        else the seconds to wait (nothing taken)."""
        raise NotImplementedError

    def rate_reserve(self, name: str, per_second: float, cost: int, max_wait: float) -> tuple[bool, float]:
        """Reserve ``cost`` consecutive slots in one call. ``(True, wait)``: the first
        slot starts in ``wait`` seconds and the others follow at the rate;
        ``(False, wait)``: the first free slot is more than ``max_wait`` away, nothing
        was taken, come back in ``wait`` seconds."""
        raise NotImplementedError

    def acquire_lock(self, name: str, ttl: float) -> Lease | None:
        """Take the lock ``name`` for ``ttl`` seconds, or None when someone holds it."""
        raise NotImplementedError

    def set_value(self, name: str, value: str, ttl: float | None = None) -> None:
        """Keep ``value`` under ``name``, for ``ttl`` seconds when given."""
        raise NotImplementedError

    def get_value(self, name: str) -> str | None:
        raise NotImplementedError

    def get_values(self, names: Sequence[str]) -> list[str | None]:
        """``get_value`` of each of ``names``, in one round trip."""
        return [self.get_value(name) for name in names]

    def add(self, name: str, amount: int = 1, ttl: float | None = None) -> int:
        """Add to the counter ``name`` (read with ``get_value``); returns the new total.
        ``ttl``: the counter lapses that many seconds from now; without one it keeps
        the TTL it was set with."""
        raise NotImplementedError

    def tickets_add(self, name: str, tickets: Sequence[str], ttl: float) -> None:
        """Hold each of ``tickets`` under ``name`` for ``ttl`` seconds: a set whose members
        lapse on their own (work handed out and not yet started)."""
        raise NotImplementedError

    def tickets_take(self, name: str, ticket: str) -> bool:
        """Drop ``ticket`` from ``name``; True when it was there."""
        raise NotImplementedError

    def tickets_held(self, name: str) -> int:
        """The tickets under ``name`` that have not lapsed."""
        raise NotImplementedError

    def tally(self, name: str, counts: Mapping[str, int]) -> None:
        """Add ``counts`` to the counters of ``name``, all at once."""
        raise NotImplementedError

    def take_tally(self, name: str) -> dict[str, int]:
        """The counters of ``name``, emptied in the same step (none counted twice or lost)."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


# -- Redis --------------------------------------------------------------------------

# How long taking or freeing a lock waits for Redis to come back (a Sentinel failover:
# the master noticed down, a replica elected and promoted) before it gives up, seconds.
LOCK_PATIENCE = 30.0

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

_GATE = (
    _NOW
    + """
if ARGV[2] ~= '' then
  local balance = tonumber(redis.call('GET', KEYS[2]) or '')
  if balance ~= nil and balance < tonumber(ARGV[2]) then return {3, 0} end
end
local h = redis.call('HMGET', KEYS[1], 'open_until', 'probe_until', 'failures')
local open_until = tonumber(h[1] or '0')
local failures = tonumber(h[3] or '0')
if open_until == 0 then return {1, failures} end
if now < open_until then return {0, failures} end
if now < tonumber(h[2] or '0') then return {0, failures} end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
return {2, failures}
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
local n = redis.call('HINCRBY', KEYS[1], 'failures', tonumber(ARGV[3] or '1'))
if n >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'open_until', now + cooldown, 'probe_until', 0, 'failures', 0)
  redis.call('HINCRBY', KEYS[1], 'opens', 1)
  return 1
end
return 0
"""
)

# The rate limiter counts in microseconds: whole milliseconds would round a 300/s
# interval (3.33 ms) down to 3 ms and let 333/s through. Epoch microseconds (~1.8e15)
# are exact in Lua's doubles (2^53 ~ 9e15), but Lua 5.1's tostring keeps 14 digits (it
# rounded them to 100 us, and 3000/s let 3333/s through): numbers cross as %.17g.
_NOW_US = """local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function exact(x) return string.format('%.17g', x) end
"""

# GCRA without burst: the key holds the earliest time of the next slot. Take ARGV[2]
# slots (the cost) when the next is free now, else answer the wait (nothing taken).
_RATE = (
    _NOW_US
    + """
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then return exact(tat - now) end
local span = tonumber(ARGV[2]) * interval
redis.call('SET', KEYS[1], exact(now + span), 'PX', math.ceil(span / 1000) + 1000)
return '0'
"""
)

# The same reserving ahead: ARGV[2] slots at once, unless the first is further away
# than ARGV[3] us. Returns {1, wait} (reserved) or {0, wait} (nothing taken), in us.
_RESERVE = (
    _NOW_US
    + """
local interval = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[3]) then return {0, exact(wait)} end
local span = wait + cost * interval
redis.call('SET', KEYS[1], exact(tat + cost * interval), 'PX', math.ceil(span / 1000) + 1000)
return {1, exact(wait)}
"""
)

# Tickets: a sorted set scored by the Redis time each member lapses at.
_TICKETS_ADD = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return 0
"""
)

_TICKETS_HELD = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
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
        # A sentinel URL gives a client of the current master: it asks the sentinels
        # again after a failover. The scripts below are EVALSHA with a reload on
        # NOSCRIPT (redis-py's Script), so a promoted replica that never saw them
        # loads them on first use.
        self.client = client_for(url, socket_timeout=5, connect_timeout=3)
        self._allow = self.client.register_script(_ALLOW)
        self._fail = self.client.register_script(_FAIL)
        self._gate = self.client.register_script(_GATE)
        self._reserve = self.client.register_script(_RESERVE)
        self._rate = self.client.register_script(_RATE)
        self._state = self.client.register_script(_STATE)
        self._tickets_add = self.client.register_script(_TICKETS_ADD)
        self._tickets_held = self.client.register_script(_TICKETS_HELD)

    def breaker_allows(self, name: str, probe_ttl: float) -> int:
        return int(self._allow(keys=[f"{PREFIX}breaker:{name}"], args=[int(probe_ttl * 1000)]))

    def gate(self, name: str, probe_ttl: float, balance_threshold: float | None) -> Gate:
        keys = [f"{PREFIX}breaker:{name}", f"{PREFIX}value:balance:{name}"]
        threshold = "" if balance_threshold is None else repr(float(balance_threshold))
        decision, failures = self._gate(keys=keys, args=[int(probe_ttl * 1000), threshold])
        return Gate(int(decision), int(failures))

    def breaker_failure(self, name: str, threshold: int, cooldown: float, count: int = 1) -> bool:
        key = f"{PREFIX}breaker:{name}"
        return int(self._fail(keys=[key], args=[threshold, int(cooldown * 1000), count])) == 1

    def breaker_success(self, name: str) -> None:
        self.client.hset(
            f"{PREFIX}breaker:{name}", mapping={"failures": 0, "open_until": 0, "probe_until": 0}
        )

    def breaker_state(self, name: str) -> BreakerState:
        now, open_until, failures, opens = (int(x) for x in self._state(keys=[f"{PREFIX}breaker:{name}"]))
        return _state_of(now / 1000, open_until / 1000, failures, opens)

    # Numbers cross the script boundary as strings: Redis truncates Lua numbers to
    # integers, and the interval keeps its fraction of a microsecond.
    @staticmethod
    def _interval_us(per_second: float) -> str:
        return repr(1_000_000.0 / per_second)

    def rate_acquire(self, name: str, per_second: float, cost: int = 1) -> float:
        if per_second <= 0:
            return 0.0
        wait = self._rate(keys=[f"{PREFIX}rate_us:{name}"], args=[self._interval_us(per_second), cost])
        return float(wait) / 1e6

    def rate_reserve(self, name: str, per_second: float, cost: int, max_wait: float) -> tuple[bool, float]:
        if per_second <= 0:
            return True, 0.0
        args: list[str | int] = [self._interval_us(per_second), cost, repr(max_wait * 1e6)]
        ok, wait = self._reserve(keys=[f"{PREFIX}rate_us:{name}"], args=args)
        return bool(ok), float(wait) / 1e6

    def acquire_lock(self, name: str, ttl: float) -> Lease | None:
        # redis-py's Lock: a random token per holder, released by a script that checks
        # it. Not thread-local: a task may release from another thread of its pool.
        # Under Sentinel a lock is a lease, not a guarantee: replication is
        # asynchronous, so a lock taken just before the master died may be missing on
        # the promoted replica and a second holder may take it. Every lock here only
        # keeps two runs of a poll, a drain or a sweep from overlapping, and each of
        # those is safe twice (the ledger's transitions and claims decide), so a lost
        # lock costs a repeated status call, never a second SMS.
        key = f"{PREFIX}lock:{name}"
        lock = self.client.lock(key, timeout=ttl, blocking=False, thread_local=False)
        # Our own token, so that a try whose reply was lost (the master died after the
        # SET, and the replica has the key) can be recognised as ours when Redis is
        # back, rather than holding the lock for its whole TTL with nobody to free it.
        token = uuid.uuid4().hex

        def attempt(retry: bool) -> bool:
            if lock.acquire(token=token):
                return True
            # Held. A fresh token can be in the key only when an earlier try of this
            # loop failed on the connection after Redis took its SET: ask only then.
            if retry and self.client.get(key) == token.encode():
                lock.local.token = token.encode()
                return True
            return False

        return _RedisLease(lock) if _patiently(attempt) else None

    def set_value(self, name: str, value: str, ttl: float | None = None) -> None:
        self.client.set(f"{PREFIX}value:{name}", value, px=None if ttl is None else max(1, int(ttl * 1000)))

    def get_value(self, name: str) -> str | None:
        value: Any = self.client.get(f"{PREFIX}value:{name}")
        return value.decode() if isinstance(value, bytes) else value

    def get_values(self, names: Sequence[str]) -> list[str | None]:
        found: list[Any] = self.client.mget([f"{PREFIX}value:{name}" for name in names])
        return [v.decode() if isinstance(v, bytes) else v for v in found]

    def add(self, name: str, amount: int = 1, ttl: float | None = None) -> int:
        key = f"{PREFIX}value:{name}"
        if ttl is None:
            return int(self.client.incrby(key, amount))
        pipe = self.client.pipeline()
        pipe.incrby(key, amount)
        pipe.pexpire(key, max(1, int(ttl * 1000)))
        total, _ = pipe.execute()
        return int(total)

    def tickets_add(self, name: str, tickets: Sequence[str], ttl: float) -> None:
        if tickets:
            self._tickets_add(keys=[f"{PREFIX}tickets:{name}"], args=[max(1, int(ttl * 1000)), *tickets])

    def tickets_take(self, name: str, ticket: str) -> bool:
        return bool(self.client.zrem(f"{PREFIX}tickets:{name}", ticket))

    def tickets_held(self, name: str) -> int:
        return int(self._tickets_held(keys=[f"{PREFIX}tickets:{name}"]))

    def tally(self, name: str, counts: Mapping[str, int]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for field_name, amount in counts.items():
            pipe.hincrby(f"{PREFIX}tally:{name}", field_name, amount)
        pipe.execute()

    def take_tally(self, name: str) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(f"{PREFIX}tally:{name}")
        pipe.delete(f"{PREFIX}tally:{name}")
        found, _ = pipe.execute()
        return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in found.items()}

    def reset(self) -> None:
        keys = list(self.client.scan_iter(f"{PREFIX}*"))
        if keys:
            self.client.delete(*keys)


class _RedisLease(Lease):
    def __init__(self, lock: Any) -> None:
        self.lock = lock

    def release(self) -> bool:
        # A release that fails on the connection is tried again until Redis answers: the
        # lock was replicated before the master died, and a promoted replica would hold
        # it for its whole TTL (the run locks' 600 s: no polls for ten minutes, seen in
        # tests/faults/test_sentinel.py). Trying again is safe: the script frees the
        # lock only while it holds this holder's token.
        # do_release with the token kept here: Lock.release forgets the token before
        # it asks Redis, so a second release() would not try again.
        token = self.lock.local.token
        if token is None:
            return False
        self.lock.local.token = None

        def attempt(retry: bool) -> bool:
            try:
                self.lock.do_release(token)
            except redis.exceptions.LockNotOwnedError:
                # Not ours. On the first try: it expired (someone else may hold it now).
                # On a retry, the try before most likely freed it and only its reply was
                # lost: freed by us, not overrun. (An expiry in between cannot be told
                # apart from that; it would cost no more than the holder's warning.)
                return retry
            return True

        return _patiently(attempt)


def _patiently(attempt: Callable[[bool], bool]) -> bool:
    """``attempt(retry)`` until Redis answers: on a connection error or a timeout (a
    Sentinel failover: the master noticed down, a replica elected and promoted) it is
    tried again every 0.25 s, for LOCK_PATIENCE seconds, then the error is raised.
    ``retry`` tells the attempt that an earlier one failed on the connection, and so
    may have been carried out by Redis with only its reply lost."""
    deadline = time.monotonic() + LOCK_PATIENCE
    retry = False
    while True:
        try:
            return attempt(retry)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if time.monotonic() > deadline:
                raise
            retry = True
            time.sleep(0.25)


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
        self._locks: dict[str, tuple[str, float]] = {}  # name -> (token, until)
        self._values: dict[str, str] = {}
        self._expiry: dict[str, float] = {}  # name -> monotonic time it lapses
        self._tickets: dict[str, dict[str, float]] = {}  # name -> ticket -> monotonic time it lapses
        self._tallies: dict[str, dict[str, int]] = {}

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

    def gate(self, name: str, probe_ttl: float, balance_threshold: float | None) -> Gate:
        if balance_threshold is not None:
            balance = self.get_value(f"balance:{name}")
            try:
                if balance is not None and float(balance) < balance_threshold:
                    return Gate(LOW_BALANCE, 0)
            except ValueError:
                pass
        decision = self.breaker_allows(name, probe_ttl)
        with self._lock:
            failures = int(self._b(name)["failures"])
        return Gate(decision, failures)

    def breaker_failure(self, name: str, threshold: int, cooldown: float, count: int = 1) -> bool:
        now = time.monotonic()
        with self._lock:
            b = self._b(name)
            if b["open_until"] > 0:
                if now >= b["open_until"]:
                    b.update(open_until=now + cooldown, probe_until=0.0, failures=0, opens=b["opens"] + 1)
                return True
            b["failures"] += count
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

    def rate_acquire(self, name: str, per_second: float, cost: int = 1) -> float:
        if per_second <= 0:
            return 0.0
        interval = 1.0 / per_second
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(name, now), now)
            if tat > now:
                return tat - now
            self._tat[name] = tat + cost * interval
            return 0.0

    def rate_reserve(self, name: str, per_second: float, cost: int, max_wait: float) -> tuple[bool, float]:
        if per_second <= 0:
            return True, 0.0
        interval = 1.0 / per_second
        now = time.monotonic()
        with self._lock:
            tat = max(self._tat.get(name, now), now)
            if tat - now > max_wait:
                return False, tat - now
            self._tat[name] = tat + cost * interval
            return True, tat - now

    def acquire_lock(self, name: str, ttl: float) -> Lease | None:
        now = time.monotonic()
        with self._lock:
            held = self._locks.get(name)
            if held is not None and held[1] > now:
                return None
            token = uuid.uuid4().hex
            self._locks[name] = (token, now + ttl)
        return _MemoryLease(self, name, token)

    def _release(self, name: str, token: str) -> bool:
        with self._lock:
            held = self._locks.get(name)
            if held is None or held[0] != token or held[1] <= time.monotonic():
                return False
            del self._locks[name]
            return True

    def set_value(self, name: str, value: str, ttl: float | None = None) -> None:
        with self._lock:
            self._values[name] = value
            if ttl is None:
                self._expiry.pop(name, None)
            else:
                self._expiry[name] = time.monotonic() + ttl

    def get_value(self, name: str) -> str | None:
        with self._lock:
            if self._expiry.get(name, float("inf")) <= time.monotonic():
                self._values.pop(name, None)
                self._expiry.pop(name, None)
            return self._values.get(name)

    def add(self, name: str, amount: int = 1, ttl: float | None = None) -> int:
        with self._lock:
            now = time.monotonic()
            if self._expiry.get(name, float("inf")) <= now:  # lapsed, as in Redis
                self._values.pop(name, None)
                self._expiry.pop(name, None)
            total = int(self._values.get(name, "0")) + amount
            self._values[name] = str(total)
            if ttl is not None:
                self._expiry[name] = now + ttl
            return total

    def tickets_add(self, name: str, tickets: Sequence[str], ttl: float) -> None:
        until = time.monotonic() + ttl
        with self._lock:
            self._tickets.setdefault(name, {}).update(dict.fromkeys(tickets, until))

    def tickets_take(self, name: str, ticket: str) -> bool:
        with self._lock:
            return self._tickets.get(name, {}).pop(ticket, None) is not None

    def tickets_held(self, name: str) -> int:
        now = time.monotonic()
        with self._lock:
            held = {t: until for t, until in self._tickets.get(name, {}).items() if until > now}
            self._tickets[name] = held
            return len(held)

    def tally(self, name: str, counts: Mapping[str, int]) -> None:
        with self._lock:
            kept = self._tallies.setdefault(name, {})
            for field_name, amount in counts.items():
                kept[field_name] = kept.get(field_name, 0) + amount

    def take_tally(self, name: str) -> dict[str, int]:
        with self._lock:
            return self._tallies.pop(name, {})

    def reset(self) -> None:
        with self._lock:
            self._tickets.clear()
            self._tallies.clear()
            self._breakers.clear()
            self._tat.clear()
            self._locks.clear()
            self._values.clear()
            self._expiry.clear()


class _MemoryLease(Lease):
    def __init__(self, owner: MemoryCoordinator, name: str, token: str) -> None:
        self.owner, self.name, self.token = owner, name, token

    def release(self) -> bool:
        return self.owner._release(self.name, self.token)


_coordinators: dict[str, Coordinator] = {}
_clock = threading.Lock()


def coordinator_for(broker_url: str) -> Coordinator:
    """Redis when the broker is Redis, else the in-process twin (embedded runs)."""
    with _clock:
        found = _coordinators.get(broker_url)
        if found is None:
            found = RedisCoordinator(broker_url) if is_redis(broker_url) else MemoryCoordinator()
            _coordinators[broker_url] = found
        return found


def forget_coordinators() -> None:
    """Drop cached clients (after a fork: a Redis connection must not be shared)."""
    with _clock:
        _coordinators.clear()
