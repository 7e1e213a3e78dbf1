"""Adding a provider kind takes one adapter module, one simulator module and one
registry line: here a throwaway kind, "acme", registered from the test tree alone,
goes through configuration, the simulator, the error table, the send pipeline, status
polling, beat's schedule and the generated provider document."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher import api, config, db
from dispatcher.coordination import MemoryCoordinator
from dispatcher.errors import ERROR_CLASS, ProviderError
from dispatcher.providers import make_provider, registry
from dispatcher.providers.docs import render
from dispatcher.schedule import jobs
from dispatcher.sending import SendPipeline
from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import provider_table
from tests.conftest import sms
from tests.support import InlinePolls

# The one registry line a new kind needs.
ACME = registry.Kind("acme", "tests.newkind.acme:Acme", "tests.newkind.acme_sim:AcmeSim", "/v1/")


@pytest.fixture
def acme(tmp_path: Path) -> Iterator[tuple[Simulator, config.Settings]]:
    registry.register(ACME)
    sim = Simulator(base_port=0, kinds=("acme",)).start()
    table = {
        "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "broker_url": "memory://",
        "providers": {"acme": {**provider_table("acme", sim["acme"].base_url, 10), "timeout": 2.0}},
        "pipeline": {"linger": 0.0},
        "polling": {"intervals": [0.1, 0.2]},
    }
    settings = config.parse(table)
    config.set_settings(settings)
    db.dispose_engines()
    try:
        yield sim, settings
    finally:
        db.dispose_engines()
        config.set_settings(None)
        sim.stop()
        registry.unregister("acme")


def test_the_registry_line_is_all_the_configuration_needs(acme: tuple[Simulator, config.Settings]) -> None:
    _, settings = acme
    assert settings.provider("acme").kind == "acme"
    caps = ACME.capabilities
    assert (caps.batch, caps.status_batch, caps.validity, caps.status_queue) == (50, 50, True, False)
    assert [j.key for j in jobs(settings) if "acme" in j.key] == ["poll:acme"]  # no status queue
    doc = render(("acme",))
    assert "| `acme` | acme-sms (test kind) | 50 | 50 | yes | no | no | yes |" in doc
    assert "| `bad_param` | a parameter we sent is invalid | our request (operator) | fail over" in doc


def test_every_error_code_lands_in_its_class(acme: tuple[Simulator, config.Settings]) -> None:
    sim, settings = acme
    provider = make_provider(settings.provider("acme"))
    for code, rule in provider.ERRORS.items():
        sim["acme"].state.faults.error_code = code
        try:
            err = provider.send([sms()])[0].error
        except ProviderError as exc:
            err = exc
        assert type(err) is ERROR_CLASS[rule.action] and err.about == rule.about, code
    assert sim["acme"].state.stats()["messages"] == 0


def test_messages_go_through_the_pipeline_and_are_tracked(acme: tuple[Simulator, config.Settings]) -> None:
    sim, settings = acme
    published: list[Any] = []
    api.use_publisher(lambda items: published.extend(items))
    pipeline = SendPipeline(settings, lambda *a: published.append(a), MemoryCoordinator())
    try:
        ids = api.send_bulk([{"to": f"7916123456{n}", "text": "Ы" * 71} for n in range(5)])
        pipeline.process_many(ids)
        assert sim["acme"].state.stats()["requests"]["send"] == 1  # one batch
        time.sleep(0.7)  # the simulator delivers them
        polls = InlinePolls(settings, pipeline.coordinator)
        try:
            stats = polls.round("acme")
        finally:
            polls.close()
        assert stats.calls == 1 and stats.changed == 5
        for mid in ids:
            message = api.get_message(mid)
            assert message is not None and message["status"] == "delivered"
            attempt = message["attempts"][0]
            assert attempt["parts"] == 2 and attempt["cost"] == pytest.approx(3.0)
    finally:
        pipeline.close()
        api.use_publisher(None)
