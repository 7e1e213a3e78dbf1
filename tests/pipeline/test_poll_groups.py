"""Status polls in groups (issue 21): any worker of sms.poll polls, no message is asked
twice in a round, a write-back rides out a database restart, the horizon ends only
messages a poll asked about, the first poll comes when the provider usually delivers,
and status calls take their own rate or share the sends'."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from dispatcher import api, config, db, ledger
from dispatcher.coordination import coordinator_for
from dispatcher.models import EVENTS, MESSAGES, utcnow
from dispatcher.simulator.core import Simulator
from dispatcher.status import Status
from dispatcher.tracking import FirstPolls
from dispatcher.tracking.pace import SHARED_SPAN, Slots
from dispatcher.tracking.timing import MIN_SAMPLES, next_poll, step
from tests.support import REDIS_URL, InlinePolls, Stack, store_accepted

FINAL = {"delivered", "undelivered", "expired", "rejected", "failed"}


@pytest.fixture
def polls() -> Iterator[list[InlinePolls]]:
    made: list[InlinePolls] = []
    yield made
    for p in made:
        p.close()


def rows(ids: list[str]) -> dict[str, Any]:
    with db.session_scope() as s:
        found = s.execute(select(MESSAGES).where(MESSAGES.c.id.in_(ids))).all()
    return {r.id: r for r in found}


@pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])
def test_two_poll_workers_never_ask_about_one_message_twice(any_stack: Stack, sim: Simulator) -> None:
    """Two worker processes on sms.poll, small groups, many of them at once: every
    message is final at its first poll, so the simulator answering exactly one status
    call per message, with every message final, means no message was asked twice."""
    any_stack.configure(
        providers=["smska"], polling={"interval": 0.2, "intervals": [0.5, 30.0], "group_calls": 4}
    )
    sim["smska"].state.timing.sent_after, sim["smska"].state.timing.final_after = 0.01, 0.05
    any_stack.start_worker(beat=True)
    any_stack.start_worker(queues="sms.poll")
    n = 240
    ids = api.send_bulk([{"to": f"7916{i:07d}", "text": f"once {i}"} for i in range(1, n + 1)])
    statuses = any_stack.wait_until(ids, FINAL, timeout=90)
    assert set(statuses.values()) == {"delivered"}, statuses
    assert sim["smska"].state.stats()["status_calls"] == n
    # Both workers polled: the groups went to whoever took them.
    logs = [path.read_text(errors="replace") for path in any_stack.logs if path.name.startswith("worker")]
    assert all("smsdispatch.poll_group" in text for text in logs), [t[-2000:] for t in logs]
    assert sum(r.polls for r in rows(ids).values()) == n


def test_a_message_polling_never_reached_is_asked_before_the_horizon_ends_it(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """Polling fell an hour behind (the messages' polls have been due that long, past the
    horizon). A round ends none of them: only an answer does. The one due longest is
    asked first; the one the provider delivered is delivered, not expired; the one it
    never reports on ends at the poll that found no final status; the one with no id to
    ask by ends at the round (no poll could ever ask)."""
    # a grace of 4 x 900 s past the horizon: an hour old, they are within it
    settings = stack.configure(providers=["smska"], pipeline={"status_horizon": 600.0},
                               polling={"group_calls": 1, "intervals": [10.0, 900.0]})  # fmt: skip
    lagged, silent, newer = store_accepted(settings, "smska", ["79161234567", "79161119999", "79161234568"],
                                     age=3600.0, due_ago=[3500.0, 3000.0, 10.0])  # fmt: skip
    [no_id] = store_accepted(settings, "smska", ["79161234569"], age=3600.0, with_ids=False)
    time.sleep(0.7)  # the simulator delivers the first and the third
    inline = InlinePolls(settings)
    polls.append(inline)
    round_ = inline.poller.dispatch("smska")
    assert round_.due == 3 and round_.expired == 1
    assert {r.id: r.status for r in rows([lagged, silent, newer, no_id]).values()} == {
        lagged: "accepted", silent: "accepted", newer: "accepted", no_id: "expired"}  # fmt: skip
    first = inline.poller.poll_group("smska")  # one call a group: the oldest due first
    assert first.polled == 1 and rows([lagged])[lagged].status == "delivered"
    assert sim["smska"].state.stats()["status_calls"] == 1
    inline.poller.poll_group("smska")
    inline.poller.poll_group("smska")
    found = rows([lagged, silent, newer])
    assert (found[silent].status, found[newer].status) == ("expired", "delivered")
    assert found[silent].polls == 1 and found[silent].last_error is None
    with db.session_scope() as s:
        detail = s.execute(select(EVENTS.c.detail).where(EVENTS.c.message_id == silent)
                           .order_by(EVENTS.c.id.desc())).scalars().first()  # fmt: skip
    assert "no final status from smska within 600s" in (detail or "")


def test_the_last_poll_before_the_horizon_falls_on_it(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """A message the provider never reports on is asked at the horizon, not a whole gap
    (15 minutes by default) after it, and ends there."""
    settings = stack.configure(providers=["smska"], pipeline={"status_horizon": 3.0},
                               polling={"intervals": [900.0]})  # fmt: skip
    [silent] = store_accepted(settings, "smska", ["79161119999"], age=0.0)
    inline = InlinePolls(settings)
    polls.append(inline)
    inline.round("smska")
    row = rows([silent])[silent]
    assert row.status in ("accepted", "sent") and row.polls == 1
    assert row.next_poll_at <= row.accepted_at + timedelta(seconds=3.0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and rows([silent])[silent].status in ("accepted", "sent"):
        inline.round("smska")
        time.sleep(0.2)
    assert rows([silent])[silent].status == "expired"


@pytest.mark.faults
def test_a_poll_groups_write_back_rides_out_a_database_restart(
    sim: Simulator, tmp_path: Any, polls: list[InlinePolls]
) -> None:
    """The provider answered; then PostgreSQL goes down for two seconds before the group
    writes back. What the provider said exists only in the worker's memory: the write
    waits for the database (as the send path's does) and keeps every report."""
    from dispatcher.tracking import Poller
    from tests.faults.servers import OwnPostgres

    postgres = OwnPostgres().start()
    stack = Stack(sim, tmp_path, "postgres", db_url=postgres.url)
    try:
        settings = stack.configure(providers=["smska"])
        ids = store_accepted(settings, "smska", [f"7916123450{n}" for n in range(8)])
        time.sleep(0.7)

        class DatabaseGoesAway(Poller):
            def _ask(self, *args: Any, **kwargs: Any) -> Any:
                answered = super()._ask(*args, **kwargs)
                postgres.halt()
                import threading

                threading.Timer(2.0, postgres.start).start()
                return answered

        inline = InlinePolls(settings)
        polls.append(inline)
        poller = DatabaseGoesAway(settings, inline.coordinator, inline.calls, lambda *a: None)
        stats = poller.poll_group("smska")
        assert stats.polled == 8 and stats.changed == 8
        found = rows(ids)
        assert {r.status for r in found.values()} == {"delivered"}
        assert {r.polls for r in found.values()} == {1}
        assert sim["smska"].state.stats()["status_calls"] == 8  # none asked twice
    finally:
        stack.stop()
        config.set_settings(None)
        db.dispose_engines()
        postgres.stop()


def test_the_first_poll_comes_when_the_provider_usually_delivers(
    any_stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """Every first poll finds a final status: the delay comes down (at most halved a
    step). First polls that came late teach nothing. Then none finds one: it goes back
    up (at most doubled a step), never past intervals[0]. The send path schedules each
    acceptance by the learnt delay."""
    settings = any_stack.configure(
        providers=["smska"], polling={"intervals": [8.0, 30.0], "first_poll_floor": 1.0}
    )
    coordinator = coordinator_for(REDIS_URL)
    first = FirstPolls(settings, coordinator)
    inline = InlinePolls(settings)
    polls.append(inline)

    def step_now() -> Any:
        any_stack.redis.delete("smsd:lock:poll_first_step:smska")  # as if LEARN_EVERY had passed
        return first.learn("smska")

    assert first.delay("smska") == 8.0  # nothing learnt yet: intervals[0]
    ids = store_accepted(settings, "smska", [f"79161{n:06d}" for n in range(MIN_SAMPLES + 5)])
    time.sleep(0.7)
    inline.round("smska")  # every first poll finds the message final
    assert {r.status for r in rows(ids).values()} <= FINAL
    learnt = step_now()
    assert learnt is not None and learnt.share == 1.0 and learnt.samples == MIN_SAMPLES + 5
    assert learnt.delay == 4.0  # halved
    assert first.learn("smska") is None  # not again within LEARN_EVERY
    # Another process reads it through the coordinator.
    assert FirstPolls(settings, coordinator).delay("smska") == 4.0
    assert step(4.0, 1.0, 1.0, 8.0) == 2.0 and step(1.5, 1.0, 1.0, 8.0) == 1.0  # to the floor
    assert step(6.0, 0.0, 1.0, 8.0) == 8.0  # doubled, capped at intervals[0]
    assert step(3.0, 0.55, 1.0, 8.0) == 3.0  # near the p50: kept
    # Polling fell behind: these were due a minute before they were asked. Found final,
    # they say nothing of when the provider delivers.
    late = store_accepted(settings, "smska", [f"79164{n:06d}" for n in range(MIN_SAMPLES + 5)],
                          due_ago=[60.0] * (MIN_SAMPLES + 5))  # fmt: skip
    time.sleep(0.7)
    inline.round("smska")
    assert {r.status for r in rows(late).values()} <= FINAL
    assert step_now() is None and first.delay("smska") == 4.0
    # Now the provider is slow: no first poll finds a final status.
    sim["smska"].state.timing.final_after = 600.0
    slow = store_accepted(settings, "smska", [f"79162{n:06d}" for n in range(MIN_SAMPLES + 5)])
    inline.round("smska")
    assert {r.status for r in rows(slow).values()} <= {"accepted", "sent"}
    again = step_now()
    assert again is not None and again.share == 0.0 and again.delay == 8.0
    # The send path asks the learnt delay at each acceptance.
    coordinator.set_value("poll_first:smska", "2.5")
    any_stack.start_worker()
    sim["smska"].state.timing.final_after = 0.6
    mid = api.send_sms("79163000001", "learnt")
    any_stack.wait_until([mid], {"accepted", "sent", "delivered"})
    row = rows([mid])[mid]
    assert row.next_poll_at - row.accepted_at == pytest.approx(
        timedelta(seconds=2.5), abs=timedelta(seconds=0.1)
    )


def test_status_calls_share_the_send_rate_unless_they_have_their_own(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """A poll group takes its slots from the instance's send bucket; with
    ``status_rate_limit`` from its own, at its own rate, and the sends' stays untouched."""
    settings = stack.configure(providers=["smska"], smska={"rate_limit": 50.0})
    redis = stack.redis
    store_accepted(settings, "smska", [f"7916123450{n}" for n in range(5)])
    time.sleep(0.7)  # final at their first poll: never due again here
    inline = InlinePolls(settings)
    polls.append(inline)
    assert inline.round("smska").calls == 5
    assert redis.exists("smsd:rate_us:smska") and not redis.exists("smsd:rate_us:smska:status")
    settings = stack.configure(providers=["smska"], smska={"rate_limit": 50.0, "status_rate_limit": 10.0})
    store_accepted(settings, "smska", [f"7916123460{n}" for n in range(10)])
    time.sleep(0.7)
    own = InlinePolls(settings)
    polls.append(own)
    began = time.monotonic()
    assert own.round("smska").calls == 10
    # Ten calls at 10 a second: the last one's slot is 0.9 s after the first.
    assert time.monotonic() - began >= 0.85
    assert redis.exists("smsd:rate_us:smska:status") and not redis.exists("smsd:rate_us:smska")


def test_a_round_publishes_what_the_due_polls_fill_and_tops_up_what_waits(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """Groups published and not yet started count: a second round before they ran adds
    none. ``max_calls_per_cycle`` caps a round's calls when set."""
    settings = stack.configure(providers=["smska"], polling={"group_calls": 5})
    store_accepted(settings, "smska", [f"79161234{n:03d}" for n in range(23)])
    time.sleep(0.7)  # final at their first poll: never due again here
    inline = InlinePolls(settings)
    polls.append(inline)
    assert inline.poller.dispatch("smska").published == 5  # 23 due, 5 a group
    assert inline.poller.dispatch("smska").published == 0  # those five wait still
    tickets = [t for _, mine, _ in inline.published for t in mine]
    assert len(tickets) == 5 and inline.coordinator.tickets_held("poll_groups:smska") == 5
    for ticket in tickets:
        inline.poller.poll_group("smska", ticket)
    assert inline.coordinator.tickets_held("poll_groups:smska") == 0
    inline.published.clear()
    assert sim["smska"].state.stats()["status_calls"] == 23
    capped = stack.configure(providers=["smska"], polling={"group_calls": 5, "max_calls_per_cycle": 7})
    store_accepted(capped, "smska", [f"79162234{n:03d}" for n in range(23)])
    time.sleep(0.7)
    few = InlinePolls(capped)
    polls.append(few)
    stats = few.round("smska")
    assert stats.published == 1 and stats.calls == 5  # whole groups within the cap of 7


@pytest.mark.parametrize("which", ["memory", "redis"])
def test_polls_sharing_the_send_bucket_never_keep_a_send_waiting(which: str) -> None:
    """At 20 a second, a group of 25 status calls takes its slots a quarter second's worth
    (5) at a time, and only while the bucket is free: a send asking right after any such
    take finds a slot within that quarter second, well inside the second the send path
    waits (MAX_RATE_WAIT), where a group reserving its whole span (1.25 s) at once would
    have left it none. With a bucket of its own the group reserves all at once."""
    from dispatcher.coordination import MemoryCoordinator, RedisCoordinator
    from dispatcher.sending.send import MAX_RATE_WAIT

    coordinator = MemoryCoordinator() if which == "memory" else RedisCoordinator(REDIS_URL)
    coordinator.reset()
    slots = Slots(coordinator, "p", 20.0, 25, shared=True, patience=10.0)
    starts, waits = [], []
    for _ in range(25):
        left = slots.left
        at = slots.take()
        assert at is not None
        starts.append(at)
        if slots.left < left:  # this take reserved the next quarter second: a send comes now
            ok, wait = coordinator.rate_reserve("p", 20.0, 1, MAX_RATE_WAIT)
            assert ok
            waits.append(wait)
        if at > time.monotonic():
            time.sleep(at - time.monotonic())
    assert slots.short == 0 and starts == sorted(starts)
    assert len(waits) == 5 and max(waits) <= SHARED_SPAN + 0.01, waits
    own = Slots(coordinator, "p:status", 20.0, 25, shared=False, patience=2.0)
    assert [own.take() is not None for _ in range(25)] == [True] * 25
    assert 1.1 < coordinator.rate_reserve("p:status", 20.0, 1, 5.0)[1] <= 1.25  # reserved ahead at once
    # A bucket the sends keep full: the group waits out its patience and makes no call.
    busy = Slots(coordinator, "q", 20.0, 3, shared=True, patience=0.3)
    coordinator.rate_reserve("q", 20.0, 20, 1.0)  # the sends took the next second
    assert busy.take() is None and busy.take() is None and busy.short == 2
    coordinator.reset()


def test_the_schedule_is_anchored_on_acceptance() -> None:
    from datetime import UTC, datetime

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    gaps = (10.0, 30.0, 60.0)

    def after(age: float) -> float:
        return (next_poll(t0, t0 + timedelta(seconds=age), gaps, 1.0) - t0).total_seconds()

    assert after(1.5) == 10.0  # a learnt first poll, then the first point
    assert after(10.2) == 40.0  # the first point, then the next
    assert after(9.5) == 40.0  # at least the floor ahead: 10 is too close
    assert after(45.0) == 100.0
    assert after(100.0) == 160.0 and after(161.0) == 220.0  # the last gap repeats
    assert after(1000.0) == 1060.0  # a poll that came late skips the points it missed


def test_polls_that_never_get_an_answer_end_unknown_after_the_horizons_grace(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """Past the horizon a failed check ends nothing (it said nothing); past the horizon
    and its grace (four of the longest gap) the message ends unknown, even with the
    provider's polling paused all along."""
    settings = stack.configure(providers=["smska"], pipeline={"status_horizon": 60.0},
                               polling={"intervals": [1.0, 2.0]})  # fmt: skip
    sim["smska"].state.faults.broken_status = "79161112233"
    [within] = store_accepted(settings, "smska", ["79161112233"], age=62.0)  # past the horizon, in its grace
    [beyond] = store_accepted(settings, "smska", ["79161112233"], age=60.0 + 4 * 2.0 + 1)  # past the grace
    inline = InlinePolls(settings)
    polls.append(inline)
    inline.coordinator.set_value("poll_paused:smska", "1", ttl=5)  # the provider's polling rests
    stats = inline.round("smska")
    assert stats.expired == 1 and stats.calls == 0
    found = rows([within, beyond])
    assert (found[within].status, found[beyond].status) == ("accepted", "unknown")
    inline.coordinator.set_value("poll_paused:smska", "", ttl=1)
    inline.round("smska")  # its check fails: no answer, no end
    found = rows([within])
    assert found[within].status == "accepted" and "status check failed" in found[within].last_error
    with db.session_scope() as s:
        detail = s.execute(select(EVENTS.c.detail).where(EVENTS.c.message_id == beyond)
                           .order_by(EVENTS.c.id.desc())).scalars().first()  # fmt: skip
    assert "no poll answered within its grace" in (detail or "")
    # Polling runs again, and a message past the grace is asked: its check fails, and that
    # poll ends it (the round's look for such messages waits its minute: it just ran).
    [failing] = store_accepted(settings, "smska", ["79161112233"], age=60.0 + 4 * 2.0 + 1)
    assert inline.round("smska").changed == 1
    assert rows([failing])[failing].status == "unknown"
    # One a group holds is left to the group: the round's look passes it by.
    [held] = store_accepted(settings, "smska", ["79161112233"], age=60.0 + 4 * 2.0 + 1)
    now = utcnow()
    with db.session_scope() as s:
        assert [c.id for c in ledger.claim_polls(s, "smska", now, 10, now + timedelta(seconds=60))] == [held]
        horizon = inline.poller.horizon(settings.provider("smska"), now)
        assert ledger.expire_unasked(s, "smska", horizon, now) == 0
    assert rows([held])[held].status == "accepted"


def test_a_disabled_instance_is_still_tracked(stack: Stack) -> None:
    """`enabled = false` stops new sends to an instance; what it took is still polled."""
    from dispatcher.schedule import jobs

    settings = stack.configure(providers=["smska", "mysms"], smska={"enabled": False})
    assert {j.key for j in jobs(settings)} >= {"poll:smska", "poll:mysms"}
    assert [p.name for p in settings.enabled_providers] == ["mysms"]


def test_a_report_the_status_queue_wrote_first_is_written_once(
    any_stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    """A group asked about a message; before it wrote back, another writer (the status
    queue, a group whose lease ran out) wrote the same final status. The group's answer
    changes nothing: one delivered event, one callback, counted once."""
    from dispatcher.providers.base import StatusReport

    settings = any_stack.configure(providers=["smska"])
    [mid] = store_accepted(settings, "smska", ["79161234567"])
    with db.session_scope() as s:
        s.execute(MESSAGES.update().where(MESSAGES.c.id == mid).values(callback_task="app.on_status"))
    time.sleep(0.7)
    inline = InlinePolls(settings)
    polls.append(inline)
    now = utcnow()
    lease = now + timedelta(seconds=60)
    with db.session_scope() as s:
        [claim] = ledger.claim_polls(s, "smska", now, 10, lease)
    with db.session_scope() as s:  # the other writer, first
        pid = claim.provider_message_id
        assert ledger.apply_reports(s, "smska", [StatusReport(pid, Status.DELIVERED, "4|DELIVRD")], utcnow(),
                                    source="status_queue") == 1  # fmt: skip
    horizon = inline.poller.horizon(settings.provider("smska"), utcnow())
    answer = ledger.PollResult(claim, [StatusReport(pid, Status.DELIVERED, "4|DELIVRD")])
    with db.session_scope() as s:
        counts = ledger.apply_polls(
            s, "smska", [answer], utcnow(), lease_until=lease, horizon=horizon, on_time=5.0,
            next_due=lambda c: utcnow() + timedelta(seconds=30),
        )  # fmt: skip
    assert counts["unchanged"] == 1 and "final" not in counts
    message = api.get_message(mid)
    assert message is not None
    assert [e["new_status"] for e in message["events"]].count("delivered") == 1
    with db.session_scope() as s:
        from dispatcher.models import CALLBACKS

        told = s.execute(select(CALLBACKS.c.status).where(CALLBACKS.c.message_id == mid)).scalars().all()
    assert told == ["delivered"]
