"""A worker process's provider calls: one adapter per provider instance (each keeps its
keep-alive HTTP session) and one pool of threads the calls run on. The send path and
the status polls share both, so a process holds one connection pool per provider and
one bound on calls in flight (``pipeline.call_concurrency``), whatever it is doing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from dispatcher.providers import make_provider

if TYPE_CHECKING:
    from dispatcher.config import Settings
    from dispatcher.providers.base import Provider

T = TypeVar("T")


class ProviderPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._providers: dict[str, Provider] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def get(self, name: str) -> Provider:
        """The adapter of the instance ``name`` (made on first use)."""
        with self._lock:
            found = self._providers.get(name)
            if found is None:
                found = self._providers[name] = make_provider(self.settings.provider(name))
            return found

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the process's call threads."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.settings.pipeline.call_concurrency, "sms-call")
            executor = self._executor
        return executor.submit(fn, *args)

    def close(self) -> None:
        """Close every adapter's HTTP session and let the threads go (after a fork, at exit)."""
        with self._lock:
            for provider in self._providers.values():
                provider.close()
            self._providers.clear()
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None
