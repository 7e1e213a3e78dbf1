"""sms-ka.net and my-sms.ru read as their documents say (issue 11), over HTTP against
the simulator in each of its readings (``SmsKaSim.QUIRKS``, ``MySmsSim.QUIRKS``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from dispatcher import config
from dispatcher.errors import ERROR_CLASS, Action, ConfigError, FailoverError, RetryableError
from dispatcher.providers import make_provider
from dispatcher.providers.base import MessageRef, Provider
from dispatcher.providers.mysms import MySms
from dispatcher.providers.smska import SmsKa
from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import password_for
from dispatcher.simulator.mysms import MySmsSim
from dispatcher.status import Status
from tests.conftest import FIXTURES, send_error, sim_table, sms

DOCS = FIXTURES / "documents"  # the providers' documents, verbatim
R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT

# Every documented code: (action, whose fault). Only a fault of the message rejects.
EXPECTED = {
    "smska": {
        "-1": (F, "account"),
        "-3": (R, "provider"),
        "-4": (F, "request"),
        "-5": (F, "account"),
        "-6": (F, "request"),
        "-7": (F, "account"),
    },
    "mysms": {
        "-1": (F, "account"),
        "-50": (R, "provider"),
        "-51": (R, "provider"),
        "-52": (R, "provider"),
        "-10": (F, "request"),
        "-11": (F, "account"),
        "-12": (J, "message"),
        "-13": (F, "account"),
        "-14": (R, "provider"),
        "-15": (F, "request"),
        "-16": (F, "request"),
    },
}
CASES = [(kind, code) for kind, codes in EXPECTED.items() for code in codes]


def ttl_received(sim: Simulator, pid: str | None) -> str | None:
    server = sim["mysms"].sim
    assert isinstance(server, MySmsSim)
    return server.ttls.get(str(pid))


def poll(provider: Provider, ref: MessageRef, seconds: float) -> Iterator[tuple[str, Status]]:
    """(raw, status) of each distinct reading until ``seconds`` pass or it is delivered."""
    deadline, last = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        [report] = provider.status([ref])
        if report.raw_status != last:
            last = report.raw_status
            yield report.raw_status, report.status
        if report.status == Status.DELIVERED:
            return
        time.sleep(0.05)


# -- 1. every code: its action, whose fault, its line ----------------------------------------


@pytest.mark.parametrize(("kind", "code"), CASES, ids=[f"{k}:{c}" for k, c in CASES])
def test_each_code_is_read_as_whose_fault_it_is(
    kind: str, code: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Given the provider answering the code in the form its document shows
    sim[kind].state.faults.error_code = code
    # When we send, the error is of the class and fault the table above names
    err = send_error(provider_for(kind))
    action, about = EXPECTED[kind][code]
    assert (type(err), err.code, err.about) == (ERROR_CLASS[action], code, about)
    assert sim[kind].state.stats()["messages"] == 0


@pytest.mark.parametrize("cls", [SmsKa, MySms])
def test_every_rule_points_at_its_code_in_the_document(cls: type[Provider]) -> None:
    assert set(cls.ERRORS) == set(EXPECTED[cls.KIND])
    for code, rule in cls.ERRORS.items():
        assert (rule.action, rule.about) == EXPECTED[cls.KIND][code], code
        name, line = rule.doc.split(":")
        assert name == cls.DOC
        text = (DOCS / name).read_text(encoding="utf-8").splitlines()[int(line) - 1].strip("* ")
        # sms-ka.md:127 "**-1|Authentication failed...", my-sms.md:581 "-1<TAB>Ошибка..."
        assert text.startswith((f"{code}|", f"{code}\t")), (code, text)


def test_smska_minus_6_fails_over_for_a_number_another_provider_takes(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Given sms-ka.net taking only 79XXXXXXXXXX (sms-ka.md:31)
    sim["smska"].state.set_quirks({"msisdn_79_only": True})
    foreign = "380501234567"
    # When a number it does not take is sent there, the message goes on to the next
    with pytest.raises(FailoverError) as info:
        provider_for("smska").send([sms(to=foreign)])
    assert info.value.code == "-6"
    # and the next provider does take it
    assert provider_for("mysms").send([sms(to=foreign)])[0].ok


# -- 2. my-sms.ru -14: a retry on a send, not final as a status --------------------------------


def test_mysms_minus_14_in_a_status_reply_is_not_final(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Given a message the provider reports -14 for (it never reaches the phone)
    provider = provider_for("mysms")
    [out] = provider.send([sms(to="79160000000")])
    ref = MessageRef(out.id, out.provider_message_id)
    readings = dict(poll(provider, ref, seconds=1.5))
    # Then -14 is kept, with its meaning, but not read as a final status
    assert readings["-14"] == Status.UNKNOWN and not readings["-14"].is_final
    [report] = provider.status([ref])
    assert report.detail == "error while sending the message"
    # while the same code on a send is worth a retry (no id: not taken)
    sim["mysms"].state.faults.error_code = "-14"
    assert isinstance(send_error(provider), RetryableError)


def test_mysms_minus_14_then_delivered_ends_delivered(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Given a provider that reports -14 after a failed hand-over, then tries again
    sim["mysms"].state.set_quirks({"retry_after_error": True})
    provider = provider_for("mysms")
    [out] = provider.send([sms()])
    # When we poll it through, nothing before the delivery reads as final
    readings = list(poll(provider, MessageRef(out.id, out.provider_message_id), seconds=3.0))
    assert [raw for raw, _ in readings] == ["2", "-14", "4"]
    assert [status.is_final for _, status in readings] == [False, False, True]
    assert readings[-1][1] == Status.DELIVERED


# -- 3. the simulator answers each code where the document puts it -------------------------------


@pytest.mark.parametrize(("ttl", "state"), [("0", "-16"), ("ten", "-16"), ("5", "2")])
def test_mysms_simulator_checks_the_ttl_per_message(ttl: str, state: str, sim: Simulator) -> None:
    # The GET send form with its ttl (my-sms.md:34); -16 is a message state (my-sms.md:598)
    params = {"u": "demo", "p": password_for("mysms"), "s": "MyBrand", "d": "79112223333", "t": "x"}
    reply = requests.get(sim["mysms"].base_url + "send/json", params={**params, "ttl": ttl}, timeout=5).json()
    assert reply["state"] == "0"
    assert reply["data"][0]["state"] == state
    assert bool(reply["data"][0]["id"]) == (state == "2")


# -- 4. what is left of our TTL goes to my-sms.ru; sms-ka.net takes none -------------------------


@pytest.mark.parametrize(
    ("method", "fmt"), [("get", "json"), ("get", "xml"), ("post", "json"), ("post", "xml")]
)
def test_mysms_passes_what_is_left_of_our_ttl_in_each_form(
    method: str, fmt: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("mysms", http_method=method, format=fmt)
    assert provider.VALIDITY
    # 10.5 minutes left: 10 whole minutes, never more than is left
    [out] = provider.send([sms(expires_at=datetime.now(UTC) + timedelta(minutes=10, seconds=30))])
    assert out.ok
    assert ttl_received(sim, out.provider_message_id) == "10"


def test_mysms_ttl_rounds_in_the_providers_favour(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("mysms")
    assert isinstance(provider, MySms)
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    left = {s: provider.ttl(sms(expires_at=now + timedelta(seconds=s)), now) for s in (30, 119, 120, 86400)}
    assert left == {30: "1", 119: "1", 120: "2", 86400: "1440"}  # below one minute: one
    # A scheduled message: counted from its date, so it ends within our TTL either way
    at = now + timedelta(minutes=30)
    assert provider.ttl(sms(at=at, expires_at=now + timedelta(hours=1)), now) == "30"
    assert provider.ttl(sms(), now) is None
    seconds = provider_for("mysms", ttl_unit="seconds")
    assert isinstance(seconds, MySms)
    assert seconds.ttl(sms(expires_at=now + timedelta(seconds=90.7)), now) == "90"


def test_mysms_message_is_not_delivered_after_its_ttl(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Given a provider counting ttl in seconds and a delivery that would take 2.5 s
    state = sim["mysms"].state
    state.set_quirks({"ttl_unit": "seconds"})
    state.timing.final_after = 2.5
    provider = provider_for("mysms", ttl_unit="seconds")
    # When a message with 1.9 s left of its TTL is sent
    [out] = provider.send([sms(expires_at=datetime.now(UTC) + timedelta(seconds=1.9))])
    assert ttl_received(sim, out.provider_message_id) == "1"
    # Then it is never delivered: it ends on -14 once its TTL is over
    readings = list(poll(provider, MessageRef(out.id, out.provider_message_id), seconds=3.5))
    assert Status.DELIVERED not in {status for _, status in readings}
    assert readings[-1][0] == "-14"
    assert state.stats()["stages"] == {"expired": 1}  # never delivered: its TTL ran out first


# -- 6. sms-ka.net needs a SenderID: without one, no call ----------------------------------------


@pytest.fixture
def smska_without_sender(sim: Simulator) -> Iterator[Provider]:
    # Start-up refuses such an instance (below); one built past it still sends nothing.
    cfg = dataclasses.replace(config.parse(sim_table(sim)).provider("smska"), sender=None)
    provider = make_provider(cfg)
    yield provider
    provider.close()


def test_smska_instance_without_sender_is_refused_at_start_up(sim: Simulator) -> None:
    table = sim_table(sim)
    del table["providers"]["smska"]["sender"]
    with pytest.raises(ConfigError) as info:
        config.parse(table)
    assert info.value.key == "providers.smska.sender" and "sms-ka.md:49" in info.value.reason


def test_smska_without_sender_fails_over_without_a_call(
    smska_without_sender: Provider, sim: Simulator
) -> None:
    # Given no sender configured, one message with its own sender and one without
    own, bare = sms(sender="MyBrand"), sms(to="79161234568")
    # When both are sent
    outcomes = {o.id: o for o in smska_without_sender.send([own, bare])}
    # Then the one with a sender went out, the other fails over, without a call
    assert outcomes[own.id].ok
    err = outcomes[bare.id].error
    assert isinstance(err, FailoverError) and (err.code, err.about) == ("-4", "request")
    assert "a SenderID is needed" in str(err)
    assert sum(sim["smska"].state.stats()["requests"].values()) == 1
    assert list(sim["smska"].state.received) == ["79161234567|Test message"]


@pytest.mark.parametrize(("sender", "ok"), [(None, False), ("", False), ("  ", False), ("SmsDemo", True)])
def test_smska_sender_problem_for_config_validation(sender: str | None, ok: bool) -> None:
    problem = SmsKa.sender_problem(sender)
    assert (problem is None) == ok
    if problem:
        assert "sms-ka.md:49" in problem


# -- my-sms.ru: `source` is required too, at most 11 Latin or 15 digits (my-sms.md:43) -----------


def test_mysms_refused_sender_fails_over_without_a_call(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("mysms")
    good, bad = sms(), sms(to="79161234568", sender="Магазин")
    outcomes = {o.id: o for o in provider.send([good, bad])}
    assert outcomes[good.id].ok
    err = outcomes[bad.id].error
    assert isinstance(err, FailoverError) and (err.code, err.about) == ("-11", "request")
    assert sim["mysms"].state.stats()["requests"] == {"send/json": 1}
    assert list(sim["mysms"].state.received) == ["79161234567|Test message"]


@pytest.mark.parametrize(
    ("sender", "ok"),
    [(None, False), ("", False), ("TwelveLetter", False), ("Магазин", False), ("1" * 16, False),
     ("SmsDemo", True), ("1" * 15, True)],
)  # fmt: skip
def test_mysms_sender_problem(sender: str | None, ok: bool) -> None:
    assert (MySms.sender_problem(sender) is None) == ok


def test_mysms_instance_without_sender_is_refused_at_start_up(sim: Simulator) -> None:
    table = sim_table(sim)
    del table["providers"]["mysms"]["sender"]
    with pytest.raises(ConfigError) as info:
        config.parse(table)
    assert info.value.key == "providers.mysms.sender" and "my-sms.md:43" in info.value.reason
