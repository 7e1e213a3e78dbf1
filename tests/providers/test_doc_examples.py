"""The documents' own example replies, parsed by the adapters."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dispatcher.errors import Action, ProviderError
from dispatcher.providers.base import MessageRef, OutgoingSms, Provider, WireReply
from dispatcher.status import Status
from tests.conftest import fixture_text


def reply(kind: str, name: str) -> WireReply:
    return WireReply(200, fixture_text(kind, name), "", 0.0)


def msg(to: str = "79112223333") -> OutgoingSms:
    return OutgoingSms(id="ab12", to=to, text="x")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_mysms_send_example(fmt: str, provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("mysms", format=fmt)
    [out] = provider.parse_send(reply("mysms", f"send.{fmt}"), [msg()])
    assert out.provider_message_id == "e061d23c-34dc-4903-88f0-e6a6f5f3a570"
    assert out.status == Status.ACCEPTED and out.raw_status == "2"


def test_mysms_check_example_with_spaced_end_tag(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("mysms", format="xml")
    [report] = provider.parse_status(reply("mysms", "check.xml"), [MessageRef("a", "e061")])
    assert report.status == Status.ACCEPTED


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_mysms_balance_decimal_comma(fmt: str, provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("mysms", format=fmt)
    assert provider.parse_balance(reply("mysms", f"credit.{fmt}")).amount == 77212.0


def test_smska_examples(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("smska")
    [out] = provider.parse_send(reply("smska", "send.txt"), [msg()])
    assert out.provider_message_id == "ah1acugxz98a27t9z"
    # the stray "\_" before the balance reply (sms-ka.md:81)
    assert provider.parse_balance(reply("smska", "balance.txt")).amount == 7464
    [report] = provider.parse_status(reply("smska", "query.txt"), [MessageRef("a", "ah1acugxz98a27t9z")])
    assert report.status == Status.DELIVERED and report.raw_status == "4|DELIVRD"


def test_smstele_send_example_1(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("smstele")
    [out] = provider.parse_send(reply("smstele", "send1.json"), [msg("79160001234")])
    assert out.ok and out.provider_message_id == "custom-message-id-test-21" and out.raw_status == "-99"


def test_smstele_send_example_2_two_bad_recipients(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("smstele")
    phones = ["79160001234", "79072233645", "79676771707", "79260004567"]
    outcomes = provider.parse_send(reply("smstele", "send2.json"), [msg(p) for p in phones])
    assert [o.ok for o in outcomes] == [True, False, False, True]
    bad = outcomes[1].error
    assert bad is not None and bad.action == Action.REJECT


@pytest.mark.parametrize(
    ("name", "code", "action"),
    [
        ("error1.json", "-22", Action.FAILOVER),
        ("error2.json", "-35", Action.FAILOVER),  # our id, not the message (smstele.md:398)
        ("error3.json", "-25", Action.REJECT),
        ("error4.json", "-24", Action.REJECT),  # the example's reading: no phones
    ],
)
def test_smstele_error_examples(
    name: str, code: str, action: Action, provider_for: Callable[..., Provider]
) -> None:
    with pytest.raises(ProviderError) as info:
        provider_for("smstele").parse_send(reply("smstele", name), [msg()])
    assert info.value.code == code and info.value.action == action


def test_smstele_status_example_reads_stat_not_minus_99(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("smstele")
    reports = provider.parse_status(
        reply("smstele", "status.json"), [MessageRef("x", "custom-message-id-test-22")]
    )
    assert [(r.phone, r.status) for r in reports] == [
        ("79160001234", Status.DELIVERED),
        ("79260004567", Status.DELIVERED),
    ]


def test_prostor_examples(provider_for: Callable[..., Provider]) -> None:
    provider = provider_for("prostor")
    batch = [OutgoingSms(id="1", to="71234567890", text="a"), OutgoingSms(id="2", to="71234567891", text="b")]
    first, second = provider.parse_send(reply("prostor", "send.json"), batch)
    assert first.ok and first.provider_message_id == "12345"
    assert second.error is not None and second.error.action == Action.FAILOVER  # sender address invalid
    reports = provider.parse_status(reply("prostor", "status.json"), [])
    assert [(r.provider_message_id, r.status) for r in reports] == [
        ("12345", Status.DELIVERED),
        ("12346", Status.REJECTED),
    ]
    queue = provider._reports(provider._doc(reply("prostor", "queue.json")))
    assert [r.status for r in queue] == [Status.DELIVERED, Status.REJECTED]
    balance = provider.parse_balance(reply("prostor", "balance.json"))
    # nothing in roubles: the SMS balance on credit is what can be spent
    assert balance.amount == -508784.0 and balance.currency == "SMS" and balance.spendable == 491216.0
    assert balance.details["SMS"] == {"balance": -508784.0, "credit": 1000000.0}
