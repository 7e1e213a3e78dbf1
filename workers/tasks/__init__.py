"""The tasks. Each is a thin shell around ``dispatcher``: the logic is testable
without Celery, and the task names are the interface other apps use."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import asdict
from typing import Any

from celery import signals
from celery.exceptions import Reject
from redis.exceptions import RedisError

from dispatcher import metrics
from dispatcher.config import get_settings
from dispatcher.coordination import Lease, coordinator_for
from dispatcher.db import is_outage
from dispatcher.errors import ValidationError
from dispatcher.health import beat
from dispatcher.redact import redact
from dispatcher.sending import SendPipeline
from dispatcher.tracking import Poller
from workers.app import app, publish, queue_depth
from workers.app import publish_poll_groups as _publish_poll_groups

log = logging.getLogger("smsdispatch.tasks")

_pipeline: SendPipeline | None = None
_poller: Poller | None = None
_lock = threading.Lock()


def get_pipeline() -> SendPipeline:
    """The process's pipeline (one per process: a thread or greenlet pool shares it)."""
    global _pipeline
    with _lock:
        if _pipeline is None:
            settings = get_settings()
            _pipeline = SendPipeline(settings, publish, coordinator_for(settings.broker_url))
        return _pipeline


def get_poller() -> Poller:
    """The process's poller: the pipeline's adapters, call threads and coordinator."""
    global _poller
    pipeline = get_pipeline()
    with _lock:
        if _poller is None or _poller.calls is not pipeline.calls:
            _poller = Poller(pipeline.settings, pipeline.coordinator, pipeline.calls, _publish_poll_groups,
                             pipeline.first_polls)  # fmt: skip
        return _poller


@signals.worker_process_init.connect
def reset_pipeline(**_: Any) -> None:
    """Drop the pipeline and the poller (after a fork: their HTTP sessions and threads
    stay with the parent)."""
    global _pipeline, _poller
    if _pipeline is not None:
        _pipeline.close()
    _pipeline = _poller = None


# A by-name message not yet stored waits this long at most between tries while the
# database is busy or down (doubling from 1 s, with a jitter of a fifth): under the
# 10 s every visibility timeout exceeds (config), so a waiting retry is never also
# redelivered. A failure that is not an outage (a bug, a value the database refuses)
# is tried INTAKE_TRIES times, then logged with the arguments and counted, not looped.
INTAKE_RETRY_CAP = 8.0
INTAKE_TRIES = 5


