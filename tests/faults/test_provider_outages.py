"""A provider that hangs, answers 500, or runs out of funds during a steady stream:
traffic moves to the next provider within seconds and comes back after it recovers."""

from __future__ import annotations

import time
from typing import Any

import pytest

from dispatcher import api
from dispatcher.simulator.core import Simulator
from tests.support import SETTLED, Stack

pytestmark = pytest.mark.faults

OUTAGE_AT, OUTAGE_FOR, RUN_FOR = 2.0, 4.0, 12.0


@pytest.mark.parametrize(
    ("fault", "overrides"),
    [
        ({"http500_rate": 1.0}, {}),
        ({"no_funds": True}, {}),
        # A hang leaves the send in doubt; at-least-once lets it move on (marked ambiguous).
        ({"hang": True, "hang_seconds": 2.0}, {"timeout": 0.5, "delivery_guarantee": "at-least-once"}),
    ],
    ids=["http500", "no_funds", "hang"],
)
def test_traffic_moves_and_comes_back(stack: Stack, sim: Simulator, fault: dict[str, Any],
                                      overrides: dict[str, Any]) -> None:  # fmt: skip
    stack.configure(providers=["mysms", "prostor"], mysms={"max_retries": 1, **overrides},
                    pipeline={"breaker_cooldown": 2.0, "breaker_threshold": 3})  # fmt: skip
    stack.start_worker(concurrency=4)
    started = time.monotonic()
    sent: list[tuple[float, str]] = []
    outage_on = outage_off = False
    n = 0
    while time.monotonic() - started < RUN_FOR:
        t = time.monotonic() - started
        if not outage_on and t >= OUTAGE_AT:
            sim["mysms"].state.faults.update(fault)
            outage_on = True
        if not outage_off and t >= OUTAGE_AT + OUTAGE_FOR:
            sim["mysms"].state.reset_faults()
            outage_off = True
        n += 1
        sent.append((t, api.send_sms(f"7916{n:07d}", f"stream {n}")))
        time.sleep(0.1)
    ids = [mid for _, mid in sent]
    statuses = stack.wait_until(ids, SETTLED, timeout=60)
    assert all(s in SETTLED for s in statuses.values()) and len(statuses) == len(ids)
    providers = {mid: (api.get_message(mid) or {}).get("provider") for mid in ids}
    during = [providers[mid] for t, mid in sent if OUTAGE_AT + 3.0 <= t < OUTAGE_AT + OUTAGE_FOR]
    after = [providers[mid] for t, mid in sent if t >= OUTAGE_AT + OUTAGE_FOR + 3.0]
    before = [providers[mid] for t, mid in sent if t < OUTAGE_AT - 0.5]
    assert set(before) == {"mysms"}
    assert during and set(during) == {"prostor"}, during  # moved within 3 s
    assert after and after.count("mysms") >= len(after) // 2, after  # and came back
    first_moved = min(t for t, mid in sent if t >= OUTAGE_AT and providers[mid] == "prostor")
    duplicates = sim["prostor"].state.stats()["duplicates"]
    print(f"\nFAULT mysms {next(iter(fault))}: {len(ids)} messages, moved {first_moved - OUTAGE_AT:.1f}s"
          f" after the outage began, lost 0, duplicates {duplicates}")  # fmt: skip
