"""Simulated sms-ka.net (shared/providers/sms-ka.md): form fields, pipe-delimited text."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from dispatcher.simulator.base import SimProvider, SimRequest, SimResponse
from dispatcher.simulator.common import phone_ok, sender_ok

ERRORS = {
    "-1": (
        "Authentication failed. Your API Key, Password combination is not valid"
        " or your account has been locked."
    ),
    "-3": "Sent Error",
    "-4": "Argument validation failed. One or more of your POST-Vars is invalid or missing.",
    "-5": "Insufficient Credits. You do not have sufficient credits to send the message.",
    "-6": "Invalid MSISDN. The mobile number is not valid or can not be reached via the API",
    "-7": "Your SenderID is not valid.",
}
# sms-ka.md:113-123. No "undelivered" is documented: REJECTD is the nearest.
_STATUS = {"accepted": "3|ACCEPTD", "sent": "3|ACCEPTD", "delivered": "4|DELIVRD", "undelivered": "5|REJECTD"}


def _text(body: str) -> SimResponse:
    return SimResponse(200, body, "text/plain; charset=utf-8")


class SmsKaSim(SimProvider):
    KIND = "smska"
    # The parameter list asks for MSISDN "in the format 79XXXXXXXXXX" (sms-ka.md:31),
    # the send section only for "the phone number" (sms-ka.md:47): a server taking
    # the first reading answers -6 to any other number, valid elsewhere or not.
    QUIRKS: ClassVar[dict[str, Any]] = {"msisdn_79_only": False}

    def is_traffic(self, req: SimRequest) -> bool:
        return req.form.get("Action", "") != "balance"

    def is_status(self, req: SimRequest) -> bool:
        return req.form.get("Action", "") == "query"

    def internal_error(self, req: SimRequest) -> SimResponse:
        return self._error("-3")

    def _error(self, code: str) -> SimResponse:
        return _text(f"{code}|{ERRORS.get(code, 'Error')}")

    def route(self, req: SimRequest) -> SimResponse:
        f = req.form
        if not self.state.auth_ok(f.get("APIKey"), f.get("APIPassword")):
            return self._error("-1")
        action = f.get("Action", "")
        if action == "balance":
            return _text(f"0|Balance status|{int(self.state.account.balance)}")
        if action == "query":
            msg = self.state.get(f.get("BatchId", ""))
            if msg is None:
                return self._error("-4")
            return _text(f"0|Status|{_STATUS[msg.stage]}")
        if action:
            return self._error("-4")
        if self.state.faults.error_code:
            return self._error(self.state.faults.error_code)
        text, phone, sender = f.get("Message", ""), f.get("MSISDN", ""), f.get("SenderID", "")
        if not text or not phone or not sender:
            return self._error("-4")
        russian_only = self.state.quirk("msisdn_79_only")
        if not phone_ok(phone) or (russian_only and not re.fullmatch(r"79[0-9]{9}", phone)):
            return self._error("-6")
        if not sender_ok(sender):
            return self._error("-7")
        if self.state.charge(text) is None:
            return self._error("-5")
        msg = self.state.accept(phone, text, sender, style="alnum")
        return _text(f"0|Message sent|{msg.pid}|Balance status|{int(self.state.account.balance)}")
