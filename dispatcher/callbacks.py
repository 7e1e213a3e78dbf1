"""Status callbacks to the apps: the outbox and its delivery.

Every status change of a message that has a ``callback_url`` or a ``callback_task``
writes a row to ``callbacks`` (``record``) in the transaction that changes the status,
so a callback is never lost and a slow receiver never holds up sending. The delivery
task (``deliver_due``, run by the beat job ``callbacks``) then:

1. claims, in a short transaction, due pending callbacks that are each the *first*
   pending one of their message (a later callback never overtakes an earlier one
   still undelivered), and leases them: ``next_at`` moves past the time the run can
   take. PostgreSQL claims with ``FOR UPDATE SKIP LOCKED``; SQLite's write lock
   (``BEGIN IMMEDIATE``) does the same for it. A worker killed mid-run leaves its rows
   pending; they are due again when the lease runs out, and are delivered again
   (at-least-once: receivers dedupe by ``(id, status, at)`` or by the
   ``X-Smsdispatch-Delivery`` header, the callback row's id).
2. POSTs them concurrently (a small thread pool) or, for ``callback_task``, publishes
   the Celery task by that name to the queue ``celery``;
3. writes the outcomes back in one transaction: 2xx is delivered; anything else is
   tried again with exponential backoff and jitter until ``callbacks.max_age`` after
   the change, then the callback is ``failed`` (and the next one of its message goes).
   A ``410 Gone`` fails that callback at once: the receiver says the resource is gone,
   retrying it for a day helps nobody (later callbacks of the message are still tried).

The POST body is compact JSON::

    {"id", "key", "to", "status", "provider", "provider_message_id", "error", "parts",
     "cost", "at"}

``cost`` is the sum of the message's attempts' costs when it is delivered (None when
no provider said), ``at`` the time of the status change (ISO-8601, UTC, ``Z``).
Headers: ``X-Smsdispatch-Timestamp`` (unix seconds), ``X-Smsdispatch-Signature:
sha256=<hex>`` (HMAC-SHA256 of ``timestamp + "." + body`` under the client's webhook
secret, or ``api.token`` for messages without a client; left out when there is no
secret at all), ``X-Smsdispatch-Delivery: <callback id>``.

A ``callback_task`` gets the same payload as ``send_task(NAME, kwargs={"payload":
payload}, queue="celery")``: the receiving app defines ``def NAME(payload: dict)``
and runs a worker on Celery's default queue ``celery`` of our broker.

A URL must be http(s) and public: unless ``callbacks.allow_private``, an address that
is loopback, private, link-local, shared (CGNAT), multicast, reserved, unspecified or
a cloud metadata endpoint is refused when the URL is given (``check_url``), again
before each POST, and by the connection itself after connecting (a name may resolve
elsewhere by then). Redirects are never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import random
import re
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from sqlalchemy import case, func, insert, literal, or_, select, update
from sqlmodel import Session
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from dispatcher import db, metrics
from dispatcher.config import Settings
from dispatcher.errors import ValidationError
from dispatcher.keys import public_key
from dispatcher.models import ATTEMPTS, CALLBACKS, CLIENTS, MESSAGES, utcnow
from dispatcher.redact import redact
from dispatcher.status import Status

log = logging.getLogger("smsdispatch.callbacks")

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
TASK_QUEUE = "celery"  # Celery's default queue: where an app's worker listens unless told otherwise
MAX_URL = 2000
POOL = 8  # concurrent POSTs per run
_TASK_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_ERROR_CHARS = 200
USER_AGENT = "smsdispatch-callbacks/1"

# Cloud metadata endpoints (AWS, ECS, GCP/Azure share AWS's, Alibaba, Oracle): most are
# caught as link-local or shared space already, named here so the refusal says why.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


# -- addresses and URLs ------------------------------------------------------------


def address_problem(address: str) -> str | None:
    """Why ``address`` (an IP literal) is no public unicast address, or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is no part of it
    except ValueError:
        return "is no IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 reaches that IPv4 host: judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            inner = address_problem(str(embedded))
            return f"embeds {embedded}, which {inner}" if inner else None
    if ip in _METADATA:
        return "is a cloud metadata address"
    for word, flag in (
        ("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved), ("private", ip.is_private),
        # fec0::/10, deprecated (RFC 3879) but still routed inside some networks
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
    ):  # fmt: skip
        if flag:
            return f"is {'an' if word[0] in 'aeiou' else 'a'} {word} address"
    if not ip.is_global:  # 100.64.0.0/10 and the like: not private, not public either
        return "is not a public address"
    return None


def check_url(url: str, *, allow_private: bool) -> str | None:
    """What is wrong with ``url`` as a callback URL, in words, or None.

    http(s) only, with a host, without user info (a password in a URL ends up in
    logs), at most 2000 characters; the host must resolve, and unless
    ``allow_private`` every address it resolves to must be public."""
    if not isinstance(url, str) or not url:
        return "not a URL"
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme or '(none)'!r} is not allowed: http or https only"
    if "@" in parts.netloc:
        return "user info (user:password@) is not allowed in a callback URL"
    host = parts.hostname
    if not host:
        return "has no host"
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme.lower() == "https" else 80),
                                   type=socket.SOCK_STREAM)  # fmt: skip
    except (OSError, UnicodeError):
        return f"host {host!r} does not resolve"
    if not infos:
        return f"host {host!r} does not resolve"
    if allow_private:
        return None
    for info in infos:
        address = str(info[4][0])
        problem = address_problem(address)
        if problem:
            shown = host if host == address else f"{host!r} resolves to {address}, which"
            return f"{shown} {problem} (callbacks.allow_private is off)"
    return None


