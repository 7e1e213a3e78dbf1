"""The one list of provider kinds.

Each kind is declared once, here: its adapter, its simulator, and where the simulator
serves it. Its capabilities (messages per send, ids per status call, a balance call, a
status queue, a lookup by our id, a validity parameter) are the adapter's class
attributes, read through ``Kind.capabilities``; tracking, routing, beat, the demo and
the tests read them from here, never by a kind's name. ``docs/ADDING_A_PROVIDER.md``
walks through adding one.

Modules are named as strings and imported on first use, so that the configuration can
check a kind's name without importing every adapter and simulator.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.providers.base import Provider
    from dispatcher.simulator.base import SimProvider


@dataclass(frozen=True)
class Capabilities:
    batch: int  # messages per send call
    status_batch: int  # ids per status call
    balance: bool  # a balance call exists
    status_queue: bool  # the provider pushes statuses into a queue we drain
    status_by_our_id: bool  # a status call finds a message by the id we sent
    validity: bool  # a send takes a validity/lifetime (our TTL goes with it)


@dataclass(frozen=True)
class Kind:
    name: str
    adapter: str  # "module:Class" of the dispatcher.providers.base.Provider subclass
    simulator: str | None  # "module:Class" of its SimProvider; None: no simulator
    sim_path: str = "/"  # the path of base_url as the document prints it
    sim_login: str = "demo"  # the simulator's account login (1000sms.ru logs in by e-mail)
    # Options the demo configuration gives each instance of this kind.
    demo_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def adapter_class(self) -> type[Provider]:
        cls: type[Provider] = _load(self.adapter)
        return cls

    def simulator_class(self) -> type[SimProvider]:
        if self.simulator is None:
            raise KeyError(f"provider kind {self.name!r} has no simulator")
        cls: type[SimProvider] = _load(self.simulator)
        return cls

    @property
    def capabilities(self) -> Capabilities:
        cls = self.adapter_class()
        return Capabilities(
            batch=cls.MAX_BATCH,
            status_batch=cls.MAX_STATUS_BATCH,
            balance=cls.HAS_BALANCE,
            status_queue=cls.HAS_STATUS_QUEUE,
            status_by_our_id=cls.STATUS_BY_CLIENT_ID,
            validity=cls.VALIDITY,
        )


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind (a plug-in, or a test's throwaway kind). Its simulator's port is the
    next after the last registered one's."""
    if kind.name in _KINDS and _KINDS[kind.name] != kind:
        raise ValueError(f"provider kind {kind.name!r} is registered already")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def kinds() -> tuple[str, ...]:
    """Every registered kind's name, in registration order."""
    return tuple(_KINDS)


def simulated() -> tuple[str, ...]:
    """The kinds that have a simulator (what the demo and the tests run against)."""
    return tuple(name for name, kind in _KINDS.items() if kind.simulator is not None)


def get(name: str) -> Kind:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"no provider kind {name!r} (one of: {', '.join(_KINDS)})") from None


def port_offset(name: str) -> int:
    """The simulator's port for a kind is the base port plus this."""
    return kinds().index(name) + 1


# -- the kinds --------------------------------------------------------------------------
# One registration per provider. The simulator's path is the base URL the document prints.

register(
    Kind("mysms", "dispatcher.providers.mysms:MySms", "dispatcher.simulator.mysms:MySmsSim", "/rest/sms/")
)
register(
    Kind(
        "sms1000",
        "dispatcher.providers.sms1000:Sms1000",
        "dispatcher.simulator.sms1000:Sms1000Sim",
        "/",
        sim_login="demo@example.com",
    )
)
register(
    Kind(
        "smska",
        "dispatcher.providers.smska:SmsKa",
        "dispatcher.simulator.smska:SmsKaSim",
        "/api/httppost.php",
    )
)
register(
    Kind(
        "smstele",
        "dispatcher.providers.smstele:SmsTele",
        "dispatcher.simulator.smstele:SmsTeleSim",
        "/cgibin/",
    )
)
register(
    Kind(
        "prostor",
        "dispatcher.providers.prostor:Prostor",
        "dispatcher.simulator.prostor:ProstorSim",
        "/messages/v2/",
        demo_options=MappingProxyType({"status_queue": "smsdispatch"}),
    )
)
