"""A send that takes several calls and fails part way keeps what was answered."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dispatcher.errors import RetryableError
from dispatcher.providers import adapter_class
from dispatcher.providers.base import Provider
from dispatcher.simulator.core import Simulator
from tests.conftest import KINDS, sms

BATCHING = [k for k in KINDS if adapter_class(k).MAX_BATCH > 1]


@pytest.mark.parametrize("kind", BATCHING)
def test_a_failed_call_keeps_the_answered_calls_of_the_same_send(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    """Six messages in calls of two; the provider falls over after the first call.
    The first two went out and come back accepted (failing them over would send them
    twice), the next two carry the call's error, and the last two, whose call was
    never made, come back not sent (a retry, never in doubt)."""
    sim[kind].state.faults.fail_after = 1
    provider = provider_for(kind, batch_size=2)
    outcomes = provider.send([sms(to=f"7916123456{n}") for n in range(6)])
    assert [o.ok for o in outcomes] == [True, True, False, False, False, False]
    assert all(o.error is not None and o.error.http_status == 500 for o in outcomes[2:4])
    assert sim[kind].state.stats()["messages"] == 2
    unsent = outcomes[4].error
    assert isinstance(unsent, RetryableError) and not unsent.ambiguous and unsent.http_status is None


@pytest.mark.parametrize("kind", BATCHING)
def test_a_first_call_in_doubt_leaves_the_calls_not_made_not_sent(
    kind: str, provider_for: Callable[..., Provider], sim: Simulator
) -> None:
    """The first of two calls gets no reply in time: its messages are in doubt (they
    may have gone out), but the second call was never made, and its messages must
    not be read as in doubt (at-most-once would give them up as unknown)."""
    sim[kind].state.faults.update({"hang": True, "hang_seconds": 2.0})
    provider = provider_for(kind, batch_size=2, timeout=0.5)
    outcomes = provider.send([sms(to=f"7916123456{n}") for n in range(4)])
    assert [o.error is not None and o.error.ambiguous for o in outcomes] == [True, True, False, False]
    assert all(o.error is not None and "not sent" in str(o.error) for o in outcomes[2:])
    assert sum(sim[kind].state.stats()["requests"].values()) == 1
