"""Shared fixtures: the provider simulator over real HTTP, settings pointing at it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher import config
from dispatcher.errors import ProviderError
from dispatcher.providers import make_provider, registry
from dispatcher.providers.base import OutgoingSms, Provider
from dispatcher.simulator.core import Simulator

# Every simulated kind of the registry: tests parametrize over these, never a hand list.
KINDS = registry.simulated()
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def simulator_session() -> Iterator[Simulator]:
    sim = Simulator(base_port=0).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(simulator_session: Simulator) -> Iterator[Simulator]:
    """The running simulator, clean for each test (faults, messages, counters)."""
    for server in simulator_session.servers.values():
        server.state.reset()
    yield simulator_session
    for server in simulator_session.servers.values():
        server.state.reset()


def sim_table(sim: Simulator, **overrides: Any) -> dict[str, Any]:
    """The simulator's config document with short timeouts for tests."""
    table = sim.settings_table()
    for provider in table["providers"].values():
        provider["timeout"] = 1.0
        provider["connect_timeout"] = 1.0
        provider.update(overrides)
    return table


@pytest.fixture
def provider_for(sim: Simulator) -> Iterator[Callable[..., Provider]]:
    """Build the adapter of one kind against the simulator, with option overrides."""
    made: list[Provider] = []

    def build(kind: str, **overrides: Any) -> Provider:
        table = sim_table(sim)
        table["providers"][kind].update(overrides)
        settings = config.parse(table)
        provider = make_provider(settings.provider(kind))
        made.append(provider)
        return provider

    yield build
    for provider in made:
        provider.close()


def sms(to: str = "79161234567", text: str = "Test message", **kwargs: Any) -> OutgoingSms:
    return OutgoingSms(id=uuid.uuid4().hex, to=to, text=text, **kwargs)


def send_error(provider: Provider, msg: OutgoingSms | None = None) -> ProviderError:
    """The error of sending one message, whether the call raised it or the message's
    outcome carries it."""
    try:
        [outcome] = provider.send([msg or sms()])
    except ProviderError as exc:
        return exc
    assert outcome.error is not None, outcome
    return outcome.error


def fixture_text(kind: str, name: str) -> str:
    return (FIXTURES / kind / name).read_text(encoding="utf-8")
