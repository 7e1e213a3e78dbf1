"""The HTTP intake API through a real HTTP server, on SQLite and on PostgreSQL, and a
schema fuzzer against it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from dispatcher import config
from dispatcher.http_api import create_app
from dispatcher.simulator.core import Simulator
from tests.pipeline.test_metrics import Scrape
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


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    sim = Simulator(base_port=0).start()
    stack = Stack(sim, Path(tmp_path_factory.mktemp("api")), str(request.param))
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
    assert set(listed) == {"messages", "next"}
    assert created["id"] in [m["id"] for m in listed["messages"]]
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
    refused = ("smsdispatch_intake_refused_total", (("door", "api"), ("reason", "invalid")))
    before = Scrape.parse(requests.get(f"{api.url}/metrics", timeout=10).text).samples.get(refused, 0.0)
    bad = api.post({"messages": [{"to": "1", "text": "x"}, {"to": "79161234568", "text": "y"}]})
    assert bad.status_code == 422, bad.text
    text = requests.get(f"{api.url}/metrics", timeout=10).text
    # The full exporter is tests/pipeline/test_metrics.py's: here, that health agrees,
    # and the refused bulk call counts its two messages.
    for name in ("smsdispatch_messages{", "smsdispatch_circuit_state{", "smsdispatch_queue_depth{",
                 "smsdispatch_workers_healthy 1.0"):  # fmt: skip
        assert name in text, name
    assert Scrape.parse(text).samples[refused] == before + 2
    api.stack.stop()


def test_fuzz_never_5xx(api: Api) -> None:
    """Every operation of our OpenAPI schema, fed generated requests (valid and not):
    none may answer 5xx, and every answer the schema describes must match it.
    Schemathesis' pytest plugin does not run on pytest 9, so its Hypothesis strategies
    are driven here directly; derandomized, so that a run is repeatable and bounded."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    results = list(schema.get_all_operations())
    # Every operation must load: a schema error is a failure here, not a skipped operation.
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /v1/messages", "GET /v1/messages/{message_id}", "GET /v1/messages", "GET /v1/providers",
        "GET /healthz", "GET /metrics", "POST /v1/stop-list", "DELETE /v1/stop-list/{to}",
        "GET /v1/stop-list",
    }  # fmt: skip
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None,
            derandomize=True,
        )  # fmt: skip
        def run(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.text[:500])
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        run()
    assert len(seen) > 100 and any(code == 422 for code in seen) and any(code < 300 for code in seen)


# What a fuzzer rarely hits by chance but a client sends: the ends of the calendar,
# NUL and other controls, lone surrogates, booleans and strings where numbers belong.
_EDGE_TIMES = st.sampled_from([
    "9999-12-31", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+00:00", "9999-12-30T00:00:00Z",
    "0001-01-01+01:00", "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+00:00", "0001-01-01T00:00:00-01:00",
    "2030-01-01T00:00:00+03:00", "2030-01-01\x0012:00+03:00", "\x00", "",
])  # fmt: skip
_ODD_TEXT = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "79161234567\x00", "high\x00"]
)
_ODD_NUMBER: st.SearchStrategy[Any] = st.sampled_from([True, False, "5", None, 0, -1, 60, 1e308, [], {}])
_MESSAGE = st.fixed_dictionaries(
    {"to": st.one_of(st.sampled_from(["79161234567", "+7 916 123-45-68"]), st.just("79161234569"),
                     _ODD_TEXT),
     "text": st.one_of(st.just("hi"), st.just("привет"), _ODD_TEXT)},
    optional={
        "at": st.one_of(_EDGE_TIMES, _EDGE_TIMES, _ODD_TEXT), "ttl": _ODD_NUMBER,
        "priority": st.sampled_from(["high", True, 1]),
        "sender": _ODD_TEXT, "key": _ODD_TEXT, "provider": st.sampled_from(["prostor", "x\x00"]) | _ODD_TEXT,
    },
)  # fmt: skip


def _raw_json(value: Any) -> bytes:
    # json.dumps escapes a lone surrogate as \ud800, as a client in another language
    # would send it; requests' own encoder would refuse it.
    return json.dumps(value).encode()


