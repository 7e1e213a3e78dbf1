"""The provider simulator's shared machinery.

One ``SimServer`` per provider kind: a threaded HTTP/1.1 server on loopback whose
wire format is the kind's ``SimProvider`` subclass. The state behind it is what a
real provider keeps: accounts with balances, the messages received, their delivery
status moving on over time, status queues. Fault injection sits in front of every
call and can be changed at run time over ``/_sim/`` control endpoints.

Test numbers (digits after normalization):
- starting ``7000``: the provider refuses the number as invalid;
- ending ``0000``: accepted, then ends undelivered;
- ending ``9999``: accepted and handed on, but never reports a final status;
- anything else: accepted, sent, delivered.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from dispatcher.segments import count_parts
from dispatcher.simulator import defaults

INVALID_PREFIX = "7000"
UNDELIVERED_SUFFIX = "0000"
SILENT_SUFFIX = "9999"


@dataclass
class Faults:
    """What the simulator does wrong, per provider. All off by default."""

    latency_ms: float = 0.0  # added to every reply
    error_rate: float = 0.0  # share of send/status calls answered with the kind's internal error
    http500_rate: float = 0.0  # share of calls answered HTTP 500
    hang: bool = False  # hold every call until released (or hang_seconds pass)
    hang_seconds: float = 30.0
    auth_fail: bool = False  # every call answered with the kind's auth error
    no_funds: bool = False  # every send answered with the kind's no-funds error
    error_code: str = ""  # every send answered with this documented error code

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
    stage: str = "accepted"  # accepted | sent | delivered | undelivered
    queue: str = ""


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

    def __init__(self, kind: str, login: str, password: str) -> None:
        self.kind = kind
        self.lock = threading.RLock()
        self.account = Account(login, password)
        self.faults = Faults()
        self.timing = Timing()
        self.release = threading.Event()
        self.messages: dict[str, SimMessage] = {}
        self.by_client: dict[str, list[str]] = {}
        self.queues: dict[str, list[tuple[str, str]]] = {}  # name -> [(pid, stage)]
        self.requests: Counter[str] = Counter()
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
        self, phone: str, text: str, sender: str, client_id: str = "", queue: str = "", style: str = "hex"
    ) -> SimMessage:
        now = time.monotonic()
        with self.lock:
            pid = self.new_id(style)
            msg = SimMessage(pid, client_id, phone, text, sender, max(count_parts(text), 1), now, queue=queue)
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
                if msg is None or msg.stage in ("delivered", "undelivered") or msg.stage == stage:
                    continue
                msg.stage = stage
                self._push_queue(msg)

    def get(self, pid: str) -> SimMessage | None:
        self.advance()
        with self.lock:
            return self.messages.get(pid)

    def find_client(self, client_id: str) -> list[SimMessage]:
        self.advance()
        with self.lock:
            return [self.messages[p] for p in self.by_client.get(client_id, [])]

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
                "messages": len(self.messages),
                "stages": dict(stages),
                "duplicates": sum(n - 1 for n in self.received.values() if n > 1),
                "received": dict(self.received),
                "balance": self.account.balance,
                "faults": asdict(self.faults),
                "timing": asdict(self.timing),
                "queued_statuses": {k: len(v) for k, v in self.queues.items()},
            }

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
            self.release.set()
            self.release = threading.Event()
            self.messages.clear()
            self.by_client.clear()
            self.queues.clear()
            self.requests.clear()
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

    @staticmethod
    def json_reply(doc: Any, status: int = 200) -> SimResponse:
        return SimResponse(status, json.dumps(doc, ensure_ascii=False))


def _parse_fields(raw: str, charset: str) -> dict[str, str]:
    parsed = parse_qs(raw, keep_blank_values=True, encoding=charset, errors="replace")
    return {k: v[-1] for k, v in parsed.items()}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the
    # client's delayed ACK (40 ms) and the simulator crawls at ~25 requests/s/connection.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # The default logs every request line to stderr, passwords in URLs included.
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        try:
            response = self._respond()
        except Exception as exc:  # a bug in the simulator must still answer
            response = SimResponse(500, f"simulator error: {exc}", "text/plain; charset=utf-8")
        if response is None:
            return
        body = response.body.encode("utf-8")
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _respond(self) -> SimResponse | None:
        sim = self.server.sim
        state = sim.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        path = split.path
        if path.startswith("/_sim/"):
            return self._control(path, body)
        base = self.server.base_path
        rel = path[len(base) :] if path.startswith(base) else path.lstrip("/")
        ctype = self.headers.get("Content-Type", "")
        raw_query = _parse_fields(split.query, "latin-1")
        raw_form = _parse_fields(body.decode("latin-1"), "latin-1") if "form-urlencoded" in ctype else {}
        charset = sim.charset_of({**raw_query, **raw_form})
        query = _parse_fields(split.query, charset)
        form = {**query, **(_parse_fields(body.decode("latin-1"), charset) if raw_form else {})}
        req = SimRequest(self.command, rel, query, form, body, ctype, dict(self.headers.items()))
        with state.lock:
            state.requests[rel or "/"] += 1
            faults = state.faults
            release = state.release
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000.0)
        if faults.hang:
            release.wait(faults.hang_seconds)
        if faults.http500_rate and random.random() < faults.http500_rate:
            return SimResponse(500, "Internal Server Error", "text/plain; charset=utf-8")
        if faults.error_rate and sim.is_traffic(req) and random.random() < faults.error_rate:
            return sim.internal_error(req)
        return sim.route(req)

    def _control(self, path: str, body: bytes) -> SimResponse:
        state = self.server.sim.state
        doc = json.loads(body or b"{}") if body else {}
        if path == "/_sim/stats":
            return SimProvider.json_reply(state.stats())
        if path == "/_sim/faults":
            try:
                with state.lock:
                    state.faults.update(doc)
                    if not state.faults.hang:
                        state.release.set()
                        state.release = threading.Event()
            except (KeyError, ValueError) as exc:
                return SimProvider.json_reply({"error": f"bad fault {exc}"}, 400)
            return SimProvider.json_reply(asdict(state.faults))
        if path == "/_sim/timing":
            with state.lock:
                for key, value in doc.items():
                    setattr(state.timing, key, float(value))
            return SimProvider.json_reply(asdict(state.timing))
        if path == "/_sim/balance":
            with state.lock:
                state.account.balance = float(doc["balance"])
            return SimProvider.json_reply({"balance": state.account.balance})
        if path == "/_sim/reset":
            state.reset()
            return SimProvider.json_reply({"reset": True})
        return SimProvider.json_reply({"error": "no such control endpoint"}, 404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], sim: SimProvider, base_path: str) -> None:
        self.sim = sim
        self.base_path = base_path
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the fault suite's kill -9) resets its sockets:
        # that is the client's news, not a simulator error worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class SimServer:
    """One simulated provider listening on loopback, served from a thread."""

    def __init__(self, kind: str, host: str = defaults.HOST, port: int = 0) -> None:
        from dispatcher.simulator.kinds import SIM_CLASSES

        login = defaults.LOGIN if kind != "sms1000" else "demo@example.com"
        self.kind = kind
        self.state = SimState(kind, login, defaults.password_for(kind))
        self.sim = SIM_CLASSES[kind](self.state)
        _, base_path = defaults.LAYOUT[kind]
        self.httpd = _Server((host, port), self.sim, base_path)
        address = self.httpd.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return defaults.base_url(self.kind, host=self.host, port=self.port)

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.port}/_sim/"

    def start(self) -> SimServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"sim-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.state.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class Simulator:
    """All five simulated providers. Ports: ``base_port + offset`` per kind, or free
    ports chosen by the system with ``base_port=0``."""

    def __init__(
        self,
        host: str = defaults.HOST,
        base_port: int = defaults.BASE_PORT,
        kinds: tuple[str, ...] = defaults.KINDS,
    ) -> None:
        self.servers: dict[str, SimServer] = {}
        for kind in kinds:
            offset, _ = defaults.LAYOUT[kind]
            self.servers[kind] = SimServer(kind, host, base_port + offset if base_port else 0)

    def start(self) -> Simulator:
        for server in self.servers.values():
            server.start()
        return self

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, kind: str) -> SimServer:
        return self.servers[kind]

    def urls(self) -> dict[str, str]:
        return {kind: s.base_url for kind, s in self.servers.items()}

    def settings_table(self) -> dict[str, Any]:
        return defaults.default_settings_table(self.urls())

    def config_toml(self, **top: str) -> str:
        return defaults.render_toml(self.settings_table(), top)
