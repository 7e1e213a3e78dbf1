"""Apps as clients: each has its own API key, its senders, a daily quota, a default
status callback and quiet hours of its own.

The key is shown once, at ``create_client``, and stored as its SHA-256: a key of 256
random bits cannot be guessed from its hash, so no slow password hash is needed (and
every API request can check it with one indexed look-up). The webhook secret is stored
as is, since signing a callback needs it. A revoked client is refused by the next
request on every API process: nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlmodel import Session

from dispatcher.errors import ValidationError
from dispatcher.models import CLIENTS, utcnow
from dispatcher.providers.base import common_sender_problem
from dispatcher.quiet import parse_window, zone

KEY_PREFIX = "sdk_"
SECRET_PREFIX = "whsec_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_QUOTA = 100_000_000


@dataclass(frozen=True)
class ClientInfo:
    name: str
    key_prefix: str
    senders: tuple[str, ...]
    daily_quota: int | None
    callback_url: str | None
    callback_task: str | None
    send_window: str | None
    timezone: str | None
    created_at: datetime
    revoked_at: datetime | None
    webhook_secret: str = field(repr=False, default="")

    def public(self) -> dict[str, Any]:
        """What ``clients list`` shows: never the key or the webhook secret."""
        return {
            "name": self.name, "key_prefix": self.key_prefix, "senders": list(self.senders),
            "daily_quota": self.daily_quota, "callback_url": self.callback_url,
            "callback_task": self.callback_task, "send_window": self.send_window, "timezone": self.timezone,
            "created_at": self.created_at, "revoked_at": self.revoked_at,
        }  # fmt: skip


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _info(row: Any) -> ClientInfo:
    return ClientInfo(
        name=row.name, key_prefix=row.key_prefix, senders=tuple(json.loads(row.senders or "[]")),
        daily_quota=row.daily_quota, callback_url=row.callback_url, callback_task=row.callback_task,
        send_window=row.send_window, timezone=row.timezone, created_at=row.created_at,
        revoked_at=row.revoked_at, webhook_secret=row.webhook_secret,
    )  # fmt: skip


def check_name(name: Any, field_name: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationError(
            field_name, "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def create_client(
    session: Session,
    name: str,
    *,
    senders: tuple[str, ...] = (),
    daily_quota: int | None = None,
    callback_url: str | None = None,
    callback_task: str | None = None,
    send_window: str | None = None,
    timezone: str | None = None,
    allow_private: bool = False,
) -> tuple[ClientInfo, str, str]:
    """A new client: (its info, its API key, its webhook secret). The key and secret
    are not shown again. ``ValidationError`` names the option at fault."""
    from dispatcher.callbacks import check_task_name, check_url

    check_name(name)
    for s in senders:
        problem = common_sender_problem(s) if isinstance(s, str) else "not a string"
        if problem:
            raise ValidationError("sender", f"{s!r}: {problem}")
    if daily_quota is not None and (isinstance(daily_quota, bool) or not 1 <= daily_quota <= MAX_QUOTA):
        raise ValidationError("daily_quota", f"1 to {MAX_QUOTA}, got {daily_quota!r}")
    if callback_url is not None:
        problem = check_url(callback_url, allow_private=allow_private)
        if problem:
            raise ValidationError("callback_url", problem)
    if callback_task is not None:
        check_task_name(callback_task, "callback_task")
    if send_window is not None:
        window = parse_window(send_window, "send_window")
        send_window = str(window) if window else "always"
    if timezone is not None:
        zone(timezone, "timezone")
    if session.execute(select(CLIENTS.c.name).where(CLIENTS.c.name == name)).first() is not None:
        raise ValidationError("name", f"a client {name!r} exists already (revoked names are not reused)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    session.execute(
        insert(CLIENTS).values(
            name=name, key_hash=key_hash(key), key_prefix=key[:12], senders=json.dumps(list(senders)),
            daily_quota=daily_quota, callback_url=callback_url, callback_task=callback_task,
            webhook_secret=secret, send_window=send_window, timezone=timezone,
            created_at=now, revoked_at=None,
        )
    )  # fmt: skip
    info = get_client(session, name)
    assert info is not None
    return info, key, secret


def get_client(session: Session, name: str) -> ClientInfo | None:
    """The client named ``name``, revoked or not."""
    row = session.execute(select(CLIENTS).where(CLIENTS.c.name == name)).first()
    return _info(row) if row is not None else None


def authenticate(session: Session, key: str) -> ClientInfo | None:
    """The live (not revoked) client whose key this is, or None."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = session.execute(
        select(CLIENTS).where(CLIENTS.c.key_hash == key_hash(key), CLIENTS.c.revoked_at.is_(None))
    ).first()
    return _info(row) if row is not None else None


def list_clients(session: Session) -> list[ClientInfo]:
    return [_info(r) for r in session.execute(select(CLIENTS).order_by(CLIENTS.c.name)).all()]


def revoke_client(session: Session, name: str) -> bool:
    """Revoke the key: False when there is no such live client."""
    result = session.execute(
        update(CLIENTS)
        .where(CLIENTS.c.name == name, CLIENTS.c.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
