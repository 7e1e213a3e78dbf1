"""The operator commands of issue 13 as a user runs them: clients, the stop list,
search, the callback outbox. Subprocesses against a SQLite ledger of their own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dispatcher.config import to_toml
from dispatcher.simulator.core import Simulator
from tests.conftest import sim_table
from tests.support import run_cli


@pytest.fixture
def cfg(sim: Simulator, tmp_path: Path) -> Path:
    """A config on a fresh, upgraded SQLite ledger; the broker is the in-process
    memory one, so `send` stores without a Redis (nothing consumes it here)."""
    path = tmp_path / "smsdispatch.toml"
    table = {
        **sim_table(sim),
        "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "broker_url": "memory://",
    }
    path.write_text(to_toml(table), encoding="utf-8")
    upgraded = run_cli(path, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    return path


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one stderr line of a refusal with exit ``code``."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_clients_add_shows_the_key_once_list_never_revoke(cfg: Path) -> None:
    made = json.loads(ok(run_cli(
        cfg, "clients", "add", "shop", "--sender", "ShopRu", "--sender", "Shop2", "--daily-quota", "1000",
        "--send-window", "09:00-21:00", "--timezone", "Asia/Yekaterinburg", "--callback-task", "shop.status",
        "--json",
    )))  # fmt: skip
    assert set(made) == {"name", "key", "webhook_secret"} and made["name"] == "shop"
    key, secret = made["key"], made["webhook_secret"]
    assert key.startswith("sdk_") and secret.startswith("whsec_") and len(key) > 40

    human = ok(run_cli(cfg, "clients", "add", "crm"))
    assert "shown only this once" in human
    crm_key = next(line.split()[-1] for line in human.splitlines() if line.startswith("API key:"))
    assert crm_key.startswith("sdk_") and crm_key != key

    listed = ok(run_cli(cfg, "clients", "list"))
    as_json = ok(run_cli(cfg, "clients", "list", "--json"))
    for out in (listed, as_json):
        for hidden in (key, secret, crm_key):
            assert hidden not in out
    clients = {c["name"]: c for c in json.loads(as_json)}
    assert set(clients) == {"crm", "shop"}
    shop = clients["shop"]
    assert "key" not in shop and "webhook_secret" not in shop
    assert key.startswith(shop["key_prefix"]) and len(shop["key_prefix"]) < len(key)
    assert shop["senders"] == ["ShopRu", "Shop2"] and shop["daily_quota"] == 1000
    assert shop["send_window"] == "09:00-21:00" and shop["timezone"] == "Asia/Yekaterinburg"
    assert shop["callback_task"] == "shop.status" and shop["revoked_at"] is None
    assert "ShopRu,Shop2" in listed

    assert "revoked" in ok(run_cli(cfg, "clients", "revoke", "shop"))
    after = {c["name"]: c for c in json.loads(ok(run_cli(cfg, "clients", "list", "--json")))}
    assert after["shop"]["revoked_at"] is not None and after["crm"]["revoked_at"] is None
    assert "no live client 'shop'" in refused(run_cli(cfg, "clients", "revoke", "shop"))
    assert "no live client 'nobody'" in refused(run_cli(cfg, "clients", "revoke", "nobody"))
    # A revoked name is not given to a new client.
    assert "NAME: a client 'shop' exists already" in refused(run_cli(cfg, "clients", "add", "shop"))


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--sender", "Way-too-long-sender"], "--sender"),
        (["--daily-quota", "0"], "--daily-quota"),
        (["--daily-quota", "lots"], "--daily-quota"),
        (["--send-window", "25:00-26:00"], "--send-window"),
        (["--send-window", "9 to 5"], "--send-window"),
        (["--timezone", "Mars/Olympus"], "--timezone"),
        (["--callback-url", "ftp://example.com/x"], "--callback-url"),
        (["--callback-url", "http://127.0.0.1:9/cb"], "--callback-url"),  # private: allow_private is off
        (["--callback-task", "no spaces allowed"], "--callback-task"),
    ],
)
def test_clients_add_bad_input_names_the_option(cfg: Path, args: list[str], option: str) -> None:
    result = run_cli(cfg, "clients", "add", "app", *args)
    assert result.returncode == 2, result.stderr
    assert option in result.stderr and "Traceback" not in result.stderr
    assert json.loads(ok(run_cli(cfg, "clients", "list", "--json"))) == []  # nothing stored


def test_a_bad_client_name_and_a_missing_subcommand_are_usage_errors(cfg: Path) -> None:
    assert "NAME" in refused(run_cli(cfg, "clients", "add", "no spaces"))
    for command in ("clients", "stop"):
        result = run_cli(cfg, command)
        assert result.returncode == 2 and "usage:" in result.stderr


def test_stop_list_round_trip(cfg: Path) -> None:
    added = json.loads(
        ok(run_cli(cfg, "stop", "add", "+7 916 123-45-67", "--all", "--reason", "asked", "--json"))
    )
    assert added == {"phone": "79161234567", "added": True, "scope": "all"}
    # Listed already: an operator's add sets the scope it gives and keeps the reason.
    again = json.loads(ok(run_cli(cfg, "stop", "add", "89161234567", "--json")))
    assert again == {"phone": "79161234567", "added": False, "scope": "normal"}
    assert "scope now all" in ok(run_cli(cfg, "stop", "add", "89161234567", "--all"))
    ok(run_cli(cfg, "stop", "add", "9261234567"))
    listed = json.loads(ok(run_cli(cfg, "stop", "list", "--json")))
    assert listed["count"] == 2
    entries = {e["phone"]: e for e in listed["entries"]}
    assert set(entries) == {"79161234567", "79261234567"}
    assert entries["79161234567"]["scope"] == "all" and entries["79161234567"]["reason"] == "asked"
    assert entries["79261234567"]["scope"] == "normal" and entries["79261234567"]["source"] == "operator"
    human = ok(run_cli(cfg, "stop", "list"))
    assert "79161234567" in human and "2 numbers on the stop list" in human

    assert "off the stop list" in ok(run_cli(cfg, "stop", "remove", "8 916 123 45 67"))
    assert "79161234567 is not on the stop list" in refused(run_cli(cfg, "stop", "remove", "79161234567"))
    assert json.loads(ok(run_cli(cfg, "stop", "list", "--json")))["count"] == 1
    assert "PHONE" in refused(run_cli(cfg, "stop", "add", "12345"))
    # `stop list` prints reasons to a terminal: no escapes, no endless lines; a bad
    # --limit is a usage error, not an unexpected one.
    assert "--reason" in refused(run_cli(cfg, "stop", "add", "79261234568", "--reason", "\x1b[2Jgone"))
    assert "--reason" in refused(run_cli(cfg, "stop", "add", "79261234568", "--reason", "x" * 501))
    for limit in ("0", "-1", "10001"):
        assert "--limit" in refused(run_cli(cfg, "stop", "list", "--limit", limit))


def test_search_finds_what_send_stored(cfg: Path) -> None:
    ids = [
        ok(
            run_cli(cfg, "send", "--to", "+7 916 555-00-11", "--text", f"hello {n}", "--key", f"k-{n}")
        ).strip()
        for n in range(3)
    ]
    other = ok(run_cli(cfg, "send", "--to", "79165550022", "--text", "someone else")).strip()

    found = json.loads(ok(run_cli(cfg, "search", "--to", "89165550011", "--json")))
    assert [m["id"] for m in found["messages"]] == ids[::-1] and found["next"] is None  # newest first
    assert found["messages"][0]["to"] == "79165550011" and found["messages"][0]["key"] == "k-2"
    by_key = json.loads(ok(run_cli(cfg, "search", "--key", "k-1", "--json")))
    assert [m["id"] for m in by_key["messages"]] == [ids[1]]

    page = json.loads(ok(run_cli(cfg, "search", "--to", "79165550011", "--limit", "2", "--json")))
    assert [m["id"] for m in page["messages"]] == ids[:0:-1] and page["next"]
    more = ("--limit", "2", "--cursor", page["next"], "--json")
    rest = json.loads(ok(run_cli(cfg, "search", "--to", "79165550011", *more)))
    assert [m["id"] for m in rest["messages"]] == [ids[0]] and rest["next"] is None
    every = json.loads(ok(run_cli(cfg, "search", "--all", "--json")))
    assert {m["id"] for m in every["messages"]} == {*ids, other}

    human = ok(run_cli(cfg, "search", "--to", "79165550022"))
    assert other in human and "1 messages" in human
    assert "--to" in refused(run_cli(cfg, "search", "--to", "12345"))
    assert "--limit" in refused(run_cli(cfg, "search", "--limit", "0"))
    assert "cursor" in refused(run_cli(cfg, "search", "--cursor", "garbage"))


def test_callbacks_backlog(cfg: Path) -> None:
    data = json.loads(ok(run_cli(cfg, "callbacks", "--json")))
    assert {"pending", "failed", "delivered_24h", "oldest_pending_age_s", "endpoints"} <= set(data)
    assert data["pending"] == 0 and data["endpoints"] == []
    assert "pending 0" in ok(run_cli(cfg, "callbacks"))
