"""prostor-sms.ru read as the real server may answer (issue 11), over HTTP against
the simulator, each reading picked per test with a simulator quirk."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from dispatcher.errors import Action, FailoverError, RetryableError
from dispatcher.providers.base import MessageRef, OutgoingSms, Provider, WireReply
from dispatcher.providers.prostor import TOO_MANY, Prostor
from dispatcher.simulator.core import Simulator
from tests.conftest import FIXTURES, fixture_text, send_error, sms

DOC = FIXTURES / "documents" / "prostor.md"


def reply(body: str) -> WireReply:
    return WireReply(200, body, "application/json", 0.0)


# -- 1. a partial batch reply ------------------------------------------------------------


@pytest.mark.parametrize("drop", ["clientId", "ids", "item"])
def test_send_reply_without_one_client_id_leaves_only_that_message_out(
    drop: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.set_quirks({"drop_suffix": "77", "drop": drop})
    batch = [sms(to="79161234501"), sms(to="79161234577"), sms(to="79161234502")]
    outcomes = provider_for("prostor").send(batch)
    # The one the reply does not name is in doubt (left out); the others stand.
    assert [o.id for o in outcomes] == [batch[0].id, batch[2].id]
    assert all(o.ok and o.provider_message_id for o in outcomes)
    assert sim["prostor"].state.stats()["messages"] == 3  # the server did take it


def test_send_reply_items_are_matched_one_by_one(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("prostor")
    batch = [OutgoingSms(id="1", to="71234567890", text="a"), OutgoingSms(id="2", to="71234567891", text="b")]
    body = (
        '{"status": "ok", "messages": ['
        '{"status": "accepted", "smscId": "A1", "clientId": "9"},'  # none of ours: ignored
        '{"status": "accepted", "smscId": "A2"},'  # no clientId: matches nothing
        '{"status": "accepted", "smscId": "A3", "clientId": "2"}]}'
    )
    [only] = provider.parse_send(reply(body), batch)
    assert (only.id, only.provider_message_id, only.ok) == ("2", "A3", True)


@pytest.mark.parametrize(("drop", "left"), [("ids", 2), ("item", 2), ("smscId", 3), ("clientId", 3)])
def test_status_reply_items_stand_alone(
    drop: str, left: int, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for("prostor")
    batch = [sms(to="79161234501"), sms(to="79161234577"), sms(to="79161234502")]
    outcomes = provider.send(batch)
    refs = [MessageRef(o.id, o.provider_message_id) for o in outcomes]
    sim["prostor"].state.set_quirks({"drop_suffix": "77", "drop": drop})
    reports = provider.status(refs)
    # An item with neither id is skipped; one with either is ours, with both ids.
    assert len(reports) == left
    assert {(r.id, r.provider_message_id) for r in reports} <= {(f.id, f.provider_message_id) for f in refs}
    assert all(r.provider_message_id for r in reports)
    assert {r.id for r in reports} >= {batch[0].id, batch[2].id}


def test_real_reply_shape_with_billing(provider_for: Callable[..., Provider]) -> None:
    """A reply shaped as the one vheathen/ex_messenger quotes from smsbliss.net (the
    same API): a numeric smscId, per-message smsCount and msgCost, our clientId echoed
    as the client spelled it."""
    msg = OutgoingSms(id="7d2a6c1e-55b0-4f7e-9a3c-0b8e2f14c6aa", to="79161234567", text="x")
    [out] = provider_for("prostor").parse_send(reply(fixture_text("prostor", "send_billing.json")), [msg])
    assert out.ok and out.provider_message_id == "3104558123"
    assert (out.segments, out.cost) == (2, 3.28)


# -- 2. balance credit -------------------------------------------------------------------


def test_balance_credit_is_spendable_and_sends(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    sim["prostor"].state.set_quirks({"credit": 1_000_000.0})
    sim["prostor"].state.account.balance = 0.0
    provider = provider_for("prostor")
    balance = provider.balance()
    assert (balance.amount, balance.credit, balance.spendable) == (0.0, 1_000_000.0, 1_000_000.0)
    assert balance.details["RUB"] == {"balance": 0.0, "credit": 1_000_000.0}
    [out] = provider.send([sms()])
    assert out.ok  # on credit, as the document's example account (prostor.md:228-243)
    after = provider.balance()
    assert after.amount == pytest.approx(-sim["prostor"].state.account.price)
    assert after.spendable == pytest.approx(1_000_000.0 - sim["prostor"].state.account.price)


def test_document_balance_example_carries_credit(provider_for: Callable[..., Provider]) -> None:
    """The example account has nothing in roubles and can still send 491,216 SMS on
    credit (prostor.md:228-239): that is what routing compares with its threshold."""
    balance = provider_for("prostor").parse_balance(reply(fixture_text("prostor", "balance.json")))
    assert (balance.amount, balance.credit, balance.currency) == (-508784.0, 1000000.0, "SMS")
    assert balance.spendable == 491216.0
    assert balance.details["RUB"] == {"balance": 0.0, "credit": 0.0}


# -- 3. too many messages in one request ---------------------------------------------------


def test_too_many_messages_is_our_request_not_the_messages() -> None:
    rule = Prostor.ERRORS[TOO_MANY]
    assert (rule.action, rule.about) == (Action.FAILOVER, "request")


def test_batch_over_the_server_limit_is_halved_and_all_go_out(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    state = sim["prostor"].state
    state.set_quirks({"max_messages": 30})
    provider = provider_for("prostor")
    outcomes = provider.send([sms(to=f"7916{n:07d}") for n in range(100)])
    assert len(outcomes) == 100 and all(o.ok for o in outcomes)
    stats = state.stats()
    assert stats["messages"] == 100 and stats["duplicates"] == 0
    # 100 and 50 refused, then four calls of 25.
    assert stats["requests"]["send.json"] == 6
    # The adapter keeps the size that went through: no refused call the next time.
    outcomes = provider.send([sms(to=f"7917{n:07d}") for n in range(100)])
    assert len(outcomes) == 100 and all(o.ok for o in outcomes)
    assert state.stats()["requests"]["send.json"] == 6 + 4
    assert state.stats()["duplicates"] == 0


def test_one_message_refused_as_too_many_fails_over(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.set_quirks({"max_messages": 0})
    err = send_error(provider_for("prostor"), sms())
    assert isinstance(err, FailoverError) and err.code == TOO_MANY and err.about == "request"
    assert sim["prostor"].state.stats()["messages"] == 0


def test_status_batch_over_the_limit_is_halved(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    provider = provider_for("prostor")
    outcomes = provider.send([sms(to=f"7916{n:07d}") for n in range(40)])
    sim["prostor"].state.set_quirks({"max_messages": 15})
    reports = provider.status([MessageRef(o.id, o.provider_message_id) for o in outcomes])
    assert sorted(r.id or "" for r in reports) == sorted(o.id for o in outcomes)


def test_a_failed_call_after_an_answered_one_keeps_the_answered(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    """Two calls; the second fails with HTTP 500. The first call's messages went out
    and must come back accepted, not be failed over with the rest (duplicates)."""
    state = sim["prostor"].state
    state.faults.fail_after = 1  # the first call is answered, every later one gets HTTP 500
    provider = provider_for("prostor", batch_size=2)
    outcomes = provider.send([sms(to=f"7916{n:07d}") for n in range(4)])
    assert [o.ok for o in outcomes] == [True, True, False, False]
    assert isinstance(outcomes[2].error, RetryableError) and outcomes[2].error.http_status == 500
    assert state.stats()["messages"] == 2


# -- 4. every error string and its line ----------------------------------------------------


def test_invalid_schedule_time_format_is_our_request(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.faults.error_code = "invalid schedule time format"
    err = send_error(provider_for("prostor"), sms())
    assert isinstance(err, FailoverError) and err.about == "request"


def test_every_error_rule_names_its_line_or_says_where_the_word_is_from() -> None:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    for code, rule in Prostor.ERRORS.items():
        match = re.fullmatch(r"prostor\.md:(\d+)(?: \((.+)\))?", rule.doc)
        assert match, (code, rule.doc)
        line, source = lines[int(match[1]) - 1], match[2]
        assert code in line or source, (code, rule.doc, line)
    assert "REST" in lines[91 - 1] and "200" in lines[17 - 1]


def test_no_funds_in_either_word_is_the_account(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.set_quirks({"no_funds_word": "not enough credits"})
    sim["prostor"].state.faults.no_funds = True
    err = send_error(provider_for("prostor"), sms())
    assert isinstance(err, FailoverError) and err.code == "not enough credits" and err.about == "account"


def test_a_refusal_with_http_400_is_read_by_its_description(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.set_quirks({"error_http_status": 400})
    err = send_error(provider_for("prostor", password="wrong-password"), sms())
    assert isinstance(err, FailoverError)
    assert (err.code, err.about, err.http_status) == ("error authorization", "account", 400)


# -- 6. cost and parts ---------------------------------------------------------------------


@pytest.mark.parametrize("billing_at", ["message", "top"])
def test_cost_and_parts_of_one_message(
    billing_at: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.set_quirks({"billing_at": billing_at})
    [out] = provider_for("prostor").send([sms(text="Ы" * 71)])  # UCS-2: two parts
    assert out.ok and out.segments == 2
    assert out.cost == pytest.approx(2 * sim["prostor"].state.account.price)


def test_top_level_billing_of_a_batch_is_not_given_to_one_message(
    provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim["prostor"].state.set_quirks({"billing_at": "top"})
    outcomes = provider_for("prostor").send([sms(to="79161234501"), sms(to="79161234502")])
    assert all(o.ok for o in outcomes)
    assert [(o.segments, o.cost) for o in outcomes] == [(None, None), (None, None)]
