"""Every documented error code, forced in the simulator and read back over HTTP,
lands in exactly the class its rule names."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dispatcher.errors import ERROR_CLASS, Action, ProviderError
from dispatcher.providers import adapter_class
from dispatcher.providers.base import Provider, WireReply
from dispatcher.simulator.core import Simulator
from tests.conftest import KINDS, sms

CASES = [(kind, code) for kind in KINDS for code in adapter_class(kind).ERRORS]


@pytest.mark.parametrize(("kind", "code"), CASES, ids=[f"{k}:{c}" for k, c in CASES])
def test_documented_code_is_classified(
    kind: str, code: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim[kind].state.faults.error_code = code
    provider = provider_for(kind)
    rule = provider.ERRORS[code]
    try:
        outcomes = provider.send([sms()])
        err = outcomes[0].error
    except ProviderError as exc:
        err = exc
    assert err is not None
    assert type(err) is ERROR_CLASS[rule.action], f"{kind} {code}: {err!r}"
    assert err.code == code
    assert err.provider == kind and err.kind == kind
    assert err.raw  # the provider's reply travels with the error
    assert sim[kind].state.stats()["messages"] == 0


def test_every_kind_has_each_action() -> None:
    for kind in KINDS:
        actions = {rule.action for rule in adapter_class(kind).ERRORS.values()}
        # sms-ka.net lists no code about the message alone: even -6 may mean "cannot
        # be reached via the API" (sms-ka.md:143), which another provider may do.
        assert actions == (set(Action) - {Action.REJECT} if kind == "smska" else set(Action)), kind


def test_undocumented_code_fails_over(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    sim["smska"].state.faults.error_code = "-77"
    with pytest.raises(ProviderError) as info:
        provider_for("smska").send([sms()])
    assert info.value.action == Action.FAILOVER
    assert "undocumented" in str(info.value)


def test_sms1000_602_has_two_readings(provider_for: Callable[..., Provider], sim: Simulator) -> None:
    """1000sms.md:49 and :51 list 602 twice: on a send it is "user does not exist"
    (fail over), on a status call "SMS does not exist" (an unknown status)."""
    from dispatcher.providers.base import MessageRef
    from dispatcher.status import Status

    provider = provider_for("sms1000")
    sim["sms1000"].state.faults.error_code = "602"
    with pytest.raises(ProviderError) as info:
        provider.send([sms()])
    assert info.value.action == Action.FAILOVER
    sim["sms1000"].state.faults.error_code = ""
    reports = provider.status([MessageRef("x", "999999")])
    assert reports[0].status == Status.UNKNOWN and reports[0].raw_status == "err:602"


def test_smstele_minus_24_has_two_readings(provider_for: Callable[..., Provider]) -> None:
    """smstele.md:387 says -24 is IP_NOT_ALLOWED (fail over); its example at :151-157
    answers -24 to a request without phones (a message problem: reject)."""
    provider = provider_for("smstele")
    msg = sms()
    ip = WireReply(200, '{"error": "-24", "description": "IP not allowed"}', "application/json", 0.0)
    with pytest.raises(ProviderError) as info:
        provider.parse_send(ip, [msg])
    assert info.value.action == Action.FAILOVER
    phones = WireReply(200, '{"error": "-24", "description": "Missing attribute: \'phones\'"}', "", 0.0)
    with pytest.raises(ProviderError) as info:
        provider.parse_send(phones, [msg])
    assert info.value.action == Action.REJECT
