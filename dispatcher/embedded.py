"""An in-process worker pool and beat, for running without a broker (the demo on a
fresh machine). The same ``SendPipeline``, groups, sweeper, tracking and list of
periodic jobs (``dispatcher.schedule``) the Celery tasks run; only the queue (an
in-memory delay queue) and the coordination (``MemoryCoordinator``) differ. Not for
production: a crash loses the queue, though never the ledger, whose sweeper
republishes what it finds on the next start.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from dispatcher.callbacks import deliver_due
from dispatcher.config import Settings
from dispatcher.coordination import Coordinator, MemoryCoordinator
from dispatcher.retention import purge_due
from dispatcher.schedule import jobs
from dispatcher.sending import SendPipeline
from dispatcher.sweeper import sweep
from dispatcher.tracking import drain_status_queue, poll_due, read_balances

log = logging.getLogger("smsdispatch.embedded")


class EmbeddedRunner:
    def __init__(self, settings: Settings, workers: int = 8, coordinator: Coordinator | None = None) -> None:
        self.settings = settings
        # A private one by default; an API in the same process (the console's scene)
        # passes its own, so that it sees the breakers this pool opens.
        self.coordinator = coordinator if coordinator is not None else MemoryCoordinator()
        self.pipeline = SendPipeline(settings, self.publish, self.coordinator)
        self._heaps: dict[str, list[tuple[float, int, tuple[str, ...]]]] = {"high": [], "normal": []}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"send-{n}", daemon=True) for n in range(workers)
        ]
        self._threads.append(threading.Thread(target=self._beat, name="beat", daemon=True))
        self.processed = 0

    def publish(self, message_id: str, priority: str, countdown: float = 0.0) -> None:
        self._push((message_id,), priority, countdown)

    def _push(self, ids: tuple[str, ...], priority: str, countdown: float = 0.0) -> None:
        with self._cond:
            heap = self._heaps["high" if priority == "high" else "normal"]
            heapq.heappush(heap, (time.monotonic() + countdown, next(self._seq), ids))
            self._cond.notify()

    def publish_many(self, items: Sequence[tuple[str, str, str | None]]) -> None:
        """As ``broker.publish_many``: codes alone, bulk in groups."""
        bulk: dict[str | None, list[str]] = defaultdict(list)
        for message_id, priority, pinned in items:
            if priority == "high":
                self.publish(message_id, priority)
            else:
                bulk[pinned].append(message_id)
        for pinned, ids in bulk.items():
            size = self.pipeline.router.group_size(pinned)
            for start in range(0, len(ids), size):
                self._push(tuple(ids[start : start + size]), "normal")
        # (A lone message is not lingered here: the in-process queue hands groups over.)

    def start(self) -> EmbeddedRunner:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(10)
        self.pipeline.close()

    def _next(self) -> tuple[str, ...] | None:
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                # Codes first: a due high-priority message always goes before bulk.
                for name in ("high", "normal"):
                    heap = self._heaps[name]
                    if heap and heap[0][0] <= now:
                        return heapq.heappop(heap)[2]
                waits = [h[0][0] - now for h in self._heaps.values() if h]
                self._cond.wait(min(waits) if waits else 0.5)
        return None

    def _work(self) -> None:
        while (ids := self._next()) is not None:
            try:
                if len(ids) == 1:
                    self.pipeline.process(ids[0])
                else:
                    self.pipeline.process_many(ids)
            except Exception:
                log.exception("send of %s failed", ids)
            self.processed += len(ids)

    def _beat(self) -> None:
        pipeline, settings, coordinator = self.pipeline, self.settings, self.coordinator

        def drain(name: str) -> object:
            return drain_status_queue(settings, pipeline.provider(name))

        run: dict[str, Callable[..., object]] = {
            "smsdispatch.sweep": lambda: sweep(pipeline),
            "smsdispatch.balances": lambda: read_balances(settings, coordinator),
            "smsdispatch.poll": lambda name: poll_due(settings, coordinator, pipeline.provider(name)),
            "smsdispatch.status_queue": drain,
            "smsdispatch.callbacks": lambda: deliver_due(settings),
            "smsdispatch.purge": lambda: purge_due(settings),
        }
        last: dict[str, float] = {}
        schedule = jobs(settings)
        while not self._stop.wait(0.1):
            for job in schedule:
                now = time.monotonic()
                if now - last.get(job.key, 0.0) < job.every:
                    continue
                last[job.key] = now
                try:
                    run[job.task](*job.args)
                except Exception:
                    log.exception("beat job %s failed", job.key)
