"""An in-process worker pool and beat, for running without a broker (the demo on a
fresh machine). The same ``SendPipeline``, groups, sweeper, poll rounds and groups and
list of periodic jobs (``dispatcher.schedule``) the Celery tasks run; only the queue
(an in-memory delay queue) and the coordination (``MemoryCoordinator``) differ. Not for
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
from dispatcher.tracking import Poller, read_balances

log = logging.getLogger("smsdispatch.embedded")

Job = Callable[[], object]
# The in-process queues, served in this order: codes before bulk, sends before polls.
QUEUES = ("high", "normal", "poll")


class EmbeddedRunner:
    def __init__(self, settings: Settings, workers: int = 8, coordinator: Coordinator | None = None) -> None:
        self.settings = settings
        # A private one by default; an API in the same process (the console's scene)
        # passes its own, so that it sees the breakers this pool opens.
        self.coordinator = coordinator if coordinator is not None else MemoryCoordinator()
        self.pipeline = SendPipeline(settings, self.publish, self.coordinator)
        self.poller = Poller(settings, self.coordinator, self.pipeline.calls, self.publish_poll_groups,
                             self.pipeline.first_polls)  # fmt: skip
        self._heaps: dict[str, list[tuple[float, int, Job]]] = {q: [] for q in QUEUES}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"send-{n}", daemon=True) for n in range(workers)
        ]
        self._threads.append(threading.Thread(target=self._beat, name="beat", daemon=True))
        self.processed = 0

    def publish(self, message_id: str, priority: str, countdown: float = 0.0) -> None:
        self._push(lambda: self._send((message_id,)), "high" if priority == "high" else "normal", countdown)

    def publish_poll_groups(self, provider: str, tickets: Sequence[str], expires: float) -> None:
        # A group not started in time is dropped, as a Celery task's `expires` does: the
        # rounds publish what is still due then, so bulk sends ahead never pile polls up.
        until = time.monotonic() + expires
        for ticket in tickets:

            def group(ticket: str = ticket) -> None:
                if time.monotonic() < until:
                    self.poller.poll_group(provider, ticket)

            self._push(group, "poll")

    def _push(self, job: Job, queue: str, countdown: float = 0.0) -> None:
        with self._cond:
            heapq.heappush(self._heaps[queue], (time.monotonic() + countdown, next(self._seq), job))
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
                group = tuple(ids[start : start + size])
                self._push(lambda group=group: self._send(group), "normal")  # type: ignore[misc]
        # (A lone message is not lingered here: the in-process queue hands groups over.)

    def _send(self, ids: tuple[str, ...]) -> None:
        if len(ids) == 1:
            self.pipeline.process(ids[0])
        else:
            self.pipeline.process_many(ids)
        self.processed += len(ids)

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

    def _next(self) -> Job | None:
        with self._cond:
            while not self._stop.is_set():
                now = time.monotonic()
                for name in QUEUES:
                    heap = self._heaps[name]
                    if heap and heap[0][0] <= now:
                        return heapq.heappop(heap)[2]
                waits = [h[0][0] - now for h in self._heaps.values() if h]
                self._cond.wait(min(waits) if waits else 0.5)
        return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                job()
            except Exception:
                log.exception("an embedded job failed")

    def _beat(self) -> None:
        pipeline, settings, coordinator, poller = self.pipeline, self.settings, self.coordinator, self.poller

        def drain(name: str) -> object:
            # A queue left full is drained on at once, as the Celery task chains itself:
            # by a job of the poll queue, so that beat goes on meanwhile.
            if poller.drain_queue(name).more:
                self._push(lambda: drain(name), "poll")
            return None

        run: dict[str, Callable[..., object]] = {
            "smsdispatch.sweep": lambda: sweep(pipeline),
            "smsdispatch.balances": lambda: read_balances(settings, coordinator),
            "smsdispatch.poll": poller.dispatch,
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
