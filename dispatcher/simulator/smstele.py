"""Simulated SMStele.ru / rex400 (shared/providers/smstele.md): form fields in the
request's charset (windows-1251 unless told), JSON replies."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, ClassVar

from dispatcher.segments import MAX_PARTS, count_parts
from dispatcher.simulator.base import (
    SimProvider,
    SimRequest,
    SimResponse,
)
from dispatcher.simulator.common import operator_of, phone_ok, sender_ok

CHARSETS = {"windows-1251": "cp1251", "utf-8": "utf-8", "koi8-r": "koi8-r"}
_STAT = {
    "accepted": "ACCEPTD",
    "sent": "ENROUTE",
    "delivered": "DELIVRD",
    "undelivered": "UNDELIV",
    # its validity ran out before it was delivered
    "expired": "EXPIRED",
}
# A 25-character id is taken (smstele.md:231,338), a 71-character one refused with -35
# (smstele.md:106,136-139); every id the document shows is lowercase letters, digits
# and hyphens. We take the strictest reading of both.
MAX_ID = 25
_ID = re.compile(r"[0-9a-z-]+")
_HHMM = re.compile(r"(\d{1,2}):([0-5]\d)")


class SmsTeleSim(SimProvider):
    KIND = "smstele"
    QUIRKS: ClassVar[dict[str, Any]] = {
        # `validity` has no format in the document (smstele.md:70): "seconds" as its
        # neighbour viber_validity (0 to 86400, smstele.md:64), or "hh:mm" as smsc.ru's
        # `valid`, whose wording the line shares (whole hours 1-24 or hh:mm, 01:00-24:00).
        "validity_format": "seconds",
        # What the top-level `cnt` of a send counts (smstele.md:165, undocumented):
        # "messages" taken (2 of 4 in smstele.md:240) or SMS "parts" charged, as smsc.ru's.
        "total_cnt": "messages",
    }

    def charset_of(self, raw_fields: dict[str, str]) -> str:
        # windows-1251 when the request says nothing (smstele.md:68)
        return CHARSETS.get(raw_fields.get("charset", "windows-1251").lower(), "cp1251")

    def internal_error(self, req: SimRequest) -> SimResponse:
        return self._error("-1", "System error")

    def _error(self, code: str, description: str) -> SimResponse:
        return self.json_reply({"error": code, "description": description})

    def is_status(self, req: SimRequest) -> bool:
        return req.path.strip("/") == "status"

    def route(self, req: SimRequest) -> SimResponse:
        f = req.form
        path = req.path.strip("/")
        if path not in ("sendsms", "status"):
            return SimResponse(404, "Not Found", "text/plain")
        if "login" not in f:
            return self._error("-21", "No login")
        if "psw" not in f:
            return self._error("-22", "No password")  # smstele.md:128-129
        if not self.state.auth_ok(f.get("login"), f.get("psw")):
            return self._error("-23", "Invalid login or password")
        if "charset" in f and f["charset"].lower() not in CHARSETS:
            return self._error("-33", f"Invalid attribute: 'charset={f['charset']}'")
        if path == "status":
            return self._status(f)
        return self._send(f)

    def _send(self, f: dict[str, str]) -> SimResponse:
        # The id is checked before phones: the document's too-long-id request has no
        # phones either and still gets -35 (smstele.md:103-107,133-139).
        if f.get("id") and not self._id_ok(f["id"]):
            return self._error("-35", f"Invalid attribute: 'id={f['id']}'")
        client_id = f.get("id") or self.state.new_id()
        # The document's examples answer -24 and -25 about `phones` (smstele.md:144-157),
        # against its own table (smstele.md:387-388); we answer as the examples do.
        if "phones" not in f:
            return self._error("-24", "Missing attribute: 'phones'")
        if not f["phones"].strip():
            return self._error("-25", "Invalid attribute: 'phones='")
        if "mes" not in f or not f["mes"]:
            return self._error("-27", "Missing attribute: 'mes'")
        sender = f.get("sender", "REX400.RU")
        if not sender_ok(sender):
            return self._error("-32", f"Sender not allowed: '{sender}'")
        if f.get("deferred"):
            try:
                datetime.strptime(f["deferred"], "%Y-%m-%d %H:%M:%S")
            except ValueError:
                return self._error("-29", f"Invalid attribute: 'deferred={f['deferred']}'")
        validity = self._validity_seconds(f["validity"]) if "validity" in f else None
        if "validity" in f and validity is None:
            return self._error("-28", f"Invalid attribute: 'validity={f['validity']}'")
        if self.state.faults.error_code:
            return self._error(self.state.faults.error_code, "Forced error")
        text = f["mes"]
        parts = max(count_parts(text), 1)
        if parts > MAX_PARTS:
            return self._error("-42", "Too many segments")
        phones = [p.strip() for p in re.split(r"[,;]", f["phones"]) if p.strip()]
        good = [p for p in phones if phone_ok(p)]
        # Every listed code refuses the whole request (smstele.md:377): credits that
        # cannot cover all the good phones refuse the call, none of it is sent.
        cost = parts * self.state.account.price * len(good)
        if good and (self.state.faults.no_funds or self.state.account.balance < cost):
            return self._error("-43", "Not enough credits")
        entries: list[dict[str, Any]] = []
        counted = 0
        for phone in phones:
            if phone not in good or self.state.charge(text) is None:
                # A bad phone in a list: "-99" like the rest, no operator, not counted
                # in the top-level cnt (smstele.md:225-288).
                entries.append(self._entry(client_id, phone, str(parts), ("", "", "")))
                continue
            msg = self.state.accept(phone, text, sender, client_id=client_id, lifetime=validity)
            counted += 1 if self.state.quirk("total_cnt") == "messages" else msg.segments
            entries.append(self._entry(client_id, phone, str(msg.segments), operator_of(phone)))
        return self.json_reply({"id": client_id, "cnt": str(counted), "messages": entries})

    @staticmethod
    def _id_ok(client_id: str) -> bool:
        return len(client_id) <= MAX_ID and bool(_ID.fullmatch(client_id))

    def _validity_seconds(self, value: str) -> int | None:
        """The validity a request asks for, in seconds, or None when this server's
        reading (quirk validity_format) refuses it."""
        if self.state.quirk("validity_format") == "hh:mm":
            match = _HHMM.fullmatch(value)
            if match:
                minutes = int(match[1]) * 60 + int(match[2])
            else:
                minutes = int(value) * 60 if value.isdigit() else 0
            return minutes * 60 if 60 <= minutes <= 24 * 60 else None
        return int(value) if value.isdigit() and 1 <= int(value) <= 86400 else None

    @staticmethod
    def _entry(client_id: str, phone: str, cnt: str, op: tuple[str, str, str]) -> dict[str, Any]:
        return {
            "id": client_id,
            "phone": phone,
            "status": "-99",
            "error": "-99",
            "cnt": cnt,
            "operator": op[0],
            "region": op[1],
            "mnc": op[2],
        }

    def _status(self, f: dict[str, str]) -> SimResponse:
        client_id, phone = f.get("id", ""), f.get("phone", "")
        if not client_id and not phone:
            return self._error("-34", "Missing attribute: 'id'")
        if client_id and not self._id_ok(client_id):
            return self._error("-35", f"Invalid attribute: 'id={client_id}'")
        if client_id:
            found = self.state.find_client(client_id)
        else:
            self.state.advance()
            with self.state.lock:
                found = [m for m in self.state.messages.values() if m.phone == phone]
        if phone:
            found = [m for m in found if m.phone == phone]
        results = []
        for m in found:
            op = operator_of(m.phone)
            results.append(
                {
                    "id": m.client_id,
                    "phone": m.phone,
                    "sender": m.sender,
                    # "-99" beside the real state in `stat`, as the document shows it.
                    "status": "-99",
                    "err": "-99",
                    "stat": _STAT[m.stage],
                    "type": "1",
                    "send_timestamp": "",
                    "last_timestamp": "",
                    "operator": op[0],
                    "region": op[1],
                    "mnc": op[2],
                }
            )
        return self.json_reply({"results": results})
