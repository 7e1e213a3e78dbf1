"""The provider simulator's shared machinery.

One ``SimServer`` per provider kind: a threaded HTTP/1.1 server on loopback whose
wire format is the kind's ``SimProvider`` subclass. The state behind it is what a
real provider keeps: accounts with balances, the messages received, their delivery
status moving on over time, status queues. Fault injection sits in front of every
call and can be changed at run time over ``/_sim/`` control endpoints.

Test numbers (digits after normalization):
- starting ``790000`` (``INVALID_PREFIX``): the provider refuses the number as invalid;
- starting ``790001`` (``BLACKLISTED_PREFIX``) or ``790002``
  (``GLOBAL_BLACKLISTED_PREFIX``): 1000sms.ru refuses it as blacklisted (618) or in
  its global blacklist (622); no other document has such a code, the others take it;
- ending ``0000``: accepted, then ends undelivered;
- ending ``9999``: accepted and handed on, but never reports a final status;
- anything else: accepted, sent, delivered.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dispatcher.providers import registry
from dispatcher.simulator import defaults
from dispatcher.simulator.base import (
    BLACKLISTED_PREFIX,
    GLOBAL_BLACKLISTED_PREFIX,
    INVALID_PREFIX,
    SILENT_SUFFIX,
    UNDELIVERED_SUFFIX,
    Faults,
    SimProvider,
    SimRequest,
    SimResponse,
    SimState,
)

__all__ = [
    "BLACKLISTED_PREFIX", "GLOBAL_BLACKLISTED_PREFIX", "INVALID_PREFIX", "SILENT_SUFFIX",
    "UNDELIVERED_SUFFIX", "Faults", "SimProvider", "SimRequest", "SimResponse", "SimServer", "SimState",
    "Simulator",
]  # fmt: skip


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
        status_call = sim.is_status(req)
        with state.lock:
            state.requests[rel or "/"] += 1
            state.status_calls += status_call
            calls = sum(state.requests.values())
            faults = state.faults
            release = state.release
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000.0)
        if faults.status_latency_ms and status_call:
            time.sleep(faults.status_latency_ms / 1000.0)
        if faults.hang:
            release.wait(faults.hang_seconds)
        if faults.fail_after and calls > faults.fail_after:
            return SimResponse(500, "Internal Server Error", "text/plain; charset=utf-8")
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
        if path == "/_sim/quirks":
            try:
                state.set_quirks(doc)
            except KeyError as exc:
                return SimProvider.json_reply({"error": f"bad quirk {exc}"}, 400)
            return SimProvider.json_reply(dict(state.quirks))
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
        self.kind = kind
        cls = registry.get(kind).simulator_class()
        self.state = SimState(kind, defaults.login_for(kind), defaults.password_for(kind), cls.QUIRKS)
        self.sim = cls(self.state)
        base_path = registry.get(kind).sim_path
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
    """Every simulated provider kind (or the ``kinds`` given). Ports: ``base_port + offset`` per kind, or free
    ports chosen by the system with ``base_port=0``."""

    def __init__(
        self,
        host: str = defaults.HOST,
        base_port: int = defaults.BASE_PORT,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        self.servers: dict[str, SimServer] = {}
        for kind in defaults.kinds() if kinds is None else kinds:
            port = base_port + registry.port_offset(kind) if base_port else 0
            self.servers[kind] = SimServer(kind, host, port)

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
