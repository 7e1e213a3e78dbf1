"""A running stack for pipeline tests: the simulator, a Redis database, a ledger
(SQLite file or PostgreSQL), a config file, and real Celery worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from dispatcher import config, db
from dispatcher.models import utcnow
from dispatcher.redis_conn import client_for
from dispatcher.simulator.core import Simulator
from tests.conftest import sim_table
from tests.host_commands import WORKER, host_argv

REDIS_URL = os.environ.get("SMSDISPATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get("SMSDISPATCH_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).parent.parent

# Pipeline settings that make a test run in seconds, not minutes.
FAST_PIPELINE: dict[str, Any] = {
    "backoff_base": 0.1,
    "backoff_cap": 0.5,
    "breaker_threshold": 3,
    "breaker_cooldown": 2.0,
    "exhausted_delay": 1.0,
    "sweeper_interval": 1.0,
    "sweeper_stale_after": 2.0,
    "visibility_timeout": 15.0,
    "soft_shutdown_timeout": 2.0,
}


# Polls every fraction of a second, so delivery reaches the ledger within a test.
SCHEMA_HEAD = "0006"  # the newest migration (dispatcher/migrations/versions/)
FAST_POLLING: dict[str, Any] = {"interval": 0.3, "intervals": [0.3, 0.5, 1.0], "queue_interval": 0.3}


toml = config.to_toml


def reset_postgres(url: str) -> None:
    from sqlmodel import SQLModel

    import dispatcher.models  # noqa: F401 - registers every table on the metadata

    # Every table the models know, so that a new migration's table goes too.
    tables = ", ".join([*SQLModel.metadata.tables, "alembic_version"])
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {tables} CASCADE"))
    engine.dispose()


class Stack:
    def __init__(self, sim: Simulator, tmp: Path, database: str = "sqlite", redis_url: str = REDIS_URL,
                 db_url: str | None = None, pool: str = "prefork") -> None:  # fmt: skip
        self.sim = sim
        self.pool = pool  # the Celery pool of the workers it starts: prefork, threads or gevent
        self.tmp = tmp
        self.database = database
        self.db_url = db_url or (f"sqlite:///{tmp / 'ledger.db'}" if database == "sqlite" else PG_URL)
        self.redis_url = redis_url
        # Any URL the stack can run on, a sentinel one included (a client of the
        # current master, found again after a failover).
        self.redis = client_for(redis_url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.config_path = tmp / "smsdispatch.toml"
        self.table: dict[str, Any] = {}
        self.broker_cleared = False

    def configure(self, providers: Iterable[str] | None = None, pipeline: dict[str, Any] | None = None,
                  polling: dict[str, Any] | None = None, sections: dict[str, Any] | None = None,
                  **provider_overrides: dict[str, Any]) -> config.Settings:  # fmt: skip
        """Write the config (only ``providers``, in that priority order) and install
        it in this process too. ``sections``: other top-level tables as given
        (``{"policy": {...}, "callbacks": {...}}``)."""
        table = sim_table(self.sim)
        names = list(providers or table["providers"])
        table["providers"] = {
            n: {**table["providers"][n], "priority": (i + 1) * 10} for i, n in enumerate(names)
        }
        for name, overrides in provider_overrides.items():
            table["providers"][name].update(overrides)
        table["database_url"] = self.db_url
        table["broker_url"] = self.redis_url
        table["pipeline"] = {**FAST_PIPELINE, **(pipeline or {})}
        table["polling"] = {**FAST_POLLING, **(polling or {})}
        table.update(sections or {})
        self.table = table
        self.config_path.write_text(toml(table), encoding="utf-8")
        settings = config.load(self.config_path, env={})
        config.set_settings(settings)
        os.environ["SMSDISPATCH_CONFIG"] = str(self.config_path)
        from dispatcher.coordination import coordinator_for
        from workers import app as worker_app

        if self.redis_url == REDIS_URL:
            # Only the shared test broker: the producer side of this process stays on it.
            worker_app.configure(settings)
        db.dispose_engines()
        if self.database == "postgres":
            reset_postgres(self.db_url)
            db.upgrade(db.make_engine(self.db_url))
        coordinator_for(self.redis_url).reset()
        if not self.broker_cleared:
            self.clear_broker()
        return settings

    def clear_broker(self) -> None:
        """Drop the tasks an earlier test left on the shared broker: a test that queues
        and never starts a worker, a task unacked when its worker was killed. This
        stack's workers would otherwise run them against a ledger that never had those
        messages (CI once saw a stale send open a fresh ledger in a race)."""
        stale = [*self.redis.scan_iter("sms.*"), *self.redis.scan_iter("unacked*")]
        if stale:
            self.redis.delete(*stale)
        self.broker_cleared = True

    def start_worker(self, queues: str = "sms.high,sms.bulk,sms.control,sms.poll", concurrency: int = 2,
                     beat: bool = False, loglevel: str = "info") -> subprocess.Popen[bytes]:  # fmt: skip
        n = len(self.workers)
        log = self.tmp / f"worker{n}.log"
        # A thread or greenlet pool runs many tasks in one process: as many as a prefork
        # pool of `concurrency` children would, times ten (their tasks mostly wait).
        slots = concurrency if self.pool == "prefork" else concurrency * 10
        args = host_argv(WORKER, "-Q", queues,
                "-c", str(slots), "-P", self.pool, "-l", loglevel, "-n", f"w{n}-{os.getpid()}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat")  # fmt: skip
        if beat and self.pool == "gevent":
            self.start_beat()  # -B is refused under a greenlet pool: a beat of its own
        elif beat:
            args += ["-B", "-s", str(self.tmp / f"beat{n}")]
        env = {**os.environ, "SMSDISPATCH_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(proc)
        self.logs.append(log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if b" ready." in log.read_bytes():
                return proc
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready: {log.read_text()[-3000:]}")

    def start_beat(self) -> subprocess.Popen[bytes]:
        from tests.host_commands import BEAT

        n = len(self.workers)
        log = self.tmp / f"beat{n}.log"
        args = host_argv(BEAT, "-s", str(self.tmp / f"beat{n}"), "-l", "info")
        env = {**os.environ, "SMSDISPATCH_CONFIG": str(self.config_path), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.workers.append(proc)
        self.logs.append(log)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """kill -9 of the whole worker: the main process and its pool."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.workers.clear()
        db.dispose_engines()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs)

    def statuses(self, ids: Iterable[str]) -> dict[str, str]:
        from dispatcher.models import MESSAGES

        ids = list(ids)
        out: dict[str, str] = {}
        with db.session_scope() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = s.execute(MESSAGES.select().with_only_columns(MESSAGES.c.id, MESSAGES.c.status)
                                 .where(MESSAGES.c.id.in_(chunk))).all()  # fmt: skip
                out.update({r[0]: r[1] for r in rows})
        return out

    def wait_until(self, ids: Iterable[str], done: set[str], timeout: float = 30.0) -> dict[str, str]:
        ids = list(ids)
        deadline = time.monotonic() + timeout
        statuses: dict[str, str] = {}
        while time.monotonic() < deadline:
            statuses = self.statuses(ids)
            if len(statuses) == len(ids) and all(s in done for s in statuses.values()):
                return statuses
            time.sleep(0.2)
        return statuses


