"""Broker URLs on Redis Sentinel: how they are read, refused, handed to Celery and
turned into clients (dispatcher/redis_conn.py). The failover itself is in
tests/faults/test_sentinel.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS

from dispatcher import broker, config
from dispatcher.errors import ConfigError
from dispatcher.redact import MASK, redact
from dispatcher.redis_conn import celery_url, client_for, is_redis, parse_sentinel, transport_options

THREE = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26380;sentinel://s3"
REDIS_URL = os.environ.get("SMSDISPATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def load(url: str, tmp_path: Path) -> config.Settings:
    path = tmp_path / "c.toml"
    path.write_text(f'broker_url = "{url}"\n', encoding="utf-8")
    return config.load(path, env={})


def test_three_sentinels_with_the_master_name() -> None:
    target = parse_sentinel(f"{THREE}?master_name=smsd")
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("s3", 26379))
    assert target.master_name == "smsd"
    assert (target.db, target.password, target.sentinel_password) == (0, None, None)


def test_passwords_and_database() -> None:
    url = "sentinel://:master-pa55word@h1:26379/4;sentinel://h2?master_name=m&sentinel_password=sentinel-pa55word"
    target = parse_sentinel(url)
    assert target.password == "master-pa55word" and target.username is None
    assert target.sentinel_password == "sentinel-pa55word"
    assert target.db == 4
    # Neither password shows in the repr (a log line of the settings, a traceback).
    assert "pa55word" not in repr(target)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (THREE, "needs the master's name: add ?master_name=NAME"),
        (f"{THREE}?master_name=", "needs the master's name"),
        ("sentinel://h1;redis://h2?master_name=m", "sentinel 2: expected sentinel://host[:port]"),
        ("sentinel://h1;?master_name=m", "sentinel 2: expected sentinel://host[:port]"),
        ("sentinel://h1:port?master_name=m", "sentinel 1: bad port"),
        ("sentinel://h1/db0?master_name=m", "the path is a database number"),
        ("sentinel://h1?master=m", "unknown sentinel option 'master'"),
        ("sentinel://h1?master_name=a;sentinel://h2?master_name=b", "'master_name' given twice"),
        # kombu reads the master's credentials and database from the first part alone.
        ("sentinel://h1:26379;sentinel://:pw@h2:26379/4?master_name=m", "sentinel 2: the master's user"),
        ("sentinel://h1;sentinel://:pw@h2?master_name=m", "on the first sentinel only"),
        ("sentinel://h1;sentinel://h2/4?master_name=m", "on the first sentinel only"),
        ("sentinel://:pw@h1;sentinel://u:pw@h2;sentinel://h3?master_name=m", "sentinel 2: the master's user"),
        ("sentinel://h1/db0?master_name=m;sentinel://h2", "the path is a database number"),
    ],
)
def test_a_bad_sentinel_url_is_a_config_error_naming_the_field(url: str, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(url, tmp_path)
    assert caught.value.key == "broker_url"
    assert reason in caught.value.reason


def test_only_the_first_part_carries_the_masters_password_and_database() -> None:
    """As kombu reads them: Celery's broker and our coordinator on the same db with the
    same password."""
    target = parse_sentinel("sentinel://user:pw@h1:26379/7;sentinel://h2;sentinel://h3?master_name=m")
    assert (target.username, target.password, target.db) == ("user", "pw", 7)
    with pytest.raises(ConfigError) as caught:
        parse_sentinel("sentinel://h1:26379;sentinel://:pw@h2:26379/4?master_name=m")
    assert caught.value.key == "broker_url" and "pw" not in caught.value.reason


def test_the_environment_override_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="broker_url: a sentinel:// URL needs the master's name"):
        config.load(None, env={"SMSDISPATCH_BROKER_URL": THREE})
    settings = config.load(None, env={"SMSDISPATCH_BROKER_URL": f"{THREE}?master_name=smsd"})
    assert settings.broker_url.endswith("?master_name=smsd")


def test_passwords_are_registered_for_redaction(tmp_path: Path) -> None:
    url = "sentinel://:the-master-secret@h1;sentinel://h2?master_name=m&sentinel_password=the-sentinel-secret"
    load(url, tmp_path)
    out = redact(f"connecting to {url} failed; sentinel said the-sentinel-secret")
    assert "the-master-secret" not in out and "the-sentinel-secret" not in out and MASK in out
    # Bare, outside the URL's user info (which a pattern masks anyway): only a
    # registered secret is found there.
    out = redact("AUTH failed for the-master-secret and the-sentinel-secret")
    assert out == f"AUTH failed for {MASK} and {MASK}"


def test_what_celery_gets() -> None:
    url = f"{THREE}?master_name=smsd&sentinel_password=sentinel-pa55word"
    # kombu's own form: the sentinels by ';', no query (it would read it as a host's).
    assert celery_url(url) == THREE
    assert celery_url("redis://h:1/2?x=y") == "redis://h:1/2?x=y"
    options = transport_options(url, socket_timeout=10, connect_timeout=3)
    assert options["master_name"] == "smsd"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pa55word"
    assert options["sentinel_kwargs"]["socket_timeout"] == 3
    # The master's socket waits, from the arguments (kombu hands them to its pool).
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (10, 3)
    assert transport_options("redis://h:1/2", 10, 3) == {}
    assert is_redis(url) and is_redis("rediss://h") and not is_redis("memory://")


@pytest.fixture
def restore_app() -> Iterator[None]:
    before = config.get_settings()
    try:
        yield
    finally:
        broker.configure(before)


@pytest.mark.usefixtures("restore_app")
def test_the_app_is_configured_for_failover(tmp_path: Path) -> None:
    settings = load(f"{THREE}?master_name=smsd", tmp_path)
    app = broker.configure(settings)
    assert app.conf.broker_url == THREE
    options = app.conf.broker_transport_options
    assert options["master_name"] == "smsd"
    assert options["socket_timeout"] == broker.SOCKET_TIMEOUT
    assert options["socket_connect_timeout"] == broker.CONNECT_TIMEOUT
    assert options["visibility_timeout"] == settings.pipeline.visibility_timeout  # kept
    assert app.conf.broker_channel_error_retry is True
    assert app.conf.broker_connection_max_retries is None
    assert app.conf.task_publish_retry_policy["max_retries"] == 12
    # Configured again with a plain URL, nothing of the sentinel settings stays behind.
    app = broker.configure(load("redis://127.0.0.1:6379/3", tmp_path))
    assert "master_name" not in app.conf.broker_transport_options
    assert app.conf.broker_connection_max_retries == 100
    assert app.conf.task_publish_retry_policy["max_retries"] == 3
    # Celery's own defaults, read from Celery (a copy: never its table itself).
    for key in broker.FAILOVER_SETTINGS:
        assert app.conf[key] == CELERY_DEFAULTS[key], key
    assert app.conf.broker_channel_error_retry is False
    assert app.conf.task_publish_retry_policy is not CELERY_DEFAULTS["task_publish_retry_policy"]


def test_a_plain_url_gives_a_plain_client() -> None:
    client = client_for(REDIS_URL, socket_timeout=2, connect_timeout=2)
    try:
        assert client.ping()
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2, 2)
    finally:
        client.close()


def test_a_sentinel_client_with_no_sentinel_answering_says_so() -> None:
    """A sentinel URL gives a client of the master the sentinels name; with none
    reachable it fails as a connection error (the CLI's exit 4), not at creation."""
    client = client_for("sentinel://127.0.0.1:1;sentinel://127.0.0.1:2?master_name=smsd", 1, 1)
    with pytest.raises(redis.ConnectionError, match="No master found for 'smsd'"):
        client.ping()
