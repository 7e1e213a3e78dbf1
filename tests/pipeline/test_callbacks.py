"""Status callbacks against the real ledger (SQLite and PostgreSQL), real HTTP to a
receiver, and real Celery workers: signed, in order per message, never lost."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from dispatcher import callbacks, clients, db, ledger
from dispatcher.config import Settings
from dispatcher.models import ATTEMPTS, CALLBACKS, MESSAGES, utcnow
from dispatcher.simulator.receiver import Receiver
from dispatcher.status import Status
from dispatcher.validation import validate
from tests import support
from tests.host_commands import WORKER, host_argv
from tests.support import Stack

# Far enough ahead that no sweeper releases the messages during a test.
LATER = (datetime.now(UTC) + timedelta(days=300)).isoformat()
TOKEN = "operator-token-for-callbacks"
FAST = {"allow_private": True, "backoff_base": 0.2, "backoff_cap": 1.0, "interval": 0.2, "timeout": 3.0}


def setup(stack: Stack, **overrides: Any) -> Settings:
    return stack.configure(sections={"callbacks": {**FAST, **overrides}, "api": {"token": TOKEN}})


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def _count(session: Any, mid: str) -> int:
    return int(session.execute(select(func.count()).where(CALLBACKS.c.message_id == mid)).scalar_one())


def new_message(settings: Settings, *, url: str | None = None, task: str | None = None,
                client: str | None = None, key: str | None = None) -> str:  # fmt: skip
    """A scheduled message with a callback: the outbox gets its first row (scheduled)."""
    item = validate(settings, to="79161234567", text="code 1234", at=LATER, key=key)
    with db.session_scope() as s:
        mid = ledger.insert_messages(s, [item])[0]
        s.execute(
            update(MESSAGES)
            .where(MESSAGES.c.id == mid)
            .values(callback_url=url, callback_task=task, client=client)
        )
        # Set after the insert, so insert_messages could not have recorded it.
        assert callbacks.record(s, [mid], utcnow()) == 1
    return mid


def move(mid: str, status: Status, **fields: Any) -> None:
    """A status change and its callback in one transaction. Once the ledger records
    callbacks itself, the explicit record would double it: only when it did not."""
    with db.session_scope() as s:
        before = _count(s, mid)
        assert ledger.transition(s, mid, status, source="test", fields=fields or None) is not None
        if _count(s, mid) == before:
            callbacks.record(s, [mid], utcnow())


def walk(mid: str) -> None:
    """scheduled -> queued -> accepted -> sent: three more callbacks (not through
    sending, which the ledger does not call back for)."""
    move(mid, Status.QUEUED)
    move(mid, Status.ACCEPTED, provider="smstele", provider_message_id="pm-1")
    move(mid, Status.SENT)


def rows(mids: list[str] | None = None) -> list[dict[str, Any]]:
    with db.session_scope() as s:
        query = select(CALLBACKS).order_by(CALLBACKS.c.id)
        if mids is not None:
            query = query.where(CALLBACKS.c.message_id.in_(mids))
        return [dict(r._mapping) for r in s.execute(query).all()]


def drain(settings: Settings, until: Callable[[], bool], timeout: float = 15.0) -> None:
    """Run delivery until ``until()`` holds (what the beat would do, in this process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        callbacks.deliver_due(settings)
        if until():
            return
        time.sleep(0.05)
    raise AssertionError(f"not done in {timeout}s: {rows()}")


def all_delivered() -> bool:
    return all(r["state"] == "delivered" for r in rows())


def test_signed_with_the_clients_secret_or_the_operators_token(any_stack: Stack, receiver: Receiver) -> None:
    settings = setup(any_stack)
    with db.session_scope() as s:
        _, _, secret = clients.create_client(s, "shop", callback_url=receiver.url, allow_private=True)
    own = new_message(settings, url=receiver.url, client="shop", key="order-7")
    operators = new_message(settings, url=receiver.url + "?token=in-the-query")
    with db.session_scope() as s:
        s.execute(insert(ATTEMPTS), [
            {"message_id": own, "provider": "smstele", "kind": "smstele", "outcome": "accepted", "cost": c}
            for c in (1.5, 2.25)
        ])  # fmt: skip
    move(own, Status.QUEUED)
    drain(settings, all_delivered)
    got = receiver.wait_for(3)
    assert len(got) == 3
    ids = {r["id"] for r in rows()}
    for request in got:
        stamp, signature = (
            request.headers["x-smsdispatch-timestamp"],
            request.headers["x-smsdispatch-signature"],
        )
        assert abs(int(stamp) - time.time()) < 60
        assert request.payload is not None
        body = request.body
        assert body == json.dumps(request.payload, separators=(",", ":"), ensure_ascii=False).encode()
        assert int(request.headers["x-smsdispatch-delivery"]) in ids
        assert request.headers["content-type"].startswith("application/json")
        if request.payload["id"] == own:
            assert callbacks.verify(secret, stamp, signature, body)
            assert not callbacks.verify(TOKEN, stamp, signature, body)
            assert request.payload["key"] == "order-7" and request.payload["cost"] == pytest.approx(3.75)
        else:
            assert request.payload["id"] == operators and request.path.endswith("?token=in-the-query")
            assert callbacks.verify(TOKEN, stamp, signature, body)
            assert not callbacks.verify(secret, stamp, signature, body)
            assert request.payload["cost"] is None
        assert set(request.payload) == {"id", "key", "to", "status", "provider", "provider_message_id",
                                        "error", "parts", "cost", "at"}  # fmt: skip
        assert request.payload["to"] == "79161234567" and request.payload["parts"] == 1
        assert request.payload["at"].endswith("Z") and datetime.fromisoformat(request.payload["at"])
    statuses = [r.payload["status"] for r in got if r.payload and r.payload["id"] == own]
    assert statuses == ["scheduled", "queued"]
    assert {r["state"] for r in rows()} == {"delivered"}


def test_in_order_per_message(any_stack: Stack, receiver: Receiver) -> None:
    settings = setup(any_stack)
    first = new_message(settings, url=receiver.url)
    walk(first)  # four callbacks
    second = new_message(settings, url=receiver.url)
    move(second, Status.QUEUED)  # two
    receiver.respond(500, times=2)
    drain(settings, all_delivered)
    got = receiver.received
    assert len(got) == 8  # six callbacks, two of them refused once (or one twice)
    assert sum(r.answered == 500 for r in got) == 2
    for mid, expected in ((first, ["scheduled", "queued", "accepted", "sent"]),
                          (second, ["scheduled", "queued"])):  # fmt: skip
        mine = [r for r in got if r.payload and r.payload["id"] == mid]
        deliveries = [int(r.headers["x-smsdispatch-delivery"]) for r in mine]
        # Arrival order: a callback is POSTed again until taken, and only then the next.
        assert deliveries == sorted(deliveries)
        taken = [r.payload["status"] for r in mine if r.answered == 200 and r.payload]
        assert taken == expected
    accepted = next(r for r in got if r.payload and r.payload["status"] == "accepted")
    assert accepted.payload is not None
    assert accepted.payload["provider"] == "smstele" and accepted.payload["provider_message_id"] == "pm-1"
    retried = [r for r in rows() if r["tries"] > 0]
    assert retried and all("HTTP 500" in (r["last_error"] or "") for r in retried)


def test_a_receiver_down_for_a_while_gets_everything_once_up(any_stack: Stack, receiver: Receiver) -> None:
    settings = setup(any_stack)
    url = receiver.url + "?token=s3cret-in-query"
    mids = [new_message(settings, url=url) for _ in range(3)]
    for mid in mids:
        move(mid, Status.QUEUED)
    receiver.down("refuse")
    drain(settings, lambda: all(r["tries"] >= 2 for r in rows() if r["status"] == "scheduled"))
    state = rows()
    assert all(r["state"] == "pending" for r in state)
    assert all(r["tries"] == 0 for r in state if r["status"] == "queued")  # waiting behind the first
    errors = [r["last_error"] for r in state if r["tries"]]
    # Refused, or not tried after another callback to it was refused in the same run.
    assert all(("ConnectionError" in e or "did not answer" in e) and "s3cret" not in e for e in errors)
    assert any("ConnectionError" in e for e in errors), errors
    report = callbacks.backlog(settings)
    assert report["pending"] == 6 and report["failed"] == 0
    assert report["oldest_pending_age_s"] is not None and report["oldest_pending_age_s"] >= 0
    [endpoint] = report["endpoints"]
    assert endpoint["url"] == receiver.url  # the query (a token) dropped
    assert endpoint["pending"] == 6 and endpoint["failing"] == 3 and "s3cret" not in endpoint["last_error"]
    with db.session_scope(settings.database_url) as s:
        totals = callbacks.outbox_totals(s, utcnow())  # what /metrics exports
    assert totals["pending"] == 6 and totals["failed"] == 0 and totals["failing"] == 3
    assert totals["oldest_pending_age_s"] is not None and totals["oldest_pending_age_s"] >= 0

    receiver.up()
    receiver.down("503")
    drain(settings, lambda: any(r.answered == 503 for r in receiver.received))
    receiver.up()
    drain(settings, all_delivered)
    taken = [r for r in receiver.received if r.answered == 200]
    seen = [r.headers["x-smsdispatch-delivery"] for r in taken]
    assert sorted(seen) == sorted(str(r["id"]) for r in rows())  # every one, once each
    for mid in mids:
        assert [r.payload["status"] for r in taken if r.payload and r.payload["id"] == mid] == [
            "scheduled", "queued",
        ]  # fmt: skip
    after = callbacks.backlog(settings)
    assert after["pending"] == 0 and after["delivered_24h"] == 6 and after["endpoints"] == []


def test_a_redirect_is_not_followed(any_stack: Stack, receiver: Receiver) -> None:
    settings = setup(any_stack)
    with Receiver() as elsewhere:
        receiver.respond(302, headers={"Location": elsewhere.url + "?token=abc"})
        new_message(settings, url=receiver.url)
        drain(settings, lambda: rows()[0]["tries"] == 1)
        [row] = rows()
        assert row["state"] == "pending"
        assert "HTTP 302: redirects are not followed" in row["last_error"] and "abc" not in row["last_error"]
        drain(settings, all_delivered)
        assert elsewhere.received == []
        assert [r.answered for r in receiver.received] == [302, 200]


def test_past_max_age_it_fails_and_the_next_one_goes(any_stack: Stack, receiver: Receiver) -> None:
    settings = setup(any_stack, max_age=60)
    mid = new_message(settings, url=receiver.url)
    move(mid, Status.QUEUED)
    first, second = (r["id"] for r in rows([mid]))
    with db.session_scope() as s:
        s.execute(update(CALLBACKS).where(CALLBACKS.c.id == first)
                  .values(created_at=utcnow() - timedelta(seconds=120)))  # fmt: skip
    receiver.respond(500)
    drain(settings, lambda: rows([mid])[1]["state"] == "delivered")
    aged, nxt = rows([mid])
    assert aged["state"] == "failed" and aged["tries"] == 1 and aged["last_error"].startswith("HTTP 500")
    assert nxt["id"] == second and nxt["tries"] == 0
    assert [r.answered for r in receiver.received] == [500, 200]

    # A 410 gives up at once, whatever the age; the next callback still goes.
    gone = new_message(settings, url=receiver.url)
    move(gone, Status.QUEUED)
    receiver.respond(410)
    drain(settings, lambda: rows([gone])[1]["state"] == "delivered")
    refused, after = rows([gone])
    assert (
        refused["state"] == "failed"
        and refused["tries"] == 1
        and refused["last_error"].startswith("HTTP 410")
    )
    assert after["state"] == "delivered"
    report = callbacks.backlog(settings)
    assert report["failed"] == 2 and report["pending"] == 0
    [endpoint] = report["endpoints"]
    assert endpoint["failed_24h"] == 2 and endpoint["last_error"].startswith("HTTP 410")
    with db.session_scope(settings.database_url) as s:
        assert callbacks.outbox_totals(s, utcnow())["failed"] == 2


def test_a_private_address_is_refused_at_delivery(any_stack: Stack, receiver: Receiver) -> None:
    settings = setup(any_stack, allow_private=False)
    new_message(settings, url=receiver.url)  # stored by a path that skipped the check
    drain(settings, lambda: rows()[0]["tries"] >= 2)
    [row] = rows()
    assert row["state"] == "pending" and "loopback" in row["last_error"] and "refused" in row["last_error"]
    assert receiver.received == []


def test_callback_task_is_published_to_the_celery_queue(any_stack: Stack) -> None:
    settings = setup(any_stack)
    any_stack.redis.delete(callbacks.TASK_QUEUE)
    mid = new_message(settings, task="shop.on_status")
    move(mid, Status.QUEUED)
    drain(settings, all_delivered)
    # kombu pushes on the left and pops on the right: oldest last.
    published = [json.loads(raw) for raw in reversed(any_stack.redis.lrange(callbacks.TASK_QUEUE, 0, -1))]
    any_stack.redis.delete(callbacks.TASK_QUEUE)
    assert [m["headers"]["task"] for m in published] == ["shop.on_status"] * 2
    bodies = [json.loads(base64.b64decode(m["body"])) for m in published]
    assert [args for args, _, _ in bodies] == [[], []]
    payloads = [kwargs["payload"] for _, kwargs, _ in bodies]
    assert [p["status"] for p in payloads] == ["scheduled", "queued"] and {p["id"] for p in payloads} == {mid}


def test_kill_9_during_delivery_loses_none(any_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = setup(any_stack, timeout=2.5, batch=8)
    original = host_argv

    def with_task(command: tuple[str, ...], *args: str) -> list[str]:
        # The worker registers the task even before workers/tasks imports it.
        argv = original(command, *args)
        return [*argv, "-I", "workers.tasks.callbacks"] if command == WORKER else argv

    monkeypatch.setattr(support, "host_argv", with_task)
    with Receiver(delay=2.0) as receiver:
        mids = [new_message(settings, url=receiver.url) for _ in range(3)]
        for mid in mids:
            # A second callback each, behind the first.
            with db.session_scope() as s:
                callbacks.record(s, [mid], utcnow())
        victim = any_stack.start_worker(beat=True)
        receiver.wait_for(1, timeout=20)
        assert receiver.received, any_stack.log_text()[-3000:]
        any_stack.kill_worker(victim)  # in the middle of the receiver's 2 s
        in_flight = {r.delivery for r in receiver.received}
        any_stack.start_worker(beat=True)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not all_delivered():
            time.sleep(0.2)
        state = rows()
        assert all(r["state"] == "delivered" for r in state), (state, any_stack.log_text()[-3000:])
        got = list(receiver.received)
    counts: dict[str, int] = {}
    for r in got:
        counts[r.delivery or ""] = counts.get(r.delivery or "", 0) + 1
    assert set(counts) == {str(r["id"]) for r in state}  # every one arrived
    # What was in flight at the kill went again once its lease ran out.
    assert all(counts[d or ""] >= 2 for d in in_flight)
    for mid in mids:
        firsts: list[int] = []
        for r in got:
            if r.payload and r.payload["id"] == mid and int(r.delivery or 0) not in firsts:
                firsts.append(int(r.delivery or 0))
        assert firsts == sorted(firsts) and len(firsts) == 2
