"""The benchmark's ``tracking`` part: how fast the ledger learns what became of a burst.

    .venv/bin/python ops/bench.py --parts tracking [--tracking-kinds smska,sms1000,smstele]
        [--tracking-latencies 0,50] [--tracking-messages 20000] [--tracking-probe 3000]

Per provider kind that is asked one message per status call (the kinds whose polling costs
the most) and per status latency (``/_sim/faults`` ``status_latency_ms``: sends answer at
once, status calls after that long), with the simulator delivering every message
``--tracking-final-after`` (1.5 s) after accepting it:

- a send pool (``--load-pool``, queues sms.high and sms.bulk) and a poll pool
  (``--poll-pool``, queues sms.poll and sms.control, with beat) of our workers;
- ``send_bulk`` of N messages; the ledger sampled every second until no message is
  queued, sending, accepted or sent (or ``--tracking-timeout``);
- figures: seconds from the last acceptance (the ledger's newest ``accepted_at``) until
  every message is final; status calls the simulator answered, per second over that
  tracking window and per message; the poll pool's CPU per status call (utime+stime of
  its processes, beat included); the oldest due poll's age (the poll lag) at its worst;
  messages never asked when the window closed; end statuses.

``--tracking-probe 3000`` runs the issue's case first: 3,000 to sms-ka.net at 0 ms.
``--tracking-queue 50000`` ends with prostor-sms.ru, whose statuses come through its status
queue (three changes a message: accepted, sent, delivered): accepted messages a second,
the queue's length at its worst (sampled every 5 s) and the time to all final.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy import func, select

if TYPE_CHECKING:
    from ops.bench import Bench, PoolSpec

TRACKED = ("queued", "sending", "accepted", "sent")  # not final yet
FINAL = ("delivered", "undelivered", "expired", "rejected", "failed")


def poll_lag(bench: Bench) -> tuple[float, int, int]:
    """The age of the oldest due poll in seconds (0 when none is due), how many polls are
    due, and how many messages in flight were never asked."""
    from dispatcher.models import MESSAGES as M

    now = datetime.now(UTC)
    waiting = M.c.status.in_(["accepted", "sent"]) & M.c.provider_message_id.is_not(None)
    with bench.ledger.engine.connect() as conn:
        oldest, due = conn.execute(
            select(func.min(M.c.next_poll_at), func.count()).where(waiting, M.c.next_poll_at <= now)
        ).one()
        unasked = conn.execute(select(func.count()).where(waiting, M.c.polls == 0)).scalar_one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return (max(0.0, (now - oldest).total_seconds()) if oldest else 0.0), int(due), int(unasked)


def last_accepted(bench: Bench) -> datetime | None:
    from dispatcher.models import MESSAGES as M

    with bench.ledger.engine.connect() as conn:
        found = conn.execute(select(func.max(M.c.accepted_at))).scalar_one()
    if found is not None and found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    return found  # type: ignore[no-any-return]


def tracking(bench: Bench, send_spec: PoolSpec, poll_spec: PoolSpec) -> None:
    a = bench.args
    runs: list[tuple[str, float, int]] = []
    if a.tracking_probe:
        runs.append(("smska", 0.0, int(a.tracking_probe * a.scale)))
    runs += [
        (kind, latency, int(a.tracking_messages * a.scale))
        for kind in a.tracking_kinds
        for latency in a.tracking_latencies
    ]
    for kind, latency, n in runs:
        if n > 0:
            burst(bench, send_spec, poll_spec, kind, latency, n)
    if a.tracking_queue > 0:
        burst(bench, send_spec, poll_spec, "prostor", 0.0, int(a.tracking_queue * a.scale))


def burst(bench: Bench, send_spec: PoolSpec, poll_spec: PoolSpec, kind: str, latency: float, n: int) -> None:
    from dispatcher import api
    from ops.bench import Workers, note

    a = bench.args
    print(
        f"\n== tracking: {n} to {kind}, status calls at {latency:g} ms, delivered "
        f"{a.tracking_final_after:g} s after acceptance; send {send_spec.label}, poll {poll_spec.label}",
        flush=True,
    )
    bench.use_config(bench.write_config("tracking", tracking=True))
    client = redis.Redis.from_url(bench_broker())
    client.flushdb()
    bench.ledger.truncate()
    bench.sim.prepare(kind, 0.0, bench.notes)
    bench.sim.control(kind, "faults", {"status_latency_ms": latency})
    bench.sim.control(
        kind, "timing", {"sent_after": a.tracking_final_after / 3, "final_after": a.tracking_final_after}
    )
    sender = bench.ours_workers(send_spec)
    from workers.app import app

    assert bench.ours_config is not None
    import os

    env = {**os.environ, "SMSDISPATCH_CONFIG": str(bench.ours_config)}
    schedule = bench.tmp / f"beat-{uuid.uuid4().hex[:6]}"
    poller = Workers("poll", "workers.app", app, ("sms.poll", "sms.control"), poll_spec, env, bench.tmp,
                     a.loglevel, schedule)  # fmt: skip
    name = bench.sim.provider(kind)[0]
    cell: dict[str, Any] = {
        "kind": kind, "status_latency_ms": latency, "n": n, "send_pool": send_spec.label,
        "poll_pool": poll_spec.label, "final_after_s": a.tracking_final_after,
    }  # fmt: skip
    samples: list[dict[str, Any]] = []
    try:
        sender.start()
        poller.start()
        before = bench.sim.stats(kind)
        calls0 = _status_calls(bench, kind)
        cpu0, send_cpu0 = poller.cpu(), sender.cpu()
        started = time.monotonic()
        messages = bench.messages(n, kind, uuid.uuid4().hex[:6], prefix="7917")
        for m in messages:
            m["provider"] = name
            if m["to"].endswith(("0000", "9999")):
                # The simulator never delivers these (core.py: undelivered, never final):
                # every message here is to end delivered.
                m["to"] = m["to"][:-1] + "1"
        for i in range(0, n, a.bulk_chunk):
            api.send_bulk(messages[i : i + a.bulk_chunk])
        stored = time.monotonic() - started
        all_final_at: datetime | None = None
        next_sample = 0.0
        while (t := time.monotonic() - started) < a.tracking_timeout:
            if t >= next_sample:
                statuses = bench.ledger.statuses()
                lag, due, unasked = poll_lag(bench)
                left = sum(statuses.get(s, 0) for s in TRACKED)
                samples.append({"t": round(t, 1), "in_flight": left, "sending": statuses.get("queued", 0)
                                + statuses.get("sending", 0), "poll_lag_s": round(lag, 1), "due": due,
                                "unasked": unasked})  # fmt: skip
                if kind == "prostor" and int(t) % 5 == 0:
                    samples[-1]["queued_statuses"] = _queued(bench)
                if int(t) % 5 == 0:
                    print(f"   t={t:6.1f}s not final {left:6d}, due {due:6d} (oldest {lag:6.1f} s), "
                          f"never asked {unasked:6d}", flush=True)  # fmt: skip
                if left == 0:
                    all_final_at = datetime.now(UTC)
                    break
                next_sample += 1.0
            time.sleep(0.05)
        wall = time.monotonic() - started
        cpu, send_cpu = poller.cpu() - cpu0, sender.cpu() - send_cpu0
        calls = _status_calls(bench, kind) - calls0
        accepted_last = last_accepted(bench)
        first_accept = _first_accepted(bench)
        statuses = bench.ledger.statuses()
        window = None
        if accepted_last and first_accept:
            end = all_final_at or datetime.now(UTC)
            window = (end - first_accept).total_seconds()
        queued = [x["queued_statuses"] for x in samples if "queued_statuses" in x]
        if accepted_last and first_accept and accepted_last > first_accept:
            cell["accepted_per_s"] = round(n / (accepted_last - first_accept).total_seconds(), 1)
        if queued:
            cell["max_queued_statuses"] = max(queued)
        cell.update(
            stored_s=round(stored, 2),
            sends_s=round((accepted_last - first_accept).total_seconds(), 2)
            if accepted_last and first_accept else None,
            final_after_last_accept_s=round((all_final_at - accepted_last).total_seconds(), 2)
            if all_final_at and accepted_last else None,
            all_final=all_final_at is not None,
            status_calls=calls,
            status_calls_per_msg=round(calls / n, 3),
            status_calls_per_s=round(calls / window, 1) if window else None,
            poll_cpu_ms_per_call=round(cpu * 1000 / calls, 3) if calls else None,
            poll_cpu_s=round(cpu, 2),
            send_cpu_ms_per_msg=round(send_cpu * 1000 / n, 3),
            wall_s=round(wall, 1),
            max_poll_lag_s=max((s["poll_lag_s"] for s in samples), default=0.0),
            never_asked_at_end=samples[-1]["unasked"] if samples else None,
            statuses=statuses,
            simulator_before=before,
            samples=samples,
        )  # fmt: skip
        if not cell["all_final"]:
            note(
                bench.notes, f"tracking {kind} {latency:g} ms: not all final within {a.tracking_timeout:g} s"
            )
        print(
            f"   sends {cell['sends_s']} s; all final {cell['final_after_last_accept_s']} s after the last "
            f"acceptance; {calls} status calls ({cell['status_calls_per_s']}/s, "
            f"{cell['status_calls_per_msg']} per message), poll pool {cell['poll_cpu_ms_per_call']} CPU ms "
            f"per call (send pool {cell['send_cpu_ms_per_msg']} per message); worst poll lag "
            f"{cell['max_poll_lag_s']} s",
            flush=True,
        )
    finally:
        sender.stop()
        poller.stop()
        client.flushdb()
        bench.results.setdefault("tracking", []).append(cell)
        bench.log_problems(f"tracking {kind} {latency:g}", sender, poller)
        bench.save()


def bench_broker() -> str:
    from ops.bench import OURS_BROKER

    return OURS_BROKER


def _status_calls(bench: Bench, kind: str) -> int:
    import requests

    from ops.bench import urlsplit

    parts = urlsplit(bench.sim.provider(kind)[1]["base_url"])
    doc = requests.post(f"{parts.scheme}://{parts.netloc}/_sim/stats", timeout=60).json()
    return int(doc.get("status_calls", 0))


def _queued(bench: Bench) -> int:
    """Status changes waiting in prostor's queue."""
    import requests

    from ops.bench import urlsplit

    parts = urlsplit(bench.sim.provider("prostor")[1]["base_url"])
    doc = requests.post(f"{parts.scheme}://{parts.netloc}/_sim/stats", timeout=60).json()
    return int(sum(doc.get("queued_statuses", {}).values()))


def _first_accepted(bench: Bench) -> datetime | None:
    from dispatcher.models import MESSAGES as M

    with bench.ledger.engine.connect() as conn:
        found = conn.execute(select(func.min(M.c.accepted_at))).scalar_one()
    if found is not None and found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    return found  # type: ignore[no-any-return]


def print_tracking(results: dict[str, Any]) -> None:
    for c in results.get("tracking") or []:
        print(
            f"tracking {c['n']} to {c['kind']} (status at {c['status_latency_ms']:g} ms, "
            f"send {c['send_pool']}, poll {c['poll_pool']}): all final "
            f"{c.get('final_after_last_accept_s')} s after the last acceptance; "
            f"{c.get('status_calls_per_s')} status calls/s, {c.get('status_calls_per_msg')} per message, "
            f"{c.get('poll_cpu_ms_per_call')} CPU ms per call; worst poll lag {c.get('max_poll_lag_s')} s"
        )
