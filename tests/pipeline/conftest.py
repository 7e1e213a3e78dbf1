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
def stack(sim: Simulator, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(sim, tmp_path)
    yield s
    s.stop()
    config.set_settings(None)


@pytest.fixture
def any_stack(sim: Simulator, tmp_path: Path, database: str) -> Iterator[Stack]:
    """The same stack on SQLite and on PostgreSQL."""
    s = Stack(sim, tmp_path, database)
    yield s
    s.stop()
    config.set_settings(None)
