"""dispatcher.search on SQLite and PostgreSQL: every filter, keyset pages that neither
repeat nor skip while messages keep arriving, refused cursors, and on PostgreSQL the
plan of each filter (an index scan, never the whole table)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from dispatcher import api
from dispatcher.clients import create_client
from dispatcher.config import Settings
from dispatcher.db import get_engine, session_scope
from dispatcher.errors import ValidationError
from dispatcher.models import MESSAGES
from dispatcher.search import search, statement
from tests.support import TAKEN, Stack


@pytest.fixture
def ledger(any_stack: Stack) -> Iterator[Settings]:
    """A configured ledger whose new messages go nowhere: nothing consumes here, and
    tasks left on the broker would reach the workers of later tests."""
    settings = any_stack.configure(providers=["prostor"])
    api.use_publisher(lambda due: None)
    yield settings
    api.use_publisher(None)


def ordered_ids() -> list[str]:
    """Every message as the ledger itself orders them, newest first."""
    with session_scope() as s:
        rows = s.execute(
            select(MESSAGES.c.id).order_by(MESSAGES.c.created_at.desc(), MESSAGES.c.id.desc())
        ).all()
    return [r[0] for r in rows]


def ids_of(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def test_filters_by_recipient_in_any_spelling_key_client_status(ledger: Settings) -> None:
    with session_scope() as s:
        create_client(s, "acme")
        create_client(s, "acme-eu")
    mine = [api.send_sms("+7 916 111-22-33", f"first {n}") for n in range(3)]
    mine.append(api.send_sms("89161112233", "by the trunk prefix", key="search-key-1"))
    other = api.send_sms("79161112234", "a neighbour", key="search-key-2")
    acme = api.send_bulk([{"to": "79161112235", "text": f"acme {n}"} for n in range(2)], client="acme")
    eu = api.send_sms("79161112235", "acme-eu", client="acme-eu")

    for spelling in ("+7 916 111-22-33", "89161112233", "9161112233", "79161112233", "+7 (916) 111 22 33"):
        rows, following = search(ledger, to=spelling)
        assert ids_of(rows) == mine[::-1] and following is None, spelling
    assert all(r["to"] == "79161112233" for r in rows)
    assert set(rows[0]) == {
        "id", "to", "status", "provider", "provider_message_id", "priority", "parts", "attempts", "key",
        "client", "created_at", "updated_at", "last_error",
    }  # fmt: skip

    assert ids_of(search(ledger, key="search-key-1")[0]) == [mine[-1]]
    assert ids_of(search(ledger, key="search-key-2")[0]) == [other]
    assert search(ledger, key="nothing-has-this")[0] == []
    # Exact names: acme's search does not find acme-eu's messages.
    assert ids_of(search(ledger, client="acme")[0]) == sorted(acme, reverse=True)
    assert ids_of(search(ledger, client="acme-eu")[0]) == [eu]
    assert ids_of(search(ledger, client="acme", to="8 916 111-22-35")[0]) == sorted(acme, reverse=True)
    assert ids_of(search(ledger, client="acme", to="79161112233")[0]) == []
    assert len(search(ledger, status="queued")[0]) == 8
    assert search(ledger, status="delivered")[0] == []
    first, _ = search(ledger, to="79161112233")
    since = first[-1]["created_at"]
    assert ids_of(search(ledger, to="79161112233", since=since.isoformat())[0]) == mine[::-1]
    assert ids_of(search(ledger, to="79161112233", until=since)[0]) == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": True}, "limit"),
        ({"status": "lost"}, "status"),
        ({"to": "12"}, "to"),
        ({"to": "+1 212 555 0100"}, "to"),  # not an allowed region
        ({"since": "yesterday"}, "since"),
        ({"until": "2030-01-01T00:00:00"}, "until"),  # no zone
        ({"client": "bad name"}, "client"),
        ({"key": "a\x00b"}, "key"),
        ({"provider_message_id": "x" * 101}, "provider_message_id"),
    ],
)
def test_bad_arguments_name_the_argument(ledger: Settings, arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        search(ledger, **arguments)
    assert caught.value.field == field


def test_pages_through_250_each_once_in_order_while_messages_arrive(ledger: Settings) -> None:
    # One bulk call stores its messages at one instant: the order within it is by id,
    # and a page boundary falls inside it.
    api.send_bulk([{"to": f"7916200{n:04d}", "text": f"bulk {n}"} for n in range(120)])
    for n in range(130):
        api.send_sms(f"7916300{n:04d}", f"one {n}")
    expected = ordered_ids()
    assert len(expected) == 250
    walked: list[dict[str, Any]] = []
    pages: list[int] = []
    cursor: str | None = None
    arrived: list[str] = []
    while True:
        rows, cursor = search(ledger, limit=100, cursor=cursor)
        walked += rows
        pages.append(len(rows))
        # Newer messages, one at a time and in bulk, between every two pages.
        arrived.append(api.send_sms("79164000000", f"late {len(pages)}"))
        arrived += api.send_bulk([{"to": f"7916400{n:04d}", "text": "late bulk"} for n in range(1, 4)])
        if cursor is None:
            break
    assert pages == [100, 100, 50]
    assert ids_of(walked) == expected
    keys = [(r["created_at"], r["id"]) for r in walked]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == 250
    # A new walk starts with what arrived meanwhile, newest first.
    latest, _ = search(ledger, limit=len(arrived))
    assert set(ids_of(latest)) == set(arrived)


def test_a_cursor_filtered_walk_and_a_full_last_page(ledger: Settings) -> None:
    ids = [api.send_sms("79165550000", f"n {n}") for n in range(6)]
    api.send_sms("79165550001", "another number")
    rows, cursor = search(ledger, to="79165550000", limit=3)
    assert cursor is not None
    rest, end = search(ledger, to="79165550000", limit=3, cursor=cursor)
    # Exactly `limit` left: the page is full and still the last, without an empty page after it.
    assert end is None and ids_of(rows + rest) == ids[::-1]


def test_a_cursor_not_given_out_is_refused(ledger: Settings) -> None:
    for n in range(3):
        api.send_sms("79165550002", f"n {n}")
    _, cursor = search(ledger, limit=1)
    assert cursor is not None
    middle = len(cursor) // 2
    flipped = cursor[:middle] + ("A" if cursor[middle] != "A" else "B") + cursor[middle + 1 :]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    unsigned = base64.urlsafe_b64encode(raw[:-8]).decode()  # the checksum cut off
    payload = json.dumps({"c": "2030-01-01T00:00:00+00:00", "i": "x"}).encode()
    forged = base64.urlsafe_b64encode(b"\x01" + payload).decode()  # no checksum at all
    other_version = base64.urlsafe_b64encode(b"\x02" + raw[1:]).decode()
    for bad in (flipped, cursor[:-3], cursor + "AAAA", cursor + "!", unsigned, forged, other_version,
                "", "not a cursor", "%00", "A" * 1000, "ы"):  # fmt: skip
        with pytest.raises(ValidationError) as caught:
            search(ledger, cursor=bad)
        assert caught.value.field == "cursor", bad
    assert len(search(ledger, cursor=cursor)[0]) == 2


def test_search_by_provider_message_id(any_stack: Stack) -> None:
    settings = any_stack.configure(providers=["prostor"])
    any_stack.start_worker()
    ids = [api.send_sms(f"791655500{n:02d}", f"to be sent {n}") for n in range(3)]
    assert set(any_stack.wait_until(ids, TAKEN, timeout=30).values()) <= TAKEN
    for mid in ids:
        message = api.get_message(mid)
        assert message is not None and message["provider_message_id"]
        rows, following = search(settings, provider_message_id=message["provider_message_id"])
        assert ids_of(rows) == [mid] and following is None
        assert rows[0]["provider"] == "prostor" and rows[0]["provider_message_id"]
    assert search(settings, provider_message_id="no-such-id")[0] == []


def explain(settings: Settings, *, without: str | None = None, **filters: Any) -> str:
    """The plan of a search; ``without``: as if that index were not there (dropped in
    a transaction that is rolled back)."""
    query = statement(settings, **filters)
    with get_engine().connect() as connection, connection.begin() as transaction:
        if without:
            connection.exec_driver_sql(f"DROP INDEX {without}")
        compiled = query.compile(dialect=connection.dialect)
        rows = connection.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).all()
        transaction.rollback()
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("database", ["postgres"])
def test_every_filter_is_an_index_scan_on_postgres(ledger: Settings) -> None:
    """About 9,000 messages as they come in life: clients' and the operator's calls
    interleaved in time, one busy number, one client that sends little."""
    busy, rare = ["shop", "bank", "taxi"], "games"
    with session_scope() as s:
        for name in [*busy, rare]:
            create_client(s, name)
    for r in range(40):
        for c, name in enumerate(busy):
            api.send_bulk(
                [{"to": f"791670{(r * 131 + c * 37 + i * 7) % 900:05d}", "text": f"{name} {r} {i}"}
                 for i in range(50)], client=name,
            )  # fmt: skip
        api.send_bulk([{"to": "79168000000", "text": f"busy {r} {i}"} for i in range(50)])
        api.send_bulk(
            [{"to": f"791680{1 + (r * 53 + i) % 700:05d}", "text": f"op {r} {i}"} for i in range(20)]
        )
        if r % 8 == 0:
            api.send_sms("79169000000", f"rare {r}", client=rare)
    with session_scope() as s:
        # Provider ids as the send path leaves them: on most rows, one per message.
        s.execute(update(MESSAGES).values(provider_message_id=MESSAGES.c.id, provider="prostor"))
        s.execute(text("ANALYZE messages"))
        assert s.execute(select(func.count()).select_from(MESSAGES)).scalar_one() > 8000
    rows, cursor = search(ledger, limit=100)
    assert len(rows) == 100 and cursor is not None
    some = rows[37]
    # A filter that picks a few rows is read through its own index.
    plans = {
        "to": (explain(ledger, to="79167000014"), "ix_messages_to_created"),
        "provider_message_id": (explain(ledger, provider_message_id=some["id"]), "ix_messages_pmid"),
        "client, rare": (explain(ledger, client=rare), "ix_messages_client_created"),
        "client, rare, cursor": (explain(ledger, client=rare, cursor=cursor), "ix_messages_client_created"),
        "nothing": (explain(ledger), "ix_messages_created"),
        "nothing, cursor": (explain(ledger, cursor=cursor), "ix_messages_created"),
    }
    # A number or client that is a quarter of all traffic: reading ix_messages_created
    # backwards finds a page of it after about four rows a match, in heap order, and
    # PostgreSQL may rightly prefer that. Either way an index read cut by the limit;
    # without that choice, the filter's own index gives the order by itself (a backward
    # scan, only ties of one instant sorted by id), never a sort of every match.
    for name, filters, index in (
        ("to, busy number", {"to": "79168000000"}, "ix_messages_to_created"),
        ("to, busy number, cursor", {"to": "79168000000", "cursor": cursor}, "ix_messages_to_created"),
        ("client, busy", {"client": "bank"}, "ix_messages_client_created"),
        ("client, busy, cursor", {"client": "bank", "cursor": cursor}, "ix_messages_client_created"),
    ):  # fmt: skip
        chosen = explain(ledger, **filters)
        assert "Index Scan" in chosen and chosen.startswith("Limit"), f"{name}:\n{chosen}"
        plans[name] = (chosen, "ix_messages_")
        alone = explain(ledger, without="ix_messages_created", **filters)
        assert f"Index Scan Backward using {index}" in alone, f"{name}:\n{alone}"
        plans[f"{name}, ix_messages_created dropped"] = (alone, index)
    for name, (plan, _) in plans.items():
        print(f"--- {name}\n{plan}")
    for name, (plan, index) in plans.items():
        assert index in plan and "Index" in plan, f"{name}:\n{plan}"
        assert "Seq Scan" not in plan, f"{name}:\n{plan}"
        # Cut by the limit; a full Sort only above a handful of index matches.
        assert plan.startswith("Limit"), f"{name}:\n{plan}"
