"""SMStele.ru, the rex400 platform (shared/providers/smstele.md).

``cgibin/sendsms`` and ``cgibin/status`` take GET or POST form fields and answer
JSON. The document prints its host and path several ways (rexsmst.rax400.ru,
rexsmsc.rex400.ru, cgibin, cgi-bin), so the base URL is configuration only.
Several phones may share one call for the same text, under one client ``id``; the
status call finds messages by that id, which is what lets us reconcile a send whose
outcome a crash lost.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from datetime import timedelta, timezone
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
    int_range,
    one_of,
    read_json,
)
from dispatcher.status import Status

MOSCOW = timezone(timedelta(hours=3))
R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT

# Per-message codes that mean "no error": the document's successful sends all show
# "-99" (smstele.md:214-215) and the error table lists 0 as NOERROR (smstele.md:380).
_NO_ERROR = {"", "0", "-99"}


def _flag(value: Any) -> str | None:
    return None if value is None else ("1" if value else "0")


class SmsTele(Provider):
    KIND = "smstele"
    TITLE = "SMStele.ru (rex400)"
    DOC = "smstele.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "charset": (str, one_of("utf-8", "windows-1251", "koi8-r")),
        "translit": (bool, None),
        "flash": (bool, None),
        "validity": (str, None),
        "batch_size": (int, int_range(1, 100)),
    }
    # Phones per call is not documented; 100 keeps a request line reasonable.
    MAX_BATCH = 100
    HAS_BALANCE = False
    STATUS_BY_CLIENT_ID = True

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
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "-1": ErrorRule(R, "system error", "smstele.md:381"),
        "-2": ErrorRule(R, "out of memory", "smstele.md:382"),
        "-6": ErrorRule(F, "not yet implemented", "smstele.md:383"),
        "-21": ErrorRule(F, "missing login", "smstele.md:384"),
        "-22": ErrorRule(F, "missing password", "smstele.md:385"),
        "-23": ErrorRule(F, "invalid login or password", "smstele.md:386"),
        # The table says IP_NOT_ALLOWED (smstele.md:387), the example answers -24 to a
        # request without `phones` (smstele.md:151-157). We always send phones, so
        # the table's reading is the one we act on; parse_send tells them apart.
        "-24": ErrorRule(F, "IP address not allowed", "smstele.md:387"),
        # Table: MISSING_DESTINATION_ADDRESS; example: "Invalid attribute: 'phones='"
        # (smstele.md:144-148). Both readings concern the recipient.
        "-25": ErrorRule(J, "missing or empty destination address", "smstele.md:388", "message"),
        "-26": ErrorRule(J, "invalid destination address", "smstele.md:389", "message"),
        "-27": ErrorRule(J, "missing text", "smstele.md:390", "message"),
        "-28": ErrorRule(J, "invalid validity", "smstele.md:391", "message"),
        "-29": ErrorRule(J, "invalid deferred time", "smstele.md:392", "message"),
        "-30": ErrorRule(J, "invalid priority", "smstele.md:393", "message"),
        "-31": ErrorRule(F, "invalid sender", "smstele.md:394"),
        "-32": ErrorRule(F, "sender not allowed", "smstele.md:395"),
        "-33": ErrorRule(F, "invalid charset", "smstele.md:396"),
        "-34": ErrorRule(J, "missing message id", "smstele.md:397", "message"),
        "-35": ErrorRule(J, "invalid message id", "smstele.md:398", "message"),
        "-41": ErrorRule(J, "text too long", "smstele.md:399", "message"),
        "-42": ErrorRule(J, "too many segments", "smstele.md:400", "message"),
        "-43": ErrorRule(F, "not enough credits", "smstele.md:401"),
    }

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
            # Our id for a single message; a shared call uses the first one's id and
            # each message is then found by id and phone.
            "id": first.id,
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
        if self.config.option("validity"):
            fields["validity"] = str(self.config.option("validity"))
        return self._body("sendsms", fields)

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        ref = refs[0]
        fields = {"id": ref.provider_message_id or ref.id}
        if ref.to:
            fields["phone"] = ref.to
        return self._body("status", fields)

    def _error_of(self, doc: Any, reply: WireReply) -> None:
        if isinstance(doc, dict) and "error" in doc and "messages" not in doc and "results" not in doc:
            code = str(doc.get("error", "")).strip()
            description = str(doc.get("description", ""))
            if code == "-24" and "phones" in description:
                # The example's reading of -24 (smstele.md:151-157): a recipient problem.
                raise self.error(code, reply, detail=description, action=Action.REJECT)
            raise self.error(code, reply, detail=description)

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        doc = read_json(self, reply)
        self._error_of(doc, reply)
        if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list):
            self.malformed(reply, "no messages list")
        call_id = str(doc.get("id") or batch[0].id)
        items = [m for m in doc["messages"] if isinstance(m, dict) and m]
        by_phone = {str(m.get("phone", "")): m for m in items}
        accepted = str(doc.get("cnt", "")).strip()
        # Example 2 (smstele.md:225-288): four phones, "2 of them bad", top `cnt` 2,
        # and every entry still "-99"; the bad ones are those the operator lookup left
        # empty. So when `cnt` says fewer were taken, an entry with no operator was not.
        short = accepted.isdigit() and int(accepted) < len(items)
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
            elif short and not item.get("operator"):
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
                parts = str(item.get("cnt", ""))
                outcomes.append(
                    SendOutcome(
                        msg.id,
                        call_id,
                        Status.ACCEPTED,
                        status,
                        segments=int(parts) if parts.isdigit() else None,
                    )
                )
        return outcomes

    def _reports(self, doc: Any, reply: WireReply) -> list[StatusReport]:
        self._error_of(doc, reply)
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            self.malformed(reply, "no results list")
        reports = []
        for item in doc["results"]:
            if not isinstance(item, dict) or not item:
                continue  # the document's example ends with an empty object
            stat = str(item.get("stat", "")).strip().upper()
            reports.append(
                StatusReport(
                    str(item.get("id") or "") or None,
                    self.map_status(stat),
                    f"{stat}|status={item.get('status', '')}|err={item.get('err', '')}",
                    id=str(item.get("id") or "") or None,
                    phone=str(item.get("phone") or "") or None,
                )
            )
        return reports

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        reports = self._reports(read_json(self, reply), reply)
        ref = refs[0]
        if ref.to:
            reports = [r for r in reports if r.phone in (None, ref.to)]
        return reports

    def status_by_client_id(self, ref: MessageRef) -> list[StatusReport]:
        lookup = MessageRef(ref.id, ref.provider_message_id or ref.id, ref.to)
        return self.parse_status(self.call(self.build_status([lookup]), sending=False), [lookup])
