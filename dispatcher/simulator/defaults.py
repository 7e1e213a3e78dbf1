"""Where the built-in simulator listens and how it is configured by default.

With no configuration file, ``dispatcher.config.load`` uses ``default_settings_table``:
one instance of each provider kind pointing at the simulator on loopback.
"""

from __future__ import annotations

from typing import Any

HOST = "127.0.0.1"
BASE_PORT = 18700

# kind -> (port offset, path of base_url as the document prints it)
LAYOUT: dict[str, tuple[int, str]] = {
    "mysms": (1, "/rest/sms/"),
    "sms1000": (2, "/"),
    "smska": (3, "/api/httppost.php"),
    "smstele": (4, "/cgibin/"),
    "prostor": (5, "/messages/v2/"),
}
KINDS = tuple(LAYOUT)

LOGIN = "demo"


def password_for(kind: str) -> str:
    return f"sim-{kind}-secret"


def base_url(kind: str, host: str = HOST, base_port: int = BASE_PORT, port: int | None = None) -> str:
    offset, path = LAYOUT[kind]
    return f"http://{host}:{port if port is not None else base_port + offset}{path}"


def provider_table(kind: str, url: str, priority: int) -> dict[str, Any]:
    table: dict[str, Any] = {
        "kind": kind,
        "base_url": url,
        "login": LOGIN if kind != "sms1000" else "demo@example.com",
        "password": password_for(kind),
        "sender": "SmsDemo",
        "priority": priority,
    }
    if kind == "prostor":
        table["status_queue"] = "smsdispatch"
    return table


def default_settings_table(urls: dict[str, str] | None = None) -> dict[str, Any]:
    """A configuration document with one instance per kind at the simulator."""
    urls = urls or {kind: base_url(kind) for kind in KINDS}
    return {
        "providers": {
            kind: provider_table(kind, urls[kind], priority=(i + 1) * 10)
            for i, kind in enumerate(KINDS)
            if kind in urls
        }
    }


def render_toml(table: dict[str, Any], extra_top: dict[str, str] | None = None) -> str:
    from dispatcher.tomlout import to_toml

    return to_toml({**(extra_top or {}), **table})
