"""The provider base class: it owns the transport, each adapter builds and parses.

An adapter subclasses ``Provider`` and fills in the template steps
``build_send``/``parse_send``, ``build_status``/``parse_status`` and
``build_balance``/``parse_balance``, plus two tables: ``STATUS_MAP`` (the provider's
delivery codes onto our vocabulary) and ``ERRORS`` (every documented error code onto
one ``Action``). The base does chunking, the HTTP call, timeouts, connection reuse,
HTTP-level errors and redaction, so that no adapter touches ``requests`` itself.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import requests
from requests.adapters import HTTPAdapter

from dispatcher import __version__, metrics
from dispatcher.errors import (
    ERROR_CLASS,
    Action,
    FailoverError,
    ProviderError,
    RetryableError,
)
from dispatcher.redact import redact
from dispatcher.status import Status

if TYPE_CHECKING:  # the config validates each kind's options through the adapters: no import back
    from dispatcher.config import ProviderConfig

log = logging.getLogger("smsdispatch.providers")

USER_AGENT = f"smsdispatch/{__version__} (+python-requests)"

# A config option of an adapter: the TOML types it takes and a check that returns a
# problem (a string) or None.
OptionSpec = tuple[type | tuple[type, ...], Callable[[Any], str | None] | None]


def one_of(*values: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in values else f"one of {', '.join(values)}"

    return check


def int_range(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"from {low} to {high}"

    return check


# Whose fault a documented error code is: it decides the action and who must act.
#   message  - the message itself (invalid or blacklisted number, forbidden text):
#              no provider will take it, so it is rejected;
#   request  - our request is wrong (a parameter we built, a limit we overstepped):
#              the message may be fine, so it fails over, and an operator must look;
#   account  - our account here (credentials, funds, sender, tariff, block): fails
#              over, and an operator must look;
#   provider - the provider's own trouble: retried or failed over by its nature.
ABOUT = ("message", "request", "account", "provider")
NEEDS_OPERATOR = ("request", "account")
# The scopes a provider's code may put the recipient on the stop list with, as
# dispatcher.stoplist.SCOPES (not imported: the adapters stay free of the database
# layer). normal: advertising and bulk; all: one-time codes too.
STOP_SCOPES = ("normal", "all")


@dataclass(frozen=True)
class ErrorRule:
    """How one documented error code is read: what to do, what it means, where it is,
    and whose fault it is (one of ``ABOUT``)."""

    action: Action
    meaning: str
    doc: str  # "file.md:line" of the provider document
    about: str = "provider"
    # The code says the recipient is blacklisted, unsubscribed or opted out: the
    # send path lists the number (dispatcher.stoplist) with this scope, one of
    # STOP_SCOPES; None: it says nothing about the recipient's wishes.
    stop: str | None = None

    def __post_init__(self) -> None:
        if self.about not in ABOUT:
            raise ValueError(f"about must be one of {ABOUT}, not {self.about!r}")
        if self.stop is not None and (self.stop not in STOP_SCOPES or self.about != "message"):
            # Only a refusal of this recipient can say the recipient opted out.
            raise ValueError(f"{self.meaning!r}: stop={self.stop!r} needs about=message and one of"
                             f" {STOP_SCOPES}")  # fmt: skip
        if (self.about == "message") != (self.action == Action.REJECT):
            # Only a fault of the message itself may reject it; anything about us or
            # the provider must leave the message to another provider.
            raise ValueError(f"{self.meaning!r}: about={self.about} does not go with {self.action}")


@dataclass(frozen=True)
class OutgoingSms:
    """One message as an adapter sees it. ``id`` is ours and doubles as client id."""

    id: str
    to: str  # digits with the country code, e.g. 79161234567
    text: str
    sender: str | None = None
    at: datetime | None = None  # provider-side scheduling, aware datetime
    # Our TTL as an absolute time (aware): adapters whose provider takes a validity or
    # lifetime (``VALIDITY``) pass what is left of it, so the provider does not
    # deliver the message after we would have given up on it.
    expires_at: datetime | None = None


@dataclass(frozen=True)
class MessageRef:
    """A message already handed to this provider, for a status call."""

    id: str
    provider_message_id: str | None
    to: str | None = None


@dataclass
class SendOutcome:
    """The provider's answer for one message of a send call."""

    id: str
    provider_message_id: str | None
    status: Status  # our reading; ACCEPTED unless the provider said more
    raw_status: str
    error: ProviderError | None = None  # a per-message refusal, the rest of the batch stands
    segments: int | None = None
    cost: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class StatusReport:
    """One delivery status as the provider reported it."""

    provider_message_id: str | None
    status: Status
    raw_status: str
    id: str | None = None  # our id where the provider echoes it
    phone: str | None = None
    detail: str = ""


