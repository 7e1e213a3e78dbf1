"""A provider that hangs, answers 500, or runs out of funds during a steady stream from
a producer process: traffic moves to the next provider within seconds and comes back
after it recovers. Runs on Redis and PostgreSQL of the test's own.

The CI versions break the provider for 6 seconds; ``pytest -m slow tests/faults`` runs
the one-minute outages.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from dispatcher import api
from dispatcher.simulator.core import Simulator
from tests.faults import producer as producer_process
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support import SETTLED, Stack

pytestmark = pytest.mark.faults

RATE = 8.0  # messages a second
OUTAGE_AT = 3.0  # seconds after the first message
SETTLE = 3.0  # what "within seconds" means: from here on every message must have moved

FAULTS = {
    "http500": ({"http500_rate": 1.0}, {}),
    "no_funds": ({"no_funds": True}, {}),
    # A hang leaves the send in doubt; at-least-once lets it move on (marked ambiguous).
    "hang": ({"hang": True, "hang_seconds": 2.0}, {"timeout": 0.5, "delivery_guarantee": "at-least-once"}),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize(
    "outage_for",
    [
        pytest.param(6.0, id="6s"),
        pytest.param(60.0, id="1min", marks=[pytest.mark.slow, pytest.mark.timeout(600)]),
    ],
)
def test_traffic_moves_and_comes_back(
    own: tuple[Stack, OwnRedis, OwnPostgres], sim: Simulator, tmp_path: Path, fault: str, outage_for: float
) -> None:
    stack, _, _ = own
    faults, overrides = FAULTS[fault]
    stack.configure(providers=["mysms", "prostor"], mysms={"max_retries": 1, **overrides},
                    pipeline={"breaker_cooldown": 2.0, "breaker_threshold": 3})  # fmt: skip
    stack.start_worker(concurrency=4, beat=True)
    run_for = OUTAGE_AT + outage_for + 6.0
    out = tmp_path / "ids.txt"
    producer = producer_process.start(stack.config_path, RATE, run_for + 2.0, out)
    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.time()
        outage_on = outage_off = False
        while producer.poll() is None:
            t = time.time() - t0
            if not outage_on and t >= OUTAGE_AT:
                sim["mysms"].state.faults.update(faults)
                outage_on = True
            if not outage_off and t >= OUTAGE_AT + outage_for:
                sim["mysms"].state.reset_faults()
                outage_off = True
            time.sleep(0.05)
    finally:
        if producer.poll() is None:
            producer.kill()
        sim["mysms"].state.reset_faults()
    assert producer.returncode == 0, out.with_suffix(".log").read_text()[-2000:]
    sent = [(t - t0, mid) for t, mid in producer_process.read(out)]
    ids = [mid for _, mid in sent]
    statuses = stack.wait_until(ids, SETTLED, timeout=90)
    lost = [mid for mid in ids if statuses.get(mid) not in SETTLED]
    messages = {mid: api.get_message(mid) or {} for mid in ids}
    providers = {mid: m.get("provider") for mid, m in messages.items()}
    before = [providers[mid] for t, mid in sent if t < OUTAGE_AT - 0.5]
    # Queued in the last second of the outage, a message may be picked up after it ended.
    during = [providers[mid] for t, mid in sent if OUTAGE_AT + SETTLE <= t < OUTAGE_AT + outage_for - 1.0]
    after = [providers[mid] for t, mid in sent if t >= OUTAGE_AT + outage_for + SETTLE]
    moved = [t for t, mid in sent if t >= OUTAGE_AT and providers[mid] == "prostor"]
    back = [t for t, mid in sent if t >= OUTAGE_AT + outage_for and providers[mid] == "mysms"]
    # What reached a phone, across both providers: a hung call that the provider
    # completed after we gave up, then sent again via prostor, counts twice.
    received: Counter[str] = Counter()
    for kind in ("mysms", "prostor"):
        received.update(sim[kind].state.stats()["received"])
    figures = {
        "messages": len(ids), "lost": len(lost),
        "duplicates": sum(n - 1 for n in received.values() if n > 1),
        "moved after s": round(min(moved) - OUTAGE_AT, 1) if moved else None,
        "back after s": round(min(back) - OUTAGE_AT - outage_for, 1) if back else None,
        "during on prostor": f"{during.count('prostor')}/{len(during)}",
    }  # fmt: skip
    print(f"\nFAULT mysms {fault} for {outage_for:.0f}s: {figures}")
    assert not lost, lost[:10]
    assert set(before) == {"mysms"}, before
    assert during and set(during) == {"prostor"}, during  # moved within SETTLE seconds
    assert after and after.count("mysms") >= len(after) // 2, after  # and came back
    if fault != "hang":  # a 500 or a refusal is a clear answer: nothing went twice
        assert figures["duplicates"] == 0
    # At-least-once may send a message in doubt twice, never silently: each one that
    # went twice has its ambiguous attempt in the ledger.
    for message in messages.values():
        if received[f"{message['to']}|{message['text']}"] > 1:
            assert "ambiguous" in [a["outcome"] for a in message["attempts"]], message["attempts"]
