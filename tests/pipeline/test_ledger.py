"""The ledger on SQLite and PostgreSQL: migrations, transitions, idempotency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from dispatcher import api, db, ledger
from dispatcher.decisions import Action, Decision
from dispatcher.errors import IdempotencyConflict, ValidationError
from dispatcher.status import Status
from tests.support import SCHEMA_HEAD as HEAD
from tests.support import Stack

# Far enough ahead that no sweeper releases it during a test.
LATER = (datetime.now(UTC) + timedelta(days=300)).isoformat()


def test_migrations_match_the_models(any_stack: Stack) -> None:
    any_stack.configure()
    engine = db.get_engine()
    assert db.current_revision(engine) == HEAD
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_final_status_is_never_overwritten(any_stack: Stack) -> None:
    any_stack.configure()
    mid = api.send_bulk([{"to": "79161234567", "text": "x", "at": LATER}])[0]
    with db.session_scope() as s:
        assert ledger.transition(s, mid, Status.QUEUED, source="sweeper") == Status.SCHEDULED
        assert ledger.transition(s, mid, Status.SENDING, source="send") == Status.QUEUED
        assert ledger.transition(s, mid, Status.ACCEPTED, source="send") == Status.SENDING
        assert ledger.transition(s, mid, Status.DELIVERED, source="poll", raw="4") == Status.ACCEPTED
        # a late `sent` and a late `undelivered` change nothing, and leave no event
        assert ledger.transition(s, mid, Status.SENT, source="poll") is None
        assert ledger.transition(s, mid, Status.UNDELIVERED, source="poll") is None
    message = api.get_message(mid)
    assert message is not None and message["status"] == "delivered"
    assert [e["new_status"] for e in message["events"]] == [
        "scheduled",
        "queued",
        "sending",
        "accepted",
        "delivered",
    ]
    assert message["final_at"] is not None


def test_only_one_claim_wins(any_stack: Stack) -> None:
    any_stack.configure()
    mid = api.send_bulk([{"to": "79161234567", "text": "x", "at": LATER}])[0]
    with db.session_scope() as s:
        ledger.transition(s, mid, Status.QUEUED, source="sweeper")
    wins: list[Any] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        with db.session_scope() as s:
            wins.append(ledger.transition(s, mid, Status.SENDING, source="send", expect={Status.QUEUED}))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w is not None for w in wins) == 1


def test_idempotency_key(any_stack: Stack) -> None:
    any_stack.configure()
    first = api.send_bulk([{"to": "89161234567", "text": "code 1", "key": "order-1", "at": LATER}])
    again = api.send_bulk([{"to": "+79161234567", "text": "code 1", "key": "order-1", "at": LATER}])
    assert first == again  # the same number written another way is the same payload
    with pytest.raises(IdempotencyConflict) as info:
        api.send_bulk([{"to": "79161234567", "text": "code 2", "key": "order-1", "at": LATER}])
    assert info.value.field == "messages[0].key"
    with db.session_scope() as s:
        assert ledger.count_by_status(s) == {"scheduled": 1}


def test_bulk_is_all_or_nothing(any_stack: Stack) -> None:
    any_stack.configure()
    batch = [{"to": f"7916{n:07d}", "text": f"n{n}", "at": LATER} for n in range(10)]
    batch[7]["to"] = "12345"
    with pytest.raises(ValidationError) as info:
        api.send_bulk(batch)
    assert info.value.field == "messages[7].to"
    with db.session_scope() as s:
        assert ledger.count_by_status(s) == {}


def test_bulk_same_key_twice_in_one_call(any_stack: Stack) -> None:
    any_stack.configure()
    at = LATER
    ids = api.send_bulk([{"to": "79161234567", "text": "a", "key": "k", "at": at}] * 2)
    assert ids[0] == ids[1]
    with pytest.raises(IdempotencyConflict):
        api.send_bulk(
            [
                {"to": "79161234567", "text": "a", "key": "j", "at": at},
                {"to": "79161234567", "text": "b", "key": "j", "at": at},
            ]
        )


def test_bulk_writes_touch_only_rows_still_in_the_expected_status(any_stack: Stack) -> None:
    """claim, start_attempts and apply, the group's write path: per-row values land
    on their own rows (one statement on PostgreSQL, an executemany on SQLite), a row
    that left the expected status is left alone, and only moved rows get events."""
    any_stack.configure()
    ids = api.send_bulk([{"to": f"7916{n:07d}", "text": f"b{n}", "at": LATER} for n in range(1, 4)])
    now = datetime.now(UTC)
    with db.session_scope() as s:
        for mid in ids:
            ledger.transition(s, mid, Status.QUEUED, source="sweeper")
        claimed = ledger.claim(s, ids, now, due_before=now + timedelta(days=3650))
        assert sorted(c.id for c in claimed) == sorted(ids)
        assert ledger.claim(s, ids, now, due_before=now + timedelta(days=3650)) == []  # taken
        attempts = ledger.start_attempts(s, [(m, "main", "prostor") for m in ids], now)
        # Another worker settled the last one meanwhile.
        ledger.transition(s, ids[2], Status.FAILED, source="sweeper")
        ledger.apply(
            s,
            [Decision(m, Action.ACCEPT, provider="main", attempt_id=attempts[m], attempt_outcome="accepted",
                      attempt_started=now, provider_message_id=f"p-{m[:6]}", raw=f"raw {n}")
             for n, m in enumerate(ids)],
            now, first_poll=lambda _provider: 10.0,
        )  # fmt: skip
    for n, mid in enumerate(ids):
        message = api.get_message(mid)
        assert message is not None
        [attempt] = message["attempts"]
        if n < 2:
            assert message["status"] == "accepted"
            assert message["provider_message_id"] == f"p-{mid[:6]}"
            assert message["claimed_at"] is not None
            assert message["events"][-1]["raw"] == f"raw {n}"
            assert (attempt["outcome"], attempt["raw"]) == ("accepted", f"raw {n}")
            assert attempt["finished_at"] is not None
        else:
            assert message["status"] == "failed" and message["provider_message_id"] is None
            assert [e["new_status"] for e in message["events"]][-1] == "failed"
            # The call's own record stays true to what the provider said.
            assert attempt["outcome"] == "accepted" and attempt["finished_at"] is not None


def test_a_fresh_sqlite_ledger_opened_while_another_process_writes_its_first_transaction(
    tmp_path: Any,
) -> None:
    """Two worker children opening a new ledger together: the second one's switch to
    WAL came while the first still wrote the file's first transaction (in rollback
    mode), and SQLite said "database is locked" at once, without waiting (CI saw a
    send task fail so). It now waits until the file is in WAL and goes on."""
    import sqlite3
    import time

    path = tmp_path / "ledger.db"
    first = sqlite3.connect(path, isolation_level=None)
    first.execute("BEGIN IMMEDIATE")
    first.execute("CREATE TABLE first_writer (x)")
    opened: list[str] = []

    def open_ledger() -> None:
        engine = db.make_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as conn:
                opened.append(str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()))
        except Exception as exc:  # reported below, with what it said
            opened.append(f"{type(exc).__name__}: {exc}")
        finally:
            engine.dispose()

    second = threading.Thread(target=open_ledger)
    second.start()
    time.sleep(0.5)
    assert opened == []  # it waits for the first writer rather than failing
    first.execute("COMMIT")
    second.join(10)
    first.close()
    assert opened == ["wal"]