def check_task_name(name: str, field: str) -> str:
    """``name`` when it is a valid Celery task name (1-200 of ``A-Za-z0-9_.:-``)."""
    if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
        raise ValidationError(field, "a task name: 1-200 letters, digits, '_', '.', ':' or '-'")
    return name


def public_url(url: str | None, *, mark: bool = False) -> str | None:
    """``url`` without its query and fragment (they may carry a token) nor user info.
    With ``mark``, ``?…`` says a query or fragment was there (the console shows it)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        shown = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "(unparsable URL)"
    return shown + "?…" if mark and (parts.query or parts.fragment) else shown


# -- signatures --------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), str(int(timestamp)).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    tolerance: float = 300,
) -> bool:
    """For receivers: True when the headers sign ``body`` under ``secret`` and the
    timestamp is within ``tolerance`` seconds of now (a replayed old request fails)."""
    if not timestamp_header or not signature_header:
        return False
    try:
        timestamp = int(timestamp_header.strip())
    except ValueError:
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(), signature_header.strip().encode())


# -- the outbox --------------------------------------------------------------------

_RECORDED = (
    "message_id", "client", "url", "task", "status", "key", "to", "provider",
    "provider_message_id", "error", "parts", "at", "state", "tries", "next_at", "created_at",
)  # fmt: skip


_FAILURES = [
    s.value for s in (Status.REJECTED, Status.FAILED, Status.UNDELIVERED, Status.EXPIRED, Status.UNKNOWN)
]


def record(session: Session, message_ids: Sequence[str], now: datetime) -> int:
    """Write a callback for each of ``message_ids`` that has a callback URL or task,
    copying its current status and fields: one INSERT ... SELECT in the caller's
    transaction (the one that changed the status). Returns the rows written."""
    if not message_ids:
        return 0
    m, c = MESSAGES, CALLBACKS
    source = select(
        m.c.id, m.c.client, m.c.callback_url, m.c.callback_task, m.c.status, m.c.key, m.c.to, m.c.provider,
        m.c.provider_message_id,
        # The error only where the status is a failure: a delivered message may still
        # carry the text of a status poll that failed on the way.
        case((m.c.status.in_(_FAILURES), m.c.last_error), else_=None),
        m.c.parts, literal(now, c.c.at.type),
        literal(PENDING, c.c.state.type), literal(0, c.c.tries.type), literal(now, c.c.next_at.type),
        literal(now, c.c.created_at.type),
    ).where(
        m.c.id.in_(list(message_ids)), or_(m.c.callback_url.is_not(None), m.c.callback_task.is_not(None))
    )  # fmt: skip
    # preserve_rowcount: SQLAlchemy reports an INSERT's rowcount only when asked.
    statement = insert(c).from_select(list(_RECORDED), source).execution_options(preserve_rowcount=True)
    result = session.execute(statement)
    return max(0, int(result.rowcount or 0))  # type: ignore[attr-defined]


@dataclass
class _Item:
    """One claimed callback, with what its delivery needs."""

    id: int
    message_id: str
    client: str | None
    url: str | None
    task: str | None
    tries: int
    created_at: datetime
    lease: datetime
    payload: dict[str, Any]
    secret: str | None = None


def _iso(at: datetime) -> str:
    if at.tzinfo is None:  # stored UTC; a naive value can only be that
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def lease_seconds(settings: Settings, n: int) -> float:
    """How long a run of ``n`` callbacks may take: its POSTs go ``POOL`` at a time,
    each bounded by the timeout (connect, then the reply), plus a round for slack."""
    return settings.callbacks.timeout * (math.ceil(max(n, 1) / POOL) + 1) + 2.0


def _claim(session: Session, settings: Settings, now: datetime, limit: int) -> list[_Item]:
    c = CALLBACKS
    earlier = c.alias("earlier")
    blocked = (
        select(earlier.c.id)
        .where(earlier.c.message_id == c.c.message_id, earlier.c.state == PENDING, earlier.c.id < c.c.id)
        .exists()
    )
    query = (
        select(c.c.id)
        .where(c.c.state == PENDING, c.c.next_at <= now, ~blocked)
        .order_by(c.c.next_at, c.c.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Two runs never take the same row; a row another run is leasing is skipped,
        # and its successors stay blocked by it (the NOT EXISTS sees it pending).
        query = query.with_for_update(skip_locked=True, of=c)
    ids = list(session.execute(query).scalars())
    if not ids:
        return []
    lease = now + timedelta(seconds=lease_seconds(settings, len(ids)))
    rows = session.execute(
        update(c).where(c.c.id.in_(ids), c.c.state == PENDING).values(next_at=lease)
        .returning(c.c.id, c.c.message_id, c.c.client, c.c.url, c.c.task, c.c.tries, c.c.created_at,
                   c.c.status, c.c.key, c.c.to, c.c.provider, c.c.provider_message_id, c.c.error,
                   c.c.parts, c.c.at)
    ).all()  # fmt: skip
    message_ids = sorted({r.message_id for r in rows})
    costs = dict(
        session.execute(
            select(ATTEMPTS.c.message_id, func.sum(ATTEMPTS.c.cost))
            .where(ATTEMPTS.c.message_id.in_(message_ids))
            .group_by(ATTEMPTS.c.message_id)
        ).all()
    )
    clients = sorted({r.client for r in rows if r.client})
    query = select(CLIENTS.c.name, CLIENTS.c.webhook_secret).where(CLIENTS.c.name.in_(clients))
    secrets: dict[str, str] = {n: v for n, v in session.execute(query).all()} if clients else {}
    items = []
    for r in sorted(rows, key=lambda r: r.id):
        cost = costs.get(r.message_id)
        payload = {
            "id": r.message_id, "key": public_key(r.key, r.client), "to": r.to, "status": r.status,
            "provider": r.provider,
            "provider_message_id": r.provider_message_id, "error": redact(r.error) if r.error else None,
            "parts": r.parts, "cost": float(cost) if cost is not None else None, "at": _iso(r.at),
        }  # fmt: skip
        # A client's messages are signed with its secret only: were its row gone, the
        # operator's key would vouch for a payload that is not the operator's.
        secret = secrets.get(r.client) if r.client else settings.api.token
        items.append(_Item(r.id, r.message_id, r.client, r.url, r.task, r.tries, r.created_at, lease,
                           payload, secret))  # fmt: skip
    return items


# -- the guarded HTTP connection ---------------------------------------------------


class RefusedAddress(OSError):
    """The connection reached an address callbacks may not reach."""


def _check_peer(sock: socket.socket) -> None:
    peer = str(sock.getpeername()[0])
    problem = address_problem(peer)
    if problem:
        sock.close()
        raise RefusedAddress(f"refused: the peer {peer} {problem} (callbacks.allow_private is off)")


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock)  # before a byte is sent: the name may resolve elsewhere now
        return sock


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock)
        return sock


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose connections refuse a non-public peer right after connecting."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def _http_session(allow_private: bool) -> requests.Session:
    session = requests.Session()
    # No proxy from the environment: the peer must be the receiver itself to be checked.
    session.trust_env = False
    adapter: HTTPAdapter = (
        HTTPAdapter(pool_maxsize=POOL, max_retries=0)
        if allow_private
        else _GuardedAdapter(pool_maxsize=POOL, max_retries=0)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _refusal(exc: BaseException) -> RefusedAddress | None:
    """The RefusedAddress somewhere in ``exc``'s chain (urllib3 and requests wrap it)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RefusedAddress):
            return e
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None),
                 *[a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]]  # fmt: skip
    return None


