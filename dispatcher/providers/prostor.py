"""prostor-sms.ru, JSON API v2 (shared/providers/prostor.md).

POST JSON with the credentials in the body. ``send.json`` and ``status.json`` take
up to 200 messages (prostor.md:17,96); ``statusQueue.json`` drains up to 1000 queued
status changes of a named queue (prostor.md:158-179). Each message carries our id
as ``clientId`` (required, A-Z 0-9, at most 72: prostor.md:58).

Replies are read item by item: a send or status reply item is matched to our
message by ``clientId`` (or, for a status, ``smscId``), so one item the server left
its id off puts only that message in doubt, never the rest of the batch.

Status words: the document shows only ``accepted``, ``sender address invalid``,
``delivered`` and ``smsc reject`` and refers to its REST interface for the rest
(prostor.md:91,156). The other words below are that interface's vocabulary as the
public clients spell it: Kholenkov/php-prostor-sms-sdk src/ValueObject/MessageStatus.php,
IuriiAksenov/ProstorSmsSdk src/ProstorSmsSdk/Enums/MessageSendStatusType.cs and
MessageDeliveredStatusType.cs, Enzogord/SmsBlissApi SmsBlissAPI/Model/MessageStatus.cs
(smsbliss.net runs the same API). Any word we do not know maps to ``unknown`` with
the raw word kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Sequence
from datetime import UTC
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
    parse_amount,
    parse_count,
    read_json,
)
from dispatcher.status import Status

R, F, J = Action.RETRY, Action.FAILOVER, Action.REJECT
TOO_MANY = "too many messages"
# Where a code is not on its line: the status words of the REST interface the
# document refers to (prostor.md:91), or a description of a top-level status "error"
# (prostor.md:88) that no public client shows, ours.
_REST = "prostor.md:91 (REST vocabulary)"
_OURS = "prostor.md:88 (our word)"


def _queue_name(value: Any) -> str | None:
    # prostor.md:56: 3 to 16 characters, letters and digits.
    return None if re.fullmatch(r"[A-Za-z0-9]{3,16}", value) else "3 to 16 letters and digits"


def client_id(our_id: str) -> str:
    """Our message id as a prostor clientId: A-Z 0-9, at most 72 (prostor.md:58)."""
    return re.sub(r"[^A-Z0-9]", "", our_id.upper())[:72]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


class Prostor(Provider):
    HAS_STATUS_QUEUE = True
    KIND = "prostor"
    TITLE = "prostor-sms.ru"
    DOC = "prostor.md"
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "status_queue": (str, _queue_name),
        "batch_size": (int, int_range(1, 200)),
    }
    MAX_BATCH = 200
    MAX_STATUS_BATCH = 200
    # Over the per-request limit (prostor.md:17,96) the whole request is refused:
    # the base class halves the batch and sends it again.
    TOO_MANY_CODE = TOO_MANY
    MAX_QUEUE_DRAIN = 1000
    # send.json takes no lifetime: its parameters (prostor.md:52-62) are login,
    # password, scheduleTime, statusQueueName, showBillingDetails and per message
    # clientId, phone, text, sender, and no public client sends anything more.
    VALIDITY = False

    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "accepted": Status.ACCEPTED,
        "queued": Status.ACCEPTED,
        "smsc submit": Status.SENT,
        "delivered": Status.DELIVERED,
        "delivery error": Status.UNDELIVERED,
        "smsc reject": Status.REJECTED,
        "expired": Status.EXPIRED,
        "incorrect id": Status.UNKNOWN,
    }
    # Per-message refusals of send.json (status in messages, prostor.md:91) and
    # request-level `description`s of a top-level status "error" (prostor.md:88).
    # Only "sender address invalid" is in the document; the per-message words are
    # the REST vocabulary of the clients named above, the request-level ones ours.
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        # The sender name is registered per account (prostor.md:251-307).
        "sender address invalid": ErrorRule(F, "sender address invalid", "prostor.md:77", "account"),
        "invalid mobile phone": ErrorRule(J, "invalid mobile phone", _REST, "message"),
        "text is empty": ErrorRule(J, "text is empty", _REST, "message"),
        # We send no wap-push url: the server misread something we built.
        "wapurl invalid": ErrorRule(F, "wap-push url invalid", _REST, "request"),
        # We build scheduleTime (prostor.md:55), the message is not at fault.
        "invalid schedule time format": ErrorRule(F, "invalid schedule time format", _REST, "request"),
        # The queue name is our configuration (prostor.md:56).
        "invalid status queue name": ErrorRule(F, "invalid status queue name", _REST, "request"),
        "not enough balance": ErrorRule(F, "not enough balance", _REST, "account"),
        # The plain-text REST interface's word for it in public PHP and C# clients;
        # the JSON clients say "not enough balance".
        "not enough credits": ErrorRule(F, "not enough credits", _REST, "account"),
        # "При успешной авторизации" (prostor.md:64); the word is the REST interface's
        # (common-repository/prostorsms-integration-gateway extensions/prostorsms_gateway.php).
        "error authorization": ErrorRule(
            F, "authorization failed", "prostor.md:64 (REST vocabulary)", "account"
        ),
        "account blocked": ErrorRule(F, "account blocked", _OURS, "account"),
        # Over the per-request limit (prostor.md:17): our request's fault, and the whole
        # request is refused, so send() halves the batch and sends it again.
        TOO_MANY: ErrorRule(
            F, "more messages in one request than the server takes", "prostor.md:17 (our word)", "request"
        ),
        "internal error": ErrorRule(R, "internal error", _OURS),
        "service unavailable": ErrorRule(R, "service temporarily unavailable", _OURS),
    }

    @classmethod
    def sender_refusal(cls, sender: str | None) -> tuple[str, str] | None:
        # `sender` is optional (prostor.md:62) and registered per account
        # (prostor.md:251-307), with no form given, so the rule shared by the five
        # applies; a name breaking it would fetch "sender address invalid" (prostor.md:77).
        problem = common_sender_problem(sender) if sender else None
        return (
            ("sender address invalid", f"sender {sender!r}: {problem} (prostor.md:62)") if problem else None
        )

    def group_key(self, msg: OutgoingSms) -> Hashable:
        # scheduleTime belongs to the request, not to a message (prostor.md:25).
        return msg.at

    @property
    def status_queue(self) -> str | None:
        value = self.config.option("status_queue")
        return str(value) if value else None

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {"login": self.config.login, "password": self.config.password, **fields}

    # -- send -------------------------------------------------------------------------

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        messages = []
        for msg in batch:
            item = {
                # The parameter table asks for "+71234567890" (prostor.md:60), its own
                # example sends "71234567890" (prostor.md:28): we follow the table.
                "phone": "+" + msg.to,
                "clientId": client_id(msg.id),
                "text": msg.text,
            }
            sender = msg.sender or self.config.sender
            if sender:
                item["sender"] = sender
            messages.append(item)
        body = self._body(messages=messages, showBillingDetails=True)
        if batch[0].at is not None:
            body["scheduleTime"] = batch[0].at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.status_queue:
            body["statusQueueName"] = self.status_queue
        return WireRequest("POST", "send.json", json=body)

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        """One outcome per message the reply names by its clientId. A message the
        reply does not name is left out: it may or may not have gone out, and the
        pipeline reads it so. Items naming none of our messages are ignored."""
        doc = self._doc(reply)
        items = doc.get("messages")
        if not isinstance(items, list):
            self.malformed(reply, "no messages list")
        results: dict[str, dict[str, Any]] = {}
        for item in items:
            # Matched as we send it, should the server echo it in another case.
            cid = client_id(str(item.get("clientId") or "")) if isinstance(item, dict) else ""
            if cid:
                results.setdefault(cid, item)
        outcomes = []
        for msg in batch:
            item = results.get(client_id(msg.id))
            if item is None:
                continue
            word = str(item.get("status", "")).strip().lower()
            smsc_id = _text(item.get("smscId"))
            if word not in ("accepted", "queued"):
                outcomes.append(
                    SendOutcome(msg.id, smsc_id, Status.UNKNOWN, word, error=self.error(word, reply))
                )
                continue
            # smsCount and msgCost (prostor.md:92-93) are per message in IuriiAksenov/
            # ProstorSmsSdk's SendMessageResponse.cs and in the reply quoted by
            # vheathen/ex_messenger test/support/tesla_mock_json.ex; Kholenkov/
            # php-prostor-sms-sdk's SendResponse.php reads them at the top level, which
            # can only be one message's when the batch is one message.
            billing = item if "smsCount" in item or "msgCost" in item or len(batch) > 1 else doc
            outcomes.append(
                SendOutcome(
                    msg.id,
                    smsc_id,
                    self.map_status(word),
                    word,
                    segments=parse_count(billing.get("smsCount")),
                    cost=parse_amount(billing.get("msgCost")),
                )
            )
        return outcomes

    # -- status -----------------------------------------------------------------------

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        messages = []
        for ref in refs:
            item = {"smscId": ref.provider_message_id or ""}
            item["clientId"] = client_id(ref.id)
            messages.append(item)
        return WireRequest("POST", "status.json", json=self._body(messages=messages))

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        """Each item on its own: found by smscId, or by clientId among ``refs``
        (clientId is optional, prostor.md:155). An item with neither id we can use is
        skipped, and the others stand."""
        by_pid = {r.provider_message_id: r for r in refs if r.provider_message_id}
        by_client = {client_id(r.id): r for r in refs}
        reports = []
        for item in self._items(self._doc(reply)):
            pid, cid = _text(item.get("smscId")), client_id(str(item.get("clientId") or ""))
            ref = (by_pid.get(pid) if pid else None) or (by_client.get(cid) if cid else None)
            pid = pid or (ref.provider_message_id if ref else None)
            if pid is None:
                continue
            reports.append(self._report(item, pid, ref.id if ref else None))
        return reports

    def drain_status_queue(self, limit: int = MAX_QUEUE_DRAIN) -> list[StatusReport]:
        """Take up to ``limit`` (max 1000) status changes off our status queue."""
        if not self.status_queue:
            raise NotImplementedError(f"{self.name}: no status_queue configured")
        limit = max(1, min(limit, self.MAX_QUEUE_DRAIN))
        body = self._body(statusQueueName=self.status_queue, statusQueueLimit=str(limit))
        reply = self.call(WireRequest("POST", "statusQueue.json", json=body), sending=False)
        return self._reports(self._doc(reply))

    def _reports(self, doc: dict[str, Any]) -> list[StatusReport]:
        # Queue items carry smscId only (prostor.md:187-195): one without it is skipped.
        return [
            self._report(item, pid, None)
            for item in self._items(doc)
            if (pid := _text(item.get("smscId"))) is not None
        ]

    @staticmethod
    def _items(doc: dict[str, Any]) -> list[dict[str, Any]]:
        items = doc.get("messages")
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def _report(self, item: dict[str, Any], pid: str, our_id: str | None) -> StatusReport:
        word = str(item.get("status", "")).strip().lower()
        return StatusReport(pid, self.map_status(word), word, id=our_id)

    # -- balance and the rest ---------------------------------------------------------

    def build_balance(self) -> WireRequest:
        return WireRequest("POST", "balance.json", json=self._body())

    def parse_balance(self, reply: WireReply) -> Balance:
        doc = self._doc(reply)
        entries = [b for b in doc.get("balance") or [] if isinstance(b, dict)]
        if not entries:
            self.malformed(reply, "no balance entries")

        # Two kinds of balance, RUB and SMS, each with a credit: what may be spent
        # beyond the balance (prostor.md:245,249). The document's example account has
        # nothing in roubles and 1,000,000 SMS of credit on a balance of -508,784
        # (prostor.md:228-239): it can send, in SMS. So the balance reported is the
        # money one while it can pay, else the first that can (the SMS count).
        def spendable(b: dict[str, Any]) -> float:
            return (parse_amount(b.get("balance")) or 0.0) + (parse_amount(b.get("credit")) or 0.0)

        money = [b for b in entries if str(b.get("type")).upper() == "RUB"]
        entry = next((b for b in money + entries if spendable(b) > 0), (money or entries)[0])
        details = {
            str(b.get("type")): {
                "balance": parse_amount(b.get("balance")),
                "credit": parse_amount(b.get("credit")),
            }
            for b in entries
        }
        return Balance(
            parse_amount(entry.get("balance")),
            str(entry.get("type") or "") or None,
            details,
            credit=parse_amount(entry.get("credit")),
        )

    def senders(self) -> list[dict[str, str]]:
        """The sender names of the account with their state (prostor.md:251-307)."""
        reply = self.call(WireRequest("POST", "senders.json", json=self._body()), sending=False)
        doc = self._doc(reply)
        return [
            {
                "name": str(s.get("name", "")),
                "status": str(s.get("status", "")),
                "info": str(s.get("info", "")),
            }
            for s in doc.get("senders") or []
            if isinstance(s, dict)
        ]

    def version(self) -> int:
        """The active API version (prostor.md:309-339)."""
        # The heading's URL ends in "version.json/" (prostor.md:314); the simulator
        # and, by their other methods, the server take it without the slash too.
        reply = self.call(WireRequest("POST", "version.json", json=self._body()), sending=False)
        doc = self._doc(reply)
        try:
            return int(doc.get("version"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.malformed(reply, "no version number")

    # -- reading replies --------------------------------------------------------------

    def _check_http(self, reply: WireReply, *, sending: bool) -> None:
        # A refusal's {"status": "error", "description": ...} may come with HTTP 400
        # (Kholenkov/php-prostor-sms-sdk reads the body whatever the HTTP status,
        # tests/Dto/Messages/SendResponseTest.php pairs "error" with 400): read its
        # description rather than a bare "HTTP 400".
        if 400 <= reply.http_status < 500 and reply.http_status != 429 and _is_refusal(reply.body):
            return
        super()._check_http(reply, sending=sending)

    def _doc(self, reply: WireReply) -> dict[str, Any]:
        doc = read_json(self, reply)
        if not isinstance(doc, dict):
            self.malformed(reply, "expected a JSON object")
        if str(doc.get("status", "")).lower() == "error":
            description = str(doc.get("description") or doc.get("message") or "").strip()
            raise self.error(description.lower() or "error", reply, detail=description)
        return doc


def _is_refusal(body: str) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and str(doc.get("status", "")).lower() == "error"
