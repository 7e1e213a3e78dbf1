"""The sweeper (a beat task): what no live task will otherwise pick up.

- ``scheduled`` messages whose time has come move to ``queued`` and are published
  (long waits live in the ledger, never as broker ETAs);
- ``queued`` messages that are due and have no live task (Redis restarted empty, a
  publish failed, a retry delay too long for a countdown) are published again;
- ``sending`` messages whose claim is older than any call could take belong to a
  worker that died: the pipeline recovers them (reconcile, requeue or ``unknown``).

A second copy of a task is harmless: only one worker can claim a message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import or_, select

from dispatcher import ledger
from dispatcher.db import session_scope
from dispatcher.models import MESSAGES as M
from dispatcher.models import utcnow
from dispatcher.sending import SendPipeline
from dispatcher.status import Status

log = logging.getLogger("smsdispatch.sweeper")

BATCH = 1000


def sweep(pipeline: SendPipeline, queue_depth: Callable[[str], int | None] | None = None) -> dict[str, int]:
    """One sweep. ``queue_depth(priority)`` tells how many tasks wait on the broker
    (None when it cannot tell); with tasks waiting, a queued message is only
    republished when it is ten times staler."""
    p = pipeline.settings.pipeline
    now = utcnow()
    counts = {"released": 0, "republished": 0, "recovered": 0}

    with session_scope() as s:
        due = s.execute(
            select(M.c.id, M.c.priority)
            .where(M.c.status == Status.SCHEDULED.value, M.c.due_at <= now)
            .limit(BATCH)
        ).all()
        released = []
        for mid, priority in due:
            moved = ledger.transition(
                s, mid, Status.QUEUED, source="sweeper", expect={Status.SCHEDULED},
                detail="its send time has come", fields={"due_at": now, "published_for": now},
            )  # fmt: skip
            if moved is not None:
                released.append((mid, priority))
    for mid, priority in released:
        pipeline.publish(mid, priority, 0)
    counts["released"] = len(released)

    stale = now - timedelta(seconds=p.sweeper_stale_after)
    very_stale = now - timedelta(seconds=p.sweeper_stale_after * 10)
    with session_scope() as s:
        rows = s.execute(
            select(M.c.id, M.c.priority, M.c.published_for, M.c.due_at)
            .where(
                M.c.status == Status.QUEUED.value,
                M.c.due_at <= now,
                or_(M.c.published_for.is_(None), M.c.published_for < M.c.due_at, M.c.published_for < stale),
            )
            .order_by(M.c.due_at)
            .limit(BATCH)
        ).all()
        depth: dict[str, int | None] = {}
        chosen = []
        for mid, priority, published_for, due_at in rows:
            never = published_for is None or published_for < due_at
            if not never:
                if priority not in depth:
                    depth[priority] = queue_depth(priority) if queue_depth else None
                waiting = depth[priority]
                if waiting and published_for >= very_stale:
                    continue  # its task is probably still in the queue
            chosen.append((mid, priority))
        for mid, _ in chosen:
            ledger.update_fields(s, mid, published_for=now)
    for mid, priority in chosen:
        pipeline.publish(mid, priority, 0)
    counts["republished"] = len(chosen)

    claim_stale = now - timedelta(seconds=pipeline.max_lease)
    with session_scope() as s:
        stuck = (
            s.execute(
                select(M.c.id)
                .where(M.c.status == Status.SENDING.value, M.c.claimed_at < claim_stale)
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
    for mid in stuck:
        try:
            if pipeline.recover(mid) != "busy":
                counts["recovered"] += 1
        except Exception:
            log.exception("could not recover %s", mid)
    if any(counts.values()):
        log.info("sweep: %s", counts)
    return counts
