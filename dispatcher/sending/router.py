"""Routing: which providers, in what order, for a message; and which providers take
messages in shared calls. Pure: it reads the settings and the adapters' capabilities,
never Redis or the ledger (the send path asks the breakers and balances itself, once
per provider per group).
"""

from __future__ import annotations

from dispatcher.config import ProviderConfig, Settings
from dispatcher.providers import adapter_class


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._enabled: list[ProviderConfig] = settings.enabled_providers
        self._names = {p.name for p in self._enabled}
        groups: dict[int, list[str]] = {}
        for p in self._enabled:
            groups.setdefault(p.priority, []).append(p.name)
        self._groups = [groups[k] for k in sorted(groups)]
        self._batching = {p.name for p in self._enabled if self._takes_batches(p)}

    @staticmethod
    def _takes_batches(p: ProviderConfig) -> bool:
        # SMStele takes many phones per call but stays one message per call: what makes
        # a lost reply safe to settle is its lookup by our own id, and in a shared call
        # every message would carry the first one's id.
        cls = adapter_class(p.kind)
        return (
            min(int(p.option("batch_size", cls.MAX_BATCH)), cls.MAX_BATCH) > 1 and not cls.STATUS_BY_CLIENT_ID
        )

    def order(self, message_id: str, pinned: str | None) -> list[str]:
        """A pinned message goes only to its provider. Others go by priority;
        instances of equal priority share the traffic, each message starting at a
        place of its own (by its id, so a retry of the same message sees the same
        order)."""
        if pinned:
            return [pinned]
        order: list[str] = []
        for names in self._groups:
            start = int(message_id[:8], 16) % len(names) if len(names) > 1 else 0
            order += names[start:] + names[:start]
        return order

    def first_choice(self, message_id: str, pinned: str | None) -> str | None:
        return next(iter(self.order(message_id, pinned)), None)

    def is_enabled(self, name: str) -> bool:
        return name in self._names

    def batches(self, name: str) -> bool:
        """Whether the pipeline sends this provider several messages per call."""
        return name in self._batching

    def lingers(self, name: str | None) -> bool:
        """Whether a lone normal message for this provider waits `pipeline.linger`
        for others due for it. Not with a rate limit: a batch would reach it as a
        burst, so it gets messages at its pace."""
        return (
            name is not None
            and self.settings.pipeline.linger > 0
            and self.batches(name)
            and self.settings.provider(name).rate_limit <= 0
        )

    def group_size(self, pinned: str | None) -> int:
        """Messages per send task for bulk traffic: `pipeline.publish_batch` where
        the first choice takes batches (for an unpinned message: every provider of
        the top priority), else `pipeline.group_size` single calls made concurrently."""
        names = [pinned] if pinned else (self._groups[0] if self._groups else [])
        if names and all(self.batches(n) for n in names):
            return max(1, self.settings.pipeline.publish_batch)
        return max(1, self.settings.pipeline.group_size)
