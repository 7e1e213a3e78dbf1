"""What the store applies beyond validation (issue 13): a client's senders, default
callback and quota, quiet hours, the per-recipient rate and the stop list. Real
ledger (SQLite and PostgreSQL), real workers where a message must reach (or not
reach) the simulator."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dispatcher import api, db, stoplist
from dispatcher.clients import create_client
from dispatcher.errors import LimitExceeded, ValidationError
from dispatcher.simulator.core import Simulator
from tests.support import SETTLED, TAKEN, Stack

PHONE = "79161234567"


def _client(name: str, **options: Any) -> str:
    with db.session_scope() as s:
        create_client(s, name, allow_private=True, **options)
    return name


def _status(mid: str) -> dict[str, Any]:
    message = api.get_message(mid)
    assert message is not None
    return message


def _closed_window(tz: str = "Europe/Moscow") -> tuple[str, datetime]:
    """A one-hour window that opens two hours from now (local time in ``tz``), and
    that opening in UTC: now is outside it whatever the time of day."""
    local = datetime.now(ZoneInfo(tz)).replace(second=0, microsecond=0) + timedelta(hours=2)
    end = local + timedelta(hours=1)
    return f"{local:%H:%M}-{end:%H:%M}", local.astimezone(UTC)


# -- clients ----------------------------------------------------------------------


def test_a_clients_senders_its_default_and_its_callback(any_stack: Stack) -> None:
    any_stack.configure(providers=["smstele"])
    one = _client("one", senders=("ShopOne",), callback_url="http://127.0.0.1:9/hook")
    two = _client("two", senders=("ShopTwo", "ShopTwoB"))
    mid = api.send_sms(PHONE, "default sender", client=one)
    message = _status(mid)
    assert message["sender"] == "ShopOne" and message["client"] == "one"
    assert message["callback_url"] == "http://127.0.0.1:9/hook"
    # The message's own callback wins over the client's.
    own = _status(api.send_sms(PHONE, "own hook", client=one, callback_task="app.status"))
    assert own["callback_url"] is None and own["callback_task"] == "app.status"
    with pytest.raises(ValidationError) as bad:
        api.send_sms(PHONE, "not mine", sender="ShopOne", client=two)
    assert bad.value.field == "sender" and "ShopTwo" in bad.value.reason
    with pytest.raises(ValidationError) as none:
        api.send_sms(PHONE, "which one?", client=two)
    assert none.value.field == "sender" and "missing" in none.value.reason
    with pytest.raises(ValidationError) as bulk:
        api.send_bulk(
            [{"to": PHONE, "text": "a", "sender": "ShopTwo"}, {"to": PHONE, "text": "b"}], client=two
        )
    assert bulk.value.field == "messages[1].sender"
    assert api.send_sms(PHONE, "the second of two", sender="ShopTwoB", client=two)


def test_a_revoked_or_unknown_client_stores_nothing(any_stack: Stack) -> None:
    from dispatcher.clients import revoke_client

    any_stack.configure(providers=["smstele"])
    _client("gone")
    with db.session_scope() as s:
        assert revoke_client(s, "gone")
    for name, why in (("gone", "revoked"), ("nobody", "no client")):
        with pytest.raises(ValidationError) as refused:
            api.send_sms(PHONE, "x", client=name)
        assert refused.value.field == "client" and why in refused.value.reason
    assert api.list_messages() == []


def test_the_daily_quota_refuses_past_it_and_counts_only_new_messages(any_stack: Stack) -> None:
    any_stack.configure(providers=["smstele"])
    name = _client("quota", daily_quota=3, timezone="Asia/Vladivostok")
    api.send_sms(PHONE, "1", client=name, key="q1")
    api.send_sms(PHONE, "1", client=name, key="q1")  # a replay is not a new message
    api.send_bulk([{"to": PHONE, "text": "2"}, {"to": PHONE, "text": "3"}], client=name)
    with pytest.raises(LimitExceeded) as over:
        api.send_sms(PHONE, "4", client=name)
    assert over.value.code == "quota" and over.value.field == "daily_quota"
    assert "3 of 3" in over.value.reason and "Asia/Vladivostok" in over.value.reason
    # Until midnight in the client's zone.
    local = datetime.now(ZoneInfo("Asia/Vladivostok"))
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=local.tzinfo)
    assert abs(over.value.retry_after - (midnight - local).total_seconds()) < 5
    # A bulk call past the quota stores none of its messages.
    assert len(api.list_messages()) == 3
    # The operator (no client) has no quota.
    assert api.send_sms(PHONE, "operator")


def test_the_quota_holds_under_concurrent_producers(any_stack: Stack) -> None:
    any_stack.configure(providers=["smstele"])
    name = _client("race", daily_quota=10)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def produce() -> None:
        barrier.wait()
        for _ in range(3):
            try:
                api.send_sms(PHONE, "race", client=name)
                outcomes.append("stored")
            except LimitExceeded:
                outcomes.append("refused")

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("stored") == 10 and outcomes.count("refused") == 14
    assert len(api.list_messages()) == 10


# -- quiet hours --------------------------------------------------------------------


def test_quiet_hours_hold_normal_messages_until_the_window_opens(any_stack: Stack) -> None:
    window, opening = _closed_window()
    any_stack.configure(providers=["smstele"], sections={"policy": {"send_window": window}})
    mid = api.send_sms(PHONE, "advert", ttl=600)
    message = _status(mid)
    assert message["status"] == "scheduled"
    assert abs((message["send_at"] - opening).total_seconds()) < 61
    # Its whole TTL counts from the opening, as it would from an `at`.
    assert abs((message["expires_at"] - message["send_at"]).total_seconds() - 600) < 1
    # A one-time code always goes.
    assert _status(api.send_sms(PHONE, "code 1234", priority="high"))["status"] != "scheduled"
    # A message's own zone: the same local window in a zone 12 hours away is open, or
    # opens at another moment.
    other = _status(api.send_sms(PHONE, "advert", tz="Pacific/Auckland"))
    assert other["send_at"] is None or other["send_at"] != message["send_at"]


def test_a_clients_window_overrides_the_default(any_stack: Stack) -> None:
    window, opening = _closed_window("Asia/Yekaterinburg")
    any_stack.configure(providers=["smstele"], sections={"policy": {"send_window": "always"}})
    name = _client("night", send_window=window, timezone="Asia/Yekaterinburg")
    held = _status(api.send_sms(PHONE, "advert", client=name))
    assert held["status"] == "scheduled" and abs((held["send_at"] - opening).total_seconds()) < 61
    assert _status(api.send_sms(PHONE, "advert"))["status"] == "queued"  # the operator: no window


def test_a_message_held_for_quiet_hours_is_sent_when_they_end(stack: Stack, sim: Simulator) -> None:
    """A window that opens a few seconds from now: the message waits, then goes."""
    now = datetime.now(ZoneInfo("Europe/Moscow"))
    # At least 5 s ahead: a message stored just after the opening would not wait at all.
    start = (now + timedelta(seconds=65)).replace(second=0, microsecond=0)
    window = f"{start:%H:%M}-{start + timedelta(hours=1):%H:%M}"
    stack.configure(providers=["smstele"], sections={"policy": {"send_window": window}})
    stack.start_worker(beat=True)
    mid = api.send_sms(PHONE, "advert")
    assert _status(mid)["status"] == "scheduled"
    assert sim["smstele"].state.stats()["messages"] == 0
    wait = (start - now).total_seconds() + 15
    assert stack.wait_until([mid], SETTLED, timeout=wait)[mid] in TAKEN
    assert _status(mid)["accepted_at"] >= start.astimezone(UTC)


# -- the per-recipient rate ------------------------------------------------------------


def test_the_recipient_rate_refuses_past_it_per_priority(any_stack: Stack) -> None:
    any_stack.configure(
        providers=["smstele"],
        sections={"policy": {"recipient_limit": {"high": "3/hour", "normal": "5/hour"}}},
    )
    for n in range(3):
        api.send_sms(PHONE, f"code {n}", priority="high", key=f"code-{n}")
    api.send_sms(PHONE, "code 0", priority="high", key="code-0")  # a replay is not counted
    with pytest.raises(LimitExceeded) as over:
        api.send_sms(PHONE, "code 3", priority="high")
    assert over.value.code == "recipient_rate" and over.value.field == "to"
    assert 3500 < over.value.retry_after <= 3600
    # Another number, and the other priority, have their own counts.
    api.send_sms("79161234568", "code", priority="high")
    api.send_sms(PHONE, "news", priority="normal")
    with pytest.raises(LimitExceeded) as bulk:
        api.send_bulk([{"to": "79161234569", "text": "x"}] + [{"to": PHONE, "text": "x"}] * 5)
    assert bulk.value.field == "messages[5].to"
    assert len(api.list_messages()) == 5  # the refused bulk call stored nothing


def test_the_recipient_rate_holds_under_concurrent_producers(any_stack: Stack) -> None:
    any_stack.configure(providers=["smstele"], sections={"policy": {"recipient_limit": "4/hour"}})
    barrier = threading.Barrier(6)
    stored: list[str] = []

    def produce() -> None:
        barrier.wait()
        for _ in range(2):
            with contextlib.suppress(LimitExceeded):
                stored.append(api.send_sms(PHONE, "pump", priority="high"))

    threads = [threading.Thread(target=produce) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stored) == 4 and len(api.list_messages()) == 4


# -- the stop list ---------------------------------------------------------------------


def test_a_stopped_number_is_rejected_and_reaches_no_provider(stack: Stack, sim: Simulator) -> None:
    stack.configure(providers=["smstele"])
    with db.session_scope() as s:
        stoplist.add(s, PHONE, reason="replied STOP")
        stoplist.add(s, "79161234568", scope="all", reason="complaint")
    stack.start_worker()
    advert = api.send_sms(PHONE, "advert")
    code = api.send_sms(PHONE, "code 1234", priority="high")
    blocked_code = api.send_sms("79161234568", "code 1234", priority="high")
    bulk = api.send_bulk([{"to": PHONE, "text": "bulk"}, {"to": "79161234570", "text": "bulk"}])
    for mid in (advert, blocked_code, bulk[0]):
        message = _status(mid)
        assert message["status"] == "rejected" and message["last_error"] == "stopped", message
        assert "stop list" in message["events"][0]["detail"]
    done = stack.wait_until([code, bulk[1]], SETTLED, timeout=20)
    assert all(s in TAKEN for s in done.values())
    time.sleep(1.0)  # a stopped message, wrongly published, would have gone by now
    state = sim["smstele"].state
    assert sorted(m.phone for m in state.messages.values()) == ["79161234567", "79161234570"]
    # The stopped message did not count against the rate: it was never sent.
    assert _status(advert)["attempts"] == []


def test_a_number_listed_after_its_message_was_stored_is_honoured_at_send_time(
    any_stack: Stack, sim: Simulator
) -> None:
    """A campaign scheduled before the opt-out: the claim sees the entry (no extra
    statement: it comes back with the claim) and nothing goes out."""
    any_stack.configure(providers=["smstele"])
    at = datetime.now(UTC) + timedelta(seconds=2)
    advert = api.send_sms(PHONE, "campaign", at=at)
    code = api.send_sms("79161234568", "code 1234", priority="high", at=at)
    with db.session_scope() as s:
        stoplist.add(s, PHONE, reason="replied STOP after the campaign was scheduled")
        stoplist.add(s, "79161234568", reason="a normal entry does not stop codes")
    any_stack.start_worker(beat=True)
    done = any_stack.wait_until([advert, code], SETTLED, timeout=25)
    assert done[advert] == "rejected" and done[code] in TAKEN, done
    message = _status(advert)
    assert message["last_error"] == "stopped" and message["attempts"] == []
    assert "stop list" in message["events"][-1]["detail"]
    assert [m.phone for m in sim["smstele"].state.messages.values()] == ["79161234568"]


def test_idempotency_keys_belong_to_their_client(any_stack: Stack) -> None:
    """Two apps with natural keys ("order-1") never answer or block each other."""
    from dispatcher.search import search

    settings = any_stack.configure(providers=["smstele"])
    _client("one")
    _client("two")
    a = api.send_sms(PHONE, "order 1", key="order-1", client="one")
    b = api.send_sms(PHONE, "order 1", key="order-1", client="two")
    assert a != b
    assert api.send_sms(PHONE, "order 1", key="order-1", client="one") == a  # a replay, within one
    with pytest.raises(ValidationError) as conflict:
        api.send_sms(PHONE, "other text", key="order-1", client="two")
    assert b in conflict.value.reason and a not in conflict.value.reason
    # Bulk keys too; the operator's own key is a third namespace.
    bulk_a = api.send_bulk([{"to": PHONE, "text": "x"}], key="batch-7", client="one")
    bulk_b = api.send_bulk([{"to": PHONE, "text": "y"}], key="batch-7", client="two")
    assert bulk_a != bulk_b
    assert api.send_sms(PHONE, "order 1", key="order-1") not in (a, b)
    # Shown as the client gave it, and found by it.
    assert _status(a)["key"] == "order-1" and _status(b)["key"] == "order-1"
    rows, _ = search(settings, client="two", key="order-1")
    assert [r["id"] for r in rows] == [b] and rows[0]["key"] == "order-1"


def test_two_clients_listing_one_number_at_once_cannot_take_it_from_each_other(any_stack: Stack) -> None:
    any_stack.configure(providers=["smstele"])
    scopes = {"acme": "all", "beta": "normal"}
    for n in range(10):
        phone = f"7916123{n:04d}"
        barrier = threading.Barrier(2)
        added: dict[str, bool] = {}

        def add(who: str, phone: str, barrier: threading.Barrier, added: dict[str, bool]) -> None:
            barrier.wait()
            with db.session_scope() as s:
                added[who] = stoplist.add(s, phone, scope=scopes[who], source=f"client:{who}",
                                          only_if_source=f"client:{who}")  # fmt: skip

        threads = [threading.Thread(target=add, args=(w, phone, barrier, added)) for w in scopes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with db.session_scope() as s:
            [entry] = stoplist.entries(s, after=str(int(phone) - 1), limit=1)
        winner = "acme" if added["acme"] else "beta"
        assert sorted(added.values()) == [False, True]
        assert (entry["source"], entry["scope"]) == (f"client:{winner}", scopes[winner])
