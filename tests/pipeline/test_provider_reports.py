"""What a provider reports back is kept and shown (issue 11, items 5 and 6 and the
operator's side of 7): parts and cost per attempt, summed per provider; credit counts
as money to spend; a refusal of our request or account flags the provider."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher import api, config
from dispatcher.coordination import coordinator_for
from dispatcher.ops import provider_rows
from dispatcher.sending import SendPipeline
from dispatcher.simulator.core import Simulator
from dispatcher.tracking import read_balances
from tests.host_commands import STATUS, host_argv
from tests.support import REDIS_URL, Stack


@pytest.fixture
def pipeline(stack: Stack) -> Iterator[SendPipeline]:
    """The send path in this process, on the real ledger, Redis and simulator."""
    published: list[Any] = []
    api.use_publisher(lambda items: published.extend(items))
    p = SendPipeline(config.get_settings(), lambda *a: published.append(a), coordinator_for(REDIS_URL))
    yield p
    p.close()
    api.use_publisher(None)


@pytest.fixture
def prostor(stack: Stack) -> config.Settings:
    return stack.configure(providers=["prostor"])


def test_parts_and_cost_are_stored_shown_and_summed(
    prostor: config.Settings, pipeline: SendPipeline, sim: Simulator, stack: Stack
) -> None:
    price = sim["prostor"].state.account.price
    ids = api.send_bulk([{"to": "79161234567", "text": "Ы" * 71}, {"to": "79161234568", "text": "short"}])
    pipeline.process_many(ids)
    long, short = (api.get_message(mid) for mid in ids)
    assert long is not None and short is not None
    assert (long["attempts"][0]["parts"], long["attempts"][0]["cost"]) == (2, pytest.approx(2 * price))
    assert (short["attempts"][0]["parts"], short["cost"]) == (1, pytest.approx(price))
    row = next(r for r in provider_rows(prostor) if r["provider"] == "prostor")
    assert (row["sent_24h"], row["parts_24h"], row["cost_24h"]) == (2, 3, pytest.approx(3 * price))
    env = {"SMSDISPATCH_CONFIG": str(stack.config_path)}
    shown = subprocess.run(host_argv(STATUS, ids[0]), env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "parts" in shown.stdout and f"cost reported by the provider: {2 * price:.2f}" in shown.stdout


def test_credit_is_money_to_spend(stack: Stack, sim: Simulator) -> None:
    """prostor.md's example account has balance 0 and credit 1,000,000, and can send."""
    settings = stack.configure(providers=["prostor", "mysms"], prostor={"balance_threshold": 100.0})
    sim["prostor"].state.account.balance = 0.0
    sim["prostor"].state.set_quirks({"credit": 1_000_000.0})
    rows = {r["provider"]: r for r in read_balances(settings, coordinator_for(REDIS_URL))}
    assert rows["prostor"]["amount"] == 0.0 and rows["prostor"]["credit"] == 1_000_000.0
    assert not rows["prostor"]["low"]  # routing keeps it
    gate = coordinator_for(REDIS_URL).gate("prostor", 5.0, 100.0)
    assert gate.decision != 3  # not LOW_BALANCE
    shown = next(r for r in provider_rows(settings) if r["provider"] == "prostor")
    assert shown["credit"] == 1_000_000.0
    sim["prostor"].state.set_quirks({"credit": 0.0})
    rows = {r["provider"]: r for r in read_balances(settings, coordinator_for(REDIS_URL))}
    assert rows["prostor"]["low"]  # nothing to spend: skipped until topped up


def test_an_account_refusal_fails_over_and_flags_the_provider(stack: Stack, sim: Simulator) -> None:
    settings = stack.configure(providers=["mysms", "prostor"])
    published: list[Any] = []
    api.use_publisher(lambda items: published.extend(items))
    p = SendPipeline(settings, lambda *a: published.append(a), coordinator_for(REDIS_URL))
    try:
        sim["mysms"].state.faults.auth_fail = True
        mid = api.send_sms("79161234567", "to whoever can take it")
        p.process(mid)
        message = api.get_message(mid)
        assert message is not None and message["provider"] == "prostor"  # failed over, not rejected
        row = next(r for r in provider_rows(settings) if r["provider"] == "mysms")
        assert row["attention"] and "account" in row["attention"]
        assert next(r for r in provider_rows(settings) if r["provider"] == "prostor")["attention"] is None
    finally:
        p.close()
        api.use_publisher(None)


def test_our_ttl_goes_to_a_provider_that_takes_a_validity(stack: Stack, sim: Simulator) -> None:
    """SMStele takes `validity` (smstele.md:70): a message sent with a 300 s TTL asks
    the provider to give up within those 300 s too, counted from the send."""
    settings = stack.configure(providers=["smstele"])
    published: list[Any] = []
    api.use_publisher(lambda items: published.extend(items))
    p = SendPipeline(settings, lambda *a: published.append(a), coordinator_for(REDIS_URL))
    try:
        mid = api.send_sms("79161234567", "valid for five minutes", ttl=300)
        p.process(mid)
        assert (api.get_message(mid) or {})["status"] == "accepted"
        [taken] = sim["smstele"].state.messages.values()
        assert taken.lifetime_ends is not None  # the validity the request asked for
        lifetime = taken.lifetime_ends - taken.created
        assert 290 <= lifetime <= 300  # what was left of the TTL, never more
    finally:
        p.close()
        api.use_publisher(None)
