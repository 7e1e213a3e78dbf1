"""Where the built-in simulator listens and how it is configured by default.

With no configuration file, ``dispatcher.config.load`` uses ``default_settings_table``:
one instance of each simulated provider kind (``providers.registry``) pointing at the
simulator on loopback.
"""

from __future__ import annotations

from typing import Any

from dispatcher.providers import registry

HOST = "127.0.0.1"
BASE_PORT = 18700
LOGIN = "demo"


def kinds() -> tuple[str, ...]:
    """The kinds the simulator serves: every registered kind that has a simulator."""
    return registry.simulated()


def password_for(kind: str) -> str:
    return f"sim-{kind}-secret"


def login_for(kind: str) -> str:
    return registry.get(kind).sim_login


def base_url(kind: str, host: str = HOST, base_port: int = BASE_PORT, port: int | None = None) -> str:
    path = registry.get(kind).sim_path
    return f"http://{host}:{port if port is not None else base_port + registry.port_offset(kind)}{path}"


def provider_table(kind: str, url: str, priority: int) -> dict[str, Any]:
    return {
        "kind": kind,
        "base_url": url,
        "login": login_for(kind),
        "password": password_for(kind),
        "sender": "SmsDemo",
        "priority": priority,
        **registry.get(kind).demo_options,
    }


def default_settings_table(urls: dict[str, str] | None = None) -> dict[str, Any]:
    """A configuration document with one instance per kind at the simulator."""
    urls = urls or {kind: base_url(kind) for kind in kinds()}
    return {
        "providers": {
            kind: provider_table(kind, urls[kind], priority=(i + 1) * 10)
            for i, kind in enumerate(kinds())
            if kind in urls
        }
    }


def render_toml(table: dict[str, Any], extra_top: dict[str, str] | None = None) -> str:
    from dispatcher.tomlout import to_toml

    return to_toml({**(extra_top or {}), **table})