@dataclass
class Balance:
    amount: float | None
    currency: str | None
    details: dict[str, Any] = field(default_factory=dict)
    # Credit the provider extends beyond the balance (prostor.md's example account
    # has balance 0 and credit 1,000,000, and can send).
    credit: float | None = None

    @property
    def spendable(self) -> float | None:
        """What can actually be spent: the balance plus any credit."""
        if self.amount is None:
            return None
        return self.amount + (self.credit or 0.0)


@dataclass
class WireRequest:
    method: str
    path: str  # appended to base_url ("" for a whole-endpoint base)
    params: Mapping[str, str] | None = None
    data: Mapping[str, str] | bytes | None = None
    json: Any = None
    headers: Mapping[str, str] | None = None


@dataclass
class WireReply:
    http_status: int
    body: str
    content_type: str
    elapsed: float


# The sender rules of the five documents, the strictest taken: my-sms.ru allows "at most
# 11 Latin or 15 digit characters" (my-sms.md:43) and 1000sms.ru Latin (1000sms.md:83).
# Of punctuation only the hyphen and the dot appear, in the documents' own examples
# ("sms-tester", 1000sms.md:100; "REX400.RU", smstele.md:349); none shows a space.
SENDER_ALPHANUMERIC_MAX = 11
SENDER_NUMERIC_MAX = 15
SENDER_PUNCTUATION = ".-"
# ASCII only: str.isalnum() and str.isdigit() also take Cyrillic, "²" and other digits.
_SENDER_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SENDER_DIGITS = frozenset("0123456789")


