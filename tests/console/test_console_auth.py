"""The console's session, CSRF and login limits through FastAPI's TestClient, and its
statistics on SQLite and PostgreSQL. No browser needed."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import insert

from dispatcher import config, db
from dispatcher.console import router, stats
from dispatcher.console import routes as console_routes
from dispatcher.console.auth import SESSION_TTL, LoginThrottle, Signer
from dispatcher.coordination import coordinator_for
from dispatcher.models import ATTEMPTS, BALANCES, CALLBACKS, MESSAGES
from dispatcher.simulator.core import Simulator
from tests.conftest import sim_table
from tests.console.conftest import login_token
from tests.support import PG_URL, reset_postgres

TOKEN = "console-unit-operator-token-1"


def make_settings(sim: Simulator, database_url: str, token: str = TOKEN) -> config.Settings:
    table = sim_table(sim)
    table.update({"database_url": database_url, "broker_url": "memory://", "api": {"token": token}})
    return config.parse(table)


@pytest.fixture
def settings(sim: Simulator, tmp_path: Path) -> Iterator[config.Settings]:
    made = make_settings(sim, f"sqlite:///{tmp_path / 'ledger.db'}")
    config.set_settings(made)
    db.dispose_engines()
    coordinator_for("memory://").reset()
    yield made
    db.dispose_engines()
    config.set_settings(None)


def app_for(settings: config.Settings) -> FastAPI:
    app = FastAPI()
    app.include_router(router(settings))
    return app


def log_in(client: TestClient, key: str = TOKEN) -> Any:
    form = client.get("/console/login")
    return client.post(
        "/console/login", data={"csrf": login_token(form.text), "key": key}, follow_redirects=False
    )


# -- tokens


def test_sessions_are_signed_expire_and_belong_to_one_token() -> None:
    signer = Signer(TOKEN)
    session, value = signer.new_session(now=1_000_000)
    assert signer.read_session(value, now=1_000_000 + 60) == session
    assert signer.read_session(value, now=1_000_000 + SESSION_TTL) is None  # expired
    assert signer.read_session(value, now=1_000_000 - 3600) is None  # from the future
    assert Signer("another-token").read_session(value, now=1_000_000) is None  # the token changed
    head, mac = value.rsplit(".", 1)
    flipped = "B" if mac[-1] == "A" else "A"
    assert signer.read_session(f"{head}.{mac[:-1]}{flipped}", now=1_000_000) is None
    forged = value.replace(str(session.issued), str(session.issued + 3600))
    assert signer.read_session(forged, now=1_000_000) is None
    for junk in ("", "s1", "s1.x.y.z", "a" * 500, "s1.１２.n.m"):
        assert signer.read_session(junk) is None
    assert signer.check_csrf(session, signer.csrf_for(session))
    assert not signer.check_csrf(session, None) and not signer.check_csrf(session, "")
    assert not signer.check_csrf(session, Signer("another-token").csrf_for(session))


def test_login_tokens_are_double_submitted_and_signed() -> None:
    signer = Signer(TOKEN)
    token = signer.new_login_token()
    assert signer.check_login_token(token, token)
    assert not signer.check_login_token(token, signer.new_login_token())  # not the cookie's
    assert not signer.check_login_token(None, token) and not signer.check_login_token(token, None)
    other = Signer("another-token").new_login_token()
    assert not signer.check_login_token(other, other)  # both forged alike: not ours
    issued = int(token.split(".")[1])
    assert not signer.check_login_token(token, token, now=issued + 2 * 3600)  # stale


def test_client_keys_are_not_the_operators() -> None:
    signer = Signer(TOKEN)
    assert signer.is_operator(TOKEN)
    for key in ("", TOKEN[:-1], TOKEN + " ", TOKEN.upper(), "sk_live_client_key"):
        assert not signer.is_operator(key)


def test_failed_logins_are_limited_per_address() -> None:
    throttle = LoginThrottle(limit=3, window=60.0)
    for t in range(3):
        assert throttle.wait("10.0.0.1", now=100.0 + t) == 0.0
        throttle.failed("10.0.0.1", now=100.0 + t)
    assert throttle.wait("10.0.0.1", now=103.0) == pytest.approx(57.0)
    assert throttle.wait("10.0.0.2", now=103.0) == 0.0  # another address
    assert throttle.wait("10.0.0.1", now=161.0) == 0.0  # the window passed
    throttle.failed("10.0.0.1", now=161.0)
    throttle.succeeded("10.0.0.1")
    assert throttle.wait("10.0.0.1", now=161.0) == 0.0


# -- through the app


def test_pages_need_a_session(settings: config.Settings) -> None:
    client = TestClient(app_for(settings))
    for path in ("/console", "/console/providers", "/console/queues", "/console/messages/abc"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login", path
    assert client.get("/console/static/console.css").status_code == 200  # no data in it


def test_cookies_are_secure_over_https(settings: config.Settings) -> None:
    client = TestClient(app_for(settings), base_url="https://console.example")
    form = client.get("/console/login")
    assert "; secure" in form.headers["set-cookie"].lower()
    answer = log_in(client)
    assert answer.status_code == 303
    session = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("smsd_console="))
    flags = {f.strip().lower() for f in session.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/console", f"max-age={SESSION_TTL}"} <= flags
    plain = TestClient(app_for(settings))
    assert "secure" not in plain.get("/console/login").headers["set-cookie"].lower()


def test_a_changed_token_ends_every_session(sim: Simulator, settings: config.Settings) -> None:
    client = TestClient(app_for(settings))
    assert log_in(client).status_code == 303
    assert client.get("/console/queues", follow_redirects=False).status_code == 200
    rotated = make_settings(sim, settings.database_url, token="a-brand-new-operator-token")
    other = TestClient(app_for(rotated), cookies=dict(client.cookies))
    assert other.get("/console/queues", follow_redirects=False).status_code == 303


def test_wrong_keys_are_slowed_then_stopped(
    settings: config.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_routes, "FAILED_LOGIN_DELAY", 0.0)
    client = TestClient(app_for(settings))
    for _ in range(10):
        answer = log_in(client, "guess")
        assert answer.status_code == 401 and "Wrong key" in answer.text
        assert "guess" not in answer.text
    answer = log_in(client, TOKEN)  # even the right key waits now: no oracle for guesses
    assert answer.status_code == 429 and "Too many" in answer.text


def test_an_oversized_or_foreign_form_is_refused(settings: config.Settings) -> None:
    client = TestClient(app_for(settings))
    token = login_token(client.get("/console/login").text)
    big = client.post("/console/login", data={"csrf": token, "key": "k" * 10000})
    assert big.status_code == 400
    multipart = client.post("/console/login", files={"key": ("k", b"x")}, data={"csrf": token})
    assert multipart.status_code == 400


# -- statistics, on both databases


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, sim: Simulator, tmp_path: Path) -> Iterator[config.Settings]:
    if request.param == "postgres":
        reset_postgres(PG_URL)
        db.upgrade(db.make_engine(PG_URL))
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'stats.db'}"
    made = make_settings(sim, url)
    config.set_settings(made)
    db.dispose_engines()
    yield made
    db.dispose_engines()
    config.set_settings(None)


def _message(n: int, provider: str, created: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"{n:032x}", "to": f"7916{n:07d}", "text": "t", "priority": "normal", "payload_hash": "h",
        "parts": 1, "encoding": "gsm7", "status": "accepted", "provider": provider, "attempts": 1,
        "retries": 0,
        "failovers": 0, "tried": "", "created_at": created, "updated_at": created, "due_at": created,
        "expires_at": created + timedelta(days=1), "polls": 0, "send_at": None, "accepted_at": None,
        "final_at": None, **fields,
    }  # fmt: skip


def test_percentiles_are_exact_and_agree_across_databases(ledger: config.Settings) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    rows: list[dict[str, Any]] = []
    waits: dict[str, list[float]] = {"prostor": [], "mysms": []}
    for n in range(1, 38):
        provider = "prostor" if n % 3 else "mysms"
        wait = 0.05 * n + (n % 7) * 0.013  # seconds, in no particular order
        created = now - timedelta(minutes=20, seconds=n)
        waits[provider].append(wait)
        rows.append(_message(n, provider, created, accepted_at=created + timedelta(seconds=wait)))
    old = now - timedelta(hours=5)  # in the day, not the hour
    rows.append(_message(100, "prostor", old, accepted_at=old + timedelta(seconds=99)))
    rows.append(_message(101, "prostor", now - timedelta(minutes=1)))  # not accepted: not counted
    scheduled = now - timedelta(minutes=2)
    rows.append(
        _message(102, "prostor", scheduled, send_at=scheduled, accepted_at=now)
    )  # its wait was asked for
    with db.session_scope(ledger.database_url) as s:
        s.execute(insert(MESSAGES), rows)
    figures = stats.provider_stats(ledger, ["prostor", "mysms", "smska"], now=now)
    for provider, values in waits.items():
        hour = figures.to_accepted["hour"][provider]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        assert hour["n"] == len(values)
        assert hour["p50"] == pytest.approx(cuts[49], abs=1e-3)
        assert hour["p95"] == pytest.approx(cuts[94], abs=1e-3)
    day = figures.to_accepted["day"]["prostor"]
    assert day["n"] == len(waits["prostor"]) + 1
    assert day["p95"] == pytest.approx(
        statistics.quantiles([*waits["prostor"], 99.0], n=100, method="inclusive")[94], abs=1e-3
    )
    assert "smska" not in figures.to_accepted["hour"]
    assert stats.interpolate({0: 4.0}, 1, 0.95) == 4.0


def test_rates_spend_and_balances(ledger: config.Settings) -> None:
    # Noon: "yesterday" (20 h before) is another UTC day, the balance readings (from
    # 5 h before) all in this one.
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = now - timedelta(hours=20)
    with db.session_scope(ledger.database_url) as s:
        s.execute(insert(MESSAGES), [_message(1, "prostor", yesterday)])
        attempts = []
        for n, (outcome, at, cost) in enumerate(
            [("accepted", now, 1.5), ("accepted", now, 3.0), ("retry", now, None), ("reject", now, None),
             ("accepted", yesterday, 4.5), ("failover", yesterday, None),
             ("accepted", now - timedelta(days=30), 9.0)]
        ):  # fmt: skip
            attempts.append({"message_id": f"{1:032x}", "provider": "prostor", "kind": "prostor",
                             "started_at": at, "finished_at": at - timedelta(seconds=n), "outcome": outcome,
                             "cost": cost, "parts": 2 if cost else None})  # fmt: skip
        s.execute(insert(ATTEMPTS), attempts)
        # Twice as many readings as there are points, a minute apart, each 30 s into a
        # two-minute bucket (an instant on a bucket's edge would be at the mercy of
        # SQLite's julianday rounding); the failed read falls in the last bucket.
        points = stats.BALANCE_POINTS
        start = datetime.fromtimestamp((int(now.timestamp()) - 5 * 3600) // 120 * 120, UTC)
        s.execute(insert(BALANCES), [
            {"provider": "prostor", "at": start + timedelta(seconds=30 + 60 * i), "amount": 100.0 + i,
             "error": None}
            for i in range(2 * points)
        ] + [{"provider": "prostor", "at": start + timedelta(seconds=30 + 60 * (2 * points - 1) + 15),
              "amount": None, "error": "HTTP 500"}])  # fmt: skip
    figures = stats.provider_stats(ledger, ["prostor", "mysms"], now=now)
    hour, day = figures.rates["prostor"]["hour"], figures.rates["prostor"]["day"]
    assert (hour["calls"], hour["accepted"], hour["errors"], hour["rejected"]) == (4, 2, 1, 1)
    assert (day["calls"], day["accepted"], day["errors"]) == (6, 3, 2)
    assert day["acceptance"] == pytest.approx(0.5) and day["error_rate"] == pytest.approx(1 / 3)
    # The providers page's "24 h: sent / parts / cost" column.
    assert (hour["parts"], hour["cost"], day["parts"], day["cost"]) == (4, 4.5, 6, 9.0)
    assert figures.rates["mysms"]["day"]["acceptance"] is None
    assert (figures.rates["mysms"]["day"]["parts"], figures.rates["mysms"]["day"]["cost"]) == (0, None)
    by_day = {d["day"]: d for d in figures.spend}
    assert by_day == {
        now.strftime("%Y-%m-%d"): {"provider": "prostor", "day": now.strftime("%Y-%m-%d"), "cost": 4.5,
                                   "parts": 4, "messages": 2},
        yesterday.strftime("%Y-%m-%d"): {"provider": "prostor", "day": yesterday.strftime("%Y-%m-%d"),
                                         "cost": 4.5, "parts": 2, "messages": 1},
    }  # fmt: skip
    assert figures.balance_bucket_s == 120
    assert len(figures.balances) == points
    assert [b["at"] for b in figures.balances] == [start + timedelta(seconds=120 * j) for j in range(points)]
    assert [b["readings"] for b in figures.balances] == [2] * (points - 1) + [3]
    assert sum(b["errors"] for b in figures.balances) == 1 and figures.balances[-1]["errors"] == 1
    assert figures.balances[10]["amount"] == pytest.approx(120.5)  # readings 120 and 121
    assert figures.balances[-1]["amount"] == pytest.approx(100.0 + 2 * points - 1.5)  # a failed read is no 0


def test_the_providers_page_shows_how_far_polling_is_behind(ledger: config.Settings) -> None:
    """Tracking per provider: polls due, the oldest due poll's age, the calls a second of
    the last minute and the learnt first-poll delay, as `smsdispatch providers` has them."""
    now = datetime.now(UTC)
    due = now - timedelta(seconds=400)
    hour_ago = now - timedelta(hours=1)
    rows = [
        _message(n, "smska", hour_ago, accepted_at=hour_ago, provider_message_id=f"p{n}",
                 next_poll_at=due + timedelta(seconds=n))
        for n in range(1, 4)
    ]  # fmt: skip
    rows.append(_message(9, "smska", now, accepted_at=now, provider_message_id="p9",
                         next_poll_at=now + timedelta(seconds=10)))  # not due yet  # fmt: skip
    with db.session_scope(ledger.database_url) as s:
        s.execute(insert(MESSAGES), rows)
    coordinator = coordinator_for(ledger.broker_url)
    coordinator.reset()
    coordinator.set_value("poll_first:smska", "2.5")
    coordinator.set_value("poll_first_share:smska", "0.480/200")
    client = TestClient(app_for(ledger))
    assert log_in(client).status_code == 303
    page = client.get("/console/providers")
    assert page.status_code == 200, page.text
    row = page.text.split('<tr data-tracking="smska">', 1)[1].split("</tr>", 1)[0]
    cells = [c.split(">", 1)[1].split("</td", 1)[0].strip() for c in row.split("<td")[1:]]
    assert cells[0] == "3"  # due
    assert 395 <= float(cells[1].removesuffix(" s")) < 460  # the oldest due poll's age (399 s)
    assert cells[3].startswith("2.50 s") and "48.0% of the last first polls" in cells[3]
    quiet = page.text.split('<tr data-tracking="prostor">', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num">0</td>' in quiet


def test_callback_secrets_stay_hidden(ledger: config.Settings) -> None:
    """A callback URL may carry a token (in its query, or as user info): the queues
    page and the message's timeline show the endpoint without it."""
    now = datetime.now(UTC).replace(microsecond=0)
    url = "https://hook:pass-secret@crm.example/sms/status?token=crm-hook-secret#frag-secret"
    message_id = f"{7:032x}"
    with db.session_scope(ledger.database_url) as s:
        s.execute(insert(MESSAGES), [_message(7, "prostor", now - timedelta(minutes=3), callback_url=url)])
        s.execute(insert(CALLBACKS), [
            {"message_id": message_id, "url": url, "status": status, "to": "79160000007", "state": state,
             "tries": tries, "at": now, "next_at": now, "created_at": now, "last_error": "HTTP 503"}
            for status, state, tries in (("accepted", "failed", 5), ("delivered", "pending", 1))
        ])  # fmt: skip
    client = TestClient(app_for(ledger))
    assert log_in(client).status_code == 303
    queues = client.get("/console/queues")
    timeline = client.get(f"/console/messages/{message_id}")
    assert queues.status_code == 200 and timeline.status_code == 200, (queues.text, timeline.text)
    assert "https://crm.example/sms/status" in queues.text
    assert "https://crm.example/sms/status?…" in timeline.text
    for page in (queues.text, timeline.text):
        for secret in ("crm-hook-secret", "pass-secret", "frag-secret"):
            assert secret not in page


