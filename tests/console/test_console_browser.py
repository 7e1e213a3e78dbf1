"""The console in a real headless Chromium (Debian's, driven by Playwright) against the
real API over a ledger holding demo traffic and an outage (ops/console_shots.py)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from dispatcher import db
from dispatcher.models import CALLBACKS
from ops.console_shots import CRM_SECRET, PAGES, Scene, log_in, take_shots
from tests.console.conftest import logged_in, login_token


def test_operator_finds_the_message_and_sees_the_provider_down(
    scene: Scene, open_context: Callable[..., Any]
) -> None:
    page = open_context().new_page()
    # Given the operator logged in with the operator's key
    log_in(page, scene)
    assert page.url == f"{scene.url}/console"
    # When they search a number the demo sent to, spelled as a person writes it
    page.fill("input[name=q]", scene.phone)
    with page.expect_navigation():
        page.click("form.search button[type=submit]")
    link = page.locator(f"table.results a[href$='/messages/{scene.message_id}']")
    assert link.count() == 1
    # Then its timeline shows every call, the failed one's raw reply included
    with page.expect_navigation():
        link.click()
    assert scene.message_id in page.inner_text("h1")
    calls = page.locator("tr.attempt")
    assert calls.count() >= 2
    failed = page.locator(
        f"tr.attempt.o-retry:has-text('{scene.down}'), tr.attempt.o-failover:has-text('{scene.down}')"
    )
    assert failed.count() >= 1
    assert "500" in failed.first.inner_text()
    assert "Internal Server Error" in failed.first.locator("details.raw pre").inner_text()
    assert page.locator("tr.attempt.o-accepted").count() == 1
    assert page.locator("tr.event").count() >= 3
    # And the providers page marks the provider in the outage down, the others up
    page.goto(f"{scene.url}/console/providers")
    assert page.locator(f"tr[data-provider='{scene.down}'] .badge").inner_text() == "down"
    others = page.locator(f"tr[data-provider]:not([data-provider='{scene.down}']) .badge.b-up")
    assert others.count() == len(scene.settings.providers) - 1
    # And with JavaScript on, the charts are drawn on canvases and their tables fold away
    page.wait_for_selector("#chart-balance canvas")
    assert page.locator("#chart-spend canvas").count() >= 1
    assert page.locator("details.data[open]").count() == 0


def test_pages_work_without_javascript(scene: Scene, open_context: Callable[..., Any]) -> None:
    page = open_context(java_script_enabled=False).new_page()
    log_in(page, scene)  # a plain form post: no script involved
    page.goto(f"{scene.url}/console?q={scene.message_id}&by=id")
    assert page.locator("table.results tbody tr").count() == 1
    page.goto(f"{scene.url}/console/providers")
    assert page.locator("canvas").count() == 0
    assert not page.locator("#chart-balance").is_visible()
    # The same numbers as the charts, in tables shown open
    balances = page.locator("details.data").first
    assert balances.get_attribute("open") is not None
    assert balances.locator("tbody tr").count() > 0
    assert page.locator("details.data").nth(1).locator("tbody tr").count() > 0
    assert page.locator(f"tr[data-provider='{scene.down}'] .badge").inner_text() == "down"
    page.goto(f"{scene.url}/console/queues")
    assert "Status callbacks" in page.inner_text("main")
    page.goto(f"{scene.url}/console/messages/{scene.message_id}")
    assert page.locator("tr.attempt").count() >= 2
    # Logging out is a form post too
    with page.expect_navigation():
        page.click("form.logout button")
    assert page.url.endswith("/console/login")


@pytest.mark.parametrize("which", ["wrong", "client"])
def test_only_the_operators_key_logs_in(scene: Scene, open_context: Callable[..., Any], which: str) -> None:
    context = open_context()
    page = context.new_page()
    page.goto(f"{scene.url}/console/login")
    page.fill("#key", "not-the-key-at-all" if which == "wrong" else scene.client_key)
    with page.expect_navigation() as answer:
        page.click("section.login button[type=submit]")
    assert answer.value is not None and answer.value.status == 401
    assert "Wrong key" in page.inner_text("p.error")
    assert scene.client_key not in page.content()
    assert not [c for c in context.cookies() if c["name"] == "smsd_console"]
    page.goto(f"{scene.url}/console/providers")
    assert page.url.endswith("/console/login")


def test_session_cookie_flags(scene: Scene, open_context: Callable[..., Any]) -> None:
    context = open_context()
    page = context.new_page()
    log_in(page, scene)
    [session] = [c for c in context.cookies() if c["name"] == "smsd_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/console"
    assert session["secure"] is False  # plain http here; https gets Secure (test_console_auth)
    assert session["expires"] > 0  # not a browser-lifetime cookie: it has an end
    assert page.evaluate("document.cookie") == ""  # out of scripts' reach
    # No key in any URL the browser went through
    assert scene.token not in page.url


def test_posts_without_the_csrf_token_are_refused(scene: Scene) -> None:
    with httpx.Client(base_url=scene.url, timeout=10, follow_redirects=False) as anonymous:
        form = anonymous.get("/console/login")
        # No token at all, a token that is not the cookie's, the cookie's without the field
        assert anonymous.post("/console/login", data={"key": scene.token}).status_code == 403
        other = httpx.get(f"{scene.url}/console/login")
        stolen = login_token(other.text)
        assert anonymous.post("/console/login", data={"key": scene.token, "csrf": stolen}).status_code == 403
        token = login_token(form.text)
        forged = anonymous.post(
            "/console/login",
            data={"key": scene.token, "csrf": token},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403
        assert anonymous.post("/console/login", json={"key": scene.token, "csrf": token}).status_code == 400
    with logged_in(scene.url, scene.token) as client:
        assert client.get("/console/providers").status_code == 200
        assert client.post("/console/logout", data={}).status_code == 403
        assert client.post("/console/logout", data={"csrf": "x" * 43}).status_code == 403
        assert client.get("/console/providers").status_code == 200  # still logged in
        page = client.get("/console")
        csrf = login_token(page.text)
        kept = client.cookies["smsd_console"]
        out = client.post("/console/logout", data={"csrf": csrf})
        assert out.status_code == 303 and out.headers["location"].endswith("/console/login")
    # The cookie a logout ended opens nothing, even if someone kept a copy
    with httpx.Client(base_url=scene.url, timeout=10, cookies={"smsd_console": kept}) as copy:
        assert copy.get("/console/providers", follow_redirects=False).status_code == 303


def test_callback_tokens_stay_hidden(scene: Scene) -> None:
    """crm's callback URL carries a token in its query: neither the queues page (its
    endpoint fails) nor a crm message's timeline shows it."""
    with db.session_scope(scene.settings.database_url) as s:
        crm_message = s.execute(
            select(CALLBACKS.c.message_id).where(CALLBACKS.c.client == "crm").limit(1)
        ).scalar_one()
    with logged_in(scene.url, scene.token) as client:
        queues = client.get("/console/queues")
        timeline = client.get(f"/console/messages/{crm_message}")
    assert queues.status_code == 200 and timeline.status_code == 200
    assert "crm" in queues.text and "?…" in timeline.text
    for page in (queues.text, timeline.text):
        assert CRM_SECRET not in page and "token=" not in page


