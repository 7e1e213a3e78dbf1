"""Idempotency keys per client: a client's key is stored as ``client:NAME:KEY``, so
that another app's same key neither answers its message nor conflicts with it, and
is shown as the client gave it. The operator's and trusted producers' keys are
stored as given."""

from __future__ import annotations


def scoped_key(client: str | None, key: str | None) -> str | None:
    return f"client:{client}:{key}" if client is not None and key is not None else key


def public_key(key: str | None, client: str | None) -> str | None:
    """``scoped_key`` undone."""
    prefix = f"client:{client}:"
    return key[len(prefix) :] if client is not None and key is not None and key.startswith(prefix) else key
