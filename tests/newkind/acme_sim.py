"""The simulated acme-sms (tests/newkind/acme.py): the same wire, served by the
simulator's machinery like every other kind."""

from __future__ import annotations

from typing import Any

from dispatcher.simulator.base import SimProvider, SimRequest, SimResponse
from dispatcher.simulator.common import phone_ok

_STATE = {"accepted": "queued", "sent": "sent", "delivered": "delivered", "undelivered": "failed"}


class AcmeSim(SimProvider):
    KIND = "acme"

    def internal_error(self, req: SimRequest) -> SimResponse:
        return self.json_reply({"ok": False, "code": "busy"})

    def is_traffic(self, req: SimRequest) -> bool:
        return req.path != "balance"

    def route(self, req: SimRequest) -> SimResponse:
        doc: Any = req.json() or {}
        if not self.state.auth_ok(doc.get("user"), doc.get("key")):
            return self.json_reply({"ok": False, "code": "auth"})
        if req.path == "balance":
            return self.json_reply({"ok": True, "balance": self.state.account.balance})
        if req.path == "status":
            states = []
            for pid in doc.get("ids", []):
                msg = self.state.get(str(pid))
                if msg is not None:
                    states.append({"id": pid, "state": _STATE[msg.stage]})
            return self.json_reply({"ok": True, "states": states})
        if req.path != "send":
            return SimResponse(404, "no such method", "text/plain")
        if self.state.faults.error_code:
            code = self.state.faults.error_code
            if code == "bad_number":
                refused = [{"ref": m.get("ref"), "code": code} for m in doc.get("messages", [])]
                return self.json_reply({"ok": True, "results": refused})
            return self.json_reply({"ok": False, "code": code})
        results = []
        for item in doc.get("messages", []):
            phone, text = str(item.get("to", "")), str(item.get("text", ""))
            if not phone_ok(phone):
                results.append({"ref": item.get("ref"), "code": "bad_number"})
                continue
            charged = self.state.charge(text)
            if charged is None:
                return self.json_reply({"ok": False, "code": "busy"})
            msg = self.state.accept(phone, text, "", client_id=str(item.get("ref", "")))
            results.append({"ref": item.get("ref"), "id": msg.pid, "parts": charged[0], "price": charged[1]})
        return self.json_reply({"ok": True, "results": results})
