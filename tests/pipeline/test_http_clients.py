"""Clients' keys in the HTTP API, over real HTTP on SQLite and PostgreSQL: what each
key sees, revocation on every API process at once, senders and quota, search with
cursors, the stop list's endpoints, and the callback outbox in /metrics."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import uvicorn

from dispatcher import api as producer_api
from dispatcher import config
from dispatcher.clients import create_client, revoke_client
from dispatcher.db import session_scope
from dispatcher.http_api import create_app
from tests.host_commands import API, host_argv
from tests.support import ROOT, Stack

TOKEN = "api-clients-token-8c1d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Key:
    url: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def post(self, body: Any, **headers: str) -> requests.Response:
        return requests.post(
            f"{self.url}/v1/messages", json=body, headers={**self.headers, **headers}, timeout=30
        )

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", params=params, headers=self.headers, timeout=30)

    def stop(self, body: Any) -> requests.Response:
        return requests.post(f"{self.url}/v1/stop-list", json=body, headers=self.headers, timeout=30)

    def unstop(self, to: str) -> requests.Response:
        return requests.delete(f"{self.url}/v1/stop-list/{to}", headers=self.headers, timeout=30)


@dataclass
class Served:
    stack: Stack
    url: str
    keys: dict[str, str]  # client name -> key

    def key(self, name: str) -> Key:
        return Key(self.url, TOKEN if name == "operator" else self.keys[name])


@pytest.fixture
def served(any_stack: Stack) -> Iterator[Served]:
    any_stack.configure(
        providers=["prostor"], sections={"api": {"token": TOKEN}, "callbacks": {"allow_private": True}}
    )
    # Nothing consumes in these tests: new messages stay in the ledger, off the broker.
    producer_api.use_publisher(lambda due: None)
    keys: dict[str, str] = {}
    with session_scope() as s:
        for name, senders, quota in (("acme", ("ACME",), None), ("acme-eu", ("ACMEEU",), None),
                                     ("beta", ("BETA", "BETAPROMO"), 3)):  # fmt: skip
            _, keys[name], _ = create_client(s, name, senders=senders, daily_quota=quota)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(config.get_settings()), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield Served(any_stack, f"http://127.0.0.1:{port}", keys)
    server.should_exit = True
    thread.join(10)
    producer_api.use_publisher(None)


def error_of(reply: requests.Response, status: int, field: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and body["error"]["field"] == field and body["error"]["reason"], reply.text
    return dict(body["error"])


def test_a_client_sees_only_its_own_messages(served: Served) -> None:
    acme, beta, operator = served.key("acme"), served.key("beta"), served.key("operator")
    mine = acme.post({"to": "+7 916 100-00-01", "text": "acme's"})
    assert mine.status_code == 201, mine.text
    theirs = beta.post({"to": "79161000002", "text": "beta's", "sender": "BETA"}).json()["id"]
    ours = operator.post({"to": "79161000003", "text": "the operator's"}).json()["id"]
    own = mine.json()["id"]

    message = acme.get(f"/v1/messages/{own}")
    assert message.status_code == 200 and message.json()["client"] == "acme"
    missing = error_of(acme.get("/v1/messages/0123456789abcdef0123456789abcdef"), 404, "message_id")
    for other in (theirs, ours):
        hidden = error_of(acme.get(f"/v1/messages/{other}"), 404, "message_id")
        # The same answer as an id that does not exist: nothing tells them apart.
        assert hidden["reason"] == missing["reason"].replace("0123456789abcdef0123456789abcdef", other)
    for mid in (own, theirs, ours):
        assert operator.get(f"/v1/messages/{mid}").status_code == 200

    listed = acme.get("/v1/messages").json()
    assert [m["id"] for m in listed["messages"]] == [own] and listed["next"] is None
    assert [m["id"] for m in acme.get("/v1/messages", client="acme").json()["messages"]] == [own]
    error_of(acme.get("/v1/messages", client="beta"), 422, "client")
    # A number the client never sent to, or another's message by its key: nothing.
    assert acme.get("/v1/messages", to="79161000002").json()["messages"] == []
    everything = {m["id"] for m in operator.get("/v1/messages").json()["messages"]}
    assert everything == {own, theirs, ours}
    assert [m["id"] for m in operator.get("/v1/messages", client="beta").json()["messages"]] == [theirs]
    # The operator's own routes are not a client's.
    error_of(acme.get("/v1/providers"), 403, "authorization")
    assert operator.get("/v1/providers").status_code == 200


def test_unknown_keys_are_refused_and_never_echoed(served: Served) -> None:
    forged = "sdk_" + "x" * 43
    for key in (forged, served.keys["acme"] + "x", served.keys["acme"][:-1], "sdk_", TOKEN + "x"):
        reply = requests.get(
            f"{served.url}/v1/messages", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        error = error_of(reply, 401, "authorization")
        assert key not in reply.text and reply.headers["WWW-Authenticate"] == "Bearer", error
    # Key-shaped values are read from the header only, never from the query.
    reply = requests.get(f"{served.url}/v1/messages", params={"api_key": served.keys["acme"]}, timeout=10)
    error_of(reply, 401, "authorization")


def test_a_revoked_key_is_refused_by_the_next_request_on_every_api_process(served: Served) -> None:
    """Two `smsdispatch api` processes on the same ledger: the key is revoked between
    two requests, and each process refuses the very next one."""
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(served.stack.config_path)}
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(host_argv(API, "--host", "127.0.0.1", "--port", str(port)), cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        for port in ports
    ]  # fmt: skip
    try:
        keys = [Key(f"http://127.0.0.1:{port}", served.keys["acme"]) for port in ports]
        for key in keys:
            deadline = time.monotonic() + 30
            while True:
                try:
                    reply = key.get("/v1/messages")
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, "the API did not start"
                    time.sleep(0.2)
            assert reply.status_code == 200, reply.text
        # Each process has answered this key: were anything cached, it would be now.
        sent = keys[0].post({"to": "79161000004", "text": "before the revoke"})
        assert sent.status_code == 201, sent.text
        assert keys[1].get(f"/v1/messages/{sent.json()['id']}").status_code == 200
        with session_scope() as s:
            assert revoke_client(s, "acme")
        for key in keys:
            error_of(key.get("/v1/messages"), 401, "authorization")
            error_of(key.post({"to": "79161000004", "text": "after"}), 401, "authorization")
        # Another client and the operator are untouched.
        assert Key(keys[1].url, served.keys["beta"]).get("/v1/messages").status_code == 200
        assert Key(keys[0].url, TOKEN).get("/v1/messages").status_code == 200
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(15)
            assert proc.stderr is not None
            log = proc.stderr.read().decode(errors="replace")
            assert served.keys["acme"] not in log and served.keys["acme"][4:] not in log


def test_senders_defaults_and_the_daily_quota(served: Served) -> None:
    acme, beta = served.key("acme"), served.key("beta")
    # One sender: it is the default.
    created = acme.post({"to": "79161000005", "text": "default sender"})
    assert created.status_code == 201, created.text
    assert acme.get(f"/v1/messages/{created.json()['id']}").json()["sender"] == "ACME"
    error_of(acme.post({"to": "79161000005", "text": "x", "sender": "BETA"}), 422, "sender")
    bulk = acme.post({"messages": [{"to": "79161000005", "text": "ok"},
                                   {"to": "79161000006", "text": "x", "sender": "OTHER"}]})  # fmt: skip
    error_of(bulk, 422, "messages[1].sender")
    # The fields a message may carry for its callbacks and quiet hours reach the ledger.
    hooked = acme.post({"to": "79161000005", "text": "hooked", "callback_url": "http://127.0.0.1:9/hook",
                        "tz": "Asia/Yekaterinburg"})  # fmt: skip
    assert hooked.status_code == 201, hooked.text
    assert acme.get(f"/v1/messages/{hooked.json()['id']}").json()["callback_url"] == "http://127.0.0.1:9/hook"
    # A client key cannot name a Celery task to be published on our broker.
    tasked = acme.post(
        {"messages": [{"to": "79161000005", "text": "task", "callback_task": "billing.credit_account"}]}
    )
    error_of(tasked, 422, "messages[0].callback_task")
    error_of(acme.post({"to": "79161000005", "text": "t", "callback_task": "x.y"}), 422, "callback_task")
    error_of(acme.post({"to": "79161000005", "text": "x", "tz": "x" * 65}), 422, "tz")

    # Two senders: none is the default, each of them may be named.
    assert beta.post({"to": "79161000007", "text": "promo", "sender": "BETAPROMO"}).status_code == 201
    assert beta.post({"messages": [{"to": "79161000007", "text": f"b {n}", "sender": "BETA"}
                                   for n in range(2)]}).status_code == 201  # fmt: skip
    over = beta.post({"to": "79161000007", "text": "one too many", "sender": "BETA"})
    error = error_of(over, 429, "daily_quota")
    assert error["code"] == "quota" and set(error) == {"field", "reason", "code"}
    retry_after = int(over.headers["Retry-After"])
    assert 1 <= retry_after <= 25 * 3600
    # Nothing of the refused call was stored, and the other client is unaffected.
    assert len(served.key("operator").get("/v1/messages", client="beta").json()["messages"]) == 3
    assert acme.post({"to": "79161000005", "text": "still fine"}).status_code == 201


def test_search_by_recipient_key_and_client_with_cursor_pages(served: Served) -> None:
    acme, operator = served.key("acme"), served.key("operator")
    first = acme.post({"to": "+7 916 555-44-33", "text": "one", "key": "acme-order-1"}).json()["id"]
    second = acme.post({"to": "89165554433", "text": "two"}).json()["id"]
    operator.post({"to": "79165554433", "text": "the operator's, same number"})
    for spelling in ("+7 916 555-44-33", "89165554433", "9165554433", "+7(916)5554433"):
        found = acme.get("/v1/messages", to=spelling).json()
        assert [m["id"] for m in found["messages"]] == [second, first], spelling
        assert len(operator.get("/v1/messages", to=spelling).json()["messages"]) == 3
    assert [m["id"] for m in acme.get("/v1/messages", key="acme-order-1").json()["messages"]] == [first]
    assert acme.get("/v1/messages", provider_message_id="none-yet").json() == {"messages": [], "next": None}
    error_of(acme.get("/v1/messages", to="12"), 422, "to")

    # 250 of acme's in pages of 100, while more of acme's and others' arrive in between.
    acme.post({"messages": [{"to": f"7916600{n:04d}", "text": f"p {n}"} for n in range(150)]})
    for n in range(98):
        acme.post({"to": f"7916700{n:04d}", "text": f"q {n}"})
    everything = [m["id"] for m in operator.get("/v1/messages", client="acme", limit=1000).json()["messages"]]
    assert len(everything) == 250
    walked: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100} if cursor is None else {"limit": 100, "cursor": cursor}
        page = acme.get("/v1/messages", **params)
        assert page.status_code == 200, page.text
        walked += [m["id"] for m in page.json()["messages"]]
        cursor = page.json()["next"]
        pages += 1
        acme.post({"to": "79167770000", "text": f"late {pages}"})
        served.key("beta").post({"to": "79167770000", "text": f"late {pages}", "sender": "BETA"})
        if cursor is None:
            break
    assert pages == 3 and walked == everything and len(set(walked)) == 250
    stamps = [
        m["created_at"] for m in operator.get("/v1/messages", client="acme", limit=1000).json()["messages"]
    ]
    assert stamps == sorted(stamps, reverse=True)

    _, token = acme.get("/v1/messages", limit=1).json().values()
    assert token
    middle = len(token) // 2
    tampered = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    rewritten = base64.urlsafe_b64encode(raw.replace(b'"i":"', b'"i":"0')).decode()
    for bad in (tampered, rewritten, token[:-2], "garbage", token + "%%"):
        error_of(acme.get("/v1/messages", cursor=bad), 422, "cursor")
    error_of(acme.get("/v1/messages", limit=1001), 422, "limit")
    error_of(acme.get("/v1/messages", limit=0), 422, "limit")


def test_stop_list_round_trip(served: Served) -> None:
    operator, acme, eu, beta = (served.key(n) for n in ("operator", "acme", "acme-eu", "beta"))
    added = operator.stop({"to": "+7 916 700-00-01", "scope": "all", "reason": "asked by phone"})
    assert added.status_code == 201, added.text
    entry = added.json()
    assert entry["phone"] == "79167000001" and entry["scope"] == "all" and entry["source"] == "operator"
    assert operator.stop({"to": "89167000001", "scope": "all"}).status_code == 200
    mine = acme.stop({"to": "8 916 700-00-02", "reason": "unsubscribed"})
    assert mine.status_code == 201 and mine.json()["source"] == "client:acme"
    assert beta.stop({"to": "79167000003"}).status_code == 201
    assert eu.stop({"to": "79167000004", "scope": "all"}).status_code == 201
    # A client adding a number listed by someone else: listed already, and it stays theirs.
    again = acme.stop({"to": "79167000001", "scope": "normal"})
    assert again.status_code == 200
    assert again.json() | {"created_at": None} == {
        "phone": "79167000001", "scope": "all", "source": None, "reason": None, "created_at": None,
    }  # fmt: skip

    # acme lists only its own (not acme-eu's, whose source begins the same).
    listed = acme.get("/v1/stop-list").json()
    assert [(e["phone"], e["source"], e["reason"]) for e in listed["entries"]] == [
        ("79167000002", "client:acme", "unsubscribed")
    ] and listed["next"] is None
    assert [e["phone"] for e in eu.get("/v1/stop-list").json()["entries"]] == ["79167000004"]
    everything = operator.get("/v1/stop-list").json()
    assert [(e["phone"], e["scope"], e["source"]) for e in everything["entries"]] == [
        ("79167000001", "all", "operator"), ("79167000002", "normal", "client:acme"),
        ("79167000003", "normal", "client:beta"), ("79167000004", "all", "client:acme-eu"),
    ]  # fmt: skip
    first = operator.get("/v1/stop-list", limit=3).json()
    assert [e["phone"] for e in first["entries"]] == ["79167000001", "79167000002", "79167000003"]
    assert first["next"] == "79167000003"
    rest = operator.get("/v1/stop-list", limit=3, after=first["next"]).json()
    assert [e["phone"] for e in rest["entries"]] == ["79167000004"] and rest["next"] is None

    # A client removes only its own; another's is the same 404 as a number not listed.
    for phone in ("79167000001", "79167000003", "79167000004", "79167000099"):
        error_of(acme.unstop(phone), 404, "to")
    assert acme.unstop("+7 916 700-00-02").status_code == 204
    error_of(acme.unstop("79167000002"), 404, "to")
    assert acme.get("/v1/stop-list").json() == {"entries": [], "next": None}
    assert operator.unstop("89167000003").status_code == 204
    assert operator.unstop("79167000004").status_code == 204
    assert [e["phone"] for e in operator.get("/v1/stop-list").json()["entries"]] == ["79167000001"]

    error_of(operator.stop({"to": "12"}), 422, "to")
    error_of(operator.stop({"to": "79167000005", "scope": "some"}), 422, "scope")
    error_of(operator.stop({"to": "79167000005", "reason": "a\x00b"}), 422, "reason")
    error_of(operator.stop({"to": "79167000005", "colour": "red"}), 422, "colour")
    error_of(operator.unstop("12"), 422, "to")
    error_of(operator.get("/v1/stop-list", after="7916x"), 422, "after")
    error_of(operator.get("/v1/stop-list", limit=1001), 422, "limit")
    error_of(requests.get(f"{served.url}/v1/stop-list", timeout=10), 401, "authorization")


def test_metrics_carry_the_callback_outbox(served: Served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{served.url}/metrics", timeout=10).text
    gauges = {f.name: f.samples[0].value for f in text_string_to_metric_families(text) if f.samples}
    for name in ("pending", "failing", "failed", "oldest_pending_seconds"):
        assert gauges[f"smsdispatch_callbacks_{name}"] >= 0, name
