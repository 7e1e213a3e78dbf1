"""Retention (issue 13): old settled messages go with their history, or are masked;
nothing in flight is touched; a dry run changes nothing; the work goes in batches."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from dispatcher import config, db
from dispatcher.models import (
    ATTEMPTS,
    BALANCES,
    BULK_REQUESTS,
    CALLBACKS,
    CLIENT_USAGE,
    EVENTS,
    MESSAGES,
    utcnow,
)
from dispatcher.retention import MASKED_TO, purge, purge_due
from tests.support import Stack, run_cli

NOW = utcnow()
OLD = NOW - timedelta(days=400)
CUTOFF = NOW - timedelta(days=180)


_numbers = itertools.count(1000001)


def phone() -> str:
    """A number no other row of the test has (so finding it in a dump means this one)."""
    return f"7916{next(_numbers):07d}"


def store(status: str, n: int, *, created: datetime = OLD, tag: str = "") -> list[str]:
    """``n`` messages as the pipeline leaves them: each with an attempt and a status
    event that quote its number and text (as a provider's reply may), and a callback
    row. Plain inserts, so that the rows are exactly these."""
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    callbacks: list[dict[str, Any]] = []
    for i in range(n):
        mid = uuid.uuid4().hex
        to, secret = phone(), f"code {tag}{status}{i} {uuid.uuid4().hex[:8]}"
        ids.append(mid)
        rows.append({
            "id": mid, "key": f"key-{to}-{mid[:6]}", "payload_hash": "h" * 64, "to": to, "region": "RU",
            "text": secret, "priority": "normal", "parts": 2, "encoding": "gsm7", "status": status,
            "provider": "prostor", "provider_message_id": f"pm-{mid[:10]}", "attempts": 1, "retries": 0,
            "failovers": 0, "tried": "", "polls": 0, "created_at": created, "updated_at": created,
            "expires_at": created + timedelta(days=1), "due_at": created, "last_error": f"refused {to}",
        })  # fmt: skip
        attempts.append({
            "message_id": mid, "provider": "prostor", "kind": "send", "started_at": created,
            "finished_at": created, "outcome": "accepted", "raw": f'{{"phone": "{to}", "text": "{secret}"}}',
            "error": f"{to}: {secret}", "parts": 2, "cost": 1.5,
        })  # fmt: skip
        events.append({"message_id": mid, "at": created, "old_status": "accepted", "new_status": status,
                       "source": "poll", "provider": "prostor", "raw": to, "detail": secret})  # fmt: skip
        callbacks.append({
            "message_id": mid, "url": "https://app.example/cb", "status": status, "key": None, "to": to,
            "parts": 2, "at": created, "state": "delivered", "tries": 1, "next_at": created,
            "created_at": created,
        })  # fmt: skip
    with db.session_scope() as s:
        s.execute(insert(MESSAGES), rows)
        s.execute(insert(ATTEMPTS), attempts)
        s.execute(insert(EVENTS), events)
        s.execute(insert(CALLBACKS), callbacks)
    return ids


def present(ids: list[str]) -> set[str]:
    with db.session_scope() as s:
        return set(s.execute(select(MESSAGES.c.id).where(MESSAGES.c.id.in_(ids))).scalars())


def children(ids: list[str]) -> dict[str, int]:
    with db.session_scope() as s:
        return {
            name: int(s.execute(select(func.count()).where(t.c.message_id.in_(ids))).scalar_one())
            for name, t in (("attempts", ATTEMPTS), ("events", EVENTS), ("callbacks", CALLBACKS))
        }


def snapshot() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table retention touches, as text."""
    with db.session_scope() as s:
        return {
            t.name: sorted(tuple(map(str, r)) for r in s.execute(select(t)).all())
            for t in (MESSAGES, ATTEMPTS, EVENTS, CALLBACKS, BALANCES, BULK_REQUESTS, CLIENT_USAGE)
        }


def side_tables() -> None:
    """Old and new balance readings, bulk request keys and client day counts."""
    with db.session_scope() as s:
        s.execute(
            insert(BALANCES), [{"provider": "prostor", "at": at, "amount": 10.0} for at in (OLD, OLD, NOW)]
        )
        s.execute(insert(BULK_REQUESTS), [
            {"key": f"bulk-{n}", "payload_hash": "h", "message_ids": "[]", "created_at": at}
            for n, at in enumerate((OLD, NOW))
        ])  # fmt: skip
        s.execute(insert(CLIENT_USAGE), [
            {"client": "shop", "day": OLD.date().isoformat(), "count": 5},
            {"client": "shop", "day": NOW.date().isoformat(), "count": 7},
        ])  # fmt: skip


def test_delete_mode_takes_old_settled_messages_with_their_history(any_stack: Stack) -> None:
    settings = any_stack.configure()
    gone = store("delivered", 4) + store("failed", 2) + store("unknown", 1)
    in_flight = store("accepted", 2) + store("queued", 1) + store("sent", 1)
    fresh = store("delivered", 3, created=NOW - timedelta(days=10))
    side_tables()
    counts = purge(settings, before=CUTOFF, mode="delete")
    assert counts == {
        "messages": 7, "attempts": 7, "events": 7, "callbacks": 7, "balance_readings": 2,
        "bulk_requests": 1, "client_usage": 1, "masked": 0, "kept_in_flight": 4,
    }  # fmt: skip
    assert present(gone + in_flight + fresh) == set(in_flight + fresh)
    assert children(gone) == {"attempts": 0, "events": 0, "callbacks": 0}
    assert children(in_flight + fresh) == {"attempts": 7, "events": 7, "callbacks": 7}
    with db.session_scope() as s:
        assert s.execute(select(func.count()).select_from(BALANCES)).scalar_one() == 1
        assert s.execute(select(BULK_REQUESTS.c.key)).scalars().all() == ["bulk-1"]
        assert s.execute(select(CLIENT_USAGE.c.count)).scalars().all() == [7]
    # Nothing left to do: a second run finds nothing.
    again = purge(settings, before=CUTOFF, mode="delete")
    assert {k: v for k, v in again.items() if v} == {"kept_in_flight": 4}


def test_mask_mode_keeps_counts_but_no_phone_or_text(any_stack: Stack) -> None:
    settings = any_stack.configure(sections={"policy": {"retention_mode": "mask"}})
    old = store("delivered", 5, tag="m")
    kept = store("accepted", 1, tag="k")
    with db.session_scope() as s:
        before = {r.id: (r.to, r.text) for r in s.execute(select(MESSAGES)).all()}
    counts = purge(settings, before=CUTOFF)  # the mode from policy.retention_mode
    assert [counts[k] for k in ("masked", "messages", "attempts", "events", "callbacks")] == [5, 0, 5, 5, 5]
    assert present(old) == set(old)
    assert children(old) == {"attempts": 5, "events": 5, "callbacks": 0}
    with db.session_scope() as s:
        rows = {r.id: r for r in s.execute(select(MESSAGES).where(MESSAGES.c.id.in_(old))).all()}
        cost = s.execute(select(func.sum(ATTEMPTS.c.cost)).where(ATTEMPTS.c.message_id.in_(old))).scalar_one()
    assert all(
        r.to == MASKED_TO and r.text == "" and r.key is None and r.masked_at is not None
        for r in rows.values()
    )
    # What reports read stays: parts, cost, status, provider, region, the dates.
    assert {(r.parts, r.status, r.provider, r.region, r.created_at) for r in rows.values()} == {
        (2, "delivered", "prostor", "RU", OLD)
    }
    assert cost == 5 * 1.5
    # No number and no text of a masked message anywhere in the ledger's rows.
    dump = json.dumps(snapshot())
    for mid in old:
        to, secret = before[mid]
        assert to not in dump and secret not in dump, mid
    # The one in flight is as it was.
    to, secret = before[kept[0]]
    assert to in dump and secret in dump
    # Masked once: a second run masks nothing more.
    assert purge(settings, before=CUTOFF)["masked"] == 0


def test_dry_run_changes_nothing_and_reports_the_same_counts(any_stack: Stack) -> None:
    settings = any_stack.configure()
    store("delivered", 6)
    store("rejected", 2)
    store("sending", 1)
    store("expired", 2, created=NOW)
    side_tables()
    for mode in ("delete", "mask"):
        ledger_before = snapshot()
        dry = purge(settings, before=CUTOFF, mode=mode, dry_run=True)
        assert snapshot() == ledger_before
        assert dry["kept_in_flight"] == 1
        if mode == "mask":
            real = purge(settings, before=CUTOFF, mode=mode)
            assert real == dry and real["masked"] == 8
    dry = purge(settings, before=CUTOFF, mode="delete", dry_run=True, batch=3, max_batches=2)
    assert (dry["messages"], dry["attempts"]) == (6, 6)  # what two batches of 3 would take
    # Masked rows are deleted like any other (the mask run took the old balance readings).
    real = purge(settings, before=CUTOFF, mode="delete")
    assert (real["messages"], real["attempts"], real["balance_readings"]) == (8, 8, 0)


def test_batches_are_transactions_of_their_size(any_stack: Stack) -> None:
    settings = any_stack.configure()
    ids = store("delivered", 35)
    taken = [purge(settings, before=CUTOFF, batch=10, max_batches=1)["messages"] for _ in range(5)]
    assert taken == [10, 10, 10, 5, 0]
    assert present(ids) == set()
    # Oldest first: a bounded run takes the oldest and leaves the newer for the next.
    older, newer = store("failed", 3, created=OLD - timedelta(days=1)), store("failed", 3)
    assert purge(settings, before=CUTOFF, batch=3, max_batches=1)["messages"] == 3
    assert present(older + newer) == set(newer)


def test_the_beat_job_takes_what_is_past_retention_days(any_stack: Stack) -> None:
    settings = any_stack.configure(sections={"policy": {"retention_days": 30, "retention_batch": 2}})
    old = store("delivered", 3, created=NOW - timedelta(days=31))
    young = store("delivered", 3, created=NOW - timedelta(days=29))
    assert purge_due(settings)["messages"] == 3
    assert present(old + young) == set(young)


def test_purge_command(any_stack: Stack) -> None:
    any_stack.configure()
    store("delivered", 3, created=datetime(2025, 6, 1, tzinfo=UTC))
    store("accepted", 1, created=datetime(2025, 6, 1, tzinfo=UTC))
    ledger_before = snapshot()
    dry = run_cli(any_stack.config_path, "purge", "--before", "2026-01-01", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    data = json.loads(dry.stdout)
    assert data["before"] == "2026-01-01T00:00:00+00:00" and data["dry_run"] is True
    assert data["mode"] == "delete"
    assert data["counts"]["messages"] == 3 and data["counts"]["kept_in_flight"] == 1
    assert snapshot() == ledger_before
    human = run_cli(any_stack.config_path, "purge", "--before", "2026-01-01T00:00:00+03:00", "--mode", "mask")
    assert human.returncode == 0, human.stderr
    assert re.search(r"^messages masked \(phone and text\) +3$", human.stdout, re.M), human.stdout
    assert "1 older messages kept" in human.stdout
    with db.session_scope() as s:
        assert s.execute(text("SELECT count(*) FROM messages WHERE masked_at IS NOT NULL")).scalar_one() == 3
    future = run_cli(any_stack.config_path, "purge", "--before", "2999-01-01")
    assert future.returncode == 2 and "--before" in future.stderr and "future" in future.stderr
    bad = run_cli(any_stack.config_path, "purge", "--before", "yesterday")
    assert bad.returncode == 2 and "--before" in bad.stderr
    assert config.get_settings().policy.retention_mode == "delete"


def test_the_beat_task_runs_once_per_interval(stack: Stack) -> None:
    """``smsdispatch.purge`` as beat fires it: the second of two beats on the same
    schedule finds the slot taken and does nothing."""
    stack.configure(sections={"policy": {"retention_days": 30}})
    from workers import tasks
    from workers.tasks import retention

    old = store("delivered", 3, created=NOW - timedelta(days=31))
    tasks.reset_pipeline()
    try:
        first = retention.purge.run()
        second = retention.purge.run()
    finally:
        tasks.reset_pipeline()
    assert first["messages"] == 3 and second == {}
    assert present(old) == set()


@pytest.mark.parametrize("mode", ["delete", "mask"])
def test_a_message_whose_callback_waits_is_kept_until_it_is_told(any_stack: Stack, mode: str) -> None:
    """A purge by hand up to today, or an old message retried: its app has not heard
    the outcome yet, and a callback is never lost to retention."""
    from sqlalchemy import update

    settings = any_stack.configure()
    told, waiting = store("delivered", 2), store("failed", 1)
    with db.session_scope() as s:
        s.execute(update(CALLBACKS).where(CALLBACKS.c.message_id.in_(waiting)).values(state="pending"))
    counts = purge(settings, before=CUTOFF, mode=mode)
    assert counts["kept_in_flight"] == 1
    assert counts["messages" if mode == "delete" else "masked"] == 2
    assert present(told + waiting) == (set(waiting) if mode == "delete" else set(told + waiting))
    assert children(waiting)["callbacks"] == 1
    with db.session_scope() as s:
        s.execute(update(CALLBACKS).where(CALLBACKS.c.message_id.in_(waiting)).values(state="delivered"))
    again = purge(settings, before=CUTOFF, mode=mode)
    assert again["kept_in_flight"] == 0 and again["messages" if mode == "delete" else "masked"] == 1
