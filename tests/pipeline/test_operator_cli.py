"""The operator commands, each with --json, as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from dispatcher import api
from dispatcher.simulator.core import Simulator
from tests.support import SETTLED, TAKEN, Stack, run_cli


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack.config_path, *args)


def test_bulk_csv_list_cancel_retry(stack: Stack, sim: Simulator, tmp_path: Path) -> None:
    stack.configure(providers=["prostor"])
    csv = tmp_path / "load.csv"
    csv.write_text(
        "to,text,key\n+7 916 000-00-01,Первое,k1\n89160000002,Второе,k2\n79160000003,Третье,\n",
        encoding="utf-8",
    )
    result = cli(stack, "bulk", str(csv), "--json")
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)["ids"]
    assert len(ids) == 3
    listed = json.loads(cli(stack, "list", "--status", "queued", "--json").stdout)
    assert {m["id"] for m in listed} == set(ids)
    assert json.loads(cli(stack, "list", "--status", "delivered", "--json").stdout) == []

    cancelled = cli(stack, "cancel", ids[0], "--json")
    assert cancelled.returncode == 0
    assert json.loads(cancelled.stdout) == {
        "id": ids[0], "done": True, "outcome": "cancelled", "from": "queued", "status": "failed",
        "reason": "cancelled by the operator",
    }  # fmt: skip
    again = cli(stack, "cancel", ids[0], "--json")
    assert again.returncode == 1 and "only queued, scheduled or sending" in again.stderr

    stack.start_worker()
    assert set(stack.wait_until(ids[1:], SETTLED).values()) <= TAKEN
    assert cli(stack, "retry", ids[1]).returncode == 1  # accepted: nothing to retry
    retried = cli(stack, "retry", ids[0], "--json")  # the cancelled (failed) one
    assert json.loads(retried.stdout)["from"] == "failed"
    assert stack.wait_until([ids[0]], SETTLED)[ids[0]] in TAKEN
    events = [e["source"] for e in (api.get_message(ids[0]) or {})["events"]]
    assert events.count("operator") == 2


def test_bulk_bad_line_stores_nothing(stack: Stack, tmp_path: Path) -> None:
    stack.configure(providers=["prostor"])
    csv = tmp_path / "bad.csv"
    csv.write_text("to,text\n79160000001,ok\n12345,bad\n", encoding="utf-8")
    result = cli(stack, "bulk", str(csv))
    assert result.returncode == 2
    assert "line 3: to:" in result.stderr
    assert json.loads(cli(stack, "list", "--json").stdout) == []
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("to,txt\n79160000001,ok\n", encoding="utf-8")
    assert "column 'txt'" in cli(stack, "bulk", str(unknown)).stderr


def test_doctor_says_what_is_wrong(stack: Stack, sim: Simulator) -> None:
    stack.configure(providers=["prostor", "smstele"])
    sim["smstele"].state.faults.auth_fail = True
    result = cli(stack, "doctor", "--json")
    assert result.returncode == 1
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert checks["database"]["ok"] and checks["broker"]["ok"]
    assert checks["provider prostor"]["ok"] and "balance" in checks["provider prostor"]["detail"]
    assert not checks["provider smstele"]["ok"] and "-23" in checks["provider smstele"]["detail"]
    assert not checks["workers"]["ok"] and "no sweep ran" in checks["workers"]["detail"]
    sim["smstele"].state.faults.auth_fail = False
    stack.start_worker(beat=True)
    import time

    time.sleep(2.5)
    result = cli(stack, "doctor", "--json")
    assert result.returncode == 0, result.stdout


def test_providers_json(stack: Stack) -> None:
    stack.configure(providers=["prostor", "mysms"], mysms={"rate_limit": 5})
    rows = json.loads(cli(stack, "providers", "--json").stdout)
    assert [r["provider"] for r in rows] == ["prostor", "mysms"]
    assert rows[1]["rate_limit"] == 5.0 and rows[0]["breaker"] == "closed"
