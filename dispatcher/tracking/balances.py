"""Balances: every provider's balance read, kept as history; a balance under the
instance's ``balance_threshold`` makes routing skip it."""

from __future__ import annotations

import logging
from typing import Any

from dispatcher import ledger
from dispatcher.config import Settings
from dispatcher.coordination import Coordinator
from dispatcher.db import session_scope
from dispatcher.errors import ProviderError
from dispatcher.models import utcnow
from dispatcher.providers import make_provider

log = logging.getLogger("smsdispatch.tracking")


def read_balances(settings: Settings, coordinator: Coordinator) -> list[dict[str, Any]]:
    """Read every enabled provider's balance; keep the history; flag low balances."""
    rows: list[dict[str, Any]] = []
    for pc in settings.enabled_providers:
        provider = make_provider(pc)
        row: dict[str, Any] = {
            "provider": pc.name,
            "amount": None,
            "credit": None,
            "currency": None,
            "error": None,
            "low": False,
        }
        try:
            if not provider.HAS_BALANCE:
                continue
            balance = provider.balance()
            row["amount"], row["credit"], row["currency"] = balance.amount, balance.credit, balance.currency
            # Routing compares its threshold with what can be spent: balance plus credit.
            spendable = balance.spendable
            coordinator.set_value(f"balance:{pc.name}", repr(spendable))
            coordinator.set_value(f"balance_error:{pc.name}", "")
            threshold = pc.balance_threshold
            if threshold is not None and spendable is not None and spendable < threshold:
                row["low"] = True
                log.error(
                    "%s can spend %.2f (balance and credit), under its threshold %.2f: routing skips it "
                    "until topped up", pc.name, spendable, threshold,
                )  # fmt: skip
        except ProviderError as exc:
            row["error"] = str(exc)
            coordinator.set_value(f"balance_error:{pc.name}", str(exc))
        finally:
            provider.close()
        rows.append(row)
    if rows:
        with session_scope() as s:
            ledger.record_balances(s, rows, utcnow())
    return rows
