"""The retry / fail over / reject decision, one function per error kind, and the
coordination backends (Redis and its in-memory twin) under one contract."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher import api
from dispatcher.coordination import CLOSED, PROBE, SKIP, Coordinator, MemoryCoordinator, RedisCoordinator
from dispatcher.decisions import Action, Outcome
from dispatcher.errors import FailoverError, ProviderError, RejectedError, RetryableError
from dispatcher.sending import SendPipeline
from dispatcher.sending.policy import POLICY, backoff, classify, decide
from dispatcher.simulator.core import Simulator
from tests.support import REDIS_URL, Stack


def err(cls: type[ProviderError], ambiguous: bool = False, about: str = "provider") -> ProviderError:
    return cls("x", provider="p", kind="mysms", ambiguous=ambiguous, about=about)


@pytest.mark.parametrize(
    ("error", "can_ask", "guarantee", "outcome"),
    [
        (err(RetryableError), False, "at-most-once", Outcome.TRANSIENT),
        (err(RetryableError, ambiguous=True), False, "at-most-once", Outcome.IN_DOUBT_AT_MOST_ONCE),
        (err(RetryableError, ambiguous=True), False, "at-least-once", Outcome.IN_DOUBT_AT_LEAST_ONCE),
        (err(RetryableError, ambiguous=True), True, "at-most-once", Outcome.IN_DOUBT_ASKABLE),
        (err(FailoverError), True, "at-most-once", Outcome.PROVIDER_REFUSED),
        (err(FailoverError, ambiguous=True), False, "at-most-once", Outcome.PROVIDER_REFUSED),
        (err(FailoverError, about="account"), False, "at-most-once", Outcome.PROVIDER_REFUSED),
        (err(FailoverError, about="request"), False, "at-most-once", Outcome.REQUEST_REFUSED),
        (err(RejectedError), False, "at-most-once", Outcome.MESSAGE_REFUSED),
        (err(RejectedError, ambiguous=True), False, "at-most-once", Outcome.MESSAGE_REFUSED),
    ],
)
def test_classify(error: ProviderError, can_ask: bool, guarantee: str, outcome: Outcome) -> None:
    assert classify(error, can_ask=can_ask, guarantee=guarantee) == outcome


@pytest.mark.parametrize(
    ("outcome", "retries", "action"),
    [
        (Outcome.ACCEPTED, 0, Action.ACCEPT),
        (Outcome.TRANSIENT, 0, Action.RETRY),
        (Outcome.TRANSIENT, 3, Action.FAIL_OVER),  # retries used up
        (Outcome.IN_DOUBT_AT_MOST_ONCE, 0, Action.MARK_UNKNOWN),
        (Outcome.IN_DOUBT_AT_LEAST_ONCE, 0, Action.RETRY),
        (Outcome.IN_DOUBT_AT_LEAST_ONCE, 3, Action.FAIL_OVER),
        (Outcome.IN_DOUBT_ASKABLE, 0, Action.ASK),
        (Outcome.PROVIDER_REFUSED, 0, Action.FAIL_OVER),
        (Outcome.REQUEST_REFUSED, 0, Action.FAIL_OVER),
        (Outcome.MESSAGE_REFUSED, 0, Action.REJECT),
        (Outcome.MESSAGE_REFUSED, 3, Action.REJECT),
        (Outcome.PROBE_FAILED, 0, Action.FAIL_OVER),
        (Outcome.BREAKER_OPENED, 0, Action.FAIL_OVER),
        (Outcome.FOUND, 0, Action.ACCEPT),
        (Outcome.NOT_FOUND, 0, Action.RESEND),
        (Outcome.ASK_FAILED, 0, Action.WAIT),
    ],
)
def test_policy(outcome: Outcome, retries: int, action: Action) -> None:
    verdict = decide(outcome, retries=retries, max_retries=3, backoff_base=0.5, backoff_cap=10.0)
    assert verdict.action == action
    assert (verdict.delay > 0) == (action in (Action.RETRY, Action.WAIT))


def test_every_outcome_has_one_row() -> None:
    assert set(POLICY) == set(Outcome)


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
    assert coordinator.breaker_allows("p", probe_ttl=5) == CLOSED
    assert not coordinator.breaker_failure("p", threshold=3, cooldown=0.5)
    assert not coordinator.breaker_failure("p", threshold=3, cooldown=0.5)
    assert coordinator.breaker_failure("p", threshold=3, cooldown=0.5)  # third: open
    assert coordinator.breaker_state("p").state == "open"
    assert coordinator.breaker_allows("p", probe_ttl=5) == SKIP
    time.sleep(0.6)
    assert coordinator.breaker_state("p").state == "half-open"
    assert coordinator.breaker_allows("p", probe_ttl=5) == PROBE  # one probe
    assert coordinator.breaker_allows("p", probe_ttl=5) == SKIP  # not two at once
    coordinator.breaker_success("p")
    assert coordinator.breaker_state("p").state == "closed"
    assert coordinator.breaker_allows("p", probe_ttl=5) == CLOSED
    assert coordinator.breaker_state("p").opens == 1


def test_failed_probe_reopens(coordinator: Coordinator) -> None:
    for _ in range(2):
        coordinator.breaker_failure("q", threshold=2, cooldown=0.3)
    time.sleep(0.35)
    assert coordinator.breaker_allows("q", probe_ttl=5) == PROBE
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


def test_rate_limit_counts_microseconds_and_takes_a_cost(coordinator: Coordinator) -> None:
    """300/s is an interval of 3.33 ms: whole milliseconds would make it 3 ms and let
    333/s through. 300 slots taken at once (one call of 300 messages, or reserved
    ahead) push the next slot a whole second out."""
    assert coordinator.rate_acquire("g", 300, cost=300) == 0.0
    assert 0.98 < coordinator.rate_acquire("g", 300) <= 1.0
    ok, wait = coordinator.rate_reserve("h", 300, 300, max_wait=5)
    assert ok and wait == 0.0
    ok, wait = coordinator.rate_reserve("h", 300, 1, max_wait=5)
    assert ok and 0.98 < wait <= 1.0


def test_rate_limit_keeps_its_precision_over_many_slots(coordinator: Coordinator) -> None:
    """1000 slots one at a time at 300/s span 3.3 seconds: no write may round the next
    slot's time (Lua's tostring keeps 14 digits, 100 us of epoch microseconds: 1000
    rounded writes would be off by tens of milliseconds). The rate is low enough that
    every reservation, made at once, runs ahead of the clock even on a loaded machine;
    at 3000/s a round trip slower than 333 us let the slots fall back to the clock."""
    started = time.monotonic()
    for _ in range(1000):
        assert coordinator.rate_reserve("p", 300, 1, max_wait=10)[0]
    elapsed = time.monotonic() - started
    ok, wait = coordinator.rate_reserve("p", 300, 1, max_wait=10)
    assert ok and wait + elapsed == pytest.approx(1000 / 300, abs=0.01)


def test_locks_and_values(coordinator: Coordinator) -> None:
    lease = coordinator.acquire_lock("poll:x", ttl=5)
    assert lease is not None
    assert coordinator.acquire_lock("poll:x", ttl=5) is None
    assert lease.release()
    assert coordinator.acquire_lock("poll:x", ttl=5) is not None
    coordinator.set_value("balance:x", "12.5")
    assert coordinator.get_value("balance:x") == "12.5"
    assert coordinator.get_value("balance:none") is None


def test_tickets_lapse_on_their_own_and_tallies_are_taken_whole(coordinator: Coordinator) -> None:
    """Poll groups handed out and not yet started are tickets: a started group takes its
    own off, a group that never ran lapses; first-poll samples are tallied by every
    worker and taken by one, none counted twice."""
    coordinator.tickets_add("g", ["a", "b", "c"], ttl=0.3)
    coordinator.tickets_add("g", ["d"], ttl=10)
    assert coordinator.tickets_held("g") == 4
    assert coordinator.tickets_take("g", "a") and not coordinator.tickets_take("g", "a")
    time.sleep(0.4)  # b and c never started
    assert coordinator.tickets_held("g") == 1
    assert coordinator.tickets_held("none") == 0
    coordinator.tally("t", {"n": 3, "hits": 2})
    coordinator.tally("t", {"n": 1, "hits": 0})
    assert coordinator.take_tally("t") == {"n": 4, "hits": 2}
    assert coordinator.take_tally("t") == {}
    coordinator.add("c", 2, ttl=0.2)
    assert coordinator.add("c", 1) == 3  # keeps its TTL
    time.sleep(0.3)
    assert coordinator.get_value("c") is None and coordinator.add("c", 1) == 1


def test_a_slow_holder_cannot_release_the_next_holders_lock(coordinator: Coordinator) -> None:
    slow = coordinator.acquire_lock("run:y", ttl=0.2)
    assert slow is not None
    time.sleep(0.3)  # the slow holder's lock expired meanwhile
    fresh = coordinator.acquire_lock("run:y", ttl=5)
    assert fresh is not None
    assert not slow.release()  # not its lock any more: left alone
    assert coordinator.acquire_lock("run:y", ttl=5) is None
    assert fresh.release()


def test_half_open_probe_asks_the_balance_before_risking_a_message(stack: Stack, sim: Simulator) -> None:
    """my-sms.ru hangs past the timeout. At-least-once, a hung send is sent again via
    prostor while my-sms.ru may still deliver it: a duplicate. Once its breaker is
    open, each half-open probe is a balance call, so the outage costs no more
    messages in doubt; when the balance answers again, a message goes through it."""
    settings = stack.configure(
        providers=["mysms", "prostor"],
        mysms={"timeout": 0.3, "max_retries": 0, "delivery_guarantee": "at-least-once"},
        pipeline={"breaker_threshold": 1, "breaker_cooldown": 0.5},
    )
    published: list[Any] = []
    api.use_publisher(lambda items: published.extend(items))
    coordinator = RedisCoordinator(REDIS_URL)
    pipeline = SendPipeline(settings, lambda *a: published.append(a), coordinator)
    state = sim["mysms"].state
    state.faults.update({"hang": True, "hang_seconds": 1.0})
    try:
        first = api.send_sms("79161234561", "in doubt")
        assert pipeline.process(first) == "accepted"  # via prostor, after the hang
        for n in range(3):  # each after a cool-down: three probes, all balance calls
            time.sleep(0.6)
            mid = api.send_sms(f"7916123457{n}", f"during {n}")
            assert pipeline.process(mid) == "accepted"
            assert (api.get_message(mid) or {})["provider"] == "prostor"
        sends = sum(v for k, v in state.stats()["requests"].items() if "credit" not in k)
        credits = sum(v for k, v in state.stats()["requests"].items() if "credit" in k)
        assert (sends, credits) == (1, 3)
        state.reset_faults()
        time.sleep(0.6)
        back = api.send_sms("79161234580", "recovered")
        assert pipeline.process(back) == "accepted"
        assert (api.get_message(back) or {})["provider"] == "mysms"
        assert coordinator.breaker_state("mysms").state == "closed"
    finally:
        state.reset_faults()
        api.use_publisher(None)
        pipeline.close()
