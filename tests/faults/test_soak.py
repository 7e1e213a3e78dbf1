"""Soak: a steady load for minutes through a real worker pool and beat, on Redis and
PostgreSQL instances of the test's own, with the workers' memory, the queues, Redis'
memory and the ledger's backlog sampled as it runs. None of them may keep growing.

The CI version runs for under a minute; ``pytest -m slow tests/faults`` runs the
five-minute one.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dispatcher import db
from dispatcher.models import MESSAGES
from dispatcher.simulator.core import Simulator
from tests.faults import producer as producer_process
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.support import SETTLED, Stack

pytestmark = pytest.mark.faults

RATE = 40.0  # messages a second, about a third of what this pool sends on 2 cores
SAMPLE_EVERY = 2.0


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in a process group (a worker and its pool)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Field 5 of /proc/PID/stat is the process group; the name (field 2) may hold
            # spaces but is parenthesised, so split after its closing parenthesis.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # the process ended while we looked
    return total / 1024.0


def count(*statuses: str) -> int:
    with db.session_scope() as s:
        query = select(func.count()).select_from(MESSAGES).where(MESSAGES.c.status.in_(statuses))
        return int(s.execute(query).scalar_one())


def grows(series: list[float], slack: float) -> bool:
    """Whether the last quarter of a series sits above its second quarter by more than
    ``slack`` (the first quarter is warm-up: imports, pools, caches filling)."""
    q = max(1, len(series) // 4)
    return statistics.median(series[-q:]) > statistics.median(series[q : 2 * q]) + slack


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(45.0, id="45s"),
        pytest.param(300.0, id="5min", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_soak_memory_and_queues_stay_bounded(
    own: tuple[Stack, OwnRedis, OwnPostgres],
    sim: Simulator,
    tmp_path: Path,
    seconds: float,
) -> None:
    stack, _, _ = own
    stack.configure(providers=["prostor", "mysms", "smstele"], pipeline={"publish_batch": 10})
    for kind in ("prostor", "mysms", "smstele"):
        sim[kind].state.faults.latency_ms = 20
    workers = [stack.start_worker(concurrency=2, beat=True), stack.start_worker(concurrency=2)]
    ids_file = tmp_path / "ids.txt"
    producer = producer_process.start(stack.config_path, RATE, seconds, ids_file)
    samples: list[dict[str, float]] = []
    started = time.monotonic()
    try:
        while producer.poll() is None:
            time.sleep(SAMPLE_EVERY)
            depth = sum(int(stack.redis.llen(q)) for q in ("sms.high", "sms.bulk", "sms.poll", "sms.control"))
            info = stack.redis.info("memory")
            samples.append({
                "t": time.monotonic() - started,
                "rss": sum(group_rss_mb(w.pid) for w in workers),
                "queue": float(depth),
                "redis_mb": int(info["used_memory"]) / 2**20,
                "backlog": float(count("queued", "sending")),
                "tracking": float(count("accepted", "sent")),
            })  # fmt: skip
    finally:
        if producer.poll() is None:
            producer.kill()
    assert producer.returncode == 0, ids_file.with_suffix(".log").read_text()[-2000:]
    ids = [mid for _, mid in producer_process.read(ids_file)]
    statuses = stack.wait_until(ids, SETTLED, timeout=60)
    lost = sum(1 for mid in ids if statuses.get(mid) not in SETTLED)
    rss = [s["rss"] for s in samples]
    figures = {
        "messages": len(ids),
        "seconds": round(seconds),
        "rate": round(len(ids) / seconds, 1),
        "lost": lost,
        "rss_mb_first_last": (round(rss[len(rss) // 4]), round(rss[-1])),
        "queue_max": int(max(s["queue"] for s in samples)),
        "backlog_max": int(max(s["backlog"] for s in samples)),
        "tracking_max": int(max(s["tracking"] for s in samples)),
        "redis_mb_first_last": (round(samples[len(samples) // 4]["redis_mb"], 1),
                                round(samples[-1]["redis_mb"], 1)),
    }  # fmt: skip
    print(f"\nFAULT soak {seconds:.0f}s: {figures}")
    assert lost == 0
    assert len(ids) >= RATE * seconds * 0.9, "the producer fell behind its own rate"
    # The pool keeps up: the broker queue and the send backlog stay within a few
    # seconds' worth of messages (a sample may catch a poll burst), never climbing.
    assert figures["queue_max"] <= 2 * RATE and figures["backlog_max"] <= 5 * RATE, samples
    assert not grows([s["backlog"] for s in samples], slack=RATE / 2), samples
    # Tracking holds what the providers have not reported yet, a plateau, not a ramp.
    assert not grows([s["tracking"] for s in samples], slack=RATE * 2), samples
    assert not grows(rss, slack=40.0), samples  # MiB over four worker processes and two parents
    assert not grows([s["redis_mb"] for s in samples], slack=5.0), samples
