"""The benchmark: smsdispatch end to end next to a bare Celery task, same machine, same run.

    .venv/bin/python ops/bench.py [--scale 1.0] [--json bench-results.json]
        [--pools threads:50x1,threads:50x2,prefork:2x1,gevent:50x1]
        [--kinds smska,mysms,sms1000,prostor] [--latencies 0,50]
        [--parts matrix,otc,sustain] [--sustain-seconds 300] ...   (--help lists all)

A benchmark, not a test: it asserts nothing, it prints a table and writes JSON.

Needs Redis on 127.0.0.1:6379 (only databases 11, ours, and 12, the peer's, are used and
flushed) and PostgreSQL on 127.0.0.1:5432, user postgres, trust auth: a database
``bench`` (created when missing; its public schema is dropped and migrated anew).
``SMSDISPATCH_BENCH_PG_URL`` names another database; ``test`` is refused, the tests use it.
One simulator process (``python -m dispatcher.cli simulator --base-port 0``) serves both
sides. Every process started here runs in its own process group and is stopped at the end.

Pools: ``POOL:CONCURRENCYxPROCESSES``; ``threads:50x2`` is two ``celery worker`` processes
with ``-P threads -c 50`` each. A gevent pool is skipped when ``import gevent`` fails.
Both sides' workers run with the same flags: ``-l warning`` (``--loglevel``: at info Celery
logs two lines per task, which would cost the side with more tasks), ``--without-gossip
--without-mingle --without-heartbeat``; a worker is ready when it answers a ping.
Under gevent Celery uses its blocking loop (``drain_events(timeout=2.0)``); with Redis
the bare peer, one task per message, is seen taking tasks in bursts with 1-3 s gaps
between them, so its gevent rates are low and erratic: read gevent ratios with care.

What each figure means:

1. Matrix, one cell per pool x provider kind x simulator latency (``/_sim/faults``
   ``latency_ms``), both sides run back to back in the cell, on the same simulator:

   - ``bare msg/s``: the peer (``ops/bench_baseline.py``), a plain Celery app on Redis
     db 12 with one ``acks_late`` task making one HTTP POST to the simulator's send
     endpoint over a keep-alive session. The producer publishes all tasks over one
     producer connection; the clock stops when the tasks have counted N messages done in
     Redis. Every kind gets one task per message, prostor included (``send.json`` with one
     message): the task a user writes instead of us. ``--peer-prostor-batch 200`` gives
     prostor a hand-batched peer instead (one task per 200 messages), for comparison.
     messages (one ``send.json`` call, as our pipeline makes it).
   - ``ours msg/s``: ``dispatcher.api.send_bulk`` of N messages pinned to the provider
     (in chunks of ``--bulk-chunk``), clock from the first call until no message of the
     PostgreSQL ledger is ``queued`` or ``sending``. Status tracking is off here (no beat).
     my-sms.ru is configured ``batch_size = 1`` (one message per call), prostor takes 200
     per call (``pipeline.publish_batch = 200``).
   - ``N``: ``--messages`` (2000) for a per-message kind, ``--batched-messages`` (20000)
     for prostor, cut to what the bare task could do in ``--cell-seconds`` at the cell's
     latency (prefork:2x1 at 50 ms: 545), times ``--scale``.
   - ``ratio``: ours / bare msg/s, the figure to compare across machines and days.
   - ``CPU ms/msg``: utime+stime of the worker main process(es) and all their descendants
     (``/proc/<pid>/stat``, dead children through cutime/cstime), sampled before the first
     publish and after the last message is done, divided by N. The producer (this process),
     Redis, PostgreSQL and the simulator are not in it; the JSON also has this process's
     producer CPU and the simulator's CPU per message.
   - ``!`` (bare, then ours): some messages did not end well (bare: the reply refused
     them; ours: a status other than accepted/sent/delivered/undelivered), the simulator
     received a message twice (``/_sim/stats`` duplicates, read after the clock stopped),
     or the side hit ``--cell-timeout``. The workers' ERROR/CRITICAL log lines are counted
     in the JSON (``worker_log_errors``) and named in the notes.

Parts 2 and 3 run on ``--load-pool`` (default: the first of ``--pools``), our side only.

2. One-time codes (``otc``): ``send_bulk`` of 20,000 (x scale) messages to a per-message
   provider (``--otc-kind`` smska, ``--otc-latency`` 50 ms), then, while it drains, one
   ``send_sms(..., priority="high")`` to the same provider every ``--otc-interval``
   seconds for at most ``--otc-seconds``. Latency = from the ``send_sms`` call until the
   ledger row leaves queued/sending (the ledger is polled every 5 ms); the ledger's own
   ``accepted_at - created_at`` is reported beside it. p50/p95/max in ms.

3. Sustained (``sustain``): ``--sustain-rate`` msg/s (278 = one million per hour) for
   ``--sustain-seconds`` through ``send_bulk`` in chunks of about a tenth of a second's
   worth, to ``--sustain-kind`` (prostor) at ``--sustain-latency`` (50 ms), with tracking
   on (the simulator's prostor status queue kept; the worker runs
   beat with ``-B``, default polling intervals, also consuming sms.control and sms.poll).
   Every 5 s: messages queued+sending in the ledger and the Redis queue lengths. The
   backlog is called bounded when the maximum of the last quarter of the run is at most
   1.25 x the maximum of the second quarter plus two seconds of traffic; the slope of the
   backlog over the second half is given too. ``lost``: after the producer stops and a
   drain grace (``--drain-grace``), messages not accepted, sent, delivered, undelivered
   or rejected.

The JSON (``--json``) holds every figure, the options and the machine (nproc, CPU model,
memory, Python, Celery, Redis and PostgreSQL versions, load average, git commit), and is
rewritten after each part, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.engine import Engine, make_url  # noqa: E402

REDIS = os.environ.get("SMSDISPATCH_BENCH_REDIS", "redis://127.0.0.1:6379")
OURS_BROKER = f"{REDIS}/11"
PEER_BROKER = f"{REDIS}/12"
PG = os.environ.get("SMSDISPATCH_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench")
OURS_QUEUES = ("sms.high", "sms.bulk")
IN_FLIGHT = ("queued", "sending")
OK_STATUSES = ("accepted", "sent", "delivered", "undelivered")
KEPT_STATUSES = (*OK_STATUSES, "rejected")  # not lost, for the sustained run
BATCH = {"prostor": 200}  # messages per provider call; every other kind: 1
DEFAULT_POOLS = "threads:50x1,threads:50x2,prefork:2x1,gevent:50x1"
DEFAULT_KINDS = "smska,mysms,sms1000,prostor"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes ----------------------------------------------------------------------------

_started: list[subprocess.Popen[bytes]] = []
_log_seq = itertools.count(1)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process in a process group of its own, output to ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _started.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 25.0) -> None:
    """TERM the process group, KILL it after ``grace`` seconds."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    # Children left behind by a main process that exited (prefork): the group again.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc in _started:
        _started.remove(proc)


