"""Settings: one TOML file plus environment overrides, validated once at start-up.

Lookup: ``$SMSDISPATCH_CONFIG``, else ``./smsdispatch.toml``; with neither, defaults
that point at the built-in provider simulator. ``SMSDISPATCH_DATABASE_URL`` and
``SMSDISPATCH_BROKER_URL`` override the file. Every error names the key at fault.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dispatcher.errors import ConfigError, ValidationError
from dispatcher.providers import adapter_class, registry
from dispatcher.providers.base import common_sender_problem
from dispatcher.quiet import Rate, Window, parse_rate, parse_window, zone
from dispatcher.redact import register_secret
from dispatcher.redis_conn import is_sentinel, parse_sentinel
from dispatcher.tomlout import to_toml as to_toml  # re-exported: config.to_toml

GUARANTEES = ("at-most-once", "at-least-once")
DEFAULT_DATABASE_URL = "sqlite:///smsdispatch.db"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
_INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")

DAY = 24 * 3600.0
# The longest a message may live. validation.MAX_TTL says the same for a message's own
# ttl, but validation imports this module, so the value is repeated here
# (tests/test_config.py checks that the two agree).
MAX_TTL = 30 * DAY
# The longest countdown the pipeline hands the broker (sending.MAX_COUNTDOWN, repeated
# for the same reason and checked the same way): the visibility timeout must exceed it.
MAX_COUNTDOWN = 10.0


@dataclass(frozen=True)
class ProviderConfig:
    """One provider instance (one account at one provider)."""

    name: str
    kind: str
    base_url: str
    login: str
    password: str = field(repr=False)
    sender: str | None = None
    priority: int = 100
    enabled: bool = True
    timeout: float = 10.0  # read timeout of one provider call, seconds
    connect_timeout: float = 3.0
    rate_limit: float = 0.0  # messages per second across all workers; 0 = unlimited
    # Status calls per second across all workers: None shares ``rate_limit`` with the
    # sends (one budget for the account); a number gives the status endpoint its own
    # (0 = unlimited), for a document or an operator that limits it apart.
    status_rate_limit: float | None = None
    max_retries: int = 3  # retries on the same provider before failing over
    # What to do when a worker died between the provider's answer and the ledger:
    # at-most-once marks the message `unknown`; at-least-once sends it again.
    delivery_guarantee: str = "at-most-once"
    # A provider we can ask by our own id (SMStele) is asked this long after a call in
    # doubt began, not at once: a request we gave up on may still be in its hands.
    reconcile_after: float = 5.0
    balance_threshold: float | None = None  # below it, routing skips the provider
    # What a message becomes when no final status came within pipeline.status_horizon.
    on_horizon: str = "expired"
    options: Mapping[str, Any] = field(default_factory=dict)  # the kind's own keys

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    @property
    def status_rate(self) -> tuple[str, float]:
        """The rate-limit bucket status calls take their slots from, and its rate: the
        sends' own (``NAME``) unless ``status_rate_limit`` is set (``NAME:status``)."""
        if self.status_rate_limit is None:
            return self.name, self.rate_limit
        return f"{self.name}:status", self.status_rate_limit


@dataclass(frozen=True)
class ApiConfig:
    token: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8080


@dataclass(frozen=True)
class FlowerConfig:
    basic_auth: str | None = field(default=None, repr=False)  # "user:password"
    port: int = 5555


