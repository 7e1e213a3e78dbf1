"""Each provider's variant forms and batch limits, counted at the simulator."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from dispatcher.providers.base import MessageRef, Provider
from dispatcher.providers.prostor import Prostor
from dispatcher.simulator.core import Simulator
from dispatcher.status import Status
from tests.conftest import sms


@pytest.mark.parametrize("method", ["post", "get"])
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_mysms_all_four_forms(
    method: str, fmt: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("mysms", format=fmt, http_method=method)
    outcomes = provider.send([sms(text="Привет"), sms(to="79161234568")])
    assert all(o.ok for o in outcomes)
    calls = sim["mysms"].state.stats()["requests"][f"send/{fmt}"]
    assert calls == (2 if method == "get" else 1)  # POST takes a batch, GET one message
    time.sleep(0.7)
    refs = [MessageRef(o.id, o.provider_message_id) for o in outcomes]
    assert [r.status for r in provider.status(refs)] == [Status.DELIVERED, Status.DELIVERED]
    assert provider.balance().amount == pytest.approx(100000 - 3.0)


def test_mysms_batch_splits_at_batch_size(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    provider = provider_for("mysms", batch_size=50)
    outcomes = provider.send([sms(to=f"7916{n:07d}") for n in range(1, 121)])
    assert len(outcomes) == 120 and all(o.ok for o in outcomes)
    assert sim["mysms"].state.stats()["requests"]["send/json"] == 3


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_sms1000_both_formats(fmt: str, provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("sms1000", format=fmt)
    [out] = provider.send([sms(text="Проверка")])
    assert out.ok and out.segments == 1
    balance = provider.balance()
    assert balance.amount == pytest.approx(100000 - 1.5) and balance.currency == "руб."


def test_prostor_201_messages_take_two_calls(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    provider = provider_for("prostor")
    outcomes = provider.send([sms(to=f"7916{n:07d}") for n in range(1, 202)])
    assert len(outcomes) == 201 and all(o.ok for o in outcomes)
    assert sim["prostor"].state.stats()["requests"]["send.json"] == 2
    time.sleep(0.7)
    reports = provider.status([MessageRef(o.id, o.provider_message_id) for o in outcomes])
    assert len(reports) == 201
    assert sim["prostor"].state.stats()["requests"]["status.json"] == 2


def test_prostor_status_queue_drains_in_order(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    provider = provider_for("prostor")
    assert isinstance(provider, Prostor)
    [out] = provider.send([sms()])
    time.sleep(0.7)
    reports = provider.drain_status_queue()
    assert [r.status for r in reports] == [Status.ACCEPTED, Status.SENT, Status.DELIVERED]
    assert {r.provider_message_id for r in reports} == {out.provider_message_id}
    assert provider.drain_status_queue() == []


def test_prostor_queue_limit_is_respected(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("prostor")
    assert isinstance(provider, Prostor)
    provider.send([sms(to=f"7916{n:07d}") for n in range(1, 6)])
    assert len(provider.drain_status_queue(limit=3)) == 3
    assert len(provider.drain_status_queue(limit=3)) == 2


def test_prostor_senders_and_version(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("prostor")
    assert isinstance(provider, Prostor)
    senders = {s["name"]: s["status"] for s in provider.senders()}
    assert senders["MegaFon"] == "blocked"
    assert provider.version() == 2


def test_smstele_several_phones_one_call(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    provider = provider_for("smstele")
    same = [sms(to=f"7916{n:07d}", text="Один текст") for n in range(1, 6)]
    other = sms(text="Другой текст")
    outcomes = provider.send([*same, other])
    assert all(o.ok for o in outcomes)
    assert sim["smstele"].state.stats()["requests"]["sendsms"] == 2
    # The call's client id finds each message again, by id and phone.
    time.sleep(0.7)
    reports = provider.status([MessageRef(same[2].id, outcomes[2].provider_message_id, same[2].to)])
    assert [(r.phone, r.status) for r in reports] == [(same[2].to, Status.DELIVERED)]


def test_smstele_bad_phone_in_a_list_fails_only_that_message(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("smstele")
    batch = [
        sms(to="79161110001", text="t"),
        sms(to="79000001112", text="t"),
        sms(to="79161110003", text="t"),
    ]
    outcomes = provider.send(batch)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert sim["smstele"].state.stats()["messages"] == 2


@pytest.mark.parametrize("charset", ["utf-8", "windows-1251", "koi8-r"])
def test_smstele_charsets_keep_cyrillic(
    charset: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("smstele", charset=charset)
    assert provider.send([sms(text="Съешь же ещё этих мягких булок")])[0].ok
    assert list(sim["smstele"].state.received) == ["79161234567|Съешь же ещё этих мягких булок"]


def test_smstele_windows_1251_falls_back_to_utf8_for_emoji(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("smstele", charset="windows-1251")
    assert provider.send([sms(text="Код 1234 🔑")])[0].ok
    assert list(sim["smstele"].state.received) == ["79161234567|Код 1234 🔑"]


def test_smstele_reconciles_by_our_id(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("smstele")
    msg = sms()
    provider.send([msg])
    found = provider.status_by_client_id(MessageRef(msg.id, None, msg.to))
    assert len(found) == 1 and found[0].id == msg.id
    assert provider.status_by_client_id(MessageRef("never-sent", None, msg.to)) == []


def test_scheduled_time_is_passed_in_each_format(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    from datetime import UTC, datetime, timedelta

    at = datetime.now(UTC) + timedelta(hours=1)
    for kind in ("mysms", "smstele", "prostor"):
        assert provider_for(kind).send([sms(at=at)])[0].ok, kind
