"""The operator's web console (``/console`` in the HTTP API process): search, a
message's timeline, providers, queues. Server-rendered pages; only the charts need
JavaScript. See docs/console.md."""

from __future__ import annotations

from dispatcher.console.routes import router

__all__ = ["router"]
