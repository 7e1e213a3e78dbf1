"""Provider adapters: one module per provider around ``base.Provider``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.config import ProviderConfig
    from dispatcher.providers.base import Provider


def adapter_classes() -> dict[str, type[Provider]]:
    from dispatcher.providers.mysms import MySms
    from dispatcher.providers.prostor import Prostor
    from dispatcher.providers.sms1000 import Sms1000
    from dispatcher.providers.smska import SmsKa
    from dispatcher.providers.smstele import SmsTele
    from dispatcher.providers.stub import StubProvider

    return {cls.KIND: cls for cls in (MySms, Sms1000, SmsKa, SmsTele, Prostor, StubProvider)}


def adapter_class(kind: str) -> type[Provider]:
    try:
        return adapter_classes()[kind]
    except KeyError:
        raise KeyError(f"no adapter for provider kind {kind!r}") from None


def make_provider(config: ProviderConfig) -> Provider:
    """The adapter for one configured provider instance."""
    return adapter_class(config.kind)(config)
