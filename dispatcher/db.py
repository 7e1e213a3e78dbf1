"""One engine factory and the session per unit of work.

SQLite (the default) runs in WAL mode with a busy timeout, and every transaction
starts with ``BEGIN IMMEDIATE``: several worker processes then queue for the write
lock instead of failing with "database is locked" when a read turns into a write.
PostgreSQL is used through ``postgresql+psycopg://``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from dispatcher.errors import ConfigError

T = TypeVar("T")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()
# Connections per process for PostgreSQL. A worker sets it from its pool before any
# engine exists (workers/app.py): a thread or greenlet pool of N needs up to N at once.
_pool_size = 5


def set_pool_size(size: int) -> None:
    """Size the PostgreSQL pool of engines made from now on (a worker's concurrency)."""
    global _pool_size
    _pool_size = max(1, size)


MIGRATIONS = Path(__file__).parent / "migrations"


def normalize_url(url: str) -> str:
    # `postgresql://` would pick psycopg2, which we do not ship; psycopg 3 it is.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        # How long a write waits for another process's lock before "database is
        # locked" (callers then retry as they would a database outage).
        busy = float(os.environ.get("SMSDISPATCH_SQLITE_BUSY_TIMEOUT", "30"))
        engine = create_engine(url, connect_args={"timeout": busy, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling is switched off so that the
            # "begin" hook below decides how a transaction starts.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            _journal_in_wal(cur, busy)
            cur.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql"):
        return create_engine(url, pool_pre_ping=True, pool_size=_pool_size, max_overflow=5)
    raise ConfigError("database_url", f"unsupported database URL {url!r}")


def _journal_in_wal(cur: Any, patience: float) -> None:
    # A ledger file so new that another process is still writing its first
    # transaction is in rollback mode, and switching it to WAL then fails at once with
    # "database is locked": SQLite skips the busy handler where waiting could deadlock
    # (sqlite3_busy_handler). Two worker children opening a fresh ledger together hit
    # it. It lasts until that transaction commits, so it is waited out here.
    deadline = time.monotonic() + patience
    pause = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (the configured one by default).

    A fresh SQLite file gets its schema on first use; PostgreSQL wants an explicit
    ``smsdispatch db upgrade``.
    """
    if url is None:
        from dispatcher.config import get_settings

        url = get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = make_engine(url)
            if engine.dialect.name == "sqlite" and not inspect(engine).has_table("alembic_version"):
                upgrade(engine)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Forget pooled connections (after a fork, and in tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


# SQLite has one writer at a time. Within a process its transactions take turns on
# this lock rather than in SQLite's busy handler: under a greenlet pool a
# transaction that waits on Redis or the network yields to another greenlet, whose
# BEGIN IMMEDIATE would then block the whole process (the C call does not yield)
# until the busy timeout. Under gevent this lock is a cooperative one.
_sqlite_turn = threading.RLock()


@contextmanager
def session_scope(url: str | None = None, *, statement_timeout: float | None = None) -> Iterator[Session]:
    """A session for one unit of work: committed on success, rolled back on error.

    ``statement_timeout`` (seconds, PostgreSQL only): each statement of the session
    gives up after it with an ``OperationalError``, for readers that must answer
    rather than wait (the console). SQLite has no such limit and ignores it."""
    engine = get_engine(url)
    turn = _sqlite_turn if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    with turn, Session(engine, expire_on_commit=False) as session:
        try:
            if statement_timeout is not None and engine.dialect.name == "postgresql":
                # SET LOCAL: for this transaction only, the pooled connection keeps none of it.
                session.execute(
                    text(f"SET LOCAL statement_timeout = {max(1, round(statement_timeout * 1000))}")
                )
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# SQLSTATE classes a retry can outlive: connection exceptions (08), the server
# shutting down or restarting (57P), out of resources (53), and a transaction the
# database asks to run again (serialization failure, deadlock).
_PASSING = ("08", "57P", "53", "40001", "40P01")


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not do it now (down, restarting,
    locked, out of connections), as opposed to refusing what we asked: only then
    does running the same thing again later help."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if isinstance(state, str):
        return state.startswith(_PASSING)
    # SQLite and connection failures before any SQLSTATE: "database is locked",
    # "unable to open database file", "connection refused".
    return isinstance(exc, OperationalError | InterfaceError)


def write_through_outage(fn: Callable[[], T], *, budget: float = 15.0) -> T:
    """Run a ledger write, retrying while the database is unreachable for up to
    ``budget`` seconds. For the write-back after a provider call: the outcome exists
    only in this worker's memory, and a restart of the database must not turn a
    message the provider took into an `unknown` one."""
    import time

    from sqlalchemy.exc import DBAPIError, OperationalError

    deadline = time.monotonic() + budget
    delay = 0.1
    while True:
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and not (
                exc.connection_invalidated or isinstance(exc, OperationalError)
            ):
                raise
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
