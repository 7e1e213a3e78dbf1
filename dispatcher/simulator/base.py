"""What every simulated provider is made of: its state (messages, balances, faults),
the request and reply it sees, and the ``SimProvider`` base each wire format fills
in. The servers that host them are in ``core``."""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from dispatcher.segments import count_parts

FINAL_STAGES = ("delivered", "undelivered", "expired")
# A valid Russian mobile range to libphonenumber, so that such a number passes intake
# and reaches the provider (7000... is no number at all and is refused before that).
INVALID_PREFIX = "790000"
# Numbers a provider refuses as blacklisted, where its document has such a code: only
# 1000sms.ru does, 618 for its blacklist (1000sms.md:79) and 622 for its global one
# (1000sms.md:87). The other kinds take them as any number. Valid ranges too.
BLACKLISTED_PREFIX = "790001"
GLOBAL_BLACKLISTED_PREFIX = "790002"
UNDELIVERED_SUFFIX = "0000"
SILENT_SUFFIX = "9999"


@dataclass
class Faults:
    """What the simulator does wrong, per provider. All off by default."""

    latency_ms: float = 0.0  # added to every reply
    # Added to status calls only (status by id, a status queue drain): a provider whose
    # status endpoint is slower than its send endpoint, as the tracking benchmark runs it.
    status_latency_ms: float = 0.0
    error_rate: float = 0.0  # share of send/status calls answered with the kind's internal error
    http500_rate: float = 0.0  # share of calls answered HTTP 500
    hang: bool = False  # hold every call until released (or hang_seconds pass)
    hang_seconds: float = 30.0
    auth_fail: bool = False  # every call answered with the kind's auth error
    no_funds: bool = False  # every send answered with the kind's no-funds error
    error_code: str = ""  # every send answered with this documented error code
    # Phones (comma-separated) whose status checks fail with HTTP 500: one message the
    # provider chokes on while every other one answers.
    broken_status: str = ""
    # Answer HTTP 500 to every call after this many calls (0: off): a provider that
    # falls over between two calls of one send, at a known point.
    fail_after: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if key not in self.__dataclass_fields__:
                raise KeyError(key)
            current = getattr(self, key)
            if isinstance(current, bool):
                value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
            elif isinstance(current, float):
                value = float(value)
            else:
                value = str(value)
            setattr(self, key, value)


@dataclass
class SimMessage:
    pid: str
    client_id: str
    phone: str
    text: str
    sender: str
    segments: int
    created: float
    stage: str = "accepted"  # accepted | sent | delivered | undelivered | expired
    queue: str = ""
    # Monotonic time the lifetime the request asked for (a validity, a TTL) runs out;
    # not delivered after it.
    lifetime_ends: float | None = None


@dataclass
class Timing:
    sent_after: float = 0.2  # seconds from accepted to handed to the operator
    final_after: float = 0.6  # seconds from accepted to the final status


@dataclass
class Account:
    login: str
    password: str
    balance: float = 100000.0
    price: float = 1.5  # per segment