# -- the console when a backend is down or slow


@pytest.mark.parametrize(
    "broker", ["redis://127.0.0.1:1/0", "sentinel://127.0.0.1:1;sentinel://127.0.0.1:2?master_name=smsd"]
)
def test_providers_page_answers_with_redis_down(sim: Simulator, tmp_path: Path, broker: str) -> None:
    """Breakers live in Redis, the rest in the ledger: with Redis down the page still
    shows the ledger's figures and says what it cannot show (it once answered 500). A
    sentinel broker is a broker too: the queues page once called it embedded."""
    table = sim_table(sim)
    table.update({"database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                  "broker_url": broker, "api": {"token": TOKEN}})  # fmt: skip
    down = config.parse(table)
    config.set_settings(down)
    db.dispose_engines()
    try:
        client = TestClient(app_for(down))
        assert log_in(client).status_code == 303
        page = client.get("/console/providers")
        assert page.status_code == 200, page.text
        assert "Breaker state unavailable" in page.text and "prostor" in page.text
        queues = client.get("/console/queues")
        assert queues.status_code == 200 and "Embedded worker pool" not in queues.text
    finally:
        db.dispose_engines()
        config.set_settings(None)


def test_a_bad_client_or_status_is_refused_for_every_reading(ledger: config.Settings) -> None:
    # By id the page filters on client and status by hand: a NUL once reached PostgreSQL.
    client = TestClient(app_for(ledger))
    assert log_in(client).status_code == 303
    for query in ("q=ab&by=id&client=%00", "q=ab&by=any&client=%00", "q=ab&by=id&status=%00"):
        answer = client.get(f"/console?{query}")
        field = "client" if "client" in query else "status"
        assert answer.status_code == 422 and field in answer.text, (query, answer.status_code)


@pytest.mark.postgres
def test_a_page_whose_sql_runs_too_long_answers_503(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A table another session holds locked stands for any query that runs too long:
    the page gives up after STATEMENT_TIMEOUT with a 503, never hangs or 500s. The lock
    is let go after RELEASE: a read the bound missed would wait for it, then answer 200."""
    import psycopg

    release = 6.0
    reset_postgres(PG_URL)
    db.upgrade(db.make_engine(PG_URL))
    made = make_settings(sim, PG_URL)
    config.set_settings(made)
    db.dispose_engines()
    monkeypatch.setattr(stats, "STATEMENT_TIMEOUT", 1)
    holder = psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"))

    def locked(table: str, path: str) -> Any:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        timer = threading.Timer(release, holder.rollback)
        timer.start()
        try:
            started = time.monotonic()
            answer = client.get(path)
            assert time.monotonic() - started < release, (table, path)
            return answer
        finally:
            timer.cancel()
            timer.join()
            holder.rollback()

    try:
        client = TestClient(app_for(made))
        assert log_in(client).status_code == 303
        # messages: read by provider_stats' percentiles; attempts: by ops.provider_rows
        # first (its last errors), in the page's bounded session; callbacks: by
        # callbacks.backlog on the queues page.
        for table, path in (("messages", "/console/providers"), ("attempts", "/console/providers"),
                            ("callbacks", "/console/queues"), ("messages", "/console/queues")):  # fmt: skip
            answer = locked(table, path)
            assert answer.status_code == 503 and "did not answer in time" in answer.text, (table, path)
        assert client.get("/console/providers").status_code == 200  # the locks are gone
    finally:
        holder.rollback()
        holder.close()
        db.dispose_engines()
        config.set_settings(None)
