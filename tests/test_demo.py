"""The README's first command: the demo, small, in CI; its exit code is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import KINDS

ROOT = Path(__file__).parent.parent


def test_demo_embedded_small_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSDISPATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "demo", "--messages", "200", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    # 200 of the mixed load, and the client "shop"'s 11
    assert data["mode"] == "embedded" and data["messages"] == 211 and data["lost"] == 0
    assert data["outage"].startswith("sms1000")
    rows = {r["provider"]: r for r in data["providers"]}
    assert set(rows) == set(KINDS)
    assert all(r["accepted"] > 0 for r in rows.values())  # equal priority: all five carry traffic
    assert sum(r["delivered"] for r in rows.values()) > 150
    for row in rows.values():
        assert {"retries", "failovers", "p50_accepted_s", "p95_accepted_s", "p50_delivered_s"} <= set(row)
    # What the providers reported counting and charging, summed per provider (prostor and
    # 1000sms.ru report both per message).
    assert rows["prostor"]["parts"] >= rows["prostor"]["accepted"] > 0 and rows["prostor"]["cost"] > 0
    assert rows["sms1000"]["cost"] > 0
    # The client "shop": every status change of its messages reached its receiver,
    # signed; its advert to the number on the stop list was refused with "stopped".
    hooks = data["callbacks"]
    assert hooks["missing"] == [] and hooks["all_signed"] and hooks["stopped"] == "rejected"
    assert hooks["received"] >= 2 * hooks["messages"] - 1
    assert any("rejected" in line and "error stopped" in line for line in hooks["lines"])


def test_demo_on_celery_workers_with_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSDISPATCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", "demo", "--messages", "100", "--workers", "2", "--no-outage",
         "--broker", "redis://127.0.0.1:6379/13", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    assert data["mode"] == "celery" and data["lost"] == 0
