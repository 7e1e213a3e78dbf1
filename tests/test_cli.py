"""The command line, run as a user runs it: a subprocess against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dispatcher.simulator.core import Simulator
from tests.conftest import KINDS
from tests.host_commands import SIMULATOR, host_argv


def run(*args: str, config: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if config is not None:
        env["SMSDISPATCH_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_balance_json(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(sim.config_toml(), encoding="utf-8")
    sim["smska"].state.faults.auth_fail = True
    result = run("balance", "--json", config=path)
    assert result.returncode == 1, result.stderr  # one provider failed
    rows = {r["provider"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(KINDS)
    for row in rows.values():
        assert set(row) == {"provider", "kind", "balance", "currency", "error"}
    assert rows["prostor"]["balance"] == 100000.0 and rows["prostor"]["currency"] == "RUB"
    assert rows["smska"]["balance"] is None and rows["smska"]["error"].startswith("failover")
    assert rows["smstele"]["balance"] is None and "no balance" in rows["smstele"]["error"]
    human = run("balance", config=path)
    assert "prostor" in human.stdout and "100000.00" in human.stdout


def test_balance_all_good_exits_zero(sim: Simulator, tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(sim.config_toml(), encoding="utf-8")
    assert run("balance", config=path).returncode == 0


def test_config_error_exit_code_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[providers.x]\nkind = "prostor"\nbase_url = "http://h/"\nlogin = "l"\n', encoding="utf-8"
    )
    result = run("balance", config=path)
    assert result.returncode == 3
    assert "providers.x.password" in result.stderr


def test_simulator_command_serves_and_writes_config(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    proc = subprocess.Popen(
        host_argv(SIMULATOR, "--host", "127.0.0.1", "--base-port", "0", "--write-config", str(path),
                  "--fault", "smska:latency_ms=5", "--duration", "30"),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert path.exists()
        result = run("balance", "--json", config=path)
        assert result.returncode == 0, result.stderr
        faults = run("fault", "smska", "error_rate=0.5", "--json", config=path)
        assert json.loads(faults.stdout)[0]["state"]["error_rate"] == 0.5
        assert json.loads(faults.stdout)[0]["state"]["latency_ms"] == 5.0
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
