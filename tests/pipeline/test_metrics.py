"""/metrics with real parts: messages sent through real Celery workers to the simulator,
the counters read back from the API's /metrics (multiprocess mode) and from a worker's
own port, compared with what the ledger and the simulator saw; the gauges compared
with SQL; the alert rules and the dashboard checked against what is exported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select

from dispatcher import api, config, db, metrics, stoplist
from dispatcher.coordination import LOW_BALANCE, coordinator_for
from dispatcher.errors import ValidationError
from dispatcher.http_api import create_app
from dispatcher.models import ATTEMPTS, BALANCES, CALLBACKS, MESSAGES, utcnow
from dispatcher.simulator.core import Simulator
from tests.faults.servers import free_port
from tests.support import ROOT, InlinePolls, Stack, now_plus, store_accepted

TOKEN = "metrics-test-token-41c2"
PROMETHEUS = ROOT / "ops" / "prometheus"
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "smsdispatch.json"

FINAL = {st.value for st in metrics.FINAL}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Scrape:
    """One /metrics answer, parsed."""

    text: str
    types: dict[str, str]  # family name -> type
    samples: Samples  # (sample name, sorted labels) -> value

    @classmethod
    def parse(cls, text: str) -> Scrape:
        types: dict[str, str] = {}
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return cls(text, types, samples)

    def by(self, name: str, *keys: str, **where: str) -> dict[tuple[str, ...], float]:
        """The samples of ``name`` matching ``where``, summed by the labels ``keys``."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for (sample, labels), value in self.samples.items():
            found = dict(labels)
            if sample == name and all(found.get(k) == v for k, v in where.items()):
                out[tuple(found.get(k, "") for k in keys)] += value
        return dict(out)

    def counted(self, name: str, *keys: str) -> dict[tuple[str, ...], float]:
        """As ``by``, without the series that are still at 0 (``metrics.declare``)."""
        return {k: v for k, v in self.by(name, *keys).items() if v}

    def names(self) -> set[str]:
        """Every series name a query may use: a counter's ``_total``, a histogram's
        ``_bucket``/``_sum``/``_count``, a gauge's own name. From the family types,
        so that a labelled counter with no sample yet counts too."""
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        return {f"{n}{s}" for n, t in self.types.items() for s in suffixes.get(t, [""])}


