"""Flower on the real Redis, behind basic auth from the config, showing no secrets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(stack.config_path)}
    env.pop("FLOWER_BASIC_AUTH", None)
    log = (stack.tmp / "flower.log").open("wb")
    flower = subprocess.Popen(
        host_argv(FLOWER, f"--port={port}", "--address=127.0.0.1"),
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.3)
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
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(10)
