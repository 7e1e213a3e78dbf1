"""Lookups in a big ledger: ``dispatcher.search.search`` over N messages (issue 13).

    .venv/bin/python -m ops.bench_search                      # SQLite in a temp file, 1,000,000 rows
    .venv/bin/python -m ops.bench_search --database postgresql+psycopg://postgres@127.0.0.1:5432/bench
    .venv/bin/python -m ops.bench_search --rows 100000 --json   # the figures as JSON on stdout

A benchmark, not a test: it prints what it measured (and says when the recipient query
is not an index scan, exit 1).

1. The schema by the migrations (``dispatcher.db.upgrade``) on an empty database:
   a PostgreSQL database has the ledger's tables dropped first (``test`` is refused:
   the tests use it); SQLite is a new file (``--database sqlite:///PATH`` to keep it).
2. ``--rows`` settled messages, set-based and in chunks of 100,000 (PostgreSQL
   ``INSERT ... SELECT FROM generate_series``, SQLite a recursive CTE), with every
   index of the schema in place as in production: ``--recipients`` distinct numbers
   (about rows/recipients messages each), ``created_at`` spread over the last 180
   days, four clients and none, five providers, a provider id on every message and an
   idempotency key on every tenth. Then ``ANALYZE``.
   On PostgreSQL the table is vacuumed as well (autovacuum would be, mid-timing).
3. The real ``search(settings, ...)``, each call its own session and transaction as
   the API makes it, first page of 100, timed by the wall clock around the call:
   ``--lookups`` random recipients (``to``), as many random keys and provider ids, the
   newest page of a client and the page after it through the returned cursor. Five
   lookups of each kind run first, untimed, to open the connection and warm the caches.
   p50 / p95 / max in milliseconds.
4. The plan of the recipient query as ``search`` sends it (the statement and
   parameters are captured from the engine): ``EXPLAIN (ANALYZE, BUFFERS)`` on
   PostgreSQL, ``EXPLAIN QUERY PLAN`` on SQLite. It must use ``ix_messages_to_created``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dispatcher import config, db  # noqa: E402
from dispatcher.search import search  # noqa: E402

CHUNK = 100_000
CLIENTS = ("shop", "crm", "bank", "news")
PROVIDERS = ("prostor", "smska", "mysms", "sms1000", "smstele")
SPREAD_S = 180 * 24 * 3600  # created_at over the last 180 days
INDEX = "ix_messages_to_created"


def phone(n: int) -> str:
    return f"7916{n:07d}"


# Row g of the fill, the same on both databases: recipient (g * 7919) mod R (7919 is
# prime, so consecutive rows go to scattered numbers), created_at g * 104729 seconds mod
# 180 days ago (scattered in time too), client by g mod 5 (the fifth: none).
_PG_FILL = """
INSERT INTO messages (id, key, payload_hash, "to", region, text, priority, parts, encoding, status,
    provider, provider_message_id, attempts, retries, failovers, tried, polls, created_at, updated_at,
    expires_at, due_at, final_at, client)
SELECT md5(g::text), CASE WHEN g % 10 = 0 THEN 'key-' || g END, repeat('h', 64),
    '7916' || lpad(((g * 7919) % :recipients)::text, 7, '0'), 'RU', 'Your code: ' || (g % 10000), 'normal',
    1, 'gsm7', 'delivered', (ARRAY['prostor','smska','mysms','sms1000','smstele'])[g % 5 + 1], 'pm-' || g,
    1, 0, 0, '', 1, c, c, c + interval '1 day', c, c + interval '5 second',
    (ARRAY['shop','crm','bank','news',NULL])[g % 5 + 1]
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g,
    LATERAL (SELECT now() - make_interval(secs => (g::bigint * 104729) % :spread) AS c) AS t
"""

_SQLITE_FILL = """
INSERT INTO messages (id, key, payload_hash, "to", region, text, priority, parts, encoding, status,
    provider, provider_message_id, attempts, retries, failovers, tried, polls, created_at, updated_at,
    expires_at, due_at, final_at, client)