def describe_char(ch: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: a character named so that an invisible one shows."""
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed')}"


def common_sender_problem(sender: str) -> str | None:
    """Why ``sender`` breaks the strictest documented sender rule of the five: 1 to 11
    Latin letters, digits, "." and "-" with at least one letter, or 1 to 15 digits
    (my-sms.md:43, 1000sms.md:83), or None. Intake and the configuration hold every
    sender to it, and an adapter whose document says nothing more checks it too."""
    if not sender:
        return "an empty sender name"
    allowed = _SENDER_LETTERS | _SENDER_DIGITS | frozenset(SENDER_PUNCTUATION)
    for i, ch in enumerate(sender, 1):
        if ch in allowed:
            continue
        where = f"{describe_char(ch)} at character {i}"
        if unicodedata.category(ch) == "Cf":
            why = "an invisible format character"
        elif ch.isspace():
            edge = i == 1 or i == len(sender)
            why = "whitespace around the name" if edge else "a space (no provider's document allows one)"
        else:
            why = "not a Latin letter, a digit, . or -"
        return f"{why}: {where}"
    if all(ch in _SENDER_DIGITS for ch in sender):
        if len(sender) > SENDER_NUMERIC_MAX:
            return f"a numeric sender has at most {SENDER_NUMERIC_MAX} digits, got {len(sender)}"
        return None
    if len(sender) > SENDER_ALPHANUMERIC_MAX:
        return f"an alphanumeric sender has at most {SENDER_ALPHANUMERIC_MAX} characters, got {len(sender)}"
    if not any(ch in _SENDER_LETTERS for ch in sender):
        return "an alphanumeric sender has a Latin letter (a numeric one has only digits)"
    return None


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + size]


class Provider:
    KIND: ClassVar[str]
    TITLE: ClassVar[str]
    DOC: ClassVar[str]  # the document's file name in shared/providers
    OPTIONS: ClassVar[dict[str, OptionSpec]] = {}
    # True when base_url is a directory the method name is appended to (all but
    # sms-ka.net, whose base_url is the whole endpoint).
    BASE_URL_IS_DIRECTORY: ClassVar[bool] = True
    MAX_BATCH: ClassVar[int] = 1  # messages per send call
    MAX_STATUS_BATCH: ClassVar[int] = 1  # ids per status call
    HAS_BALANCE: ClassVar[bool] = True
    # True when the provider pushes statuses into a queue we drain (option status_queue),
    # up to MAX_QUEUE_DRAIN changes a call.
    HAS_STATUS_QUEUE: ClassVar[bool] = False
    MAX_QUEUE_DRAIN: ClassVar[int] = 0
    # True when a status call can find a message by the id *we* sent, so a message
    # whose send outcome was lost can be reconciled instead of resent blindly.
    STATUS_BY_CLIENT_ID: ClassVar[bool] = False
    # True when a send takes a validity/lifetime, filled from ``OutgoingSms.expires_at``.
    VALIDITY: ClassVar[bool] = False
    # The error code with which the provider refuses a whole request for carrying more
    # messages than it takes (None: none documented). Nothing was sent then, so ``send``
    # and ``status`` halve the batch and ask again, and this instance's batches stay at
    # the size that went through.
    TOO_MANY_CODE: ClassVar[str | None] = None
    STATUS_MAP: ClassVar[dict[str, Status]] = {}
    ERRORS: ClassVar[dict[str, ErrorRule]] = {}

    def __init__(self, config: ProviderConfig, session: requests.Session | None = None) -> None:
        self.config = config
        self.name = config.name
        self.session = session or self._new_session()
        # The most messages a send call may carry, lowered by a TOO_MANY_CODE refusal.
        self._fits = self.MAX_BATCH

    # -- the public surface ----------------------------------------------------------

    @property
    def batch_size(self) -> int:
        size = self.config.option("batch_size", self.MAX_BATCH)
        return max(1, min(int(size), self.MAX_BATCH, self._fits))

    def send(self, messages: Sequence[OutgoingSms]) -> list[SendOutcome]:
        """Send messages, as many per call as the provider takes.

        When everything went in one call, a request-level failure raises (it concerns
        the whole call); a per-message refusal comes back as a ``SendOutcome`` with
        ``error`` set. When it took several calls and one fails, the calls answered
        before it keep their outcomes (those messages went out: failing them over
        would send them twice), the failed call's messages carry its error, and the
        calls not yet made are not made: their messages come back not sent.
        """
        groups: dict[Hashable, list[OutgoingSms]] = {}
        outcomes: list[SendOutcome] = []
        for msg in messages:
            # A sender the document forbids would only fetch its error code: such a
            # message fails over at once, without a request.
            refusal = self.sender_refusal(msg.sender or self.config.sender)
            if refusal is None:
                groups.setdefault(self.group_key(msg), []).append(msg)
                continue
            code, reason = refusal
            # The configured sender passed this check at start-up, so this is a message's
            # own sender: our request for that message, not the account, and no call was
            # made, so it says nothing about the provider's health.
            error = self.error(code, None, detail=reason, about="request")
            outcomes.append(SendOutcome(msg.id, None, Status.UNKNOWN, code, error=error))
        pending = [list(batch) for group in groups.values() for batch in chunked(group, self.batch_size)]
        calls = 0
        while pending:
            batch = pending.pop(0)
            if len(batch) > self.batch_size:  # a refusal lowered the size meanwhile
                pending[:0] = [list(b) for b in chunked(batch, self.batch_size)]
                continue
            calls += 1
            try:
                reply = self.call(self.build_send(batch), sending=True)
                outcomes.extend(self.parse_send(reply, batch))
            except ProviderError as exc:
                if self._too_many(exc, batch):
                    self._fits = min(self._fits, (len(batch) + 1) // 2)
                    pending.insert(0, batch)
                    continue
                if calls == 1 and not pending and not outcomes:
                    raise  # the whole send was this one call
                outcomes += self.cut_short(exc, batch, [m for later in pending for m in later])
                break
        return outcomes

    def _too_many(self, exc: ProviderError, batch: Sequence[Any]) -> bool:
        return self.TOO_MANY_CODE is not None and exc.code == self.TOO_MANY_CODE and len(batch) > 1

    def cut_short(
        self, exc: ProviderError, failed: Sequence[OutgoingSms], not_made: Sequence[OutgoingSms]
    ) -> list[SendOutcome]:
        """The outcomes of a send that stopped at a failed call: that call's messages
        carry its error (in doubt if it was); the messages of the calls not made come
        back not sent, never in doubt, so they are simply tried again."""
        unsent = RetryableError(
            "not sent: an earlier call of the same send failed", provider=self.name, kind=self.KIND
        )
        return [SendOutcome(m.id, None, Status.UNKNOWN, exc.code or "", error=exc) for m in failed] + [
            SendOutcome(m.id, None, Status.UNKNOWN, "", error=unsent) for m in not_made
        ]

    def group_key(self, msg: OutgoingSms) -> Hashable:
        """Messages with equal keys may share one send call (same text for a
        provider that takes many phones per text, same schedule time...)."""
        return None

    @property
    def status_batch(self) -> int:
        """Ids per status call (an adapter may take fewer than its maximum)."""
        return self.MAX_STATUS_BATCH

    def status(self, refs: Sequence[MessageRef]) -> list[StatusReport]:
        reports: list[StatusReport] = []
        pending = [list(batch) for batch in chunked(refs, self.status_batch)]
        while pending:
            batch = pending.pop(0)
            try:
                reply = self.call(self.build_status(batch), sending=False)
                reports.extend(self.parse_status(reply, batch))
            except ProviderError as exc:
                if not self._too_many(exc, batch):
                    raise
                half = (len(batch) + 1) // 2
                pending[:0] = [batch[:half], batch[half:]]
        return reports

    def balance(self) -> Balance:
        if not self.HAS_BALANCE:
            raise NotImplementedError(f"{self.KIND} documents no balance call")
        reply = self.call(self.build_balance(), sending=False, kind="balance")
        return self.parse_balance(reply)

    def status_by_client_id(self, ref: MessageRef) -> list[StatusReport]:
        """Ask for a message by our own id (only where ``STATUS_BY_CLIENT_ID``)."""
        raise NotImplementedError(f"{self.KIND} cannot look a message up by our id")

    @classmethod
    def sender_refusal(cls, sender: str | None) -> tuple[str, str] | None:
        """The documented error code and the reason this provider would refuse
        ``sender`` with (None: no sender given), or None when it would take it. An
        adapter whose document has sender rules fills this in; ``send`` then fails
        such a message over without a call, and the configuration refuses such a
        configured sender at start-up."""
        return None

    @classmethod
    def sender_problem(cls, sender: str | None) -> str | None:
        """Why ``sender`` would be refused, or None (for the configuration's check)."""
        refusal = cls.sender_refusal(sender)
        return refusal[1] if refusal else None

    @property
    def status_queue(self) -> str | None:
        """The status queue this instance drains (only where ``HAS_STATUS_QUEUE``)."""
        return None

    def drain_status_queue(self, limit: int) -> list[StatusReport]:
        """Take up to ``limit`` status changes off the queue (only where ``HAS_STATUS_QUEUE``)."""
        raise NotImplementedError(f"{self.KIND} has no status queue")

    def close(self) -> None:
        self.session.close()

    # -- the template steps an adapter fills in -------------------------------------

    def build_send(self, batch: Sequence[OutgoingSms]) -> WireRequest:
        raise NotImplementedError

    def parse_send(self, reply: WireReply, batch: Sequence[OutgoingSms]) -> list[SendOutcome]:
        raise NotImplementedError

    def build_status(self, refs: Sequence[MessageRef]) -> WireRequest:
        raise NotImplementedError

    def parse_status(self, reply: WireReply, refs: Sequence[MessageRef]) -> list[StatusReport]:
        raise NotImplementedError

    def build_balance(self) -> WireRequest:
        raise NotImplementedError

    def parse_balance(self, reply: WireReply) -> Balance:
        raise NotImplementedError

    # -- helpers for adapters ---------------------------------------------------------

    @classmethod
    def map_status(cls, raw: str | None) -> Status:
        """Our word for a provider status code; ``unknown`` for anything unmapped."""
        if raw is None:
            return Status.UNKNOWN
        return cls.STATUS_MAP.get(str(raw).strip(), Status.UNKNOWN)

    @classmethod
    def stop_scope(cls, err: ProviderError) -> str | None:
        """The stop-list scope ``err`` lists its recipient with: a refusal of the message
        whose documented code says the recipient is blacklisted or opted out (the
        rule's ``stop``), else None."""
        rule = cls.ERRORS.get(str(err.code or "").strip())
        if rule is None or rule.stop is None or err.action != Action.REJECT:
            return None
        return rule.stop

    @classmethod
    def classify(cls, code: str) -> Action:
        """The action for a provider error code. An undocumented code fails over:
        we cannot tell whether retrying here would ever work."""
        rule = cls.ERRORS.get(str(code).strip())
        return rule.action if rule else Action.FAILOVER

    def error(
        self,
        code: str,
        reply: WireReply | None,
        *,
        detail: str = "",
        action: Action | None = None,
        ambiguous: bool = False,
        about: str | None = None,
    ) -> ProviderError:
        """Build the exception for a provider error code, with the wire context."""
        code = str(code).strip()
        rule = self.ERRORS.get(code)
        chosen = action or (rule.action if rule else Action.FAILOVER)
        meaning = rule.meaning if rule else "undocumented error code"
        message = f"{meaning}: {detail}" if detail else meaning
        return ERROR_CLASS[chosen](
            redact(message),
            provider=self.name,
            kind=self.KIND,
            http_status=reply.http_status if reply else None,
            code=code,
            raw=redact(reply.body) if reply else None,
            ambiguous=ambiguous,
            # An undocumented code is read as the provider's; a documented one says.
            about=about or (rule.about if rule else "provider"),
        )

    def malformed(self, reply: WireReply, why: str) -> NoReturn:
        """A reply we cannot read. For a send it may have been acted on, so it is
        marked ambiguous; the pipeline decides what that means for the message."""
        raise RetryableError(
            f"unreadable reply: {why}",
            provider=self.name,
            kind=self.KIND,
            http_status=reply.http_status,
            raw=redact(reply.body),
            ambiguous=True,
        )

    # -- transport ------------------------------------------------------------------

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        # No urllib3-level retries: retrying is the pipeline's decision, and a silent
        # retry of a send would be a duplicate SMS.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def url(self, path: str) -> str:
        return self.config.base_url + path

    def call(self, request: WireRequest, *, sending: bool, kind: str | None = None) -> WireReply:
        """Make one HTTP call; raise a classified ``ProviderError`` on transport or
        HTTP-level failure. Provider-level codes in the body are the adapter's.

        Every call to a provider passes here, so here it is counted and timed
        (``dispatcher.metrics``): ``kind`` is send, status or balance, by default
        send for a sending call and status for any other."""
        url = self.url(request.path)
        started = time.monotonic()
        outcome = "error"
        try:
            try:
                response = self.session.request(
                    request.method,
                    url,
                    params=request.params,
                    data=request.data,
                    json=request.json,
                    headers=request.headers,
                    timeout=(self.config.connect_timeout, self.config.timeout),
                )
            except requests.exceptions.ConnectTimeout:
                outcome = "timeout"
                raise self._transport_error("connect timeout", ambiguous=False) from None
            except requests.exceptions.ReadTimeout:
                # The request went out: a send may have been acted upon.
                outcome = "timeout"
                raise self._transport_error(
                    f"no reply within {self.config.timeout:g}s", ambiguous=sending
                ) from None
            except requests.exceptions.ConnectionError as exc:
                # Refused or reset before a reply. A reset after the body went out is
                # possible too, so a send stays ambiguous unless the connect itself failed.
                outcome = "connection"
                refused = "refused" in str(exc).lower() or "NewConnectionError" in repr(exc)
                raise self._transport_error(
                    f"connection failed: {_short(exc)}", ambiguous=sending and not refused
                ) from None
            except requests.exceptions.RequestException as exc:
                raise self._transport_error(f"request failed: {_short(exc)}", ambiguous=sending) from None
            elapsed = time.monotonic() - started
            body = _decode(response)
            reply = WireReply(
                http_status=response.status_code,
                body=body,
                content_type=response.headers.get("Content-Type", ""),
                elapsed=elapsed,
            )
            log.debug(
                "%s %s %s -> %s in %.3fs",
                self.name,
                request.method,
                redact(response.url),
                reply.http_status,
                elapsed,
            )
            status = reply.http_status
            outcome = "ok" if status < 400 else "http_5xx" if status >= 500 else "http_4xx"
            self._check_http(reply, sending=sending)
            return reply
        finally:
            metrics.observe_call(self.name, kind or ("send" if sending else "status"), outcome,
                                 time.monotonic() - started)  # fmt: skip

    def _check_http(self, reply: WireReply, *, sending: bool) -> None:
        status = reply.http_status
        if status < 400:
            return
        raw = redact(reply.body)
        if status >= 500 or status == 429:
            # 502/504 come from a proxy that may have passed the request on.
            raise RetryableError(
                f"HTTP {status}",
                provider=self.name,
                kind=self.KIND,
                http_status=status,
                raw=raw,
                ambiguous=sending and status in (502, 504),
            )
        raise FailoverError(f"HTTP {status}", provider=self.name, kind=self.KIND, http_status=status, raw=raw)

    def _transport_error(self, message: str, *, ambiguous: bool) -> RetryableError:
        return RetryableError(redact(message), provider=self.name, kind=self.KIND, ambiguous=ambiguous)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return redact(text if len(text) < 200 else text[:200] + "...")


def _decode(response: requests.Response) -> str:
    # requests falls back to ISO-8859-1 for text/* without a charset, which would
    # garble Cyrillic; the providers answer in UTF-8 unless they say otherwise.
    if "charset" not in response.headers.get("Content-Type", "").lower():
        return response.content.decode("utf-8", errors="replace")
    return response.text


# -- reply readers shared by the adapters ---------------------------------------------


def read_json(provider: Provider, reply: WireReply) -> Any:
    import json

    try:
        return json.loads(reply.body)
    except ValueError as exc:
        provider.malformed(reply, f"not JSON ({exc})")


def read_xml(provider: Provider, reply: WireReply) -> Any:
    # ElementTree's expat parser does not resolve external entities, so a hostile
    # reply cannot read our files; the size of a reply is bounded by requests' read.
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(reply.body.strip().encode("utf-8"))
    except ET.ParseError as exc:
        provider.malformed(reply, f"not XML ({exc})")


def parse_count(value: Any) -> int | None:
    """A count (parts, messages) printed as a number or a string of digits; None when
    it is neither, or not above zero."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def parse_amount(value: Any) -> float | None:
    """A money amount as the providers print it: a number, "12.50", or with a
    decimal comma as my-sms.ru does ("77212,0000", my-sms.md:456)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().replace("\u00a0", "").replace(" ", "")
    # A lone comma is a decimal comma; with a dot present, commas group thousands.
    text = text.replace(",", ".") if "," in text and "." not in text else text.replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None
