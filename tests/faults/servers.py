"""Redis and PostgreSQL instances of a test's own, on spare ports, that the test may
kill and restart (the machine's shared servers are never touched)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    def __init__(self, folder: Path, args: Sequence[str] = ()) -> None:
        self.folder = folder
        self.port = free_port()
        self.args = list(args)  # more redis-server options (--replicaof ...)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("own redis did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart_empty(self) -> None:
        """A crash and a restart that kept nothing (no persistence)."""
        self.kill()
        self.start()


class OwnSentinels:
    """A Redis master, one replica and three sentinels (quorum 2) on spare ports, in a
    folder of their own: the smallest group that survives losing its master. The
    sentinels notice a dead master after ``down_after`` ms and promote the replica."""

    MASTER = "smsd"

    def __init__(self, folder: Path, down_after: int = 1000, failover_timeout: int = 3000) -> None:
        self.folder = folder
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        (folder / "master").mkdir(parents=True)
        (folder / "replica").mkdir()
        self.master = OwnRedis(folder / "master")
        self.replica = OwnRedis(folder / "replica", ["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The broker URL of the group: Celery's form with our master name."""
        hosts = ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{hosts}?master_name={self.MASTER}"

    def start(self) -> OwnSentinels:
        self.master.start()
        self.replica.start()
        for n, port in enumerate(self.sentinel_ports):
            # Sentinels rewrite their file (the peers, the epoch): one each.
            conf = self.folder / f"sentinel{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                f"sentinel monitor {self.MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} {self.down_after}\n"
                f"sentinel failover-timeout {self.MASTER} {self.failover_timeout}\n"
                f"sentinel parallel-syncs {self.MASTER} 1\n",
                encoding="utf-8",
            )
            log = (self.folder / f"sentinel{n}.log").open("wb")
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
                )
            )
        self._wait(
            lambda: self._synced() and all(self._sees_all(p) for p in self.sentinel_ports), "group ready"
        )
        return self

    def _sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)

    def _synced(self) -> bool:
        info = redis.Redis(port=self.replica.port).info("replication")
        return bool(info.get("master_link_status") == "up")

    def _sees_all(self, port: int) -> bool:
        """This sentinel knows the replica and both other sentinels: it can vote and
        has someone to promote."""
        state = self._sentinel(port).sentinel_master(self.MASTER)
        return bool(state["num-other-sentinels"] >= 2 and state["num-slaves"] >= 1)

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels report it now."""
        seen: list[int] = []
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                seen.append(int(self._sentinel(port).sentinel_get_master_addr_by_name(self.MASTER)[1]))
        best = max(set(seen), key=seen.count, default=None)
        return best if best is not None and seen.count(best) >= 2 else None

    def kill_master(self) -> None:
        """kill -9 of the master: no goodbye to the replica, the sentinels or clients."""
        self.master.kill()

    # A sentinel whose timer ran late by over 2 s (a loaded 2-core CI machine) enters
    # TILT mode and acts on nothing for 30 s: the waits allow one TILT on top of an election.
    def wait_promoted(self, timeout: float = 60.0) -> None:
        """Until the sentinels name the replica and it answers as a master."""

        def promoted() -> bool:
            if self.master_port() != self.replica.port:
                return False
            role = redis.Redis(port=self.replica.port).info("replication").get("role")
            return bool(role == "master")

        self._wait(promoted, "replica promoted", timeout)

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if ready():
                    return
            time.sleep(0.05)
        # What the sentinels said (an election, +tilt), and who is still running, to tell
        # a failed election from a slow start or a port taken by another process.
        alive = [proc.poll() is None for proc in self.sentinels]
        logs = f"sentinels running: {alive}\n" + "\n".join(
            f"--- {log.name}\n" + log.read_text(errors="replace")[-1500:]
            for log in sorted(self.folder.glob("sentinel*.log"))
        )
        raise RuntimeError(f"own sentinels: no {what} in {timeout:g} s\n{logs}")

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.kill()
            proc.wait(10)
        self.sentinels.clear()
        self.replica.kill()
        self.master.kill()


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found")
    return found[-1]


class OwnPostgres:
    """A throwaway cluster, run as the postgres user (initdb refuses root)."""

    def __init__(self) -> None:
        # Its own folder under /tmp: a test's tmp_path (mode 700, root's) is out of
        # reach for the postgres user.
        self.folder = Path(tempfile.mkdtemp(prefix="smsd-pg-"))
        self.folder.chmod(0o755)
        self.data = self.folder / "pgdata"
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> OwnPostgres:
        if not self.data.exists():
            if os.geteuid() == 0:
                shutil.chown(self.folder, "postgres", "postgres")
            self._as_postgres(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self._ctl("start")
        return self

    def _ctl(self, action: str) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                          str(self.folder / "pg.log"), "-w", "-m", "fast", action)  # fmt: skip

    def restart(self) -> None:
        self._ctl("restart")

    def halt(self) -> None:
        """Stop the server and keep its data: ``start`` brings it back as it was."""
        self._ctl("stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("stop")
        shutil.rmtree(self.folder, ignore_errors=True)