@dataclass(frozen=True)
class PipelineConfig:
    default_ttl: float = 24 * 3600.0  # seconds a message may wait before it expires
    max_attempts: int = 20  # provider calls per message before it is given up
    breaker_threshold: int = 5  # consecutive provider-level failures that open it
    breaker_cooldown: float = 30.0  # seconds an open breaker skips the provider
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    exhausted_delay: float = 30.0  # wait before a new round when all providers failed
    status_horizon: float = 48 * 3600.0  # no final status by then: expired
    sweeper_interval: float = 5.0  # seconds between sweeps (beat)
    sweeper_stale_after: float = (
        60.0  # a queued message published this long ago with an empty queue is republished
    )
    visibility_timeout: float = 300.0  # Redis redelivers an unacked task after this; > any countdown
    soft_shutdown_timeout: float = 20.0  # on TERM, running sends get this long to finish
    publish_batch: int = 100  # bulk messages per send task to a provider that takes batches
    # Bulk messages per send task to a provider that takes one per call: the task makes
    # their calls concurrently (at most `call_concurrency` at once per worker process)
    # and writes their outcomes back in one transaction. One-time codes always go alone.
    group_size: int = 25
    call_concurrency: int = 32
    # A normal-priority message bound for a provider that takes batches waits this long
    # for others due for it, and goes with them in one call (one-time codes never wait).
    linger: float = 0.05


@dataclass(frozen=True)
class PollingConfig:
    # Seconds between poll rounds of one provider (beat): a round claims nothing itself,
    # it counts the due polls and publishes poll groups for the workers of sms.poll.
    interval: float = 2.0
    # Seconds from one status poll of a message to the next, growing with its age; the
    # last one repeats. Bounded cost with many messages in flight. The first poll comes
    # when the provider usually delivers (learnt, between `first_poll_floor` and
    # intervals[0]); the next ones follow these gaps.
    intervals: tuple[float, ...] = (10.0, 30.0, 60.0, 300.0, 900.0)
    first_poll_floor: float = 1.0  # the earliest a learnt first poll comes after acceptance
    # Status calls per poll group (one task), eight at a time: a group's claim and write-back
    # are paid once for all of them (fewer for providers asked many ids a call).
    group_calls: int = 50
    # An optional safety cap on status calls per provider per round; 0: none (the rate
    # limit and the workers bound the pace).
    max_calls_per_cycle: int = 0
    # prostor with a status queue: a message the queue has not reported this long
    # after acceptance is polled by id as a fallback.
    queue_fallback_after: float = 900.0
    queue_interval: float = 5.0  # seconds between status queue drains
    # Drains of up to 1000 per task while the queue stays full; a queue still full then
    # is drained on by a next task at once, not at the next beat.
    queue_rounds: int = 10
    balance_interval: float = 60.0  # seconds between balance reads


@dataclass(frozen=True)
class PhonesConfig:
    """How recipients' numbers are read (libphonenumber's metadata)."""

    # The region a number without a country code is read in: 8 916 ... is Russian.
    default_region: str = "RU"
    # Regions we send to; "*" allows every region. SMS abroad cost many times more
    # and are where SMS pumping fraud sends one-time codes, so the default is Russia.
    allowed_regions: tuple[str, ...] = ("RU",)


@dataclass(frozen=True)
class PolicyConfig:
    """What may be sent when and how often, and how long the ledger keeps it."""

    # Quiet hours for normal-priority messages, local time in `timezone`; "" or
    # "always": any time. Clients and messages may have their own.
    send_window: str = ""
    timezone: str = "Europe/Moscow"
    # Messages to one number per period, by priority ("5/hour"; "" = no limit): a form
    # that leaks one-time codes to one number is how SMS pumping fraud starts.
    recipient_limit: Mapping[str, str] = field(default_factory=lambda: {"high": "", "normal": ""})
    # Messages, attempts, events and callbacks older than this are purged (152-FZ).
    retention_days: float = 180.0
    retention_mode: str = "delete"  # delete | mask (phone and text replaced, counts kept)
    retention_interval: float = 3600.0  # seconds between purge runs (beat)
    retention_batch: int = 1000  # messages per purge transaction: never a long lock

    def window(self) -> Window | None:
        return parse_window(self.send_window, "policy.send_window")

    def rate(self, priority: str) -> Rate | None:
        return parse_rate(self.recipient_limit.get(priority, ""), f"policy.recipient_limit.{priority}")


