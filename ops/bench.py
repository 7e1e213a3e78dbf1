"""The benchmark: smsdispatch against raw Celery on the same machine, in one run.

    .venv/bin/python ops/bench.py [--scale 1.0] [--json bench-results.json]

Needs Redis (127.0.0.1:6379, databases 11 and 12 are flushed) and PostgreSQL (the
`test` database; its smsdispatch tables are dropped and recreated). It measures:

1. the baseline: raw Celery, a no-op task and a task that sleeps 50 ms like one
   provider call, same pool (prefork) and concurrency;
2. our end-to-end rate from ``send_bulk`` to ``accepted`` in a PostgreSQL ledger,
   the simulator at 0 and 50 ms latency, for a per-message provider (sms-ka.net) and
   for prostor with batching;
3. the enqueue rate of ``send_bulk`` and of the HTTP API;
4. the cost of tracking: status calls and seconds per poll cycle with 10,000 and
   100,000 messages in flight;
5. the peak memory of each worker process.

Every figure is printed with its ratio to its baseline and written as JSON. Nothing
here is a test: the numbers are for reading, not asserting.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402

BROKER = "redis://127.0.0.1:6379/11"
BASE_BROKER = "redis://127.0.0.1:6379/12"
PG = os.environ.get("SMSDISPATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CONCURRENCY = 2


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_log(log: Path, needle: bytes, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_bytes():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{log}: {needle!r} not seen: {log.read_text()[-2000:]}")


def peak_rss_mb(pid: int) -> dict[str, float]:
    """VmHWM of a process and its children, in MiB."""
    out: dict[str, float] = {}
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[str(p)] = int(line.split()[1]) / 1024.0
        except FileNotFoundError:
            continue
    return out


def baseline(tmp: Path, n_noop: int, n_sleep: int) -> dict[str, Any]:
    client = redis.Redis.from_url(BASE_BROKER)
    client.flushdb()
    env = {**os.environ, "BENCH_BROKER": BASE_BROKER}
    log = tmp / "baseline.log"
    worker = start([sys.executable, "-m", "celery", "-A", "ops.bench_baseline", "worker", "-Q", "bench",
                    "-c", str(CONCURRENCY), "-P", "prefork", "-l", "info", "--without-gossip",
                    "--without-mingle", "--without-heartbeat"], env, log)  # fmt: skip
    try:
        wait_log(log, b" ready.")
        sys.path.insert(0, str(ROOT))
        os.environ["BENCH_BROKER"] = BASE_BROKER
        from ops import bench_baseline

        rates = {}
        for name, n, args in (("noop", n_noop, ()), ("sleep_50ms", n_sleep, (0.05,))):
            client.set("bench:done", 0)
            started = time.monotonic()
            with bench_baseline.app.producer_or_acquire() as producer:
                for _ in range(n):
                    bench_baseline.app.send_task(f"bench.{name.split('_')[0]}", args=args, producer=producer)
            while int(client.get("bench:done") or 0) < n:
                time.sleep(0.02)
            rates[name] = n / (time.monotonic() - started)
        rates["peak_rss_mb"] = peak_rss_mb(worker.pid)
        return rates
    finally:
        stop(worker)


def reset_pg() -> None:
    engine = create_engine(PG)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS status_events, attempts, messages, balance_readings, "
                          "alembic_version CASCADE"))  # fmt: skip
    engine.dispose()


def ours(tmp: Path, scale: float, results: dict[str, Any]) -> None:
    from dispatcher import api, config, db
    from dispatcher.models import MESSAGES

    redis.Redis.from_url(BROKER).flushdb()
    reset_pg()
    sim_log = tmp / "sim.log"
    sim_conf = tmp / "sim.toml"
    sim = start([sys.executable, "-m", "dispatcher.cli", "simulator", "--base-port", "0",
                 "--write-config", str(sim_conf)], dict(os.environ), sim_log)  # fmt: skip
    workers: list[subprocess.Popen[bytes]] = []
    try:
        wait_log(sim_log, b"config written")
        import tomllib

        table = tomllib.loads(sim_conf.read_text())
        for p in table["providers"].values():
            p["timeout"] = 5.0
            p.pop("status_queue", None)
        table["database_url"] = PG
        table["broker_url"] = BROKER
        table["pipeline"] = {"publish_batch": 200}
        table["polling"] = {"interval": 3600.0}  # tracking is measured on its own below
        table["api"] = {"token": "bench-token"}
        conf = tmp / "smsdispatch.toml"
        conf.write_text(config.to_toml(table), encoding="utf-8")
        os.environ["SMSDISPATCH_CONFIG"] = str(conf)
        settings = config.load(conf, env={})
        config.set_settings(settings)
        from workers import app as worker_app

        worker_app.configure(settings)
        db.upgrade(db.make_engine(PG))
        env = {**os.environ, "SMSDISPATCH_CONFIG": str(conf)}
        log = tmp / "worker.log"
        worker_args = [sys.executable, "-m", "celery", "-A", "workers.app", "worker",
                       "-Q", "sms.high,sms.bulk", "-c", str(CONCURRENCY), "-P", "prefork", "-l", "info",
                       "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        workers.append(start(worker_args, env, log))
        wait_log(log, b" ready.")

        def control(kind: str, **faults: Any) -> None:
            base = table["providers"][kind]["base_url"].split("/", 3)
            requests.post(f"{base[0]}//{base[2]}/_sim/faults", json=faults, timeout=5)

        def run(kind: str, n: int, latency: float) -> float:
            control(kind, latency_ms=latency)
            tag = uuid.uuid4().hex[:6]
            messages = [
                {"to": f"7916{i:07d}", "text": f"{tag} {i}", "provider": kind} for i in range(1, n + 1)
            ]
            started = time.monotonic()
            ids = api.send_bulk(messages)
            with db.session_scope() as s:
                while True:
                    left = s.execute(
                        select(func.count()).select_from(MESSAGES)
                        .where(MESSAGES.c.id.in_(ids), MESSAGES.c.status.in_(["queued", "sending"]))
                    ).scalar_one()  # fmt: skip
                    if left == 0:
                        break
                    s.commit()
                    time.sleep(0.05)
            return n / (time.monotonic() - started)

        results["smska_0ms"] = run("smska", int(600 * scale), 0)
        results["smska_50ms"] = run("smska", int(200 * scale), 50)
        results["prostor_batch_0ms"] = run("prostor", int(6000 * scale), 0)
        results["prostor_batch_50ms"] = run("prostor", int(6000 * scale), 50)
        results["worker_peak_rss_mb"] = peak_rss_mb(workers[0].pid)
        stop(workers.pop())

        # 3. enqueue: send_bulk (ledger + publish), then the HTTP API
        n = int(20000 * scale)
        messages = [{"to": f"7916{i:07d}", "text": f"enqueue {i}"} for i in range(1, n + 1)]
        started = time.monotonic()
        for i in range(0, n, 1000):
            api.send_bulk(messages[i : i + 1000])
        results["send_bulk_enqueue"] = n / (time.monotonic() - started)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        api_proc = start(
            [sys.executable, "-m", "dispatcher.cli", "api", "--port", str(port)], env, tmp / "api.log"
        )
        try:
            url = f"http://127.0.0.1:{port}/v1/messages"
            headers = {"Authorization": "Bearer bench-token"}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    requests.get(url, headers=headers, timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            n = int(10000 * scale)
            session = requests.Session()
            started = time.monotonic()
            for i in range(0, n, 500):
                body = {
                    "messages": [{"to": f"7926{j:07d}", "text": f"http {j}"} for j in range(i + 1, i + 501)]
                }
                session.post(url, json=body, headers=headers, timeout=60).raise_for_status()
            results["http_api_enqueue"] = n / (time.monotonic() - started)
        finally:
            stop(api_proc)

        # 4. tracking: one poll cycle with 10,000 and 100,000 in flight
        results.update(tracking(settings, table, scale))
    finally:
        for w in workers:
            stop(w)
        stop(sim)
        redis.Redis.from_url(BROKER).flushdb()


def tracking(settings: Any, table: dict[str, Any], scale: float) -> dict[str, Any]:
    from dispatcher import db
    from dispatcher.coordination import coordinator_for
    from dispatcher.models import MESSAGES, utcnow
    from dispatcher.providers import make_provider
    from dispatcher.providers.base import OutgoingSms
    from dispatcher.tracking import poll_due

    out: dict[str, Any] = {}
    provider = make_provider(settings.provider("prostor"))
    requests.post(table["providers"]["prostor"]["base_url"].rsplit("/messages", 1)[0] + "/_sim/faults",
                  json={"latency_ms": 0}, timeout=5)  # fmt: skip
    for n in (int(10_000 * scale), int(100_000 * scale)):
        with db.session_scope() as s:
            s.execute(
                MESSAGES.update()
                .where(MESSAGES.c.status.in_(["accepted", "sent"]))
                .values(status="delivered")
            )
        sent = provider.send([OutgoingSms(uuid.uuid4().hex, f"7916{i % 10**7:07d}", "t") for i in range(n)])
        now = utcnow()
        rows = [{"id": o.id, "payload_hash": "x", "to": "79160000001", "text": "t", "priority": "normal",
                 "parts": 1, "encoding": "gsm7", "status": "accepted", "provider": "prostor",
                 "provider_message_id": o.provider_message_id, "attempts": 1, "retries": 0, "failovers": 0,
                 "tried": "", "polls": 0, "created_at": now, "updated_at": now, "expires_at": now,
                 "due_at": now, "accepted_at": now, "next_poll_at": now} for o in sent]  # fmt: skip
        with db.session_scope() as s:
            for i in range(0, len(rows), 5000):
                s.execute(insert(MESSAGES), rows[i : i + 5000])
        time.sleep(1.0)
        started = time.monotonic()
        stats = poll_due(settings, coordinator_for(BROKER), provider)
        out[f"poll_cycle_{n}"] = {"calls": stats.calls, "polled": stats.polled, "changed": stats.changed,
                                  "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
    provider.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--json", default="bench-results.json")
    args = parser.parse_args()
    tmp = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip())
    base = baseline(tmp, int(3000 * args.scale), int(300 * args.scale))
    results: dict[str, Any] = {"baseline": base}
    ours(tmp, args.scale, results)
    rows = [
        ("raw Celery no-op task", base["noop"], base["noop"], "tasks/s"),
        ("raw Celery 50 ms sleep task", base["sleep_50ms"], base["sleep_50ms"], "tasks/s"),
        ("sms-ka.net per message, 0 ms", results["smska_0ms"], base["noop"], "msg/s"),
        ("sms-ka.net per message, 50 ms", results["smska_50ms"], base["sleep_50ms"], "msg/s"),
        ("prostor batches of 200, 0 ms", results["prostor_batch_0ms"], base["noop"], "msg/s"),
        ("prostor batches of 200, 50 ms", results["prostor_batch_50ms"], base["noop"], "msg/s"),
        ("send_bulk enqueue", results["send_bulk_enqueue"], base["noop"], "msg/s"),
        ("HTTP API enqueue (500 per POST)", results["http_api_enqueue"], base["noop"], "msg/s"),
    ]
    print(f"{'case':36} {'rate':>10} {'unit':8} {'ratio':>7}  baseline")
    for name, rate, ref, unit in rows:
        ref_name = "no-op" if ref == base["noop"] else "sleep"
        print(f"{name:36} {rate:10.0f} {unit:8} {rate / ref:7.2f}  {ref_name}")
    small, large = (
        results[f"poll_cycle_{int(10_000 * args.scale)}"],
        results[f"poll_cycle_{int(100_000 * args.scale)}"],
    )
    print(f"poll cycle, {int(10_000 * args.scale)} in flight: {small['calls']} calls, {small['seconds']} s")
    print(f"poll cycle, {int(100_000 * args.scale)} in flight: {large['calls']} calls, {large['seconds']} s"
          f" (ratio to 10k: {large['seconds'] / max(small['seconds'], 1e-9):.2f})")  # fmt: skip
    print("peak RSS MiB, raw Celery worker processes:", {k: round(v) for k, v in base["peak_rss_mb"].items()})
    print("peak RSS MiB, smsdispatch worker processes:",
          {k: round(v) for k, v in results["worker_peak_rss_mb"].items()})  # fmt: skip
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
