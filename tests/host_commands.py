"""The service commands the test suite runs on the host. docker-compose.yml and the
Dockerfile may only use these (tests/pipeline/test_deploy.py checks it), so no container runs
a command that no test has run."""

from __future__ import annotations

import sys

WORKER = ("celery", "-A", "workers.app", "worker")  # tests/support.py Stack.start_worker
BEAT = ("celery", "-A", "workers.app", "beat")  # tests/pipeline/test_deploy.py
FLOWER = ("celery", "-A", "workers.app", "flower")  # tests/pipeline/test_flower.py
DB_UPGRADE = ("smsdispatch", "db", "upgrade")  # tests/pipeline/test_deploy.py
API = ("smsdispatch", "api")  # tests/pipeline/test_deploy.py
SIMULATOR = ("smsdispatch", "simulator")  # tests/test_cli.py
DOCTOR = ("smsdispatch", "doctor")  # tests/pipeline/test_operator_cli.py
STATUS = ("smsdispatch", "status")  # tests/pipeline/test_provider_reports.py

RUN_ON_HOST = (WORKER, BEAT, FLOWER, DB_UPGRADE, API, SIMULATOR, DOCTOR, STATUS)


def host_argv(command: tuple[str, ...], *args: str) -> list[str]:
    """The argv that runs ``command`` here, through this interpreter."""
    program, rest = command[0], command[1:]
    module = {"celery": "celery", "smsdispatch": "dispatcher.cli"}[program]
    return [sys.executable, "-m", module, *rest, *args]
