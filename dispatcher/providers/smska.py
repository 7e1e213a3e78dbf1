"""sms-ka.net (shared/providers/sms-ka.md).

One endpoint (``base_url`` is the whole of it); form fields, ``Action`` selects the
call (none means send). Replies are pipe-delimited text: ``code|kind|fields...``;
a negative code is an error (sms-ka.md:127-149).

The document marks no send parameter optional (sms-ka.md:39-49), its example always
carries a SenderID (sms-ka.md:55), and it documents no validity/lifetime parameter
(``VALIDITY`` stays False) and no cost or parts in any reply: the send reply's tail
is the account's remaining balance (sms-ka.md:59,63), not the price of the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from dispatcher.errors import Action
from dispatcher.providers.base import (
    Balance,
    ErrorRule,
    MessageRef,
    OutgoingSms,
    Provider,
    SendOutcome,
    StatusReport,
    WireReply,
    WireRequest,
    common_sender_problem,
    parse_amount,
)
from dispatcher.status import Status

R, F = Action.RETRY, Action.FAILOVER


class SmsKa(Provider):
    KIND = "smska"
    TITLE = "sms-ka.net"
    DOC = "sms-ka.md"
    BASE_URL_IS_DIRECTORY = False

    # sms-ka.md:113-123
    STATUS_MAP: ClassVar[dict[str, Status]] = {
        "3": Status.SENT,  # ACCEPTD, "Отправлено"
        "4": Status.DELIVERED,
        "5": Status.REJECTED,
        "6": Status.REJECTED,
        "7": Status.EXPIRED,
        "8": Status.FAILED,  # DELETED
    }
    # No code here is about the message alone, so none rejects it (see -6).
    ERRORS: ClassVar[dict[str, ErrorRule]] = {
        "-1": ErrorRule(F, "authentication failed or account locked", "sms-ka.md:127", "account"),
        # A public client of the same error set prints -3 as "System Failure ...
        # internal system failure or outage": the provider's own trouble.
        "-3": ErrorRule(R, "send error", "sms-ka.md:131", "provider"),
        # "One or more of your POST-Vars is invalid or missing": the fields are ours
        # (a missing SenderID fails every message alike), never the message's fault.
        "-4": ErrorRule(F, "argument validation failed", "sms-ka.md:135", "request"),
        "-5": ErrorRule(F, "insufficient credits", "sms-ka.md:139", "account"),
        # "not valid OR can not be reached via the API", in Russian "wrong format of
        # the recipient number": the format it takes is 79XXXXXXXXXX (sms-ka.md:31),
        # narrower than ours, so a number another provider reaches gets -6 here too.
        # Failing over costs one call for a truly bad number (the next provider
        # rejects it); rejecting would lose a good one.
        "-6": ErrorRule(F, "invalid MSISDN or not reachable via this API", "sms-ka.md:143", "request"),
        "-7": ErrorRule(F, "sender id not valid", "sms-ka.md:147", "account"),
    }

    @classmethod
    def sender_refusal(cls, sender: str | None) -> tuple[str, str] | None:
        if sender is None or not sender.strip():
            # Listed among the send parameters with none marked optional (sms-ka.md:49);
            # without it every send answers -4 (sms-ka.md:135).
            return "-4", "a SenderID is needed on every send (sms-ka.md:49): set sender"
        # The document gives no form for it (sms-ka.md:49), so the rule shared by the
        # five applies; a name breaking it would fetch -7 (sms-ka.md:147).
        problem = common_sender_problem(sender)
        return ("-7", f"sender {sender!r}: {problem} (sms-ka.md:49)") if problem else None

    def _sender(self, msg: OutgoingSms) -> str | None:
        return msg.sender or self.config.sender

    def _form(self, **fields: str) -> WireRequest:
        return WireRequest(
            "POST", "", data={"APIKey": self.config.login, "APIPassword": self.config.password, **fields}
        )

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        msg = batch[0]
        return self._form(SenderID=self._sender(msg) or "", MSISDN=msg.to, Message=msg.text)

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        return self._form(Action="query", BatchId=refs[0].provider_message_id or "")

    def build_balance(self) -> WireRequest:
        return self._form(Action="balance")

    def _fields(self, reply: WireReply) -> list[str]:
        text = reply.body.strip()
        # The balance example is printed `\_0|Balance status|7464` (sms-ka.md:81), a
        # stray escape of the document; accept a reply that starts so, too.
        text = text.removeprefix("\\").removeprefix("_")
        fields = [f.strip() for f in text.split("|")]
        code = fields[0]
        if not code.lstrip("-").isdigit():
            self.malformed(reply, "no numeric status code")
        if code.startswith("-"):
            raise self.error(code, reply, detail=fields[1] if len(fields) > 1 else "")
        return fields

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        # 0|Message sent|<id>|Balance status|<balance> (sms-ka.md:59,63): the tail is
        # what is left on the account, which says nothing about this message's price.
        fields = self._fields(reply)
        if len(fields) < 3 or not fields[2]:
            self.malformed(reply, "no message id")
        return [SendOutcome(batch[0].id, fields[2], Status.ACCEPTED, fields[0])]

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        # 0|Status|4|DELIVRD (sms-ka.md:105,109)
        fields = self._fields(reply)
        if len(fields) < 3:
            self.malformed(reply, "no status code")
        raw = "|".join(fields[2:4])
        return [StatusReport(refs[0].provider_message_id, self.map_status(fields[2]), raw)]

    def parse_balance(self, reply: WireReply) -> Balance:
        # 0|Balance status|7464 (sms-ka.md:81,85). The document names no currency.
        fields = self._fields(reply)
        amount = parse_amount(fields[2]) if len(fields) > 2 else None
        if amount is None:
            self.malformed(reply, "no balance")
        return Balance(amount, None)
