"""Simulated prostor-sms.ru JSON API v2 (shared/providers/prostor.md)."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any, ClassVar

from dispatcher.segments import count_parts
from dispatcher.simulator.base import SimMessage, SimProvider, SimRequest, SimResponse
from dispatcher.simulator.common import phone_ok, sender_ok

# What status.json and statusQueue.json say per simulated stage.
_WORD = {
    "accepted": "queued",
    "sent": "smsc submit",
    "delivered": "delivered",
    "undelivered": "delivery error",
}
_REQUEST_LEVEL = {
    "error authorization",
    "account blocked",
    "internal error",
    "service unavailable",
    "too many messages",
}
SENDERS = [
    {"status": "active", "info": "", "name": "SmsDemo"},
    {"status": "active", "info": "", "name": "MyBrand"},
    {"status": "pending", "info": "", "name": "3132018"},
    {"status": "blocked", "info": "bad name", "name": "MegaFon"},
    {"status": "default", "info": "", "name": "TEST"},
]
# What a message whose phone ends in the "drop_suffix" quirk loses in send and status
# replies: its clientId, its smscId, both ids, or the whole item.
_DROPS = {"clientId": ("clientId",), "smscId": ("smscId",), "ids": ("clientId", "smscId")}


class ProstorSim(SimProvider):
    KIND = "prostor"
    QUIRKS: ClassVar[dict[str, Any]] = {
        # Messages per send.json or status.json request (prostor.md:17,96); more are
        # refused as a whole with status "error".
        "max_messages": 200,
        # RUB credit: what the account may spend below zero (prostor.md:243,249).
        "credit": 0.0,
        # A server that loses ids in its replies: phones ending so lose what "drop"
        # names ("clientId", "smscId", "ids" or "item"); "" is off.
        "drop_suffix": "",
        "drop": "clientId",
        # Where smsCount and msgCost go (prostor.md:92-93 does not say): per message
        # ("message") or once at the top level ("top"), as public clients read them.
        "billing_at": "message",
        # The no-funds word: the JSON clients' "not enough balance" or the REST
        # interface's "not enough credits" (prostor.md:91 refers to it).
        "no_funds_word": "not enough balance",
        # The HTTP status of a {"status": "error"} reply: 200, or 400.
        "error_http_status": 200,
    }

    def is_traffic(self, req: SimRequest) -> bool:
        return req.path.strip("/") in ("send.json", "status.json", "statusQueue.json")

    def is_status(self, req: SimRequest) -> bool:
        return req.path.strip("/") in ("status.json", "statusQueue.json")

    def internal_error(self, req: SimRequest) -> SimResponse:
        return self._error("internal error")

    def _error(self, description: str) -> SimResponse:
        status = int(self.state.quirk("error_http_status"))
        return self.json_reply({"status": "error", "description": description}, status)

    def _too_many(self, items: list[Any]) -> bool:
        return len(items) > int(self.state.quirk("max_messages"))

    def route(self, req: SimRequest) -> SimResponse:
        path = req.path.strip("/")
        doc: Any = req.json() if req.body else {}
        if not isinstance(doc, dict):
            return self._error("invalid json")
        login, password = doc.get("login"), doc.get("password")
        if path == "version.json":
            # Also as GET parameters or basic auth (prostor.md:325-326).
            login = login or req.query.get("login")
            password = password or req.query.get("password")
            auth = req.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                login, _, password = base64.b64decode(auth[6:]).decode("utf-8").partition(":")
        if not self.state.auth_ok(login, password):
            return self._error("error authorization")
        if path == "send.json":
            return self._send(doc)
        if path == "status.json":
            return self._status(doc)
        if path == "statusQueue.json":
            name = str(doc.get("statusQueueName", ""))
            if not re.fullmatch(r"[A-Za-z0-9]{3,16}", name):
                return self._error("invalid status queue name")
            try:
                limit = min(max(int(doc.get("statusQueueLimit", 1)), 1), 1000)  # prostor.md:179
            except (TypeError, ValueError):
                limit = 1
            taken = self.state.drain(name, limit)
            return self.json_reply(
                {
                    "status": "ok",
                    "messages": [{"status": _WORD[stage], "smscId": pid} for pid, stage in taken],
                }
            )
        if path == "balance.json":
            return self.json_reply({"status": "ok", "balance": self._balance()})
        if path == "senders.json":
            return self.json_reply({"status": "ok", "senders": SENDERS})
        if path == "version.json":
            return self.json_reply({"status": "ok", "version": 2})
        return SimResponse(404, "Not Found", "text/plain")

    def _balance(self) -> list[dict[str, Any]]:
        credit = float(self.state.quirk("credit"))
        return [{"credit": credit, "balance": f"{self.state.account.balance:.2f}", "type": "RUB"}]

    def _charge(self, text: str) -> tuple[int, float] | None:
        # SimState.charge stops at zero; here the balance may go below it by the
        # credit, as the document's example account does (prostor.md:235-236).
        parts = max(count_parts(text), 1)
        cost = parts * self.state.account.price
        credit = float(self.state.quirk("credit"))
        with self.state.lock:
            if self.state.faults.no_funds or self.state.account.balance + credit < cost:
                return None
            self.state.account.balance -= cost
        return parts, cost

    def _lossy(self, phone: str) -> str | None:
        """What the reply item of this phone loses, if anything."""
        suffix = str(self.state.quirk("drop_suffix"))
        return str(self.state.quirk("drop")) if suffix and phone.endswith(suffix) else None

    @staticmethod
    def _lose(item: dict[str, Any], what: str | None) -> dict[str, Any] | None:
        if what == "item":
            return None
        for key in _DROPS.get(what or "", ()):
            item.pop(key, None)
        return item

    def _status(self, doc: dict[str, Any]) -> SimResponse:
        items = doc.get("messages") or []
        if self._too_many(items):
            return self._error("too many messages")
        out = []
        for item in items:
            msg = self.state.get(str(item.get("smscId", "")))
            entry = {
                "status": _WORD[msg.stage] if msg else "incorrect id",
                "smscId": item.get("smscId", ""),
            }
            if item.get("clientId"):
                entry["clientId"] = item["clientId"]
            kept = self._lose(entry, self._lossy(msg.phone) if msg else None)
            if kept is not None:
                out.append(kept)
        return self.json_reply({"status": "ok", "messages": out})

    def _send(self, doc: dict[str, Any]) -> SimResponse:
        items = doc.get("messages")
        if not isinstance(items, list) or not items:
            return self._error("messages is empty")
        if self._too_many(items):
            return self._error("too many messages")
        queue = str(doc.get("statusQueueName") or "")
        if queue and not re.fullmatch(r"[A-Za-z0-9]{3,16}", queue):
            return self._error("invalid status queue name")
        forced = self.state.faults.error_code
        if forced in _REQUEST_LEVEL:
            return self._error(forced)
        schedule_ok = True
        if doc.get("scheduleTime"):
            try:
                datetime.strptime(str(doc["scheduleTime"]), "%Y-%m-%dT%H:%M:%SZ")
            except ValueError:
                schedule_ok = False
        # smsCount and msgCost come with showBillingDetails (prostor.md:57).
        billing = bool(doc.get("showBillingDetails"))
        at_top = billing and self.state.quirk("billing_at") == "top"
        out, parts, cost = [], 0, 0.0
        for item in items:
            entry, msg = self._send_one(item if isinstance(item, dict) else {}, queue, forced, schedule_ok)
            if msg is not None and billing:
                parts, cost = parts + entry["smsCount"], cost + entry["msgCost"]
            if msg is None or not billing or at_top:
                entry.pop("smsCount", None)
                entry.pop("msgCost", None)
            kept = self._lose(entry, self._lossy(msg.phone) if msg else None)
            if kept is not None:
                out.append(kept)
        reply: dict[str, Any] = {"status": "ok", "messages": out}
        if at_top:
            reply["smsCount"], reply["msgCost"] = parts, cost
        if billing:
            reply["balance"] = self._balance()
        return self.json_reply(reply)

    def _send_one(
        self, item: dict[str, Any], queue: str, forced: str, schedule_ok: bool
    ) -> tuple[dict[str, Any], SimMessage | None]:
        client_id = str(item.get("clientId", ""))

        def refuse(word: str) -> tuple[dict[str, Any], None]:
            return {"status": word, "smscId": "", "clientId": client_id}, None

        if not re.fullmatch(r"[A-Z0-9]{1,72}", client_id):
            return refuse("invalid client id")
        if forced:
            return refuse(forced)
        if not schedule_ok:
            return refuse("invalid schedule time format")
        # "+71234567890" in the table (prostor.md:60), "71234567890" in the example
        # (prostor.md:28): both are taken.
        phone = str(item.get("phone", "")).removeprefix("+")
        if not phone_ok(phone):
            return refuse("invalid mobile phone")
        text = str(item.get("text", ""))
        if not text:
            return refuse("text is empty")
        sender = str(item.get("sender") or "TEST")
        if not sender_ok(sender):
            return refuse("sender address invalid")
        charged = self._charge(text)
        if charged is None:
            return refuse(str(self.state.quirk("no_funds_word")))
        msg = self.state.accept(phone, text, sender, client_id=client_id, queue=queue)
        entry = {
            "status": "accepted",
            "smscId": msg.pid,
            "clientId": client_id,
            "smsCount": charged[0],
            "msgCost": charged[1],
        }
        return entry, msg
