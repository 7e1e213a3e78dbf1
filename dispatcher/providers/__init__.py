"""Provider adapters: one module per provider around ``base.Provider``, each kind
declared once in ``registry``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dispatcher.providers import registry

if TYPE_CHECKING:
    from dispatcher.config import ProviderConfig
    from dispatcher.providers.base import Provider


def adapter_classes() -> dict[str, type[Provider]]:
    """Every registered kind's adapter class."""
    return {name: registry.get(name).adapter_class() for name in registry.kinds()}


def adapter_class(kind: str) -> type[Provider]:
    try:
        return registry.get(kind).adapter_class()
    except KeyError:
        raise KeyError(f"no adapter for provider kind {kind!r}") from None


def make_provider(config: ProviderConfig) -> Provider:
    """The adapter for one configured provider instance."""
    return adapter_class(config.kind)(config)
