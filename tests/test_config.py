from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from dispatcher import config
from dispatcher.errors import ConfigError

GOOD = """
database_url = "sqlite:///x.db"
broker_url = "redis://127.0.0.1:6379/3"

[providers.main]
kind = "prostor"
base_url = "http://api.prostor-sms.ru/messages/v2/"
login = "acme"
password = "pa55-word-long"
sender = "MyBrand"
priority = 1
enabled = true
status_queue = "acmeQueue1"

[providers.backup]
kind = "prostor"
base_url = "http://api.prostor-sms.ru/messages/v2"
login = "acme2"
password = "other-pass"
priority = 2

[providers.tele]
kind = "smstele"
base_url = "http://rexsmst.rax400.ru:8881/cgibin/"
login = "test:http"
password = "~test123"
charset = "windows-1251"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smsdispatch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_good_file_with_two_accounts_of_one_kind(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, GOOD), env={})
    assert [p.name for p in settings.enabled_providers] == ["main", "backup", "tele"]
    backup = settings.provider("backup")
    assert backup.kind == "prostor" and backup.base_url.endswith("/v2/")  # slash added
    assert settings.provider("main").option("status_queue") == "acmeQueue1"
    assert settings.provider("tele").option("charset") == "windows-1251"
    assert "pa55-word-long" not in repr(settings)


def test_lookup_order_env_then_local_then_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "simulator" in config.load(env={}).source
    write(tmp_path, GOOD)
    assert config.load(env={}).source == "smsdispatch.toml"
    other = tmp_path / "other.toml"
    other.write_text('broker_url = "redis://127.0.0.1:6379/9"\n')
    assert config.load(env={"SMSDISPATCH_CONFIG": str(other)}).broker_url.endswith("/9")


def test_env_overrides_urls(tmp_path: Path) -> None:
    settings = config.load(
        write(tmp_path, GOOD),
        env={
            "SMSDISPATCH_DATABASE_URL": "postgresql+psycopg://u@h/db",
            "SMSDISPATCH_BROKER_URL": "redis://h:1/2",
        },
    )
    assert settings.database_url == "postgresql+psycopg://u@h/db" and settings.broker_url == "redis://h:1/2"


def test_defaults_point_at_simulator() -> None:
    from dispatcher.simulator.defaults import default_settings_table

    settings = config.parse(default_settings_table())
    assert {p.kind for p in settings.providers} == {"mysms", "sms1000", "smska", "smstele", "prostor"}
    assert all(p.base_url.startswith("http://127.0.0.1:") for p in settings.providers)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda t: t.replace("priority = 1\n", "priority = 1\nprioritty = 2\n"), "providers.main.prioritty"),
        (lambda t: "colour = 'red'\n" + t, "colour"),
        (lambda t: t.replace('password = "other-pass"\n', ""), "providers.backup.password"),
        (
            lambda t: t.replace('http://api.prostor-sms.ru/messages/v2"', 'ftp:/nowhere"'),
            "providers.backup.base_url",
        ),
        (lambda t: t.replace('kind = "smstele"', 'kind = "smsc"'), "providers.tele.kind"),
        (
            lambda t: t.replace('status_queue = "acmeQueue1"', 'status_queue = "q"'),
            "providers.main.status_queue",
        ),
        (lambda t: t.replace('charset = "windows-1251"', 'charset = "latin1"'), "providers.tele.charset"),
        (
            lambda t: t.replace('sender = "MyBrand"', 'sender = "AVeryLongSenderName"'),
            "providers.main.sender",
        ),
        (lambda t: t.replace("priority = 1\n", 'priority = "1"\n'), "providers.main.priority"),
        (lambda t: t.replace("enabled = true", "enabled = 1"), "providers.main.enabled"),
        (
            lambda t: t.replace("priority = 1\n", "priority = 1\nreconcile_after = -1\n"),
            "providers.main.reconcile_after",
        ),
        (
            lambda t: t.replace('login = "acme2"', 'login = "acme2"\nformat = "xml"'),
            "providers.backup.format",
        ),
        (lambda t: t.replace("sqlite:///x.db", "mysql://x"), "database_url"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, edit: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, edit(GOOD)), env={})  # type: ignore[operator]
    assert info.value.key == key
    assert key in str(info.value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, "x = [\n"), env={})
    assert "smsdispatch.toml" in str(info.value)


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(env={"SMSDISPATCH_CONFIG": str(tmp_path / "nope.toml")})
    assert info.value.key == "SMSDISPATCH_CONFIG"


# -- numeric settings (issue 12, item 10) ----------------------------------------------

DAY = 86400
MONTH = 30 * DAY

# Every numeric setting: (integer?, the least value allowed, whether that least value
# itself is refused, the upper bound or None). Written out here, not read from the code,
# so that a changed range shows as a failing case.
NUMERIC: dict[str, tuple[bool, float | None, bool, float | None]] = {
    "api.port": (True, 1, False, 65535),
    "flower.port": (True, 1, False, 65535),
    "pipeline.default_ttl": (False, 0, True, MONTH),
    "pipeline.max_attempts": (True, 1, False, None),
    "pipeline.breaker_threshold": (True, 1, False, None),
    "pipeline.breaker_cooldown": (False, 0, True, DAY),
    "pipeline.backoff_base": (False, 0, True, DAY),
    "pipeline.backoff_cap": (False, 0, True, DAY),
    "pipeline.exhausted_delay": (False, 0, True, DAY),
    "pipeline.status_horizon": (False, 0, True, MONTH),
    "pipeline.sweeper_interval": (False, 0, True, DAY),
    "pipeline.sweeper_stale_after": (False, 0, True, DAY),
    "pipeline.visibility_timeout": (False, 0, True, DAY),
    "pipeline.soft_shutdown_timeout": (False, 0, False, DAY),
    "pipeline.publish_batch": (True, 1, False, None),
    "pipeline.group_size": (True, 1, False, None),
    "pipeline.call_concurrency": (True, 1, False, None),
    "pipeline.linger": (False, 0, False, 10),
    "polling.interval": (False, 0, True, DAY),
    "polling.max_calls_per_cycle": (True, 0, False, None),
    "polling.first_poll_floor": (False, 0, True, DAY),
    "polling.group_calls": (True, 1, False, None),
    "polling.queue_fallback_after": (False, 0, False, DAY),
    "polling.queue_interval": (False, 0, True, DAY),
    "polling.queue_rounds": (True, 1, False, None),
    "polling.balance_interval": (False, 0, True, DAY),
    "providers.main.timeout": (False, 0, True, DAY),
    "providers.main.connect_timeout": (False, 0, True, DAY),
    "providers.main.rate_limit": (False, 0, False, None),
    "providers.main.status_rate_limit": (False, 0, False, None),
    "providers.main.max_retries": (True, 0, False, None),
    "providers.main.reconcile_after": (False, 0, False, DAY),
    "providers.main.priority": (True, None, False, None),
    "providers.main.balance_threshold": (False, None, False, None),
}


def _bad_values(key: str) -> list[str]:
    """The TOML spellings of values ``key`` must refuse."""
    integer, low, low_refused, high = NUMERIC[key]
    values = {"nan", "inf", "-inf", "true"} | ({"1.5"} if integer else set())
    if low is not None:
        values |= {str(int(low))} if low_refused else {str(int(low) - 1), "-1"}
    if high is not None:
        values.add(str(int(high) + 1))
    if key.endswith(".port"):
        values |= {"0", "65536", "99999"}
    return sorted(values)


def _with(key: str, value: str) -> str:
    """GOOD with ``key = value`` set."""
    section, _, name = key.rpartition(".")
    if section == "providers.main":
        text = GOOD.replace("priority = 1\n", "") if name == "priority" else GOOD
        return text.replace("[providers.main]\n", f"[providers.main]\n{name} = {value}\n")
    return f"{GOOD}\n[{section}]\n{name} = {value}\n"


@pytest.mark.parametrize(("key", "value"), [(k, v) for k in NUMERIC for v in _bad_values(k)])
def test_a_bad_number_is_refused_naming_the_key_and_the_value(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, _with(key, value)), env={})
    assert info.value.key == key
    # The reason says what was found, as the file spells it.
    assert f"got {value}" in info.value.reason, info.value.reason


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "true", "86401"])
def test_a_bad_polling_interval_entry_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, f"{GOOD}\n[polling]\nintervals = [10, {value}]\n"), env={})
    assert info.value.key == "polling.intervals"
    assert "entry 2" in info.value.reason and f"got {value}" in info.value.reason, info.value.reason


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        # The cap would win from the first retry on.
        ("[pipeline]\nbackoff_base = 5.0\nbackoff_cap = 1.0\n", "pipeline.backoff_cap", "backoff_base"),
        # Redis would hand a task counting down to a second worker: the SMS goes twice.
        ("[pipeline]\nvisibility_timeout = 10\n", "pipeline.visibility_timeout", "countdown"),
        # ... or a task still waiting for the provider's reply (10 s + 3 s by default).
        ("[pipeline]\nvisibility_timeout = 12\n", "pipeline.visibility_timeout", "providers.main"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    tmp_path: Path, table: str, key: str, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, f"{GOOD}\n{table}"), env={})
    assert info.value.key == key and says in info.value.reason, info.value


def test_an_integer_too_large_for_a_float_is_a_config_error(tmp_path: Path) -> None:
    huge = "9" * 400  # TOML integers are exact in Python; float() of this overflows
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, _with("providers.main.rate_limit", huge)), env={})
    assert info.value.key == "providers.main.rate_limit"
    assert "finite" in info.value.reason and len(str(info.value)) < 200


def test_the_limits_cover_every_number_and_keep_the_meaningful_edges(tmp_path: Path) -> None:
    from dispatcher import validation
    from dispatcher.sending import MAX_COUNTDOWN

    # The constants config repeats (validation and sending import config) agree.
    assert config.MAX_TTL == validation.MAX_TTL and config.MAX_COUNTDOWN == MAX_COUNTDOWN
    # NUMERIC above names every numeric setting there is.
    numeric = {
        f"{section}.{f.name}"
        for section, cls in (
            ("api", config.ApiConfig),
            ("flower", config.FlowerConfig),
            ("pipeline", config.PipelineConfig),
            ("polling", config.PollingConfig),
            ("providers.main", config.ProviderConfig),
        )
        for f in fields(cls)
        if f.type in ("int", "float", "float | None")
    }
    assert numeric == set(NUMERIC)
    # The edges the code's comments call meaningful load: 0 for "unlimited", "no wait",
    # "at once"; the bounds themselves.
    edges = {
        "pipeline": f"default_ttl = {MONTH}\nstatus_horizon = {MONTH}\nlinger = 0\n"
        "soft_shutdown_timeout = 0\n",
        "polling": "queue_fallback_after = 0\nintervals = [86400]\n",
        "api": "port = 65535\n",
        "flower": "port = 1\n",
    }
    text = GOOD + "".join(f"\n[{name}]\n{body}" for name, body in edges.items())
    for key in ("rate_limit = 0", "reconcile_after = 0", "max_retries = 0", "balance_threshold = -100.5"):
        text = text.replace("[providers.main]\n", f"[providers.main]\n{key}\n")
    settings = config.load(write(tmp_path, text), env={})
    assert (
        settings.pipeline.linger == 0
        and settings.api.port == 65535
        and settings.provider("main").rate_limit == 0
    )


def test_doctor_refuses_a_bad_number_at_start_up_naming_the_key(tmp_path: Path) -> None:
    from tests.support import run_cli

    result = run_cli(write(tmp_path, GOOD + "\n[pipeline]\nsweeper_interval = nan\n"), "doctor", timeout=60)
    assert result.returncode != 0
    # One line that names the key and says why, not a traceback.
    lines = [line for line in result.stderr.splitlines() if "pipeline.sweeper_interval" in line]
    assert len(lines) == 1 and "finite" in lines[0], result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_worker_with_a_bad_configuration_stops_with_one_line(tmp_path: Path) -> None:
    """`celery -A workers.app worker` (and beat, Flower) refuse at start-up: exit 3, the
    key named, no traceback from the import that loaded it."""
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.toml"
    bad.write_text(f'database_url = "sqlite:///{tmp_path}/x.db"\n[pipeline]\nsweeper_interval = nan\n')
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(bad)}
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "workers.app", "worker"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "smsdispatch: config: pipeline.sweeper_interval: must be a finite number, got nan"
    ]


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({"flower": {"basic_auth": "ops:s3cret,pw"}}, "flower.basic_auth", "no comma"),
        ({"flower": {"basic_auth": "ops:"}}, "flower.basic_auth", "a password of 0"),
        ({"flower": {"basic_auth": ":long-enough-pw"}}, "flower.basic_auth", "a user of 0"),
        ({"flower": {"basic_auth": "ops:short"}}, "flower.basic_auth", "at least 8"),
        ({"api": {"token": "abc"}}, "api.token", "at least 12 characters, got 3"),
        ({"pipeline": {"group_size": 10**30}}, "pipeline.group_size", "at most"),
        ({"pipeline": {"publish_batch": 10**6}}, "pipeline.publish_batch", "at most"),
        ({"polling": {"max_calls_per_cycle": 10**9}}, "polling.max_calls_per_cycle", "at most"),
    ],
)
def test_secrets_and_counts_that_would_be_a_hole_or_a_crash_are_refused(
    table: dict[str, Any], key: str, reason: str
) -> None:
    """Flower splits its basic auth on commas (each piece a credential); a short token or
    password is guessed; a count of 10**30 reaches a SQL LIMIT as a bigint overflow."""
    with pytest.raises(ConfigError) as refused:
        config.parse(table)
    assert refused.value.key == key and reason in refused.value.reason, refused.value


def test_a_vanishing_rate_limit_is_refused() -> None:
    import tomllib

    table = tomllib.loads(GOOD)
    table["providers"]["main"]["rate_limit"] = 1e-300
    with pytest.raises(ConfigError) as refused:
        config.parse(table)
    assert refused.value.key == "providers.main.rate_limit" and "at least 0.001" in refused.value.reason
