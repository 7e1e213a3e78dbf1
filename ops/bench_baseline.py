"""The baseline for `ops/bench.py`: raw Celery on the same Redis, a no-op task and one
that sleeps like one provider call. Each counts itself in Redis, so the bench can
time how long the pool takes to run N of them."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/12")
app = Celery("bench-baseline", broker=BROKER)
app.conf.update(
    task_ignore_result=True, task_acks_late=True, worker_prefetch_multiplier=1, task_serializer="json",
    task_default_queue="bench",
)  # fmt: skip
_client = redis.Redis.from_url(BROKER)


@app.task(name="bench.noop")
def noop() -> None:
    _client.incr("bench:done")


@app.task(name="bench.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)
    _client.incr("bench:done")
