from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher import config, db
from dispatcher.simulator.core import Simulator
from tests.faults.servers import OwnPostgres, OwnRedis
from tests.pipeline.conftest import stack
from tests.support import Stack

__all__ = ["own", "stack"]


@pytest.fixture
def own(sim: Simulator, tmp_path: Path) -> Iterator[tuple[Stack, OwnRedis, OwnPostgres]]:
    redis_server = OwnRedis(tmp_path).start()
    postgres = OwnPostgres().start()
    stack = Stack(sim, tmp_path, "postgres", redis_url=redis_server.url, db_url=postgres.url)
    try:
        yield stack, redis_server, postgres
    finally:
        stack.stop()
        config.set_settings(None)
        db.dispose_engines()
        redis_server.kill()
        postgres.stop()
