"""Fault injection: a real worker pool against the simulator and against Redis and
PostgreSQL instances of the test's own, which the test kills and restarts. Each
scenario ends by checking the ledger against what the simulator received.

Run alone with `pytest -m faults`; these short versions also run in CI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dispatcher import db
from dispatcher.simulator.core import Simulator
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support import SETTLED, TAKEN, Stack, run_cli

pytestmark = pytest.mark.faults


def enqueue(stack: Stack, n: int, tmp: Path, providers: tuple[str, ...] = ()) -> list[str]:
    """Publish from a producer process of its own, as an application would; with
    ``providers``, message i is pinned to providers[i % len(providers)]."""
    csv = tmp / "load.csv"
    if providers:
        lines = [f"7916{i:07d},fault {i},{providers[i % len(providers)]}\n" for i in range(1, n + 1)]
        csv.write_text("to,text,provider\n" + "".join(lines), encoding="utf-8")
    else:
        lines = [f"7916{i:07d},fault {i}\n" for i in range(1, n + 1)]
        csv.write_text("to,text\n" + "".join(lines), encoding="utf-8")
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


def in_flight(provider: str) -> set[str]:
    """Messages with a call to ``provider`` still open: taken right after a kill, these
    include every call the dead worker had in flight (the sweeper settles them later)."""
    from sqlalchemy import select

    from dispatcher.models import ATTEMPTS

    with db.session_scope() as s:
        query = select(ATTEMPTS.c.message_id).where(
            ATTEMPTS.c.provider == provider, ATTEMPTS.c.finished_at.is_(None)
        )
        return set(s.execute(query).scalars())


def attempt_outcomes() -> dict[str, int]:
    from sqlalchemy import func, select

    from dispatcher.models import ATTEMPTS

    with db.session_scope() as s:
        rows = s.execute(select(ATTEMPTS.c.outcome, func.count()).group_by(ATTEMPTS.c.outcome)).all()
    return {str(outcome): int(n) for outcome, n in rows}


@pytest.mark.parametrize(
    ("size", "kill_every"),
    [
        pytest.param(1000, 2.0, id="1k"),
        pytest.param(5000, 3.0, id="5k", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_kill_9_every_few_seconds(
    own: tuple[Stack, OwnRedis, OwnPostgres], sim: Simulator, tmp_path: Path, size: int, kill_every: float
) -> None:
    """A worker is killed with SIGKILL every few seconds and a new one started while the
    run goes on. Half the messages go to SMStele (we can ask it by our own id), half to
    my-sms.ru set to at-least-once (we cannot: a call in doubt is sent again). Nothing
    is lost; SMStele gets nothing twice; my-sms.ru gets at most what was in flight at
    the kills, and every message it got twice is marked ambiguous in the ledger."""
    stack, _, _ = own
    stack.configure(
        providers=["smstele", "mysms"],
        pipeline={"publish_batch": 50, "group_size": 5},
        mysms={"delivery_guarantee": "at-least-once"},
    )
    # Calls that take a while, so that kills land in the middle of some and the run
    # outlasts several kills (groups of 5 concurrent SMStele calls, batches of 50).
    sim["smstele"].state.faults.latency_ms = 300
    sim["mysms"].state.faults.latency_ms = 700  # one batch call per chunk of 50, within the 1 s timeout
    # Beat, the sweeper and the pollers live in a process that is never killed; the two
    # send workers are killed in turn, each time while a my-sms.ru call is in flight
    # if one comes within a second (the worst moment for a provider we cannot ask).
    stack.start_worker(queues="sms.control,sms.poll", concurrency=1, beat=True)
    senders = [stack.start_worker(queues="sms.high,sms.bulk", concurrency=2) for _ in range(2)]
    started = time.monotonic()
    ids = enqueue(stack, size, tmp_path, providers=("smstele", "mysms"))
    kills, doubt = 0, set[str]()
    deadline = started + 600
    while time.monotonic() < deadline:
        time.sleep(kill_every)
        statuses = stack.statuses(ids)
        if sum(s == "queued" for s in statuses.values()) < 50:
            break  # the run is nearly over: let the survivors finish it
        aim = time.monotonic() + 1.0
        while not in_flight("mysms") and time.monotonic() < aim:
            time.sleep(0.02)
        victim = senders.pop(0)
        stack.kill_worker(victim)
        doubt |= in_flight("mysms")
        kills += 1
        senders.append(stack.start_worker(queues="sms.high,sms.bulk", concurrency=2))
    statuses = stack.wait_until(ids, SETTLED, timeout=180)
    received = {**sim["smstele"].state.stats()["received"], **sim["mysms"].state.stats()["received"]}
    lost = [mid for mid in ids if statuses.get(mid) not in SETTLED]
    twice = sim["mysms"].state.stats()["duplicates"]
    figures = {
        "messages": len(ids), "kills": kills, "lost": len(lost),
        "duplicates smstele": sim["smstele"].state.stats()["duplicates"], "duplicates mysms": twice,
        "in flight at kills": len(doubt), "unknown": sum(s == "unknown" for s in statuses.values()),
        **{f"attempts {k}": n for k, n in attempt_outcomes().items() if k in ("reconciled", "ambiguous")},
        "seconds": round(time.monotonic() - started, 1),
    }  # fmt: skip
    print(f"\nFAULT kill -9 every {kill_every:.0f}s: {figures}")
    assert kills >= 1, "the run ended before the first kill: nothing was tested"
    assert not lost, lost[:10]
    assert figures["duplicates smstele"] == 0
    assert twice <= len(doubt)
    # Every message the providers got is in the ledger as taken, and none that they
    # did not get is (nothing invented, nothing forgotten).
    from dispatcher import api

    for i, mid in enumerate(ids, start=1):
        got = received.get(f"7916{i:07d}|fault {i}", 0)
        assert (statuses[mid] in TAKEN) == (got > 0), (mid, statuses[mid], got)
        if got > 1:
            assert mid in doubt, mid  # sent twice only if a kill caught it in flight
            message = api.get_message(mid)
            assert message is not None
            outcomes = [a["outcome"] for a in message["attempts"]]
            assert "ambiguous" in outcomes, (mid, outcomes)
