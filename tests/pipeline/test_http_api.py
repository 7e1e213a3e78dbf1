"""The HTTP intake API through a real HTTP server, and a schema fuzzer against it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from dispatcher import config
from dispatcher.http_api import create_app
from dispatcher.simulator.core import Simulator
from tests.support import TAKEN, Stack

TOKEN = "api-test-token-5f3a"


class Api:
    def __init__(self, url: str, stack: Stack) -> None:
        self.url = url
        self.stack = stack
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    def post(self, body: Any, **headers: str) -> requests.Response:
        return requests.post(
            f"{self.url}/v1/messages", json=body, headers={**self.auth, **headers}, timeout=10
        )

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, headers=self.auth, timeout=10)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    sim = Simulator(base_port=0).start()
    stack = Stack(sim, Path(tmp_path_factory.mktemp("api")))
    stack.configure(providers=["prostor", "mysms"])
    stack.table["api"] = {"token": TOKEN}
    stack.config_path.write_text(config.to_toml(stack.table), encoding="utf-8")
    settings_ = config.load(stack.config_path, env={})
    config.set_settings(settings_)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings_), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield Api(f"http://127.0.0.1:{port}", stack)
    server.should_exit = True
    thread.join(10)
    stack.stop()
    sim.stop()
    config.set_settings(None)


def test_auth_is_required(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        reply = requests.get(f"{api.url}/v1/messages", headers=headers, timeout=10)
        assert reply.status_code == 401
        assert reply.json()["error"]["field"] == "authorization"
    assert requests.get(f"{api.url}/healthz", timeout=10).status_code in (200, 503)  # public


def test_post_one_then_read_it(api: Api) -> None:
    reply = api.post({"to": "+7 916 123-45-67", "text": "Привет по HTTP", "priority": "high"})
    assert reply.status_code == 201, reply.text
    created = reply.json()
    assert created["status"] == "queued"
    message = api.get(f"/v1/messages/{created['id']}").json()
    assert message["to"] == "79161234567" and message["text"] == "Привет по HTTP"
    assert message["events"][0]["new_status"] == "queued"
    listed = api.get("/v1/messages", status="queued").json()
    assert created["id"] in [m["id"] for m in listed]
    assert api.get("/v1/messages/nope").status_code == 404


def test_idempotency_key_header(api: Api) -> None:
    first = api.post({"to": "79161234567", "text": "once"}, **{"Idempotency-Key": "http-1"})
    again = api.post({"to": "79161234567", "text": "once"}, **{"Idempotency-Key": "http-1"})
    assert first.json()["id"] == again.json()["id"]
    clash = api.post({"to": "79161234567", "text": "other"}, **{"Idempotency-Key": "http-1"})
    assert clash.status_code == 409 and clash.json()["error"]["field"] == "key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "12", "text": "x"}, "to"),
        ({"to": "79161234567", "text": ""}, "text"),
        ({"to": "79161234567"}, "text"),
        ({"to": "79161234567", "text": "x", "colour": "red"}, "colour"),
        ({"to": "79161234567", "text": "x", "priority": "urgent"}, "priority"),
        ({"messages": [{"to": "79161234567", "text": "ok"}, {"to": "bad", "text": "x"}]}, "messages[1].to"),
    ],
)
def test_bad_input_is_4xx_naming_the_field(api: Api, body: Any, field: str) -> None:
    reply = api.post(body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["field"].endswith(field.split(".")[-1]) and error["reason"]


def test_bulk_and_providers(api: Api) -> None:
    body = {"messages": [{"to": f"7916000{n:04d}", "text": f"bulk {n}"} for n in range(5)]}
    reply = api.post(body, **{"Idempotency-Key": "bulk-1"})
    assert reply.status_code == 201 and reply.json()["count"] == 5
    assert api.post(body, **{"Idempotency-Key": "bulk-1"}).json()["ids"] == reply.json()["ids"]
    rows = api.get("/v1/providers").json()
    assert [r["provider"] for r in rows] == ["prostor", "mysms"]


def test_healthz_tracks_consuming_workers_and_metrics(api: Api) -> None:
    down = requests.get(f"{api.url}/healthz", timeout=10)
    assert down.status_code == 503 and "no sweep ran" in down.json()["checks"]["workers"]["detail"]
    api.stack.start_worker(beat=True)
    mid = api.post({"to": "79161234567", "text": "healthy?"}).json()["id"]
    assert api.stack.wait_until([mid], TAKEN, timeout=20)[mid] in TAKEN
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and requests.get(f"{api.url}/healthz", timeout=10).status_code != 200:
        time.sleep(0.5)
    assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200
    text = requests.get(f"{api.url}/metrics", timeout=10).text
    for name in ("smsdispatch_messages{", "smsdispatch_send_duration_seconds{", "smsdispatch_circuit_state{",
                 "smsdispatch_queue_depth{", "smsdispatch_workers_healthy 1"):  # fmt: skip
        assert name in text, name
    api.stack.stop()


def test_fuzz_never_5xx(api: Api) -> None:
    """Every operation of our OpenAPI schema, fed generated requests (valid and not):
    none may answer 5xx. Schemathesis' pytest plugin does not run on pytest 9, so its
    Hypothesis strategies are driven here directly."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/messages", "GET /v1/messages/{message_id}", "GET /v1/messages", "GET /v1/providers",
        "GET /healthz", "GET /metrics",
    }  # fmt: skip
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text[:500])

        run()
    assert len(seen) > 100 and any(code == 422 for code in seen) and any(code < 300 for code in seen)
