"""The Celery worker's entry point: ``celery -A workers.app ...``.

    celery -A workers.app worker -Q sms.high,sms.bulk,sms.control,sms.poll   # everything
    celery -A workers.app worker -Q sms.high -c 4 -n high@%h       # one pool per queue
    celery -A workers.app worker -Q sms.bulk -P threads -c 50 -n bulk@%h
    celery -A workers.app beat

The app, queues, routes and publishing live in ``dispatcher.broker`` (producers use
them without importing the workers); this module adds what a worker process needs:
log redaction, pool-sized database connections, state reset after a fork.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import signals

from dispatcher.broker import (
    CONTROL_QUEUE,
    POLL_QUEUE,
    QUEUES,
    SEND_MANY_TASK,
    SEND_TASK,
    app,
    beat_schedule,
    configure,
    publish,
    publish_many,
    queue_depth,
)
from dispatcher.config import Settings, get_settings

__all__ = [
    "CONTROL_QUEUE", "POLL_QUEUE", "QUEUES", "SEND_MANY_TASK", "SEND_TASK", "app", "beat_schedule",
    "configure", "publish", "publish_many", "queue_depth",
]  # fmt: skip


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_logs(logger: Any = None, **_: Any) -> None:
    # Celery sets up its own handlers; put the redacting filter on them, so that no
    # library's log line (urllib3 logs whole URLs at DEBUG) carries a password.
    from dispatcher.redact import install_log_redaction

    install_log_redaction(logger)


@signals.celeryd_init.connect
def _size_pools(options: dict[str, Any] | None = None, **_: Any) -> None:
    # A thread or greenlet pool runs `concurrency` tasks at once in one process, each
    # wanting a database connection and, to ack, a Redis one; a prefork child runs one
    # task at a time.
    opts = options or {}
    pool = str(opts.get("pool") or opts.get("pool_cls") or "prefork")
    concurrency = int(opts.get("concurrency") or os.cpu_count() or 1)
    green = any(k in pool for k in ("threads", "gevent", "eventlet"))
    from dispatcher.db import set_pool_size

    set_pool_size(concurrency + 2 if green else 2)
    transport = dict(app.conf.broker_transport_options or {})
    transport["max_connections"] = max(int(transport.get("max_connections", 0)), 2 * concurrency + 10)
    app.conf.broker_transport_options = transport


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Pooled database connections and Redis clients must not cross a fork.
    from dispatcher.coordination import forget_coordinators
    from dispatcher.db import dispose_engines

    dispose_engines()
    forget_coordinators()  # the tasks module drops its pipeline on the same signal


def _flower_auth(settings: Settings) -> None:
    """`celery -A workers.app flower` reads FLOWER_* variables after importing this
    module: hand it the configured basic auth, and only in the Flower process."""
    if "flower" in sys.argv[1:] and settings.flower.basic_auth:
        os.environ.setdefault("FLOWER_BASIC_AUTH", settings.flower.basic_auth)
        os.environ.setdefault("FLOWER_PORT", str(settings.flower.port))


_flower_auth(get_settings())
