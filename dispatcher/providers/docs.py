"""Render docs/providers.md from the adapters' own tables.

    python -m dispatcher.providers.docs > docs/providers.md

A test renders it again and compares, so the document cannot drift from the code.
"""

from __future__ import annotations

from dispatcher.errors import Action
from dispatcher.providers import adapter_classes
from dispatcher.status import Status

_ACTION_TEXT = {
    Action.RETRY: "retry (same provider, backoff)",
    Action.FAILOVER: "fail over (next provider)",
    Action.REJECT: "reject (message is bad)",
}


def render() -> str:
    lines = [
        "# Providers",
        "",
        "Generated from the adapters' tables by `python -m dispatcher.providers.docs`; do not edit by hand.",
        "The `doc` column points at the line of the provider's document in `shared/providers/`.",
        "",
        "Every documented error code is read as exactly one action. Transport failures are the",
        "base class's: connect errors, timeouts, HTTP 5xx and 429 retry; HTTP 401/403 and other 4xx",
        "fail over. A code no document lists fails over (we cannot know that retrying would help).",
        "",
        "| kind | provider | batch per send | ids per status call | balance call | lookup by our id |",
        "|---|---|---|---|---|---|",
    ]
    classes = [cls for kind, cls in adapter_classes().items() if kind != "stub"]
    for cls in classes:
        balance = "yes" if cls.HAS_BALANCE else "none documented"
        lookup = "yes" if cls.STATUS_BY_CLIENT_ID else "no"
        lines.append(
            f"| `{cls.KIND}` | {cls.TITLE} | {cls.MAX_BATCH} | {cls.MAX_STATUS_BATCH} "
            f"| {balance} | {lookup} |"
        )
    for cls in classes:
        lines += ["", f"## {cls.TITLE} (`{cls.KIND}`, {cls.DOC})", "", "### Error codes", ""]
        lines += ["| code | meaning | action | doc |", "|---|---|---|---|"]
        for code, rule in cls.ERRORS.items():
            lines.append(f"| `{code}` | {rule.meaning} | {_ACTION_TEXT[rule.action]} | {rule.doc} |")
        lines += ["", "### Delivery statuses", "", "| provider value | our status |", "|---|---|"]
        for raw, status in cls.STATUS_MAP.items():
            lines.append(f"| `{raw}` | `{status.value}` |")
        lines.append(f"| anything else | `{Status.UNKNOWN.value}` (raw value kept) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
