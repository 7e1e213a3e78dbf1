"""1000sms.ru (shared/providers/1000sms.md).

One endpoint; ``method=`` selects the call. Replies are XML unless ``format=json``
(1000sms.md:21), and every reply carries ``msg{err_code,text,type}`` and ``data``
(1000sms.md:25-33). We send POST form fields so the password is not in a URL.

The document prints no example reply, so two things are read from public clients
of this API family as well: the JSON object may sit inside a top-level ``response``
(StartupCorp/go1000sms go1000sms.go, adam-lavrik/python-smsprosto
smsprosto/_client.py), and ``err_code`` and the data numbers may be JSON strings
(go1000sms compares ``err_code != "0"``) or numbers (1000sms.md:27 says "числовой").
Both shapes and both types are read; anything else is a reply we cannot read.

The document shows no validity or lifetime for push_msg, and says ``sms_validity``
is not used (1000sms.md:159), so ``VALIDITY`` stays False.
"""

from __future__ import annotations

import re
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
    common_sender_problem,
    one_of,
    parse_amount,
    parse_count,
    read_json,
    read_xml,
)
from dispatcher.status import Status

R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT

# 1000sms.md:83 asks for Latin; the example sender "sms-tester" (1000sms.md:100) has a
# hyphen, and the dot is in the rule all five share (common_sender_problem). No space:
# the document shows none. ASCII only, as [0-9] is (\d would take other digits).
_LATIN_SENDER = re.compile(r"[A-Za-z0-9.-]+")
# 1000sms.md:61 names a length limit without its number: an alphanumeric sender is at
# most 11 characters in GSM 03.40, as public clients of this API say too
# (alienff/sms24x7 SMS24x7Impl.java: "Less or equal to 11 latin symbols").
SENDER_MAX = 11
SENDER_MIN = 4  # 1000sms.md:85
SENDER_MAX_DIGITS = 2  # 1000sms.md:85


