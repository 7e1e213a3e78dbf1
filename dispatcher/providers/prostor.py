"""prostor-sms.ru, JSON API v2 (shared/providers/prostor.md).

POST JSON with the credentials in the body. ``send.json`` and ``status.json`` take
up to 200 messages (prostor.md:17,96); ``statusQueue.json`` drains up to 1000 queued
status changes of a named queue (prostor.md:158-179). Each message carries our id
as ``clientId`` (required, A-Z 0-9, at most 72: prostor.md:58).

Per-message status words: the document shows only ``accepted``, ``sender address
invalid``, ``delivered`` and ``smsc reject`` and refers to its REST interface for the
rest (prostor.md:91); the other words below are that interface's vocabulary. Any
word we do not know maps to ``unknown`` with the raw word kept.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from datetime import UTC
from typing import Any, ClassVar

from dispatcher.errors import Action
from dispatcher.providers.base import (
    Balance,
    ErrorRule,
    MessageRef,
    OptionSpec,
    OutgoingSms,
    Provider,
    SendOutcome,
    StatusReport,
    WireReply,
    WireRequest,
    int_range,
    parse_amount,
    read_json,
)
from dispatcher.status import Status

R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT
_REST = "prostor.md:91 (REST vocabulary)"


def _queue_name(value: Any) -> str | None:
    # prostor.md:56: 3 to 16 characters, letters and digits.
    return None if re.fullmatch(r"[A-Za-z0-9]{3,16}", value) else "3 to 16 letters and digits"


def client_id(our_id: str) -> str:
    """Our message id as a prostor clientId: A-Z 0-9, at most 72 (prostor.md:58)."""
    return re.sub(r"[^A-Z0-9]", "", our_id.upper())[:72]


class Prostor(Provider):
    HAS_STATUS_QUEUE = True
    KIND = "prostor"
    TITLE = "prostor-sms.ru"
    DOC = "prostor.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "status_queue": (str, _queue_name),
        "batch_size": (int, int_range(1, 200)),
    }
    MAX_BATCH = 200
    MAX_STATUS_BATCH = 200
    MAX_QUEUE_DRAIN = 1000

    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "accepted": Status.ACCEPTED,
        "queued": Status.ACCEPTED,
        "smsc submit": Status.SENT,
        "delivered": Status.DELIVERED,
        "delivery error": Status.UNDELIVERED,
        "smsc reject": Status.REJECTED,
        "expired": Status.EXPIRED,
        "incorrect id": Status.UNKNOWN,
    }
    # Per-message refusals of send.json and request-level `description`s of
    # status "error".
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "sender address invalid": ErrorRule(F, "sender address invalid", "prostor.md:77"),
        "invalid mobile phone": ErrorRule(J, "invalid mobile phone", _REST, "message"),
        "text is empty": ErrorRule(J, "text is empty", _REST, "message"),
        "wapurl invalid": ErrorRule(J, "wap-push url invalid", _REST, "message"),
        "invalid schedule time format": ErrorRule(J, "invalid schedule time format", _REST, "message"),
        "invalid status queue name": ErrorRule(F, "invalid status queue name", _REST),
        "not enough balance": ErrorRule(F, "not enough balance", _REST),
        "error authorization": ErrorRule(F, "authorization failed", _REST),
        "account blocked": ErrorRule(F, "account blocked", _REST),
        "too many messages": ErrorRule(J, "more than 200 messages in one request", "prostor.md:17", "message"),
        "internal error": ErrorRule(R, "internal error", _REST),
        "service unavailable": ErrorRule(R, "service temporarily unavailable", _REST),
    }

    def group_key(self, msg: OutgoingSms) -> Hashable:
        # scheduleTime belongs to the request, not to a message (prostor.md:25).
        return msg.at

    @property
    def status_queue(self) -> str | None:
        value = self.config.option("status_queue")
        return str(value) if value else None

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {"login": self.config.login, "password": self.config.password, **fields}

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        messages = []
        for msg in batch:
            item = {
                # The parameter table asks for "+71234567890" (prostor.md:60), its own
                # example sends "71234567890" (prostor.md:28): we follow the table.
                "phone": "+" + msg.to,
                "clientId": client_id(msg.id),
                "text": msg.text,
            }
            sender = msg.sender or self.config.sender
            if sender:
                item["sender"] = sender
            messages.append(item)
        body = self._body(messages=messages, showBillingDetails=True)
        if batch[0].at is not None:
            body["scheduleTime"] = batch[0].at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.status_queue:
            body["statusQueueName"] = self.status_queue
        return WireRequest("POST", "send.json", json=body)

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        messages = []
        for ref in refs:
            item = {"smscId": ref.provider_message_id or ""}
            item["clientId"] = client_id(ref.id)
            messages.append(item)
        return WireRequest("POST", "status.json", json=self._body(messages=messages))

    def build_balance(self) -> WireRequest:
        return WireRequest("POST", "balance.json", json=self._body())

    def _doc(self, reply: WireReply) -> dict[str, Any]:
        doc = read_json(self, reply)
        if not isinstance(doc, dict):
            self.malformed(reply, "expected a JSON object")
        if str(doc.get("status", "")).lower() == "error":
            description = str(doc.get("description") or doc.get("message") or "").strip()
            raise self.error(description.lower() or "error", reply, detail=description)
        return doc

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        doc = self._doc(reply)
        results = {str(m.get("clientId", "")): m for m in doc.get("messages") or [] if isinstance(m, dict)}
        outcomes = []
        for msg in batch:
            item = results.get(client_id(msg.id))
            if item is None:
                self.malformed(reply, f"no result for clientId {client_id(msg.id)}")
            word = str(item.get("status", "")).strip().lower()
            smsc_id = str(item.get("smscId") or "") or None
            count = item.get("smsCount")
            if word in ("accepted", "queued"):
                outcomes.append(
                    SendOutcome(
                        msg.id,
                        smsc_id,
                        self.map_status(word),
                        word,
                        segments=int(str(count)) if str(count or "").isdigit() else None,
                        cost=parse_amount(item.get("msgCost")),
                    )
                )
            else:
                outcomes.append(
                    SendOutcome(msg.id, smsc_id, Status.UNKNOWN, word, error=self.error(word, reply))
                )
        return outcomes

    def _reports(self, doc: dict[str, Any]) -> list[StatusReport]:
        reports = []
        for item in doc.get("messages") or []:
            if not isinstance(item, dict):
                continue
            word = str(item.get("status", "")).strip().lower()
            reports.append(
                StatusReport(
                    str(item.get("smscId") or "") or None,
                    self.map_status(word),
                    word,
                    id=str(item.get("clientId") or "") or None,
                )
            )
        return reports

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        return self._reports(self._doc(reply))

    def drain_status_queue(self, limit: int = MAX_QUEUE_DRAIN) -> list[StatusReport]:
        """Take up to ``limit`` (max 1000) status changes off our status queue."""
        if not self.status_queue:
            raise NotImplementedError(f"{self.name}: no status_queue configured")
        limit = max(1, min(limit, self.MAX_QUEUE_DRAIN))
        body = self._body(statusQueueName=self.status_queue, statusQueueLimit=str(limit))
        reply = self.call(WireRequest("POST", "statusQueue.json", json=body), sending=False)
        return self._reports(self._doc(reply))

    def parse_balance(self, reply: WireReply) -> Balance:
        doc = self._doc(reply)
        entries = [b for b in doc.get("balance") or [] if isinstance(b, dict)]
        if not entries:
            self.malformed(reply, "no balance entries")
        # Two kinds of balance, RUB and SMS (prostor.md:228-239); money first.
        entry = next((b for b in entries if str(b.get("type")).upper() == "RUB"), entries[0])
        amount = parse_amount(entry.get("balance"))
        details = {
            str(b.get("type")): {
                "balance": parse_amount(b.get("balance")),
                "credit": parse_amount(b.get("credit")),
            }
            for b in entries
        }
        return Balance(amount, str(entry.get("type") or "") or None, details)

    def senders(self) -> list[dict[str, str]]:
        """The sender names of the account with their state (prostor.md:251-307)."""
        reply = self.call(WireRequest("POST", "senders.json", json=self._body()), sending=False)
        doc = self._doc(reply)
        return [
            {
                "name": str(s.get("name", "")),
                "status": str(s.get("status", "")),
                "info": str(s.get("info", "")),
            }
            for s in doc.get("senders") or []
            if isinstance(s, dict)
        ]

    def version(self) -> int:
        """The active API version (prostor.md:309-339)."""
        # The heading's URL ends in "version.json/" (prostor.md:314); the simulator
        # and, by their other methods, the server take it without the slash too.
        reply = self.call(WireRequest("POST", "version.json", json=self._body()), sending=False)
        doc = self._doc(reply)
        try:
            return int(doc.get("version"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.malformed(reply, "no version number")
