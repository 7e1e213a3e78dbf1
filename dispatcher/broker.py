"""The broker side of the dispatcher: the Celery app, its queues, routes,
crash-safety settings and beat schedule, and publishing send tasks. Producers
(``dispatcher.api``) publish through this module; the worker processes load it
through ``workers.app``, which adds what only a worker does (signals, pools).

Interactive messages (``priority="high"``: one-time codes) and bulk traffic have
their own queues, so a pool that serves only ``sms.high`` is never behind a bulk run.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis.exceptions
from celery import Celery
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
from kombu.entity import Queue
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from dispatcher.config import Settings, get_settings
from dispatcher.redis_conn import celery_url, is_sentinel, transport_options
from dispatcher.schedule import jobs
from dispatcher.sending.router import Router

QUEUES = {"high": "sms.high", "normal": "sms.bulk"}
CONTROL_QUEUE = "sms.control"
POLL_QUEUE = "sms.poll"
SEND_TASK = "smsdispatch.send"
SEND_MANY_TASK = "smsdispatch.send_many"
POLL_GROUP_TASK = "smsdispatch.poll_group"

app = Celery("smsdispatch", include=["workers.tasks"])

# The broker's socket timeouts under Sentinel, seconds (see _sentinel_transport).
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0
# What _sentinel_failover sets: Sentinel's values, or Celery's defaults on any other URL.
FAILOVER_SETTINGS = (
    "broker_channel_error_retry",
    "broker_connection_max_retries",
    "task_publish_retry_policy",
)


class SentinelChannel(kombu_redis.SentinelChannel):
    """kombu's sentinel channel, with one crash taken out.

    When the master dies under a worker, Celery 5.7 first collects the broken
    connection (which drops the transport's link to it) and then closes it. If the
    first close of the channel failed on the connection (no master yet: the
    sentinels are still electing), the second one restores the unacknowledged
    messages through a pool it must build again from that link, and dies with
    AttributeError, which nothing catches: the worker stopped ("Unrecoverable
    error", seen in tests/faults/test_sentinel.py). Here it is a connection error,
    which Celery ignores and recovers from; the messages stay in the unacked hash and
    kombu restores them after the visibility timeout (at least once: a second copy of
    a send task finds its messages claimed)."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was collected")
        return super()._connparams(asynchronous)  # type: ignore[no-untyped-call]


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


# sentinel:// URLs are served by the transport above (kombu picks transports by the
# URL's scheme through this table).
TRANSPORT_ALIASES["sentinel"] = "dispatcher.broker:SentinelTransport"


def _queue(name: str) -> Any:
    return Queue(name)  # type: ignore[no-untyped-call]  # kombu ships no types


def configure(settings: Settings) -> Celery:
    """Apply ``settings`` to the app (at import, and again by tests and the demo)."""
    p = settings.pipeline
    app.conf.update(
        # A sentinel URL loses our ?master_name=... here: kombu takes it as a
        # transport option (below).
        broker_url=celery_url(settings.broker_url),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # Crash safety: a task is acknowledged only after it ran; a worker process
        # that dies mid-task gives its task back; one task at a time per process, so
        # a dying process holds nothing else.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # Longer than any countdown we publish (sending.MAX_COUNTDOWN) and any call.
            "visibility_timeout": p.visibility_timeout,
            # kombu scans for unacked tasks of dead workers every interval*throttle
            # seconds (~100 s by default, whatever the visibility timeout).
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            # Redis connections per process. kombu's default, 10, is fewer than a thread
            # or greenlet pool acks at once: an ack that finds none fails, and the task
            # runs again (seen under -P gevent -c 50). A worker raises it to its pool.
            "max_connections": 200,
            **_sentinel_transport(settings.broker_url),
        },
        **_sentinel_failover(settings.broker_url),
        # On TERM, running sends get time to finish before the worker stops.
        worker_soft_shutdown_timeout=p.soft_shutdown_timeout,
        worker_enable_soft_shutdown_on_idle=True,
        task_queues=[_queue(q) for q in (QUEUES["high"], QUEUES["normal"], CONTROL_QUEUE, POLL_QUEUE)],
        task_default_queue=QUEUES["normal"],
        task_routes={
            SEND_TASK: {"queue": QUEUES["normal"]},
            SEND_MANY_TASK: {"queue": QUEUES["normal"]},
            "smsdispatch.sweep": {"queue": CONTROL_QUEUE},
            "smsdispatch.balances": {"queue": CONTROL_QUEUE},
            "smsdispatch.poll": {"queue": POLL_QUEUE},
            POLL_GROUP_TASK: {"queue": POLL_QUEUE},
            "smsdispatch.status_queue": {"queue": POLL_QUEUE},
            # Housekeeping: a slow receiver or a long purge never holds a send slot.
            "smsdispatch.callbacks": {"queue": CONTROL_QUEUE},
            "smsdispatch.purge": {"queue": CONTROL_QUEUE},
        },
        beat_schedule=beat_schedule(settings),
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=settings.flower.basic_auth is not None,
        task_send_sent_event=settings.flower.basic_auth is not None,
    )
    return app


