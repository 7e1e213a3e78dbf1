"""Are the workers actually consuming? Not "do the processes exist".

Every send task and every sweep records a heartbeat in Redis. Healthy means: the
sweeper ran recently (beat is alive and a worker consumes the control queue); no
send queue holds tasks while no send task has run for a while; and the ledger has
no message that has been due for long without being picked up.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session

from dispatcher.config import Settings
from dispatcher.coordination import RedisCoordinator, coordinator_for
from dispatcher.db import session_scope
from dispatcher.models import MESSAGES, utcnow
from dispatcher.status import Status

SEND_QUEUES = ("sms.high", "sms.bulk")
STUCK_AFTER = 300.0  # seconds a due message may wait before we call it stuck


BEAT_EVERY = 1.0  # seconds: a process records a heartbeat at most this often per kind
_last_beat: dict[str, float] = {}


def beat(name: str, settings: Settings) -> None:
    """Record that a task of kind ``name`` just ran (called by the tasks). At most
    once a second per process: a Redis write per task was a cost per message."""
    now = time.time()
    if now - _last_beat.get(name, 0.0) < BEAT_EVERY:
        return
    _last_beat[name] = now
    coordinator_for(settings.broker_url).set_value(f"heartbeat:{name}", repr(now))


def heartbeat_age(settings: Settings, name: str) -> float | None:
    """Seconds since a task of kind ``name`` last ran (None: never)."""
    value = coordinator_for(settings.broker_url).get_value(f"heartbeat:{name}")
    return None if value is None else time.time() - float(value)


def queue_depths(settings: Settings) -> dict[str, int]:
    coordinator = coordinator_for(settings.broker_url)
    if not isinstance(coordinator, RedisCoordinator):
        return {}
    return {q: int(coordinator.client.llen(q)) for q in (*SEND_QUEUES, "sms.poll", "sms.control")}


def stuck_messages(settings: Settings, session: Session | None = None) -> int:
    """Messages due for over ``STUCK_AFTER`` and still queued (in ``session`` if given)."""
    cutoff = utcnow() - timedelta(seconds=STUCK_AFTER)
    query = (
        select(func.count())
        .select_from(MESSAGES)
        .where(MESSAGES.c.status == Status.QUEUED.value, MESSAGES.c.due_at < cutoff)
    )
    if session is not None:
        return int(session.execute(query).scalar_one())
    with session_scope() as s:
        return int(s.execute(query).scalar_one())


def worker_health(settings: Settings) -> dict[str, Any]:
    if settings.broker_url == "memory://":
        return {"ok": True, "detail": "embedded worker pool (in process)"}
    return judge(
        settings, sweep_age=heartbeat_age(settings, "sweep"), send_age=heartbeat_age(settings, "send"),
        depths=queue_depths(settings), stuck=stuck_messages(settings),
    )  # fmt: skip


def judge(settings: Settings, *, sweep_age: float | None, send_age: float | None, depths: dict[str, int],
          stuck: int) -> dict[str, Any]:  # fmt: skip
    """Whether workers consume, from facts read already (``/metrics`` reads each once)."""
    if settings.broker_url == "memory://":
        return {"ok": True, "detail": "embedded worker pool (in process)"}
    limit = max(3 * settings.pipeline.sweeper_interval, 30.0)
    problems = []
    if sweep_age is None or sweep_age > limit:
        seen = "never" if sweep_age is None else f"{sweep_age:.0f}s ago"
        problems.append(
            f"no sweep ran for {limit:.0f}s (last {seen}): is beat running, and a worker on sms.control?"
        )
    waiting = sum(depths.get(q, 0) for q in SEND_QUEUES)
    if waiting and (send_age is None or send_age > 60):
        problems.append(
            f"{waiting} send tasks wait and no send ran for 60s: are workers consuming sms.high/sms.bulk?"
        )
    if stuck:
        problems.append(f"{stuck} messages due for over {STUCK_AFTER:.0f}s and not picked up")
    last_send = "never" if send_age is None else f"{send_age:.0f}s ago"
    detail = "; ".join(problems) or f"sweep {sweep_age:.0f}s ago, send {last_send}, queues {depths}"
    return {
        "ok": not problems, "detail": detail, "queues": depths, "stuck": stuck,
        "last_sweep_s": sweep_age, "last_send_s": send_age,
    }  # fmt: skip
