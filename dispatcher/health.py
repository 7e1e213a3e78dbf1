"""Are the workers actually consuming? Not "do the processes exist".

Every send task and every sweep records a heartbeat in Redis. Healthy means: the
sweeper ran recently (beat is alive and a worker consumes the control queue); no
send queue holds tasks while no send task has run for a while; and the ledger has
no message that has been due for long without being picked up.
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

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


# Where producers hand us messages; only by-name tasks are refused out of sight of the
# producer (the others answer it with the error), so only they are counted: "task" a
# refusal of the input, "task_failed" a message given up after repeated failures
# that were not an outage (logged with its arguments).
INTAKE_DOORS = ("task", "task_failed")


def count_refusal(settings: Settings, door: str) -> None:
    """Count one message refused at ``door`` (for /metrics). Never raises: the count
    is for the operator, and the refusal is logged either way."""
    with contextlib.suppress(Exception):  # Redis down: the log line stays
        coordinator_for(settings.broker_url).add(f"refused:{door}")


def intake_refusals(settings: Settings) -> dict[str, int]:
    """Messages refused per intake door since the coordinator's store began."""
    coordinator = coordinator_for(settings.broker_url)
    return {door: int(coordinator.get_value(f"refused:{door}") or 0) for door in INTAKE_DOORS}


def _age(settings: Settings, name: str) -> float | None:
    value = coordinator_for(settings.broker_url).get_value(f"heartbeat:{name}")
    return None if value is None else time.time() - float(value)


def queue_depths(settings: Settings) -> dict[str, int]:
    coordinator = coordinator_for(settings.broker_url)
    if not isinstance(coordinator, RedisCoordinator):
        return {}
    return {q: int(coordinator.client.llen(q)) for q in (*SEND_QUEUES, "sms.poll", "sms.control")}


def stuck_messages(settings: Settings) -> int:
    cutoff = utcnow() - timedelta(seconds=STUCK_AFTER)
    with session_scope() as s:
        return int(
            s.execute(
                select(func.count())
                .select_from(MESSAGES)
                .where(MESSAGES.c.status == Status.QUEUED.value, MESSAGES.c.due_at < cutoff)
            ).scalar_one()
        )


def worker_health(settings: Settings) -> dict[str, Any]:
    if settings.broker_url == "memory://":
        return {"ok": True, "detail": "embedded worker pool (in process)"}
    sweep_age = _age(settings, "sweep")
    send_age = _age(settings, "send")
    depths = queue_depths(settings)
    stuck = stuck_messages(settings)
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