def _quoted(value: str) -> str:
    # A broken client's bytes for a lone surrogate: percent-encoded, UTF-8 as far as it goes.
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@given(
    body=_MESSAGE | st.fixed_dictionaries({"messages": st.lists(_MESSAGE, min_size=1, max_size=3)}),
    query=st.dictionaries(
        st.sampled_from(["status", "provider", "since", "until", "limit", "to", "key", "provider_message_id",
                         "client", "cursor"]),
        st.one_of(_EDGE_TIMES, _EDGE_TIMES, _ODD_TEXT, st.sampled_from(["true", "queued", "1"])), max_size=3,
    ),
    message_id=_ODD_TEXT.filter(lambda t: t not in ("", ".", "..") and "/" not in t and "?" not in t),
)  # fmt: skip
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          derandomize=True)  # fmt: skip
def test_intake_edges_are_never_5xx(api: Api, body: Any, query: dict[str, str], message_id: str) -> None:
    headers = {**api.auth, "Content-Type": "application/json"}
    query_string = "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in query.items())
    for reply in (
        requests.post(f"{api.url}/v1/messages", data=_raw_json(body), headers=headers, timeout=10),
        requests.get(f"{api.url}/v1/messages?{query_string}", headers=api.auth, timeout=10),
        requests.get(f"{api.url}/v1/messages/{_quoted(message_id)}", headers=api.auth, timeout=10),
    ):  # fmt: skip
        assert reply.status_code < 500, (reply.request.method, reply.request.url, reply.text[:300])
        if reply.status_code >= 400:
            error = reply.json()["error"]
            assert set(error) == {"field", "reason"} and error["field"] and error["reason"], reply.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"to": "79161234567", "text": "x", "at": "9999-12-31T23:59:59-01:00"}, "at"),
        ({"to": "79161234567", "text": "x", "at": "9999-12-31T00:00:00+00:00"}, "at"),
        ({"to": "79161234567", "text": "x", "at": "0001-01-01T00:00:00+01:00"}, "at"),
        ({"messages": [{"to": "79161234567", "text": "x"},
                       {"to": "79161234568", "text": "y", "at": "9999-12-31T23:00:00+00:00"}]},
         "messages[1].at"),
        ({"to": "79161234567", "text": "x", "ttl": True}, "ttl"),
        ({"to": "79161234567", "text": "x", "ttl": "60"}, "ttl"),
        ({"messages": [{"to": "79161234567", "text": "x"}, {"to": "79161234568", "text": "y", "ttl": True}]},
         "messages[1].ttl"),
        ({"to": "79161234567", "text": "x", "priority": True}, "priority"),
    ],
)  # fmt: skip
def test_edge_values_in_the_body_are_422_naming_the_field(api: Api, body: Any, field: str) -> None:
    reply = api.post(body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"] == field, reply.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
        ({"provider": "prostor\x00"}, "provider"),
        ({"since": "2030-01-01T00:00:00\x00+03:00"}, "since"),
        ({"limit": "true"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"to": "12"}, "to"),
        ({"client": "no such/name"}, "client"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
    ],
)
def test_edge_values_in_the_query_are_422_naming_the_parameter(
    api: Api, params: dict[str, str], field: str
) -> None:
    reply = api.get("/v1/messages", **params)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"] == field, reply.text


def test_times_at_the_ends_of_the_calendar(api: Api) -> None:
    """Refused only where the arithmetic cannot follow: the first and last instants
    themselves are served."""
    for params in ({"since": "0001-01-01T00:00:00+00:00"}, {"until": "9999-12-31T23:59:59+00:00"}):
        assert api.get("/v1/messages", **params).status_code == 200
    for field, value in (("since", "0001-01-01T00:30:00+01:00"), ("until", "9999-12-31T23:30:00-00:45")):
        reply = api.get("/v1/messages", **{field: value})
        assert reply.status_code == 422 and reply.json()["error"]["field"] == field, reply.text


def test_every_error_has_the_documented_shape(api: Api) -> None:
    def error_of(reply: requests.Response, status: int) -> dict[str, Any]:
        assert reply.status_code == status, reply.text
        body = reply.json()
        assert set(body) == {"error"} and set(body["error"]) == {"field", "reason"}, reply.text
        return dict(body["error"])

    json_headers = {**api.auth, "Content-Type": "application/json"}
    malformed = requests.post(
        f"{api.url}/v1/messages", data=b'{"to": "7916', headers=json_headers, timeout=10
    )
    assert error_of(malformed, 400)["field"] == "body"
    not_utf8 = requests.post(
        f"{api.url}/v1/messages", data=b'{"to": "\xff"}', headers=json_headers, timeout=10
    )
    assert error_of(not_utf8, 400)["field"] == "body"
    assert error_of(api.get("/v2/nothing"), 404)["field"] == "path"
    assert error_of(api.get("/v1/messages/0123456789abcdef"), 404)["field"] == "message_id"
    for raw in ("a%00b", "%00", "x%01y"):
        assert error_of(api.get(f"/v1/messages/{raw}"), 404)["field"] == "message_id"
    wrong_method = requests.delete(f"{api.url}/v1/messages", headers=api.auth, timeout=10)
    assert error_of(wrong_method, 405)["field"] == "method"
    put = requests.put(f"{api.url}/v1/messages/abc", headers=api.auth, timeout=10)
    assert error_of(put, 405)["field"] == "method"
    assert error_of(requests.get(f"{api.url}/v1/providers", timeout=10), 401)["field"] == "authorization"


