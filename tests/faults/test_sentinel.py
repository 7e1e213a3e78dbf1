"""No single Redis to lose: the whole stack on Redis Sentinel (a master, a replica, three
sentinels of the test's own), the master killed with SIGKILL mid-run.

Real Celery send workers, a beat of its own, a poll/control worker, the HTTP API and a
producer process keep going while the sentinels promote the replica; every message
must reach its final status and no phone may get anything twice. It prints a FAULT line
with the figures the README quotes:

    .venv/bin/pytest -s -m faults tests/faults/test_sentinel.py
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
import requests

from dispatcher import config, db
from dispatcher.redis_conn import client_for
from dispatcher.simulator.core import Simulator
from tests.faults import producer
from tests.faults.servers import OwnPostgres, OwnSentinels, free_port
from tests.host_commands import API, host_argv
from tests.support import ROOT, SETTLED, Stack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

TOKEN = "sentinel-fault-token"
FINAL = SETTLED - {"accepted", "sent"}  # polled to the end: beat and the pollers went on
PROVIDERS = ("prostor", "smstele")


@pytest.fixture
def ha(sim: Simulator, tmp_path: Path) -> Iterator[tuple[Stack, OwnSentinels]]:
    group = OwnSentinels(tmp_path / "redis-ha")
    postgres = OwnPostgres()
    try:
        group.start()
        postgres.start()
        stack = Stack(sim, tmp_path, "postgres", redis_url=group.url, db_url=postgres.url)
        try:
            yield stack, group
        finally:
            stack.stop()
    finally:
        config.set_settings(None)
        db.dispose_engines()
        group.stop()
        postgres.stop()


class ApiClient:
    """An application posting one message every ``every`` seconds through the HTTP
    API, every other one a one-time code pinned to SMStele, until stopped. Keeps each
    id, and every failure (an answer that is not 201, or none)."""

    def __init__(self, port: int, every: float = 0.2) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/messages"
        self.every = every
        self.ids: list[str] = []
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ApiClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.is_set():
            n += 1
            body: dict[str, Any] = {"to": f"7918{n:07d}", "text": f"api {n}"}
            if n % 2:
                body.update(priority="high", provider="smstele")
            began = time.monotonic()
            try:
                reply = session.post(
                    self.url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
                )
                if reply.status_code == 201:
                    self.ids.append(reply.json()["id"])
                else:
                    self.failures.append(f"{reply.status_code} {reply.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.slowest = max(self.slowest, time.monotonic() - began)
            self._stop.wait(max(0.0, self.every - (time.monotonic() - began)))


def start_api(stack: Stack, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(stack.config_path)}
    log = (stack.tmp / "api.log").open("wb")
    proc = subprocess.Popen(
        host_argv(API, "--host", "127.0.0.1", "--port", str(port)),
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError("the API did not start")


def accepted_times(ids: list[str]) -> list[tuple[datetime, datetime | None]]:
    """(created_at, accepted_at) of each message, as aware UTC times."""
    from sqlalchemy import select

    from dispatcher.models import MESSAGES

    def aware(t: datetime | None) -> datetime | None:
        return None if t is None else (t if t.tzinfo else t.replace(tzinfo=UTC))

    rows: list[tuple[datetime, datetime | None]] = []
    with db.session_scope() as s:
        for start in range(0, len(ids), 500):
            query = select(MESSAGES.c.created_at, MESSAGES.c.accepted_at).where(
                MESSAGES.c.id.in_(ids[start : start + 500])
            )
            for created, accepted in s.execute(query):
                rows.append((aware(created) or created, aware(accepted)))
    return rows


def test_master_killed_mid_run(ha: tuple[Stack, OwnSentinels], sim: Simulator, tmp_path: Path) -> None:
    """Given the stack on a sentinel URL, producers and the API sending, when the
    master is killed with SIGKILL, then after the sentinels promote the replica the
    workers, beat and the API go on: every message ends final in the ledger, what the
    providers took is what the ledger says, and nothing reached a phone twice."""
    stack, group = ha
    api_port = free_port()
    stack.configure(
        providers=list(PROVIDERS),
        pipeline={"publish_batch": 20},
        sections={"api": {"token": TOKEN, "port": api_port}},
    )
    for name in PROVIDERS:
        sim[name].state.faults.latency_ms = 30
    # Beat alone in a process (as deployed), polls and the sweeper in a worker of their
    # own, two send workers: every kind of process has to find the new master.
    stack.start_beat()
    stack.start_worker(queues="sms.control,sms.poll", concurrency=2)
    for _ in range(2):
        stack.start_worker(queues="sms.high,sms.bulk", concurrency=2)
    api = start_api(stack, api_port)
    stack.workers.append(api)  # stopped with the workers
    out = tmp_path / "produced.txt"
    started = time.monotonic()
    feeder = producer.start(stack.config_path, rate=40, seconds=10, out=out)
    client = ApiClient(api_port).start()

    # When: the master dies three seconds in.
    time.sleep(3)
    killed_at, killed_wall = time.monotonic(), datetime.now(UTC)
    group.kill_master()
    group.wait_promoted()
    failover = time.monotonic() - killed_at

    feeder.wait(60)
    client.stop()
    produced = [mid for _, mid in producer.read(out)]
    ids = produced + client.ids
    statuses = stack.wait_until(ids, FINAL, timeout=90)

    # Then
    received: dict[str, int] = {}
    duplicates = {}
    for name in PROVIDERS:
        stats = sim[name].state.stats()
        duplicates[name] = stats["duplicates"]
        for key, n in stats["received"].items():
            received[key] = received.get(key, 0) + n
    times = accepted_times(ids)
    after = [accepted for created, accepted in times if created >= killed_wall and accepted is not None]
    slowest = max((accepted - created).total_seconds() for created, accepted in times if accepted)
    figures = {
        "messages": len(ids),
        "via api": len(client.ids),
        "lost": sum(1 for mid in ids if statuses.get(mid) not in FINAL),
        "duplicates": sum(duplicates.values()),
        "failover s": round(failover, 2),
        "sending again after s": round((min(after) - killed_wall).total_seconds(), 2) if after else None,
        "slowest message s": round(slowest, 2),
        "slowest api call s": round(client.slowest, 2),
        "api failures": len(client.failures),
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"\nFAULT sentinel failover: {figures}")
    assert feeder.returncode == 0, (tmp_path / "produced.log").read_text()[-2000:]
    assert not client.failures, client.failures[:5]
    assert len(produced) >= 350 and len(client.ids) >= 30
    assert after, "no message stored after the kill was ever sent"
    assert figures["lost"] == 0, [(mid, statuses.get(mid)) for mid in ids if statuses.get(mid) not in FINAL][
        :10
    ]
    # A Redis failover costs no second SMS: claims and outcomes live in the ledger, and
    # a redelivered task (its ack lost with the old master) finds its messages taken.
    assert figures["duplicates"] == 0, duplicates
    # What the providers took is exactly what the ledger says they took.
    bodies = {f"7917{k:07d}|steady {k}" for k in range(1, len(produced) + 1)}
    bodies |= {f"7918{k:07d}|api {k}" for k in range(1, len(client.ids) + 1)}
    assert set(received) == bodies
    assert set(statuses.values()) == {"delivered"}, set(statuses.values())
    # `doctor` names the promoted replica as the master now.
    from dispatcher.ops import doctor_checks

    check = next(c for c in doctor_checks(config.get_settings()) if c["check"] == "broker")
    assert check["ok"] and f"127.0.0.1:{group.replica.port}" in check["detail"], check
    # Every process rode through it: none exited, none was restarted.
    for proc, log in zip(stack.workers, [*stack.logs, stack.tmp / "api.log"], strict=True):
        assert proc.poll() is None, f"{log.name} exited: {log.read_text(errors='replace')[-3000:]}"


@pytest.fixture
def group(tmp_path: Path) -> Iterator[OwnSentinels]:
    own = OwnSentinels(tmp_path / "redis-ha")
    try:
        yield own.start()
    finally:
        own.stop()


def test_a_consumer_closed_during_the_election_does_not_crash(
    group: OwnSentinels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery 5.7, on losing the broker, collects the connection and then closes it. If
    the channel's first close failed on the connection (its BRPOP read raised while
    the sentinels had no master yet), the second restored the unacked task through
    kombu's stock sentinel channel and died with AttributeError: the worker stopped
    (once in the first nine runs of the scenario above). dispatcher.broker's channel makes it a
    connection error, which Celery ignores; the task waits out the visibility
    timeout instead."""
    from kombu import Connection, Queue
    from kombu.common import ignore_errors

    from dispatcher import broker
    from dispatcher.redis_conn import celery_url, transport_options

    options = {**transport_options(group.url, 10, 3), "visibility_timeout": 15}
    conn = Connection(celery_url(group.url), transport_options=options)
    queue = Queue("sms.test")  # type: ignore[no-untyped-call]
    with conn.Producer() as producer:
        producer.publish({"n": 1}, routing_key="sms.test", declare=[queue])
    channel = conn.default_channel
    assert isinstance(channel, broker.SentinelChannel)
    taken: list[Any] = []
    conn.Consumer([queue], callbacks=[lambda body, message: taken.append(message)], accept=["json"]).consume()
    conn.drain_events(timeout=5)
    assert len(taken) == 1  # delivered, not acked
    # On the replica too, so that what follows is about kombu, not about replication
    # (which is asynchronous: a delivery just before the kill may be lost with it).
    assert client_for(group.url).wait(1, 5000) == 1

    group.kill_master()

    def no_master(self: Any) -> None:
        raise redis.exceptions.ConnectionError("No master found for 'smsd'")

    with monkeypatch.context() as patch:
        patch.setattr(broker.SentinelChannel, "close", no_master)
        conn.collect(socket_timeout=1)
    ignore_errors(conn, conn.close)  # raised AttributeError with kombu's own channel
    # The task is still in the unacked hash: restored after the visibility timeout.
    group.wait_promoted()
    assert client_for(group.url).hexists("unacked", taken[0].delivery_tag)