def stop_all() -> None:
    for proc in list(_started):
        stop(proc, grace=10.0)


def wait_log(log: Path, needle: bytes, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_bytes():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{log.name}: {needle.decode()!r} not seen (exit code {proc.poll()}):\n{tail}")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, state, first)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(roots: Sequence[int]) -> float:
    """CPU seconds (user + system) of the process trees under ``roots``: live processes'
    own time plus, through cutime/cstime, children that ended and were reaped."""
    ticks = 0
    for root in roots:
        for pid in tree(root):
            fields = _stat(pid)
            if fields:
                ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLK_TCK


# -- pools of workers -------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSpec:
    pool: str
    concurrency: int
    processes: int

    @classmethod
    def parse(cls, spec: str) -> PoolSpec:
        try:
            pool, _, rest = spec.partition(":")
            concurrency, _, processes = rest.partition("x")
            return cls(pool, int(concurrency), int(processes or 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"pool {spec!r}: expected POOL:CONCURRENCYxPROCESSES") from None

    @property
    def label(self) -> str:
        return f"{self.pool}:{self.concurrency}x{self.processes}"


@dataclass
class Workers:
    """``processes`` celery worker processes of one app, the same pool and concurrency."""

    name: str
    app: str  # the -A argument
    control: Any  # the same Celery app in this process, to ping the workers
    queues: Sequence[str]
    spec: PoolSpec
    env: dict[str, str]
    logdir: Path
    loglevel: str
    beat_schedule: Path | None = None  # run beat inside the first process
    nice: int = 0  # run the processes at this CPU niceness (a bulk pool beside a codes pool)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def start(self, timeout: float = 90.0) -> None:
        logs = []
        for i in range(1, self.spec.processes + 1):
            log = self.logdir / f"{self.name}-{self.spec.label.replace(':', '-')}-p{i}-{next(_log_seq)}.log"
            args = [sys.executable, *f"-m celery -A {self.app} worker -Q {','.join(self.queues)}".split()]
            args += ["-P", self.spec.pool, "-c", str(self.spec.concurrency), "-n", f"{self.name}{i}@%h"]
            args += ["-l", self.loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat"]
            if self.beat_schedule is not None and i == 1:
                args += ["-B", "-s", str(self.beat_schedule)]
            if self.nice:
                args = ["nice", "-n", str(self.nice), *args]  # nice execs: the pid stays ours
            self.procs.append(start(args, self.env, log))
            logs.append(log)
            self.logs.append(log)
        # Ready when every process answers a ping (its " ready." line is INFO, and the
        # workers log at --loglevel, warning by default).
        wanted = {f"{self.name}{i}" for i in range(1, self.spec.processes + 1)}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, log in zip(self.procs, logs, strict=True):
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{log.name}: exited with {proc.returncode}:\n{tail}")
            with suppress(Exception):
                replies = self.control.control.ping(timeout=1.0) or []
                if wanted <= {node.split("@")[0] for reply in replies for node in reply}:
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"{self.name} {self.spec.label}: no answer to ping within {timeout:g} s, logs {logs}"
        )

    def cpu(self) -> float:
        return cpu_seconds([p.pid for p in self.procs])

    def problems(self) -> dict[str, Any]:
        """ERROR and CRITICAL lines of every log these workers wrote, counted, with samples."""
        count, samples = 0, list[str]()
        for log in self.logs:
            with suppress(OSError):
                for line in log.read_text(errors="replace").splitlines():
                    if ": ERROR/" in line or ": CRITICAL/" in line:
                        count += 1
                        text = line.split("] ", 1)[-1][:200]
                        if len(samples) < 5 and text not in samples:
                            samples.append(text)
        return {"errors": count, "samples": samples, "logs": [str(p) for p in self.logs]}

    def alive(self) -> bool:
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:  # all at once: each gets the same soft-shutdown time
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            stop(proc)
        self.procs = []


# -- the simulator --------------------------------------------------------------------------


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    table: dict[str, Any]  # the config document it wrote
    config: Path

    def provider(self, kind: str) -> tuple[str, dict[str, Any]]:
        for name, p in self.table["providers"].items():
            if p.get("kind", name) == kind:
                return name, p
        raise KeyError(f"the simulator has no provider of kind {kind!r}")

    def control(self, kind: str, what: str, body: dict[str, Any]) -> bool:
        parts = urlsplit(self.provider(kind)[1]["base_url"])
        try:
            reply = requests.post(f"{parts.scheme}://{parts.netloc}/_sim/{what}", json=body, timeout=10)
        except requests.RequestException:
            return False
        return reply.status_code == 200

    def prepare(self, kind: str, latency_ms: float, notes: list[str]) -> None:
        """Fresh state (memory stays small, the balance full), then the latency."""
        if not (self.control(kind, "reset", {}) and self.control(kind, "balance", {"balance": 1e12})):
            note(notes, f"simulator {kind}: /_sim/reset or /_sim/balance did not answer 200")
        if not self.control(kind, "faults", {"latency_ms": latency_ms}):
            raise RuntimeError(f"simulator {kind}: /_sim/faults refused latency_ms={latency_ms}")

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid])

    def stats(self, kind: str) -> dict[str, Any]:
        """Calls and messages the simulated provider saw since ``prepare`` (read after the
        clock stopped): a check that both sides made the calls they should."""
        parts = urlsplit(self.provider(kind)[1]["base_url"])
        try:
            doc = requests.post(f"{parts.scheme}://{parts.netloc}/_sim/stats", timeout=30).json()
        except (requests.RequestException, ValueError):
            return {}
        return {
            "calls": doc.get("requests"),
            "messages": doc.get("messages"),
            "duplicates": doc.get("duplicates"),
        }