def _sentinel_transport(url: str) -> dict[str, Any]:
    """kombu's transport options for a sentinel URL ({} for any other), with bounded
    socket waits on the master (BRPOP polls for 1 s, well inside SOCKET_TIMEOUT)."""
    return transport_options(url, socket_timeout=SOCKET_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)


def _sentinel_failover(url: str) -> dict[str, Any]:
    """Celery settings that carry workers, beat and producers across a failover."""
    if not is_sentinel(url):
        # Celery's own defaults, set again: the app may be configured again with
        # another URL in one process (tests, the demo). Read from Celery, so that an
        # upgrade that changes them is followed.
        return {key: copy.deepcopy(CELERY_DEFAULTS[key]) for key in FAILOVER_SETTINGS}
    return {
        # A connection to a demoted master answers READONLY; redis-py turns that into a
        # connection error on a master pool, and this makes Celery redial on a channel
        # error too instead of stopping the consumer (celery/celery#7946).
        "broker_channel_error_retry": True,
        # Keep redialling while the sentinels elect (seconds); Celery's default gives
        # up after 100 tries and the worker exits.
        "broker_connection_max_retries": None,
        # A producer's publish retries across the election (about 6 s here) instead of
        # Celery's 0.6 s: otherwise every message stored during a failover waits for
        # the sweeper (`pipeline.sweeper_stale_after`). Nothing is lost either way: the
        # row is committed before the publish.
        "task_publish_retry_policy": {
            "max_retries": 12, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5,
        },
    }  # fmt: skip


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """``dispatcher.schedule.jobs`` as Celery beat entries. Each entry expires before
    its next run, so a backlog of periodic tasks never piles up behind a stopped worker."""
    return {
        job.key: {"task": job.task, "schedule": job.every, "args": list(job.args),
                  "options": {"expires": max(job.every * 2, 1) if job.key != "balances" else job.every}}
        for job in jobs(settings)
    }  # fmt: skip


def publish(message_id: str, priority: str, countdown: float = 0.0) -> None:
    """Publish one send task for a message already committed to the ledger."""
    app.send_task(
        SEND_TASK,
        args=[message_id],
        queue=QUEUES.get(priority, QUEUES["normal"]),
        countdown=countdown or None,
    )


_router_for: tuple[Settings, Router] | None = None


def _router(settings: Settings) -> Router:
    """The router of the current settings (settings are replaced whole: tests, reload).
    Held with its settings, so a new settings object never meets an old router."""
    global _router_for
    if _router_for is None or _router_for[0] is not settings:
        _router_for = (settings, Router(settings))
    return _router_for[1]


def publish_many(items: Sequence[tuple[str, str, str | None]]) -> None:
    """Publish send tasks for many messages over one producer connection. Bulk
    messages go in groups, one ``send_many`` task each (``Router.group_size``: a
    full batch for a provider that takes batches, else a group whose single calls the
    task makes concurrently). A high-priority message always has a task of its own: a
    code never waits behind a group."""
    router = _router(get_settings())
    bulk: dict[str | None, list[str]] = defaultdict(list)
    with app.producer_or_acquire() as producer:
        for message_id, priority, pinned in items:
            if priority == "high":
                app.send_task(SEND_TASK, args=[message_id], queue=QUEUES["high"], producer=producer)
            else:
                bulk[pinned].append(message_id)
        for pinned, ids in bulk.items():
            size = router.group_size(pinned)
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                if len(chunk) > 1:
                    app.send_task(SEND_MANY_TASK, args=[chunk], queue=QUEUES["normal"], producer=producer)
                else:
                    # A lone bulk message bound for a provider that takes batches waits
                    # a moment for company (SendPipeline.process, linger).
                    linger = router.lingers(router.first_choice(chunk[0], pinned))
                    app.send_task(SEND_TASK, args=chunk, kwargs={"linger": True} if linger else None,
                                  queue=QUEUES["normal"], producer=producer)  # fmt: skip


def publish_poll_groups(provider: str, tickets: Sequence[str], expires: float) -> None:
    """Publish a poll-group task for ``provider`` on sms.poll per ticket, over one
    producer connection. Each expires unrun after ``expires`` seconds: the next rounds
    publish what is still due then, so a stopped poll pool never finds a pile."""
    with app.producer_or_acquire() as producer:
        for ticket in tickets:
            app.send_task(POLL_GROUP_TASK, args=[provider, ticket], queue=POLL_QUEUE, expires=expires,
                          producer=producer)  # fmt: skip


def queue_depth(priority: str) -> int | None:
    """Tasks waiting in a priority's queue, or None when the broker cannot tell."""
    try:
        with app.connection_for_write() as conn:
            client: Any = conn.default_channel.client
            return int(client.llen(QUEUES.get(priority, QUEUES["normal"])))
    except Exception:
        return None


# At import, so that producers (dispatcher.api) and `celery -A workers.app` get an app
# configured from the settings; tests and the demo configure it again with theirs.
configure(get_settings())
