from __future__ import annotations

from pathlib import Path

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
