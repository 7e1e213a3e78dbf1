"""my-sms.ru (shared/providers/my-sms.md).

Every call exists as GET with query parameters and as POST with a JSON or XML body,
each answering JSON or XML; POST takes a batch (``data`` array). We default to POST
JSON, which keeps the password out of URLs; ``http_method`` and ``format`` select the
other three forms. Replies carry two layers of status: the request's ``state``
(my-sms.md:580-584) and each message's ``state`` (my-sms.md:589-598).

Every send form takes an optional ``ttl``, "the lifetime of the message"
(my-sms.md:53,104,166,233), rejected as -16 when invalid (my-sms.md:598); the
document gives no unit and no range, and no public client of this API shows one.
We pass what is left of our TTL in whole minutes by default: should the provider
count seconds, the message lives shorter than our TTL, never longer (option
``ttl_unit`` = "seconds" once the provider confirms that reading). No reply carries
a price or a number of parts: the send reply is only ids and states (my-sms.md:68-74).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
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
    int_range,
    one_of,
    parse_amount,
    read_json,
    read_xml,
)
from dispatcher.status import Status

# The document gives "dd.MM.yyyy HH:mm:ss" (my-sms.md:51) with no zone; a Russian
# provider's wall clock is Moscow time, which has no DST.
MOSCOW = timezone(timedelta(hours=3))

R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT

TTL_UNITS = {"minutes": 60, "seconds": 1}


class MySms(Provider):
    KIND = "mysms"
    TITLE = "my-sms.ru"
    DOC = "my-sms.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "format": (str, one_of("json", "xml")),
        "http_method": (str, one_of("post", "get")),
        "batch_size": (int, int_range(1, 500)),
        "ttl_unit": (str, one_of(*TTL_UNITS)),
    }
    # The batch size of a POST is not documented; 100 keeps a request small.
    MAX_BATCH = 100
    MAX_STATUS_BATCH = 100
    VALIDITY = True

    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "2": Status.ACCEPTED,  # waits to be handed to the operator
        "3": Status.SENT,
        "4": Status.DELIVERED,
        "-10": Status.UNKNOWN,  # the id is not theirs
        # Refused for our sender, funds, date or TTL: failed, not the message's fault.
        "-11": Status.FAILED,
        "-12": Status.REJECTED,
        "-13": Status.FAILED,
        # "Error while sending the message" (my-sms.md:596) sits in the one table of
        # message states beside 2 "waits to be sent to the operator" and 3 "sent to
        # the operator": the hand-over failed, which neither says the phone was not
        # reached nor that the provider gave up (on a send the same code is worth a
        # retry). Not final: read as final, a later 4 would be thrown away; read as
        # not final, a message that never moves on ends at our status horizon.
        "-14": Status.UNKNOWN,
        "-15": Status.FAILED,
        "-16": Status.FAILED,
    }
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "-1": ErrorRule(F, "authorization failed", "my-sms.md:581", "account"),
        "-50": ErrorRule(R, "internal server error", "my-sms.md:582", "provider"),
        "-51": ErrorRule(R, "internal server error", "my-sms.md:583", "provider"),
        "-52": ErrorRule(R, "internal server error", "my-sms.md:584", "provider"),
        # A send carries no id of ours or theirs: on a send -10 means our request was
        # read wrong (a status call reads it as STATUS_MAP's unknown).
        "-10": ErrorRule(F, "invalid message id", "my-sms.md:592", "request"),
        "-11": ErrorRule(F, "invalid or unregistered sender name", "my-sms.md:593", "account"),
        "-12": ErrorRule(J, "invalid recipient number", "my-sms.md:594", "message"),
        "-13": ErrorRule(F, "not enough funds", "my-sms.md:595", "account"),
        # On a send the message was not taken (no id, my-sms.md:72): worth a retry.
        "-14": ErrorRule(R, "error while sending the message", "my-sms.md:596", "provider"),
        # We build the date (my-sms.md:51) and the TTL (my-sms.md:53) ourselves.
        "-15": ErrorRule(F, "invalid send date format", "my-sms.md:597", "request"),
        "-16": ErrorRule(F, "invalid TTL", "my-sms.md:598", "request"),
    }

    @property
    def fmt(self) -> str:
        return str(self.config.option("format", "json"))

    @property
    def use_get(self) -> bool:
        return bool(self.config.option("http_method", "post") == "get")

    @property
    def ttl_unit(self) -> str:
        return str(self.config.option("ttl_unit", "minutes"))

    @property
    def batch_size(self) -> int:
        # A GET carries one message (my-sms.md:34); only POST takes a `data` array.
        return 1 if self.use_get else super().batch_size

    @property
    def status_batch(self) -> int:
        return 1 if self.use_get else self.MAX_STATUS_BATCH

    @classmethod
    def sender_refusal(cls, sender: str | None) -> tuple[str, str] | None:
        # `source` is among the parameters, not the optional ones (my-sms.md:43,49); a
        # sender it refuses fetches -11 (my-sms.md:593).
        if sender is None or not sender.strip():
            return "-11", "a sender name (source) is needed on every send (my-sms.md:43): set sender"
        # The rule intake holds every sender to is my-sms.ru's own (my-sms.md:43); a
        # message built past intake is checked here all the same.
        problem = common_sender_problem(sender)
        return ("-11", f"sender {sender!r}: {problem} (my-sms.md:43)") if problem else None

    # -- requests ----------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"username": self.config.login, "password": self.config.password}

    def ttl(self, msg: OutgoingSms, now: datetime | None = None) -> str | None:
        """What is left of the message's TTL in ``ttl_unit``, rounded down so that the
        provider never holds it past our TTL; None without a TTL."""
        if msg.expires_at is None:
            return None
        now = now or datetime.now(UTC)
        # The document does not say whether the lifetime runs from the request or
        # from the scheduled date (my-sms.md:51-53): from the later of the two, it
        # ends within our TTL either way.
        start = max(now, msg.at) if msg.at is not None else now
        left = (msg.expires_at - start).total_seconds() // TTL_UNITS[self.ttl_unit]
        # Less than one unit left: one unit, the least we can ask for.
        return str(max(int(left), 1))

    def _message(self, msg: OutgoingSms) -> dict[str, str]:
        item = {"source": msg.sender or self.config.sender or "", "destination": msg.to, "text": msg.text}
        if msg.at is not None:
            item["date"] = msg.at.astimezone(MOSCOW).strftime("%d.%m.%Y %H:%M:%S")
        ttl = self.ttl(msg)
        if ttl is not None:
            item["ttl"] = ttl  # a string, as the JSON example quotes it (my-sms.md:146)
        return item

    def _xml(self, root: str, items: list[dict[str, str]] | None) -> bytes:
        top = ET.Element(root)
        auth = ET.SubElement(top, "auth")
        for key, value in self._auth().items():
            ET.SubElement(auth, key).text = value
        if items is not None:
            data = ET.SubElement(top, "data")
            for item in items:
                node = ET.SubElement(data, "message")
                for key, value in item.items():
                    ET.SubElement(node, key).text = value
        body: bytes = ET.tostring(top, encoding="utf-8", xml_declaration=True)
        return body

    def _post(self, method: str, root: str, items: list[dict[str, str]] | None) -> WireRequest:
        path = f"{method}/{self.fmt}"
        if self.fmt == "xml":
            return WireRequest(
                "POST",
                path,
                data=self._xml(root, items),
                headers={"Content-Type": "application/xml; charset=utf-8"},
            )
        body: dict[str, Any] = {"auth": self._auth()}
        if items is not None:
            body["data"] = items
        return WireRequest("POST", path, json=body)

    def _get(self, method: str, params: dict[str, str]) -> WireRequest:
        return WireRequest(
            "GET",
            f"{method}/{self.fmt}",
            params={"u": self.config.login, "p": self.config.password, **params},
        )

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        if self.use_get:
            item = self._message(batch[0])
            params = {"s": item["source"], "d": item["destination"], "t": item["text"]}
            for key in ("date", "ttl"):
                if key in item:
                    params[key] = item[key]
            return self._get("send", params)
        return self._post("send", "sendSMS", [self._message(m) for m in batch])

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        if self.use_get:
            # The GET status form lists `s` (my-sms.md:271) although it needs none.
            return self._get(
                "status", {"s": self.config.sender or "", "id": refs[0].provider_message_id or ""}
            )
        return self._post("status", "checkSMS", [{"id": r.provider_message_id or ""} for r in refs])

    def build_balance(self) -> WireRequest:
        if self.use_get:
            return self._get("credit", {})
        return self._post("credit", "getBalance", None)

    # -- replies -----------------------------------------------------------------------

    def _read(self, reply: WireReply) -> tuple[str, list[tuple[str, str]], Any]:
        """(request state, [(id, state)...], balance) from either format."""
        if self.fmt == "xml":
            root = read_xml(self, reply)
            state = (root.findtext("state") or "").strip()
            pairs = [
                ((m.findtext("id") or "").strip(), (m.findtext("state") or "").strip())
                for m in root.iter("message")
            ]
            return state, pairs, root.findtext("balance")
        doc = read_json(self, reply)
        if not isinstance(doc, dict):
            self.malformed(reply, "expected a JSON object")
        pairs = [
            (str(m.get("id", "")), str(m.get("state", "")))
            for m in doc.get("data") or []
            if isinstance(m, dict)
        ]
        return str(doc.get("state", "")).strip(), pairs, doc.get("balance")

    def _check_state(self, state: str, reply: WireReply) -> None:
        if state == "":
            self.malformed(reply, "no request state")
        if state != "0":
            raise self.error(state, reply)

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        state, pairs, _ = self._read(reply)
        self._check_state(state, reply)
        # The reply does not echo the destination: results come in request order.
        if len(pairs) != len(batch):
            self.malformed(reply, f"{len(pairs)} results for {len(batch)} messages")
        outcomes = []
        for msg, (pid, mstate) in zip(batch, pairs, strict=True):
            if mstate.startswith("-"):
                outcomes.append(
                    SendOutcome(msg.id, pid or None, Status.UNKNOWN, mstate, error=self.error(mstate, reply))
                )
            else:
                outcomes.append(SendOutcome(msg.id, pid, self.map_status(mstate), mstate))
        return outcomes

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        state, pairs, _ = self._read(reply)
        self._check_state(state, reply)
        return [
            StatusReport(
                pid or None,
                self.map_status(mstate),
                mstate,
                detail=self.ERRORS[mstate].meaning if mstate in self.ERRORS else "",
            )
            for pid, mstate in pairs
        ]

    def parse_balance(self, reply: WireReply) -> Balance:
        state, _, balance = self._read(reply)
        self._check_state(state, reply)
        amount = parse_amount(balance)
        if amount is None:
            self.malformed(reply, f"unreadable balance {balance!r}")
        # The document names no currency for the credit.
        return Balance(amount, None, {"raw": balance})
