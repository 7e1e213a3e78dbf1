"""A status-callback receiver on loopback, for tests and the demo.

It records every POST (headers, body, the parsed payload and whether the signature
verified against ``secret``), answers 200, and can be made to misbehave: ``down()``
closes its listening socket (connections are refused) or, with ``mode="503"``, answers
503; ``respond(status, times=n)`` gives the next ``n`` POSTs another status (a 500, a
302); ``delay`` holds each reply back. ``printer`` prints each payload on one line.

    with Receiver(secret) as r:
        ... r.url ...
        r.wait_for(3)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dispatcher.callbacks import verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] | None
    verified: bool | None  # None: the receiver has no secret to check with
    at: float = field(default_factory=time.time)
    answered: int = 0  # the status it was answered with

    @property
    def delivery(self) -> str | None:
        return self.headers.get("x-smsdispatch-delivery")


class Receiver:
    def __init__(
        self,
        secret: str | None = None,
        *,
        delay: float = 0.0,
        printer: bool | Callable[[str], None] = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.secret = secret
        self.delay = delay
        self.printer = printer
        self.host = host
        self.port = port
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._scripted: deque[tuple[int, dict[str, str]]] = deque()
        self._mode: str | None = None  # None: up; "503": answering 503
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> Receiver:
        server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]  # the same port again after down("refuse")
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/callbacks"

    # -- misbehaving ---------------------------------------------------------------

    def down(self, mode: str = "refuse") -> None:
        """``refuse``: close the listening socket; ``503``: answer every POST with 503."""
        if mode not in ("refuse", "503"):
            raise ValueError(f"mode: 'refuse' or '503', not {mode!r}")
        if mode == "refuse":
            self.stop()
        else:
            self._mode = "503"

    def up(self) -> None:
        self._mode = None
        if self._server is None:
            self.start()

    def respond(self, status: int, *, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``times`` POSTs with ``status`` (and ``headers``)."""
        with self._lock:
            self._scripted.extend([(status, dict(headers or {}))] * times)

    # -- what arrived --------------------------------------------------------------

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.payload for r in self.received if r.payload is not None]

    def wait_for(self, n: int, timeout: float = 15.0) -> list[Received]:
        """Wait until ``n`` POSTs arrived (or the timeout): what arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= n:
                    break
            time.sleep(0.05)
        with self._lock:
            return list(self.received)

    def _take(self, request: Received) -> tuple[int, dict[str, str]]:
        headers: dict[str, str]
        with self._lock:
            self.received.append(request)
            if self._mode == "503":
                status, headers = 503, {}
            elif self._scripted:
                status, headers = self._scripted.popleft()
            else:
                status, headers = 200, {}
            request.answered = status
            return status, headers

    def _print(self, request: Received) -> None:
        if not self.printer:
            return
        mark = {True: "signed ok", False: "BAD SIGNATURE", None: "unchecked"}[request.verified]
        line = f"callback <- {request.body.decode('utf-8', 'replace')} ({mark})"
        if callable(self.printer):
            self.printer(line)
        else:
            print(line, file=sys.stdout, flush=True)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            verified: bool | None = None
            if receiver.secret:
                stamp, signature = (
                    headers.get("x-smsdispatch-timestamp"),
                    headers.get("x-smsdispatch-signature"),
                )
                verified = verify(receiver.secret, stamp, signature, body)
            request = Received(
                self.path, headers, body, payload if isinstance(payload, dict) else None, verified
            )
            status, extra = receiver._take(request)
            receiver._print(request)
            if receiver.delay:
                time.sleep(receiver.delay)
            reply = b'{"ok":true}' if status < 300 else f"status {status}".encode()
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json" if status < 300 else "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass  # the sender gave up (a timeout, a killed worker): it is recorded anyway

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
