"""The console's session and CSRF tokens: stateless, signed with a key derived from the
operator's token.

Every API process derives the same key from ``[api] token``, so a session made by one
process is good on all of them, and changing the token ends every session at once.
A session cookie is ``s1.<issued>.<nonce>.<mac>``; it lives ``SESSION_TTL`` seconds
from login. Logging out writes the nonce to the coordinator (Redis in production)
until the session would have expired anyway, so a copied cookie dies with the logout
on every process, not only in the browser that logged out.

CSRF: each form carries a token the server can check and a third site cannot read.
Before login it is a signed random value also set as a cookie (double submit: a
forged login POST has neither the cookie's value nor a valid signature); after
login it is a MAC of the session's nonce, so it needs no storage and dies with the
session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger("smsdispatch.console")

SESSION_COOKIE = "smsd_console"
LOGIN_COOKIE = "smsd_console_login"
SESSION_TTL = 8 * 3600  # seconds: one working shift
LOGIN_TTL = 3600  # seconds a login form stays valid
_SKEW = 60  # seconds of clock difference between API processes tolerated
_VERSION = "s1"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _digest(value: str) -> bytes:
    # Compared as digests: compare_digest on the raw strings returns early on a
    # length mismatch, which would tell an attacker the key's length.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings, whatever their lengths."""
    return hmac.compare_digest(_digest(a), _digest(b))


@dataclass(frozen=True)
class Session:
    issued: int
    nonce: str

    @property
    def expires(self) -> int:
        return self.issued + SESSION_TTL


class Signer:
    """Makes and checks the console's session and CSRF tokens for one operator token."""

    def __init__(self, operator_token: str) -> None:
        self._token = operator_token
        # A key of its own, not the token: a MAC leaked in a log line gives nothing
        # that authenticates against /v1.
        self._key = hmac.new(operator_token.encode(), b"smsdispatch console v1", hashlib.sha256).digest()

    def _mac(self, *parts: str) -> str:
        return _b64(hmac.new(self._key, "|".join(parts).encode(), hashlib.sha256).digest())

    def is_operator(self, key: str) -> bool:
        """Whether ``key`` is the operator's. Client keys are never the operator's."""
        return same(key, self._token)

    # -- sessions

    def new_session(self, now: float | None = None) -> tuple[Session, str]:
        session = Session(int(now if now is not None else time.time()), _b64(secrets.token_bytes(16)))
        mac = self._mac("session", str(session.issued), session.nonce)
        value = f"{_VERSION}.{session.issued}.{session.nonce}.{mac}"
        return session, value

    def read_session(self, value: str | None, now: float | None = None) -> Session | None:
        """The session a cookie holds, or None: absent, forged, another token's, expired."""
        if not value or len(value) > 200:
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[1].isascii() or not parts[1].isdigit():
            return None
        issued, nonce, mac = int(parts[1]), parts[2], parts[3]
        if not same(mac, self._mac("session", parts[1], nonce)):
            return None
        moment = now if now is not None else time.time()
        if issued > moment + _SKEW or moment >= issued + SESSION_TTL:
            return None
        return Session(issued, nonce)

    def csrf_for(self, session: Session) -> str:
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, given: str | None) -> bool:
        return given is not None and same(given, self.csrf_for(session))

    # -- the login form, before any session

    def new_login_token(self) -> str:
        nonce = _b64(secrets.token_bytes(16))
        issued = str(int(time.time()))
        return f"{nonce}.{issued}.{self._mac('login', nonce, issued)}"

    def check_login_token(self, cookie: str | None, field: str | None, now: float | None = None) -> bool:
        """The form's token is the cookie's, signed by us and not stale."""
        if not cookie or not field or len(field) > 200 or not same(cookie, field):
            return False
        parts = field.split(".")
        if len(parts) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            return False
        if not same(parts[2], self._mac("login", parts[0], parts[1])):
            return False
        moment = now if now is not None else time.time()
        return int(parts[1]) - _SKEW <= moment < int(parts[1]) + LOGIN_TTL


class LoginThrottle:
    """Failed logins per client address, in this process: after ``limit`` failures
    within ``window`` seconds the address waits. Per process on purpose: shared state
    would need a store with expiring counters, and with a handful of API processes
    an attacker still gets only a handful of guesses per window against a 256-bit key."""

    def __init__(self, limit: int = 10, window: float = 300.0, remember: int = 10000) -> None:
        self.limit, self.window, self.remember = limit, window, remember
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, []) if t > now - self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def wait(self, address: str, now: float | None = None) -> float:
        """Seconds ``address`` must wait before its next try (0: it may try now)."""
        moment = now if now is not None else time.monotonic()
        with self._lock:
            times = self._recent(address, moment)
            if len(times) < self.limit:
                return 0.0
            return max(0.0, times[-self.limit] + self.window - moment)

    def failed(self, address: str, now: float | None = None) -> None:
        moment = now if now is not None else time.monotonic()
        with self._lock:
            times = self._recent(address, moment)
            self._failures[address] = [*times[-self.limit :], moment]
            self._failures.move_to_end(address)
            while len(self._failures) > self.remember:  # bounded memory under a spray of addresses
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)
