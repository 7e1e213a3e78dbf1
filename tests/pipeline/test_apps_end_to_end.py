"""Apps as clients end to end (issue 13): real workers with beat, the simulator, a real
callback receiver. A client's messages call back, signed with its secret, in order,
also after the receiver was down; a provider's blacklist code stops the number for
the next message."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from dispatcher import api, callbacks, config, db, stoplist
from dispatcher.clients import create_client
from dispatcher.simulator.core import Simulator
from dispatcher.simulator.receiver import Receiver
from tests.support import SETTLED, Stack

FAST_CALLBACKS = {"allow_private": True, "interval": 0.2, "backoff_base": 0.2, "backoff_cap": 1.0}


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def by_message(receiver: Receiver) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for r in receiver.received:
        if r.payload is not None and r.answered == 200:
            seen[r.payload["id"]].append(r.payload["status"])
    return seen


def test_a_clients_messages_call_back_signed_in_order_even_after_the_receiver_was_down(
    stack: Stack, sim: Simulator
) -> None:
    stack.configure(providers=["smstele"], sections={"callbacks": FAST_CALLBACKS})
    with Receiver() as receiver:
        with db.session_scope() as s:
            _, _, secret = create_client(s, "shop", callback_url=receiver.url, allow_private=True)
            stoplist.add(s, "79161230000", reason="replied STOP")
        receiver.secret = secret
        receiver.down("refuse")
        stack.start_worker(queues="sms.high,sms.bulk,sms.control,sms.poll", beat=True)
        ids = [api.send_sms(f"7916123456{n}", f"order {n} shipped", client="shop") for n in range(4)]
        stopped = api.send_sms("79161230000", "advert", client="shop")
        done = stack.wait_until(ids, {"delivered"}, timeout=30)
        assert set(done.values()) == {"delivered"}
        # Down: nothing arrived, and it all waits in the outbox.
        assert by_message(receiver) == {}
        assert callbacks.backlog(config.get_settings())["pending"] >= len(ids) + 1
        receiver.up()
        wait_for(lambda: all(by_message(receiver).get(m, [])[-1:] == ["delivered"] for m in ids))
        wait_for(lambda: by_message(receiver).get(stopped) == ["rejected"])
        seen = by_message(receiver)
        for mid in ids:
            # In order, each status once: accepted (or sent) before delivered.
            statuses = seen[mid]
            assert statuses[-1] == "delivered" and len(statuses) == len(set(statuses)), statuses
            assert statuses.index("delivered") > statuses.index("accepted"), statuses
        assert all(r.verified for r in receiver.received if r.answered == 200)
        rejected = next(r.payload for r in receiver.received if r.payload and r.payload["id"] == stopped)
        assert rejected["error"] == "stopped" and rejected["to"] == "79161230000"
        assert sim["smstele"].state.stats()["messages"] == len(ids)


def test_a_producer_by_name_gets_callbacks_signed_with_the_operator_key(stack: Stack, sim: Simulator) -> None:
    from workers.app import app

    stack.configure(providers=["smstele"], sections={"callbacks": FAST_CALLBACKS})
    token = "operator-token-for-callbacks"
    stack.table["api"] = {"token": token}
    stack.config_path.write_text(config.to_toml(stack.table), encoding="utf-8")
    with Receiver(secret=token) as receiver:
        stack.start_worker(queues="sms.high,sms.bulk,sms.control,sms.poll", beat=True)
        app.send_task(
            "smsdispatch.send",
            kwargs={"to": "79161234567", "text": "by name", "key": "byname-1", "callback_url": receiver.url},
            queue="sms.bulk",
        )
        wait_for(lambda: "delivered" in [p["status"] for p in receiver.payloads()])
        assert all(r.verified for r in receiver.received)
        assert receiver.payloads()[-1]["key"] == "byname-1"


def test_a_blacklist_code_stops_the_number_and_the_next_message_reaches_no_provider(
    stack: Stack, sim: Simulator
) -> None:
    """1000sms.ru answers 618 ("in the blacklist") for the simulator's 790001... numbers:
    the number is listed by the provider, and the next advert to it is stored rejected
    and sent nowhere."""
    from dispatcher.simulator.base import BLACKLISTED_PREFIX

    stack.configure(providers=["sms1000", "smstele"])
    stack.start_worker()
    phone = f"{BLACKLISTED_PREFIX}23456"
    first = api.send_sms(phone, "advert one")
    assert stack.wait_until([first], SETTLED, timeout=20)[first] == "rejected"
    with db.session_scope() as s:
        listed = stoplist.entries(s)
    assert [(e["phone"], e["source"]) for e in listed] == [(phone, "provider:sms1000")]
    calls = sim["sms1000"].state.stats()["requests"]
    second = api.send_sms(phone, "advert two")
    message = api.get_message(second)
    assert message is not None and message["status"] == "rejected" and message["last_error"] == "stopped"
    time.sleep(1.0)  # were it published, a worker would have called by now
    assert sim["sms1000"].state.stats()["requests"] == calls
    assert sim["smstele"].state.stats()["messages"] == 0
