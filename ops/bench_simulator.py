"""How many requests per second the simulator serves on its own.

It must not be the bottleneck of our benchmarks. The baseline, measured in the same
run, is a bare ThreadingHTTPServer that answers "ok" to everything: the ceiling of
the stdlib server the simulator is built on.

    .venv/bin/python ops/bench_simulator.py [--seconds 3] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from dispatcher.simulator.core import Simulator
from dispatcher.simulator.defaults import password_for


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def measure(call: Callable[[requests.Session, int], None], clients: int, seconds: float) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def worker(n: int) -> None:
        session = requests.Session()
        i = 0
        while time.monotonic() < stop:
            call(session, i)
            i += 1
        counts[n] = i

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    bare = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    bare.daemon_threads = True
    threading.Thread(target=bare.serve_forever, daemon=True).start()
    bare_url = f"http://127.0.0.1:{bare.server_address[1]}/"

    results: dict[str, float] = {}
    with Simulator(base_port=0) as sim:
        prostor = sim["prostor"].base_url
        smska = sim["smska"].base_url
        auth = {"login": "demo", "password": password_for("prostor")}

        results["baseline: bare stdlib server"] = measure(
            lambda s, i: s.post(bare_url, data=b"x").raise_for_status(), args.clients, args.seconds
        )

        def prostor_send(s: requests.Session, i: int) -> None:
            body = {
                **auth,
                "messages": [{"phone": "+79161234567", "clientId": uuid.uuid4().hex.upper(), "text": "t"}],
            }
            s.post(prostor + "send.json", json=body).raise_for_status()

        results["prostor send.json (1 message)"] = measure(prostor_send, args.clients, args.seconds)

        def prostor_batch(s: requests.Session, i: int) -> None:
            messages = [
                {"phone": "+79161234567", "clientId": uuid.uuid4().hex.upper(), "text": "t"}
                for _ in range(200)
            ]
            s.post(prostor + "send.json", json={**auth, "messages": messages}).raise_for_status()

        batch_rate = measure(prostor_batch, args.clients, args.seconds)
        results["prostor send.json (200 messages), messages/s"] = batch_rate * 200

        def smska_send(s: requests.Session, i: int) -> None:
            data = {"APIKey": "demo", "APIPassword": password_for("smska"), "SenderID": "Demo",
                    "MSISDN": "79161234567", "Message": "t"}  # fmt: skip
            s.post(smska, data=data).raise_for_status()

        results["sms-ka send"] = measure(smska_send, args.clients, args.seconds)
    bare.shutdown()

    base = results["baseline: bare stdlib server"]
    print(f"{'case':48} {'per second':>12} {'ratio':>7}")
    for name, rate in results.items():
        print(f"{name:48} {rate:12.0f} {rate / base:7.2f}")
    print(json.dumps({k: round(v) for k, v in results.items()}))


if __name__ == "__main__":
    main()
