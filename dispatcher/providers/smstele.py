"""SMStele.ru, the rex400 platform (shared/providers/smstele.md).

``cgibin/sendsms`` and ``cgibin/status`` take GET or POST form fields and answer
JSON. The document prints its host and path several ways (rexsmst.rax400.ru,
rexsmsc.rex400.ru, cgibin, cgi-bin), so the base URL is configuration only.
Several phones may share one call for the same text, under one client ``id``; the
status call finds messages by that id, which is what lets us reconcile a send whose
outcome a crash lost. The server takes an ``id`` of 25 characters and refuses a longer
one, so our 32-hex-digit ids go out re-encoded by ``wire_id``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar
from urllib.parse import urlencode

from dispatcher.errors import Action
from dispatcher.providers.base import (
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
    int_range,
    one_of,
    parse_count,
    read_json,
)
from dispatcher.status import Status

MOSCOW = timezone(timedelta(hours=3))
R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT

# Per-message codes that mean "no error": the document's successful sends all show
# "-99" (smstele.md:214-215) and the error table lists 0 as NOERROR (smstele.md:380).
_NO_ERROR = {"", "0", "-99"}

# The longest `id` the document shows taken: 25 characters, sent (smstele.md:231) and
# asked for (smstele.md:338); 71 characters are refused with -35 (smstele.md:106,136-139).
MAX_ID = 25
# Every id the document shows is lowercase letters, digits and hyphens.
_ID_CHARS = re.compile(r"[0-9a-z-]+")
_OUR_ID = re.compile(r"[0-9a-fA-F]{32}")
_WIRE_ID = re.compile(r"[0-9a-z]{25}")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def wire_id(our_id: str) -> str:
    """The `id` we send for one of our message ids, at most 25 characters.

    Our ids are 128 bits written as 32 hex digits (uuid4().hex): seven too many. In
    base 36 (digits and lowercase letters, as the document's ids are) 128 bits take 25
    digits exactly (36**25 > 2**128); zero-padded, every wire id is 25 long and
    ``from_wire_id`` turns it back. An id that is not ours and already fits goes
    unchanged (it is shorter than 25, so it cannot pass for an encoded one); any other
    gets a stable digest.
    """
    if _OUR_ID.fullmatch(our_id):
        n = int(our_id, 16)
        digits = []
        for _ in range(MAX_ID):
            n, digit = divmod(n, 36)
            digits.append(_BASE36[digit])
        return "".join(reversed(digits))
    if len(our_id) < MAX_ID and _ID_CHARS.fullmatch(our_id):
        return our_id
    return wire_id(hashlib.sha256(our_id.encode("utf-8")).hexdigest()[:32])


def from_wire_id(wire: str) -> str:
    """Our id back from a wire id (the inverse of ``wire_id`` on our ids); any other
    value comes back unchanged."""
    if _WIRE_ID.fullmatch(wire):
        n = int(wire, 36)
        if n < 1 << 128:
            return f"{n:032x}"
    return wire


# `validity` is named without a format or range (smstele.md:70). Its neighbour
# viber_validity is seconds, at most 86400 (smstele.md:64); the line's wording is
# smsc.ru's for its `valid`, which is hours (1 to 24, or "hh:mm"). Both readings stop
# at 24 hours. The option validity_format picks the reading; a server that reads the other
# way answers -28 (smstele.md:391), which fails over and shows the operator.
MAX_VALIDITY = 24 * 3600
# Never 1 to 24 seconds: a server reading whole hours would take those as hours, not
# refuse them, and keep the message for up to a day.
_SECONDS_FLOOR = 30
_HOUR_FLOOR = 3600  # smsc.ru's `valid` starts at one hour
_HHMM = re.compile(r"(\d{1,2}):([0-5]\d)")


def validity_seconds(value: Any) -> int | None:
    """The config option `validity` in seconds: a number (or digits) is seconds,
    "hh:mm" hours and minutes; None when it is neither or not positive."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    text = str(value).strip()
    if text.isdigit():
        return int(text) or None
    match = _HHMM.fullmatch(text)
    if match:
        return int(match[1]) * 3600 + int(match[2]) * 60 or None
    return None


def _check_validity(value: Any) -> str | None:
    return None if validity_seconds(value) else "seconds (3600) or hh:mm (01:00), more than 0"


def validity_field(seconds: float, fmt: str) -> str:
    """`validity` for what is left of a TTL: rounded down so the provider never keeps a
    message longer than we would, raised to the floor, capped at 24 hours."""
    if fmt == "hh:mm":
        minutes = min(max(int(seconds), _HOUR_FLOOR), MAX_VALIDITY) // 60
        return f"{minutes // 60:02d}:{minutes % 60:02d}"
    return str(min(max(int(seconds), _SECONDS_FLOOR), MAX_VALIDITY))


def _flag(value: Any) -> str | None:
    return None if value is None else ("1" if value else "0")


def _uncounted_refused(total: Any, items: list[dict[str, Any]]) -> bool:
    """True when the top-level `cnt` leaves out the entries without an operator, i.e.
    those phones were refused.

    Example 2 (smstele.md:225-288): four phones, "2 of them bad", top `cnt` 2, every
    entry still "-99"; the bad ones are those the operator lookup left empty. What
    `cnt` counts is not said: messages taken, or SMS parts charged (smsc.ru's `cnt`,
    whose wording the document shares); with one-part texts, as in the examples, the
    two agree. So it is held against both counts of the entries with an operator.
    Should it also match a count of every entry (n phones == parts of the good ones),
    the entries without an operator are taken as refused: an empty lookup is the
    likelier sign of a bad number.
    """
    text = str(total or "").strip()
    with_operator = [item for item in items if item.get("operator")]
    if not text.isdigit() or len(with_operator) == len(items):
        return False
    parts = sum(parse_count(item.get("cnt")) or 1 for item in with_operator)
    return int(text) in (len(with_operator), parts)


class SmsTele(Provider):
    KIND = "smstele"
    TITLE = "SMStele.ru (rex400)"
    DOC = "smstele.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "charset": (str, one_of("utf-8", "windows-1251", "koi8-r")),
        "translit": (bool, None),
        "flash": (bool, None),
        # A cap on every message's validity, seconds or "hh:mm"; the TTL's rest wins if shorter.
        "validity": ((int, str), _check_validity),
        "validity_format": (str, one_of("seconds", "hh:mm")),
        "batch_size": (int, int_range(1, 100)),
    }
    # Phones per call is not documented; 100 keeps a request line reasonable.
    MAX_BATCH = 100
    # The document has sendsms and status only (smstele.md:17-22, :292-298): no balance.
    HAS_BALANCE = False
    STATUS_BY_CLIENT_ID = True
    VALIDITY = True

    # The status call's `status` is "-99" even for delivered messages
    # (smstele.md:350-352): we read the SMPP-style `stat` word instead.
    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "ACCEPTD": Status.ACCEPTED,
        "ENROUTE": Status.SENT,
        "DELIVRD": Status.DELIVERED,
        "UNDELIV": Status.UNDELIVERED,
        "EXPIRED": Status.EXPIRED,
        "REJECTD": Status.REJECTED,
        "DELETED": Status.FAILED,
        "UNKNOWN": Status.UNKNOWN,
    }
    # The table's heading says each code refuses the request (smstele.md:377). Our intake
    # has already refused an empty text and one of more than MAX_PARTS parts, so a
    # refusal of a parameter or of the text's presence or size is about what we built or
    # this provider's own limits: another provider may take the message. Only the
    # destination is the message's own fault.
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "-1": ErrorRule(R, "system error", "smstele.md:381"),
        "-2": ErrorRule(R, "out of memory", "smstele.md:382"),
        # A feature we asked for that this server lacks.
        "-6": ErrorRule(F, "not yet implemented", "smstele.md:383", "request"),
        "-21": ErrorRule(F, "missing login", "smstele.md:384", "account"),
        "-22": ErrorRule(F, "missing password", "smstele.md:385", "account"),
        "-23": ErrorRule(F, "invalid login or password", "smstele.md:386", "account"),
        # The table says IP_NOT_ALLOWED (smstele.md:387), the example answers -24 to a
        # request without `phones` (smstele.md:151-157). We always send phones, so
        # the table's reading is the one we act on; _error_of tells them apart.
        "-24": ErrorRule(F, "IP address not allowed", "smstele.md:387", "account"),
        # Table: MISSING_DESTINATION_ADDRESS; example: "Invalid attribute: 'phones='"
        # (smstele.md:144-148). We always send the message's own number, so the server
        # found nothing it could use in it.
        "-25": ErrorRule(J, "missing or empty destination address", "smstele.md:388", "message"),
        "-26": ErrorRule(J, "invalid destination address", "smstele.md:389", "message"),
        # Intake refuses an empty text: a missing one is our request losing it (a
        # charset the server could not decode, say).
        "-27": ErrorRule(F, "missing text", "smstele.md:390", "request"),
        "-28": ErrorRule(F, "invalid validity", "smstele.md:391", "request"),
        "-29": ErrorRule(F, "invalid deferred time", "smstele.md:392", "request"),
        "-30": ErrorRule(F, "invalid priority", "smstele.md:393", "request"),
        "-31": ErrorRule(F, "invalid sender", "smstele.md:394", "account"),
        "-32": ErrorRule(F, "sender not allowed", "smstele.md:395", "account"),
        "-33": ErrorRule(F, "invalid charset", "smstele.md:396", "request"),
        "-34": ErrorRule(F, "missing message id", "smstele.md:397", "request"),
        "-35": ErrorRule(F, "invalid message id", "smstele.md:398", "request"),
        # Intake holds a text to MAX_PARTS (dispatcher/segments.py): a refusal here is
        # this provider's lower limit, not a bad message.
        "-41": ErrorRule(F, "text too long", "smstele.md:399", "request"),
        "-42": ErrorRule(F, "too many segments", "smstele.md:400", "request"),
        "-43": ErrorRule(F, "not enough credits", "smstele.md:401", "account"),
    }

    @classmethod
    def sender_refusal(cls, sender: str | None) -> tuple[str, str] | None:
        # `sender` is optional and must be registered beforehand (smstele.md:43); the
        # document gives no form of its own, so the rule shared by the five applies. A
        # name breaking it would fetch -31 (smstele.md:394).
        problem = common_sender_problem(sender) if sender else None
        return ("-31", f"sender {sender!r}: {problem} (smstele.md:43)") if problem else None

    def group_key(self, msg: OutgoingSms) -> Hashable:
        # One call carries one text to many phones (smstele.md:35).
        return (msg.text, msg.sender or self.config.sender, msg.at)

    def _body(self, path: str, fields: dict[str, str]) -> WireRequest:
        charset = str(self.config.option("charset", "utf-8"))
        data = {"login": self.config.login, "psw": self.config.password, **fields}
        try:
            body = urlencode(data, encoding=charset)
        except UnicodeEncodeError:
            # Text outside windows-1251 (emoji, other scripts) goes as UTF-8, saying so.
            data["charset"] = "utf-8"
            body = urlencode(data, encoding="utf-8")
        return WireRequest(
            "POST",
            path,
            data=body.encode("ascii"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        first = batch[0]
        fields = {
            "phones": ",".join(m.to for m in batch),
            "mes": first.text,
            # A shared call goes under the first message's id; each message is then
            # found by that id and its phone.
            "id": wire_id(first.id),
            # The server assumes windows-1251 when told nothing (smstele.md:68): always
            # say what we send.
            "charset": str(self.config.option("charset", "utf-8")),
        }
        sender = first.sender or self.config.sender
        if sender:
            fields["sender"] = sender
        if first.at is not None:
            fields["deferred"] = first.at.astimezone(MOSCOW).strftime("%Y-%m-%d %H:%M:%S")
        for key in ("translit", "flash"):
            flag = _flag(self.config.option(key))
            if flag is not None:
                fields[key] = flag
        validity = self._validity(batch)
        if validity is not None:
            fields["validity"] = validity
        return self._body("sendsms", fields)

    def _validity(self, batch: Sequence[OutgoingSms]) -> str | None:
        limits: list[float] = []
        cap = validity_seconds(self.config.option("validity"))
        if cap:
            limits.append(cap)
        ends = [m.expires_at for m in batch if m.expires_at is not None]
        if ends:
            # One call has one validity: the earliest TTL of the batch, so that no
            # message outlives its own.
            limits.append((min(ends) - datetime.now(UTC)).total_seconds())
        if not limits:
            return None
        return validity_field(min(limits), str(self.config.option("validity_format", "seconds")))

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        ref = refs[0]
        fields = {"id": ref.provider_message_id or wire_id(ref.id)}
        if ref.to:
            fields["phone"] = ref.to
        return self._body("status", fields)

    def _error_of(self, doc: Any, reply: WireReply) -> None:
        if isinstance(doc, dict) and "error" in doc and "messages" not in doc and "results" not in doc:
            code = str(doc.get("error", "")).strip()
            description = str(doc.get("description", ""))
            if code == "-24" and "phones" in description:
                # The example's reading of -24 (smstele.md:151-157): we sent the
                # message's number and the server found none in it, as with -25.
                raise self.error(code, reply, detail=description, action=Action.REJECT, about="message")
            raise self.error(code, reply, detail=description)

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        doc = read_json(self, reply)
        self._error_of(doc, reply)
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
            self.malformed(reply, "no messages list")
        # What the server echoes is what a status call must ask for.
        call_id = str(doc.get("id") or wire_id(batch[0].id))
        items = [m for m in doc["messages"] if isinstance(m, dict) and m]
        by_phone = {str(m.get("phone", "")): m for m in items}
        refused = _uncounted_refused(doc.get("cnt"), items)
        outcomes = []
        for msg in batch:
            item = by_phone.get(msg.to)
            if item is None:
                outcomes.append(
                    SendOutcome(
                        msg.id,
                        None,
                        Status.UNKNOWN,
                        "",
                        error=self.error("-26", reply, detail="phone missing in reply"),
                    )
                )
                continue
            code = str(item.get("error", "")).strip()
            status = str(item.get("status", "")).strip()
            if code not in _NO_ERROR:
                outcomes.append(
                    SendOutcome(msg.id, call_id, Status.UNKNOWN, status, error=self.error(code, reply))
                )
            elif refused and not item.get("operator"):
                outcomes.append(
                    SendOutcome(
                        msg.id,
                        call_id,
                        Status.UNKNOWN,
                        status,
                        error=self.error("-26", reply, detail="not counted as sent (no operator)"),
                    )
                )
            else:
                # An entry's `cnt` is its text's parts (smstele.md:175, "1" for a short
                # text even on a bad phone, smstele.md:262). No reply carries a cost.
                parts = parse_count(item.get("cnt"))
                outcomes.append(SendOutcome(msg.id, call_id, Status.ACCEPTED, status, segments=parts))
        return outcomes

    def _reports(self, doc: Any, reply: WireReply, ref: MessageRef) -> list[StatusReport]:
        self._error_of(doc, reply)
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            self.malformed(reply, "no results list")
        reports = []
        for item in doc["results"]:
            if not isinstance(item, dict) or not item:
                continue  # the document's example ends with an empty object
            stat = str(item.get("stat", "")).strip().upper()
            call_id = str(item.get("id") or "") or None
            phone = str(item.get("phone") or "") or None
            if ref.to:
                # One call's id covers all its phones: the phone says which is ours.
                ours = ref.id if phone == ref.to else None
            else:
                # The message the call went out under (the first one of a shared call).
                ours = from_wire_id(call_id) if call_id else None
            reports.append(
                StatusReport(
                    call_id,
                    self.map_status(stat),
                    f"{stat}|status={item.get('status', '')}|err={item.get('err', '')}",
                    id=ours,
                    phone=phone,
                )
            )
        return reports

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        ref = refs[0]
        reports = self._reports(read_json(self, reply), reply, ref)
        if ref.to:
            reports = [r for r in reports if r.phone in (None, ref.to)]
        return reports

    def status_by_client_id(self, ref: MessageRef) -> list[StatusReport]:
        lookup = MessageRef(ref.id, ref.provider_message_id or wire_id(ref.id), ref.to)
        return self.parse_status(self.call(self.build_status([lookup]), sending=False), [lookup])
