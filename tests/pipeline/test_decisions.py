"""The retry / fail over / reject decision, one function per error kind, and the
coordination backends (Redis and its in-memory twin) under one contract."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dispatcher.coordination import Coordinator, MemoryCoordinator, RedisCoordinator
from dispatcher.errors import FailoverError, ProviderError, RejectedError, RetryableError
from dispatcher.pipeline import CallContext, backoff, decide
from tests.support import REDIS_URL


def ctx(**kw: object) -> CallContext:
    base: dict[str, object] = {
        "retries": 0, "max_retries": 3, "can_reconcile": False, "guarantee": "at-most-once",
        "backoff_base": 0.5, "backoff_cap": 10.0,
    }  # fmt: skip
    base.update(kw)
    return CallContext(**base)  # type: ignore[arg-type]


def err(cls: type[ProviderError], ambiguous: bool = False) -> ProviderError:
    return cls("x", provider="p", kind="mysms", ambiguous=ambiguous)


@pytest.mark.parametrize(
    ("error", "context", "action"),
    [
        (err(RetryableError), ctx(), "retry"),
        (err(RetryableError), ctx(retries=3), "failover"),  # retries used up
        (err(RetryableError, ambiguous=True), ctx(), "unknown"),  # at-most-once, cannot ask
        (err(RetryableError, ambiguous=True), ctx(guarantee="at-least-once"), "retry"),
        (err(RetryableError, ambiguous=True), ctx(can_reconcile=True), "reconcile"),
        (err(FailoverError), ctx(), "failover"),
        (err(FailoverError), ctx(retries=0, max_retries=0), "failover"),
        (err(RejectedError), ctx(), "reject"),
        (err(RejectedError, ambiguous=True), ctx(), "reject"),
    ],
)
def test_decide(error: ProviderError, context: CallContext, action: str) -> None:
    assert decide(error, context).action == action


def test_backoff_grows_is_capped_and_jittered() -> None:
    samples = {n: [backoff(n, 0.5, 4.0) for _ in range(200)] for n in range(6)}
    assert all(0.25 <= s <= 0.5 for s in samples[0])
    assert all(2.0 <= s <= 4.0 for s in samples[5])  # capped at 4
    assert len(set(samples[3])) > 100  # jitter spreads retries of many workers


@pytest.fixture(params=["memory", "redis"])
def coordinator(request: pytest.FixtureRequest) -> Iterator[Coordinator]:
    c: Coordinator = MemoryCoordinator() if request.param == "memory" else RedisCoordinator(REDIS_URL)
    c.reset()
    yield c
    c.reset()


def test_breaker_opens_probes_and_closes(coordinator: Coordinator) -> None:
    assert coordinator.breaker_allows("p", probe_ttl=5)
    assert not coordinator.breaker_failure("p", threshold=3, cooldown=0.5)
    assert not coordinator.breaker_failure("p", threshold=3, cooldown=0.5)
    assert coordinator.breaker_failure("p", threshold=3, cooldown=0.5)  # third: open
    assert coordinator.breaker_state("p").state == "open"
    assert not coordinator.breaker_allows("p", probe_ttl=5)
    time.sleep(0.6)
    assert coordinator.breaker_state("p").state == "half-open"
    assert coordinator.breaker_allows("p", probe_ttl=5)  # one probe
    assert not coordinator.breaker_allows("p", probe_ttl=5)  # not two at once
    coordinator.breaker_success("p")
    assert coordinator.breaker_state("p").state == "closed"
    assert coordinator.breaker_allows("p", probe_ttl=5)
    assert coordinator.breaker_state("p").opens == 1


def test_failed_probe_reopens(coordinator: Coordinator) -> None:
    for _ in range(2):
        coordinator.breaker_failure("q", threshold=2, cooldown=0.3)
    time.sleep(0.35)
    assert coordinator.breaker_allows("q", probe_ttl=5)
    assert coordinator.breaker_failure("q", threshold=2, cooldown=0.3)
    state = coordinator.breaker_state("q")
    assert state.state == "open" and state.opens == 2


def test_success_resets_the_failure_count(coordinator: Coordinator) -> None:
    coordinator.breaker_failure("r", threshold=2, cooldown=5)
    coordinator.breaker_success("r")
    assert not coordinator.breaker_failure("r", threshold=2, cooldown=5)


def test_rate_limit_spaces_slots(coordinator: Coordinator) -> None:
    assert coordinator.rate_acquire("s", 10) == 0.0
    wait = coordinator.rate_acquire("s", 10)
    assert 0.05 < wait <= 0.1
    time.sleep(wait)
    assert coordinator.rate_acquire("s", 10) == 0.0
    assert coordinator.rate_acquire("s", 0) == 0.0  # 0 = unlimited


def test_locks_and_values(coordinator: Coordinator) -> None:
    assert coordinator.acquire_lock("poll:x", ttl=5)
    assert not coordinator.acquire_lock("poll:x", ttl=5)
    coordinator.release_lock("poll:x")
    assert coordinator.acquire_lock("poll:x", ttl=5)
    coordinator.set_value("balance:x", "12.5")
    assert coordinator.get_value("balance:x") == "12.5"
    assert coordinator.get_value("balance:none") is None