def start_sim(tmp: Path) -> Sim:
    log, conf = tmp / "simulator.log", tmp / "simulator.toml"
    cli = ["-m", "dispatcher.cli", "simulator"]
    args = [sys.executable, *cli, "--base-port", "0", "--write-config", str(conf)]
    proc = start(args, dict(os.environ), log)
    wait_log(log, b"config written", proc, timeout=30)
    return Sim(proc, tomllib.loads(conf.read_text(encoding="utf-8")), conf)


def note(notes: list[str], message: str) -> None:
    if message not in notes:
        notes.append(message)
        print(f"  note: {message}", flush=True)


# -- the ledger -----------------------------------------------------------------------------


def ensure_database(url: str) -> None:
    """Create the benchmark's database when it is missing; refuse the tests' one."""
    import psycopg

    parsed = make_url(url)
    if parsed.database in (None, "", "test"):
        raise SystemExit(f"refusing database {parsed.database!r}: the benchmark needs one of its own")
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{parsed.database}"')


@dataclass
class Ledger:
    engine: Engine

    def fresh_schema(self) -> None:
        from dispatcher import db

        with self.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        db.upgrade(self.engine)

    def truncate(self) -> None:
        from dispatcher.models import MESSAGES

        with self.engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '30s'"))
            conn.execute(text(f'TRUNCATE TABLE "{MESSAGES.name}" CASCADE'))

    def in_flight(self, priority: str | None = None) -> int:
        from dispatcher.models import MESSAGES

        query = select(func.count()).select_from(MESSAGES).where(MESSAGES.c.status.in_(IN_FLIGHT))
        if priority is not None:
            query = query.where(MESSAGES.c.priority == priority)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def statuses(self) -> dict[str, int]:
        from dispatcher.models import MESSAGES

        query = select(MESSAGES.c.status, func.count()).group_by(MESSAGES.c.status)
        with self.engine.connect() as conn:
            return {str(s): int(n) for s, n in conn.execute(query)}

    def rows(self, ids: Sequence[str]) -> list[Any]:
        from dispatcher.models import MESSAGES

        query = select(MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.created_at, MESSAGES.c.accepted_at)
        with self.engine.connect() as conn:
            return list(conn.execute(query.where(MESSAGES.c.id.in_(list(ids)))))


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    sim: Sim
    ledger: Ledger
    results: dict[str, Any]
    notes: list[str]
    ours_config: Path | None = None

    # configuration of our side

    def write_config(self, name: str, tracking: bool, horizon: float | None = None) -> Path:
        """Our config for the simulator's providers: ``tracking`` False for the matrix (no
        status queue, polls an hour apart; beat does not run there anyway); ``horizon``:
        ``pipeline.status_horizon``."""
        from dispatcher import config

        table = json.loads(json.dumps(self.sim.table))
        for p in table["providers"].values():
            if p.get("kind") == "mysms":
                p["batch_size"] = 1  # one message per call (POST with a one-element array)
            if not tracking:
                p.pop("status_queue", None)
        table["database_url"] = PG
        table["broker_url"] = OURS_BROKER
        table["pipeline"] = {"publish_batch": BATCH["prostor"]}
        if horizon is not None:
            table["pipeline"]["status_horizon"] = horizon
        if not tracking:
            table["polling"] = {"interval": 3600.0, "queue_interval": 3600.0, "balance_interval": 3600.0}
        path = self.tmp / f"smsdispatch-{name}.toml"
        path.write_text(config.to_toml(table), encoding="utf-8")
        return path

    def use_config(self, path: Path) -> None:
        """Install ``path`` in this process (the producer) as in the workers."""
        from dispatcher import config, db
        from workers import app as worker_app

        os.environ["SMSDISPATCH_CONFIG"] = str(path)
        settings = config.load(path, env={})
        config.set_settings(settings)
        worker_app.configure(settings)
        db.dispose_engines()
        self.ours_config = path

    def ours_workers(
        self, spec: PoolSpec, queues: Sequence[str] = OURS_QUEUES, beat: bool = False
    ) -> Workers:
        assert self.ours_config is not None
        env = {**os.environ, "SMSDISPATCH_CONFIG": str(self.ours_config)}
        schedule = self.tmp / f"beat-{uuid.uuid4().hex[:6]}" if beat else None
        from workers.app import app

        return Workers("ours", "workers.app", app, queues, spec, env, self.tmp, self.args.loglevel, schedule)

    def peer_workers(self, spec: PoolSpec) -> Workers:
        env = {**os.environ, "BENCH_PEER_BROKER": PEER_BROKER, "BENCH_PEER_SIM_CONFIG": str(self.sim.config)}
        from ops import bench_baseline

        queues = [bench_baseline.QUEUE]
        return Workers(
            "peer", "ops.bench_baseline", bench_baseline.app, queues, spec, env, self.tmp, self.args.loglevel
        )

    def log_problems(self, where: str, *workers: Workers) -> None:
        """Keep the workers' ERROR/CRITICAL log lines in the results, and say so."""
        for w in workers:
            found = w.problems()
            self.results.setdefault("worker_log_errors", {})[f"{where} {w.name}"] = found
            if found["errors"]:
                sample = found["samples"][0] if found["samples"] else ""
                note(
                    self.notes, f"{where} {w.name}: {found['errors']} ERROR/CRITICAL log lines, e.g. {sample}"
                )

    def save(self) -> None:
        self.results["notes"] = self.notes
        Path(self.args.json).write_text(json.dumps(self.results, indent=2, default=str), encoding="utf-8")

    # shared steps

    def messages(self, n: int, kind: str | None, tag: str, prefix: str = "7916") -> list[dict[str, Any]]:
        out = []
        for i in range(1, n + 1):
            m: dict[str, Any] = {
                "to": f"{prefix}{i % 10_000_000:07d}",
                "text": f"bench {tag} {i}",
                "priority": "normal",
            }
            if kind is not None:
                m["provider"] = self.sim.provider(kind)[0]
            out.append(m)
        return out

    def wait_queues_empty(self, client: redis.Redis, queues: Sequence[str], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(int(client.llen(q)) == 0 for q in queues):
                return True
            time.sleep(0.1)
        return False

    # 1. the matrix

    def matrix(self, specs: Sequence[PoolSpec]) -> None:
        cells: list[dict[str, Any]] = self.results.setdefault("matrix", [])
        self.use_config(self.write_config("matrix", tracking=False))
        for spec in specs:
            print(f"\n== pool {spec.label}", flush=True)
            peer, ours = self.peer_workers(spec), self.ours_workers(spec)
            try:
                peer.start()
                ours.start()
            except RuntimeError as exc:
                note(self.notes, f"pool {spec.label}: workers did not start: {str(exc)[:800]}")
                peer.stop()
                ours.stop()
                continue
            try:
                for kind in self.args.kinds:
                    for latency in self.args.latencies:
                        n = self.cell_size(spec, kind, latency)
                        cell: dict[str, Any] = {
                            "pool": spec.label,
                            "kind": kind,
                            "latency_ms": latency,
                            "n": n,
                        }
                        print(f"-- {spec.label} {kind} {latency:g} ms, n={n}", flush=True)
                        cell["bare"] = self.run_bare(peer, spec, kind, latency, n)
                        cell["ours"] = self.run_ours(ours, spec, kind, latency, n)
                        b, o = cell["bare"], cell["ours"]
                        cell["ratio"] = o["msg_per_s"] / b["msg_per_s"] if b["msg_per_s"] else None
                        cells.append(cell)
                        print(
                            f"   bare {b['msg_per_s']:8.1f} msg/s {b['cpu_ms_per_msg']:7.2f} CPU ms/msg | "
                            f"ours {o['msg_per_s']:8.1f} msg/s {o['cpu_ms_per_msg']:7.2f} CPU ms/msg | "
                            f"ratio {cell['ratio'] or 0:.3f}",
                            flush=True,
                        )
                        self.save()
            finally:
                peer.stop()
                ours.stop()
                redis.Redis.from_url(OURS_BROKER).flushdb()
                redis.Redis.from_url(PEER_BROKER).flushdb()
                self.log_problems(f"matrix {spec.label}", peer, ours)

    def cell_size(self, spec: PoolSpec, kind: str, latency: float) -> int:
        """N for a cell: ``--messages`` (``--batched-messages`` for prostor), cut to what the
        bare task could do in ``--cell-seconds`` at the simulator's latency, times scale."""
        batch = BATCH.get(kind, 1)
        base = self.args.batched_messages if batch > 1 else self.args.messages
        peer_batch = self.args.peer_prostor_batch if kind == "prostor" else 1
        ceiling = spec.concurrency * spec.processes * peer_batch / (latency / 1000.0 + 0.005)
        n = int(min(base, ceiling * self.args.cell_seconds) * self.args.scale)
        return max(batch, math.ceil(max(n, 20) / batch) * batch)

    def run_bare(self, peer: Workers, spec: PoolSpec, kind: str, latency: float, n: int) -> dict[str, Any]:
        from ops import bench_baseline

        client = redis.Redis.from_url(PEER_BROKER)
        self.sim.prepare(kind, latency, self.notes)
        self.wait_queues_empty(client, [bench_baseline.QUEUE])
        client.delete(bench_baseline.DONE_KEY, bench_baseline.FAILED_KEY)
        batch = self.args.peer_prostor_batch if kind == "prostor" else 1
        tag = uuid.uuid4().hex[:6]
        items = [[uuid.uuid4().hex.upper(), m["to"], m["text"]] for m in self.messages(n, None, tag)]
        cpu0, sim0, prod0 = peer.cpu(), self.sim.cpu(), time.process_time()
        started = time.monotonic()
        app = bench_baseline.app
        with app.producer_or_acquire() as producer:
            for i in range(0, n, batch):
                app.send_task(
                    bench_baseline.TASK,
                    args=[kind, items[i : i + batch]],
                    queue=bench_baseline.QUEUE,
                    producer=producer,
                )
        prod = time.process_time() - prod0
        deadline = started + self.args.cell_timeout
        done = 0
        while time.monotonic() < deadline:
            done = int(client.get(bench_baseline.DONE_KEY) or 0)
            if done >= n or not peer.alive():
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        cpu, sim_cpu = peer.cpu() - cpu0, self.sim.cpu() - sim0
        failed = int(client.get(bench_baseline.FAILED_KEY) or 0)
        sim_stats = self.sim.stats(kind)
        out = {
            "msg_per_s": done / elapsed,
            "elapsed_s": round(elapsed, 3),
            "done": done,
            "failed": failed,
            "timed_out": done < n,
            "cpu_ms_per_msg": cpu * 1000 / n,
            "sim_cpu_ms_per_msg": sim_cpu * 1000 / n,
            "producer_cpu_ms_per_msg": prod * 1000 / n,
            "simulator": sim_stats,
        }
        if done < n:
            note(
                self.notes, f"bare {spec.label} {kind} {latency:g} ms: {done} of {n} done, workers restarted"
            )
            peer.stop()
            client.flushdb()
            peer.start()
        return out

    def run_ours(self, ours: Workers, spec: PoolSpec, kind: str, latency: float, n: int) -> dict[str, Any]:
        from dispatcher import api

        client = redis.Redis.from_url(OURS_BROKER)
        self.sim.prepare(kind, latency, self.notes)
        self.wait_queues_empty(client, OURS_QUEUES)
        self.ledger.truncate()
        messages = self.messages(n, kind, uuid.uuid4().hex[:6])
        cpu0, sim0, prod0 = ours.cpu(), self.sim.cpu(), time.process_time()
        started = time.monotonic()
        for i in range(0, n, self.args.bulk_chunk):
            api.send_bulk(messages[i : i + self.args.bulk_chunk])
        prod = time.process_time() - prod0
        deadline = started + self.args.cell_timeout
        left = n
        while time.monotonic() < deadline:
            left = self.ledger.in_flight()
            if left == 0 or not ours.alive():
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        cpu, sim_cpu = ours.cpu() - cpu0, self.sim.cpu() - sim0
        statuses = self.ledger.statuses()
        sim_stats = self.sim.stats(kind)
        ok = sum(statuses.get(s, 0) for s in OK_STATUSES)
        out = {
            "msg_per_s": (n - left) / elapsed,
            "elapsed_s": round(elapsed, 3),
            "done": n - left,
            "not_ok": n - ok,
            "statuses": statuses,
            "timed_out": left > 0,
            "cpu_ms_per_msg": cpu * 1000 / n,
            "sim_cpu_ms_per_msg": sim_cpu * 1000 / n,
            "producer_cpu_ms_per_msg": prod * 1000 / n,
            "simulator": sim_stats,
        }
        if left > 0:
            note(
                self.notes,
                f"ours {spec.label} {kind} {latency:g} ms: {left} of {n} still in flight, workers restarted",
            )
            ours.stop()
            client.flushdb()
            ours.start()
        return out

    # 2. one-time codes behind a bulk

    def otc(self, spec: PoolSpec) -> None:
        """The deployments the README describes: one pool for every queue ("shared"),
        and a pool of its own for codes (``sms.high``, threads c10) beside the bulk pool
        ("split"; "split-nice": the bulk pool at niceness 10, so that on a busy host the
        codes pool gets the CPU first)."""
        for layout in ("shared", "split", "split-nice"):
            self.otc_once(spec, layout)

    def otc_once(self, spec: PoolSpec, layout: str) -> None:
        from dispatcher import api

        a = self.args
        kind, latency = a.otc_kind, a.otc_latency
        if BATCH.get(kind, 1) > 1:
            note(self.notes, f"otc: {kind} takes batches; the brief asks for a per-message provider")
        n = max(100, int(20_000 * a.scale))
        print(
            f"\n== one-time codes ({layout}): {spec.label}, {n} bulk to {kind} at {latency:g} ms", flush=True
        )
        self.use_config(self.write_config("matrix", tracking=False))
        client = redis.Redis.from_url(OURS_BROKER)
        client.flushdb()
        self.ledger.truncate()
        self.sim.prepare(kind, latency, self.notes)
        if layout.startswith("split"):
            bulk = self.ours_workers(spec, queues=("sms.bulk",))
            bulk.nice = 10 if layout == "split-nice" else 0
            pools = [bulk, self.ours_workers(PoolSpec("threads", 10, 1), queues=("sms.high",))]
        else:
            pools = [self.ours_workers(spec)]
        for w in pools:
            w.start()
        name = self.sim.provider(kind)[0]
        try:
            messages = self.messages(n, kind, uuid.uuid4().hex[:6])
            for i in range(0, n, a.bulk_chunk):
                api.send_bulk(messages[i : i + a.bulk_chunk])
            bulk_at_start = self.ledger.in_flight("normal")
            started = time.monotonic()
            sent_at: dict[str, float] = {}
            observed: dict[str, float] = {}
            next_code, seq = started, 0
            bulk_left = bulk_at_start
            window_end = started + a.otc_seconds
            last_bulk_check = 0.0
            while True:
                now = time.monotonic()
                if now >= next_code and now < window_end and bulk_left > 0:
                    seq += 1
                    t0 = time.monotonic()
                    mid = api.send_sms(
                        f"7925{seq:07d}", f"Your code {seq:06d}", priority="high", provider=name
                    )
                    sent_at[mid] = t0
                    next_code += a.otc_interval
                pending = [m for m in sent_at if m not in observed]
                if pending:
                    for row in self.ledger.rows(pending):
                        if row.status not in IN_FLIGHT:
                            observed[row.id] = time.monotonic() - sent_at[row.id]
                if now - last_bulk_check >= 0.5:
                    bulk_left, last_bulk_check = self.ledger.in_flight("normal"), now
                window_over = now >= window_end or bulk_left == 0
                if window_over and not [m for m in sent_at if m not in observed]:
                    break
                if now > window_end + 60:
                    note(self.notes, "otc: codes still in flight 60 s after the window")
                    break
                time.sleep(0.005)
            window = min(time.monotonic(), window_end) - started
            rows = self.ledger.rows(list(sent_at))
            ledger_ms = [(r.accepted_at - r.created_at).total_seconds() * 1000 for r in rows if r.accepted_at]
            obs_ms = [v * 1000 for v in observed.values()]
            self.results.setdefault("otc", {})[layout] = {
                "pool": spec.label,
                "layout": layout,
                "kind": kind,
                "latency_ms": latency,
                "bulk": n,
                "codes": len(sent_at),
                "codes_done": len(observed),
                "interval_s": a.otc_interval,
                "observed_ms": summary(obs_ms),
                "ledger_accepted_minus_created_ms": summary(ledger_ms),
                "code_statuses": count_by(r.status for r in rows),
                "window_s": round(window, 2),
                "bulk_in_flight_at_start": bulk_at_start,
                "bulk_in_flight_at_end": bulk_left,
                "bulk_drain_msg_per_s": (bulk_at_start - bulk_left) / max(window, 1e-9),
            }
            o = self.results["otc"][layout]
            print(
                f"   {o['codes']} codes, observed p50 {o['observed_ms']['p50']} ms, p95 "
                f"{o['observed_ms']['p95']} ms; bulk {bulk_at_start} -> {bulk_left} in flight",
                flush=True,
            )
        finally:
            for w in pools:
                w.stop()
            client.flushdb()
            self.ledger.truncate()
            self.log_problems(f"otc {layout}", *pools)
            self.save()

    # 3. sustained rate with tracking on

    def expired_though_delivered(self) -> int:
        """Messages the ledger expired at the horizon that the simulator delivered: every
        number but the never-final ones (SILENT_SUFFIX) is delivered."""
        from dispatcher.models import MESSAGES as M

        query = select(func.count()).where(M.c.status == "expired", M.c.to.not_like("%9999"))
        with self.ledger.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def sustain(self, spec: PoolSpec) -> None:
        from dispatcher import api
        from workers import app as worker_app

        a = self.args
        kind, latency, rate, seconds = a.sustain_kind, a.sustain_latency, a.sustain_rate, a.sustain_seconds
        print(
            f"\n== sustained: {rate:g} msg/s for {seconds:g} s to {kind} at {latency:g} ms, {spec.label}, "
            "tracking on",
            flush=True,
        )
        self.use_config(self.write_config("sustain", tracking=True, horizon=a.sustain_horizon))
        client = redis.Redis.from_url(OURS_BROKER)
        client.flushdb()
        self.ledger.truncate()
        self.sim.prepare(kind, latency, self.notes)
        final_after = a.tracking_final_after
        self.sim.control(kind, "timing", {"sent_after": final_after / 3, "final_after": final_after})
        queues = (
            *OURS_QUEUES,
            getattr(worker_app, "CONTROL_QUEUE", "sms.control"),
            getattr(worker_app, "POLL_QUEUE", "sms.poll"),
        )
        ours = self.ours_workers(spec, queues=queues, beat=True)
        ours.start()
        name = self.sim.provider(kind)[0]
        samples: list[dict[str, Any]] = []
        tag = uuid.uuid4().hex[:6]

        from ops.bench_tracking import poll_lag

        def sample(t: float, phase: str) -> dict[str, Any]:
            lag, due, unasked = poll_lag(self)
            statuses = self.ledger.statuses()
            s = {
                "t": round(t, 2),
                "phase": phase,
                "in_flight": statuses.get("queued", 0) + statuses.get("sending", 0),
                "tracked": statuses.get("accepted", 0) + statuses.get("sent", 0),
                "poll_lag_s": round(lag, 1),
                "polls_due": due,
                "never_asked": unasked,
                **{f"llen_{q}": int(client.llen(q)) for q in queues},
            }
            samples.append(s)
            print(
                f"   t={s['t']:6.1f}s {phase:7} queued+sending {s['in_flight']:7d}  llen sms.bulk "
                f"{s['llen_sms.bulk']:6d}  accepted+sent {s['tracked']:6d}  polls due {due:6d}, "
                f"oldest {lag:6.1f} s",
                flush=True,
            )
            return s

        try:
            cpu0, started = ours.cpu(), time.monotonic()
            sent, next_sample, slow_calls = 0, 0.0, 0
            while (t := time.monotonic() - started) < seconds:
                due = min(int(rate * t) - sent, max(1, int(rate)))  # at most a second's worth a call
                if due > 0:
                    call = time.monotonic()
                    batch = [
                        {
                            "to": f"7926{(sent + i) % 10_000_000:07d}",
                            "text": f"bench {tag} {sent + i}",
                            "provider": name,
                            "priority": "normal",
                        }
                        for i in range(due)
                    ]
                    api.send_bulk(batch)
                    sent += due
                    slow_calls += time.monotonic() - call > 0.1
                if t >= next_sample:
                    sample(t, "produce")
                    next_sample += 5.0
                time.sleep(max(0.0, 0.1 - (time.monotonic() - started - t)))
            produced_s = time.monotonic() - started
            # Drain: checked every 0.5 s, sampled every 5 s, over when nothing is in flight;
            # tracked: when every message but the never-final numbers (SILENT) is final.
            drain_start = time.monotonic()
            drained_after: float | None = None
            tracked_after: float | None = None
            next_sample = produced_s + 5.0
            silent = sum(1 for n in range(sent) if f"{n % 10_000_000:07d}".endswith("9999"))
            while (now := time.monotonic()) < drain_start + a.drain_grace:
                if drained_after is None and self.ledger.in_flight() == 0:
                    drained_after = now - drain_start
                statuses = self.ledger.statuses()
                if (
                    statuses.get("accepted", 0) + statuses.get("sent", 0) <= silent
                    and drained_after is not None
                ):
                    tracked_after = now - drain_start
                    sample(now - started, "drain")
                    break
                if now - started >= next_sample:
                    sample(now - started, "drain")
                    next_sample += 5.0
                time.sleep(0.5)
            cpu = ours.cpu() - cpu0
            wall = time.monotonic() - started
            statuses = self.ledger.statuses()
            lost = sum(v for k, v in statuses.items() if k not in (*KEPT_STATUSES, "expired"))
            expired_delivered = self.expired_though_delivered()
            self.results["sustain"] = {
                "pool": spec.label,
                "kind": kind,
                "latency_ms": latency,
                "target_msg_per_s": rate,
                "seconds": seconds,
                "sent": sent,
                "achieved_msg_per_s": sent / produced_s,
                "send_bulk_calls_over_100ms": slow_calls,
                "drain_grace_s": a.drain_grace,
                "drained_after_s": None if drained_after is None else round(drained_after, 2),
                "final_after_s": None if tracked_after is None else round(tracked_after, 2),
                "status_horizon_s": a.sustain_horizon,
                "expired_though_delivered": expired_delivered,
                **backlog(samples, seconds, rate),
                **lagging(samples, seconds),
                "lost": lost,
                "statuses": statuses,
                "worker_cpu_ms_per_msg": cpu * 1000 / max(sent, 1),
                "worker_cores_busy": cpu / wall,
                "samples": samples,
            }
            s = self.results["sustain"]
            print(
                f"   sent {sent} ({s['achieved_msg_per_s']:.1f}/s); backlog max 2nd quarter "
                f"{s['backlog_q2_max']}, last quarter {s['backlog_q4_max']}: "
                f"{'bounded' if s['bounded'] else 'GROWING'}; lost {lost}; "
                f"poll lag max {s['poll_lag_max_s']} s "
                f"(Q2 {s['poll_lag_q2_max_s']}, Q4 {s['poll_lag_q4_max_s']}: "
                f"{'growing' if s['poll_lag_growing'] else 'not growing'}); expired though delivered "
                f"{expired_delivered}; all final {s['final_after_s']} s after the last send",
                flush=True,
            )
        finally:
            ours.stop()
            client.flushdb()
            self.log_problems("sustain", ours)
            self.save()


def lagging(samples: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The poll lag (the oldest due poll's age) at its worst, by quarter of the producing
    phase: growing when the last quarter's worst is over the second's by more than a
    round or two (5 s) and a quarter more."""

    def peak(lo: float, hi: float) -> float:
        return max((float(s["poll_lag_s"]) for s in samples if s["phase"] == "produce" and lo <= s["t"] < hi),
                   default=0.0)  # fmt: skip

    q2, q4 = peak(seconds / 4, seconds / 2), peak(seconds * 3 / 4, seconds + 1)
    return {
        "poll_lag_max_s": max((float(s["poll_lag_s"]) for s in samples), default=0.0),
        "poll_lag_q2_max_s": q2,
        "poll_lag_q4_max_s": q4,
        "poll_lag_growing": q4 > 1.25 * q2 + 5.0,
    }


def backlog(samples: Sequence[dict[str, Any]], seconds: float, rate: float) -> dict[str, Any]:
    """Backlog maxima by quarter of the producing phase, the verdict, the slope."""

    def peak(lo: float, hi: float, key: str) -> int:
        return max((int(s[key]) for s in samples if s["phase"] == "produce" and lo <= s["t"] < hi), default=0)

    q2 = peak(seconds / 4, seconds / 2, "in_flight")
    q4 = peak(seconds * 3 / 4, seconds + 1, "in_flight")
    half = [(s["t"], s["in_flight"]) for s in samples if s["phase"] == "produce" and s["t"] >= seconds / 2]
    slope = None
    if len(half) >= 2:
        mt = sum(t for t, _ in half) / len(half)
        mb = sum(b for _, b in half) / len(half)
        var = sum((t - mt) ** 2 for t, _ in half)
        slope = sum((t - mt) * (b - mb) for t, b in half) / var if var else None
    return {
        "backlog_q2_max": q2,
        "backlog_q4_max": q4,
        "llen_bulk_q2_max": peak(seconds / 4, seconds / 2, "llen_sms.bulk"),
        "llen_bulk_q4_max": peak(seconds * 3 / 4, seconds + 1, "llen_sms.bulk"),
        "bounded": q4 <= 1.25 * q2 + 2 * rate,
        "backlog_slope_msg_per_s": None if slope is None else round(slope, 2),
    }


def summary(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 1)

    return {"n": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": round(ordered[-1], 1)}


def count_by(values: Iterator[str] | Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


# -- machine facts and the table -------------------------------------------------------------


def machine(engine: Engine) -> dict[str, Any]:
    import celery
    import kombu

    def first(path: str, key: str) -> str | None:
        with suppress(OSError):
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        return None

    def run(*cmd: str) -> str | None:
        with suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return None

    with engine.connect() as conn:
        pg_version = conn.execute(text("SHOW server_version")).scalar_one()
    mem = first("/proc/meminfo", "MemTotal")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "redis_py": redis.__version__,
        "redis_server": redis.Redis.from_url(OURS_BROKER).info("server").get("redis_version"),
        "postgresql": pg_version,
        "loadavg_start": os.getloadavg(),
        "git_commit": run("git", "rev-parse", "HEAD"),
        "git_dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no")),
    }


def print_table(results: dict[str, Any]) -> None:
    m = results.get("machine", {})
    print(
        f"\nmachine: {m.get('nproc')} CPUs, {m.get('cpu_model')}, Python {m.get('python')}, "
        f"Celery {m.get('celery')}, load average at start {m.get('loadavg_start')}"
    )
    cells = results.get("matrix") or []
    if cells:
        head = (
            f"{'pool':13} {'kind':8} {'lat':>4} {'N':>6} | {'bare msg/s':>10} {'ours msg/s':>10} "
            f"{'ours/bare':>9} | {'CPU ms/msg bare':>15} {'ours':>7} {'ours/bare':>9}"
        )
        print(head)
        print("-" * len(head))
        for c in cells:
            b, o = c["bare"], c["ours"]
            flags = "".join(
                "!"
                if side.get(bad) or side["timed_out"] or (side.get("simulator") or {}).get("duplicates")
                else " "
                for side, bad in ((b, "failed"), (o, "not_ok"))
            )
            cpu_ratio = o["cpu_ms_per_msg"] / b["cpu_ms_per_msg"] if b["cpu_ms_per_msg"] else float("nan")
            print(
                f"{c['pool']:13} {c['kind']:8} {c['latency_ms']:>4g} {c['n']:>6} | {b['msg_per_s']:>10.1f} "
                f"{o['msg_per_s']:>10.1f} {c['ratio'] or 0:>9.3f} | {b['cpu_ms_per_msg']:>15.2f} "
                f"{o['cpu_ms_per_msg']:>7.2f} {cpu_ratio:>9.1f} {flags}"
            )
    for o in results.get("otc", {}).values():
        print(
            f"one-time codes, {o['layout']} pools ({o['pool']}, {o['kind']} at {o['latency_ms']:g} ms, "
            f"behind {o['bulk']} bulk): "
            f"{o['codes']} codes, send_sms to leaving queued/sending p50 {o['observed_ms']['p50']} ms, "
            f"p95 {o['observed_ms']['p95']} ms, max {o['observed_ms']['max']} ms; ledger accepted-created "
            f"p50 {o['ledger_accepted_minus_created_ms']['p50']} ms, "
            f"p95 {o['ledger_accepted_minus_created_ms']['p95']} ms"
        )
    if "sustain" in results:
        s = results["sustain"]
        print(
            f"sustained ({s['pool']}, {s['kind']} at {s['latency_ms']:g} ms, tracking on): target "
            f"{s['target_msg_per_s']:g} msg/s for {s['seconds']:g} s, "
            f"achieved {s['achieved_msg_per_s']:.1f}; "
            f"queued+sending max Q2 {s['backlog_q2_max']}, Q4 {s['backlog_q4_max']} "
            f"({'bounded' if s['bounded'] else 'growing'}, slope {s['backlog_slope_msg_per_s']} msg/s), "
            f"llen sms.bulk max Q2 {s['llen_bulk_q2_max']}, Q4 {s['llen_bulk_q4_max']}; lost {s['lost']}; "
            f"worker CPU {s['worker_cpu_ms_per_msg']:.2f} ms/msg; poll lag max {s.get('poll_lag_max_s')} s "
            f"(Q2 {s.get('poll_lag_q2_max_s')}, Q4 {s.get('poll_lag_q4_max_s')}); expired though delivered "
            f"{s.get('expired_though_delivered')}; all final {s.get('final_after_s')} s after the drain began"
        )
    from ops.bench_tracking import print_tracking

    print_tracking(results)
    for n in results.get("notes") or []:
        print(f"note: {n}")


# -- main ---------------------------------------------------------------------------------------


def csv(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda value: [convert(v.strip()) for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every message count")
    p.add_argument("--json", default="bench-results.json", help="where to write the results")
    p.add_argument(
        "--parts", type=csv(str), default="matrix,otc,sustain,tracking", help="matrix,otc,sustain,tracking"
    )
    p.add_argument(
        "--pools",
        type=csv(PoolSpec.parse),
        default=DEFAULT_POOLS,
        help="POOL:CONCURRENCYxPROCESSES,...; gevent is skipped when not installed",
    )
    p.add_argument("--kinds", type=csv(str), default=DEFAULT_KINDS, help="smska,mysms,sms1000,prostor")
    p.add_argument("--latencies", type=csv(float), default="0,50", help="simulator latency, ms")
    p.add_argument("--messages", type=int, default=2000, help="N per cell, per-message kinds (x scale)")
    p.add_argument("--batched-messages", type=int, default=20000, help="N per cell, prostor (x scale)")
    p.add_argument(
        "--peer-prostor-batch",
        type=int,
        default=1,
        help="messages per bare-task call to prostor (1: one requests.post per SMS)",
    )
    p.add_argument(
        "--cell-seconds",
        type=float,
        default=15.0,
        help="cut N to what the bare task could do in this time at the cell's latency",
    )
    p.add_argument("--cell-timeout", type=float, default=300.0, help="give up on a side of a cell after this")
    p.add_argument("--loglevel", default="warning", help="of every worker; info logs two lines per task")
    p.add_argument("--bulk-chunk", type=int, default=1000, help="messages per send_bulk call")
    p.add_argument(
        "--load-pool",
        type=PoolSpec.parse,
        default=None,
        help="pool of the otc and sustain parts (default: the first of --pools)",
    )
    p.add_argument("--otc-kind", default="smska")
    p.add_argument("--otc-latency", type=float, default=50.0, help="ms")
    p.add_argument("--otc-interval", type=float, default=0.1, help="seconds between one-time codes")
    p.add_argument("--otc-seconds", type=float, default=30.0, help="longest time codes are sent")
    p.add_argument("--sustain-seconds", type=float, default=300.0)
    p.add_argument("--sustain-rate", type=float, default=278.0, help="msg/s (278 = one million per hour)")
    p.add_argument("--sustain-kind", default="prostor")
    p.add_argument("--sustain-latency", type=float, default=50.0, help="ms")
    p.add_argument(
        "--drain-grace", type=float, default=60.0, help="seconds to drain after the producer stops"
    )
    p.add_argument(
        "--sustain-horizon", type=float, default=120.0, help="pipeline.status_horizon of the sustained run"
    )
    p.add_argument(
        "--tracking-kinds",
        type=csv(str),
        default="smska,sms1000,smstele",
        help="asked one id per status call",
    )
    p.add_argument("--tracking-latencies", type=csv(float), default="0,50", help="status call latency, ms")
    p.add_argument(
        "--tracking-messages", type=int, default=20000, help="burst per kind and latency (x scale)"
    )
    p.add_argument("--tracking-probe", type=int, default=3000, help="first, N to smska at 0 ms (0: none)")
    p.add_argument("--tracking-final-after", type=float, default=1.5, help="seconds the simulator takes")
    p.add_argument("--tracking-timeout", type=float, default=600.0, help="give up on a burst after this")
    p.add_argument(
        "--tracking-queue", type=int, default=50000, help="burst to prostor's status queue (0: none)"
    )
    p.add_argument(
        "--poll-pool", type=PoolSpec.parse, default=PoolSpec("threads", 50, 1), help="sms.poll pool"
    )
    args = p.parse_args(argv)
    unknown = set(args.parts) - {"matrix", "otc", "sustain", "tracking"}
    if unknown:
        p.error(f"--parts: unknown {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    for var in ("SMSDISPATCH_DATABASE_URL", "SMSDISPATCH_BROKER_URL", "SMSDISPATCH_CONFIG"):
        os.environ.pop(var, None)  # they would override our config, in here and in the workers
    notes: list[str] = []
    specs = []
    for spec in args.pools:
        if spec.pool in ("gevent", "eventlet") and importlib.util.find_spec(spec.pool) is None:
            note(notes, f"pool {spec.label} skipped: {spec.pool} is not installed")
        else:
            specs.append(spec)
    load_pool = args.load_pool or (specs[0] if specs else PoolSpec("threads", 50, 1))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="smsdispatch-bench-"))
    print(f"logs in {tmp}", flush=True)
    ensure_database(PG)
    from dispatcher import db

    engine = db.make_engine(PG)
    ledger = Ledger(engine)
    ledger.fresh_schema()
    for url in (OURS_BROKER, PEER_BROKER):
        redis.Redis.from_url(url).flushdb()
    results: dict[str, Any] = {"machine": machine(engine), "options": dict(vars(args))}
    results["options"]["pools"] = [s.label for s in specs]
    results["options"]["load_pool"] = load_pool.label
    sim = None
    try:
        sim = start_sim(tmp)
        os.environ["BENCH_PEER_BROKER"] = PEER_BROKER
        os.environ["BENCH_PEER_SIM_CONFIG"] = str(sim.config)
        bench = Bench(args, tmp, sim, ledger, results, notes)
        if "matrix" in args.parts:
            bench.matrix(specs)
        if "otc" in args.parts:
            bench.otc(load_pool)
        if "sustain" in args.parts and args.sustain_seconds > 0:
            bench.sustain(load_pool)
        if "tracking" in args.parts:
            from ops.bench_tracking import tracking

            tracking(bench, load_pool, args.poll_pool)
        results["machine"]["loadavg_end"] = os.getloadavg()
        bench.save()
    finally:
        stop_all()
        for url in (OURS_BROKER, PEER_BROKER):
            with suppress(redis.RedisError):
                redis.Redis.from_url(url).flushdb()
        engine.dispose()
        with suppress(Exception):
            from dispatcher import db as db_mod

            db_mod.dispose_engines()
    print_table(results)
    print(f"written to {args.json}; logs in {tmp}")


if __name__ == "__main__":
    main()
