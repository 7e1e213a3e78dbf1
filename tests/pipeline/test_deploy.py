"""docker-compose.yml and the Dockerfile, checked without a Docker engine: every
service runs a command the suite also runs on the host, and that command is run here."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from dispatcher import config
from dispatcher.cli import build_parser
from tests.host_commands import API, BEAT, DB_UPGRADE, RUN_ON_HOST, WORKER, host_argv
from tests.support import PG_URL, REDIS_URL, ROOT, Stack, reset_postgres
from tests.support import SCHEMA_HEAD as HEAD
from workers.app import CONTROL_QUEUE, POLL_QUEUE, QUEUES

PROMETHEUS = ROOT / "ops" / "prometheus"
GRAFANA = ROOT / "ops" / "grafana"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OUR_SERVICES = {name: s for name, s in COMPOSE["services"].items() if "build" in s}


def check_command(command: list[str]) -> None:
    head = next((c for c in RUN_ON_HOST if tuple(command[: len(c)]) == c), None)
    assert head is not None, f"{command} is not a command the test suite runs on the host"
    if command[0] == "smsdispatch":
        build_parser().parse_args(command[1:])  # the options exist and parse
    if head == WORKER and "-Q" in command:
        queues = set(command[command.index("-Q") + 1].split(","))
        assert queues <= {*QUEUES.values(), CONTROL_QUEUE, POLL_QUEUE}, queues


@pytest.mark.parametrize("service", sorted(OUR_SERVICES))
def test_compose_service_commands_are_run_by_the_suite(service: str) -> None:
    spec = OUR_SERVICES[service]
    check_command(spec["command"])
    health = spec.get("healthcheck", {}).get("test", [])
    if health and health[0] == "CMD" and health[1] in ("smsdispatch", "celery"):
        check_command(health[1:])


def test_compose_shape() -> None:
    services = COMPOSE["services"]
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "noeviction"
    for name, spec in services.items():
        if name != "migrate":
            assert "healthcheck" in spec, f"{name} has no healthcheck"
    assert services["beat"]["deploy"]["replicas"] == 1
    # Codes never queue behind bulk: a pool of their own.
    queues = {name: spec["command"][spec["command"].index("-Q") + 1] for name, spec in services.items()
              if "-Q" in spec.get("command", [])}  # fmt: skip
    assert queues["worker-codes"] == "sms.high" and "sms.high" not in queues["worker-send"].split(",")
    assert services["simulator"]["profiles"] == ["dev"]
    for name in ("worker-send", "worker-codes", "worker-poll"):
        assert "container_name" not in services[name]  # scalable with --scale
    env = (ROOT / "ops" / "smsdispatch.env").read_text()
    assert "SMSDISPATCH_DATABASE_URL" in env and "SMSDISPATCH_BROKER_URL" in env
    example = config.load(ROOT / "ops" / "smsdispatch.example.toml", env={})
    assert example.api.token and example.flower.basic_auth


def test_dockerfile_entry_points_are_run_by_the_suite() -> None:
    text = (ROOT / "ops" / "Dockerfile").read_text()
    found = re.findall(r"^(?:CMD|ENTRYPOINT|HEALTHCHECK .*?CMD)\s+(\[.*\])\s*$", text, re.M)
    assert len(found) == 2
    for raw in found:
        check_command(json.loads(raw))


def test_compose_workers_export_where_prometheus_looks() -> None:
    """Every worker pool serves its counters on the port the scrape job asks each
    replica of its service for."""
    services = COMPOSE["services"]
    scrape = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "smsdispatch-workers")
    (lookup,) = job["dns_sd_configs"]
    workers = sorted(n for n, s in services.items() if "worker" in s.get("command", []))
    assert sorted(lookup["names"]) == workers
    for name in workers:
        assert services[name]["environment"]["SMSDISPATCH_METRICS_PORT"] == str(lookup["port"]), name


def test_compose_monitoring_profile_mounts_what_exists() -> None:
    services = COMPOSE["services"]
    for name in ("prometheus", "grafana"):
        spec = services[name]
        assert spec["profiles"] == ["monitoring"], name
        assert "healthcheck" in spec, name
        for volume in spec["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)
    # Prometheus reads the mounted config, whose rule files sit beside it.
    mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert mounts["./ops/prometheus"] == "/etc/prometheus/smsdispatch"
    assert mounts["prometheus-data"] == "/prometheus" and "prometheus-data" in COMPOSE["volumes"]
    # Neither has a login of its own worth the name: published on this host only, and
    # Grafana read-only (no admin with a default password).
    for name in ("prometheus", "grafana"):
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), name
    assert "--config.file=/etc/prometheus/smsdispatch/prometheus.yml" in services["prometheus"]["command"]
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["alerts.yml"] and (PROMETHEUS / "alerts.yml").is_file()
    environment = services["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert environment["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert environment["GF_AUTH_BASIC_ENABLED"] == "false"
    assert not any("PASSWORD" in key for key in environment)
    # Grafana finds its provisioning where it looks, and the dashboards where the
    # dashboard provider says they are.
    grafana = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert grafana["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "smsdispatch.yml").read_text())[
        "providers"
    ]
    assert grafana["./ops/grafana/dashboards"] == provider["options"]["path"]
    [source] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    board = json.loads((GRAFANA / "dashboards" / "smsdispatch.json").read_text())
    assert {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])} == {source["uid"]}


def test_db_upgrade_on_postgres() -> None:
    reset_postgres(PG_URL)
    env = {**os.environ, "SMSDISPATCH_DATABASE_URL": PG_URL}
    env.pop("SMSDISPATCH_CONFIG", None)
    result = subprocess.run(
        host_argv(DB_UPGRADE), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"revision {HEAD}" in result.stdout
    again = subprocess.run(
        host_argv(DB_UPGRADE, "--json"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0  # idempotent
    data = json.loads(again.stdout)
    assert data["revision"] == data["was"] == HEAD and "postgres@" in data["database"]


def test_standalone_beat_drives_the_sweeper(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    stack.start_worker()
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(stack.config_path)}
    beat = subprocess.Popen(
        host_argv(BEAT, "-s", str(stack.tmp / "schedule"), "-l", "warning"),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        from dispatcher.coordination import coordinator_for

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and coordinator_for(REDIS_URL).get_value("heartbeat:sweep") is None:
            time.sleep(0.3)
        assert coordinator_for(REDIS_URL).get_value("heartbeat:sweep") is not None
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(10)


def test_api_command_serves(stack: Stack) -> None:
    stack.configure(providers=["prostor"])
    stack.table["api"] = {"token": "deploy-token-1"}
    stack.config_path.write_text(config.to_toml(stack.table), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(stack.config_path)}
    proc = subprocess.Popen(
        host_argv(API, "--host", "127.0.0.1", "--port", str(port)),
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        reply: Any = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                headers = {"Authorization": "Bearer deploy-token-1"}
                reply = requests.get(f"http://127.0.0.1:{port}/v1/providers", headers=headers, timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert reply is not None and reply.status_code == 200
        assert reply.json()[0]["provider"] == "prostor"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_api_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("", encoding="utf-8")
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(path)}
    result = subprocess.run(host_argv(API), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "api.token" in result.stderr
