"""What the thread and greenlet pools rely on besides the pipeline tests that run
under each pool (tests/pipeline/test_workers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from dispatcher import db
from tests.support import PG_URL, ROOT


@pytest.mark.postgres
def test_psycopg_lets_other_greenlets_run_during_a_query() -> None:
    """Under `-P gevent` a ledger query must not stop the worker's other greenlets.
    psycogreen patches psycopg2 only; psycopg 3, which we use, waits through the
    patched selectors by itself. A greenlet ticks every 20 ms while another waits
    0.5 s in PostgreSQL through our own engine: ticks land inside the query."""
    script = textwrap.dedent(
        f"""
        import gevent.monkey
        gevent.monkey.patch_all()
        import json, time, gevent
        from sqlalchemy import text
        from dispatcher.db import make_engine

        engine = make_engine({PG_URL!r})
        ticks, span = [], []

        def ticker():
            for _ in range(60):
                ticks.append(time.monotonic())
                time.sleep(0.02)

        def querier():
            with engine.connect() as conn:
                conn.execute(text("select 1"))
                span.append(time.monotonic())
                conn.execute(text("select pg_sleep(0.5)"))
                span.append(time.monotonic())

        gevent.joinall([gevent.spawn(ticker), gevent.spawn(querier)])
        print(json.dumps({{"inside": sum(span[0] < t < span[1] for t in ticks)}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    inside = json.loads(out.stdout.strip().splitlines()[-1])["inside"]
    assert inside >= 5, inside  # a blocking driver would let none through


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"pool_cls": "threads", "concurrency": 50}, 52),
        ({"pool_cls": "gevent", "concurrency": 100}, 102),
        ({"pool_cls": "prefork", "concurrency": 4}, 2),  # each child runs one task at a time
    ],
)
def test_database_pool_follows_the_worker_pool(options: dict[str, object], size: int) -> None:
    from workers.app import _size_pools, app

    before, transport = db._pool_size, dict(app.conf.broker_transport_options)
    try:
        _size_pools(options=options)
        assert db._pool_size == size
        assert db.make_engine(PG_URL).pool.size() == size  # type: ignore[attr-defined]
        assert app.conf.broker_transport_options["max_connections"] >= 2 * int(str(options["concurrency"]))
    finally:
        db.set_pool_size(before)
        app.conf.broker_transport_options = transport
