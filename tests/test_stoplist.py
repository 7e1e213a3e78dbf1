"""The stop list module (issue 13) on a real ledger, SQLite file and PostgreSQL: the
upsert, widening without narrowing, paging, and a big bulk check in few queries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from dispatcher import db, stoplist
from dispatcher.providers.base import STOP_SCOPES
from tests.support import PG_URL, reset_postgres


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = db.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    else:
        reset_postgres(PG_URL)
        made = db.make_engine(PG_URL)
    db.upgrade(made)
    yield made
    made.dispose()


def run(engine: Engine, fn: Any) -> Any:
    """``fn(session)`` in one committed transaction."""
    with Session(engine) as s:
        out = fn(s)
        s.commit()
    return out


def entry(engine: Engine, phone: str) -> dict[str, Any] | None:
    found = run(engine, lambda s: stoplist.entries(s, after=str(int(phone) - 1), limit=1))
    return found[0] if found and found[0]["phone"] == phone else None


def test_add_inserts_then_updates(engine: Engine) -> None:
    assert run(engine, lambda s: stoplist.add(s, "79161234567", reason="asked by phone")) is True
    first = entry(engine, "79161234567")
    assert first is not None
    assert (first["scope"], first["source"], first["reason"]) == ("normal", "operator", "asked by phone")
    assert first["created_at"].tzinfo is not None
    # Again: not new; the first listing's time stays, a missing reason keeps the old one.
    assert run(engine, lambda s: stoplist.add(s, "79161234567", source="client:shop")) is False
    again = entry(engine, "79161234567")
    assert again is not None
    assert (again["source"], again["reason"], again["created_at"]) == (
        "client:shop",
        "asked by phone",
        first["created_at"],
    )
    assert run(engine, stoplist.count) == 1


def test_a_provider_widens_and_never_narrows(engine: Engine) -> None:
    phone = "79161234567"
    src = "provider:sms1000"
    assert run(engine, lambda s: stoplist.add(s, phone, source=src, reason="618: blacklisted")) is True
    assert (
        run(engine, lambda s: stoplist.add(s, phone, scope="all", source=src, reason="622: global")) is False
    )
    widened = entry(engine, phone)
    assert widened is not None and (widened["scope"], widened["reason"]) == ("all", "622: global")
    # A provider's narrower add leaves it as it is, reason and source included.
    run(engine, lambda s: stoplist.add(s, phone, source="provider:other", reason="618 again"))
    kept = entry(engine, phone)
    assert kept is not None and (kept["scope"], kept["source"], kept["reason"]) == ("all", src, "622: global")
    # An operator sets the scope as given, narrower too.
    run(engine, lambda s: stoplist.add(s, phone, scope="normal", reason="OTP allowed again"))
    narrowed = entry(engine, phone)
    assert narrowed is not None
    assert (narrowed["scope"], narrowed["source"], narrowed["reason"]) == (
        "normal",
        "operator",
        "OTP allowed again",
    )


def test_an_operators_all_survives_a_provider(engine: Engine) -> None:
    run(engine, lambda s: stoplist.add(s, "79161234567", scope="all", reason="court order"))
    new = run(engine, lambda s: stoplist.add_many(s, [("79161234567", "provider:sms1000", "618: x")]))
    assert new == 0
    kept = entry(engine, "79161234567")
    assert kept is not None and (kept["scope"], kept["source"], kept["reason"]) == (
        "all",
        "operator",
        "court order",
    )


def test_add_many_counts_new_numbers_and_widens(engine: Engine) -> None:
    run(engine, lambda s: stoplist.add(s, "79160000001", source="provider:a", reason="old"))
    entries = [
        ("79160000002", "provider:a", "622: global"),
        ("79160000001", "provider:a", "622: global"),
        ("79160000002", "provider:b", "622: twice in one batch"),  # counted once, first kept
        ("79160000003", "provider:a", None),
    ]
    assert run(engine, lambda s: stoplist.add_many(s, entries, scope="all")) == 2
    rows = {r["phone"]: r for r in run(engine, lambda s: stoplist.entries(s))}
    assert {p: r["scope"] for p, r in rows.items()} == dict.fromkeys(
        ["79160000001", "79160000002", "79160000003"], "all"
    )
    assert rows["79160000001"]["reason"] == "622: global"  # widened: the new reason says why
    assert rows["79160000002"]["source"] == "provider:a"
    assert run(engine, lambda s: stoplist.add_many(s, [])) == 0


def test_remove(engine: Engine) -> None:
    run(engine, lambda s: stoplist.add(s, "79161234567"))
    assert run(engine, lambda s: stoplist.remove(s, "79161234567")) is True
    assert run(engine, lambda s: stoplist.remove(s, "79161234567")) is False
    assert run(engine, stoplist.count) == 0
    # Listed again after removal: new again, as the operator would expect.
    assert run(engine, lambda s: stoplist.add(s, "79161234567")) is True


def test_pages_follow_the_phone_order(engine: Engine) -> None:
    phones = [f"7916{n:07d}" for n in range(250, 0, -1)]
    run(engine, lambda s: stoplist.add_many(s, [(p, "provider:sms1000", "618") for p in phones[:200]]))
    for p in phones[200:]:
        run(engine, lambda s, p=p: stoplist.add(s, p, source="client:a_b"))
    seen: list[str] = []
    after: str | None = None
    while True:
        page = run(engine, lambda s, a=after: stoplist.entries(s, after=a, limit=100))
        if not page:
            break
        assert len(page) <= 100
        seen += [r["phone"] for r in page]
        after = page[-1]["phone"]
    assert seen == sorted(phones)
    assert set(page_keys(run(engine, lambda s: stoplist.entries(s, limit=1)))) == {
        "phone", "scope", "source", "reason", "created_at",
    }  # fmt: skip
    from_provider = run(engine, lambda s: stoplist.entries(s, source_prefix="provider:", limit=1000))
    assert len(from_provider) == 200 and all(r["source"] == "provider:sms1000" for r in from_provider)
    # The prefix is literal: "_" matches itself only.
    assert len(run(engine, lambda s: stoplist.entries(s, source_prefix="client:a_", limit=1000))) == 50
    assert run(engine, lambda s: stoplist.entries(s, source_prefix="client:ab", limit=1000)) == []
    assert run(engine, stoplist.count) == 250


def page_keys(page: list[dict[str, Any]]) -> list[str]:
    return list(page[0])


def test_stopped_checks_2500_phones_in_three_queries(engine: Engine) -> None:
    phones = [f"7926{n:07d}" for n in range(2500)]
    listed = phones[::2]  # 1,250 of them, across all three chunks
    run(engine, lambda s: stoplist.add_many(s, [(p, "provider:x", None) for p in listed[:1000]]))
    run(engine, lambda s: stoplist.add_many(s, [(p, "provider:x", None) for p in listed[1000:]], scope="all"))
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        found = run(engine, lambda s: stoplist.stopped(s, phones + phones[:10]))  # repeats asked once
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) == 3
    assert set(found) == set(listed)
    assert {found[p] for p in listed[:1000]} == {"normal"} and {found[p] for p in listed[1000:]} == {"all"}
    assert run(engine, lambda s: stoplist.stopped(s, [])) == {}


def test_blocks() -> None:
    assert stoplist.blocks("normal", "normal")
    assert not stoplist.blocks("normal", "high")  # a one-time code passes an opt-out
    assert stoplist.blocks("all", "normal") and stoplist.blocks("all", "high")
    assert stoplist.SCOPES == STOP_SCOPES  # the adapters' copy (they stay free of the database)


def test_bad_input_is_refused(engine: Engine) -> None:
    for phone in ["+79161234567", "8 916 123-45-67", "", "0916", "7" * 16, "７９１６"]:
        with pytest.raises(ValueError, match="phone"):
            run(engine, lambda s, p=phone: stoplist.add(s, p))
    with pytest.raises(ValueError, match="scope"):
        run(engine, lambda s: stoplist.add(s, "79161234567", scope="otp"))
    with pytest.raises(ValueError, match="source"):
        run(engine, lambda s: stoplist.add(s, "79161234567", source="x" * 81))
    with pytest.raises(ValueError, match="limit"):
        run(engine, lambda s: stoplist.entries(s, limit=0))
    assert run(engine, stoplist.count) == 0
