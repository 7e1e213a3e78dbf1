"""The same contract for every adapter, over real HTTP against the simulator."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import pytest

from dispatcher.errors import Action, FailoverError, ProviderError, RejectedError, RetryableError
from dispatcher.providers.base import MessageRef, Provider, SendOutcome
from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import password_for
from dispatcher.status import Status
from tests.conftest import KINDS, sms

pytestmark = pytest.mark.parametrize("kind", KINDS)


def send_one(provider: Provider, **kwargs: str) -> SendOutcome:
    outcomes = provider.send([sms(**kwargs)])
    assert len(outcomes) == 1
    return outcomes[0]


def error_of(provider: Provider, **kwargs: str) -> ProviderError:
    """The error of one send, whether the call raised it or the message carries it."""
    try:
        outcome = send_one(provider, **kwargs)
    except ProviderError as exc:
        return exc
    assert outcome.error is not None, f"expected an error, got {outcome}"
    return outcome.error


def wait_status(provider: Provider, ref: MessageRef, want: set[Status], seconds: float = 5.0) -> Status:
    deadline = time.monotonic() + seconds
    status = Status.UNKNOWN
    while time.monotonic() < deadline:
        reports = provider.status([ref])
        assert reports, "no status report"
        status = reports[0].status
        if status in want:
            return status
        time.sleep(0.1)
    return status


def test_send_is_accepted_with_provider_id(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    outcome = send_one(provider_for(kind))
    assert outcome.ok and outcome.status == Status.ACCEPTED
    assert outcome.provider_message_id
    assert sim[kind].state.stats()["messages"] == 1


def test_delivery_progresses_to_delivered(kind: str, provider_for: Callable[..., Provider]) -> None:
    provider = provider_for(kind)
    outcome = send_one(provider, to="79161112233")
    ref = MessageRef(outcome.id, outcome.provider_message_id, "79161112233")
    assert wait_status(provider, ref, {Status.DELIVERED}) == Status.DELIVERED


def test_undeliverable_number_ends_not_delivered(kind: str, provider_for: Callable[..., Provider]) -> None:
    provider = provider_for(kind)
    outcome = send_one(provider, to="79160000000")
    ref = MessageRef(outcome.id, outcome.provider_message_id, "79160000000")
    # my-sms.ru documents no final failure state: its -14 (my-sms.md:596) is not final.
    ends = {Status.UNDELIVERED, Status.REJECTED, Status.FAILED}
    final = wait_status(provider, ref, ends | {Status.UNKNOWN} if kind == "mysms" else ends)
    # sms-ka.net documents no "undelivered": its nearest word is REJECTD (sms-ka.md:117).
    assert final == {"smska": Status.REJECTED, "mysms": Status.UNKNOWN}.get(kind, Status.UNDELIVERED)


def test_invalid_number_is_rejected(kind: str, provider_for: Callable[..., Provider]) -> None:
    err = error_of(provider_for(kind), to="79000001234")
    if kind == "smska":  # its -6 also means "not reachable via the API" (sms-ka.md:143)
        assert isinstance(err, FailoverError) and err.code == "-6", err
        return
    assert isinstance(err, RejectedError), err
    assert err.action == Action.REJECT


def test_wrong_password_fails_over(kind: str, provider_for: Callable[..., Provider]) -> None:
    err = error_of(provider_for(kind, password="wrong-password"))
    assert isinstance(err, FailoverError), err


def test_no_funds_fails_over(kind: str, provider_for: Callable[..., Provider], sim: Simulator) -> None:
    sim[kind].state.account.balance = 0.5  # less than one segment
    err = error_of(provider_for(kind))
    assert isinstance(err, FailoverError), err
    assert sim[kind].state.stats()["messages"] == 0


def test_provider_internal_error_retries(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim[kind].state.faults.error_rate = 1.0
    err = error_of(provider_for(kind))
    assert isinstance(err, RetryableError), err


def test_http_500_retries(kind: str, provider_for: Callable[..., Provider], sim: Simulator) -> None:
    sim[kind].state.faults.http500_rate = 1.0
    err = error_of(provider_for(kind))
    assert isinstance(err, RetryableError) and err.http_status == 500
    assert not err.ambiguous


def test_hang_past_timeout_retries_and_is_ambiguous(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    sim[kind].state.faults.hang = True
    provider = provider_for(kind, timeout=0.3)
    started = time.monotonic()
    err = error_of(provider)
    assert time.monotonic() - started < 2.0
    assert isinstance(err, RetryableError)
    # The request went out: the provider may have acted on it.
    assert err.ambiguous


def test_connection_refused_retries_and_is_not_ambiguous(
    kind: str, provider_for: Callable[..., Provider]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    provider = provider_for(kind, base_url=f"http://127.0.0.1:{port}/x/")
    err = error_of(provider)
    assert isinstance(err, RetryableError)
    assert not err.ambiguous


def test_cyrillic_text_arrives_intact(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    text = "Ваш код: 4821. Ёлка, щука, «кавычки» — тире"
    assert send_one(provider_for(kind), text=text).ok
    assert list(sim[kind].state.received) == [f"79161234567|{text}"]


def test_balance_goes_down_per_segment(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for(kind)
    if not provider.HAS_BALANCE:
        with pytest.raises(NotImplementedError):
            provider.balance()
        return
    before = provider.balance().amount
    assert before is not None
    send_one(provider, text="Ы" * 71)  # UCS-2: two parts
    after = provider.balance().amount
    assert after is not None
    # sms-ka prints whole units only (sms-ka.md:81).
    assert before - after == pytest.approx(
        2 * sim[kind].state.account.price, abs=1.0 if kind == "smska" else 0.01
    )


def test_errors_never_show_the_password(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    provider = provider_for(kind, password="Sup3r-Secret-Pass")
    err = error_of(provider)  # the simulator expects another password: auth error
    secret = "Sup3r-Secret-Pass"
    for text in (str(err), repr(err), err.raw or "", str(pickle.loads(pickle.dumps(err)))):
        assert secret not in text
    assert secret not in repr(provider.config)
    assert password_for(kind) not in repr(provider.config)
