"""Every Prometheus metric of smsdispatch, defined here and nowhere else (docs/metrics.md
says what each one means and how to scrape them).

Two families:

- Counters and a histogram, incremented where things happen, in whatever process
  does them (mostly the Celery workers): messages reaching an end status
  (``ledger``), provider calls and their latency (``providers.base.Provider.call``,
  the one place every HTTP call to a provider passes), retries and failovers
  (``ledger.apply``), refusals at intake (``api``, the by-name task) and callback
  deliveries (``callbacks``).
- Gauges read at scrape time by ``dispatcher.scrape.LedgerCollector`` from the ledger
  and Redis: only the API's ``/metrics`` registers it, so workers never touch the database for it.

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
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from dispatcher.errors import IdempotencyConflict, LimitExceeded, ValidationError
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
STATUS_CHECKS = Counter(
    "smsdispatch_status_checks",
    "Messages asked about by a status poll, by what the answer was: final, changed (not yet final),"
    " unchanged (a call spent on 'not yet'), odd (a word we do not read), horizon (no final status"
    " past the horizon: ended), failed (no answer).",
    ["provider", "result"],
)  # fmt: skip
STATUS_CHECK_RESULTS = ("final", "changed", "unchanged", "odd", "horizon", "failed")
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


def declare(providers: Iterable[str]) -> None:
    """Start every (provider, end status) and (provider, status check result) series at
    0. Prometheus takes no increase from a series whose first sample already counts:
    without this, a provider's first burst of ``unknown`` (or any first end) would never
    reach ``increase()`` in a rule."""
    providers = list(providers)
    for provider in (*providers, NO_PROVIDER):
        for status in ENDS:
            MESSAGES_FINAL.labels(provider, status.value)
    for provider in providers:
        for result in STATUS_CHECK_RESULTS:
            STATUS_CHECKS.labels(provider, result)


def observe_call(provider: str, kind: str, outcome: str, seconds: float) -> None:
    """One provider HTTP call: counted by outcome, timed by kind."""
    PROVIDER_CALLS.labels(provider, kind, outcome).inc()
    PROVIDER_CALL_SECONDS.labels(provider, kind).observe(seconds)


def refusal_reason(exc: ValidationError) -> str:
    """The ``reason`` label of a refusal: the limit's code, ``conflict`` or ``invalid``."""
    if isinstance(exc, LimitExceeded):
        return exc.code
    return "conflict" if isinstance(exc, IdempotencyConflict) else "invalid"


def count_refusal(door: str, reason: str, n: int = 1) -> None:
    """``n`` messages refused at ``door`` (api, task) for ``reason``."""
    if n:
        REFUSED.labels(door, reason).inc(n)


@contextmanager
def refusals(door: str, n: int = 1) -> Iterator[None]:
    """Count a ``ValidationError`` (a limit, a conflict, bad input) leaving the block
    as ``n`` messages refused: the block's whole call, all or nothing."""
    try:
        yield
    except ValidationError as exc:
        count_refusal(door, refusal_reason(exc), n)
        raise


def multiprocess_dir() -> str | None:
    """The shared directory of multiprocess mode, if this process has one."""
    return os.environ.get(MULTIPROC_ENV) or None


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
