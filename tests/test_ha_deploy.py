"""docker-compose.yml's `ha` profile (a Redis master, a replica, three sentinels) and its
override (ops/ha/compose.ha.yml) hang together. No Docker engine runs here: the files are
read and checked against each other and against what the code accepts."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from dispatcher import config
from dispatcher.redis_conn import parse_sentinel

ROOT = Path(__file__).parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OVERRIDE: dict[str, Any] = yaml.safe_load((ROOT / "ops" / "ha" / "compose.ha.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
HA = {name: spec for name, spec in SERVICES.items() if "ha" in spec.get("profiles", [])}
SENTINELS = sorted(name for name in HA if name.startswith("sentinel-"))


def sentinel_conf() -> list[list[str]]:
    text = (ROOT / "ops" / "ha" / "sentinel.conf").read_text()
    return [line.split() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def monitored() -> tuple[str, str, int, int]:
    """(master name, host, port, quorum) of the `sentinel monitor` line."""
    lines = [words for words in sentinel_conf() if words[:2] == ["sentinel", "monitor"]]
    assert len(lines) == 1, lines
    _, _, name, host, port, quorum = lines[0]
    return name, host, int(port), int(quorum)


def test_the_default_stays_one_redis() -> None:
    # Nothing of the profile starts without --profile ha; the apps' env names one Redis.
    assert {"redis-master", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(HA)
    assert "profiles" not in SERVICES["redis"]
    env = (ROOT / "ops" / "smsdispatch.env").read_text()
    assert re.search(r"^SMSDISPATCH_BROKER_URL=redis://redis:6379/", env, re.M)


def test_mounted_files_exist() -> None:
    for name, spec in HA.items():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which is missing"
            else:
                assert source in COMPOSE["volumes"], f"{name} uses an undeclared volume {source}"


def test_three_sentinels_watch_the_master_service_with_quorum_2() -> None:
    assert len(SENTINELS) == 3
    name, host, port, quorum = monitored()
    assert host == "redis-master" and port == 6379
    assert quorum == 2  # a majority of three: one isolated sentinel cannot fail over
    options = {tuple(words[:2]): words[2:] for words in sentinel_conf()}
    assert options[("sentinel", "resolve-hostnames")] == ["yes"]  # the master is named by service
    for option in ("down-after-milliseconds", "failover-timeout", "parallel-syncs"):
        assert options[("sentinel", option)][0] == name
    for sentinel in SENTINELS:
        spec = SERVICES[sentinel]
        assert runs_on_its_copy(spec, "/etc/redis-ha/sentinel.conf", "/data/sentinel.conf")
        assert "--sentinel" in spec["command"][-1]
        assert any(v.endswith(":/etc/redis-ha/sentinel.conf:ro") for v in spec["volumes"])
        assert "healthcheck" in spec
    # A volume each: what a sentinel wrote after a failover is its own, and survives it.
    volumes = [
        next(v.split(":")[0] for v in SERVICES[s]["volumes"] if v.endswith(":/data")) for s in SENTINELS
    ]
    assert len(set(volumes)) == 3 and set(volumes) <= set(COMPOSE["volumes"])


def runs_on_its_copy(spec: dict[str, Any], mounted: str, copy: str) -> bool:
    """The container copies ``mounted`` to ``copy`` only when there is none yet (the
    sentinels rewrite the copy after a failover; a restart must keep what they wrote)
    and runs the server on the copy."""
    assert spec["command"][:2] == ["sh", "-c"]
    script = spec["command"][-1]
    guard, run = (part.strip() for part in script.split(";", 1))
    assert shlex.split(guard) == ["[", "-f", copy, "]", "||", "cp", mounted, copy], guard
    words = shlex.split(run)
    return words[:2] == ["exec", "redis-server"] and words[2] == copy


def server_conf(name: str) -> dict[str, list[str]]:
    text = (ROOT / "ops" / "ha" / f"{name}.conf").read_text()
    return {words[0]: words[1:] for line in text.splitlines()
            if line.strip() and not line.startswith("#") for words in [line.split()]}  # fmt: skip


def test_the_replica_follows_the_master_and_both_keep_the_brokers_settings() -> None:
    for name in ("redis-master", "redis-replica"):
        spec = SERVICES[name]
        assert runs_on_its_copy(spec, "/etc/redis-ha/redis.conf", "/data/redis.conf"), name
        assert f"./ops/ha/{name}.conf:/etc/redis-ha/redis.conf:ro" in spec["volumes"]
        conf = server_conf(name)
        # As the single redis: durable, never evicting a task.
        assert conf["appendonly"] == ["yes"] and conf["maxmemory-policy"] == ["noeviction"]
        assert conf["replica-announce-ip"] == [name] and conf["dir"] == ["/data"]
    assert server_conf("redis-replica")["replicaof"] == ["redis-master", "6379"]
    assert "replicaof" not in server_conf("redis-master")
    for spec in HA.values():
        assert "healthcheck" in spec


def test_the_override_points_every_service_at_the_sentinels() -> None:
    ours = {name for name, spec in SERVICES.items() if "build" in spec and "profiles" not in spec}
    assert ours <= set(OVERRIDE["services"]), ours - set(OVERRIDE["services"])
    assert set(OVERRIDE["services"]) <= set(SERVICES)
    name, _, _, _ = monitored()
    for service, spec in OVERRIDE["services"].items():
        url = spec["environment"]["SMSDISPATCH_BROKER_URL"]
        target = parse_sentinel(url)
        assert target.master_name == name, service
        assert sorted(host for host, _ in target.sentinels) == SENTINELS
        assert all(port == 26379 for _, port in target.sentinels)
        assert set(spec["depends_on"]) >= set(SENTINELS)
        # The whole configuration loads with it, as each service would at start-up.
        settings = config.load(ROOT / "ops" / "smsdispatch.example.toml", env={"SMSDISPATCH_BROKER_URL": url})
        assert settings.broker_url == url


@pytest.mark.parametrize(
    ("stdout", "code", "healthy"),
    [
        ("redis-master\n6379\n", 0, True),
        ("\n", 0, False),  # nil: this sentinel knows of no master (yet)
        ("ERR unknown master\n", 0, False),
        ("NOAUTH Authentication required.\n", 1, False),
        ("", 1, False),  # Could not connect (on stderr)
    ],
)
def test_a_sentinel_is_healthy_only_when_it_names_the_master(
    stdout: str, code: int, healthy: bool, tmp_path: Path
) -> None:
    """The healthcheck runs as compose runs it (``sh -c``), on a stand-in redis-cli
    that prints a given reply and records its arguments."""
    name, _, _, _ = monitored()
    fake = tmp_path / "redis-cli"
    (tmp_path / "reply").write_text(stdout)
    fake.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/args\ncat {tmp_path}/reply\nexit {code}\n')
    fake.chmod(0o755)
    for sentinel in SENTINELS:
        test = SERVICES[sentinel]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and len(test) == 2, test
        script = test[1].replace("$$", "$")  # compose's escape of $
        env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
        ran = subprocess.run(["sh", "-c", script], env=env, capture_output=True, timeout=10)
        assert (ran.returncode == 0) is healthy, (sentinel, stdout, ran)
        assert (tmp_path / "args").read_text().split() == [
            "-p", "26379", "--raw", "sentinel", "get-master-addr-by-name", name,
        ]  # fmt: skip