class SimState:
    """Everything one simulated provider remembers. All methods are thread-safe."""

    def __init__(self, kind: str, login: str, password: str, quirks: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.lock = threading.RLock()
        self.account = Account(login, password)
        self.faults = Faults()
        # Where a document is silent or ambiguous, the ways a real server may read it
        # (``SimProvider.QUIRKS``: name -> default); a test or the control endpoint
        # ``/_sim/quirks`` picks one per instance.
        self.quirk_defaults = dict(quirks or {})
        self.quirks = dict(self.quirk_defaults)
        self.timing = Timing()
        self.release = threading.Event()
        self.messages: dict[str, SimMessage] = {}
        self.by_client: dict[str, list[str]] = {}
        self.queues: dict[str, list[tuple[str, str]]] = {}  # name -> [(pid, stage)]
        self.requests: Counter[str] = Counter()
        # Status calls (by id or a queue drain) whatever their path: sms-ka.net sends and
        # asks on one URL, so ``requests`` cannot tell them apart.
        self.status_calls = 0
        self.received: Counter[str] = Counter()  # "phone|text" -> times sent
        self.accepted_at: list[float] = []  # monotonic time of each accepted message
        self._events: list[tuple[float, int, str, str]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)

    # -- accounts -------------------------------------------------------------------

    def auth_ok(self, login: str | None, password: str | None) -> bool:
        if self.faults.auth_fail:
            return False
        return login == self.account.login and password == self.account.password

    # -- messages -------------------------------------------------------------------

    def new_id(self, style: str = "hex") -> str:
        n = next(self._ids)
        if style == "uuid":
            import uuid

            return str(uuid.uuid4())
        if style == "alnum":
            return f"sk{n:015x}"
        if style == "digits":
            return str(1_000_000 + n)
        return f"{n:012X}"

    def charge(self, text: str) -> tuple[int, float] | None:
        """Segments and cost of a text, or None when the balance cannot cover it."""
        parts = max(count_parts(text), 1)
        cost = parts * self.account.price
        with self.lock:
            if self.faults.no_funds or self.account.balance < cost:
                return None
            self.account.balance -= cost
        return parts, cost

    def accept(
        self,
        phone: str,
        text: str,
        sender: str,
        client_id: str = "",
        queue: str = "",
        style: str = "hex",
        lifetime: float | None = None,
    ) -> SimMessage:
        """Take a message; it moves on over time (``Timing``). With a ``lifetime`` (the
        validity or TTL the request asked for) it ends ``expired`` if that runs out
        before its final status comes."""
        now = time.monotonic()
        with self.lock:
            pid = self.new_id(style)
            msg = SimMessage(pid, client_id, phone, text, sender, max(count_parts(text), 1), now, queue=queue)
            if lifetime is not None:
                msg.lifetime_ends = now + lifetime
                heapq.heappush(self._events, (msg.lifetime_ends, next(self._seq), pid, "expired"))
            self.messages[pid] = msg
            if client_id:
                self.by_client.setdefault(client_id, []).append(pid)
            self.received[f"{phone}|{text}"] += 1
            self.accepted_at.append(now)
            self._push_queue(msg)
            heapq.heappush(self._events, (now + self.timing.sent_after, next(self._seq), pid, "sent"))
            if not phone.endswith(SILENT_SUFFIX):
                final = "undelivered" if phone.endswith(UNDELIVERED_SUFFIX) else "delivered"
                heapq.heappush(self._events, (now + self.timing.final_after, next(self._seq), pid, final))
        return msg

    def _push_queue(self, msg: SimMessage) -> None:
        if msg.queue:
            self.queues.setdefault(msg.queue, []).append((msg.pid, msg.stage))

    def advance(self) -> None:
        """Apply every status change that is due. Cheap when nothing is."""
        now = time.monotonic()
        with self.lock:
            while self._events and self._events[0][0] <= now:
                _, _, pid, stage = heapq.heappop(self._events)
                msg = self.messages.get(pid)
                if msg is None or msg.stage in FINAL_STAGES or msg.stage == stage:
                    continue
                msg.stage = stage
                self._push_queue(msg)

    def get(self, pid: str) -> SimMessage | None:
        self.advance()
        with self.lock:
            found = self.messages.get(pid)
        self._check_broken([found] if found else [])
        return found

    def find_client(self, client_id: str) -> list[SimMessage]:
        self.advance()
        with self.lock:
            found = [self.messages[p] for p in self.by_client.get(client_id, [])]
        self._check_broken(found)
        return found

    def _check_broken(self, found: list[SimMessage]) -> None:
        broken = self.faults.broken_status
        if broken and any(m.phone in broken.split(",") for m in found):
            # The server answers HTTP 500 to an exception in a handler.
            raise RuntimeError("status of this message fails (fault broken_status)")

    def drain(self, queue: str, limit: int) -> list[tuple[str, str]]:
        self.advance()
        with self.lock:
            items = self.queues.get(queue, [])
            taken, self.queues[queue] = items[:limit], items[limit:]
        return taken

    # -- control --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        self.advance()
        with self.lock:
            stages = Counter(m.stage for m in self.messages.values())
            return {
                "kind": self.kind,
                "requests": dict(self.requests),
                "status_calls": self.status_calls,
                "messages": len(self.messages),
                "stages": dict(stages),
                "duplicates": sum(n - 1 for n in self.received.values() if n > 1),
                "received": dict(self.received),
                "balance": self.account.balance,
                "faults": asdict(self.faults),
                "timing": asdict(self.timing),
                "quirks": dict(self.quirks),
                "queued_statuses": {k: len(v) for k, v in self.queues.items()},
            }

    def set_quirks(self, values: dict[str, Any]) -> None:
        """Pick readings for this instance; an unknown quirk name is a KeyError."""
        with self.lock:
            for key, value in values.items():
                if key not in self.quirk_defaults:
                    raise KeyError(key)
                self.quirks[key] = value

    def quirk(self, name: str) -> Any:
        with self.lock:
            return self.quirks[name]

    def reset_faults(self) -> None:
        """The provider recovers: faults off, held requests released, state kept."""
        with self.lock:
            self.faults = Faults()
            self.release.set()
            self.release = threading.Event()

    def reset(self) -> None:
        with self.lock:
            self.faults = Faults()
            self.timing = Timing()
            self.quirks = dict(self.quirk_defaults)
            self.release.set()
            self.release = threading.Event()
            self.messages.clear()
            self.by_client.clear()
            self.queues.clear()
            self.requests.clear()
            self.status_calls = 0
            self.received.clear()
            self.accepted_at.clear()
            self._events.clear()
            self.account.balance = 100000.0


@dataclass
class SimRequest:
    method: str
    path: str  # relative to the kind's base path
    query: dict[str, str]
    form: dict[str, str]  # query and form fields merged, form winning
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return None


@dataclass
class SimResponse:
    status: int
    body: str
    content_type: str = "application/json; charset=utf-8"


class SimProvider:
    """One provider's wire format. Subclasses implement ``route``."""

    KIND: ClassVar[str]
    FORM_CHARSET: ClassVar[str] = "utf-8"  # how percent-escapes in form fields decode
    # The readings this kind can switch between (``SimState.quirks``), with defaults.
    QUIRKS: ClassVar[dict[str, Any]] = {}

    def __init__(self, state: SimState) -> None:
        self.state = state

    def charset_of(self, raw_fields: dict[str, str]) -> str:
        return self.FORM_CHARSET

    def route(self, req: SimRequest) -> SimResponse:
        raise NotImplementedError

    # The kind's reply to each fault; subclasses render their own wire format.
    def internal_error(self, req: SimRequest) -> SimResponse:
        raise NotImplementedError

    def is_traffic(self, req: SimRequest) -> bool:
        """True for send and status calls (what error_rate applies to)."""
        return True

    def is_status(self, req: SimRequest) -> bool:
        """True for a status call: by id, or a status queue drain (what
        ``status_latency_ms`` applies to)."""
        return False

    @staticmethod
    def json_reply(doc: Any, status: int = 200) -> SimResponse:
        return SimResponse(status, json.dumps(doc, ensure_ascii=False))
