"""``smsdispatch demo``: the whole pipeline on a realistic mixed load.

On a fresh machine it needs nothing but this package: the simulator on loopback, a
SQLite ledger in a temporary folder and the embedded worker pool. With ``--broker``
(or a configured broker that answers) it runs real Celery worker processes instead.
Half way through, one provider has an outage, so failover shows in the table. The
exit code is non-zero when any message did not reach a settled status.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dispatcher import api, config, db
from dispatcher.models import ATTEMPTS, MESSAGES
from dispatcher.simulator.core import INVALID_PREFIX, Simulator
from dispatcher.status import FINAL, Status

SETTLED = {s.value for s in FINAL} | {Status.UNKNOWN.value}
# Taken by a provider and followed by polling: not lost even if not final yet.
TRACKED = {Status.ACCEPTED.value, Status.SENT.value}
OUTAGE_KIND = "sms1000"
OUTAGE_SECONDS = 6.0
STILL = 5.0  # seconds without a status change that end the wait once nothing is lost

CODES = [
    "Ваш код подтверждения: {n:04d}",
    "Код для входа: {n:04d}. Никому не сообщайте.",
    "Your code: {n:04d}",
]
BULK = [
    "Скидка 15% на всё до воскресенья! Промокод WEEKEND.",
    "Ваш заказ №{n} передан в доставку. Курьер позвонит заранее.",
    "Напоминаем о записи к врачу завтра в 10:{m:02d}.",
    "Баланс вашей карты пополнен на {n} руб.",
]


@dataclass
class DemoResult:
    mode: str
    messages: int
    seconds: float
    statuses: dict[str, int]
    providers: list[dict[str, Any]]
    lost: int
    ledger: str
    outage: str | None
    notes: list[str] = field(default_factory=list)
    # The client "shop": its messages, the callbacks its receiver got, the stopped one.
    callbacks: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def use_config(table: dict[str, Any], folder: Path) -> tuple[config.Settings, Path]:
    """Write ``table`` as the run's configuration file in ``folder``, make it this
    process's settings, and migrate the fresh ledger it names. Returns both, the file
    for the processes the run starts."""
    path = folder / "smsdispatch.toml"
    path.write_text(config.to_toml(table), encoding="utf-8")
    settings = config.load(path, env={})
    config.set_settings(settings)
    db.dispose_engines()
    db.get_engine()  # a fresh SQLite file: migrated on first use
    return settings, path


def demo_table(sim: Simulator, db_url: str, broker_url: str) -> dict[str, Any]:
    table = sim.settings_table()
    for provider in table["providers"].values():
        provider.update({"priority": 10, "timeout": 2.0, "connect_timeout": 1.0, "max_retries": 1})
    table["database_url"] = db_url
    table["broker_url"] = broker_url
    table["pipeline"] = {
        "backoff_base": 0.1, "backoff_cap": 0.5, "breaker_threshold": 3, "breaker_cooldown": 4.0,
        "exhausted_delay": 1.0, "sweeper_interval": 1.0, "sweeper_stale_after": 5.0,
        "visibility_timeout": 30.0,
    }  # fmt: skip
    # The demo's receiver is on loopback: a real deployment keeps allow_private off.
    table["callbacks"] = {"allow_private": True, "interval": 0.3, "backoff_base": 0.3, "backoff_cap": 2.0}
    table["polling"] = {
        "interval": 0.5,
        "intervals": [0.5, 1.0, 2.0],
        "queue_interval": 0.5,
        "balance_interval": 5.0,
    }
    return table


MOBILE_CODES = ("16", "26", "03")  # +7 916, 926, 903
SHOP = "shop"  # the demo's client: its own key, a callback receiver
SHOP_MESSAGES = 10
STOPPED_PHONE = "79165550101"  # on the stop list: the shop's advert to it is refused


def setup_shop(receiver: Any) -> tuple[str, list[dict[str, Any]]]:
    """The client "shop" with its callback to ``receiver`` (given the secret it signs
    with), and one number on the stop list. Returns the shop's API key and its load:
    order notices, and an advert to the stopped number (ops/console_shots.py uses it too)."""
    from dispatcher import stoplist
    from dispatcher.clients import create_client

    with db.session_scope() as s:
        _, key, secret = create_client(s, SHOP, callback_url=receiver.url, allow_private=True)
        stoplist.add(s, STOPPED_PHONE, reason="replied STOP to an advert")
    receiver.secret = secret
    load = [{"to": f"7916555{n:04d}", "text": f"Заказ №{1000 + n} собран и передан в доставку."}
            for n in range(1, SHOP_MESSAGES + 1)]  # fmt: skip
    return key, [*load, {"to": STOPPED_PHONE, "text": "Скидка 20% только сегодня!"}]


def _callback_report(receiver: Any, shop_ids: list[str], statuses: dict[str, str]) -> dict[str, Any]:
    got: dict[str, list[str]] = defaultdict(list)
    lines = []
    for r in receiver.received:
        if r.payload is None or r.answered != 200:
            continue
        p = r.payload
        got[p["id"]].append(p["status"])
        lines.append(f"{p['id'][:8]}  {p['status']:<11} {p.get('provider') or '-':<8} to {p['to']}"
                     f"{'  error ' + p['error'] if p.get('error') else ''}"
                     f"  ({'signed ok' if r.verified else 'BAD SIGNATURE'})")  # fmt: skip
    # Missing: a message whose current status its receiver has not been told.
    missing = [m for m in shop_ids if statuses.get(m) not in got.get(m, [])]
    return {
        "client": SHOP, "messages": len(shop_ids), "received": sum(len(v) for v in got.values()),
        "all_signed": all(r.verified for r in receiver.received if r.payload is not None),
        "missing": missing, "stopped": statuses.get(shop_ids[-1]) if shop_ids else None, "lines": lines,
    }  # fmt: skip


def make_load(n: int, rng: random.Random) -> list[dict[str, Any]]:
    load = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.01:
            to = f"{INVALID_PREFIX}{rng.randrange(10**5):05d}"  # refused as invalid by every provider
        elif roll < 0.06:
            to = f"79{rng.choice(MOBILE_CODES)}{rng.randrange(10**3):03d}0000"  # accepted, never delivered
        else:
            # Real mobile ranges: intake refuses numbers libphonenumber knows as no number.
            to = f"79{rng.choice(MOBILE_CODES)}{rng.randrange(10**7):07d}"
            if to.endswith(("0000", "9999")):
                to = to[:-1] + "1"
        if rng.random() < 0.1:
            load.append(
                {"to": to, "text": rng.choice(CODES).format(n=rng.randrange(10**4)), "priority": "high"}
            )
        else:
            text = rng.choice(BULK).format(n=rng.randrange(10**6), m=rng.randrange(60))
            load.append({"to": to, "text": text})
    return load


def _bar(done: int, total: int, started: float, label: str) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(
        f"\r{label:<11} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        f" {time.monotonic() - started:5.1f}s"
    )
    sys.stderr.flush()


def _counts(ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    with db.session_scope() as s:
        for start in range(0, len(ids), 500):
            rows = s.execute(
                select(MESSAGES.c.id, MESSAGES.c.status).where(MESSAGES.c.id.in_(ids[start : start + 500]))
            ).all()
            out.update({r[0]: r[1] for r in rows})
    return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def provider_report(ids: list[str], kinds: list[str]) -> list[dict[str, Any]]:
    per: dict[str, dict[str, Any]] = {k: defaultdict(int) for k in kinds}
    to_accepted: dict[str, list[float]] = defaultdict(list)
    to_delivered: dict[str, list[float]] = defaultdict(list)
    with db.session_scope() as s:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in s.execute(
                select(MESSAGES.c.provider, MESSAGES.c.status, MESSAGES.c.created_at, MESSAGES.c.accepted_at,
                       MESSAGES.c.final_at).where(MESSAGES.c.id.in_(chunk))
            ).all():  # fmt: skip
                name, status, created, accepted, final = row
                if name not in per:
                    continue
                stats = per[name]
                if accepted is not None:
                    stats["accepted"] += 1
                    to_accepted[name].append((accepted - created).total_seconds())
                if status in ("delivered", "undelivered", "failed", "rejected", "unknown", "expired"):
                    stats[status] += 1
                if status == "delivered" and final is not None:
                    to_delivered[name].append((final - created).total_seconds())
            final_provider = dict(
                s.execute(select(MESSAGES.c.id, MESSAGES.c.provider).where(MESSAGES.c.id.in_(chunk))).all()
            )
            left: set[tuple[str, str]] = set()
            for mid, name, outcome, parts, cost in s.execute(
                select(ATTEMPTS.c.message_id, ATTEMPTS.c.provider, ATTEMPTS.c.outcome, ATTEMPTS.c.parts,
                       ATTEMPTS.c.cost).where(ATTEMPTS.c.message_id.in_(chunk))
            ).all():  # fmt: skip
                if name not in per:
                    continue
                # What each provider reported it counted and charged.
                per[name]["parts"] += parts or 0
                per[name]["cost"] += cost or 0.0
                if outcome == "retry":
                    per[name]["retries"] += 1
                if outcome != "accepted" and final_provider.get(mid) != name:
                    left.add((mid, name))  # the message moved on to another provider
            for _, name in left:
                per[name]["failovers"] += 1
    rows = []
    for name in kinds:
        stats = per[name]
        rows.append(
            {
                "provider": name,
                **{k: stats.get(k, 0) for k in ("accepted", "delivered", "undelivered", "rejected", "failed",
                                                "unknown", "retries", "failovers", "parts")},
                "cost": round(stats.get("cost", 0.0), 2),
                "p50_accepted_s": _pct(to_accepted[name], 50), "p95_accepted_s": _pct(to_accepted[name], 95),
                "p50_delivered_s": _pct(to_delivered[name], 50),
                "p95_delivered_s": _pct(to_delivered[name], 95),
            }
        )  # fmt: skip
    return rows


def _broker_answers(url: str) -> bool:
    from dispatcher.redis_conn import client_for, is_redis

    if not is_redis(url):
        return False
    try:
        return bool(client_for(url, socket_timeout=1, connect_timeout=1).ping())
    except Exception:
        return False


def run(
    messages: int = 1000,
    broker: str | None = None,
    workers: int = 8,
    outage: bool = True,
    progress: bool = True,
    timeout: float = 50.0,
    seed: int = 7,
) -> DemoResult:
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="smsdispatch-demo-"))
    db_url = f"sqlite:///{folder / 'ledger.db'}"
    mode = "celery" if broker and _broker_answers(broker) else "embedded"
    notes = (
        [] if not broker or mode == "celery" else [f"broker {broker} does not answer: embedded worker pool"]
    )
    procs: list[subprocess.Popen[bytes]] = []
    runner = None
    with Simulator(base_port=0) as sim:
        for server in sim.servers.values():
            server.state.timing.sent_after = 0.3
            server.state.timing.final_after = 1.2
        table = demo_table(sim, db_url, broker if mode == "celery" and broker else "memory://")
        settings, config_path = use_config(table, folder)
        kinds = [p.name for p in settings.providers]
        from dispatcher.simulator.receiver import Receiver

        receiver = Receiver().start()
        _, shop_load = setup_shop(receiver)
        if mode == "celery":
            from dispatcher import broker as worker_app
            from dispatcher.redis_conn import client_for

            worker_app.configure(settings)
            client_for(settings.broker_url).delete("sms.high", "sms.bulk", "sms.poll", "sms.control")
            from dispatcher.coordination import coordinator_for

            coordinator_for(settings.broker_url).reset()
            env = {**os.environ, "SMSDISPATCH_CONFIG": str(config_path)}
            args = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q",
                    "sms.high,sms.bulk,sms.control,sms.poll", "-c", str(workers), "-l", "warning", "-B",
                    "-s", str(folder / "beat"), "--without-gossip", "--without-mingle",
                    "--without-heartbeat"]  # fmt: skip
            log = (folder / "worker.log").open("wb")
            procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
        else:
            from dispatcher.embedded import EmbeddedRunner

            runner = EmbeddedRunner(settings, workers=workers).start()
            api.use_publisher(runner.publish_many)
        started = time.monotonic()
        quiet = logging.getLogger("smsdispatch")
        level = quiet.level
        if progress:
            quiet.setLevel(logging.ERROR)  # the bar, not warnings; the table tells the story
        try:
            load = make_load(messages, rng)
            ids: list[str] = []
            shop_ids = api.send_bulk(shop_load, client=SHOP)
            outage_at = len(load) // 2
            outage_done: str | None = None
            outage_ends: float | None = None
            for start in range(0, len(load), 50):
                chunk = load[start : start + 50]
                codes = [m for m in chunk if m.get("priority") == "high"]
                ids += [api.send_sms(**m) for m in codes]
                ids += api.send_bulk([m for m in chunk if m.get("priority") != "high"])
                if outage and outage_done is None and len(ids) >= outage_at:
                    # Half way: one provider starts answering HTTP 500 to everything.
                    sim[OUTAGE_KIND].state.faults.http500_rate = 1.0
                    outage_ends = time.monotonic() + OUTAGE_SECONDS
                    outage_done = f"{OUTAGE_KIND}: HTTP 500 on every call for {OUTAGE_SECONDS:g}s"
                    outage_done += f" from message {len(ids)} on"
                if progress:
                    _bar(len(ids), len(load), started, "queued")
                time.sleep(0.02)
            if progress:
                sys.stderr.write("\n")
            statuses: dict[str, str] = {}
            still_since, last_seen = time.monotonic(), statuses
            while time.monotonic() - started < timeout:
                if outage_ends is not None and time.monotonic() >= outage_ends:
                    sim[OUTAGE_KIND].state.faults.http500_rate = 0.0  # the provider recovers
                    outage_ends = None
                statuses = _counts(ids)
                settled = sum(s in SETTLED for s in statuses.values())
                if progress:
                    _bar(settled, len(ids), started, "settled")
                if settled == len(ids) and outage_ends is None:
                    break
                if statuses != last_seen:
                    still_since, last_seen = time.monotonic(), statuses
                tracked = sum(s in SETTLED | TRACKED for s in statuses.values())
                if tracked == len(ids) and outage_ends is None and time.monotonic() - still_since > STILL:
                    # Every message is final or taken and followed, and nothing has moved
                    # for a while: a provider that reports no final status (my-sms.ru's -14
                    # is not final) would hold the demo until the timeout, for no news.
                    break
                time.sleep(0.25)
            # The shop's receiver hears of every change; give the last ones a moment.
            deadline = time.monotonic() + 10.0
            while True:
                shop_statuses = _counts(shop_ids)
                shop_report = _callback_report(receiver, shop_ids, shop_statuses)
                if not shop_report["missing"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if progress:
                sys.stderr.write("\n")
            seconds = time.monotonic() - started
            counts: dict[str, int] = defaultdict(int)
            for status in statuses.values():
                counts[status] += 1
            # Lost: not in the ledger, or never taken by any provider. A message a
            # provider took and we still poll is in flight, not lost.
            lost = len(ids) - sum(counts[s] for s in SETTLED | TRACKED)
            for status in shop_statuses.values():
                counts[status] += 1
            lost += len(shop_ids) - sum(shop_statuses.get(m) in SETTLED | TRACKED for m in shop_ids)
            report = provider_report(ids, kinds)
        finally:
            receiver.stop()
            quiet.setLevel(level)
            if runner is not None:
                runner.stop()
                api.use_publisher(None)
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            db.dispose_engines()
    return DemoResult(
        mode,
        len(ids) + len(shop_ids),
        seconds,
        dict(counts),
        report,
        lost,
        str(folder / "ledger.db"),
        outage_done,
        notes,
        shop_report,
    )
