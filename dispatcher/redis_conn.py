"""From a configured Redis URL to a redis-py client: the one place that knows the two
forms the broker and the coordinator store accept.

- ``redis://[:password@]host:port/db`` (or ``rediss://``): one server.
- ``sentinel://[:password@]host:26379[/db];sentinel://host2:26379;...?master_name=NAME``:
  Redis Sentinel. Celery's own form (the sentinels separated by ``;``), plus a query on
  any one part carrying ``master_name`` (required) and ``sentinel_password`` (the
  sentinels' own ``requirepass``, when they have one). The password before ``@`` is
  the master's, as kombu reads it: on the first part only, like the database (a
  later part with either is refused, since kombu would ignore it).

Everything a process needs is in the one string, so ``SMSDISPATCH_BROKER_URL`` alone
moves a deployment onto Sentinel, and every module that is handed
``settings.broker_url`` (breakers, heartbeats, queue depths) follows without knowing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatcher.errors import ConfigError

SENTINEL_PORT = 26379
# What the query of a sentinel URL may carry.
SENTINEL_OPTIONS = ("master_name", "sentinel_password")


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed sentinel URL: where the sentinels are and which master to ask for."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # the master's
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


_KEY = "broker_url"  # the one setting a sentinel URL is read from


def parse_sentinel(url: str) -> SentinelTarget:
    """Read a ``sentinel://...;sentinel://...?master_name=NAME`` URL. A missing master
    name, a part that is not ``sentinel://host[:port]``, a password or database on any
    part but the first, or an unknown option is a ``ConfigError`` naming ``broker_url`` (the
    value itself is never echoed: it may hold a password)."""
    hosts: list[tuple[str, int]] = []
    options: dict[str, str] = {}
    username = password = None
    db = 0
    for n, part in enumerate(url.split(";")):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ConfigError(
                _KEY, f"sentinel {n + 1}: expected sentinel://host[:port], each sentinel by ';'"
            )
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError as exc:
            raise ConfigError(_KEY, f"sentinel {n + 1}: bad port: {exc}") from None
        hosts.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigError(_KEY, f"sentinel {n + 1}: the path is a database number, got /{path}")
        if n == 0:
            if parts.password is not None:
                username = unquote(parts.username) if parts.username else None
                password = unquote(parts.password)
            db = int(path) if path else 0
        elif parts.username is not None or parts.password is not None or path:
            # kombu takes the user, the password and the database (its virtual host)
            # from the first part alone and only host:port from the others: a later
            # part's would be ours and not Celery's (the broker on db 0 without a
            # password, the coordinator on another db with one).
            raise ConfigError(
                _KEY,
                f"sentinel {n + 1}: the master's user, password and database go on the first"
                " sentinel only (sentinel://:PASSWORD@host:26379/DB;sentinel://host2:26379;...),"
                " as Celery reads them from the first alone",
            )
        for name, values in parse_qs(parts.query, keep_blank_values=True).items():
            if name not in SENTINEL_OPTIONS:
                raise ConfigError(
                    _KEY, f"unknown sentinel option {name!r} (known: {', '.join(SENTINEL_OPTIONS)})"
                )
            if name in options or len(values) > 1:
                raise ConfigError(_KEY, f"sentinel option {name!r} given twice")
            options[name] = values[0]
    master = options.get("master_name", "").strip()
    if not master:
        raise ConfigError(
            _KEY,
            "a sentinel:// URL needs the master's name: add ?master_name=NAME"
            " (the name the sentinels monitor, `sentinel monitor NAME host port quorum`)",
        )
    return SentinelTarget(
        sentinels=tuple(hosts),
        master_name=master,
        db=db,
        username=username,
        password=password,
        sentinel_password=options.get("sentinel_password") or None,
    )


def celery_url(url: str) -> str:
    """The URL as Celery and kombu take it: a sentinel URL without our query (its
    options go into ``transport_options`` instead); any other URL as it is."""
    if not is_sentinel(url):
        return url
    return ";".join(part.split("?", 1)[0] for part in url.split(";"))


def transport_options(url: str, socket_timeout: float, connect_timeout: float) -> dict[str, Any]:
    """kombu's ``broker_transport_options`` a sentinel URL needs (``{}`` otherwise):
    the master's name, the bounded socket waits on the master, and the sentinels' own
    connection settings."""
    if not is_sentinel(url):
        return {}
    target = parse_sentinel(url)
    return {
        "master_name": target.master_name,
        # Bounded socket waits. A promoted replica is found only when a command on the
        # old master's connection fails; a master that vanished without closing its
        # sockets (a host down, a partition) would leave a publish or an ack waiting
        # for ever.
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "sentinel_kwargs": _sentinel_kwargs(target, connect_timeout),
    }


def _sentinel_kwargs(target: SentinelTarget, connect_timeout: float) -> dict[str, Any]:
    # Given explicitly, redis-py takes nothing from the master's settings for the
    # sentinels: a sentinel that hangs must cost a short timeout, not the master's.
    # No retries of their own either: the master's discovery already asks each sentinel
    # in turn, and redis-py's default (3 retries with backoff, per sentinel) made a
    # lookup with every sentinel down take over 10 s, past a Prometheus scrape's timeout.
    kwargs: dict[str, Any] = {
        "socket_timeout": connect_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if target.sentinel_password:
        kwargs["password"] = target.sentinel_password
    return kwargs


def client_for(url: str, socket_timeout: float = 5.0, connect_timeout: float = 3.0) -> redis.Redis:
    """A redis-py client of the server ``url`` names: for a sentinel URL, a client of
    the current master that asks the sentinels again whenever a connection to it fails
    (after a failover it finds the promoted replica; connections to the old master,
    now a replica answering READONLY, are dropped and made again)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
        )
    from redis.sentinel import Sentinel

    target = parse_sentinel(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # annotated from redis-py 8.2
        list(target.sentinels),
        sentinel_kwargs=_sentinel_kwargs(target, connect_timeout),
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        target.master_name,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
    )
    return client


def is_redis(url: str) -> bool:
    """A URL this module makes a client of (the embedded runner's memory:// is not)."""
    return url.startswith(("redis://", "rediss://", "sentinel://"))
