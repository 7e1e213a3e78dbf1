"""Batching: bulk messages claimed together, sent in as few provider calls as the
provider takes, written back with bulk statements; one bad message spoils nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from dispatcher import api, db
from dispatcher.coordination import coordinator_for
from dispatcher.pipeline import SendPipeline
from dispatcher.simulator.core import Simulator
from tests.support import REDIS_URL, SETTLED, TAKEN, Stack


def test_bulk_to_prostor_goes_in_batches_of_200(any_stack: Stack, sim: Simulator) -> None:
    any_stack.configure(providers=["prostor"], pipeline={"publish_batch": 200})
    any_stack.start_worker()
    messages = [{"to": f"7916{n:07d}", "text": f"batch {n}"} for n in range(1, 451)]
    messages[123]["to"] = "70001234567"  # refused by the provider: only this one
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