@dataclass(frozen=True)
class CallbacksConfig:
    """Status callbacks to the apps (the outbox and its delivery task)."""

    # Let callback URLs reach loopback, private and link-local addresses: for tests
    # and receivers on the same network. Off, a client key cannot make us a proxy.
    allow_private: bool = False
    timeout: float = 5.0  # seconds per POST (connect and read)
    max_age: float = 24 * 3600.0  # a callback not delivered by then is given up
    interval: float = 1.0  # seconds between delivery runs (beat)
    batch: int = 200  # callbacks per delivery run
    backoff_base: float = 2.0  # the first retry's delay; doubles per try
    backoff_cap: float = 600.0


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    providers: tuple[ProviderConfig, ...] = ()
    api: ApiConfig = field(default_factory=ApiConfig)
    flower: FlowerConfig = field(default_factory=FlowerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    polling: PollingConfig = field(default_factory=PollingConfig)
    phones: PhonesConfig = field(default_factory=PhonesConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    source: str = "defaults"  # where the settings came from, for `doctor` and errors

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise ConfigError(f"providers.{name}", "no such provider instance")

    @property
    def enabled_providers(self) -> list[ProviderConfig]:
        """Enabled instances, lowest priority number first (tried first)."""
        return sorted((p for p in self.providers if p.enabled), key=lambda p: (p.priority, p.name))


# -- validation helpers -------------------------------------------------------------


def _take(table: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a `priority = true` is still a mistake.
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}{key}", f"expected {_kind_name(kind)}, got {_shown(value)} (a boolean)")
    if not isinstance(value, kind):
        # A number where a number was expected is shown (`got nan`, `got 1.5`); any other
        # value only by its type, as a misplaced password must not reach the message.
        numeric = isinstance(value, int | float) and (int in kinds or float in kinds)
        got = f"{_shown(value)} (a {type(value).__name__})" if numeric else type(value).__name__
        raise ConfigError(f"{where}{key}", f"expected {_kind_name(kind)}, got {got}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _reject_unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in table:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            raise ConfigError(f"{where}{key}", f"unknown key (known: {hint})")


def _check_url(value: str, key: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ConfigError(key, f"not a valid URL ({'/'.join(schemes)} with a host): {value!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(key, f"bad port in URL: {exc}") from None
    return value


def check_sender(sender: str, key: str) -> str:
    """The strictest documented sender rule of the five (``common_sender_problem``)."""
    problem = common_sender_problem(sender)
    if problem:
        raise ConfigError(key, problem)
    return sender


_NUMBER = (int, float)


@dataclass(frozen=True)
class _Limit:
    """The range of one numeric setting. Every value must also be finite: TOML spells
    nan and inf as floats, and each comparison with nan is false, so a nan would pass
    any range check and reach a timer or a timeout as is."""

    low: float  # the least value allowed...
    above: bool = False  # ...or, when True, the value must be greater than it
    high: float | None = None  # None: no upper bound
    # The rule in words where "at least / at most" would not say it (ports).
    rule: str | None = None


_ZERO_OR_MORE = _Limit(0.0)
_AT_LEAST_ONE = _Limit(1.0)
# Beat intervals, timeouts and delays: over a day, a worker would sit on a message or
# a timer would never fire in any useful time, so such a value is a slip of units.
_DURATION = _Limit(0.0, above=True, high=DAY)
_DURATION_OR_ZERO = _Limit(0.0, high=DAY)
_PORT = _Limit(1.0, high=65535.0, rule="a TCP port is 1 to 65535")

# Every numeric setting and its range: a numeric field without an entry here is a
# KeyError at the first load, so that a new setting cannot skip its check.
_LIMITS: dict[str, _Limit] = {
    "api.port": _PORT,
    "flower.port": _PORT,
    # 0 would expire every message at once; past MAX_TTL intake refuses a message's own
    # ttl too (validation.MAX_TTL), so a default over it is a mistake.
    "pipeline.default_ttl": _Limit(0.0, above=True, high=MAX_TTL),
    "pipeline.max_attempts": _Limit(1.0, high=1000.0),  # 0 would give every message up before its first call
    "pipeline.breaker_threshold": _Limit(1.0, high=10000.0),  # 0 would open it before any failure
    "pipeline.breaker_cooldown": _DURATION,  # 0 would close an open breaker at once: no breaker
    "pipeline.backoff_base": _DURATION,  # 0 would retry a failing provider at once, again and again
    "pipeline.backoff_cap": _DURATION,
    "pipeline.exhausted_delay": _DURATION,  # 0 would spin when every provider fails
    # 0 would expire a message the moment it was accepted; providers keep statuses for
    # days, and no message lives longer than MAX_TTL.
    "pipeline.status_horizon": _Limit(0.0, above=True, high=MAX_TTL),
    "pipeline.sweeper_interval": _DURATION,  # 0: beat would schedule sweeps back to back
    "pipeline.sweeper_stale_after": _DURATION,  # 0 would republish every queued message each sweep
    "pipeline.visibility_timeout": _DURATION,  # 0: Redis would hand every task out twice
    "pipeline.soft_shutdown_timeout": _DURATION_OR_ZERO,  # 0: stop at once on TERM (Celery's default)
    # A send task carries at least one message; the upper bounds keep a slip of digits
    # from reaching a SQL LIMIT or a thread pool (a bigint out of range, 10**9 threads).
    "pipeline.publish_batch": _Limit(1.0, high=10000.0),
    "pipeline.group_size": _Limit(1.0, high=10000.0),
    "pipeline.call_concurrency": _Limit(1.0, high=1000.0),  # 0 threads would make no call at all
    # 0: a message never waits for companions. It is a batching window of a fraction of
    # a second: ten seconds or more is a slip of units (milliseconds written as seconds).
    "pipeline.linger": _Limit(0.0, high=10.0),
    "polling.interval": _DURATION,  # 0: poll rounds back to back
    "polling.intervals": _DURATION,  # each entry; 0 would poll a message on every round
    "polling.max_calls_per_cycle": _Limit(0.0, high=100000.0),  # 0: no cap
    "polling.first_poll_floor": _DURATION,  # 0 would ask before any provider could know
    "polling.group_calls": _Limit(1.0, high=1000.0),  # 0 would make no status call at all
    # 0 is meaningful: poll every message by id as well as by the queue.
    "polling.queue_fallback_after": _DURATION_OR_ZERO,
    "polling.queue_interval": _DURATION,
    "polling.queue_rounds": _Limit(1.0, high=1000.0),  # 0 would never drain the queue
    "polling.balance_interval": _DURATION,
    # 0 purges nothing ever is not a retention; over ten years is a slip of units
    "policy.retention_days": _Limit(0.0, above=True, high=3660.0),
    "policy.retention_interval": _DURATION,
    "policy.retention_batch": _Limit(1.0, high=100000.0),
    "callbacks.timeout": _Limit(0.0, above=True, high=60.0),
    "callbacks.max_age": _Limit(60.0, high=7 * DAY),
    "callbacks.interval": _DURATION,
    "callbacks.batch": _Limit(1.0, high=10000.0),
    "callbacks.backoff_base": _DURATION,
    "callbacks.backoff_cap": _DURATION,
    # providers.NAME.*
    "provider.timeout": _DURATION,  # 0 would fail every call before the reply
    "provider.connect_timeout": _DURATION,
    # Messages per second; 0 = unlimited. Checked again below: a tiny positive rate
    # (1e-300) would make every message wait for ever.
    "provider.rate_limit": _ZERO_OR_MORE,
    "provider.status_rate_limit": _ZERO_OR_MORE,
    "provider.max_retries": _Limit(0.0, high=100.0),  # 0: fail over after the first failure
    "provider.reconcile_after": _DURATION_OR_ZERO,  # 0: ask about a call in doubt at once
    # Any finite amount: an account on credit may be allowed below zero.
    "provider.balance_threshold": _Limit(-math.inf),
    "provider.priority": _Limit(-math.inf),  # only the order matters
}


def _shown(value: Any) -> str:
    """A value as the TOML file spells it, for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)  # nan, inf, -inf, 1.5, 99999
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _in_range(value: Any, key: str, limit: _Limit) -> float:
    """``value`` (an int or a float, not a bool) checked against ``limit``; the float."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {_shown(value)}")
    # Compared as given: an integer too large for a float still compares exactly.
    too_low = value <= limit.low if limit.above else value < limit.low
    too_high = limit.high is not None and value > limit.high
    if too_low or too_high:
        if limit.rule:
            rule = limit.rule
        elif too_low:
            rule = f"must be greater than {limit.low:g}" if limit.above else f"must be at least {limit.low:g}"
        else:
            rule = f"must be at most {limit.high:g}"
        raise ConfigError(key, f"{rule}, got {_shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(key, f"must be a finite number, got {_shown(value)}") from None


def _limited(
    table: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any
) -> Any:
    """A numeric provider setting, type- and range-checked (the range under ``provider.KEY``)."""
    value = _take(table, key, where, kind, default)
    if value is not None:
        _in_range(value, f"{where}{key}", _LIMITS[f"provider.{key}"])
    return value


def _rate(table: Mapping[str, Any], key: str, where: str, default: float | None) -> float | None:
    """A per-second rate: 0 (unlimited) or at least MIN_RATE."""
    value = _limited(table, key, where, _NUMBER, default)
    if value is None:
        return None
    rate = float(value)
    if 0 < rate < MIN_RATE:
        raise ConfigError(f"{where}{key}", f"0 (unlimited) or at least {MIN_RATE:g} per second, got {rate:g}")
    return rate


def _provider(name: str, table: Any) -> ProviderConfig:
    where = f"providers.{name}."
    if not _INSTANCE_NAME.match(name):
        raise ConfigError(f"providers.{name}", "instance names are 1-40 letters, digits, _ or -")
    if not isinstance(table, Mapping):
        raise ConfigError(f"providers.{name}", "expected a table")
    kind = _take(table, "kind", where, str, None)
    known = registry.kinds()
    if kind is None:
        raise ConfigError(f"{where}kind", f"missing (one of: {' | '.join(known)})")
    if kind not in known:
        raise ConfigError(f"{where}kind", f"unknown provider kind {kind!r} (one of: {' | '.join(known)})")

    adapter = adapter_class(kind)
    common = {
        "kind", "base_url", "login", "password", "sender", "priority", "enabled", "timeout",
        "connect_timeout", "rate_limit", "status_rate_limit", "max_retries", "delivery_guarantee",
        "balance_threshold", "on_horizon", "reconcile_after",
    }  # fmt: skip
    _reject_unknown(table, common | set(adapter.OPTIONS), where)

    base_url = _take(table, "base_url", where, str, None)
    if not base_url:
        raise ConfigError(f"{where}base_url", "missing")
    _check_url(base_url, f"{where}base_url", ("http", "https"))
    if adapter.BASE_URL_IS_DIRECTORY and not base_url.endswith("/"):
        base_url += "/"
    login = _take(table, "login", where, str, None)
    if not login:
        raise ConfigError(f"{where}login", "missing")
    password = _take(table, "password", where, str, None)
    if not password:
        raise ConfigError(f"{where}password", "missing")
    # With the login: the forms a password takes in Basic auth are masked too.
    register_secret(password, login=login)
    sender = _take(table, "sender", where, str, None)
    if sender is not None:
        check_sender(sender, f"{where}sender")
    problem = adapter.sender_problem(sender)
    if problem:
        # Every message would fail over from this instance: say so now, not per message.
        raise ConfigError(f"{where}sender", f"{adapter.TITLE}: {problem}")
    guarantee = _take(table, "delivery_guarantee", where, str, "at-most-once")
    if guarantee not in GUARANTEES:
        raise ConfigError(f"{where}delivery_guarantee", f"one of {', '.join(GUARANTEES)}")
    timeout = float(_limited(table, "timeout", where, _NUMBER, 10.0))
    connect_timeout = float(_limited(table, "connect_timeout", where, _NUMBER, 3.0))
    rate_limit = _rate(table, "rate_limit", where, 0.0)
    status_rate = _rate(table, "status_rate_limit", where, None)
    reconcile_after = float(_limited(table, "reconcile_after", where, _NUMBER, 5.0))
    max_retries = _limited(table, "max_retries", where, int, 3)
    priority = _limited(table, "priority", where, int, 100)
    threshold = _limited(table, "balance_threshold", where, _NUMBER, None)
    on_horizon = _take(table, "on_horizon", where, str, "expired")
    if on_horizon not in ("expired", "unknown"):
        raise ConfigError(f"{where}on_horizon", "one of expired, unknown")

    options: dict[str, Any] = {}
    for key, (types, check) in adapter.OPTIONS.items():
        if key in table:
            value = _take(table, key, where, types, None)
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"{where}{key}", problem)
            options[key] = value

    return ProviderConfig(
        name=name,
        kind=kind,
        base_url=base_url,
        login=login,
        password=password,
        sender=sender,
        priority=priority,
        enabled=_take(table, "enabled", where, bool, True),
        timeout=timeout,
        connect_timeout=connect_timeout,
        rate_limit=rate_limit or 0.0,
        status_rate_limit=status_rate,
        max_retries=max_retries,
        delivery_guarantee=guarantee,
        reconcile_after=reconcile_after,
        balance_threshold=None if threshold is None else float(threshold),
        on_horizon=on_horizon,
        options=options,
    )


def _number_list(value: Any, key: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(key, "expected a non-empty list of numbers")
    out = []
    for n, v in enumerate(value, 1):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(
                key,
                f"entry {n}: expected a number, got {_shown(v) if isinstance(v, bool) else type(v).__name__}",
            )
        try:
            out.append(_in_range(v, key, _LIMITS[key]))
        except ConfigError as exc:
            raise ConfigError(key, f"entry {n} {exc.reason}") from None
    return tuple(out)


def _section(data: Mapping[str, Any], name: str, cls: type[Any]) -> Any:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(name, "expected a table")
    defaults = cls()
    allowed = set(defaults.__dataclass_fields__)
    _reject_unknown(table, allowed, f"{name}.")
    values: dict[str, Any] = {}
    for key in allowed:
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            values[key] = _number_list(table.get(key, default), f"{name}.{key}")
            continue
        if default is None:
            kinds: type | tuple[type, ...] = str
        elif isinstance(default, bool):
            kinds = bool
        elif isinstance(default, float):
            kinds = _NUMBER
        else:
            kinds = type(default)
        value = _take(table, key, f"{name}.", kinds, default)
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = _in_range(value, f"{name}.{key}", _LIMITS[f"{name}.{key}"])
            value = number if isinstance(default, float) else value
        values[key] = value
    if name == "pipeline" and values["backoff_cap"] < values["backoff_base"]:
        # The cap would win from the first retry on: the backoff would not grow.
        base, cap = values["backoff_base"], values["backoff_cap"]
        raise ConfigError(
            "pipeline.backoff_cap", f"must be at least pipeline.backoff_base ({base:g}), got {cap:g}"
        )
    token = values.get("token")
    if name == "api" and token is not None and len(token) < MIN_SECRET:
        # A short token is guessed, and too short to be masked reliably in logs.
        raise ConfigError("api.token", f"at least {MIN_SECRET} characters, got {len(token)}")
    register_secret(token)
    basic_auth = values.get("basic_auth")
    if name == "flower" and basic_auth is not None:
        if ":" not in basic_auth:
            raise ConfigError("flower.basic_auth", 'expected "user:password"')
        user, _, password = basic_auth.partition(":")
        if "," in basic_auth:
            # Flower splits FLOWER_BASIC_AUTH on commas into several credentials: "a:b,c"
            # would let in "a:b" and the bare "c".
            raise ConfigError("flower.basic_auth", "no comma: Flower reads one as a list of credentials")
        if not user or len(password) < MIN_FLOWER_PASSWORD:
            raise ConfigError(
                "flower.basic_auth",
                f'expected "user:password" with a user and a password of at least {MIN_FLOWER_PASSWORD}'
                f" characters, got a user of {len(user)} and a password of {len(password)}",
            )
        # Flower's Authorization header carries base64("user:password"): masked too.
        register_secret(password, login=user)
        register_secret(basic_auth)
    return cls(**values)


MIN_SECRET = 12  # characters of an API token
MIN_FLOWER_PASSWORD = 8
MIN_RATE = 0.001  # messages per second, when not 0 (unlimited): one in 17 minutes


def _check_visibility(pipeline: PipelineConfig, providers: tuple[ProviderConfig, ...]) -> None:
    """Redis hands an unacknowledged task to another worker after the visibility
    timeout: one shorter than a countdown or than a provider call would run a send
    twice, and send its SMS twice."""
    key, timeout = "pipeline.visibility_timeout", pipeline.visibility_timeout
    if timeout <= MAX_COUNTDOWN:
        raise ConfigError(key, f"must exceed the longest countdown, {MAX_COUNTDOWN:g} s, got {timeout:g}")
    for p in providers:
        call = p.connect_timeout + p.timeout
        if timeout <= call:
            raise ConfigError(
                key,
                f"must exceed the longest provider call, providers.{p.name}.connect_timeout + timeout"
                f" = {call:g} s, got {timeout:g}",
            )


def _phones(data: Mapping[str, Any]) -> PhonesConfig:
    import phonenumbers

    table = data.get("phones", {})
    if not isinstance(table, Mapping):
        raise ConfigError("phones", "expected a table")
    _reject_unknown(table, {"default_region", "allowed_regions"}, "phones.")
    known = phonenumbers.SUPPORTED_REGIONS
    unknown = "not a two-letter region code libphonenumber knows"
    region = _take(table, "default_region", "phones.", str, "RU")
    if region not in known:
        raise ConfigError("phones.default_region", f"{unknown}: {region!r}")
    allowed = table.get("allowed_regions", ["RU"])
    if not isinstance(allowed, list) or not allowed or not all(isinstance(r, str) for r in allowed):
        raise ConfigError("phones.allowed_regions", 'expected a non-empty list of region codes, or ["*"]')
    for r in allowed:
        if r != "*" and r not in known:
            raise ConfigError("phones.allowed_regions", f"{unknown}: {r!r}")
    return PhonesConfig(default_region=region, allowed_regions=tuple(allowed))


def _policy(data: Mapping[str, Any]) -> PolicyConfig:
    table = data.get("policy", {})
    if not isinstance(table, Mapping):
        raise ConfigError("policy", "expected a table")
    limit = table.get("recipient_limit", "")
    # One rate for both priorities, or a table of them: {high = "5/hour", normal = "20/day"}.
    if isinstance(limit, str):
        limits = {"high": limit, "normal": limit}
    elif isinstance(limit, Mapping):
        _reject_unknown(limit, {"high", "normal"}, "policy.recipient_limit.")
        for p, v in limit.items():
            if not isinstance(v, str):
                got = type(v).__name__
                raise ConfigError(f"policy.recipient_limit.{p}", f"expected a string like 5/hour, got {got}")
        limits = {"high": limit.get("high", ""), "normal": limit.get("normal", "")}
    else:
        raise ConfigError("policy.recipient_limit", 'expected "N/period" or a table by priority')
    rest = {k: v for k, v in table.items() if k != "recipient_limit"}
    policy: PolicyConfig = _section({"policy": rest}, "policy", PolicyConfig)
    policy = PolicyConfig(**{**policy.__dict__, "recipient_limit": limits})
    try:
        policy.window()
        zone(policy.timezone, "policy.timezone")
        for p in ("high", "normal"):
            policy.rate(p)
    except ValidationError as exc:
        raise ConfigError(exc.field, exc.reason) from None
    if policy.retention_mode not in ("delete", "mask"):
        raise ConfigError("policy.retention_mode", f"one of delete, mask, got {policy.retention_mode!r}")
    return policy


def parse(data: Mapping[str, Any], source: str = "<dict>") -> Settings:
    """Validate a configuration mapping (the TOML document) into ``Settings``."""
    _reject_unknown(
        data,
        {
            "database_url",
            "broker_url",
            "providers",
            "api",
            "flower",
            "pipeline",
            "polling",
            "phones",
            "policy",
            "callbacks",
        },
        "",
    )
    database_url = _take(data, "database_url", "", str, DEFAULT_DATABASE_URL)
    broker_url = _take(data, "broker_url", "", str, DEFAULT_BROKER_URL)
    providers_table = data.get("providers", {})
    if not isinstance(providers_table, Mapping):
        raise ConfigError("providers", "expected a table of provider instances")
    providers = tuple(_provider(name, table) for name, table in providers_table.items())
    pipeline = _section(data, "pipeline", PipelineConfig)
    _check_visibility(pipeline, providers)
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        providers=providers,
        api=_section(data, "api", ApiConfig),
        flower=_section(data, "flower", FlowerConfig),
        pipeline=pipeline,
        polling=_section(data, "polling", PollingConfig),
        phones=_phones(data),
        policy=_policy(data),
        callbacks=_section(data, "callbacks", CallbacksConfig),
        source=source,
    )


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    from dataclasses import replace

    db = env.get("SMSDISPATCH_DATABASE_URL")
    broker = env.get("SMSDISPATCH_BROKER_URL")
    if db:
        settings = replace(settings, database_url=db)
    if broker:
        settings = replace(settings, broker_url=broker)
    _check_db_url(settings.database_url)
    if is_sentinel(settings.broker_url):
        # Several sentinels in one string (Celery's form): each part is checked, and
        # the master's name must be there (redis_conn.parse_sentinel).
        target = parse_sentinel(settings.broker_url)
        register_secret(target.password)
        register_secret(target.sentinel_password)
    elif settings.broker_url != "memory://":  # the embedded runner's in-process queue
        _check_url(settings.broker_url, "broker_url", ("redis", "rediss", "amqp"))
    return settings


def _check_db_url(url: str) -> None:
    scheme = urlsplit(url).scheme
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise ConfigError("database_url", f"expected sqlite:/// or postgresql:// URL, got {url!r}")


def config_path(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    explicit = env.get("SMSDISPATCH_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError("SMSDISPATCH_CONFIG", f"no such file: {path}")
        return path
    local = Path("smsdispatch.toml")
    return local if local.is_file() else None


def load(path: Path | str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration (see the module docstring for the lookup)."""
    env = os.environ if env is None else env
    file = Path(path) if path is not None else config_path(env)
    if file is None:
        from dispatcher.simulator.defaults import default_settings_table

        settings = parse(default_settings_table(), source="defaults (built-in simulator)")
    else:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), f"not valid TOML: {exc}") from None
        settings = parse(data, source=str(file))
    return _apply_env(settings, env)


_cached: Settings | None = None


def get_settings(reload: bool = False) -> Settings:
    """The process-wide settings, loaded once."""
    global _cached
    if _cached is None or reload:
        _cached = load()
    return _cached


def set_settings(settings: Settings | None) -> None:
    """Install settings for this process (tests, the demo); None forgets them."""
    global _cached
    _cached = settings
