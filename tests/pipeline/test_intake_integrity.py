"""Integrity at the doors (issue 12): a cancel never lies about a message in doubt, a
retried scheduled message keeps its time, idempotency compares the request as given,
and a bulk key is tied to its whole payload. Real workers, simulator, ledger."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher import api, db, ledger
from dispatcher.simulator.core import Simulator
from tests.support import SETTLED, TAKEN, Stack


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_cancel_of_a_message_in_doubt_waits_for_the_provider_and_it_has_it(
    stack: Stack, sim: Simulator
) -> None:
    """The call times out at 0.3 s, SMStele takes the message at 0.5 s; the operator
    cancels while we do not know. Marking it failed then would be a lie (the provider
    delivers it): the cancel is recorded, the question settles it, and the message
    ends as taken, with the late cancel said in its history."""
    stack.configure(providers=["smstele", "prostor"], smstele={"timeout": 0.3, "reconcile_after": 2.0})
    state = sim["smstele"].state
    state.faults.hang = True
    state.faults.hang_seconds = 0.5
    stack.start_worker()
    mid = api.send_sms("79161234567", "in doubt")
    wait_for(lambda: sum(state.stats()["requests"].values()) > 0)
    state.faults.hang = False
    # The call has timed out and the message waits for the question.
    wait_for(lambda: (api.get_message(mid) or {}).get("status") == "queued")
    done = api.cancel(mid)
    assert done.outcome == "requested", done
    assert "smstele is in doubt" in done.reason
    message = api.get_message(mid)
    assert message is not None and message["status"] == "queued" and message["cancel_requested_at"]
    assert stack.wait_until([mid], SETTLED, timeout=20)[mid] in TAKEN
    assert state.stats()["messages"] == 1 and state.stats()["duplicates"] == 0
    assert sim["prostor"].state.stats()["messages"] == 0
    message = api.get_message(mid)
    assert message is not None
    assert [a["outcome"] for a in message["attempts"]] == ["reconciled"]


def test_cancel_while_the_call_is_in_flight_ends_failed_when_nothing_went_out(
    stack: Stack, sim: Simulator
) -> None:
    """The operator cancels while the call is held; the provider then answers 500
    (nothing taken). The cancel recorded during the call is honoured: failed, never
    sent again, no other provider asked."""
    stack.configure(providers=["smstele", "prostor"], smstele={"timeout": 5.0})
    state = sim["smstele"].state
    state.faults.hang = True
    state.faults.hang_seconds = 1.0
    state.faults.http500_rate = 1.0
    stack.start_worker()
    mid = api.send_sms("79161234567", "cancel me in flight")
    wait_for(lambda: sum(state.stats()["requests"].values()) > 0)
    done = api.cancel(mid)
    assert done.outcome == "requested" and done.old == "sending", done
    assert stack.wait_until([mid], SETTLED, timeout=20)[mid] == "failed"
    time.sleep(1.0)  # a resend would come now
    message = api.get_message(mid)
    assert message is not None and "cancelled by the operator" in message["last_error"]
    assert [a["outcome"] for a in message["attempts"]] == ["retry"]
    assert state.stats()["messages"] == 0 and sim["prostor"].state.stats()["messages"] == 0


def test_cancel_of_a_queued_message_with_no_doubt_is_immediate(stack: Stack) -> None:
    stack.configure(providers=["prostor"])  # no worker: it stays queued
    mid = api.send_sms("79161234567", "never sent")
    done = api.cancel(mid)
    assert (done.outcome, done.old, done.status) == ("cancelled", "queued", "failed")
    again = api.cancel(mid)
    assert again.outcome == "refused" and "failed" in again.reason
    assert api.cancel("0" * 32).outcome == "missing"


def test_retry_of_a_cancelled_scheduled_message_keeps_its_time(stack: Stack, sim: Simulator) -> None:
    stack.configure(providers=["prostor"])
    stack.start_worker(beat=True)
    at = datetime.now(UTC) + timedelta(hours=1)
    mid = api.send_sms("79161234567", "at nine", at=at.isoformat(), ttl=600)
    assert api.cancel(mid).outcome == "cancelled"
    assert api.retry_message(mid) == "failed"
    message = api.get_message(mid)
    assert message is not None and message["status"] == "scheduled"
    assert abs((message["due_at"] - at).total_seconds()) < 0.01
    # Its own TTL, counted from its time, as when it was first given.
    assert abs((message["expires_at"] - at).total_seconds() - 600) < 0.01
    time.sleep(3)  # several sweeps: it must not go out before its time
    assert (api.get_message(mid) or {})["status"] == "scheduled"
    assert sim["prostor"].state.stats()["messages"] == 0


def test_the_identical_request_after_its_at_has_passed_is_the_same_message(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    first = api.send_sms("79161234567", "scheduled", key="same-at", at=at)
    time.sleep(1.2)
    assert api.send_sms("79161234567", "scheduled", key="same-at", at=at) == first
    # What the client gave still counts: another `at` or `ttl` is another request.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(api.IdempotencyConflict):
        api.send_sms("79161234567", "scheduled", key="same-at", at=later)
    with pytest.raises(api.IdempotencyConflict):
        api.send_sms("79161234567", "scheduled", key="same-at", at=at, ttl=60)


def test_a_bulk_key_is_tied_to_its_whole_payload(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    two = [{"to": "79161234567", "text": "one"}, {"to": "79161234568", "text": "two"}]
    ids = api.send_bulk(two, key="bulk-1")
    assert api.send_bulk(two, key="bulk-1") == ids  # the same call again: the same ids
    with pytest.raises(api.IdempotencyConflict) as refused:
        api.send_bulk([*two, {"to": "79161234569", "text": "three"}], key="bulk-1")
    assert refused.value.field == "Idempotency-Key"
    with pytest.raises(api.IdempotencyConflict):
        api.send_bulk([two[1], two[0]], key="bulk-1")  # the order is part of the payload
    with db.session_scope() as s:
        assert sum(ledger.count_by_status(s).values()) == 2  # the superset stored nothing
        assert sorted(m.key for m in ledger.find_by_keys(s, {"bulk-1:0", "bulk-1:1"}).values()) == [
            "bulk-1:0",
            "bulk-1:1",
        ]


@pytest.mark.postgres
def test_overlapping_bulk_calls_in_parallel_never_deadlock(sim: Simulator, tmp_path: object) -> None:
    """Eight producers store overlapping keyed batches at once, each in its own order.
    Rows are inserted in key order, so they queue on the unique index instead of
    deadlocking; every call answers, and each key is stored once."""
    from pathlib import Path

    from dispatcher import config

    stack = Stack(sim, Path(str(tmp_path)), "postgres")
    try:
        stack.configure(providers=["prostor"])
        keys = [f"k{i:04d}" for i in range(400)]
        errors: list[BaseException] = []
        answers: list[dict[str, str]] = []
        start = threading.Barrier(8)

        def producer(n: int) -> None:
            mine = keys[n * 25 : n * 25 + 200]
            mine = mine[::-1] if n % 2 else mine
            batch = [{"to": f"7916{int(k[1:]):07d}", "text": f"m {k}", "key": k} for k in mine]
            start.wait()
            try:
                ids = api.send_bulk(batch)
                answers.append(dict(zip(mine, ids, strict=True)))
            except BaseException as exc:  # collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        seen: dict[str, str] = {}
        for answer in answers:
            for k, mid in answer.items():
                assert seen.setdefault(k, mid) == mid  # every call names the one row per key
        with db.session_scope() as s:
            assert sum(ledger.count_by_status(s).values()) == len(seen)
    finally:
        stack.stop()
        config.set_settings(None)


def test_a_cancel_after_a_call_that_got_no_reply_ends_unknown_not_failed(
    stack: Stack, sim: Simulator
) -> None:
    """An at-least-once provider: the first call gets no reply (it may have gone
    through) and the message is to be sent again; the operator cancels during the
    second call. No more calls go out, and the message ends `unknown`, not `failed`:
    the first call may have reached the phone."""
    stack.configure(providers=["smska"], smska={"timeout": 1.0, "delivery_guarantee": "at-least-once"},
                    pipeline={"backoff_base": 0.2, "backoff_cap": 0.5})  # fmt: skip
    state = sim["smska"].state
    state.faults.hang = True
    state.faults.hang_seconds = 1.5  # each call times out; the provider takes it afterwards
    stack.start_worker()
    mid = api.send_sms("79161234567", "no reply")

    def second_call_in_flight() -> bool:
        m = api.get_message(mid) or {}
        return m.get("status") == "sending" and m.get("attempt_count") == 2

    wait_for(second_call_in_flight)
    done = api.cancel(mid)
    assert done.outcome == "requested" and done.old == "sending", done
    assert stack.wait_until([mid], SETTLED, timeout=20)[mid] == "unknown"
    time.sleep(1.0)
    message = api.get_message(mid)
    assert message is not None and message["attempt_count"] == 2
    assert "may have gone through" in message["last_error"]
    assert [a["outcome"] for a in message["attempts"]] == ["ambiguous", "ambiguous"]


def test_each_retry_gives_the_message_its_own_ttl_again_not_a_grown_one(stack: Stack) -> None:
    """A one-time code with a 10-minute TTL, created ten days ago and failed: every
    operator retry gives it 10 minutes from the retry, never the ten days since."""
    from sqlalchemy import update

    from dispatcher.models import MESSAGES

    stack.configure(providers=["prostor"])  # no worker: it stays queued between the steps
    mid = api.send_sms("79161234567", "code 1234", ttl=600)
    long_ago = datetime.now(UTC) - timedelta(days=10)
    with db.session_scope() as s:
        s.execute(update(MESSAGES).where(MESSAGES.c.id == mid).values(
            created_at=long_ago, expires_at=long_ago + timedelta(seconds=600)))  # fmt: skip
    for _ in range(2):
        assert api.cancel(mid).outcome == "cancelled"
        assert api.retry_message(mid) == "failed"
        message = api.get_message(mid)
        assert message is not None and message["status"] == "queued"
        left = (message["expires_at"] - datetime.now(UTC)).total_seconds()
        assert 590 < left <= 600, left


def test_by_name_refusals_are_logged_with_the_field_and_counted(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone surrogate in the text and dates past either end of the calendar crashed
    the intake task; they are refused like any bad input: a log line naming the field,
    the refusal counted for /metrics (the worker's own port), nothing stored, and the
    worker goes on."""
    import requests
    from celery import Celery

    from tests.faults.servers import free_port
    from tests.pipeline.test_metrics import Scrape

    stack.configure(providers=["prostor"])
    port = free_port()
    monkeypatch.setenv("SMSDISPATCH_METRICS_PORT", str(port))
    stack.start_worker()

    def counted() -> dict[tuple[str, ...], float]:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return Scrape.parse(text).by("smsdispatch_intake_refused_total", "door", "reason")

    other = Celery("other-app", broker=stack.table["broker_url"])
    bad = [
        {"to": "79161234567", "text": "code \ud83d"},  # half an emoji
        {"to": "79161234567", "text": "late", "at": "9999-12-31T23:59:59-01:00"},
        {"to": "79161234567", "text": "early", "at": "0001-01-01T00:00:00+01:00"},
        {"to": "79161234567", "te\udc80xt": "a field name no JSON encoder would write"},
    ]
    for fields in bad:
        other.send_task("smsdispatch.send", kwargs=fields, queue="sms.bulk")
    good = {"to": "79161234567", "text": "after the bad ones", "key": "after-bad"}
    other.send_task("smsdispatch.send", kwargs=good, queue="sms.bulk")
    other.close()
    wait_for(lambda: counted().get(("task", "invalid"), 0) >= len(bad))
    log = stack.log_text()
    assert "refused its arguments" in log and "Traceback" not in log
    assert "text: an unpaired surrogate (U+D83D) at character 6" in log
    refusals = [line for line in log.splitlines() if "refused its arguments" in line]
    assert sum("): at: out of range" in line for line in refusals) == 2, refusals
    assert "unknown field" in log
    assert counted() == {("task", "invalid"): len(bad)}  # none given up (store_failed)

    def stored_good() -> bool:  # its task may still run when the refusals are counted
        with db.session_scope() as s:
            return "after-bad" in ledger.find_by_keys(s, ["after-bad"])

    wait_for(stored_good)
    with db.session_scope() as s:
        mid = ledger.find_by_keys(s, ["after-bad"])["after-bad"].id
        assert sum(ledger.count_by_status(s).values()) == 1  # the bad ones stored nothing
    assert stack.wait_until([mid], SETTLED)[mid] in TAKEN
