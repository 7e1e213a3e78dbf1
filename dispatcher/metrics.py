"""Every Prometheus metric of smsdispatch, defined here and nowhere else (docs/metrics.md
says what each one means and how to scrape them).

Two families:

- Counters and a histogram, incremented where things happen, in whatever process
  does them (mostly the Celery workers): messages reaching an end status
  (``ledger``), provider calls and their latency (``providers.base.Provider.call``,
  the one place every HTTP call to a provider passes), retries and failovers
  (``ledger.apply``), refusals at intake (``api``, the by-name task) and callback
  deliveries (``callbacks``).
- Gauges read at scrape time by ``LedgerCollector`` from the ledger and Redis: only
  the API's ``/metrics`` registers it, so workers never touch the database for it.

How a worker's counters reach Prometheus, one of two ways per host:

1. Multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` names one directory that the API
   and the workers of a host share, set in their environment *before they start*
   (prometheus_client picks its value store at import). Each process writes its
   counters to files there; the API's ``/metrics`` adds them all up
   (``MultiProcessCollector``). Empty the directory when the host's services start
   (a tmpfs, or ``rm -rf`` before them), never while they run. Processes must share
   one PID namespace (one host, or one container): two containers' PID 7 would
   write the same file. Prefork children are marked dead when they exit.
2. A port per worker: ``SMSDISPATCH_METRICS_PORT=9101`` makes a worker's main process
   serve its counters on that port (``start_http_server``), for workers on hosts
   without the API, or in containers of their own. A prefork pool's children count
   in other processes: without ``PROMETHEUS_MULTIPROC_DIR`` the worker makes a
   private one for itself (``workers/app.py``, before anything imports
   prometheus_client), so every pool works. Do not scrape both a port and an API
   that share one directory: everything would be counted twice.

A counter moved inside a database transaction (the ledger's) counts only once that
transaction commits (``count_on_commit``): a write retried after an outage, or
rolled back, never counts twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from dispatcher.errors import LimitExceeded, ValidationError
from dispatcher.status import FINAL, Status

log = logging.getLogger("smsdispatch.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PORT_ENV = "SMSDISPATCH_METRICS_PORT"

# The *_created series double the number of series and no rule or panel reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# The statuses a message's counter counts: the final ones, and `unknown`, where the
# send path leaves a message for an operator (never resent blindly).
ENDS: frozenset[Status] = FINAL | {Status.UNKNOWN}
NO_PROVIDER = "none"  # the provider label of a message that never reached one

MESSAGES_FINAL = Counter(
    "smsdispatch_messages_final", "Messages reaching a final status (or unknown), by provider and status.",
    ["provider", "status"],
)  # fmt: skip
PROVIDER_CALLS = Counter(
    "smsdispatch_provider_calls", "HTTP calls to providers, by kind (send, status, balance) and outcome.",
    ["provider", "kind", "outcome"],
)  # fmt: skip
PROVIDER_CALL_SECONDS = Histogram(
    "smsdispatch_provider_call_seconds", "Provider HTTP call latency, by kind (send, status, balance).",
    ["provider", "kind"],
    # From a provider on the same network up to the longest timeout a provider gets.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)  # fmt: skip
RETRIES = Counter("smsdispatch_retries", "Messages sent again to the same provider after a backoff.",
                  ["provider"])  # fmt: skip
FAILOVERS = Counter(
    "smsdispatch_failovers", "Messages moved on from a provider to the next one.", ["provider"]
)
REFUSED = Counter(
    "smsdispatch_intake_refused",
    "Messages refused at intake, by door (api: the Python and HTTP API; task: by-name Celery tasks) and"
    " reason (invalid, conflict, quota, recipient_rate, stopped, store_failed).",
    ["door", "reason"],
)  # fmt: skip
CALLBACK_DELIVERIES = Counter(
    "smsdispatch_callback_deliveries",
    "Status callback delivery tries, by outcome (delivered, retry, failed).",
    ["outcome"],
)


# -- counting where things happen ------------------------------------------------------

_PENDING = "smsdispatch_metrics_pending"


def count_on_commit(
    session: Session, counter: Counter, counts: Iterable[tuple[tuple[str, ...], int]]
) -> None:
    """Add ``counts`` (label values, amount) to ``counter`` once ``session``'s
    transaction commits; nothing if it rolls back."""
    pending: Tally[tuple[Counter, tuple[str, ...]]] = session.info.setdefault(_PENDING, Tally())
    for labels, n in counts:
        if n:
            pending[(counter, labels)] += n


@event.listens_for(Session, "after_commit")
def _counted(session: Session) -> None:
    for (counter, labels), n in session.info.pop(_PENDING, {}).items():
        counter.labels(*labels).inc(n)


@event.listens_for(Session, "after_transaction_end")
def _dropped(session: Session, transaction: SessionTransaction) -> None:
    # after_commit ran already for a commit; what is left belongs to a rollback.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def count_ends(session: Session, ends: Iterable[tuple[str | None, Status]]) -> None:
    """Count messages reaching an end status (``ENDS``), one ``(provider, status)`` per
    message, when the transaction that moves them commits."""
    tally = Tally((provider or NO_PROVIDER, status.value) for provider, status in ends if status in ENDS)
    if tally:
        count_on_commit(session, MESSAGES_FINAL, tally.items())


def observe_call(provider: str, kind: str, outcome: str, seconds: float) -> None:
    """One provider HTTP call: counted by outcome, timed by kind."""
    PROVIDER_CALLS.labels(provider, kind, outcome).inc()
    PROVIDER_CALL_SECONDS.labels(provider, kind).observe(seconds)


def refusal_reason(exc: ValidationError) -> str:
    """The ``reason`` label of a refusal: the limit's code, ``conflict`` or ``invalid``."""
    from dispatcher.api import IdempotencyConflict

    if isinstance(exc, LimitExceeded):
        return exc.code
    return "conflict" if isinstance(exc, IdempotencyConflict) else "invalid"