def scrape(app: Any) -> Scrape:
    with TestClient(app) as client:
        reply = client.get("/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    return Scrape.parse(reply.text)


def ends_in_ledger() -> dict[tuple[str, str], int]:
    """(provider, status) -> messages in an end status, as the final counter counts them."""
    with db.session_scope() as s:
        rows = s.execute(
            select(MESSAGES.c.provider, MESSAGES.c.status, func.count())
            .where(MESSAGES.c.status.in_([st.value for st in metrics.ENDS]))
            .group_by(MESSAGES.c.provider, MESSAGES.c.status)
        ).all()
    return {(p or metrics.NO_PROVIDER, st): int(n) for p, st, n in rows}


def attempts_by(outcomes: tuple[str, ...]) -> dict[tuple[str], float]:
    with db.session_scope() as s:
        rows = s.execute(
            select(ATTEMPTS.c.provider, func.count())
            .where(ATTEMPTS.c.outcome.in_(outcomes))
            .group_by(ATTEMPTS.c.provider)
        ).all()
    return {(p,): float(n) for p, n in rows}


# -- one run through the whole pipeline, read by several tests ------------------------


@dataclass
class Run:
    stack: Stack
    sim: Simulator
    after: Scrape  # the API's /metrics once the worker has stopped
    calls: dict[str, int]  # provider -> HTTP requests the simulator got
    ends: dict[tuple[str, str], int]
    sent: int
    scheduled: int


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A real Celery worker (prefork, its own process and children) in multiprocess
    mode, sharing its directory with the API of this process. smska answers every
    call with HTTP 500 (messages are retried there), mysms refuses our account (they
    fail over), prostor takes them and its delivery reports arrive by polling. One
    message has a status callback; one by-name task is refused."""
    from celery import Celery

    from dispatcher.simulator.receiver import Receiver

    tmp = Path(tmp_path_factory.mktemp("metrics"))
    shared = tmp / "prometheus"
    shared.mkdir()
    sim = Simulator(base_port=0).start()
    stack = Stack(sim, tmp, str(request.param))
    receiver = Receiver().start()
    try:
        hooks = {
            "allow_private": True,
            "interval": 0.2,
            "backoff_base": 0.2,
            "backoff_cap": 1.0,
            "timeout": 3.0,
        }
        stack.configure(providers=["smska", "mysms", "prostor"], smska={"max_retries": 1},
                        sections={"api": {"token": TOKEN}, "callbacks": hooks})  # fmt: skip
        sim["smska"].state.faults.http500_rate = 1.0
        sim["mysms"].state.faults.auth_fail = True
        with multiprocess(shared):  # the worker's environment, copied at its start
            stack.start_worker(beat=True)
        # Given: eight messages now (one with a callback), two for later, one bad by-name task
        ids = [api.send_sms(f"7916555{n:04d}", f"metrics {n}") for n in range(7)]
        ids.append(api.send_sms("79165550007", "called back", callback_url=receiver.url))
        later = [api.send_sms(f"7916556{n:04d}", "later", at=now_plus(3600)) for n in range(2)]
        other = Celery("other-app", broker=stack.redis_url)
        other.send_task("smsdispatch.send", kwargs={"to": "12", "text": "bad"}, queue="sms.bulk")
        other.close()
        # When: they are all final, their callbacks delivered, and the worker stops
        done = stack.wait_until(ids, FINAL, timeout=60)
        assert set(done.values()) <= FINAL and len(done) == len(ids), done
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (callbacks_in("pending") or "refused its arguments"
                                                not in stack.log_text()):  # fmt: skip
            time.sleep(0.2)
        stack.stop()
        calls = {
            name: sum(sim[name].state.stats()["requests"].values()) for name in ("smska", "mysms", "prostor")
        }
        # A balance read, as the beat's task does (in this process: its calls are not the worker's)
        from dispatcher.tracking import read_balances

        settings = config.get_settings()
        read_balances(settings, coordinator_for(settings.broker_url))
        # Then: the API reads the counters the worker's processes left behind
        with multiprocess(shared):
            app = create_app(config.get_settings())
        after = scrape(app)
        yield Run(stack, sim, after, calls, ends_in_ledger(), len(ids), len(later))
    finally:
        receiver.stop()
        stack.stop()
        sim.stop()
        config.set_settings(None)


@contextmanager
def multiprocess(path: Path) -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR set for what starts in the block, as it was after."""
    saved = os.environ.get(metrics.MULTIPROC_ENV)
    os.environ[metrics.MULTIPROC_ENV] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(metrics.MULTIPROC_ENV, None)
        else:
            os.environ[metrics.MULTIPROC_ENV] = saved


def callbacks_in(state: str) -> int:
    with db.session_scope() as s:
        return int(s.execute(select(func.count()).where(CALLBACKS.c.state == state)).scalar_one())


def test_final_counters_match_the_ledger(run: Run) -> None:
    counted = run.after.counted("smsdispatch_messages_final_total", "provider", "status")
    assert counted == {k: float(v) for k, v in run.ends.items()}
    # Every provider's every end is a series from the start, at 0 until it counts.
    every = run.after.by("smsdispatch_messages_final_total", "provider", "status")
    assert ("smska", "unknown") in every and ("none", "expired") in every
    assert {p for p, _ in counted} == {"prostor"} and sum(counted.values()) == run.sent


def test_provider_calls_match_what_the_provider_received(run: Run) -> None:
    calls = run.after.by("smsdispatch_provider_calls_total", "provider")
    assert calls == {(name,): float(n) for name, n in run.calls.items() if n}
    # Every smska call failed with HTTP 500; every prostor call went through.
    assert set(run.after.by("smsdispatch_provider_calls_total", "outcome", provider="smska")) == {
        ("http_5xx",)
    }
    assert set(run.after.by("smsdispatch_provider_calls_total", "outcome", provider="prostor")) == {("ok",)}
    # The histogram timed each call once, in the bucket +Inf as in its count.
    by_kind = run.after.by("smsdispatch_provider_calls_total", "provider", "kind")
    assert run.after.by("smsdispatch_provider_call_seconds_count", "provider", "kind") == by_kind
    assert run.after.by("smsdispatch_provider_call_seconds_bucket", "provider", "kind", le="+Inf") == by_kind
    assert by_kind[("prostor", "send")] >= 1 and by_kind[("prostor", "status")] >= 1


def test_retries_and_failovers_match_the_attempts(run: Run) -> None:
    retries = run.after.by("smsdispatch_retries_total", "provider")
    failovers = run.after.by("smsdispatch_failovers_total", "provider")
    assert retries == attempts_by(("retry",)) and retries[("smska",)] >= 1
    assert failovers == attempts_by(("failover", "not_sent")) and failovers[("mysms",)] >= 1


def test_callbacks_and_by_name_refusals_are_counted_in_the_worker(run: Run) -> None:
    delivered = callbacks_in("delivered")
    assert delivered >= 2  # accepted, then its final status, at least
    assert run.after.by("smsdispatch_callback_deliveries_total", "outcome") == {("delivered",): delivered}
    assert run.after.by("smsdispatch_intake_refused_total", "door", "reason") == {("task", "invalid"): 1}


def test_gauges_equal_the_ledger(run: Run) -> None:
    gauges = run.after.by("smsdispatch_messages", "status", "provider")
    with db.session_scope() as s:
        in_sql = dict(
            s.execute(
                select(MESSAGES.c.status, func.count())
                .where(MESSAGES.c.status.not_in([st.value for st in metrics.FINAL]))
                .group_by(MESSAGES.c.status)
            ).all()
        )
        pending = s.execute(select(func.count()).where(CALLBACKS.c.state == "pending")).scalar_one()
    by_status: dict[str, float] = defaultdict(float)
    for (status, _), n in gauges.items():
        by_status[status] += n
    assert {k: v for k, v in by_status.items() if v} == {k: float(v) for k, v in in_sql.items()}
    assert gauges[("scheduled", "none")] == run.scheduled
    assert gauges[("queued", "none")] == 0  # present at 0, for the rules
    one = run.after.samples
    assert one[("smsdispatch_stuck_messages", ())] == 0
    assert one[("smsdispatch_callbacks_pending", ())] == pending
    assert one[("smsdispatch_metrics_source_up", (("source", "database"),))] == 1
    assert set(run.after.by("smsdispatch_circuit_state", "provider")) == {
        ("smska",),
        ("mysms",),
        ("prostor",),
    }
    assert set(run.after.by("smsdispatch_queue_depth", "queue")) >= {("sms.high",), ("sms.bulk",)}
    # Balances: the ledger's newest reading of each provider; `low`, what routing reads.
    settings = config.get_settings()
    balances = newest_balances(settings)
    assert ("prostor",) in balances  # read at the end of the run
    assert run.after.by("smsdispatch_provider_balance", "provider") == balances
    assert run.after.by("smsdispatch_provider_balance_low", "provider") == {
        (pc.name,): skipped_for_balance(settings, pc.name) for pc in settings.providers
    }


def newest_balances(settings: config.Settings) -> dict[tuple[str, ...], float]:
    """Each provider's newest balance reading with an amount, one query a provider."""
    found: dict[tuple[str, ...], float] = {}
    with db.session_scope() as s:
        for pc in settings.providers:
            amount = s.execute(
                select(BALANCES.c.amount)
                .where(BALANCES.c.provider == pc.name, BALANCES.c.amount.is_not(None))
                .order_by(BALANCES.c.at.desc())
                .limit(1)
            ).scalar()
            if amount is not None:
                found[(pc.name,)] = float(amount)
    return found


def skipped_for_balance(settings: config.Settings, name: str) -> float:
    """1.0 when routing's own gate skips the provider for its balance."""
    gate = coordinator_for(settings.broker_url).gate(name, 30.0, settings.provider(name).balance_threshold)
    return 1.0 if gate.decision == LOW_BALANCE else 0.0


# -- this process: refusals at the door, exact values, sources down ------------------------


@pytest.fixture
def served(any_stack: Stack) -> Iterator[Stack]:
    any_stack.configure(providers=["prostor"], sections={"api": {"token": TOKEN}})
    api.use_publisher(lambda due: None)  # nothing consumes: messages stay queued
    yield any_stack
    api.use_publisher(None)


def test_refusals_at_the_door_are_counted_by_reason(served: Stack) -> None:
    app = create_app(config.get_settings())
    before = scrape(app)
    with db.session_scope() as s:
        stoplist.add(s, "79165550001", reason="asked us to stop")
    api.send_sms("79165550001", "to a stopped number")
    api.send_sms("79165550002", "once", key="k-1")
    for bad in ({"to": "12", "text": "x"}, {"to": "79165550002", "text": "twice", "key": "k-1"}):
        with pytest.raises(ValidationError):
            api.send_sms(**bad)
    # A bulk call counts each of its messages, refused or stopped: all or nothing.
    api.send_bulk([{"to": "79165550001", "text": "a"}, {"to": "79165550001", "text": "b"},
                   {"to": "79165550004", "text": "c"}])  # fmt: skip
    with pytest.raises(ValidationError):  # one bad field refuses its 4 messages
        api.send_bulk([{"to": f"7916555100{n}", "text": "x"} for n in range(3)] + [{"to": "12", "text": "x"}])
    with pytest.raises(ValidationError):  # k-1 reused: the store refuses all 3
        api.send_bulk([{"to": f"7916555200{n}", "text": "y", "key": f"k-{n}"} for n in range(3)])
    with TestClient(app) as client:  # an HTTP producer goes through the same door
        auth = {"Authorization": f"Bearer {TOKEN}"}
        reply = client.post("/v1/messages", json={"messages": [{"to": "1", "text": "x"}, {"to": "79165550005",
                            "text": "x"}]}, headers=auth)  # fmt: skip
        assert reply.status_code == 422
        # refused by the request schema itself (a number as `to`), before dispatcher.api
        reply = client.post("/v1/messages", json={"to": 79165550003, "text": "x"}, headers=auth)
        assert reply.status_code == 422 and reply.json()["error"]["field"] == "to"
        many = [{"to": "79165550006", "text": "x"}, {"to": 79165550007, "text": "x"}, {"to": "79165550008"}]
        reply = client.post("/v1/messages", json={"messages": many}, headers=auth)
        assert reply.status_code == 422 and reply.json()["error"]["field"] == "messages[1].to"
        # refused by the HTTP API itself: a key that is not the Idempotency-Key header
        reply = client.post("/v1/messages", json={"to": "79165550009", "text": "x", "key": "a"},
                            headers={**auth, "Idempotency-Key": "b"})  # fmt: skip
        assert reply.status_code == 422 and reply.json()["error"]["field"] == "key"
        # a bad query on a read is no message refused
        reply = client.get("/v1/messages?limit=x", headers={"Authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 422
    after = scrape(app)

    def moved(name: str, *keys: str) -> dict[tuple[str, ...], float]:
        old = before.by(name, *keys)
        return {k: v - old.get(k, 0.0) for k, v in after.by(name, *keys).items() if v != old.get(k, 0.0)}

    assert moved("smsdispatch_intake_refused_total", "door", "reason") == {
        ("api", "stopped"): 3, ("api", "invalid"): 1 + 4 + 2 + 1 + 3 + 1, ("api", "conflict"): 1 + 3,
    }  # fmt: skip
    # The stopped ones are stored rejected: a final status no provider gave.
    assert moved("smsdispatch_messages_final_total", "provider", "status") == {("none", "rejected"): 3}
    assert after.by("smsdispatch_messages", "status", "provider")[("queued", "none")] == 2


def test_large_values_round_trip_exactly(served: Stack) -> None:
    amount = 123456789.25  # printed by %g, this was 1.23457e+08
    with db.session_scope() as s:
        s.execute(insert(BALANCES).values(provider="prostor", at=utcnow(), amount=amount, credit=None,
                                          currency="RUB", error=None))  # fmt: skip
    got = scrape(create_app(config.get_settings()))
    # Every digit kept (Go's float form, 1.2345678925e+08), never %g's six.
    assert f"{amount:g}" not in got.text
    assert got.samples[("smsdispatch_provider_balance", (("provider", "prostor"),))] == amount
    assert got.samples[("smsdispatch_provider_balance_low", (("provider", "prostor"),))] == 0
    assert 0 <= got.samples[("smsdispatch_provider_balance_age_seconds", (("provider", "prostor"),))] < 60


def test_balance_low_is_what_routing_skips(any_stack: Stack) -> None:
    """`smsdispatch_provider_balance_low` (SmsProviderBalanceLow: "routing skips it")
    reads what routing's gate reads, the balance and credit the last read left in
    Redis, compared with the threshold as the gate compares them; not the ledger's
    history, which says otherwise here."""
    settings = any_stack.configure(providers=["prostor", "mysms"], prostor={"balance_threshold": 100.0},
                                   sections={"api": {"token": TOKEN}})  # fmt: skip
    coordinator = coordinator_for(settings.broker_url)
    coordinator.set_value("balance:mysms", "0.0")  # no threshold: never skipped for it
    with db.session_scope() as s:  # the ledger's newest reading: far over the threshold
        s.execute(insert(BALANCES).values(provider="prostor", at=utcnow(), amount=500.0, credit=None,
                                          currency="RUB", error=None))  # fmt: skip
    app = create_app(settings)
    for kept, low in ((None, 0.0), ("50.0", 1.0), ("150.0", 0.0), ("99.99", 1.0), ("not a number", 0.0)):
        if kept is not None:
            coordinator.set_value("balance:prostor", kept)
        got = scrape(app)
        assert got.by("smsdispatch_provider_balance_low", "provider") == {("prostor",): low, ("mysms",): 0.0}
        assert skipped_for_balance(settings, "prostor") == low and skipped_for_balance(settings, "mysms") == 0
        assert got.by("smsdispatch_provider_balance", "provider") == {("prostor",): 500.0}


def test_metrics_answer_with_the_database_and_redis_down(served: Stack) -> None:
    gone = replace(config.get_settings(), database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
                   broker_url=f"redis://127.0.0.1:{free_port()}/0")  # fmt: skip
    got = scrape(create_app(gone))
    up = got.by("smsdispatch_metrics_source_up", "source")
    assert up == {("database",): 0.0, ("redis",): 0.0}
    assert "smsdispatch_messages" not in got.types and "smsdispatch_circuit_state" not in got.types
    assert "smsdispatch_provider_balance_low" not in got.types
    assert "smsdispatch_workers_healthy" not in got.types
    assert got.types["smsdispatch_messages_final"] == "counter"  # the counters still answer


def test_the_poll_lag_shows_a_staged_lag(served: Stack) -> None:
    """Polls fell seven minutes behind (nothing asked them): the gauges say how far and how
    many; a poll round with its groups brings both back to 0."""
    settings = config.get_settings()
    # prostor's status queue has been silent about these long enough: they are polled by id
    age = settings.polling.queue_fallback_after + 60
    store_accepted(settings, "prostor", [f"7916555{n:04d}" for n in range(12)], age=age, due_ago=[420.0] * 12)
    app = create_app(settings)
    got = scrape(app)
    assert 419 <= got.by("smsdispatch_poll_lag_seconds", "provider")[("prostor",)] < 480
    assert got.by("smsdispatch_polls_due", "provider") == {("prostor",): 12.0}
    time.sleep(0.7)  # the simulator delivers them: final at this poll
    inline = InlinePolls(settings)
    try:
        assert inline.round("prostor").polled == 12
    finally:
        inline.close()
    after = scrape(app)
    assert after.by("smsdispatch_poll_lag_seconds", "provider") == {("prostor",): 0.0}
    assert after.by("smsdispatch_polls_due", "provider") == {("prostor",): 0.0}
    checks = ("smsdispatch_status_checks_total", "provider", "result")  # this process's counter
    assert after.by(*checks)[("prostor", "final")] - got.by(*checks).get(("prostor", "final"), 0.0) == 12.0


# -- a worker's own port --------------------------------------------------------------------


def test_a_worker_serves_its_counters_on_its_own_port(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """A threads pool, no shared directory: the worker's port has its counters, and
    the API of this process (not in multiprocess mode) has none of them."""
    stack.pool = "threads"
    stack.configure(providers=["prostor"], sections={"api": {"token": TOKEN}})
    port = free_port()
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.setenv(metrics.PORT_ENV, str(port))
    # This process may have called prostor in an earlier test (doctor, the console's scene):
    # what matters is that the worker's calls do not show up here.
    calls_here = scrape(create_app(config.get_settings())).by("smsdispatch_provider_calls_total", "provider")
    stack.start_worker(beat=True)
    ids = [api.send_sms(f"7916557{n:04d}", "by port") for n in range(5)]
    assert set(stack.wait_until(ids, FINAL, timeout=60).values()) <= FINAL
    deadline = time.monotonic() + 10
    while True:  # the last poll's commit may come a moment after the status is read
        worker = Scrape.parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        counted = worker.counted("smsdispatch_messages_final_total", "provider", "status")
        if counted == ends_in_ledger() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == ends_in_ledger() and sum(counted.values()) == 5
    assert worker.by("smsdispatch_provider_calls_total", "kind")[("send",)] >= 1
    assert "smsdispatch_messages" not in worker.types  # the gauges are the API's
    here = scrape(create_app(config.get_settings()))
    assert here.by("smsdispatch_provider_calls_total", "provider") == calls_here


# -- alert rules and the dashboard ------------------------------------------------------------


def rule_files() -> list[Path]:
    """The rule files: every YAML file of ops/prometheus/ but the server's config."""
    return sorted(p for p in PROMETHEUS.glob("*.yml") if p.name != "prometheus.yml")


def queried_names(expr: str) -> set[str]:
    import re

    return set(re.findall(r"\bsmsdispatch_[a-z0-9_]+", expr))


def test_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("SMSDISPATCH_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not on PATH and SMSDISPATCH_REQUIRE_PROMTOOL=1")
        pytest.skip("promtool is not on PATH")
    files = [str(p) for p in rule_files()]
    assert files
    checked = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    server = [promtool, "check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml")]
    config_check = subprocess.run(server, capture_output=True, text=True, timeout=60)
    assert config_check.returncode == 0, config_check.stdout + config_check.stderr
    tests = sorted(str(p) for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert tests
    unit = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True, timeout=60,
                          cwd=PROMETHEUS / "tests")  # fmt: skip
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_rules_name_only_exported_metrics(run: Run) -> None:
    exported = run.after.names()
    rules = [r for p in rule_files() for g in yaml.safe_load(p.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules}
    assert {"SmsProviderDown", "SmsProviderBalanceLow", "SmsDeliveryRateDropping", "SmsQueueGrowing",
            "SmsCallbacksFailing", "SmsUnknownPilingUp", "SmsStuckMessages",
            "SmsWorkersNotConsuming", "SmsMetricsScrapeFailing", "SmsMetricsAbsent"} <= alerts  # fmt: skip
    for rule in rules:
        names = queried_names(rule["expr"])
        # Each reads our metrics, but the one on Prometheus' own `up` of our scrape jobs.
        assert names or rule["expr"].startswith('up{job=~"smsdispatch'), rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)
        assert rule["labels"]["severity"] in ("page", "warn") and "for" in rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_dashboard_names_only_exported_metrics(run: Run) -> None:
    exported = run.after.names()
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    for expr in exprs:
        names = queried_names(expr)
        assert names and names <= exported, (expr, names - exported)