TAKEN = {"accepted", "sent", "delivered"}  # a provider took it (polling may move it on)
SETTLED = {"accepted", "sent", "delivered", "undelivered", "expired", "rejected", "failed", "unknown"}


def now_plus(seconds: float) -> Any:
    from datetime import timedelta

    return utcnow() + timedelta(seconds=seconds)


def run_cli(config_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`smsdispatch ARGS` as a user runs it, against one config file. Service commands
    go through their host_commands entry (tests/host_commands.py)."""
    from tests.host_commands import DOCTOR, host_argv

    env = {"SMSDISPATCH_CONFIG": str(config_path), "PATH": "/usr/bin:/bin"}
    argv = (
        host_argv(DOCTOR, *args[1:]) if args and args[0] == "doctor" else host_argv(("smsdispatch",), *args)
    )
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


class InlinePolls:
    """The poll path in this process, on the real ledger, Redis and simulator: a round
    publishes its groups here, and ``round`` runs them at once, one after another."""

    def __init__(self, settings: config.Settings, coordinator: Any = None) -> None:
        from dispatcher.coordination import coordinator_for
        from dispatcher.providers.pool import ProviderPool
        from dispatcher.tracking import Poller

        self.published: list[tuple[str, list[str], float]] = []
        self.calls = ProviderPool(settings)
        self.coordinator = coordinator if coordinator is not None else coordinator_for(REDIS_URL)
        self.poller = Poller(settings, self.coordinator, self.calls, self._publish)

    def _publish(self, name: str, tickets: Any, expires: float) -> None:
        self.published.append((name, list(tickets), expires))

    def round(self, name: str) -> Any:
        """One poll round of ``name`` and the groups it published; their stats summed
        (``due``, ``published`` and ``expired`` are the round's)."""
        stats = self.poller.dispatch(name)
        tickets = [t for p, mine, _ in self.published if p == name for t in mine]
        self.published = [p for p in self.published if p[0] != name]
        for ticket in tickets:
            done = self.poller.poll_group(name, ticket)
            stats.calls += done.calls
            stats.polled += done.polled
            stats.changed += done.changed
            stats.errors += done.errors
        return stats

    def close(self) -> None:
        self.calls.close()


def store_accepted(settings: config.Settings, kind: str, phones: list[str], *, age: float = 0.0,
             due_ago: list[float] | None = None, with_ids: bool = True) -> list[str]:  # fmt: skip
    """Messages the simulator really took, stored as accepted ``age`` seconds ago, each
    due for a poll ``due_ago[i]`` seconds ago (never polled yet)."""
    from dispatcher.models import MESSAGES
    from dispatcher.providers import make_provider
    from dispatcher.providers.base import OutgoingSms

    provider = make_provider(settings.provider(kind))
    try:
        sent = provider.send(
            [OutgoingSms(uuid.uuid4().hex, phone, f"track {n}") for n, phone in enumerate(phones)]
        )
    finally:
        provider.close()
    now = utcnow()
    at = now - timedelta(seconds=age)
    rows = [
        {"id": o.id, "payload_hash": "x", "to": phone, "text": "t", "priority": "normal", "parts": 1,
         "encoding": "gsm7", "status": "accepted", "provider": kind,
         "provider_message_id": o.provider_message_id if with_ids else None, "attempts": 1, "retries": 0,
         "failovers": 0, "tried": "", "polls": 0, "created_at": at, "updated_at": at,
         "expires_at": now + timedelta(days=1), "due_at": at, "accepted_at": at,
         "next_poll_at": now - timedelta(seconds=(due_ago or [0.0] * len(phones))[n])}
        for n, (o, phone) in enumerate(zip(sent, phones, strict=True))
    ]  # fmt: skip
    with db.session_scope() as s:
        s.execute(insert(MESSAGES), rows)
    return [o.id for o in sent]
