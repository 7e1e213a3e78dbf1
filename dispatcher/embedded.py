"""An in-process worker pool and beat, for running without a broker (the demo on a
fresh machine). The same ``SendPipeline``, sweeper and tracking code the Celery
tasks run; only the queue (an in-memory delay queue) and the coordination
(``MemoryCoordinator``) differ. Not for production: a crash loses the queue, though
never the ledger, whose sweeper republishes what it finds on the next start.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence

from dispatcher.config import Settings
from dispatcher.coordination import MemoryCoordinator
from dispatcher.pipeline import SendPipeline
from dispatcher.providers.prostor import Prostor
from dispatcher.sweeper import sweep
from dispatcher.tracking import drain_status_queue, poll_due, read_balances, uses_status_queue

log = logging.getLogger("smsdispatch.embedded")


class EmbeddedRunner:
    def __init__(self, settings: Settings, workers: int = 8) -> None:
        self.settings = settings
        self.coordinator = MemoryCoordinator()
        self.pipeline = SendPipeline(settings, self.publish, self.coordinator)
        self._heaps: dict[str, list[tuple[float, int, str]]] = {"high": [], "normal": []}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"send-{n}", daemon=True) for n in range(workers)
        ]
        self._threads.append(threading.Thread(target=self._beat, name="beat", daemon=True))
        self.processed = 0

    def publish(self, message_id: str, priority: str, countdown: float = 0.0) -> None:
        with self._cond:
            heap = self._heaps["high" if priority == "high" else "normal"]
            heapq.heappush(heap, (time.monotonic() + countdown, next(self._seq), message_id))
            self._cond.notify()

    def publish_many(self, items: Sequence[tuple[str, str, str | None]]) -> None:
        for message_id, priority, _ in items:
            self.publish(message_id, priority)

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

    def _next(self) -> str | None:
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
        while (message_id := self._next()) is not None:
            try:
                self.pipeline.process(message_id)
            except Exception:
                log.exception("send of %s failed", message_id)
            self.processed += 1

    def _beat(self) -> None:
        pol, p = self.settings.polling, self.settings.pipeline
        last: dict[str, float] = {}

        def due(job: str, every: float) -> bool:
            now = time.monotonic()
            if now - last.get(job, 0.0) >= every:
                last[job] = now
                return True
            return False

        while not self._stop.wait(0.1):
            try:
                if due("sweep", p.sweeper_interval):
                    sweep(self.pipeline)
                if due("balances", pol.balance_interval):
                    read_balances(self.settings, self.coordinator)
                for pc in self.settings.enabled_providers:
                    provider = self.pipeline.provider(pc.name)
                    if due(f"poll:{pc.name}", pol.interval):
                        poll_due(self.settings, self.coordinator, provider)
                    if uses_status_queue(provider) and due(f"queue:{pc.name}", pol.queue_interval):
                        assert isinstance(provider, Prostor)
                        drain_status_queue(self.settings, provider)
            except Exception:
                log.exception("beat job failed")