WITH RECURSIVE s(g) AS (SELECT :first UNION ALL SELECT g + 1 FROM s WHERE g < :last),
t(g, c) AS (
    SELECT g, strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || ((g * 104729) % :spread) || ' seconds')
              || '.' || printf('%06d', (g * 7) % 1000000)
    FROM s)
SELECT printf('%032x', g), CASE WHEN g % 10 = 0 THEN 'key-' || g END, printf('%.64c', 'h'),
    '7916' || printf('%07d', (g * 7919) % :recipients), 'RU', 'Your code: ' || (g % 10000), 'normal',
    1, 'gsm7', 'delivered',
    CASE g % 5 WHEN 0 THEN 'prostor' WHEN 1 THEN 'smska' WHEN 2 THEN 'mysms' WHEN 3 THEN 'sms1000'
        ELSE 'smstele' END,
    'pm-' || g, 1, 0, 0, '', 1, c, c, c, c, c,
    CASE g % 5 WHEN 0 THEN 'shop' WHEN 1 THEN 'crm' WHEN 2 THEN 'bank' WHEN 3 THEN 'news' END
FROM t
"""


def prepare(url: str) -> Engine:
    """An empty ledger at ``url`` with the current schema."""
    engine = db.make_engine(url)
    if engine.dialect.name == "postgresql":
        name = make_url(url).database
        if name == "test" or (name or "").startswith("test_"):
            raise SystemExit(f"refusing to empty the database {name!r}: the tests use it")
        from sqlmodel import SQLModel

        import dispatcher.models  # noqa: F401 - every table on the metadata

        tables = ", ".join([*SQLModel.metadata.tables, "alembic_version"])
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {tables} CASCADE"))
    db.upgrade(engine)
    return engine


def fill(engine: Engine, rows: int, recipients: int, progress: bool) -> float:
    statement = text(_PG_FILL if engine.dialect.name == "postgresql" else _SQLITE_FILL)
    start = time.perf_counter()
    for first in range(1, rows + 1, CHUNK):
        last = min(first + CHUNK - 1, rows)
        with engine.begin() as conn:
            conn.execute(
                statement, {"first": first, "last": last, "recipients": recipients, "spread": SPREAD_S}
            )
        if progress:
            print(
                f"\rfilled {last:,} / {rows:,} ({time.perf_counter() - start:.0f} s)", end="", file=sys.stderr
            )
    if progress:
        print(file=sys.stderr)
    return time.perf_counter() - start


def analyze(engine: Engine) -> float:
    """Statistics for the planner. PostgreSQL: VACUUM too, as autovacuum would after a
    load this size; done here so that it does not start in the middle of the timing."""
    start = time.perf_counter()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) messages"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return time.perf_counter() - start


def summary(samples: Sequence[float], found: Sequence[int]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[max(0, int(0.95 * len(ordered)) - 1)], 3),
        "max_ms": round(ordered[-1], 3),
        "rows_per_page": round(sum(found) / len(found), 1),
    }


def timed(calls: Sequence[Callable[[], int]], warm: int = 5) -> dict[str, Any]:
    for call in calls[:warm]:
        call()
    samples: list[float] = []
    found: list[int] = []
    for call in calls:
        start = time.perf_counter()
        n = call()
        samples.append((time.perf_counter() - start) * 1000)
        found.append(n)
    return summary(samples, found)


def plan(engine: Engine, settings: config.Settings, to: str) -> list[str]:
    """The plan of the recipient query exactly as ``search`` sends it."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        if "FROM messages" in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        search(settings, to=to, limit=100)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = captured[-1]
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
            return [r[0] for r in rows]
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
        return [str(r[-1]) for r in rows]


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = args.database
    engine = prepare(url)
    fill_s = fill(engine, args.rows, args.recipients, progress=not args.json)
    analyze_s = analyze(engine)
    engine.dispose()
    settings = config.parse({"database_url": url}, source="ops/bench_search.py")
    engine = db.get_engine(url)  # the one search uses
    rng = random.Random(args.seed)
    n = args.lookups

    def lookup(**filters: Any) -> Callable[[], int]:
        return lambda: len(search(settings, limit=100, **filters)[0])

    load_before = os.getloadavg()[0]
    with engine.connect() as conn:
        recipients = int(conn.execute(text('SELECT count(DISTINCT "to") FROM messages')).scalar_one())
    results = {
        "by recipient (to)": timed([lookup(to=phone(rng.randrange(args.recipients))) for _ in range(n)]),
        "by idempotency key": timed(
            [lookup(key=f"key-{rng.randrange(1, args.rows // 10 + 1) * 10}") for _ in range(n)]
        ),
        "by provider id": timed(
            [lookup(provider_message_id=f"pm-{rng.randrange(1, args.rows + 1)}") for _ in range(n)]
        ),
        "client, newest page": timed([lookup(client=rng.choice(CLIENTS)) for _ in range(n)]),
    }
    # The page after the first, through the cursor the first page returned.
    cursors = [(c, search(settings, client=c, limit=100)[1]) for c in (rng.choice(CLIENTS) for _ in range(n))]
    results["client, second page"] = timed([lookup(client=c, cursor=cur) for c, cur in cursors])
    load_after = os.getloadavg()[0]
    steps = plan(engine, settings, phone(rng.randrange(args.recipients)))
    shown = engine.url.render_as_string(hide_password=True)
    versions = {
        "dialect": engine.dialect.name,
        "server": ".".join(map(str, engine.dialect.server_version_info or ())),
    }
    engine.dispose()
    db.dispose_engines()
    return {
        "database": shown, **versions, "rows": args.rows, "recipients": recipients,
        "fill_s": round(fill_s, 1), "analyze_s": round(analyze_s, 1), "page": 100, "lookups": results,
        "plan": steps, "index_scan": any(INDEX in step for step in steps), "nproc": os.cpu_count(),
        "load_1min": [round(load_before, 2), round(load_after, 2)],
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['database']} ({result['dialect']} {result['server']}): {result['rows']:,} messages,"
        f" {result['recipients']:,} recipients",
        f"filled in {result['fill_s']} s, {'VACUUM ' if result['dialect'] == 'postgresql' else ''}ANALYZE"
        f" {result['analyze_s']} s; {result['nproc']} CPUs,"
        f" load average {result['load_1min'][0]} before the lookups, {result['load_1min'][1]} after",
        "",
        f"{'lookup (first page of 100)':28} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows':>6}",
    ]
    for name, r in result["lookups"].items():
        lines.append(f"{name:28} {r['n']:>4} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} {r['max_ms']:>8.2f}"
                     f" {r['rows_per_page']:>6}")  # fmt: skip
    lines += ["", "plan of the recipient query:", *("  " + s for s in result["plan"])]
    if not result["index_scan"]:
        lines.append(f"NOT AN INDEX SCAN on {INDEX}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database", help="a database URL (default: SQLite in a new temp file)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--recipients", type=int, default=100_000, help="distinct numbers")
    p.add_argument("--lookups", type=int, default=200, help="timed lookups of each kind")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    args = p.parse_args(argv)
    temp = None
    if args.database is None:  # a ledger of our own, removed at the end
        temp = tempfile.mkdtemp(prefix="bench-search-")
        args.database = f"sqlite:///{temp}/ledger.db"
    if not 1 <= args.recipients <= 9_999_999 or args.rows < 1 or args.lookups < 1:
        p.error("--rows and --lookups at least 1, --recipients 1 to 9,999,999")
    result = run(args)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0 if result["index_scan"] else 1


if __name__ == "__main__":
    sys.exit(main())
