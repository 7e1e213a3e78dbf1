from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import config
from dispatcher.simulator.core import Simulator
from tests.support import Stack


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool() -> str:
    """The Celery pool of the stack's workers; test modules that run under every pool
    override this with a parametrized fixture."""
    return "prefork"


@pytest.fixture
def stack(sim: Simulator, tmp_path: Path, pool: str) -> Iterator[Stack]:
    s = Stack(sim, tmp_path, pool=pool)
    yield s
    s.stop()
    config.set_settings(None)


@pytest.fixture
def any_stack(sim: Simulator, tmp_path: Path, database: str, pool: str) -> Iterator[Stack]:
    """The same stack on SQLite and on PostgreSQL."""
    s = Stack(sim, tmp_path, database, pool=pool)
    yield s
    s.stop()
    config.set_settings(None)