def _short(text: str, url: str | None) -> str:
    """An error for ``last_error`` and the log: the URL's query left out wherever it
    shows (urllib3 names only the path and query), then redacted, then cut short."""
    if url:
        text = text.replace(url, public_url(url) or "")
        try:
            query = urlsplit(url).query
        except ValueError:
            query = ""
        if query:
            text = text.replace("?" + query, "")
    return redact(text)[:400]


class _Unreachable:
    """Endpoints (host:port) that did not answer in this run: their other callbacks
    are not tried in it, so one endpoint that swallows connections costs a run a few
    timeouts, not one per callback, and the other endpoints' callbacks still go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: set[str] = set()

    def add(self, endpoint: str) -> None:
        with self._lock:
            self._endpoints.add(endpoint)

    def __contains__(self, endpoint: object) -> bool:
        with self._lock:
            return endpoint in self._endpoints


def _endpoint(url: str) -> str:
    try:
        return urlsplit(url).netloc.rsplit("@", 1)[-1].lower()
    except ValueError:
        return url


def _post(
    http: requests.Session, item: _Item, settings: Settings, unreachable: _Unreachable
) -> tuple[bool, str | None, bool]:
    """POST one callback: (delivered, the error, give up now)."""
    url = item.url or ""
    cfg = settings.callbacks
    endpoint = _endpoint(url)
    if endpoint in unreachable:
        return False, f"not tried: {endpoint} did not answer earlier in this run", False
    problem = check_url(url, allow_private=cfg.allow_private)
    if problem:
        return False, f"refused: {problem}", False
    body = json.dumps(item.payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": USER_AGENT,
        "X-Smsdispatch-Timestamp": str(timestamp),
        "X-Smsdispatch-Delivery": str(item.id),
    }
    if item.secret:
        headers["X-Smsdispatch-Signature"] = sign(item.secret, timestamp, body)
    try:
        response = http.post(url, data=body, headers=headers, timeout=(cfg.timeout, cfg.timeout),
                             allow_redirects=False, stream=True)  # fmt: skip
    except Exception as exc:  # a receiver's fault, whatever it is: tried again later
        refused = _refusal(exc)
        if refused is not None:
            return False, str(refused), False
        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            unreachable.add(endpoint)
        return False, _short(f"{type(exc).__name__}: {exc}", url), False
    try:
        status = response.status_code
        if 200 <= status < 300:
            return True, None, False
        try:
            # At most a few hundred bytes: a receiver cannot make us read a large body.
            head = response.raw.read(4 * _ERROR_CHARS, decode_content=True) or b""
        except Exception:
            head = b""
        said = head.decode("utf-8", "replace").strip()[:_ERROR_CHARS]
        if 300 <= status < 400:
            where = public_url(response.headers.get("Location"))
            return False, _short(f"HTTP {status}: redirects are not followed (to {where})", url), False
        return False, _short(f"HTTP {status}: {said}" if said else f"HTTP {status}", url), status == 410
    finally:
        response.close()


def _publish(item: _Item) -> tuple[bool, str | None, bool]:
    from dispatcher.broker import app

    try:
        app.send_task(item.task or "", kwargs={"payload": item.payload}, queue=TASK_QUEUE)
    except Exception as exc:  # the broker is down: tried again like a receiver that is
        return False, _short(f"publish failed: {type(exc).__name__}: {exc}", None), False
    return True, None, False


def _deliver(items: Sequence[_Item], settings: Settings) -> list[tuple[bool, str | None, bool]]:
    results: dict[int, tuple[bool, str | None, bool]] = {}
    # Task publishes go from this thread: they take a moment, and Celery's producer
    # pool is not meant to be shared by threads.
    for item in items:
        if item.task and not item.url:
            results[item.id] = _publish(item)
    posts = [i for i in items if i.id not in results]
    if posts:
        http = _http_session(settings.callbacks.allow_private)
        unreachable = _Unreachable()
        try:
            with ThreadPoolExecutor(max_workers=min(POOL, len(posts)), thread_name_prefix="callback") as pool:
                outcomes = pool.map(lambda i: _post(http, i, settings, unreachable), posts)
                for item, outcome in zip(posts, outcomes, strict=True):
                    results[item.id] = outcome
        finally:
            http.close()
    return [results[i.id] for i in items]


def _write_back(settings: Settings, items: Sequence[_Item],
                outcomes: Sequence[tuple[bool, str | None, bool]]) -> dict[str, int]:  # fmt: skip
    cfg = settings.callbacks
    c = CALLBACKS
    now = utcnow()
    delivered = [i.id for i, (ok, _, _) in zip(items, outcomes, strict=True) if ok]
    changes: list[tuple[_Item, dict[str, Any]]] = []
    failing: dict[str, tuple[int, int, str]] = {}
    for item, (ok, error, give_up) in zip(items, outcomes, strict=True):
        if ok:
            continue
        created = item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC)
        values: dict[str, Any] = {"tries": item.tries + 1, "last_error": error}
        if give_up or (now - created).total_seconds() >= cfg.max_age:
            # next_at keeps the time it was given up: the backlog's "failed lately".
            values.update(state=FAILED, next_at=now)
        else:
            # Not sending.policy.backoff: importing the send path here would be a circle
            # (ledger writes the outbox through this module).
            delay = min(cfg.backoff_base * 2**item.tries, cfg.backoff_cap) * random.uniform(0.8, 1.2)
            values["next_at"] = now + timedelta(seconds=delay)
        changes.append((item, values))
        where = public_url(item.url) or f"task {item.task}"
        n, given_up, _ = failing.get(where, (0, 0, ""))
        failing[where] = (n + 1, given_up + (values.get("state") == FAILED), error or "")
    # One line per endpoint and run: a receiver that is down must not flood the log.
    for where, (n, given_up, error) in failing.items():
        log.warning("callbacks to %s: %d not delivered in this run (%d given up), last: %s",
                    where, n, given_up, error)  # fmt: skip

    def write() -> dict[str, int]:
        # Counted by each try in its own tally, and in the metric once its transaction
        # commits: a write retried after an outage counts once.
        changed = {"delivered": 0, "retry": 0, "failed": 0}
        with db.session_scope(settings.database_url) as session:
            if delivered:
                # Delivered is delivered, even if our lease ran out and another run
                # holds it now: that run's write-back then finds it no longer pending.
                result = session.execute(update(c).where(c.c.id.in_(delivered), c.c.state == PENDING)
                                         .values(state=DELIVERED, delivered_at=now, next_at=now))  # fmt: skip
                changed["delivered"] = result.rowcount  # type: ignore[attr-defined]
            for item, values in changes:
                # Only while it is still our lease: a run that took it over owns it.
                result = session.execute(
                    update(c).where(c.c.id == item.id, c.c.state == PENDING, c.c.next_at == item.lease)
                    .values(**values)
                )  # fmt: skip
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    changed["failed" if values.get("state") == FAILED else "retry"] += 1
            metrics.count_on_commit(
                session, metrics.CALLBACK_DELIVERIES, [((k,), n) for k, n in changed.items()]
            )
        return changed

    changed = db.write_through_outage(write)
    # "delivered": every callback the receiver took in this run (the worker goes on
    # while there are some), written back by this run or by the one holding it now.
    return {"delivered": len(delivered), "retry": changed["retry"], "failed": changed["failed"]}


def deliver_due(settings: Settings, *, limit: int | None = None) -> dict[str, int]:
    """One delivery run: claim up to ``limit`` (``callbacks.batch``) due callbacks,
    each the first pending one of its message, deliver them, write the outcomes back.
    Returns ``{"delivered", "retry", "failed"}``. A receiver's fault never raises."""
    now = utcnow()
    with db.session_scope(settings.database_url) as session:
        items = _claim(session, settings, now, limit or settings.callbacks.batch)
    if not items:
        return {"delivered": 0, "retry": 0, "failed": 0}
    return _write_back(settings, items, _deliver(items, settings))