def test_bulk_idempotency_key_covers_the_whole_call(api: Api) -> None:
    body = {"messages": [{"to": "79161234567", "text": "first"}, {"to": "79161234568", "text": "second"}]}
    first = api.post(body, **{"Idempotency-Key": "bulk-whole-1"})
    assert first.status_code == 201, first.text
    assert api.post(body, **{"Idempotency-Key": "bulk-whole-1"}).json()["ids"] == first.json()["ids"]
    other = {"messages": [*body["messages"], {"to": "79161234569", "text": "third"}]}
    clash = api.post(other, **{"Idempotency-Key": "bulk-whole-1"})
    assert clash.status_code == 409, clash.text
    # A header in Cyrillic arrives read as latin-1, C1 controls included: the header is named.
    as_sent = "ключ".encode().decode("latin-1")
    odd = requests.post(
        f"{api.url}/v1/messages", json=body, headers={**api.auth, "Idempotency-Key": as_sent}, timeout=10
    )
    assert odd.status_code == 422 and odd.json()["error"]["field"] == "Idempotency-Key", odd.text
    assert clash.json()["error"]["field"] == "Idempotency-Key"


def test_parallel_overlapping_bulk_posts_never_5xx(api: Api) -> None:
    """Eight bulk calls at once over the same keyed messages, each in another order:
    on PostgreSQL their inserts wait on each other's unique keys, a deadlock unless the
    writes are ordered. Every call must succeed, with one id per key."""
    keys = [f"overlap-{n}" for n in range(400)]
    message = {k: {"to": f"7916{n:07d}", "text": f"overlap {n}", "key": k} for n, k in enumerate(keys)}

    def order(call: int) -> list[str]:
        shift = call * len(keys) // 8
        rotated = keys[shift:] + keys[:shift]
        return rotated if call % 2 else rotated[::-1]

    start = threading.Barrier(8)

    def post(call: int) -> requests.Response:
        body = {"messages": [message[k] for k in order(call)]}
        start.wait()
        return requests.post(f"{api.url}/v1/messages", json=body, headers=api.auth, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))
    ids: dict[str, set[str]] = {}
    for call, reply in enumerate(replies):
        assert reply.status_code == 201, reply.text[:500]
        for k, mid in zip(order(call), reply.json()["ids"], strict=True):
            ids.setdefault(k, set()).add(mid)
    assert len(ids) == len(keys) and all(len(v) == 1 for v in ids.values())


def test_a_fault_of_ours_is_a_json_500_logged_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real fault: the ledger's database does not answer (nothing listens on its
    port). The client gets the documented JSON, the log gets the traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    path = tmp_path / "smsdispatch.toml"
    table = {"database_url": f"postgresql+psycopg://postgres@127.0.0.1:{dead_port}/none",
             "broker_url": "redis://127.0.0.1:1/0", "api": {"token": TOKEN},
             "providers": {"prostor": {"kind": "prostor", "login": "l", "password": "secret-pass-9",
                                       "base_url": "http://127.0.0.1:1"}}}  # fmt: skip
    path.write_text(config.to_toml(table), encoding="utf-8")
    previous = config.get_settings()
    settings_ = config.load(path, env={})
    config.set_settings(settings_)
    try:
        client = TestClient(create_app(settings_))  # raises what the app lets out
        with caplog.at_level(logging.ERROR, logger="smsdispatch.http"):
            reply = client.get("/v1/messages", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        config.set_settings(previous)
    assert reply.status_code == 500
    assert reply.json() == {"error": {"field": None, "reason": "internal error"}}
    assert "Traceback" not in reply.text and "psycopg" not in reply.text
    assert any(r.name == "smsdispatch.http" and r.exc_info for r in caplog.records)
