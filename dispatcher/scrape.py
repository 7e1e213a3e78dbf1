"""The API's ``/metrics``: the counters of every process (``dispatcher.metrics``
defines them) and the gauges read from the ledger and Redis at each scrape.

Apart from ``dispatcher.metrics`` because it reads the ledger, the coordinator and
the health checks, which all count into ``dispatcher.metrics``: the counters stay a
leaf every module may import, and only the API process imports this.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from dispatcher.metrics import NO_PROVIDER, multiprocess_dir
from dispatcher.status import Status

log = logging.getLogger("smsdispatch.metrics")


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
        from sqlalchemy import func, select, union_all

        from dispatcher.callbacks import outbox_totals
        from dispatcher.db import session_scope
        from dispatcher.health import stuck_messages
        from dispatcher.ledger import due_polls
        from dispatcher.models import BALANCES, MESSAGES, utcnow
        from dispatcher.tracking.poller import quiet_before

        passing = sorted(st.value for st in Status if not st.is_final)
        names = [pc.name for pc in self.settings.providers]
        # A database that hangs rather than refuses must not hold the scrape past
        # Prometheus' own timeout (10 s): these gauges are then absent, the rest answer.
        with session_scope(self.settings.database_url, statement_timeout=5.0) as s:
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
            # Each provider's newest balance, in one round trip: a newest-first probe of
            # ix_balance_readings_provider_at per provider, where a GROUP BY would read
            # every reading retention keeps.
            newest = [
                select(BALANCES.c.provider, BALANCES.c.amount, BALANCES.c.at)
                .where(BALANCES.c.provider == name, BALANCES.c.amount.is_not(None))
                .order_by(BALANCES.c.at.desc())
                .limit(1)
                .subquery()
                for name in names
            ]
            readings = s.execute(union_all(*(select(one) for one in newest))).all() if newest else []
            outbox = outbox_totals(s, utcnow())
            stuck = stuck_messages(self.settings, s)
            now = utcnow()
            # Two ordered reads of ix_messages_poll_due per provider (the count up to 100,000).
            polls = {
                pc.name: due_polls(s, pc.name, now, quiet_before=quiet_before(self.settings, pc, now))
                for pc in self.settings.providers
            }
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
        age = GaugeMetricFamily("smsdispatch_provider_balance_age_seconds",
                                "Seconds since the balance was last read.", labels=["provider"])  # fmt: skip
        for provider, amount, at in sorted(readings):
            balance.add_metric([provider], float(amount))
            age.add_metric([provider], max(0.0, (now - at).total_seconds()))
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
        lag = GaugeMetricFamily(
            "smsdispatch_poll_lag_seconds",
            "Age of the oldest due status poll (0 when none is due): how far polling is behind.",
            labels=["provider"],
        )
        due = GaugeMetricFamily("smsdispatch_polls_due", "Status polls due and not yet asked (counted up to"
                                " 100,000).", labels=["provider"])  # fmt: skip
        for name, (n, oldest) in sorted(polls.items()):
            lag.add_metric([name], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
            due.add_metric([name], float(n))
        return [messages, balance, age, stuck_gauge, *callbacks, lag, due], {"stuck": stuck}

    def _redis(self) -> tuple[list[Metric], dict[str, Any]]:
        from dispatcher.coordination import coordinator_for
        from dispatcher.health import heartbeat_age, queue_depths

        coordinator = coordinator_for(self.settings.broker_url)
        circuit = GaugeMetricFamily(
            "smsdispatch_circuit_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open.",
            labels=["provider"],
        )
        low = GaugeMetricFamily(
            "smsdispatch_provider_balance_low",
            "1 when routing skips the provider for its balance: the balance and credit last read"
            " (as routing reads them, from Redis) under its balance_threshold.",
            labels=["provider"],
        )
        for pc in self.settings.providers:
            circuit.add_metric([pc.name], float(CIRCUIT[coordinator.breaker_state(pc.name).state]))
            spendable = coordinator.get_value(f"balance:{pc.name}")
            low.add_metric([pc.name], 1.0 if balance_low(spendable, pc.balance_threshold) else 0.0)
        depths = queue_depths(self.settings)
        queue = GaugeMetricFamily("smsdispatch_queue_depth", "Tasks waiting on the broker, by queue.",
                                  labels=["queue"])  # fmt: skip
        for name, n in depths.items():
            queue.add_metric([name], float(n))
        ages = {
            "sweep_age": heartbeat_age(self.settings, "sweep"),
            "send_age": heartbeat_age(self.settings, "send"),
        }
        out: list[Metric] = [circuit, low, queue]
        for name, key, what in (
            ("smsdispatch_last_sweep_age_seconds", "sweep_age", "a sweep"),
            ("smsdispatch_last_send_age_seconds", "send_age", "a send task"),
        ):
            if ages[key] is not None:
                out.append(
                    GaugeMetricFamily(name, f"Seconds since a worker last ran {what}.", value=ages[key])
                )
        return out, {"depths": depths, **ages}


def balance_low(spendable: str | None, threshold: float | None) -> bool:
    """Whether routing skips a provider for its balance: compared as
    ``Coordinator.gate`` compares them (its Lua ``tonumber``), the value
    ``read_balances`` keeps (``balance:NAME``, balance plus credit) under the
    threshold; no threshold, no value or one that is no number skips nothing."""
    if threshold is None or spendable is None:
        return False
    try:
        return float(spendable) < threshold
    except ValueError:
        return False


def api_registry(settings: Any) -> CollectorRegistry:
    """The API's registry: the counters of every process sharing the multiprocess
    directory (or of this process alone), and the gauges read at scrape time."""
    from dispatcher.metrics import declare

    declare(pc.name for pc in settings.providers)
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if path is not None:
        MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    else:
        registry.register(REGISTRY)  # this process's own metrics
    registry.register(LedgerCollector(settings))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text of ``registry`` (its content type: ``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)
