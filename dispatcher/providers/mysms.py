"""my-sms.ru (shared/providers/my-sms.md).

Every call exists as GET with query parameters and as POST with a JSON or XML body,
each answering JSON or XML; POST takes a batch (``data`` array). We default to POST
JSON, which keeps the password out of URLs; ``http_method`` and ``format`` select the
other three forms. Replies carry two layers of status: the request's ``state``
(my-sms.md:580-584) and each message's ``state`` (my-sms.md:589-598).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import timedelta, timezone
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


class MySms(Provider):
    KIND = "mysms"
    TITLE = "my-sms.ru"
    DOC = "my-sms.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "format": (str, one_of("json", "xml")),
        "http_method": (str, one_of("post", "get")),
        "batch_size": (int, int_range(1, 500)),
    }
    # The batch size of a POST is not documented; 100 keeps a request small.
    MAX_BATCH = 100
    MAX_STATUS_BATCH = 100

    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "2": Status.ACCEPTED,  # waits to be handed to the operator
        "3": Status.SENT,
        "4": Status.DELIVERED,
        "-10": Status.UNKNOWN,  # the id is not theirs
        "-11": Status.REJECTED,
        "-12": Status.REJECTED,
        "-13": Status.FAILED,
        # "error while sending" is the only failure the document lists for a message
        # already taken; as a delivery status it means it did not reach the phone.
        "-14": Status.UNDELIVERED,
        "-15": Status.REJECTED,
        "-16": Status.REJECTED,
    }
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "-1": ErrorRule(F, "authorization failed", "my-sms.md:581"),
        "-50": ErrorRule(R, "internal server error", "my-sms.md:582"),
        "-51": ErrorRule(R, "internal server error", "my-sms.md:583"),
        "-52": ErrorRule(R, "internal server error", "my-sms.md:584"),
        "-10": ErrorRule(J, "invalid message id", "my-sms.md:592", "message"),
        "-11": ErrorRule(F, "invalid or unregistered sender name", "my-sms.md:593"),
        "-12": ErrorRule(J, "invalid recipient number", "my-sms.md:594", "message"),
        "-13": ErrorRule(F, "not enough funds", "my-sms.md:595"),
        "-14": ErrorRule(R, "error while sending the message", "my-sms.md:596"),
        "-15": ErrorRule(J, "invalid send date format", "my-sms.md:597", "message"),
        "-16": ErrorRule(J, "invalid TTL", "my-sms.md:598", "message"),
    }

    @property
    def fmt(self) -> str:
        return str(self.config.option("format", "json"))

    @property
    def use_get(self) -> bool:
        return bool(self.config.option("http_method", "post") == "get")

    @property
    def batch_size(self) -> int:
        # A GET carries one message (my-sms.md:34); only POST takes a `data` array.
        return 1 if self.use_get else super().batch_size

    @property
    def status_batch(self) -> int:
        return 1 if self.use_get else self.MAX_STATUS_BATCH

    # -- requests ----------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"username": self.config.login, "password": self.config.password}

    def _message(self, msg: OutgoingSms) -> dict[str, str]:
        item = {"source": msg.sender or self.config.sender or "", "destination": msg.to, "text": msg.text}
        if msg.at is not None:
            item["date"] = msg.at.astimezone(MOSCOW).strftime("%d.%m.%Y %H:%M:%S")
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
            if "date" in item:
                params["date"] = item["date"]
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
        return [StatusReport(pid or None, self.map_status(mstate), mstate) for pid, mstate in pairs]

    def parse_balance(self, reply: WireReply) -> Balance:
        state, _, balance = self._read(reply)
        self._check_state(state, reply)
        amount = parse_amount(balance)
        if amount is None:
            self.malformed(reply, f"unreadable balance {balance!r}")
        # The document names no currency for the credit.
        return Balance(amount, None, {"raw": balance})
