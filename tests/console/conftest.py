"""The console's fixtures: a Chromium found on this machine (never downloaded), and
the scene ops/console_shots.py builds for its screenshots: demo traffic, an outage,
the real API on a free port."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.console_shots import Scene, browser_context, console_scene, find_browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path. Missing: a failure where CI demands the browser tests
    (SMSDISPATCH_REQUIRE_BROWSER=1), a skip elsewhere."""
    path = find_browser()
    if path is None:
        where = os.environ.get("SMSDISPATCH_BROWSER") or "/usr/bin/chromium"
        reason = f"no Chromium at {where} (set SMSDISPATCH_BROWSER, or apt-get install chromium)"
        if os.environ.get("SMSDISPATCH_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    with console_scene(tmp_path_factory.mktemp("console"), messages=160) as running:
        yield running


@pytest.fixture(scope="module")
def playwright(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def open_context(playwright: Any, chromium: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Opens browser contexts, each on a fresh profile of its own; closes them after."""
    opened: list[Any] = []

    def open_(**options: Any) -> Any:
        context = browser_context(playwright, chromium, tmp_path / f"profile{len(opened)}", **options)
        opened.append(context)
        return context

    yield open_
    for context in opened:
        context.close()


def login_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


@contextmanager
def logged_in(url: str, token: str) -> Iterator[httpx.Client]:
    """An httpx client holding a console session, as a browser would after logging in."""
    with httpx.Client(base_url=url, timeout=10, follow_redirects=False) as client:
        form = client.get("/console/login")
        answer = client.post("/console/login", data={"csrf": login_token(form.text), "key": token})
        assert answer.status_code == 303, answer.text
        yield client
