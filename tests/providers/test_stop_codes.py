"""Provider codes that say a recipient is blacklisted put the number on the stop list
(issue 13), over real HTTP to the simulator, with the send path in this process on a
real ledger (SQLite file and PostgreSQL).

Of the five documents only 1000sms.ru has such codes: 618 "Номер Абонента в Черном
списке" (1000sms.md:79, scope normal) and 622 "Номер Абонента в глобальном Черном
списке" (1000sms.md:87, scope all). The simulator answers them for numbers starting
``BLACKLISTED_PREFIX`` and ``GLOBAL_BLACKLISTED_PREFIX``, and for any number with the
``error_code`` fault. No document has a delivery status of the kind, so tracking lists
nothing (a status would need an entry in the adapter then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher import api, config, db, stoplist
from dispatcher.coordination import MemoryCoordinator
from dispatcher.sending import SendPipeline
from dispatcher.simulator.core import (
    BLACKLISTED_PREFIX,
    GLOBAL_BLACKLISTED_PREFIX,
    INVALID_PREFIX,
    Simulator,
)
from tests.conftest import KINDS, sim_table
from tests.support import PG_URL, reset_postgres

Configure = Callable[..., tuple[config.Settings, SendPipeline]]


@pytest.fixture(params=["sqlite", "postgres"])
def configure(request: pytest.FixtureRequest, sim: Simulator, tmp_path: Path) -> Iterator[Configure]:
    """Settings for some provider instances (name -> kind, in priority order) against
    the simulator, and the send path over them with an in-memory coordinator."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else PG_URL
    made: list[SendPipeline] = []
    published: list[Any] = []

    def build(instances: dict[str, str], polling: dict[str, Any] | None = None) -> tuple[
        config.Settings, SendPipeline
    ]:  # fmt: skip
        table = sim_table(sim)
        chosen = {name: {**table["providers"][kind], "priority": (i + 1) * 10}
                  for i, (name, kind) in enumerate(instances.items())}  # fmt: skip
        settings = config.parse({
            "database_url": url, "broker_url": "memory://", "providers": chosen,
            "pipeline": {"backoff_base": 0.01, "backoff_cap": 0.02, "linger": 0.0},
            "polling": polling or {"interval": 0.3, "intervals": [0.3, 0.5, 1.0]},
        })  # fmt: skip
        config.set_settings(settings)
        db.dispose_engines()
        if request.param == "postgres":
            reset_postgres(url)
            db.upgrade(db.make_engine(url))
        api.use_publisher(lambda items: published.extend(items))
        pipeline = SendPipeline(settings, lambda *a: published.append(a), MemoryCoordinator())
        made.append(pipeline)
        return settings, pipeline

    yield build
    for p in made:
        p.close()
    api.use_publisher(None)
    db.dispose_engines()
    config.set_settings(None)


def listed() -> dict[str, dict[str, Any]]:
    with db.session_scope() as s:
        return {e["phone"]: e for e in stoplist.entries(s, limit=1000)}


def message(mid: str) -> dict[str, Any]:
    found = api.get_message(mid)
    assert found is not None
    return found


def test_618_rejects_and_lists_the_number(configure: Configure, sim: Simulator) -> None:
    _, pipeline = configure({"sms1000": "sms1000"})
    phone = BLACKLISTED_PREFIX + "12345"
    mid = api.send_sms(phone, "Скидка 10% только сегодня")
    assert pipeline.process(mid) == "rejected"
    sent = message(mid)
    assert sent["status"] == "rejected"
    assert "code=618" in (sent["last_error"] or "")  # the refusal names the provider's code, as before
    assert [a["provider_code"] for a in sent["attempts"]] == ["618"]
    assert not sim["sms1000"].state.messages  # the provider took nothing
    entry = listed()[phone]
    assert (entry["scope"], entry["source"]) == ("normal", "provider:sms1000")
    assert entry["reason"].startswith("618: ") and "Номер Абонента в Черном списке" in entry["reason"]


