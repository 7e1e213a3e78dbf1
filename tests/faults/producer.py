"""A steady producer for the soak test: an application of its own (a separate process)
that queues ``--rate`` messages a second for ``--seconds`` through ``send_bulk`` and
writes every id it got to ``--out``, one per line with the wall-clock time it was
queued: ``1795000000.123 ID``.

    python -m tests.faults.producer --rate 40 --seconds 60 --out ids.txt
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TICK = 0.25  # four small bulk calls a second: steady, not bursts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prefix", default="7917", help="the numbers' first digits")
    args = parser.parse_args()

    from dispatcher import api

    per_tick = max(1, round(args.rate * TICK))
    started = time.monotonic()
    n = 0
    with args.out.open("a", encoding="utf-8") as out:
        tick = 0
        while time.monotonic() - started < args.seconds:
            numbers = range(n + 1, n + per_tick + 1)
            batch = [{"to": f"{args.prefix}{k:07d}", "text": f"steady {k}"} for k in numbers]
            n += per_tick
            ids = api.send_bulk(batch)
            now = time.time()
            out.write("".join(f"{now:.3f} {mid}\n" for mid in ids))
            out.flush()
            tick += 1
            time.sleep(max(0.0, started + tick * TICK - time.monotonic()))


def start(
    config_path: Path, rate: float, seconds: float, out: Path, prefix: str = "7917"
) -> subprocess.Popen[bytes]:
    """Run the producer as a process of its own against ``config_path``."""
    env = {**os.environ, "SMSDISPATCH_CONFIG": str(config_path)}
    argv = [sys.executable, "-m", "tests.faults.producer", "--rate", str(rate), "--seconds", str(seconds),
            "--out", str(out), "--prefix", prefix]  # fmt: skip
    log = out.with_suffix(".log").open("wb")
    return subprocess.Popen(argv, cwd=Path(__file__).parent.parent.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip


def read(out: Path) -> list[tuple[float, str]]:
    """(queued at, id) for every message the producer queued."""
    return [(float(t), mid) for t, mid in (line.split() for line in out.read_text().splitlines())]


if __name__ == "__main__":
    main()
