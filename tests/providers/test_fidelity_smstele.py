"""SMStele.ru read as its document says (issue 11): the 25-character id, whose fault
each error code is, the validity, and what `cnt` counts. Over HTTP against the
simulator, which answers both readings where the document leaves two."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from dispatcher.errors import Action, FailoverError, RejectedError
from dispatcher.providers.base import MessageRef, OutgoingSms, Provider
from dispatcher.providers.smstele import SmsTele, from_wire_id, wire_id
from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import password_for
from dispatcher.status import Status
from tests.conftest import send_error, sms


def post(sim: Simulator, path: str, **fields: str) -> Any:
    data = {"login": "demo", "psw": password_for("smstele"), **fields}
    return requests.post(sim["smstele"].base_url + path, data=data, timeout=5).json()


def sent_fields(provider: Provider, batch: list[OutgoingSms]) -> dict[str, str]:
    body = provider.build_send(batch).data
    assert isinstance(body, bytes)
    return {k: v[0] for k, v in parse_qs(body.decode("ascii")).items()}


# -- 1. the id: at most 25 characters, ours re-encoded -----------------------------------


def test_wire_id_is_25_base36_characters_and_turns_back() -> None:
    ids = [uuid.uuid4().hex for _ in range(200)] + ["0" * 32, "f" * 32]
    wires = [wire_id(i) for i in ids]
    assert all(re.fullmatch(r"[0-9a-z]{25}", w) for w in wires)
    assert len(set(wires)) == len(ids)
    assert [from_wire_id(w) for w in wires] == ids
    # Not one of ours: kept when it fits, else a stable 25-character digest.
    assert wire_id("doctor") == "doctor" and from_wire_id("doctor") == "doctor"
    long = "custom-message-id-test-11-too-long-1234567890abcdefghijklmnopqrstuvwxyz"
    assert len(wire_id(long)) == 25 and wire_id(long) == wire_id(long)


def test_simulator_refuses_an_id_the_document_would_not_take(sim: Simulator) -> None:
    for bad in ["a" * 26, uuid.uuid4().hex, "Custom-Message-Id"]:
        reply = post(sim, "sendsms", phones="79161234567", mes="x", id=bad)
        assert reply == {"error": "-35", "description": f"Invalid attribute: 'id={bad}'"}
        assert post(sim, "status", id=bad)["error"] == "-35"
    # The document's own 25-character id is taken (smstele.md:231).
    assert post(sim, "sendsms", phones="79161234567", mes="x", id="custom-message-id-test-22")["cnt"] == "1"


def test_send_goes_under_the_wire_id_and_a_lost_reply_is_found_by_it(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("smstele")
    msg = sms()
    [outcome] = provider.send([msg])
    assert outcome.ok and outcome.provider_message_id == wire_id(msg.id)
    assert list(sim["smstele"].state.by_client) == [wire_id(msg.id)]
    # The reply lost: the pipeline asks by our id alone (dispatcher/sending/send.py).
    [found] = provider.status_by_client_id(MessageRef(msg.id, None, msg.to))
    assert (found.id, found.provider_message_id, found.phone) == (msg.id, wire_id(msg.id), msg.to)
    # Polling asks by what parse_send stored.
    [polled] = provider.status([MessageRef(msg.id, outcome.provider_message_id, msg.to)])
    assert polled.id == msg.id and polled.status != Status.UNKNOWN


# -- 2. whose fault each code is --------------------------------------------------------

REQUEST = ["-6", "-27", "-28", "-29", "-30", "-33", "-34", "-35", "-41", "-42"]
ACCOUNT = ["-21", "-22", "-23", "-24", "-31", "-32", "-43"]


@pytest.mark.parametrize("code", REQUEST + ACCOUNT)
def test_a_code_about_our_request_or_account_fails_over(
    code: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["smstele"].state.faults.error_code = code
    err = send_error(provider_for("smstele"), sms())
    assert isinstance(err, FailoverError) and err.code == code
    assert err.about == ("request" if code in REQUEST else "account")


def test_only_a_bad_destination_rejects_the_message() -> None:
    rejecting = {code for code, rule in SmsTele.ERRORS.items() if rule.action == Action.REJECT}
    assert rejecting == {"-25", "-26"}


def test_credits_for_part_of_a_list_refuse_the_whole_call(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Every code refuses the request (smstele.md:377): two phones, credits for one.
    sim["smstele"].state.account.balance = 2.0
    batch = [sms(to="79161110001", text="t"), sms(to="79161110002", text="t")]
    with pytest.raises(FailoverError) as info:
        provider_for("smstele").send(batch)
    assert info.value.code == "-43" and info.value.about == "account"
    assert sim["smstele"].state.stats()["messages"] == 0


# -- 3. validity: what is left of our TTL -------------------------------------------------


def test_validity_is_what_is_left_of_the_ttl(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("smstele")
    now = datetime.now(UTC)
    left = int(sent_fields(provider, [sms(expires_at=now + timedelta(minutes=90))])["validity"])
    assert 5390 <= left <= 5400  # rounded down, never past our TTL
    # One call, one validity: the earliest TTL of the batch.
    batch = [sms(to="79161110001", expires_at=now + timedelta(hours=5)),
             sms(to="79161110002", expires_at=now + timedelta(hours=2))]  # fmt: skip
    assert 7190 <= int(sent_fields(provider, batch)["validity"]) <= 7200
    assert sent_fields(provider, [sms(expires_at=now + timedelta(seconds=5))])["validity"] == "30"
    assert sent_fields(provider, [sms(expires_at=now + timedelta(days=3))])["validity"] == "86400"
    assert "validity" not in sent_fields(provider, [sms()])
    # The static option caps it, seconds or hh:mm; the smaller wins.
    capped = provider_for("smstele", validity="01:00")
    assert sent_fields(capped, [sms(expires_at=now + timedelta(minutes=90))])["validity"] == "3600"
    assert sent_fields(capped, [sms()])["validity"] == "3600"
    assert 1790 <= int(sent_fields(capped, [sms(expires_at=now + timedelta(minutes=30))])["validity"]) <= 1800
    hours = provider_for("smstele", validity_format="hh:mm")
    assert sent_fields(hours, [sms(expires_at=now + timedelta(minutes=90))])["validity"] == "01:29"
    assert sent_fields(hours, [sms(expires_at=now + timedelta(minutes=10))])["validity"] == "01:00"


def test_a_server_reading_hours_refuses_seconds_and_the_option_follows_it(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["smstele"].state.set_quirks({"validity_format": "hh:mm"})
    msg = sms(expires_at=datetime.now(UTC) + timedelta(hours=2))
    err = send_error(provider_for("smstele"), msg)
    assert isinstance(err, FailoverError) and err.code == "-28" and err.about == "request"
    assert provider_for("smstele", validity_format="hh:mm").send([msg])[0].ok
    sim["smstele"].state.set_quirks({"validity_format": "seconds"})
    assert post(sim, "sendsms", phones="79161234567", mes="x", validity="01:00")["error"] == "-28"
    assert post(sim, "sendsms", phones="79161234567", mes="x", validity="90000")["error"] == "-28"


def test_simulator_does_not_deliver_after_the_validity(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["smstele"].state.timing.final_after = 1.5
    late = post(sim, "sendsms", phones="79161110001", mes="x", id="late", validity="1")
    in_time = post(sim, "sendsms", phones="79161110002", mes="x", id="in-time", validity="5")
    assert late["cnt"] == in_time["cnt"] == "1"
    time.sleep(1.7)
    provider = provider_for("smstele")
    [expired] = provider.status([MessageRef("a", "late", "79161110001")])
    [delivered] = provider.status([MessageRef("b", "in-time", "79161110002")])
    assert (expired.status, expired.raw_status.split("|")[0]) == (Status.EXPIRED, "EXPIRED")
    assert delivered.status == Status.DELIVERED


# -- 4. parts and cost ---------------------------------------------------------------------


@pytest.mark.parametrize("total_cnt", ["messages", "parts"])
def test_the_refused_phone_is_found_whatever_cnt_counts(
    total_cnt: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["smstele"].state.set_quirks({"total_cnt": total_cnt})
    text = "x" * 400  # three GSM-7 parts
    good, bad = sms(to="79161110001", text=text), sms(to="79000001112", text=text)
    first, second = provider_for("smstele").send([good, bad])
    assert first.ok and first.segments == 3
    assert first.cost is None  # no reply of the document carries a cost
    assert isinstance(second.error, RejectedError) and second.error.code == "-26"
    assert sim["smstele"].state.stats()["messages"] == 1