@app.task(bind=True, name="smsdispatch.send", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def send(self: Any, message_id: str | None = None, linger: bool = False, **fields: Any) -> str:
    """Send one message from the ledger, or first store the one described by
    ``fields`` (``to``, ``text``, ``sender``, ``key``, ``at``, ``ttl``, ``priority``,
    ``provider``) for producers that publish by task name. ``linger``: wait a moment
    for other messages due for the same provider and send them together."""
    if message_id is None:
        from dispatcher.api import create_from_task

        try:
            message_id = create_from_task(fields, task_id=self.request.id)
        except ValidationError as exc:
            # Nothing was stored, nothing is sent; the producer's mistake is logged
            # with the field at fault and the task ends (retrying cannot fix it).
            # backslashreplace: a lone surrogate in a field name must not break the
            # log handler and hide the refusal.
            said = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
            log.error("smsdispatch.send refused its arguments (task %s): %s", self.request.id, said)
            metrics.count_refusal("task", metrics.refusal_reason(exc))
            return f"invalid: {said}"
        except Exception as exc:
            # Not stored. The task is published again with the same id and arguments,
            # so the implicit key (the task id) keeps a message an earlier try stored
            # (the reply to its COMMIT lost) from being stored twice.
            outage = is_outage(exc) or isinstance(exc, RedisError)
            tries = self.request.retries + 1
            if not outage and tries >= INTAKE_TRIES:
                # The text may be a one-time code: its length, not its content.
                shown = {k: f"<{len(v)} characters>" if k == "text" and isinstance(v, str) else v
                         for k, v in fields.items()}  # fmt: skip
                said = redact(repr(shown)).encode("utf-8", "backslashreplace").decode("utf-8")
                log.exception("smsdispatch.send could not store a message after %d tries (task %s),"
                              " given up: %s", tries, self.request.id, said)  # fmt: skip
                metrics.count_refusal("task", "store_failed")
                return f"failed: {type(exc).__name__}"
            delay = min(INTAKE_RETRY_CAP, 2.0 ** min(self.request.retries, 6)) * random.uniform(0.8, 1.2)
            log.warning(
                "smsdispatch.send could not store a message yet (task %s, try %d), again in %.1fs: %s",
                self.request.id, tries, delay, type(exc).__name__,
            )  # fmt: skip
            try:
                raise self.retry(exc=exc, countdown=delay, max_retries=None) from None
            except Reject:
                # Celery's retry could not publish the new copy (the broker refuses
                # writes): put the delivery back rather than let it be dropped.
                raise Reject(exc, requeue=True) from None
    pipeline = get_pipeline()
    beat("send", pipeline.settings)
    if fields and fields.get("priority", "normal") != "high":
        # Published by name: no publisher said whether it may wait for company.
        router = pipeline.router
        linger = router.lingers(router.first_choice(message_id, fields.get("provider")))
    return pipeline.process(message_id, linger=linger)


@app.task(name="smsdispatch.send_many", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def send_many(message_ids: list[str]) -> dict[str, int]:
    """Send a chunk of a bulk call: claimed together, batched per provider."""
    pipeline = get_pipeline()
    beat("send", pipeline.settings)
    return pipeline.process_many(message_ids)


@app.task(name="smsdispatch.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    from dispatcher.sweeper import sweep as run_sweep

    pipeline = get_pipeline()
    beat("sweep", pipeline.settings)
    return run_sweep(pipeline, queue_depth)


def _exclusive(name: str, interval: float) -> Lease | None:
    """Run a periodic job of one provider at most once per interval and never two at
    once: a slot lock that expires before the next interval (so two beats started by
    mistake do not double the work) and a run lock held while it runs, released only
    by its holder."""
    coordinator = get_pipeline().coordinator
    if coordinator.acquire_lock(f"slot:{name}", ttl=max(interval * 0.8, 0.2)) is None:
        return None
    return coordinator.acquire_lock(f"run:{name}", ttl=600)


def _done(name: str, lease: Lease) -> None:
    if not lease.release():
        log.warning("%s ran past its run lock's 600 s: another run may have overlapped it", name)


@app.task(name="smsdispatch.poll", ignore_result=True)
def poll(provider: str) -> dict[str, Any]:
    """A poll round of one provider instance (beat): publishes its poll groups."""
    poller = get_poller()
    lease = _exclusive(f"poll:{provider}", poller.settings.polling.interval)
    if lease is None:
        return {"skipped": provider}
    try:
        return asdict(poller.dispatch(provider))
    finally:
        _done(f"poll:{provider}", lease)


@app.task(name="smsdispatch.poll_group", ignore_result=True)
def poll_group(provider: str, ticket: str | None = None) -> dict[str, Any]:
    """A group of one provider's due status polls (published by its poll round with a
    ticket). No lock: groups claim disjoint messages in the ledger, so any number run
    at once."""
    return asdict(get_poller().poll_group(provider, ticket))


@app.task(name="smsdispatch.status_queue", ignore_result=True)
def status_queue(provider: str, chained: bool = False) -> dict[str, Any]:
    """Drain one provider's status queue. ``chained``: published by a drain that left
    it full, which goes on at once (past the slot lock beat's copies take)."""
    from dispatcher.tracking import uses_status_queue

    poller = get_poller()
    if not uses_status_queue(poller.calls.get(provider)):
        return {"skipped": provider}
    if chained:
        lease = poller.coordinator.acquire_lock(f"run:queue:{provider}", ttl=600)
    else:
        lease = _exclusive(f"queue:{provider}", poller.settings.polling.queue_interval)
    if lease is None:
        return {"skipped": provider}
    try:
        stats = poller.drain_queue(provider)
    finally:
        _done(f"queue:{provider}", lease)
    if stats.more:
        status_queue.apply_async(args=[provider], kwargs={"chained": True})
    return asdict(stats)


@app.task(name="smsdispatch.balances", ignore_result=True)
def balances() -> list[dict[str, Any]]:
    from dispatcher.tracking import read_balances

    pipeline = get_pipeline()
    lease = _exclusive("balances", pipeline.settings.polling.balance_interval)
    if lease is None:
        return []
    try:
        return read_balances(pipeline.settings, pipeline.coordinator)
    finally:
        _done("balances", lease)


# The housekeeping tasks live in modules of their own; importing them registers them.
from workers.tasks import callbacks as callbacks  # noqa: E402
from workers.tasks import retention as retention  # noqa: E402
