"""Bad input through every producer path, and producers that publish by task name."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher import api, db, ledger
from dispatcher.config import PhonesConfig
from dispatcher.errors import ValidationError
from dispatcher.validation import normalize_phone
from tests.support import ROOT, SETTLED, TAKEN, Stack, run_cli


@pytest.mark.parametrize(
    ("raw", "phone"),
    [
        ("+7 916 123-45-67", "79161234567"),
        ("89161234567", "79161234567"),
        ("8 (916) 123-45-67", "79161234567"),
        ("9161234567", "79161234567"),
        ("79161234567", "79161234567"),
        ("+380 50 123 4567", "380501234567"),
        (79161234567, "79161234567"),
    ],
)
def test_phone_normalization(raw: Any, phone: str) -> None:
    assert normalize_phone(raw, phones=PhonesConfig(allowed_regions=("RU", "UA"))) == phone


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"to": "+7 916 12", "text": "x"}, "to", "too short"),
        ({"to": "7916abc4567", "text": "x"}, "to", "only digits"),
        ({"to": "", "text": "x"}, "to", "empty"),
        ({"to": "79161234567", "text": "   "}, "text", "empty"),
        ({"to": "79161234567", "text": "Я" * 700}, "text", "more than the limit"),
        ({"to": "79161234567", "text": "x", "sender": "A-Very-Long-Sender"}, "sender", "at most 11"),
        ({"to": "79161234567", "text": "x", "priority": "urgent"}, "priority", "one of high, normal"),
        ({"to": "79161234567", "text": "x", "provider": "nope"}, "provider", "no enabled provider"),
        ({"to": "79161234567", "text": "x", "ttl": -5}, "ttl", "more than 0"),
        ({"to": "79161234567", "text": "x", "ttl": 1e308}, "ttl", "at most"),
        ({"to": "79161234567", "text": "a\x00b"}, "text", "control character"),
        ({"to": "٧٩١٦١٢٣٤٥٦٧", "text": "x"}, "to", "only digits"),
        ({"to": "79161234567", "text": "x", "at": "tomorrow"}, "at", "ISO-8601"),
        ({"to": "79161234567", "text": "x", "at": "2030-01-01T10:00:00"}, "at", "needs a zone"),
        ({"to": "79161234567", "text": "x", "colour": "red"}, "colour", "unknown field"),
        ({"text": "x"}, "to", "missing"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(
    stack: Stack, fields: dict[str, Any], field: str, reason: str
) -> None:
    stack.configure()
    with pytest.raises(ValidationError) as info:
        api.send_bulk([fields])
    assert info.value.field == f"messages[0].{field}"
    assert reason in info.value.reason
    if set(fields) <= {"to", "text", "sender", "key", "at", "ttl", "priority", "provider"} and "to" in fields:
        with pytest.raises(ValidationError) as single:
            api.send_sms(**fields)
        assert single.value.field == field
    with db.session_scope() as s:
        assert ledger.count_by_status(s) == {}
    assert stack.redis.llen("sms.bulk") == 0


def test_part_count_is_stored(stack: Stack) -> None:
    stack.configure()
    at = datetime.now(UTC) + timedelta(days=1)
    mid = api.send_sms("79161234567", "Я" * 71, at=at)
    message = api.get_message(mid)
    assert message is not None and message["parts"] == 2 and message["encoding"] == "ucs2"


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack.config_path, *args)


def test_cli_send_and_status(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    stack.start_worker()
    sent = cli(stack, "send", "--to", "8 916 123-45-67", "--text", "из CLI", "--key", "cli-1", "--json")
    assert sent.returncode == 0, sent.stderr
    data = json.loads(sent.stdout)
    assert set(data) == {"id", "status"} and data["status"] == "queued"
    again = cli(stack, "send", "--to", "+79161234567", "--text", "из CLI", "--key", "cli-1")
    assert again.stdout.strip() == data["id"]
    stack.wait_until([data["id"]], SETTLED)
    shown = cli(stack, "status", data["id"], "--json")
    assert shown.returncode == 0
    status = json.loads(shown.stdout)
    assert {"id", "to", "status", "provider", "provider_message_id", "attempts", "events"} <= set(status)
    assert status["to"] == "79161234567" and status["provider"] == "prostor"
    assert isinstance(status["attempts"], list) and isinstance(status["events"], list)
    assert status["events"][0]["new_status"] == "queued"
    human = cli(stack, "status", data["id"])
    assert "prostor" in human.stdout and "из CLI" in human.stdout


def test_cli_bad_input(stack: Stack) -> None:
    stack.configure()
    result = cli(stack, "send", "--to", "12", "--text", "x")
    assert result.returncode == 2
    assert "to:" in result.stderr
    assert cli(stack, "status", "nope").returncode == 1


def test_send_task_by_name_from_another_app(stack: Stack) -> None:
    """An app that shares the broker publishes by task name, without our code."""
    from celery import Celery

    stack.configure(providers=["prostor"])
    stack.start_worker()
    other = Celery("other-app", broker=stack.table["broker_url"])
    good = {"to": "+7 916 123-45-67", "text": "from another app", "key": "other-1"}
    other.send_task("smsdispatch.send", kwargs=good, queue="sms.bulk")
    other.send_task("smsdispatch.send", kwargs=good, queue="sms.bulk")  # idempotent
    other.send_task("smsdispatch.send", kwargs={"to": "12", "text": "bad"}, queue="sms.bulk")
    other.send_task("smsdispatch.send", kwargs={"to": "79161234567", "txt": "typo"}, queue="sms.bulk")
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and stack.log_text().count("refused its arguments") < 2:
        time.sleep(0.2)
    log = stack.log_text()
    assert "to: not a valid number in RU" in log and "txt: unknown field" in log
    # The good task runs beside the bad ones (two pool processes): its commit may come
    # after their refusals are logged.
    found: dict[str, Any] = {}
    while time.monotonic() < deadline and "other-1" not in found:
        with db.session_scope() as s:
            found = dict(ledger.find_by_keys(s, ["other-1"]))
        time.sleep(0.1)
    with db.session_scope() as s:
        assert ledger.count_by_status(s).keys() <= SETTLED | {"queued", "sending"}
    mid = found["other-1"].id
    assert stack.wait_until([mid], SETTLED)[mid] in TAKEN
    with db.session_scope() as s:
        assert sum(ledger.count_by_status(s).values()) == 1  # the bad ones stored nothing
    assert stack.sim["prostor"].state.stats()["messages"] == 1
    other.close()


def test_broker_down_keeps_the_message_for_the_sweeper(stack: Stack) -> None:
    """A producer whose publish fails (the broker is down) still stores the message;
    the sweeper publishes it once the broker is reachable. Nothing is lost."""
    stack.configure(providers=["prostor"])
    env = {"SMSDISPATCH_CONFIG": str(stack.config_path), "SMSDISPATCH_BROKER_URL": "redis://127.0.0.1:1/0"}
    args = ["send", "--to", "79161234567", "--text", "broker down", "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "dispatcher.cli", *args],
        cwd=ROOT, env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sweeper will publish" in result.stderr
    mid = json.loads(result.stdout)["id"]
    assert stack.statuses([mid])[mid] == "queued"
    stack.start_worker(beat=True)
    assert stack.wait_until([mid], SETTLED, timeout=20)[mid] in TAKEN


def test_the_number_is_stored_as_e164_digits_with_its_region(any_stack: Stack) -> None:
    """What libphonenumber read is what the ledger keeps, on SQLite and PostgreSQL; a
    non-geographic number (satellite, region "001") fits the column too."""
    from dataclasses import replace

    from dispatcher import config

    any_stack.configure(providers=["prostor"])
    ru = api.send_sms("8 (916) 123-45-67", "домой")
    assert {k: (api.get_message(ru) or {})[k] for k in ("to", "region")} == {
        "to": "79161234567",
        "region": "RU",
    }

    settings = config.get_settings()
    config.set_settings(replace(settings, phones=replace(settings.phones, allowed_regions=("*",))))
    kz = api.send_sms("+7 701 123 45 67", "Алматы")
    sat = api.send_sms("+881 6 1234 5678", "at sea")
    assert (api.get_message(kz) or {})["region"] == "KZ"
    assert (api.get_message(sat) or {})["region"] == "001"