def test_622_lists_the_number_for_one_time_codes_too(configure: Configure) -> None:
    """The global blacklist (1000sms.md:87) refuses every SMS: scope all. The source is
    the instance's name, not the kind's."""
    _, pipeline = configure({"cheap1000": "sms1000"})
    phone = GLOBAL_BLACKLISTED_PREFIX + "54321"
    mid = api.send_sms(phone, "Ваш код: 4821", priority="high")
    assert pipeline.process(mid) == "rejected"
    assert "code=622" in (message(mid)["last_error"] or "")
    entry = listed()[phone]
    assert (entry["scope"], entry["source"]) == ("all", "provider:cheap1000")
    assert entry["reason"].startswith("622: ") and "глобальном Черном списке" in entry["reason"]
    assert stoplist.blocks(entry["scope"], "high")


def test_a_group_lists_its_refused_numbers_in_one_write(configure: Configure) -> None:
    _, pipeline = configure({"sms1000": "sms1000"})
    phones = [BLACKLISTED_PREFIX + "00001", "79161234501", GLOBAL_BLACKLISTED_PREFIX + "00002",
              BLACKLISTED_PREFIX + "00003", "79161234502", INVALID_PREFIX + "00004"]  # fmt: skip
    ids = api.send_bulk([{"to": p, "text": f"bulk {n}"} for n, p in enumerate(phones)])
    assert pipeline.process_many(ids) == {"rejected": 4, "accepted": 2, "skipped": 0}
    stops = listed()
    assert {p: e["scope"] for p, e in stops.items()} == {
        phones[0]: "normal", phones[2]: "all", phones[3]: "normal",
    }  # fmt: skip
    # An invalid number (617, 1000sms.md:77) is refused too, but says nothing of the
    # subscriber's wishes: not listed.
    assert "code=617" in (message(ids[5])["last_error"] or "")


def test_a_provider_widens_an_entry_and_never_narrows_it(configure: Configure, sim: Simulator) -> None:
    _, pipeline = configure({"sms1000": "sms1000"})
    phone = BLACKLISTED_PREFIX + "77777"
    assert pipeline.process(api.send_sms(phone, "Ваш код: 0000", priority="high")) == "rejected"
    assert listed()[phone]["scope"] == "normal"
    # One-time codes still go to it (a normal entry does not stop them): two stored.
    first, second = (api.send_sms(phone, f"Ваш код: {n}", priority="high") for n in (1111, 2222))
    # The provider now answers 622 for the number: the entry widens to all.
    sim["sms1000"].state.faults.error_code = "622"
    assert pipeline.process(first) == "rejected"
    assert (listed()[phone]["scope"], listed()[phone]["reason"][:4]) == ("all", "622:")
    # The second code was stored before the entry widened: the claim sees the entry
    # now, and it goes to no provider.
    sim["sms1000"].state.faults.error_code = ""
    calls = sim["sms1000"].state.stats()["requests"]
    assert pipeline.process(second) == "rejected"
    assert message(second)["last_error"] == "stopped"
    assert sim["sms1000"].state.stats()["requests"] == calls
    # A later 618 (its own prefix) cannot narrow the entry back (stoplist.add_many).
    assert (listed()[phone]["scope"], listed()[phone]["reason"][:4]) == ("all", "622:")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "sms1000"])
def test_kinds_without_such_a_code_list_nothing(configure: Configure, kind: str) -> None:
    """my-sms.ru, sms-ka.net, SMStele and prostor-sms.ru document no code that says a
    recipient is blacklisted or opted out (docs/providers.md, "Stop list")."""
    _, pipeline = configure({kind: kind})
    mid = api.send_sms(BLACKLISTED_PREFIX + "12345", "promo")
    assert pipeline.process(mid) == "accepted"
    invalid = api.send_sms(INVALID_PREFIX + "12345", "promo")
    assert pipeline.process(invalid) in ("rejected", "waiting", "exhausted", "retry")
    assert listed() == {}
