"""The callback delivery task (``smsdispatch.callbacks``, the beat job ``callbacks``).

The slot lock keeps two beats from starting two runs per interval; the run lock keeps
runs from piling up on worker slots while a slow receiver holds one, and lasts no
longer than one run's lease, so a worker killed mid-run holds up the next run no
longer than it holds up its callbacks. Correctness never rests on these locks: the
rows themselves are leased (dispatcher/callbacks.py).
"""

from __future__ import annotations

import logging
import time

from dispatcher.callbacks import deliver_due, lease_seconds
from dispatcher.config import get_settings
from dispatcher.coordination import coordinator_for
from dispatcher.health import beat
from workers.app import app

log = logging.getLogger("smsdispatch.tasks")

# A run goes on with another round while rounds deliver (each delivery may release
# the next callback of its message), for at most this long.
RUN_BUDGET = 10.0


@app.task(name="smsdispatch.callbacks", ignore_result=True)
def deliver() -> dict[str, int]:
    settings = get_settings()
    beat("callbacks", settings)
    coordinator = coordinator_for(settings.broker_url)
    if coordinator.acquire_lock("slot:callbacks", ttl=max(settings.callbacks.interval * 0.8, 0.2)) is None:
        return {"skipped": 1}
    totals = {"delivered": 0, "retry": 0, "failed": 0}
    started = time.monotonic()
    while True:
        run = coordinator.acquire_lock("run:callbacks", ttl=lease_seconds(settings, settings.callbacks.batch))
        if run is None:
            break
        try:
            counts = deliver_due(settings)
        finally:
            if not run.release():
                log.warning("callbacks ran past its run lock: another run may have overlapped it")
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
        if counts["delivered"] == 0 or time.monotonic() - started > RUN_BUDGET:
            break
    return totals