# -- the backlog -------------------------------------------------------------------


def _age(now: datetime, at: datetime | None) -> float | None:
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (now - at).total_seconds())


def outbox_totals(session: Session, now: datetime) -> dict[str, Any]:
    """The outbox's pending and failed counts, the pending ones whose last try failed,
    and the oldest pending one's age: by the state index, cheap enough for each
    scrape of ``/metrics``."""
    c = CALLBACKS
    by_state = dict(
        session.execute(
            select(c.c.state, func.count()).where(c.c.state.in_([PENDING, FAILED])).group_by(c.c.state)
        ).all()
    )
    failing, oldest = session.execute(
        select(func.count(case((c.c.tries > 0, 1))), func.min(c.c.created_at)).where(c.c.state == PENDING)
    ).one()
    return {
        "pending": int(by_state.get(PENDING, 0)),
        "failed": int(by_state.get(FAILED, 0)),
        "failing": int(failing or 0),
        "oldest_pending_age_s": _age(now, oldest),
    }


def _totals(session: Session, settings: Settings, now: datetime) -> dict[str, Any]:
    c = CALLBACKS
    day = now - timedelta(hours=24)
    # Bounded by created_at (its index): a callback delivered in the last day was
    # created at most max_age before that. Older delivered rows are never counted.
    delivered = session.execute(
        select(func.count()).where(
            c.c.created_at >= day - timedelta(seconds=settings.callbacks.max_age),
            c.c.state == DELIVERED,
            c.c.delivered_at >= day,
        )
    ).scalar_one()
    return {**outbox_totals(session, now), "delivered_24h": int(delivered or 0)}


