"""The Celery worker's entry point: ``celery -A workers.app ...``.

    celery -A workers.app worker -Q sms.high,sms.bulk,sms.control,sms.poll   # everything
    celery -A workers.app worker -Q sms.high -c 4 -n high@%h       # one pool per queue
    celery -A workers.app worker -Q sms.bulk -P threads -c 50 -n bulk@%h
    celery -A workers.app beat

The app, queues, routes and publishing live in ``dispatcher.broker`` (producers use
them without importing the workers); this module adds what a worker process needs:
log redaction, pool-sized database connections, state reset after a fork, and its
metrics (``dispatcher.metrics``: ``PROMETHEUS_MULTIPROC_DIR`` shared with the API,
or ``SMSDISPATCH_METRICS_PORT`` served by the worker itself).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

# A worker serving its own port without a shared directory counts in a private one,
# so that a prefork pool's children count where the main process reads them. Celery's
# command line has imported prometheus_client already (Flower's plugin), which picks
# its value store once: picked again here, before dispatcher.metrics makes a metric.
_PRIVATE_METRICS: str | None = None
if "worker" in sys.argv[1:] and os.environ.get("SMSDISPATCH_METRICS_PORT"):
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _PRIVATE_METRICS = tempfile.mkdtemp(prefix="smsdispatch-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _PRIVATE_METRICS
    from prometheus_client import values

    values.ValueClass = values.get_value_class()

from celery import signals  # noqa: E402

from dispatcher.config import get_settings as _load  # noqa: E402
from dispatcher.errors import ConfigError  # noqa: E402

try:
    _load()
except ConfigError as exc:
    # A worker, beat or Flower with a bad configuration stops at start-up with one
    # line naming the key (exit 3, as the CLI), not a traceback from deep in an import.
    print(f"smsdispatch: {exc}", file=sys.stderr)
    sys.exit(3)

from dispatcher.broker import (  # noqa: E402 - only once the configuration is known good
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
    publish_poll_groups,
    queue_depth,
)
from dispatcher.config import Settings, get_settings  # noqa: E402

__all__ = [
    "CONTROL_QUEUE", "POLL_QUEUE", "QUEUES", "SEND_MANY_TASK", "SEND_TASK", "app", "beat_schedule",
    "configure", "publish", "publish_many", "publish_poll_groups", "queue_depth",
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


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    # The main process, before the pool starts: a child forked later has no thread
    # of this server, and its counters reach it through the multiprocess directory.
    from dispatcher import metrics

    metrics.declare(pc.name for pc in _load().providers)
    metrics.serve_worker_port()


@signals.worker_process_shutdown.connect
def _child_exited(pid: int | None = None, **_: Any) -> None:
    from dispatcher import metrics

    metrics.process_exited(pid or os.getpid())


@signals.worker_shutdown.connect
def _drop_private_metrics(**_: Any) -> None:
    if _PRIVATE_METRICS is not None:
        shutil.rmtree(_PRIVATE_METRICS, ignore_errors=True)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Pooled database connections and Redis clients must not cross a fork.
    from dispatcher.coordination import forget_coordinators
    from dispatcher.db import dispose_engines

    dispose_engines()
    forget_coordinators()  # the tasks module drops its pipeline on the same signal


def _flower_auth(settings: Settings) -> None:
    """`celery -A workers.app flower` reads FLOWER_* variables after importing this
    module: hand it the configured basic auth and port, and only in the Flower process.
    There, also close what Flower 2.x leaves open (see _guard_flower)."""
    if "flower" not in sys.argv[1:]:
        return
    if settings.flower.basic_auth:
        os.environ.setdefault("FLOWER_BASIC_AUTH", settings.flower.basic_auth)
    os.environ.setdefault("FLOWER_PORT", str(settings.flower.port))
    _guard_flower()


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name, or "" for every interface
        return False


def _guard_flower() -> None:
    """Two hooks on Flower's own classes, installed in the Flower process only.

    Flower 2.x checks credentials only in handlers marked ``@web.authenticated``, and
    /metrics and /healthcheck are not: with basic auth on, anyone could read them.
    Wrapped here the same way, they ask for the credentials like every other page
    (Flower itself answers 401 without them; without any auth they stay open).

    Without any auth (no basic auth, no OAuth) Flower would listen on every interface
    and show tasks and workers to anyone: it binds to 127.0.0.1 instead, whatever
    --address or FLOWER_ADDRESS say, and logs a warning. The check runs when the
    server starts, after Flower has read its options from the command line, the
    environment and its config file, so that auth from any of them counts."""
    try:
        from flower.app import Flower
        from flower.views.monitor import Healthcheck, Metrics
        from tornado.web import authenticated
    except ImportError:  # Flower is not installed: nothing to guard
        return
    for handler in (Metrics, Healthcheck):
        if not getattr(handler.get, "_smsdispatch_guarded", False):
            handler.get = authenticated(handler.get)
            handler.get._smsdispatch_guarded = True
    start = Flower.start_http_server
    if getattr(start, "_smsdispatch_guarded", False):
        return

    def start_http_server(self: Any) -> Any:
        options = self.options
        if not (options.basic_auth or options.auth) and not options.unix_socket:
            asked = options.address or "0.0.0.0"
            if not _is_loopback(asked):
                options.address = "127.0.0.1"
            logging.getLogger("smsdispatch.flower").warning(
                "Flower runs without authentication: it listens on %s only (asked: %s). Set [flower] "
                'basic_auth = "user:password" in the config to open it to other hosts.',
                options.address, asked,
            )  # fmt: skip
        return start(self)

    start_http_server._smsdispatch_guarded = True  # type: ignore[attr-defined]
    Flower.start_http_server = start_http_server


_flower_auth(get_settings())
