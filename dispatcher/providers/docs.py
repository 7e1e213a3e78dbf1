"""Render docs/providers.md from the registry and the adapters' own tables.

    python -m dispatcher.providers.docs > docs/providers.md

A test renders it again and compares, so the document cannot drift from the code.
"""

from __future__ import annotations

from dispatcher.errors import Action
from dispatcher.providers import registry
from dispatcher.status import Status

_ACTION_TEXT = {
    Action.RETRY: "retry (same provider, backoff)",
    Action.FAILOVER: "fail over (next provider)",
    Action.REJECT: "reject (message is bad)",
}
_ABOUT_TEXT = {
    "message": "the message",
    "request": "our request (operator)",
    "account": "our account (operator)",
    "provider": "the provider",
}


def _yes(flag: bool, no: str = "no") -> str:
    return "yes" if flag else no


def render(kinds: tuple[str, ...] | None = None) -> str:
    """The document for ``kinds`` (default: every simulated kind of the registry)."""
    lines = [
        "# Providers",
        "",
        "Generated from the registry and the adapters' tables by `python -m dispatcher.providers.docs`;",
        "do not edit by hand. The `doc` column points at the line of the provider's document in",
        "`shared/providers/`.",
        "",
        "Every documented error code is read as exactly one action, by whose fault it is: a fault of",
        "*the message* (invalid or blacklisted number, forbidden text) rejects it; a fault of *our",
        "request* or *our account* fails over to the next provider, logs an error and marks the",
        "provider for an operator (`smsdispatch providers`, column attention) for a day; *the",
        "provider's* own trouble is retried or failed over. Transport failures are the base class's:",
        "connect errors, timeouts, HTTP 5xx and 429 retry; HTTP 401/403 and other 4xx fail over. A",
        "code no document lists fails over (we cannot know that retrying would help).",
        "",
        "A code or delivery status that says the recipient is blacklisted or opted out also puts the",
        "number on the stop list (`smsdispatch stop list`), with source `provider:<instance>` and the",
        "code and its text as the reason, in the transaction that writes the refusal; scope `normal`",
        "stops advertising and bulk, `all` one-time codes too. Each provider's line says which.",
        "",
        "| kind | provider | batch per send | ids per status call | balance call | status queue "
        "| lookup by our id | validity (our TTL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    classes = [registry.get(k).adapter_class() for k in (registry.simulated() if kinds is None else kinds)]
    for cls in classes:
        lines.append(
            f"| `{cls.KIND}` | {cls.TITLE} | {cls.MAX_BATCH} | {cls.MAX_STATUS_BATCH} "
            f"| {_yes(cls.HAS_BALANCE, 'none documented')} | {_yes(cls.HAS_STATUS_QUEUE)} "
            f"| {_yes(cls.STATUS_BY_CLIENT_ID)} | {_yes(cls.VALIDITY, 'none documented')} |"
        )
    for cls in classes:
        lines += ["", f"## {cls.TITLE} (`{cls.KIND}`, {cls.DOC})", "", "### Error codes", ""]
        lines += ["| code | meaning | whose fault | action | doc |", "|---|---|---|---|---|"]
        for code, rule in cls.ERRORS.items():
            lines.append(
                f"| `{code}` | {rule.meaning} | {_ABOUT_TEXT[rule.about]} | {_ACTION_TEXT[rule.action]} "
                f"| {rule.doc} |"
            )
        stops = [f"`{c}` (scope {rule.stop}, {rule.doc})" for c, rule in cls.ERRORS.items() if rule.stop]
        none = "no code or status of the document says a recipient is blacklisted or opted out."
        lines += ["", "Stop list: " + ("; ".join(stops) + "." if stops else none)]
        lines += ["", "### Delivery statuses", "", "| provider value | our status |", "|---|---|"]
        for raw, status in cls.STATUS_MAP.items():
            lines.append(f"| `{raw}` | `{status.value}` |")
        lines.append(f"| anything else | `{Status.UNKNOWN.value}` (raw value kept) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
