"""The bare-task peer of ``ops/bench.py``: a plain Celery app with one task that makes one
HTTP POST to the provider simulator's send endpoint, the least a Celery user could write.

    celery -A ops.bench_baseline worker -Q bench.peer -P threads -c 50

What it does per task, and nothing else: build the send request of one provider kind
exactly as the provider document (and so the simulator) wants it, POST it over a
module-level keep-alive ``requests.Session``, check that the reply says success, and
count the messages done in Redis (``bench:peer:done``; the ones the reply refused are also
counted in ``bench:peer:failed``). There is no ledger, no retry, no status tracking: it
is the ceiling of "Celery + one HTTP call" on this machine, pool and Redis.

Environment (set by ``ops/bench.py``):

- ``BENCH_PEER_BROKER``: its own Redis database (default ``redis://127.0.0.1:6379/12``);
- ``BENCH_PEER_SIM_CONFIG``: the smsdispatch TOML the simulator wrote
  (``--write-config``), for each kind's base URL, login, password and sender.

A task is ``bench.peer.send(kind, items)`` with ``items`` a list of
``[client_id, phone, text]``: one item for a per-message provider, up to 200 for prostor's
``send.json`` (one call either way).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import redis
import requests
from celery import Celery
from requests.adapters import HTTPAdapter

BROKER = os.environ.get("BENCH_PEER_BROKER", "redis://127.0.0.1:6379/12")
SIM_CONFIG = os.environ.get("BENCH_PEER_SIM_CONFIG", "")
QUEUE = "bench.peer"
TASK = "bench.peer.send"
DONE_KEY = "bench:peer:done"
FAILED_KEY = "bench:peer:failed"

app = Celery("bench-peer", broker=BROKER)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # kombu's Redis channel allows 10 connections by default; with a green pool Celery 5.7
    # acks from each task's greenlet at once, and past 10 the ack fails ("Couldn't ack ...
    # MaxConnectionsError"), the consumer reconnects and the unacked tasks run again.
    broker_transport_options={"max_connections": 256},
)

# Keep-alive, no urllib3 retries, a pool as large as any concurrency we run, so that no
# thread ever waits for or throws away a connection.
SESSION = requests.Session()
SESSION.mount("http://", HTTPAdapter(pool_connections=8, pool_maxsize=128, max_retries=0))
_redis = redis.Redis.from_url(BROKER)
_providers: dict[str, dict[str, Any]] = {}


def provider_table(kind: str) -> dict[str, Any]:
    """The simulator's provider instance of ``kind`` from the written config."""
    if not _providers:
        if not SIM_CONFIG:
            raise RuntimeError("BENCH_PEER_SIM_CONFIG is not set")
        table = tomllib.loads(Path(SIM_CONFIG).read_text(encoding="utf-8"))
        for name, provider in table.get("providers", {}).items():
            _providers.setdefault(str(provider.get("kind", name)), provider)
    return _providers[kind]


def build_request(kind: str, items: list[list[str]]) -> dict[str, Any]:
    """Keyword arguments of ``Session.request`` for one send call (the wire format of
    ``dispatcher/providers/<kind>.py`` ``build_send``, in its default options)."""
    p = provider_table(kind)
    url, login, password, sender = p["base_url"], p["login"], p["password"], p.get("sender") or "SmsDemo"
    if kind == "smska":  # form fields, the base URL is the endpoint
        _, phone, text = items[0]
        data = {
            "APIKey": login,
            "APIPassword": password,
            "SenderID": sender,
            "MSISDN": phone,
            "Message": text,
        }
        return {"method": "POST", "url": url, "data": data}
    if kind == "sms1000":  # form fields, method=push_msg, JSON replies
        _, phone, text = items[0]
        data = {
            "method": "push_msg",
            "email": login,
            "password": password,
            "text": text,
            "phone": phone,
            "sender_name": sender,
            "format": "json",
        }
        return {"method": "POST", "url": url, "data": data}
    if kind == "mysms":  # POST JSON to send/json, a `data` array
        body: dict[str, Any] = {
            "auth": {"username": login, "password": password},
            "data": [{"source": sender, "destination": phone, "text": text} for _, phone, text in items],
        }
        return {"method": "POST", "url": url.rstrip("/") + "/send/json", "json": body}
    if kind == "prostor":  # POST JSON to send.json, up to 200 messages
        messages = [
            {"phone": "+" + phone, "clientId": cid, "text": text, "sender": sender}
            for cid, phone, text in items
        ]
        body = {"login": login, "password": password, "messages": messages, "showBillingDetails": True}
        if p.get("status_queue"):
            body["statusQueueName"] = p["status_queue"]
        return {"method": "POST", "url": url.rstrip("/") + "/send.json", "json": body}
    raise ValueError(f"no bare request for provider kind {kind!r}")


def accepted(kind: str, reply: requests.Response) -> bool:
    """True when the reply says every message of the call was taken."""
    if reply.status_code != 200:
        return False
    if kind == "smska":
        return reply.content.startswith(b"0|")
    try:
        doc = json.loads(reply.content)
    except ValueError:
        return False
    if kind == "sms1000":
        return str(doc.get("msg", {}).get("err_code")) == "0"
    if kind == "mysms":
        return str(doc.get("state")) == "0" and all(
            not str(m.get("state", "-")).startswith("-") for m in doc.get("data") or [{}]
        )
    if kind == "prostor":
        return doc.get("status") == "ok" and all(
            m.get("status") == "accepted" for m in doc.get("messages", [])
        )
    return False


@app.task(name=TASK, acks_late=True)  # type: ignore[untyped-decorator]
def send(kind: str, items: list[list[str]]) -> None:
    """One provider call for ``items``, then count them done (and failed if refused)."""
    try:
        ok = accepted(kind, SESSION.request(**build_request(kind, items), timeout=(3.0, 10.0)))
    except requests.RequestException:
        ok = False
    with _redis.pipeline(transaction=False) as pipe:
        pipe.incrby(DONE_KEY, len(items))
        if not ok:
            pipe.incrby(FAILED_KEY, len(items))
        pipe.execute()