def test_security_headers(scene: Scene) -> None:
    with logged_in(scene.url, scene.token) as client:
        for path in ("/console/login", "/console", "/console/providers", "/console/queues",
                     f"/console/messages/{scene.message_id}", "/console/nowhere"):  # fmt: skip
            answer = client.get(path)
            assert answer.headers["cache-control"] == "no-store", path
            assert answer.headers["x-frame-options"] == "DENY", path
            csp = answer.headers["content-security-policy"]
            assert (
                "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            )
            assert "<script>" not in answer.text  # no inline script: data blocks only
        assert (
            client.get("/console/static/uPlot.iife.min.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        assert client.get("/console/static/..%2Fauth.py").status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/console", {"q": "+8 916 000", "by": "to"}, 422, "recipient"),
        ("/console", {"q": "x" * 5000}, 422, "search"),
        ("/console", {"q": "a\x00b"}, 422, "search"),
        ("/console", {"q": "1", "by": "everything"}, 422, "by"),
        ("/console", {"status": "lost-in-space"}, 422, "status"),
        ("/console", {"client": "no such client!"}, 422, "client"),
        ("/console", {"cursor": "garbage"}, 422, "page"),
        ("/console", {"q": "xyz", "by": "id"}, 422, "message id"),
        ("/console", {"q": "+8 916 000"}, 200, "not read as a phone number"),
        ("/console", {"q": "nobody-sent-this"}, 200, "No messages match"),
        ("/console", {"q": "<script>alert(1)</script>"}, 200, "No messages match"),
        ("/console/messages/" + "f" * 32, {}, 404, "no message"),
        ("/console/messages/" + "x" * 300, {}, 422, "message id"),
        ("/console/messages/%3Cb%3Ehi", {}, 404, "no message &lt;b&gt;hi"),
        ("/console/no/such/page", {}, 404, "No console page"),
    ],
)
def test_odd_input_gets_a_message_not_a_500(scene: Scene, path: str, params: dict[str, str], status: int,
                                            says: str) -> None:  # fmt: skip
    with logged_in(scene.url, scene.token) as client:
        answer = client.get(path, params=params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert says in answer.text
    assert "Traceback" not in answer.text and "<script>alert" not in answer.text


def test_screenshots_of_every_page(scene: Scene, playwright: Any, chromium: str, tmp_path: Path) -> None:
    saved = take_shots(scene, tmp_path / "shots", chromium, pw=playwright)
    assert [p.stem for p in saved] == list(PAGES)
    for path in saved:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", path
        width, height = struct.unpack(">II", head[16:24])
        assert width == 1280 and height >= 900, (path, width, height)
