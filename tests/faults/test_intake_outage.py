"""Messages published by task name while the ledger cannot store them (issue 12): the
intake task retries with backoff until the message is stored, and each is stored and
sent once. PostgreSQL stopped outright; SQLite locked by another process."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select

from dispatcher import config, db
from dispatcher.models import MESSAGES
from dispatcher.simulator.core import Simulator
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support import SETTLED, TAKEN, Stack

pytestmark = pytest.mark.faults

N = 100


def publish_by_name(broker_url: str, tag: str) -> None:
    """As an app that shares the broker and not our code would."""
    other = Celery("other-app", broker=broker_url)
    for i in range(N):
        other.send_task("smsdispatch.send", kwargs={"to": f"7916{i:07d}", "text": f"{tag} {i}"},
                        queue="sms.bulk")  # fmt: skip
    other.close()


def stored_ids(tag: str) -> list[str]:
    with db.session_scope() as s:
        return list(s.execute(select(MESSAGES.c.id).where(MESSAGES.c.text.like(f"{tag} %"))).scalars())


def wait_stored(stack: Stack, tag: str, timeout: float = 90) -> list[str]:
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        try:
            ids = stored_ids(tag)
        except Exception:  # the database may still be coming back
            ids = []
        if len(ids) >= N:
            break
        time.sleep(0.5)
    assert len(ids) == N, f"{len(ids)} of {N} stored\n{stack.log_text()[-3000:]}"
    return ids


def assert_sent_once(stack: Stack, sim: Simulator, tag: str) -> None:
    ids = wait_stored(stack, tag)
    statuses = stack.wait_until(ids, SETTLED, timeout=60)
    # Taken by the provider (the simulator then reports some undelivered).
    assert set(statuses.values()) <= TAKEN | {"undelivered"}, statuses
    time.sleep(1.0)  # a second copy of any of them would be stored by now
    with db.session_scope() as s:
        assert s.execute(select(func.count()).select_from(MESSAGES)).scalar_one() == N
    stats = sim["prostor"].state.stats()
    assert stats["messages"] == N and stats["duplicates"] == 0


def test_by_name_messages_wait_out_a_stopped_postgres(
    own: tuple[Stack, OwnRedis, OwnPostgres], sim: Simulator
) -> None:
    stack, _redis, postgres = own
    stack.configure(providers=["prostor"])
    stack.start_worker(beat=True)
    postgres.halt()
    try:
        publish_by_name(stack.redis_url, "pg-down")
        deadline = time.monotonic() + 30
        while "could not store a message yet" not in stack.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "could not store a message yet" in stack.log_text()
        time.sleep(2.0)  # several tries fail while it is down
    finally:
        postgres.start()
    db.dispose_engines()
    assert_sent_once(stack, sim, "pg-down")


@pytest.fixture
def sqlite_stack(sim: Simulator, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(sim, tmp_path, "sqlite")
    yield stack
    stack.stop()
    config.set_settings(None)
    db.dispose_engines()


def test_by_name_messages_wait_out_a_locked_sqlite(
    sqlite_stack: Stack, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = sqlite_stack
    monkeypatch.setenv("SMSDISPATCH_SQLITE_BUSY_TIMEOUT", "0.5")  # the workers inherit it
    stack.configure(providers=["prostor"])
    stack.start_worker(beat=True)
    path = stack.db_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        publish_by_name(stack.redis_url, "sqlite-locked")
        deadline = time.monotonic() + 30
        while "could not store a message yet" not in stack.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "could not store a message yet" in stack.log_text()
        time.sleep(2.0)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert_sent_once(stack, sim, "sqlite-locked")
