"""Fault injection: a real worker pool against the simulator and against Redis and
PostgreSQL instances of the test's own, which the test kills and restarts. Each
scenario ends by checking the ledger against what the simulator received.

Run alone with `pytest -m faults`; these short versions also run in CI.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import config, db
from dispatcher.simulator.core import Simulator
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support import SETTLED, Stack, run_cli

pytestmark = pytest.mark.faults


@pytest.fixture
def own(sim: Simulator, tmp_path: Path) -> Iterator[tuple[Stack, OwnRedis, OwnPostgres]]:
    redis_server = OwnRedis(tmp_path).start()
    postgres = OwnPostgres().start()
    stack = Stack(sim, tmp_path, "postgres", redis_url=redis_server.url, db_url=postgres.url)
    try:
        yield stack, redis_server, postgres
    finally:
        stack.stop()
        config.set_settings(None)
        db.dispose_engines()
        redis_server.kill()
        postgres.stop()


def enqueue(stack: Stack, n: int, tmp: Path) -> list[str]:
    """Publish from a producer process of its own, as an application would."""
    csv = tmp / "load.csv"
    csv.write_text(
        "to,text\n" + "".join(f"7916{i:07d},fault {i}\n" for i in range(1, n + 1)), encoding="utf-8"
    )
    result = run_cli(stack.config_path, "bulk", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout)["ids"])


def report(name: str, stack: Stack, sim: Simulator, ids: list[str], started: float) -> dict[str, float]:
    statuses = stack.statuses(ids)
    figures = {
        "messages": len(ids),
        "lost": sum(1 for mid in ids if statuses.get(mid) not in SETTLED),
        "duplicates": sim["prostor"].state.stats()["duplicates"],
        "unknown": sum(1 for s in statuses.values() if s == "unknown"),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nFAULT {name}: {figures}")
    return figures


@pytest.mark.parametrize("broken", ["redis restarted empty", "postgres restarted"])
def test_server_restart_mid_run(
    own: tuple[Stack, OwnRedis, OwnPostgres], sim: Simulator, tmp_path: Path, broken: str
) -> None:
    """Half a second into 400 messages, Redis dies and comes back empty (every task
    and coordination key gone), or PostgreSQL restarts; the workers are not restarted
    and must recover on their own."""
    stack, redis_server, postgres = own
    stack.configure(providers=["prostor"], pipeline={"publish_batch": 20})
    sim["prostor"].state.faults.latency_ms = 50
    stack.start_worker(beat=True)
    started = time.monotonic()
    ids = enqueue(stack, 400, tmp_path)
    time.sleep(0.5)
    if broken.startswith("redis"):
        redis_server.restart_empty()
    else:
        postgres.restart()
    stack.wait_until(ids, SETTLED, timeout=120)
    figures = report(broken, stack, sim, ids, started)
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0
    # Everything the provider took is in the ledger as taken, not left in doubt.
    assert figures["unknown"] == 0
    assert sim["prostor"].state.stats()["messages"] == len(ids)
