"""Simulated prostor-sms.ru JSON API v2 (shared/providers/prostor.md)."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

from dispatcher.simulator.base import SimProvider, SimRequest, SimResponse
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


class ProstorSim(SimProvider):
    KIND = "prostor"

    def is_traffic(self, req: SimRequest) -> bool:
        return req.path.strip("/") in ("send.json", "status.json", "statusQueue.json")

    def internal_error(self, req: SimRequest) -> SimResponse:
        return self._error("internal error")

    def _error(self, description: str) -> SimResponse:
        return self.json_reply({"status": "error", "description": description})

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
            items = doc.get("messages") or []
            if len(items) > 200:
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
                out.append(entry)
            return self.json_reply({"status": "ok", "messages": out})
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
        return [{"credit": 0.0, "balance": f"{self.state.account.balance:.2f}", "type": "RUB"}]

    def _send(self, doc: dict[str, Any]) -> SimResponse:
        items = doc.get("messages")
        if not isinstance(items, list) or not items:
            return self._error("messages is empty")
        if len(items) > 200:  # prostor.md:17
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
        out = []
        for item in items:
            out.append(self._send_one(item if isinstance(item, dict) else {}, queue, forced, schedule_ok))
        reply: dict[str, Any] = {"status": "ok", "messages": out}
        if doc.get("showBillingDetails"):
            reply["balance"] = self._balance()
        return self.json_reply(reply)

    def _send_one(self, item: dict[str, Any], queue: str, forced: str, schedule_ok: bool) -> dict[str, Any]:
        client_id = str(item.get("clientId", ""))

        def refuse(word: str) -> dict[str, Any]:
            return {"status": word, "smscId": "", "clientId": client_id}

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
        charged = self.state.charge(text)
        if charged is None:
            return refuse("not enough balance")
        msg = self.state.accept(phone, text, sender, client_id=client_id, queue=queue)
        return {
            "status": "accepted",
            "smscId": msg.pid,
            "clientId": client_id,
            "smsCount": charged[0],
            "msgCost": charged[1],
        }
