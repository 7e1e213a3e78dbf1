"""1000sms.ru (shared/providers/1000sms.md).

One endpoint; ``method=`` selects the call. Replies are XML unless ``format=json``
(1000sms.md:21), and every reply carries ``msg{err_code,text,type}`` and ``data``
(1000sms.md:25-33). We send POST form fields so the password is not in a URL.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    one_of,
    parse_amount,
    read_json,
    read_xml,
)
from dispatcher.status import Status

R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT


class Sms1000(Provider):
    KIND = "sms1000"
    TITLE = "1000sms.ru"
    DOC = "1000sms.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {"format": (str, one_of("json", "xml"))}

    # get_msg_report `state` (1000sms.md:161).
    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "0": Status.SENT,  # "Отправлено"
        "1": Status.DELIVERED,
        "2": Status.UNDELIVERED,
        "4": Status.ACCEPTED,  # queued for the SMSC
        "8": Status.SENT,  # delivered to the SMSC
        "16": Status.FAILED,  # the SMSC did not take it
    }
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "1": ErrorRule(J, "invalid SMS id", "1000sms.md:39", "message"),
        "2": ErrorRule(F, "wrong login or password", "1000sms.md:41"),
        "7": ErrorRule(J, "required parameters missing", "1000sms.md:43", "message"),
        "99": ErrorRule(R, "the send transaction did not go through", "1000sms.md:45"),
        "501": ErrorRule(R, "transaction number list not found, try later", "1000sms.md:47"),
        # 602 is listed twice (1000sms.md:49 and :51): "user does not exist" and "SMS
        # does not exist". On a send or profile call only the first reading fits; a
        # status call reads it as the second (see parse_status).
        "602": ErrorRule(F, "user does not exist / SMS does not exist", "1000sms.md:49,51"),
        "603": ErrorRule(F, "invalid user or SMS status information", "1000sms.md:53"),
        "604": ErrorRule(F, "invalid user id", "1000sms.md:55"),
        "605": ErrorRule(F, "user blocked", "1000sms.md:57"),
        "607": ErrorRule(F, "sender name not allowed", "1000sms.md:59"),
        "608": ErrorRule(F, "sender name length not allowed", "1000sms.md:61"),
        "609": ErrorRule(F, "mobile operator not connected", "1000sms.md:63"),
        "610": ErrorRule(F, "no tariff connected", "1000sms.md:65"),
        "611": ErrorRule(F, "SMS price set incorrectly", "1000sms.md:67"),
        "612": ErrorRule(F, "invalid tariff group id", "1000sms.md:69"),
        "614": ErrorRule(F, "tariff group does not exist", "1000sms.md:71"),
        "615": ErrorRule(F, "invalid tariff group information", "1000sms.md:73"),
        "616": ErrorRule(F, "SMS source not set", "1000sms.md:75"),
        "617": ErrorRule(J, "invalid recipient number format", "1000sms.md:77", "message"),
        "618": ErrorRule(J, "number is blacklisted", "1000sms.md:79", "message"),
        "619": ErrorRule(J, "number is not a valid SMS-centre number", "1000sms.md:81", "message"),
        "620": ErrorRule(F, "sender name must be Latin", "1000sms.md:83"),
        "621": ErrorRule(F, "sender name: over 2 digits or under 4 characters", "1000sms.md:85"),
        "622": ErrorRule(J, "number is in the global blacklist", "1000sms.md:87", "message"),
        "623": ErrorRule(F, "not enough funds", "1000sms.md:89"),
        "624": ErrorRule(J, "forbidden words in the text", "1000sms.md:91", "message"),
        "699": ErrorRule(R, "could not connect", "1000sms.md:93"),
    }

    @property
    def fmt(self) -> str:
        return str(self.config.option("format", "json"))

    def _form(self, method: str, **fields: str) -> WireRequest:
        data = {"method": method, "email": self.config.login, "password": self.config.password, **fields}
        if self.fmt == "json":
            data["format"] = "json"  # absent means XML (1000sms.md:21)
        return WireRequest("POST", "", data=data)

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        msg = batch[0]
        fields = {"text": msg.text, "phone": msg.to}
        sender = msg.sender or self.config.sender
        if sender:
            fields["sender_name"] = sender
        return self._form("push_msg", **fields)

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        return self._form("get_msg_report", id=refs[0].provider_message_id or "")

    def build_balance(self) -> WireRequest:
        return self._form("get_profile")

    def _read(self, reply: WireReply) -> tuple[str, str, dict[str, Any]]:
        """(err_code, text, data) from either format."""
        if self.fmt == "xml":
            root = read_xml(self, reply)
            msg = root.find("msg")
            if msg is None:
                self.malformed(reply, "no <msg>")
            data_node = root.find("data")
            fields = {} if data_node is None else {c.tag: (c.text or "").strip() for c in data_node}
            return (msg.findtext("err_code") or "").strip(), msg.findtext("text") or "", fields
        doc = read_json(self, reply)
        if not isinstance(doc, dict) or not isinstance(doc.get("msg"), dict):
            self.malformed(reply, "no msg object")
        data = doc.get("data")
        return (
            str(doc["msg"].get("err_code", "")).strip(),
            str(doc["msg"].get("text", "")),
            (data if isinstance(data, dict) else {}),
        )

    def _checked(self, reply: WireReply) -> dict[str, Any]:
        code, text, data = self._read(reply)
        if code == "":
            self.malformed(reply, "no err_code")
        if code != "0":
            raise self.error(code, reply, detail=text)
        return data

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        data = self._checked(reply)
        pid = str(data.get("id") or "")
        if not pid:
            self.malformed(reply, "no message id in data")
        parts = data.get("n_raw_sms")
        return [
            SendOutcome(
                batch[0].id,
                pid,
                Status.ACCEPTED,
                "0",
                segments=int(str(parts)) if str(parts or "").isdigit() else None,
                cost=parse_amount(data.get("credits")),
            )
        ]

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        code, text, data = self._read(reply)
        pid = refs[0].provider_message_id
        if code in ("1", "602"):
            # An id they do not know: "SMS does not exist", the second reading of 602.
            return [StatusReport(pid, Status.UNKNOWN, f"err:{code}", detail=text)]
        if code != "0":
            raise self.error(code, reply, detail=text)
        raw = str(data.get("state", ""))
        # data.id is the *user's* id, not the message's (1000sms.md:139): keep ours.
        return [
            StatusReport(
                pid, self.map_status(raw), raw, phone=data.get("phone"), detail=data.get("state_text", "")
            )
        ]

    def parse_balance(self, reply: WireReply) -> Balance:
        data = self._checked(reply)
        amount = parse_amount(data.get("credits"))
        if amount is None:
            self.malformed(reply, "no credits in profile")
        currency = data.get("currency") or data.get("credits_name") or None
        return Balance(amount, currency, {"credits_used": data.get("credits_used")})
