"""Batching: bulk messages claimed together, sent in as few provider calls as the
provider takes, written back with bulk statements; one bad message spoils nothing."""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy import event

from dispatcher import api, db
from dispatcher.coordination import MemoryCoordinator, coordinator_for
from dispatcher.sending import SendPipeline
from dispatcher.simulator.core import Simulator
from tests.support import REDIS_URL, SETTLED, TAKEN, Stack


def test_bulk_to_prostor_goes_in_batches_of_200(any_stack: Stack, sim: Simulator) -> None:
    any_stack.configure(providers=["prostor"], pipeline={"publish_batch": 200})
    any_stack.start_worker()
    messages = [{"to": f"7916{n:07d}", "text": f"batch {n}"} for n in range(1, 451)]
    messages[123]["to"] = "79000001234"  # refused by the provider: only this one
    ids = api.send_bulk(messages)
    statuses = any_stack.wait_until(ids, SETTLED, timeout=60)
    assert statuses[ids[123]] == "rejected"
    assert {s for mid, s in statuses.items() if mid != ids[123]} <= TAKEN
    assert sim["prostor"].state.stats()["requests"]["send.json"] == 3  # 200 + 200 + 50
    message = api.get_message(ids[0])
    assert message is not None and [e["new_status"] for e in message["events"]][:3] == [
        "queued",
        "sending",
        "accepted",
    ]


def test_mysms_post_batches(stack: Stack, sim: Simulator) -> None:
    stack.configure(providers=["mysms"], pipeline={"publish_batch": 100})
    stack.start_worker()
    ids = api.send_bulk([{"to": f"7926{n:07d}", "text": f"my {n}"} for n in range(1, 101)])
    assert set(stack.wait_until(ids, SETTLED, timeout=60).values()) <= TAKEN
    assert sim["mysms"].state.stats()["requests"]["send/json"] == 1


def test_batch_ledger_writes_are_bulk(any_stack: Stack, sim: Simulator) -> None:
    """200 messages through one batch: the ledger sees a handful of statements, not
    hundreds (counted at the database driver)."""
    settings = any_stack.configure(providers=["prostor"])
    published: list[Any] = []
    from dispatcher import api as producers

    producers.use_publisher(lambda items: published.extend(items))
    try:
        ids = api.send_bulk([{"to": f"7916{n:07d}", "text": f"bulk {n}"} for n in range(1, 201)])
    finally:
        producers.use_publisher(None)
    pipeline = SendPipeline(settings, lambda *a: published.append(a), coordinator_for(REDIS_URL))
    statements: list[str] = []
    engine = db.get_engine()

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        counts = pipeline.process_many(ids)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert counts == {"skipped": 0, "accepted": 200}
    assert sim["prostor"].state.stats()["requests"]["send.json"] == 1
    assert len(statements) <= 20, statements
    assert set(any_stack.statuses(ids).values()) == {"accepted"}
    pipeline.close()


class RedisGoneAfterTheCall(MemoryCoordinator):
    """Redis vanishes between the provider's reply and the ledger write: the one moment
    a real restart hits only by chance (it once left a batch of 20 as `unknown`)."""

    def breaker_success(self, name: str) -> None:
        raise redis.ConnectionError("Connection refused")

    def breaker_failure(self, name: str, threshold: int, cooldown: float, count: int = 1) -> bool:
        raise redis.ConnectionError("Connection refused")


def test_a_coordinator_outage_after_the_call_loses_nothing(stack: Stack, sim: Simulator) -> None:
    settings = stack.configure(providers=["prostor", "smska"])
    published: list[Any] = []
    from dispatcher import api as producers

    producers.use_publisher(lambda items: published.extend(items))
    try:
        batch = api.send_bulk([{"to": f"7916{n:07d}", "text": f"gone {n}"} for n in range(1, 21)])
        single = api.send_sms("79161234567", "one by one", provider="smska")
        failing = api.send_sms("79161234568", "to a broken provider", provider="prostor")
    finally:
        producers.use_publisher(None)
    pipeline = SendPipeline(settings, lambda *a: published.append(a), RedisGoneAfterTheCall())
    try:
        assert pipeline.process_many(batch) == {"skipped": 0, "accepted": 20}
        assert pipeline.process(single) == "accepted"
        sim["prostor"].state.faults.http500_rate = 1.0
        pipeline.process(failing)
    finally:
        pipeline.close()
    statuses = stack.statuses([*batch, single, failing])
    assert {statuses[m] for m in [*batch, single]} == {"accepted"}
    # The 500 was recorded and the message put back for a retry, not left `sending`.
    assert statuses[failing] == "queued"
    for mid in [*batch, single, failing]:
        message = api.get_message(mid)
        assert message is not None
        assert all(a["finished_at"] is not None for a in message["attempts"]), message["attempts"]


def test_single_sends_linger_and_go_together(stack: Stack, sim: Simulator) -> None:
    """Messages queued one by one (send_sms: a task each) for a provider that takes
    batches wait `linger` for others due for it and go in shared calls; one-time
    codes (priority high) never wait and always go alone."""
    stack.configure(providers=["prostor"], pipeline={"linger": 0.2})
    stack.start_worker()
    ids = [api.send_sms(f"7916{n:07d}", f"one by one {n}") for n in range(1, 41)]
    statuses = stack.wait_until(ids, SETTLED, timeout=60)
    assert set(statuses.values()) <= TAKEN, statuses
    calls = sim["prostor"].state.stats()["requests"]["send.json"]
    assert calls <= 10, calls  # 40 tasks, a handful of calls
    assert sim["prostor"].state.stats()["duplicates"] == 0
    codes = [api.send_sms(f"7926{n:07d}", f"code {n}", priority="high") for n in range(1, 6)]
    assert set(stack.wait_until(codes, SETTLED, timeout=60).values()) <= TAKEN
    assert sim["prostor"].state.stats()["requests"]["send.json"] == calls + 5


def test_a_group_outlasting_its_lease_keeps_its_claims(stack: Stack, sim: Simulator) -> None:
    """25 calls one at a time take longer than one call's lease (connect + read
    timeout + 5 s): the sweeper must not take the waiting ones for a dead worker's
    and send them again (at-least-once would duplicate). The task renews its claims."""
    stack.configure(providers=["smska"], pipeline={"call_concurrency": 1, "group_size": 25},
                    smska={"timeout": 0.5, "connect_timeout": 0.2,
                           "delivery_guarantee": "at-least-once"})  # fmt: skip
    sim["smska"].state.faults.latency_ms = 300  # 25 x 0.3 s = 7.5 s > the 5.7 s lease
    stack.start_worker(beat=True)
    ids = api.send_bulk([{"to": f"7916{n:07d}", "text": f"lease {n}"} for n in range(1, 26)])
    statuses = stack.wait_until(ids, SETTLED, timeout=60)
    assert set(statuses.values()) <= TAKEN, statuses
    assert sim["smska"].state.stats()["duplicates"] == 0
    assert sim["smska"].state.stats()["messages"] == 25