def count_refusal(door: str, reason: str, n: int = 1) -> None:
    """``n`` messages refused at ``door`` (api, task) for ``reason``."""
    if n:
        REFUSED.labels(door, reason).inc(n)


@contextmanager
def refusals(door: str) -> Iterator[None]:
    """Count a ``ValidationError`` (a limit, a conflict, bad input) leaving the block."""
    try:
        yield
    except ValidationError as exc:
        count_refusal(door, refusal_reason(exc))
        raise


# -- the gauges read at scrape time ----------------------------------------------------

CIRCUIT = {"closed": 0, "half-open": 1, "open": 2}


class LedgerCollector(Collector):
    """The state of the system, read from the ledger and Redis at each scrape. Each
    source is read on its own: with Redis or the database down, its gauges are
    absent, the others answer, and ``smsdispatch_metrics_source_up`` says which.

    Kept cheap for a scrape every 15 s on a large ledger: messages are counted only
    in the statuses they pass through (by ``ix_messages_status_due``), never by a
    scan of the whole table; final statuses come from ``smsdispatch_messages_final``.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("smsdispatch_metrics_source_up",
                               "1 when /metrics could read this source (database, redis).",
                               labels=["source"])  # fmt: skip
        database = self._read("database", self._database)
        redis = self._read("redis", self._redis)
        up.add_metric(["database"], 0.0 if database is None else 1.0)
        up.add_metric(["redis"], 0.0 if redis is None else 1.0)
        yield up
        facts: dict[str, Any] = {}
        for part in (database, redis):
            if part is not None:
                metrics, found = part
                facts.update(found)
                yield from metrics
        if database is not None and redis is not None:
            from dispatcher.health import judge

            healthy = GaugeMetricFamily("smsdispatch_workers_healthy", "1 when workers consume.")
            healthy.add_metric([], 1.0 if judge(self.settings, **facts)["ok"] else 0.0)
            yield healthy

    def _read(self, source: str, read: Any) -> tuple[list[Metric], dict[str, Any]] | None:
        try:
            result: tuple[list[Metric], dict[str, Any]] = read()
            return result
        except Exception as exc:  # that source is down: its gauges are left out, never a 500
            log.warning("/metrics: %s unreadable: %s: %s", source, type(exc).__name__, exc)
            return None

    def _database(self) -> tuple[list[Metric], dict[str, Any]]:
        from sqlalchemy import func, select, text

        from dispatcher.callbacks import outbox_totals
        from dispatcher.db import session_scope
        from dispatcher.health import stuck_messages
        from dispatcher.models import BALANCES, MESSAGES, utcnow

        passing = sorted(st.value for st in Status if not st.is_final)
        names = [pc.name for pc in self.settings.providers]
        with session_scope(self.settings.database_url) as s:
            if s.get_bind().dialect.name == "postgresql":
                # A database that hangs rather than refuses must not hold the scrape past
                # Prometheus' own timeout (10 s): these gauges are then absent, the rest answer.
                s.execute(text("SET LOCAL statement_timeout = '5s'"))
            # Two index-only scans, each as long as the messages in flight: by status
            # (ix_messages_status_due), and by provider (ix_messages_provider_status_poll,
            # which a provider-less GROUP BY would read whole). docs/metrics.md: figures.
            by_status = s.execute(
                select(MESSAGES.c.status, func.count())
                .where(MESSAGES.c.status.in_(passing))
                .group_by(MESSAGES.c.status)
            ).all()
            by_provider = s.execute(
                select(MESSAGES.c.status, MESSAGES.c.provider, func.count())
                .where(MESSAGES.c.provider.in_(names), MESSAGES.c.status.in_(passing))
                .group_by(MESSAGES.c.status, MESSAGES.c.provider)
            ).all()
            readings = {}
            for pc in self.settings.providers:
                readings[pc.name] = s.execute(
                    select(BALANCES.c.amount, BALANCES.c.credit, BALANCES.c.at)
                    .where(BALANCES.c.provider == pc.name, BALANCES.c.amount.is_not(None))
                    .order_by(BALANCES.c.at.desc())
                    .limit(1)
                ).first()
            outbox = outbox_totals(s, utcnow())
            stuck = stuck_messages(self.settings, s)
        now = time.time()
        messages = GaugeMetricFamily(
            "smsdispatch_messages",
            "Messages now in a status they pass through (queued, scheduled, sending, accepted, sent,"
            " unknown), by provider.", labels=["status", "provider"],
        )  # fmt: skip
        counted: Tally[tuple[str, str]] = Tally()
        rest = Tally({status: int(n) for status, n in by_status})
        for status, provider, n in by_provider:
            counted[(status, provider)] = int(n)
            rest[status] -= int(n)
        for status in passing:  # present at 0 too: a rule sees an empty status, not an absent one
            if rest[status] or not any(st == status for st, _ in counted):
                counted[(status, NO_PROVIDER)] = rest[status]
        for (status, provider), n in sorted(counted.items()):
            messages.add_metric([status, provider], float(n))
        balance = GaugeMetricFamily("smsdispatch_provider_balance",
                                    "The provider's balance as last read.", labels=["provider"])  # fmt: skip
        low = GaugeMetricFamily(
            "smsdispatch_provider_balance_low",
            "1 when balance and credit are under the provider's balance_threshold (routing skips it).",
            labels=["provider"],
        )
        age = GaugeMetricFamily("smsdispatch_provider_balance_age_seconds",
                                "Seconds since the balance was last read.", labels=["provider"])  # fmt: skip
        for pc in self.settings.providers:
            reading = readings[pc.name]
            if reading is None:
                continue
            amount, credit, at = reading
            spendable = float(amount) + float(credit or 0.0)
            threshold = pc.balance_threshold
            balance.add_metric([pc.name], float(amount))
            low.add_metric([pc.name], 1.0 if threshold is not None and spendable < threshold else 0.0)
            age.add_metric([pc.name], max(0.0, now - _epoch(at)))
        stuck_gauge = GaugeMetricFamily(
            "smsdispatch_stuck_messages", "Messages due for over 5 minutes and not picked up.", value=stuck
        )
        callbacks = [
            GaugeMetricFamily("smsdispatch_callbacks_pending", "Status callbacks waiting to be delivered.",
                              value=outbox["pending"]),
            GaugeMetricFamily("smsdispatch_callbacks_failing",
                              "Pending status callbacks whose last delivery try failed.",
                              value=outbox["failing"]),
            GaugeMetricFamily("smsdispatch_callbacks_failed",
                              "Status callbacks given up (not delivered within callbacks.max_age, or 410).",
                              value=outbox["failed"]),
            GaugeMetricFamily("smsdispatch_callbacks_oldest_pending_seconds",
                              "Age of the oldest pending status callback (0 when none).",
                              value=outbox["oldest_pending_age_s"] or 0.0),
        ]  # fmt: skip
        return [messages, balance, low, age, stuck_gauge, *callbacks], {"stuck": stuck}

    def _redis(self) -> tuple[list[Metric], dict[str, Any]]:
        from dispatcher.coordination import coordinator_for
        from dispatcher.health import heartbeat_age, queue_depths

        coordinator = coordinator_for(self.settings.broker_url)
        circuit = GaugeMetricFamily(
            "smsdispatch_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        for pc in self.settings.providers:
            circuit.add_metric([pc.name], float(CIRCUIT[coordinator.breaker_state(pc.name).state]))
        depths = queue_depths(self.settings)
        queue = GaugeMetricFamily("smsdispatch_queue_depth", "Tasks waiting on the broker, by queue.",
                                  labels=["queue"])  # fmt: skip
        for name, n in depths.items():
            queue.add_metric([name], float(n))
        ages = {
            "sweep_age": heartbeat_age(self.settings, "sweep"),
            "send_age": heartbeat_age(self.settings, "send"),
        }
        out: list[Metric] = [circuit, queue]
        for name, key, what in (
            ("smsdispatch_last_sweep_age_seconds", "sweep_age", "a sweep"),
            ("smsdispatch_last_send_age_seconds", "send_age", "a send task"),
        ):
            if ages[key] is not None:
                out.append(
                    GaugeMetricFamily(name, f"Seconds since a worker last ran {what}.", value=ages[key])
                )
        return out, {"depths": depths, **ages}


def _epoch(at: Any) -> float:
    from datetime import UTC

    if at.tzinfo is None:  # stored UTC; a naive value can only be that
        at = at.replace(tzinfo=UTC)
    return float(at.timestamp())


class _ThisProcess(Collector):
    """This process's own metrics (the default registry), for an API that is not in
    multiprocess mode."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, if this process has one."""
    return os.environ.get(MULTIPROC_ENV) or None


def api_registry(settings: Any) -> CollectorRegistry:
    """The API's registry: the counters of every process sharing the multiprocess
    directory (or of this process alone), and the gauges read at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(LedgerCollector(settings))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registry`` (its content type: ``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)


# -- the worker side (workers/app.py calls these) -----------------------------------------


def serve_worker_port() -> int | None:
    """Serve this worker's counters on ``SMSDISPATCH_METRICS_PORT``, if set. Returns
    the port."""
    raw = os.environ.get(PORT_ENV)
    if not raw:
        return None
    port = int(raw)
    path = multiprocess_dir()
    registry = REGISTRY
    if path is not None:
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    log.info("metrics on port %d%s", port, f" (from {path})" if path else "")
    return port


def process_exited(pid: int) -> None:
    """A prefork child is gone: its live gauges no longer count (its counters do)."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
