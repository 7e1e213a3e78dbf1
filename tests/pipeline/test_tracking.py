"""Delivery tracking: polls, the prostor status queue, the horizon, balances."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import insert

from dispatcher import api, db, ledger
from dispatcher.coordination import coordinator_for
from dispatcher.models import MESSAGES, utcnow
from dispatcher.providers import make_provider, registry
from dispatcher.providers.base import OutgoingSms, StatusReport
from dispatcher.simulator.core import Simulator
from dispatcher.status import Status
from dispatcher.tracking import read_balances
from tests.conftest import KINDS
from tests.support import REDIS_URL, SETTLED, InlinePolls, Stack, store_accepted

FINAL = {"delivered", "undelivered", "rejected", "expired", "failed"}


# Tracking through real workers and beat under every pool the send path runs under: a
# poll group's calls go out on the process's call threads, greenlets under gevent.
POOLS = pytest.mark.parametrize("pool", ["prefork", "threads", "gevent"])


@POOLS
def test_every_kind_ends_final_with_events(any_stack: Stack, sim: Simulator) -> None:
    # my-sms.ru's -14 "error while sending" is not final (my-sms.md:596): its
    # undeliverable message is polled until the horizon, short here.
    any_stack.configure(pipeline={"status_horizon": 10.0})
    any_stack.start_worker(beat=True)
    kinds = KINDS
    good = {k: api.send_sms("79161234567", f"ok {k}", provider=k) for k in kinds}
    bad = {k: api.send_sms("79160000000", f"never {k}", provider=k) for k in kinds}
    statuses = any_stack.wait_until([*good.values(), *bad.values()], FINAL, timeout=40)
    for kind in kinds:
        assert statuses[good[kind]] == "delivered", (kind, statuses[good[kind]])
        # sms-ka.net has no "undelivered" word: its REJECTD is the nearest (sms-ka.md:117)
        expected = {"smska": "rejected", "mysms": "expired"}.get(kind, "undelivered")
        assert statuses[bad[kind]] == expected, kind
        message = api.get_message(good[kind])
        assert message is not None
        last = message["events"][-1]
        assert last["new_status"] == "delivered" and last["raw"]  # the provider's own value kept
        queued = registry.get(kind).capabilities.status_queue
        assert last["source"] == ("status_queue" if queued else "poll"), kind
    # prostor reported through its status queue: no message was polled by id
    assert sim["prostor"].state.stats()["requests"].get("status.json", 0) == 0
    assert sim["prostor"].state.stats()["requests"].get("statusQueue.json", 0) > 0


@POOLS
def test_silent_provider_ends_expired_at_the_horizon(stack: Stack) -> None:
    stack.configure(providers=["mysms", "sms1000"], pipeline={"status_horizon": 2.0},
              sms1000={"on_horizon": "unknown"})  # fmt: skip
    stack.start_worker(beat=True)
    silent = api.send_sms("79169999999", "no report ever", provider="mysms")
    other = api.send_sms("79169999999", "no report either", provider="sms1000")
    assert stack.wait_until([silent], {"expired"}, timeout=20)[silent] == "expired"
    assert stack.wait_until([other], {"unknown"}, timeout=20)[other] == "unknown"
    message = api.get_message(silent)
    assert message is not None
    assert "no final status from mysms within 2s" in message["events"][-1]["detail"]


def test_late_and_out_of_order_reports_change_nothing(any_stack: Stack) -> None:
    any_stack.configure(providers=["prostor"])
    with db.session_scope() as s:
        mid = ledger.insert_messages(s, [_new("79161234567")])[0]
        ledger.transition(s, mid, Status.SENDING, source="send")
        accepted = {"provider": "prostor", "provider_message_id": "P1"}
        ledger.transition(s, mid, Status.ACCEPTED, source="send", fields=accepted)
    reports = [
        StatusReport("P1", Status.DELIVERED, "delivered"),
        StatusReport("P1", Status.SENT, "smsc submit"),  # late
        StatusReport("P1", Status.UNDELIVERED, "delivery error"),  # contradicting, after final
        StatusReport("P1", Status.UNKNOWN, "gibberish"),
    ]
    with db.session_scope() as s:
        assert ledger.apply_reports(s, "prostor", reports, utcnow(), source="poll") == 1
    message = api.get_message(mid)
    assert message is not None and message["status"] == "delivered"
    assert [e["new_status"] for e in message["events"]] == ["queued", "sending", "accepted", "delivered"]
    assert "gibberish" in (message["last_error"] or "")


def _new(to: str) -> Any:
    from dispatcher.config import get_settings
    from dispatcher.validation import validate

    return validate(get_settings(), to=to, text="t")


def test_low_balance_diverts_traffic(stack: Stack, sim: Simulator) -> None:
    settings = stack.configure(providers=["mysms", "prostor"], mysms={"balance_threshold": 1000.0})
    sim["mysms"].state.account.balance = 500.0
    rows = {r["provider"]: r for r in read_balances(settings, coordinator_for(REDIS_URL))}
    assert rows["mysms"]["low"] and not rows["prostor"]["low"]
    stack.start_worker()
    mid = api.send_sms("79161234567", "divert me")
    assert stack.wait_until([mid], SETTLED)[mid] in {"accepted", "sent", "delivered"}
    assert (api.get_message(mid) or {})["provider"] == "prostor"
    assert sim["mysms"].state.stats()["requests"].get("send/json", 0) == 0
    from dispatcher.ops import provider_rows

    shown = {r["provider"]: r for r in provider_rows(settings)}
    assert shown["mysms"]["balance"] == 500.0 and shown["mysms"]["breaker"] == "closed"


def test_polling_10000_prostor_messages_costs_50_calls(stack: Stack, sim: Simulator) -> None:
    # The next polls a minute out: the second round below finds none due.
    stack.configure(providers=["prostor"], polling={"intervals": [60.0]})
    # no status queue here: every message is polled by id
    table = stack.table
    table["providers"]["prostor"].pop("status_queue", None)
    from dispatcher import config
    from tests.support import toml

    stack.config_path.write_text(toml(table), encoding="utf-8")
    settings = config.load(stack.config_path, env={})
    config.set_settings(settings)
    provider = make_provider(settings.provider("prostor"))
    outcomes = provider.send([OutgoingSms(uuid.uuid4().hex, f"7916{n:07d}", "t") for n in range(10_000)])
    provider.close()
    now = utcnow()
    rows = [
        {"id": o.id, "payload_hash": "x", "to": "79160000001", "text": "t", "priority": "normal", "parts": 1,
         "encoding": "gsm7", "status": "accepted", "provider": "prostor",
         "provider_message_id": o.provider_message_id, "attempts": 1, "retries": 0, "failovers": 0,
         "tried": "", "polls": 0, "created_at": now, "updated_at": now,
         "expires_at": now.replace(year=now.year + 1),
         "due_at": now, "accepted_at": now, "next_poll_at": now}
        for o in outcomes
    ]  # fmt: skip
    with db.session_scope() as s:
        s.execute(insert(MESSAGES), rows)
    time.sleep(0.7)  # the simulator moves them on
    before = sim["prostor"].state.stats()["requests"].get("status.json", 0)
    inline = InlinePolls(settings)
    try:
        stats = inline.round("prostor")
        calls = sim["prostor"].state.stats()["requests"]["status.json"] - before
        # Five groups of 10 calls of 200 ids each (2,000 messages a write-back), one round.
        assert stats.published == 5 and stats.calls == calls == 50
        assert stats.polled == 10_000 and stats.changed > 9_000
        again = inline.round("prostor")
        assert again.calls == 0 and again.published == 0  # each message's next poll moved out
    finally:
        inline.close()


def test_two_beats_do_not_double_a_poll(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    from workers import tasks

    tasks.reset_pipeline()
    first = tasks.poll.run("prostor")
    second = tasks.poll.run("prostor")  # a second beat firing the same schedule
    assert "skipped" not in first and second == {"skipped": "prostor"}
    tasks.reset_pipeline()


def test_a_full_status_queue_is_drained_on_each_drain_one_update(any_stack: Stack, sim: Simulator) -> None:
    """2,500 messages' changes (accepted, sent, delivered: 7,500) wait in prostor's queue.
    A drain task takes ``queue_rounds`` drains of 1,000, each written in one transaction
    with at most one UPDATE of the messages, and, the queue still full, publishes the next
    task at once (past the slot lock beat's copies take) instead of waiting for beat."""
    settings = any_stack.configure(providers=["prostor"], polling={"queue_rounds": 2})
    ids = store_accepted(settings, "prostor", [f"7916{n:07d}" for n in range(1, 2501)])
    time.sleep(0.7)  # the simulator delivers them
    assert sim["prostor"].state.stats()["queued_statuses"] == {"smsdispatch": 7500}
    transactions: list[list[str]] = [[]]

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE MESSAGES"):
            transactions[-1].append(statement)

    def committed(conn: Any) -> None:
        transactions.append([])

    from sqlalchemy import event

    from workers import tasks

    tasks.reset_pipeline()
    any_stack.redis.delete("sms.poll")
    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", count)
    event.listen(engine, "commit", committed)
    try:
        first = tasks.status_queue.run("prostor")
        assert first["calls"] == 2 and first["polled"] == 2000 and first["more"] is True
        chained = [json.loads(raw) for raw in any_stack.redis.lrange("sms.poll", 0, -1)]
        assert [(m["headers"]["task"], m["headers"]["kwargsrepr"]) for m in chained] == [
            ("smsdispatch.status_queue", "{'chained': True}")
        ]
        # The chained task goes on past the slot lock the first one took.
        runs, more = 1, True
        while more:
            more = tasks.status_queue.run("prostor", chained=True)["more"]
            runs += 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
        event.remove(engine, "commit", committed)
        tasks.reset_pipeline()
    assert runs == 4  # 8 drains of 1,000, 2 a task (the last one finds 500 and an empty queue)
    assert max(len(t) for t in transactions) == 1 and sum(len(t) for t in transactions) >= 5
    assert set(any_stack.statuses(ids).values()) == {"delivered"}
    assert sim["prostor"].state.stats()["queued_statuses"] == {"smsdispatch": 0}
    message = api.get_message(ids[0])
    assert message is not None
    assert [e["new_status"] for e in message["events"]][-2:] == ["sent", "delivered"]
