"""What operators are shown, shared by the CLI, the HTTP API and the console: the
provider rows of `smsdispatch providers` / `GET /v1/providers`, and the
checks of `smsdispatch doctor`. Both interfaces import this; neither imports the other."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dispatcher import config as config_mod
from dispatcher.redact import redact

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("smsdispatch.ops")


def provider_rows(
    settings: config_mod.Settings,
    redis_optional: bool = False,
    *,
    session: Session | None = None,
    spend: bool = True,
) -> list[dict[str, Any]]:
    """What operators want per provider instance: routing order, breaker, rate limit,
    the last known balance and the last error. With Redis down this raises (the CLI
    exits 4: a backend is unreachable), or with ``redis_optional`` gives the ledger's
    facts with the breaker ``unknown`` (the console, which is how one looks into it).

    Read in ``session`` when given (the console's, bounded by its statement timeout),
    else in a session of its own. ``spend=False`` leaves out the last day's
    ``sent_24h``/``parts_24h``/``cost_24h``, for a caller that counts them itself."""
    from contextlib import nullcontext

    from dispatcher.db import session_scope

    scope = nullcontext(session) if session is not None else session_scope()
    with scope as s:
        return _provider_rows(s, settings, redis_optional, spend)


def _provider_rows(
    s: Session, settings: config_mod.Settings, redis_optional: bool, spend: bool
) -> list[dict[str, Any]]:
    from redis.exceptions import RedisError
    from sqlalchemy import func, select

    from dispatcher.coordination import coordinator_for
    from dispatcher.ledger import due_polls
    from dispatcher.models import ATTEMPTS, BALANCES
    from dispatcher.tracking import FirstPolls
    from dispatcher.tracking.pace import status_calls_per_second
    from dispatcher.tracking.poller import quiet_before

    coordinator = coordinator_for(settings.broker_url)
    day_ago = datetime.now(UTC) - timedelta(days=1)
    redis_down = False
    rows = []
    for pc in settings.providers:
        reading = s.execute(
            select(BALANCES.c.amount, BALANCES.c.credit, BALANCES.c.currency, BALANCES.c.at, BALANCES.c.error)
            .where(BALANCES.c.provider == pc.name)
            .order_by(BALANCES.c.at.desc())
            .limit(1)
        ).first()
        failed = s.execute(
            select(ATTEMPTS.c.error, ATTEMPTS.c.finished_at)
            .where(
                ATTEMPTS.c.provider == pc.name,
                ATTEMPTS.c.outcome.not_in(["accepted", "reconciled", "in_flight"]),
            )
            .order_by(ATTEMPTS.c.id.desc())
            .limit(1)
        ).first()
        # Redis down: the ledger's facts still answer, the breaker is "unknown". Asked
        # once: an unreachable Redis costs its timeout once, not once per provider.
        state, retry_in, opens, attention = "unknown", 0.0, 0, None
        learnt, calls_per_s = None, None
        if not redis_down:
            try:
                breaker = coordinator.breaker_state(pc.name)
                state, retry_in, opens = breaker.state, round(breaker.retry_in, 1), breaker.opens
                attention = coordinator.get_value(f"attention:{pc.name}") or None
                learnt = FirstPolls(settings, coordinator).learnt(pc.name)
                calls_per_s = round(status_calls_per_second(coordinator, pc.name), 2)
            except (RedisError, OSError) as exc:
                if not redis_optional:
                    raise
                log.warning("providers: the coordinator is unreadable: %s", type(exc).__name__)
                redis_down = True
                state, retry_in, opens, attention = "unknown", 0.0, 0, None
                learnt, calls_per_s = None, None
        now = datetime.now(UTC)
        due, oldest = due_polls(s, pc.name, now, quiet_before=quiet_before(settings, pc, now))
        row = {
            "provider": pc.name, "kind": pc.kind, "priority": pc.priority, "enabled": pc.enabled,
            "breaker": state, "breaker_retry_in": retry_in,
            "breaker_opens": opens, "rate_limit": pc.rate_limit or None,
            "balance": reading.amount if reading else None,
            "credit": reading.credit if reading else None,
            "currency": reading.currency if reading else None,
            "balance_at": reading.at.isoformat() if reading else None,
            "balance_threshold": pc.balance_threshold,
            "last_error": (failed.error if failed else None) or (reading.error if reading else None),
            "last_error_at": failed.finished_at.isoformat() if failed and failed[1] else None,
            # A refusal of our request or account in the last day (the send path's note).
            "attention": attention,
            # Tracking: polls due now and the oldest one's age (the poll lag), status calls
            # per second lately, and the learnt delay from acceptance to the first poll.
            "polls_due": due,
            "poll_lag_s": round(max(0.0, (now - oldest).total_seconds()), 1) if oldest else 0.0,
            "status_calls_per_s": calls_per_s,
            "first_poll_s": round(learnt.delay, 2) if learnt else None,
            "first_poll_share": learnt.share if learnt else None,
        }  # fmt: skip
        if spend:
            spent = s.execute(
                select(func.count(), func.sum(ATTEMPTS.c.parts), func.sum(ATTEMPTS.c.cost)).where(
                    ATTEMPTS.c.provider == pc.name,
                    ATTEMPTS.c.finished_at >= day_ago,
                    ATTEMPTS.c.outcome.in_(["accepted", "reconciled"]),
                )
            ).one()
            # Taken in the last 24 h, as the provider reported it.
            row.update(sent_24h=int(spent[0]), parts_24h=int(spent[1] or 0),
                       cost_24h=round(float(spent[2]), 4) if spent[2] is not None else None)  # fmt: skip
        rows.append(row)
    return rows


def doctor_checks(settings: config_mod.Settings) -> list[dict[str, Any]]:
    """Config, database, broker, workers and every provider, each with what is wrong."""
    from dispatcher.providers import make_provider
    from dispatcher.providers.base import MessageRef

    checks: list[dict[str, Any]] = [{"check": "config", "ok": True, "detail": settings.source}]

    def check(name: str, fn: Callable[[], str]) -> None:
        try:
            checks.append({"check": name, "ok": True, "detail": fn()})
        except Exception as exc:
            checks.append({"check": name, "ok": False, "detail": redact(f"{type(exc).__name__}: {exc}")})

    def database() -> str:
        from alembic.script import ScriptDirectory

        from dispatcher.db import alembic_config, current_revision, make_engine

        engine = make_engine(settings.database_url)
        try:
            current = current_revision(engine)
            head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        finally:
            engine.dispose()
        if current is None and engine.dialect.name == "sqlite":
            return f"empty SQLite file: schema {head} is applied on first use"
        if current != head:
            raise RuntimeError(f"schema at {current}, code wants {head}: run `smsdispatch db upgrade`")
        return f"schema {current}"

    def broker() -> str:
        if settings.broker_url == "memory://":
            return "in-process (embedded)"
        from redis.sentinel import MasterNotFoundError

        from dispatcher.redis_conn import client_for, is_sentinel, parse_sentinel

        client = client_for(settings.broker_url, socket_timeout=2, connect_timeout=2)
        try:
            try:
                client.ping()
            except MasterNotFoundError as exc:
                # redis-py's message goes on with a repr of every sentinel's client.
                target = parse_sentinel(settings.broker_url)
                asked = ", ".join(f"{host}:{port}" for host, port in target.sentinels)
                raise RuntimeError(f"{str(exc).split(' : ', 1)[0]} (asked {asked})") from None
            if not is_sentinel(settings.broker_url):
                return "redis answers"
            # Which server the sentinels name now: after a failover, the promoted one.
            host, port = client.connection_pool.get_master_address()  # type: ignore[attr-defined]
            master = parse_sentinel(settings.broker_url).master_name
            return f"redis answers (sentinel master {master!r} at {host}:{port})"
        finally:
            client.close()

    def workers() -> str:
        from dispatcher.health import worker_health

        health = worker_health(settings)
        if not health["ok"]:
            raise RuntimeError(health["detail"])
        return str(health["detail"])

    check("database", database)
    check("broker", broker)
    check("workers", workers)
    for pc in settings.providers:

        def probe(pc: config_mod.ProviderConfig = pc) -> str:
            provider = make_provider(pc)
            try:
                if provider.HAS_BALANCE:
                    balance = provider.balance()
                    return f"credentials ok, balance {balance.amount} {balance.currency or ''}".strip()
                # No balance call: a status call for an id nobody has checks the login.
                provider.status([MessageRef("doctor", "smsdispatch-doctor", None)])
                return "credentials ok (status call)"
            finally:
                provider.close()

        check(f"provider {pc.name}", probe)
    return checks
