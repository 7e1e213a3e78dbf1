"""acme-sms (an invented provider for the test of adding a kind): POST JSON to
``send``, ``status`` and ``balance``; replies are JSON with ``ok`` and, on failure,
a string ``code``. Sends take up to 50 messages; statuses up to 50 ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from dispatcher.errors import Action
from dispatcher.providers.base import (
    Balance,
    ErrorRule,
    MessageRef,
    OutgoingSms,
    Provider,
    SendOutcome,
    StatusReport,
    WireReply,
    WireRequest,
    parse_amount,
    read_json,
)
from dispatcher.status import Status


class Acme(Provider):
    KIND = "acme"
    TITLE = "acme-sms (test kind)"
    DOC = "none: invented for tests/newkind"
    MAX_BATCH = 50
    MAX_STATUS_BATCH = 50
    VALIDITY = True

    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "queued": Status.ACCEPTED,
        "sent": Status.SENT,
        "delivered": Status.DELIVERED,
        "failed": Status.UNDELIVERED,
    }
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "busy": ErrorRule(Action.RETRY, "try again later", "acme", "provider"),
        "auth": ErrorRule(Action.FAILOVER, "bad credentials", "acme", "account"),
        "bad_param": ErrorRule(Action.FAILOVER, "a parameter we sent is invalid", "acme", "request"),
        "bad_number": ErrorRule(Action.REJECT, "not a mobile number", "acme", "message"),
    }

    def _json(self, path: str, **fields: Any) -> WireRequest:
        auth = {"user": self.config.login, "key": self.config.password}
        return WireRequest("POST", path, json={**auth, **fields})

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        items = []
        for msg in batch:
            item: dict[str, Any] = {"ref": msg.id, "to": msg.to, "text": msg.text}
            if msg.expires_at is not None:
                item["valid_until"] = int(msg.expires_at.timestamp())
            items.append(item)
        return self._json("send", messages=items)

    def _doc(self, reply: WireReply) -> dict[str, Any]:
        doc = read_json(self, reply)
        if not isinstance(doc, dict):
            self.malformed(reply, "expected an object")
        if doc.get("ok") is False:
            raise self.error(str(doc.get("code", "")), reply)
        return doc

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        results = {str(r.get("ref")): r for r in self._doc(reply).get("results", []) if isinstance(r, dict)}
        outcomes = []
        for msg in batch:
            item = results.get(msg.id)
            if item is None:
                continue  # not in the reply: the pipeline reads it as in doubt
            if item.get("code"):
                err = self.error(str(item["code"]), reply)
                outcomes.append(SendOutcome(msg.id, None, Status.UNKNOWN, str(item["code"]), error=err))
            else:
                parts, cost = int(item["parts"]), parse_amount(item["price"])
                outcomes.append(
                    SendOutcome(msg.id, str(item["id"]), Status.ACCEPTED, "queued", segments=parts, cost=cost)
                )
        return outcomes

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        return self._json("status", ids=[r.provider_message_id for r in refs])

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        return [
            StatusReport(str(item.get("id")), self.map_status(str(item.get("state"))), str(item.get("state")))
            for item in self._doc(reply).get("states", [])
            if isinstance(item, dict)
        ]

    def build_balance(self) -> WireRequest:
        return self._json("balance")

    def parse_balance(self, reply: WireReply) -> Balance:
        return Balance(parse_amount(self._doc(reply).get("balance")), "RUB")
