"""1000sms.ru read as the real service answers (issue 11), over HTTP against the
simulator in each of its readings (``Sms1000Sim.QUIRKS``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatcher.errors import Action, ConfigError, FailoverError, ProviderError, RetryableError
from dispatcher.providers.base import MessageRef, Provider, WireReply
from dispatcher.providers.sms1000 import Sms1000
from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import password_for
from dispatcher.status import Status
from tests.conftest import sms

DOC = Path(__file__).parents[1] / "fixtures" / "documents" / "1000sms.md"
TWO_PARTS = "Ы" * 71  # UCS-2: 70 a part


def push(sim: Simulator, **fields: str) -> Any:
    """One push_msg straight to the simulator, as the document's browser example."""
    server = sim["sms1000"]
    params = {
        "method": "push_msg",
        "email": server.state.account.login,
        "password": password_for("sms1000"),
        "text": "SMS_TEXT",
        "phone": "79160000001",
        "format": "json",
        **fields,
    }
    return requests.post(server.base_url, data=params, timeout=5).json()


# -- 1. JSON inside "response", codes as strings or numbers -------------------------------


@pytest.mark.parametrize("numbers", ["int", "str"])
def test_json_inside_response_is_read_with_either_number_type(
    numbers: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # Given the reply shape the public clients read (go1000sms.go, smsprosto/_client.py)
    sim["sms1000"].state.set_quirks({"json_wrapped": True, "json_numbers": numbers})
    provider = provider_for("sms1000", format="json")
    # When we send, ask for the status and the balance, it is all read
    [out] = provider.send([sms(text=TWO_PARTS)])
    assert out.ok and out.provider_message_id and out.segments == 2
    [report] = provider.status([MessageRef(out.id, out.provider_message_id)])
    assert report.status in (Status.SENT, Status.DELIVERED)
    assert provider.balance().amount == pytest.approx(100000 - 3.0)
    # and an error code, "623" or 623, is the documented one
    sim["sms1000"].state.faults.error_code = "623"
    with pytest.raises(FailoverError) as info:
        provider.send([sms()])
    assert info.value.code == "623" and info.value.about == "account"


def test_json_of_neither_shape_is_in_doubt(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("sms1000", format="json")
    wrapped = WireReply(200, '{"response": {"msg": {"err_code": "0"}, "data": {"id": 7}}}', "", 0.0)
    assert provider.parse_send(wrapped, [sms()])[0].provider_message_id == "7"
    for body in ('{"result": {"msg": {"err_code": 0}}}', '{"msg": {"err_code": "ok"}}', "[]"):
        with pytest.raises(RetryableError) as info:
            provider.parse_send(WireReply(200, body, "application/json", 0.0), [sms()])
        assert info.value.ambiguous and info.value.raw == body


def test_simulator_answers_both_json_shapes(sim: Simulator) -> None:
    bare = push(sim)
    assert set(bare) == {"msg", "data"} and bare["msg"]["err_code"] == 0
    assert isinstance(bare["data"]["n_raw_sms"], int)
    sim["sms1000"].state.set_quirks({"json_wrapped": True, "json_numbers": "str"})
    wrapped = push(sim)
    assert set(wrapped) == {"response"} and set(wrapped["response"]) == {"msg", "data"}
    assert wrapped["response"]["msg"]["err_code"] == "0"
    assert wrapped["response"]["data"]["n_raw_sms"] == "1"


# -- 2. every error code: whose fault, at its document line -------------------------------

R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT
EXPECTED = {
    "1": (F, "request"),
    "2": (F, "account"),
    "7": (F, "request"),
    "99": (R, "provider"),
    "501": (R, "provider"),
    "602": (F, "account"),
    "603": (F, "account"),
    "604": (F, "account"),
    "605": (F, "account"),
    "607": (F, "account"),
    "608": (F, "account"),
    "609": (F, "account"),
    "610": (F, "account"),
    "611": (F, "account"),
    "612": (F, "account"),
    "614": (F, "account"),
    "615": (F, "account"),
    "616": (F, "request"),
    "617": (J, "message"),
    "618": (J, "message"),
    "619": (F, "provider"),
    "620": (F, "account"),
    "621": (F, "account"),
    "622": (J, "message"),
    "623": (F, "account"),
    "624": (J, "message"),
    "699": (R, "provider"),
}


def test_error_rules_read_the_document() -> None:
    assert {code: (r.action, r.about) for code, r in Sms1000.ERRORS.items()} == EXPECTED
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for code, rule in Sms1000.ERRORS.items():
        name, line = rule.doc.split(":")
        assert name == "1000sms.md" and re.fullmatch(r"\d+", line), rule.doc
        assert lines[int(line) - 1].startswith(f"{code} - "), (code, lines[int(line) - 1])


@pytest.mark.parametrize("code", ["7", "619", "1"])
def test_codes_not_about_the_message_fail_over(
    code: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["sms1000"].state.faults.error_code = code
    with pytest.raises(ProviderError) as info:
        provider_for("sms1000").send([sms()])
    assert type(info.value) is FailoverError and info.value.code == code


# -- 3. delivery state 4 ------------------------------------------------------------------


def test_state_4_is_the_operators_smsc(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    # 1000sms.md:161 "4 - В очереди на SMSC": the operator's SMS centre holds it
    assert Sms1000.map_status("4") == Status.SENT
    sim["sms1000"].state.timing.sent_after = 0.0
    sim["sms1000"].state.timing.final_after = 60.0
    provider = provider_for("sms1000")
    [out] = provider.send([sms()])
    [report] = provider.status([MessageRef(out.id, out.provider_message_id)])
    assert (report.raw_status, report.status) == ("4", Status.SENT)
    assert report.detail == "В очереди на SMSC"


# -- 4. the sender rule, checked before any call ------------------------------------------

BAD_SENDERS = [
    ("Тест-СМС", "620"),  # 1000sms.md:83
    ("Shop&Co", "620"),
    ("VeryLongName1", "608"),  # 1000sms.md:61
    ("abc", "621"),  # 1000sms.md:85: under 4
    ("Shop123", "621"),  # more than 2 digits
    ("79161234567", "621"),
]


@pytest.mark.parametrize(("sender", "code"), BAD_SENDERS)
def test_sender_breaking_the_rule_fails_over_without_a_call(
    sender: str, code: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    problem = Sms1000.sender_problem(sender)
    assert problem and f"1000sms.md:{ {'620': 83, '608': 61, '621': 85}[code] }" in problem
    [out] = provider_for("sms1000").send([sms(sender=sender)])  # a message's own sender
    assert type(out.error) is FailoverError and out.error.code == code
    assert out.error.about == "request" and problem in str(out.error)
    assert sim["sms1000"].state.stats()["requests"] == {}
    # As the configured sender it is refused at start-up, naming the key.
    with pytest.raises(ConfigError) as info:
        provider_for("sms1000", sender=sender)
    assert info.value.key == "providers.sms1000.sender"


def test_good_senders_pass_and_go_out(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    for sender in ("sms-tester", "SmsDemo", "Shop-24", "Shop.24", "ABCD", "Abcdefghijk"):
        assert Sms1000.sender_problem(sender) is None, sender
    provider = provider_for("sms1000")
    outcomes = provider.send([sms(sender="ab"), sms(sender="Shop-24")])
    assert [o.error.code if o.error else None for o in outcomes] == ["621", None]
    assert sim["sms1000"].state.stats()["messages"] == 1


@pytest.mark.parametrize(("sender", "code"), BAD_SENDERS)
def test_simulator_enforces_the_sender_rule(sender: str, code: str, sim: Simulator) -> None:
    assert push(sim, sender_name=sender)["msg"]["err_code"] == int(code)
    assert push(sim, sender_name="Shop 24")["msg"]["err_code"] == 0


# -- 6. parts and cost of a send ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "wrapped", "numbers"),
    [("xml", False, "int"), ("json", False, "int"), ("json", True, "str")],
)
def test_cost_is_the_part_price_times_the_parts(
    fmt: str, wrapped: bool, numbers: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    # 1000sms.md:117 `credits` is the price of one part, :119 `n_raw_sms` the parts
    sim["sms1000"].state.set_quirks({"json_wrapped": wrapped, "json_numbers": numbers})
    [out] = provider_for("sms1000", format=fmt).send([sms(text=TWO_PARTS)])
    assert out.ok and out.segments == 2
    assert out.cost == pytest.approx(2 * sim["sms1000"].state.account.price)
