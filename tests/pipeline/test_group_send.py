"""The group send path with the in-memory stub provider (tests/stub_provider.py)
and the in-memory coordinator, on a real ledger (SQLite file and PostgreSQL): what a
group costs the ledger, and that one call's failure spoils no other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dispatcher import api, config, db
from dispatcher.coordination import MemoryCoordinator
from dispatcher.providers import registry
from dispatcher.providers.base import OutgoingSms
from dispatcher.sending import SendPipeline
from tests.stub_provider import StubProvider, register_stub
from tests.support import PG_URL, reset_postgres


@pytest.fixture
def pipeline(tmp_path: Path, database: str) -> Iterator[SendPipeline]:
    register_stub()
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if database == "sqlite" else PG_URL
    stub = {"kind": "stub", "base_url": "http://127.0.0.1:9/", "login": "l", "password": "stub-secret",
            "reconcile_after": 0.0}  # fmt: skip
    settings = config.parse({
        "database_url": url, "broker_url": "memory://",
        "providers": {"stub": stub},
        "pipeline": {"backoff_base": 0.01, "backoff_cap": 0.02, "linger": 0.0},
    })  # fmt: skip
    config.set_settings(settings)
    db.dispose_engines()
    if database == "postgres":
        reset_postgres(url)
        db.upgrade(db.make_engine(url))
    published: list[Any] = []
    api.use_publisher(lambda items: published.extend(items))
    p = SendPipeline(settings, lambda *a: published.append(a), MemoryCoordinator())
    yield p
    p.close()
    api.use_publisher(None)
    db.dispose_engines()
    config.set_settings(None)
    registry.unregister("stub")


def stub_of(p: SendPipeline) -> StubProvider:
    provider = p.provider("stub")
    assert isinstance(provider, StubProvider)
    return provider


class Counting:
    """Statements and transactions the ledger sees, counted at the driver."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.commits = 0

    def __enter__(self) -> Counting:
        engine = db.get_engine()
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)
        return self

    def __exit__(self, *exc: object) -> None:
        engine = db.get_engine()
        event.remove(engine, "before_cursor_execute", self._statement)
        event.remove(engine, "commit", self._commit)

    def _statement(self, *args: Any) -> None:
        if not args[2].startswith(("BEGIN", "PRAGMA")):
            self.statements.append(args[2])

    def _commit(self, *args: Any) -> None:
        self.commits += 1


def test_a_lone_message_costs_two_transactions(pipeline: SendPipeline) -> None:
    mid = api.send_sms("79161234567", "code 1234", priority="high")
    with Counting() as seen:
        assert pipeline.process(mid) == "accepted"
    # Claim + route + attempt, then the write-back: the row is read once, by the claim.
    assert seen.commits == 2, seen.statements
    assert len(seen.statements) <= 8, "\n".join(s[:90] for s in seen.statements)
    assert (api.get_message(mid) or {})["status"] == "accepted"


def test_a_group_costs_the_same_statements_as_one(pipeline: SendPipeline) -> None:
    ids = api.send_bulk([{"to": f"7916{n:07d}", "text": f"bulk {n}"} for n in range(1, 26)])
    with Counting() as seen:
        assert pipeline.process_many(ids) == {"accepted": 25, "skipped": 0}
    assert seen.commits == 2
    assert len(seen.statements) <= 8, "\n".join(s[:90] for s in seen.statements)
    assert len(stub_of(pipeline).sent) == 25


def test_one_call_failing_oddly_spoils_no_other(pipeline: SendPipeline) -> None:
    """A call that dies of our own bug may have gone out: it is read as a lost reply,
    asked about (the stub, like SMStele, answers by our id), sent again; the other
    calls of the group are written back as they were."""
    stub = stub_of(pipeline)
    ids = api.send_bulk([{"to": f"7916{n:07d}", "text": f"odd {n}"} for n in range(1, 11)])
    broken = {"79160000003"}

    def script(msg: OutgoingSms) -> str | None:
        if msg.to in broken:
            broken.clear()  # only the first time
            raise ValueError("an odd reply we could not read")
        return None

    stub.script = script
    assert pipeline.process_many(ids) == {"accepted": 10, "skipped": 0}
    assert len(stub.sent) == 10  # the odd one once, after it was asked about
    odd = next(m for m in ids if (api.get_message(m) or {})["to"] == "79160000003")
    attempts = (api.get_message(odd) or {})["attempts"]
    assert [a["outcome"] for a in attempts] == ["lost", "accepted"]
    assert "unexpected ValueError" in attempts[0]["error"]  # the call's own story is kept


def test_fail_over_goes_round_in_the_same_task(pipeline: SendPipeline, tmp_path: Path) -> None:
    stub = stub_of(pipeline)
    stub.script = lambda msg: "failover"
    ids = api.send_bulk([{"to": f"7916{n:07d}", "text": f"f {n}"} for n in range(1, 6)])
    # One provider only: after failing over there is none left, the group waits a round.
    assert pipeline.process_many(ids) == {"exhausted": 5, "skipped": 0}
    message = api.get_message(ids[0]) or {}
    assert [a["outcome"] for a in message["attempts"]] == ["failover"]
    assert message["status"] == "queued" and message["failovers"] == 1
