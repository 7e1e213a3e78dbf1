"""The command line, run as a user runs it: a subprocess against the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dispatcher.config import to_toml
from dispatcher.simulator.core import Simulator
from tests.conftest import KINDS, sim_table
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


# -- every refusal is one line with a documented exit code (issue 12, item 8) ----------


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command; a traceback or a second line fails."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("smsdispatch: "), lines[0]
    return lines[0]


def backend_config(tmp_path: Path, sim: Simulator, **urls: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(to_toml({**sim_table(sim), **urls}), encoding="utf-8")
    return path


DB_DOWN = "postgresql+psycopg://smsuser:s3cretpass@127.0.0.1:1/ledger"  # nothing listens on port 1
BROKER_DOWN = "redis://:br0kerpass@127.0.0.1:1/0"


def test_database_down_exits_4_naming_it_without_the_password(sim: Simulator, tmp_path: Path) -> None:
    path = backend_config(tmp_path, sim, database_url=DB_DOWN)
    for args in (["status", "x"], ["list"], ["cancel", "x"], ["retry", "x"], ["providers"],
                 ["send", "--to", "79161234567", "--text", "hi"]):  # fmt: skip
        result = run(*args, config=path)
        assert result.returncode == 4, (args, result.stderr)
        line = refusal(result)
        assert "the database is unreachable (postgresql+psycopg://smsuser:***@127.0.0.1:1/ledger)" in line
        assert "s3cretpass" not in line and "connection refused" in line.lower()


def test_unreadable_sqlite_path_exits_4(sim: Simulator, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/ledger.db"
    result = run("list", config=backend_config(tmp_path, sim, database_url=url))
    assert result.returncode == 4
    assert (
        refusal(result) == f"smsdispatch: the database is unreachable ({url}): unable to open database file"
    )


def test_a_file_that_is_not_a_database_is_a_configuration_error(sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "ledger.db").write_text("not a database, a note\n" * 100, encoding="utf-8")
    result = run("list", config=backend_config(tmp_path, sim, database_url=f"sqlite:///{tmp_path}/ledger.db"))
    assert result.returncode == 3
    assert "is not an SQLite database" in refusal(result)


def test_broker_down_exits_4_for_what_needs_it(sim: Simulator, tmp_path: Path) -> None:
    path = backend_config(
        tmp_path, sim, database_url=f"sqlite:///{tmp_path}/ledger.db", broker_url=BROKER_DOWN
    )
    result = run("providers", config=path)  # breaker states live in Redis
    assert result.returncode == 4
    line = refusal(result)
    assert "the broker is unreachable (redis://:***@127.0.0.1:1/0)" in line and "br0kerpass" not in line
    # A send is stored all the same (the sweeper publishes it later): exit 0, one warning.
    sent = run("send", "--to", "79161234567", "--text", "stored, published later", config=path)
    assert sent.returncode == 0 and len(sent.stdout.split()) == 1
    warning = refusal(sent)
    assert "stored but not published" in warning and "sweeper will publish" in warning


def test_unexpected_error_is_one_line_and_the_traceback_only_with_verbose(
    sim: Simulator, tmp_path: Path
) -> None:
    """A provider base_url that answers 200 but is no simulator: `fault` cannot read the
    reply. Nothing we classify, so: exit 1, one line, the traceback on -v."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotASimulator(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotASimulator)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        table = sim_table(sim)
        table["providers"]["prostor"]["base_url"] = f"http://127.0.0.1:{server.server_port}/"
        path = tmp_path / "c.toml"
        path.write_text(to_toml(table), encoding="utf-8")
        result = run("fault", "prostor", "latency_ms=5", config=path)
        assert result.returncode == 1
        line = refusal(result)
        assert line.startswith("smsdispatch: unexpected error: ") and line.endswith(
            "(run with -v for the traceback)"
        )
        verbose = run("-v", "fault", "prostor", "latency_ms=5", config=path)
        assert verbose.returncode == 1 and "Traceback" in verbose.stderr
        assert verbose.stderr.splitlines()[-1].startswith("smsdispatch: unexpected error: ")
    finally:
        server.shutdown()


def test_bad_simulator_timing_is_bad_input() -> None:
    result = run("simulator", "--base-port", "0", "--timing", "sent_after=soon", "--duration", "1")
    assert result.returncode == 2
    assert refusal(result) == "smsdispatch: invalid --timing sent_after: not a number of seconds: 'soon'"


def test_bulk_file_problems_exit_2_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    result = run("bulk", str(missing))
    assert result.returncode == 2
    assert refusal(result) == f"smsdispatch: {missing}: no such file"

    result = run("bulk", str(tmp_path))
    assert result.returncode == 2
    assert refusal(result) == f"smsdispatch: {tmp_path}: is a directory, not a file"

    latin = tmp_path / "cp1251.csv"  # what a Russian Excel saves as "CSV"
    latin.write_bytes("to,text\n79161234567,hello\n79161234568,Привет\n".encode("cp1251"))
    result = run("bulk", str(latin))
    assert result.returncode == 2
    assert (
        refusal(result) == f"smsdispatch: {latin}: line 3: not UTF-8 text (byte 0xcf); save the file as UTF-8"
    )

    utf16 = tmp_path / "utf16.csv"
    utf16.write_text("to,text\n79161234567,hi\n", encoding="utf-16")
    result = run("bulk", str(utf16))
    assert result.returncode == 2
    assert refusal(result) == f"smsdispatch: {utf16}: UTF-16 text; save the file as UTF-8"


def test_bulk_unreadable_file_exits_2(tmp_path: Path) -> None:
    locked = tmp_path / "locked.csv"
    locked.write_text("to,text\n79161234567,hi\n", encoding="utf-8")
    locked.chmod(0)
    argv = [sys.executable, "-m", "dispatcher.cli", "bulk", str(locked)]
    if os.geteuid() == 0:
        # root reads any file: drop the capabilities that let it, so the refusal is real.
        argv = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert refusal(result) == f"smsdispatch: {locked}: permission denied"
