"""Writing TOML (the standard library only reads it): config files written by the
simulator, the demo and the tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def to_toml(table: Mapping[str, Any]) -> str:
    """Write a configuration document: top-level values, then tables, then
    ``[providers.NAME]`` tables. Values: strings, numbers, booleans, lists, inline tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Mapping):  # an inline table: policy.recipient_limit = {high = "5/hour"}
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"{k} = {value(v)}" for k, v in table.items() if not isinstance(v, Mapping)]
    for name, section in table.items():
        if not isinstance(section, Mapping):
            continue
        if name == "providers":
            for pname, provider in section.items():
                lines += ["", f"[providers.{pname}]"] + [f"{k} = {value(v)}" for k, v in provider.items()]
        else:
            lines += ["", f"[{name}]"] + [f"{k} = {value(v)}" for k, v in section.items()]
    return "\n".join(lines) + "\n"
