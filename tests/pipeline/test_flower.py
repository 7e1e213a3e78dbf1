"""Flower on the real Redis, behind basic auth from the config, showing no secrets;
without auth, on the loopback interface only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from dispatcher import api, config
from dispatcher.simulator.defaults import password_for
from tests.host_commands import FLOWER, host_argv
from tests.support import ROOT, TAKEN, Stack


def test_flower_with_basic_auth_shows_tasks_without_secrets(stack: Stack) -> None:
    stack.configure(providers=["prostor", "mysms"])
    stack.table["flower"] = {"basic_auth": "ops:flower-pass-77"}
    stack.config_path.write_text(config.to_toml(stack.table), encoding="utf-8")
    config.set_settings(config.load(stack.config_path, env={}))
    stack.start_worker()  # with flower configured, workers send task events
    with running_flower(stack, "--address=127.0.0.1") as (url, _log):
        assert requests.get(f"{url}/api/workers", timeout=10).status_code == 401
        assert requests.get(f"{url}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
        auth = ("ops", "flower-pass-77")
        time.sleep(2)  # let Flower subscribe to events before the task runs
        mid = api.send_sms("79161234567", "seen in flower")
        assert stack.wait_until([mid], TAKEN, timeout=20)[mid] in TAKEN
        tasks: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not tasks:
            reply = requests.get(f"{url}/api/tasks", auth=auth, timeout=10)
            assert reply.status_code == 200
            tasks = {k: v for k, v in reply.json().items() if v.get("name") == "smsdispatch.send"}
            time.sleep(0.5)
        assert tasks, "flower saw no send task"
        shown = str(tasks)
        assert mid in shown
        for kind in ("prostor", "mysms"):
            assert password_for(kind) not in shown
        workers = requests.get(f"{url}/api/workers", auth=auth, timeout=10)
        assert workers.status_code == 200


@contextmanager
def running_flower(stack: Stack, *args: str) -> Iterator[tuple[str, Path]]:
    """A Flower process on a free port, with ``args``; yields its URL and its log."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(stack.config_path)}
    for name in ("FLOWER_BASIC_AUTH", "FLOWER_ADDRESS", "FLOWER_PORT", "FLOWER_AUTH"):
        env.pop(name, None)
    log_path = stack.tmp / f"flower-{port}.log"
    flower = subprocess.Popen(
        host_argv(FLOWER, f"--port={port}", *args),
        cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                assert flower.poll() is None, log_path.read_text()
                time.sleep(0.3)
        yield url, log_path
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(10)


def listening_addresses(port: int) -> set[str]:
    """The local addresses a socket listens on at ``port``, from the kernel's tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def test_flower_basic_auth_covers_metrics_and_healthcheck(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    stack.table["flower"] = {"basic_auth": "ops:flower-pass-78"}
    stack.config_path.write_text(config.to_toml(stack.table), encoding="utf-8")
    with running_flower(stack) as (url, log):
        for path in ("/metrics", "/healthcheck"):
            refused = requests.get(f"{url}{path}", timeout=10)
            assert refused.status_code == 401, (path, refused.text[:200])
            assert requests.get(f"{url}{path}", auth=("ops", "wrong"), timeout=10).status_code == 401
            allowed = requests.get(f"{url}{path}", auth=("ops", "flower-pass-78"), timeout=10)
            assert allowed.status_code == 200, (path, allowed.text[:200])
        assert "flower_events_total" in requests.get(f"{url}/metrics", auth=("ops", "flower-pass-78"),
                                                     timeout=10).text  # fmt: skip
        # With auth Flower listens where it is told (here every interface).
        port = int(url.rsplit(":", 1)[1])
        assert LOOPBACK_V4 not in listening_addresses(port)
        assert "without authentication" not in log.read_text()


def test_flower_without_auth_listens_on_loopback_only_and_warns(stack: Stack) -> None:
    stack.configure(providers=["prostor"])  # no [flower] basic_auth
    with running_flower(stack, "--address=0.0.0.0") as (url, log):
        assert requests.get(f"{url}/healthcheck", timeout=10).status_code == 200
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {LOOPBACK_V4}
        text = log.read_text()
        assert "Flower runs without authentication: it listens on 127.0.0.1 only (asked: 0.0.0.0)" in text
