"""The one list of periodic jobs: Celery beat (``workers/app.py``) and the embedded
runner (``dispatcher/embedded.py``) both run exactly these."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.config import Settings
from dispatcher.providers import adapter_class


@dataclass(frozen=True)
class Job:
    key: str  # unique per job: "sweep", "poll:NAME"
    task: str  # the Celery task that runs it
    every: float  # seconds
    args: tuple[str, ...] = ()


def jobs(settings: Settings) -> list[Job]:
    """The sweeper, the balance reader, callback delivery, retention, a poll round per
    provider instance (it publishes the poll groups the workers of sms.poll run), and
    a status-queue drain per instance that has a queue configured. Disabled instances
    are tracked too: ``enabled = false`` stops new sends to one, and what it took is
    still followed to its end."""
    p, pol = settings.pipeline, settings.polling
    out = [
        Job("sweep", "smsdispatch.sweep", p.sweeper_interval),
        Job("balances", "smsdispatch.balances", pol.balance_interval),
        # status callbacks out of the outbox (dispatcher/callbacks.py)
        Job("callbacks", "smsdispatch.callbacks", settings.callbacks.interval),
        # retention: purge or mask what is older than policy.retention_days
        Job("purge", "smsdispatch.purge", settings.policy.retention_interval),
    ]
    for provider in settings.providers:
        out.append(Job(f"poll:{provider.name}", "smsdispatch.poll", pol.interval, (provider.name,)))
        if adapter_class(provider.kind).HAS_STATUS_QUEUE and provider.option("status_queue"):
            out.append(Job(f"status_queue:{provider.name}", "smsdispatch.status_queue", pol.queue_interval,
                           (provider.name,)))  # fmt: skip
    return out