class Sms1000(Provider):
    KIND = "sms1000"
    TITLE = "1000sms.ru"
    DOC = "1000sms.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {"format": (str, one_of("json", "xml"))}

    # get_msg_report `state` (1000sms.md:161). The values are Kannel's delivery-report
    # bits (1 phone, 2 not to phone, 4 queued on SMSC, 8 to SMSC, 16 not to SMSC): 4 is
    # the operator's SMS centre holding the message on its way (SMPP ENROUTE), so the
    # operator has it.
    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "0": Status.SENT,  # "Отправлено"
        "1": Status.DELIVERED,
        "2": Status.UNDELIVERED,
        "4": Status.SENT,  # "В очереди на SMSC": in the operator's SMSC queue
        "8": Status.SENT,  # delivered to the SMSC
        "16": Status.FAILED,  # the SMSC did not take it
    }
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        # An id is only sent to get_msg_report, where parse_status reads 1 as an
        # unknown message; anywhere else it is a request we built wrong.
        "1": ErrorRule(F, "invalid SMS id", "1000sms.md:39", "request"),
        "2": ErrorRule(F, "wrong login or password", "1000sms.md:41", "account"),
        "7": ErrorRule(F, "required parameters missing", "1000sms.md:43", "request"),
        "99": ErrorRule(R, "the send transaction did not go through", "1000sms.md:45", "provider"),
        "501": ErrorRule(R, "transaction number list not found, try later", "1000sms.md:47", "provider"),
        # 602 is listed twice: "user does not exist" here and "SMS does not exist" at
        # 1000sms.md:51. On a send or profile call only this reading fits; a status
        # call reads it as the second (see parse_status).
        "602": ErrorRule(F, "user does not exist", "1000sms.md:49", "account"),
        "603": ErrorRule(F, "invalid user or SMS status information", "1000sms.md:53", "account"),
        "604": ErrorRule(F, "invalid user id", "1000sms.md:55", "account"),
        "605": ErrorRule(F, "user blocked", "1000sms.md:57", "account"),
        "607": ErrorRule(F, "sender name not allowed", "1000sms.md:59", "account"),
        "608": ErrorRule(F, "sender name length not allowed", "1000sms.md:61", "account"),
        # The operator is not connected *for our account*: another provider may reach it.
        "609": ErrorRule(F, "mobile operator not connected", "1000sms.md:63", "account"),
        "610": ErrorRule(F, "no tariff connected", "1000sms.md:65", "account"),
        "611": ErrorRule(F, "SMS price set incorrectly", "1000sms.md:67", "account"),
        "612": ErrorRule(F, "invalid tariff group id", "1000sms.md:69", "account"),
        "614": ErrorRule(F, "tariff group does not exist", "1000sms.md:71", "account"),
        "615": ErrorRule(F, "invalid tariff group information", "1000sms.md:73", "account"),
        "616": ErrorRule(F, "SMS source not set", "1000sms.md:75", "request"),
        "617": ErrorRule(J, "invalid recipient number format", "1000sms.md:77", "message"),
        # "618 - Номер Абонента в Черном списке." (1000sms.md:79). The document does not
        # say whose list; beside the global one of 622 it is read as our account's: the
        # subscriber wants no more of what we send. That stops advertising and bulk
        # (38-FZ), scope normal; a one-time code the subscriber asks for is still sent.
        "618": ErrorRule(J, "number is blacklisted", "1000sms.md:79", "message", stop="normal"),
        # The number in question is an SMS centre's, the provider's route, not the
        # recipient's: another provider may deliver the message.
        "619": ErrorRule(F, "not a valid SMS-centre number", "1000sms.md:81", "provider"),
        "620": ErrorRule(F, "sender name must be Latin", "1000sms.md:83", "account"),
        "621": ErrorRule(F, "sender name: over 2 digits or under 4 characters", "1000sms.md:85", "account"),
        # "622 - Номер Абонента в глобальном Черном списке." (1000sms.md:87): the list the
        # provider holds for every client, so no sender and no kind of SMS reaches the
        # number: scope all, one-time codes too.
        "622": ErrorRule(J, "number is in the global blacklist", "1000sms.md:87", "message", stop="all"),
        "623": ErrorRule(F, "not enough funds", "1000sms.md:89", "account"),
        "624": ErrorRule(J, "forbidden words in the text", "1000sms.md:91", "message"),
        "699": ErrorRule(R, "could not connect", "1000sms.md:93", "provider"),
    }

    # -- the sender rules (1000sms.md:83, :61, :85) -------------------------------------

    @classmethod
    def sender_refusal(cls, sender: str | None) -> tuple[str, str] | None:
        """The error code and reason a sender name would be refused with, or None.
        An empty sender is fine: the account's default is used (1000sms.md:197)."""
        if not sender:
            return None
        if not _LATIN_SENDER.fullmatch(sender):
            # The shared rule names the offending character (an invisible one too).
            problem = common_sender_problem(sender) or "only Latin letters, digits, . and -"
            return "620", f"sender {sender!r}: {problem} (1000sms.md:83)"
        if len(sender) > SENDER_MAX:
            return "608", f"sender {sender!r}: longer than {SENDER_MAX} characters (1000sms.md:61)"
        if sum(ch in "0123456789" for ch in sender) > SENDER_MAX_DIGITS:
            return "621", f"sender {sender!r}: more than {SENDER_MAX_DIGITS} digits (1000sms.md:85)"
        if len(sender) < SENDER_MIN:
            return "621", f"sender {sender!r}: shorter than {SENDER_MIN} characters (1000sms.md:85)"
        return None

    # -- requests ---------------------------------------------------------------------

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

    # -- replies ----------------------------------------------------------------------

    def _code(self, reply: WireReply, value: Any) -> str:
        """err_code as a string of digits, whether it came as a number or a string."""
        if isinstance(value, bool) or value is None:
            self.malformed(reply, "no err_code")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        text = str(value).strip()
        if not re.fullmatch(r"-?\d+", text):
            # Not a number at all: we cannot tell what the provider did with a send.
            self.malformed(reply, f"err_code {text!r} is not a number")
        return str(int(text))

    def _read(self, reply: WireReply) -> tuple[str, str, dict[str, Any]]:
        """(err_code, text, data) from either format and either JSON shape."""
        if self.fmt == "xml":
            # The public clients all ask for JSON, so XML keeps the one reading: msg
            # and data under the root element, whatever its name.
            root = read_xml(self, reply)
            msg = root.find("msg")
            if msg is None:
                self.malformed(reply, "no <msg>")
            data_node = root.find("data")
            fields = {} if data_node is None else {c.tag: (c.text or "").strip() for c in data_node}
            return self._code(reply, msg.findtext("err_code")), msg.findtext("text") or "", fields
        doc = read_json(self, reply)
        # The document's bare {"msg", "data"} (1000sms.md:23-33), or wrapped in
        # "response" as the public clients read it (go1000sms.go, smsprosto/_client.py).
        if isinstance(doc, dict) and "msg" not in doc and isinstance(doc.get("response"), dict):
            doc = doc["response"]
        if not isinstance(doc, dict) or not isinstance(doc.get("msg"), dict):
            self.malformed(reply, "no msg object, bare or inside response")
        data = doc.get("data")  # a PHP server prints an empty one as [] or null
        return (
            self._code(reply, doc["msg"].get("err_code")),
            str(doc["msg"].get("text", "")),
            (data if isinstance(data, dict) else {}),
        )

    def _checked(self, reply: WireReply) -> dict[str, Any]:
        code, text, data = self._read(reply)
        if code != "0":
            raise self.error(code, reply, detail=text)
        return data

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        data = self._checked(reply)
        raw_id = data.get("id")
        pid = "" if raw_id is None or isinstance(raw_id, bool) else str(raw_id).strip()
        if not pid:
            self.malformed(reply, "no message id in data")
        parts = parse_count(data.get("n_raw_sms"))
        # `credits` is the price of *one part* (1000sms.md:117); the message costs
        # that times the parts (1000sms.md:119).
        per_part = parse_amount(data.get("credits"))
        cost = round(per_part * parts, 6) if per_part is not None and parts is not None else None
        return [SendOutcome(batch[0].id, pid, Status.ACCEPTED, "0", segments=parts, cost=cost)]

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        code, text, data = self._read(reply)
        pid = refs[0].provider_message_id
        if code in ("1", "602"):
            # An id they do not know: "SMS does not exist", the second reading of 602.
            return [StatusReport(pid, Status.UNKNOWN, f"err:{code}", detail=text)]
        if code != "0":
            raise self.error(code, reply, detail=text)
        state = data.get("state")
        raw = "" if state is None else str(state).strip()
        # data.id is the *user's* id, not the message's (1000sms.md:139): keep ours.
        return [
            StatusReport(
                pid,
                self.map_status(raw),
                raw,
                phone=None if data.get("phone") is None else str(data["phone"]),
                detail=str(data.get("state_text") or ""),
            )
        ]

    def parse_balance(self, reply: WireReply) -> Balance:
        data = self._checked(reply)
        amount = parse_amount(data.get("credits"))
        if amount is None:
            self.malformed(reply, "no credits in profile")
        currency = data.get("currency") or data.get("credits_name") or None
        return Balance(amount, currency, {"credits_used": data.get("credits_used")})
