"""smsdispatch: a distributed SMS dispatcher.

from dispatcher import send_sms, send_bulk, get_message
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["get_message", "send_bulk", "send_sms"]

if TYPE_CHECKING:
    from dispatcher.api import get_message, send_bulk, send_sms


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (for the simulator, the adapters, the CLI) must not
    # pull in the database and broker layers.
    if name in __all__:
        from dispatcher import api

        return getattr(api, name)
    raise AttributeError(name)