def backlog(settings: Settings, session: Session | None = None) -> dict[str, Any]:
    """The outbox at a glance (``smsdispatch callbacks``): pending and failed counts,
    what was delivered in the last 24 h, the oldest pending callback's age, and the
    endpoints with pending or lately failed callbacks, worst first. An endpoint's
    ``url`` has no query string (it may carry a token); a task endpoint has ``url``
    None and ``task`` set. Read in ``session`` if given (the console's, bounded by
    its statement timeout), else in a session of its own."""
    c = CALLBACKS
    now = utcnow()
    scope = (
        contextlib.nullcontext(session) if session is not None else db.session_scope(settings.database_url)
    )
    with scope as session:
        out = _totals(session, settings, now)
        pending = session.execute(
            select(c.c.url, c.c.task, c.c.client, func.count(), func.count(case((c.c.tries > 0, 1))),
                   func.min(c.c.created_at), func.max(case((c.c.tries > 0, c.c.id))))
            .where(c.c.state == PENDING)
            .group_by(c.c.url, c.c.task, c.c.client)
        ).all()  # fmt: skip
        failed = session.execute(
            select(c.c.url, c.c.task, c.c.client, func.count(), func.max(c.c.id))
            .where(c.c.state == FAILED, c.c.next_at >= now - timedelta(hours=24))
            .group_by(c.c.url, c.c.task, c.c.client)
        ).all()  # fmt: skip
        last_ids = [r[6] for r in pending if r[6] is not None] + [r[4] for r in failed]
        errors: dict[int, str | None] = (
            dict(session.execute(select(c.c.id, c.c.last_error).where(c.c.id.in_(last_ids))).all())
            if last_ids
            else {}
        )
    endpoints: dict[tuple[str | None, str | None, str | None], dict[str, Any]] = {}

    def entry(url: str | None, task: str | None, client: str | None) -> dict[str, Any]:
        key = (public_url(url), task, client)
        if key not in endpoints:
            endpoints[key] = {"url": key[0], "task": task, "client": client, "pending": 0, "failing": 0,
                              "failed_24h": 0, "last_error": None, "oldest_s": None, "_last": -1}  # fmt: skip
        return endpoints[key]

    for url, task, client, n, failing, oldest, last_id in pending:
        e = entry(url, task, client)
        e["pending"] += int(n)
        e["failing"] += int(failing or 0)
        age = _age(now, oldest)
        if age is not None and (e["oldest_s"] is None or age > e["oldest_s"]):
            e["oldest_s"] = age
        if last_id is not None and last_id > e["_last"]:
            e["_last"], e["last_error"] = last_id, errors.get(last_id)
    for url, task, client, n, last_id in failed:
        e = entry(url, task, client)
        e["failed_24h"] += int(n)
        if e["_last"] < 0:  # a pending failure says more about now than a given-up one
            e["_last"], e["last_error"] = last_id, errors.get(last_id)
    rows = []
    for e in endpoints.values():
        e.pop("_last")
        e["last_error"] = redact(e["last_error"]) if e["last_error"] else None
        rows.append(e)
    rows.sort(key=lambda e: (e["failing"] > 0 or e["failed_24h"] > 0, e["oldest_s"] or 0.0, e["pending"]),
              reverse=True)  # fmt: skip
    out.pop("failing")
    out["endpoints"] = rows
    return out


__all__ = [
    "address_problem", "backlog", "check_task_name", "check_url", "deliver_due", "lease_seconds",
    "outbox_totals", "public_url", "record", "sign", "verify",
]  # fmt: skip
