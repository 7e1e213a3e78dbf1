"""Simulated my-sms.ru (shared/providers/my-sms.md): GET and POST, JSON and XML."""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any, ClassVar

from dispatcher.simulator.base import SimProvider, SimRequest, SimResponse, SimState
from dispatcher.simulator.common import phone_ok, sender_ok

XSI = 'xmlns:i="http://www.w3.org/2001/XMLSchema-instance"'
_REQUEST_LEVEL = {"-1", "-50", "-51", "-52"}
# The document lists no "undelivered" or "expired" state (my-sms.md:588-598): a
# message that does not reach the phone, or outlives its TTL, ends on -14 "error
# while sending the message".
_STAGE = {"accepted": "2", "sent": "3", "delivered": "4", "undelivered": "-14", "expired": "-14"}
_TTL_UNITS = {"minutes": 60, "seconds": 1}
_KEEP_TTLS = 10_000


class MySmsSim(SimProvider):
    KIND = "mysms"
    QUIRKS: ClassVar[dict[str, Any]] = {
        # `ttl` is "the lifetime of the message" with no unit (my-sms.md:53).
        "ttl_unit": "minutes",
        # Whether -14 (my-sms.md:596) in a status reply is the end: True makes the
        # provider report -14 after a failed hand-over to the operator, try again and
        # deliver (3 -> -14 -> 4); False keeps -14 for messages that never arrive.
        "retry_after_error": False,
    }

    def __init__(self, state: SimState) -> None:
        super().__init__(state)
        self._lock = threading.Lock()
        # pid -> the ttl as received, for tests; the latest few only, so that a long
        # load run does not grow it without end.
        self.ttls: dict[str, str] = {}

    def _state_of(self, pid: str) -> str:
        msg = self.state.get(pid)
        if msg is None:
            return "-10"
        if msg.stage == "sent" and self.state.quirk("retry_after_error"):
            return "-14"
        return _STAGE[msg.stage]

    def is_traffic(self, req: SimRequest) -> bool:
        return not req.path.startswith("credit")

    def is_status(self, req: SimRequest) -> bool:
        return req.path.startswith("status")

    def internal_error(self, req: SimRequest) -> SimResponse:
        return self._reply(req, "-50", [], None)

    def route(self, req: SimRequest) -> SimResponse:
        method, _, fmt = req.path.strip("/").partition("/")
        if method not in ("send", "status", "credit") or fmt not in ("json", "xml"):
            return SimResponse(404, "Not Found", "text/plain")
        parsed = self._parse(req, fmt)
        if parsed is None:
            return SimResponse(400, "Bad Request", "text/plain")
        login, password, items = parsed
        if not self.state.auth_ok(login, password):
            return self._reply(req, "-1", [], None)
        if method == "credit":
            balance = f"{self.state.account.balance:.4f}".replace(".", ",")  # my-sms.md:456
            return self._reply(req, "0", [], balance)
        if method == "status":
            results = []
            for item in items:
                results.append((item.get("id", ""), self._state_of(item.get("id", ""))))
            return self._reply(req, "0", results, None)
        forced = self.state.faults.error_code
        if forced in _REQUEST_LEVEL:
            return self._reply(req, forced, [], None)
        return self._reply(req, "0", [self._send_one(item, forced) for item in items], None)

    def _send_one(self, item: dict[str, str], forced: str) -> tuple[str, str]:
        if forced:
            return "", forced
        source, phone, text = item.get("source", ""), item.get("destination", ""), item.get("text", "")
        if not source or not sender_ok(source):
            return "", "-11"
        if not phone_ok(phone):
            return "", "-12"
        if not text:
            return "", "-14"
        date = item.get("date", "")
        if date:
            try:
                datetime.strptime(date, "%d.%m.%Y %H:%M:%S")
            except ValueError:
                return "", "-15"
        ttl = item.get("ttl", "")
        if ttl and not (re.fullmatch(r"[0-9]+", ttl) and int(ttl) > 0):
            return "", "-16"
        if self.state.charge(text) is None:
            return "", "-13"
        lifetime = int(ttl) * _TTL_UNITS[str(self.state.quirk("ttl_unit"))] if ttl else None
        msg = self.state.accept(phone, text, source, style="uuid", lifetime=lifetime)
        if ttl:
            with self._lock:
                self.ttls[msg.pid] = ttl
                if len(self.ttls) > _KEEP_TTLS:
                    del self.ttls[next(iter(self.ttls))]
        return msg.pid, "2"

    def _parse(self, req: SimRequest, fmt: str) -> tuple[str, str, list[dict[str, str]]] | None:
        if req.method == "GET":
            q = req.query
            item = {"source": q.get("s", ""), "destination": q.get("d", ""), "text": q.get("t", "")}
            for key in ("date", "ttl"):
                if key in q:
                    item[key] = q[key]
            if "id" in q:
                item = {"id": q["id"]}
            return q.get("u", ""), q.get("p", ""), [item]
        if fmt == "json" or "json" in req.content_type:
            doc: Any = req.json()
            if not isinstance(doc, dict):
                return None
            auth = doc.get("auth") or {}
            items = [{k: str(v) for k, v in m.items()} for m in doc.get("data") or [] if isinstance(m, dict)]
            return str(auth.get("username", "")), str(auth.get("password", "")), items
        try:
            root = ET.fromstring(req.body)
        except ET.ParseError:
            return None
        items = [{c.tag: (c.text or "") for c in m} for m in root.iter("message")]
        return root.findtext("auth/username") or "", root.findtext("auth/password") or "", items

    def _reply(
        self, req: SimRequest, state: str, results: list[tuple[str, str]], balance: str | None
    ) -> SimResponse:
        fmt = "xml" if req.path.rstrip("/").endswith("xml") else "json"
        if fmt == "json":
            doc: dict[str, Any] = {"state": state}
            if balance is not None:
                doc["balance"] = balance
            elif not req.path.startswith("credit"):
                doc["data"] = [{"id": i, "state": s} for i, s in results]
            return self.json_reply(doc)
        if req.path.startswith("credit"):
            root = "getBalance"
        elif req.path.startswith("status") and req.method == "POST":
            root = "checkSMS"
        else:
            root = "sendSMS"  # the GET status reply uses sendSMS too (my-sms.md:320)
        inner = f"<state>{state}</state>"
        if balance is not None:
            inner += f"<balance>{balance}</balance>"
        elif not req.path.startswith("credit"):
            messages = "".join(f"<message><id>{_esc(i)}</id><state>{s}</state></message>" for i, s in results)
            inner += f"<data>{messages}</data>"
        return SimResponse(200, f"<{root} {XSI}>{inner}</{root}>", "application/xml; charset=utf-8")


def _esc(text: str) -> str:
    return re.sub(r"[<>&]", lambda m: {"<": "&lt;", ">": "&gt;", "&": "&amp;"}[m.group(0)], text)