def test_a_lock_whose_replies_are_lost_is_taken_and_freed_once(
    group: OwnSentinels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master carries out a lock's SET and its release, and each reply is lost on
    the way back (the connection dropped: a master dying, a partition). The try again
    finds the lock taken by its own token and holds it, and the release tried again
    finds it already freed and answers True: no lock held with nobody to free it, and
    no false "ran past its run lock" for the holder (workers/tasks._done)."""
    from dispatcher import coordination

    coordinator = coordination.RedisCoordinator(group.url)
    client = coordinator.client
    key = f"{coordination.PREFIX}lock:lost-reply"
    client.delete(key)
    lose = {"SET", "EVALSHA"}  # the next reply of each is lost, once
    lost: list[str] = []
    original = client.parse_response

    def lossy(connection: Any, command_name: str, **options: Any) -> Any:
        reply = original(connection, command_name, **options)  # carried out and answered
        if command_name in lose:
            lose.discard(command_name)
            lost.append(command_name)
            raise redis.exceptions.ConnectionError(f"the reply to {command_name} was lost")
        return reply

    monkeypatch.setattr(client, "parse_response", lossy)
    lease = coordinator.acquire_lock("lost-reply", ttl=60)
    assert lost == ["SET"]
    assert lease is not None, "the lock its own lost SET took was left held by nobody"
    assert coordinator.acquire_lock("lost-reply", ttl=60) is None  # ours: held
    assert lease.release() is True  # freed by the try whose reply was lost
    assert lost == ["SET", "EVALSHA"]
    assert client.get(key) is None
    # Without a lost reply, a lock someone else took is still refused, and a release
    # of a lock that expired still answers False.
    other = coordinator.acquire_lock("lost-reply", ttl=0.2)
    assert other is not None and coordinator.acquire_lock("lost-reply", ttl=60) is None
    time.sleep(0.4)
    assert other.release() is False
