"""Status polling never stalls: one message the provider chokes on backs off alone,
and only a provider failing as a whole pauses its polling (issue 11, item 1)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from dispatcher import config, db
from dispatcher.config import Settings
from dispatcher.coordination import coordinator_for
from dispatcher.models import MESSAGES, utcnow
from dispatcher.providers import adapter_class, make_provider
from dispatcher.providers.base import OutgoingSms, Provider
from dispatcher.simulator.core import Simulator
from dispatcher.tracking import poll_due
from tests.conftest import KINDS
from tests.support import REDIS_URL, Stack

# The kinds asked one message per status call: one stuck message used to stop them all.
ONE_PER_CALL = [k for k in KINDS if adapter_class(k).MAX_STATUS_BATCH == 1]
BROKEN = "79161112233"


def _in_flight(settings: Settings, kind: str, phones: list[str]) -> tuple[Provider, list[str]]:
    """Send to the simulator for real and store the messages as accepted, due for a poll
    in the order given."""
    provider = make_provider(settings.provider(kind))
    sent = provider.send(
        [OutgoingSms(uuid.uuid4().hex, phone, f"poll me {n}") for n, phone in enumerate(phones)]
    )
    now = utcnow()
    rows = [
        {"id": o.id, "payload_hash": "x", "to": phone, "text": "t", "priority": "normal", "parts": 1,
         "encoding": "gsm7", "status": "accepted", "provider": kind,
         "provider_message_id": o.provider_message_id, "attempts": 1, "retries": 0, "failovers": 0,
         "tried": "", "polls": 0, "created_at": now, "updated_at": now,
         "expires_at": now + timedelta(days=1), "due_at": now, "accepted_at": now,
         "next_poll_at": now - timedelta(seconds=len(phones) - n)}
        for n, (o, phone) in enumerate(zip(sent, phones, strict=True))
    ]  # fmt: skip
    with db.session_scope() as s:
        s.execute(insert(MESSAGES), rows)
    return provider, [o.id for o in sent]


def _rows(ids: list[str]) -> dict[str, Any]:
    with db.session_scope() as s:
        found = s.execute(
            select(MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.next_poll_at, MESSAGES.c.last_error).where(
                MESSAGES.c.id.in_(ids)
            )
        ).all()
    return {r.id: r for r in found}


def _settings(stack: Stack, kind: str, **overrides: Any) -> Settings:
    stack.configure(providers=[kind], **{kind: overrides} if overrides else {})
    return config.get_settings()


@pytest.mark.parametrize("kind", ONE_PER_CALL)
def test_one_failing_message_backs_off_alone(kind: str, stack: Stack, sim: Simulator) -> None:
    settings = _settings(stack, kind)
    sim[kind].state.faults.broken_status = BROKEN
    provider, ids = _in_flight(settings, kind, [BROKEN, *(f"7916123456{n}" for n in range(6))])
    time.sleep(0.7)  # the simulator moves them on to delivered
    coordinator = coordinator_for(REDIS_URL)
    before = utcnow()
    stats = poll_due(settings, coordinator, provider)
    assert stats.calls == 7 and stats.polled == 6 and len(stats.errors) == 1
    rows = _rows(ids)
    broken, healthy = rows[ids[0]], [rows[i] for i in ids[1:]]
    assert [r.status for r in healthy] == ["delivered"] * 6
    assert broken.status == "accepted"
    assert "status check failed" in broken.last_error and "500" in broken.last_error
    # it waits its own next turn, by the interval for its age
    assert broken.next_poll_at >= before + timedelta(seconds=settings.polling.intervals[1])
    # the provider itself is fine: the next round is not paused
    assert "polling paused" not in " ".join(poll_due(settings, coordinator, provider).errors)


def test_a_provider_that_refuses_connections_pauses_its_polling(stack: Stack, sim: Simulator) -> None:
    settings = _settings(stack, "smska")
    _, ids = _in_flight(settings, "smska", [f"7916123456{n}" for n in range(5)])
    down = _settings(stack, "smska", base_url="http://127.0.0.1:9/api/httppost.php")
    coordinator = coordinator_for(REDIS_URL)
    stats = poll_due(down, coordinator, make_provider(down.provider("smska")))
    assert stats.calls == 1  # no reply at all: the round ends at once
    again = poll_due(down, coordinator, make_provider(down.provider("smska")))
    assert again.calls == 0 and "polling paused" in again.errors[0]
    assert _rows(ids)[ids[0]].last_error and "status check failed" in _rows(ids)[ids[0]].last_error


def test_several_5xx_in_a_row_pause_the_provider(stack: Stack, sim: Simulator) -> None:
    settings = _settings(stack, "smstele")
    provider, ids = _in_flight(settings, "smstele", [f"7916123456{n}" for n in range(6)])
    sim["smstele"].state.faults.http500_rate = 1.0
    coordinator = coordinator_for(REDIS_URL)
    stats = poll_due(settings, coordinator, provider)
    assert stats.calls == 3 and stats.polled == 0  # three failed calls in a row
    assert "polling paused" in poll_due(settings, coordinator, provider).errors[0]
    rows = _rows(ids)
    assert sum(1 for r in rows.values() if r.last_error) == 3  # the other three were not asked


def test_a_pause_grows_even_when_the_round_began_well(stack: Stack, sim: Simulator) -> None:
    settings = _settings(stack, "smstele")
    provider, _ = _in_flight(settings, "smstele", [f"7916123456{n}" for n in range(6)])
    sim["smstele"].state.faults.fail_after = 6 + 2  # the six sends, two status calls, then HTTP 500
    coordinator = coordinator_for(REDIS_URL)
    stats = poll_due(settings, coordinator, provider)
    assert (stats.calls, stats.polled) == (5, 2)  # two answered, then three failed in a row
    assert coordinator.get_value("poll_pauses:smstele") == "1"  # the next pause is twice as long


def test_a_reply_the_adapter_cannot_read_is_that_messages_failure(
    stack: Stack, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(stack, "smska")
    provider, ids = _in_flight(settings, "smska", [BROKEN, "79161234560", "79161234561"])
    read = provider.parse_status

    def trips_on_one(reply: Any, refs: Any) -> Any:
        if refs[0].to == BROKEN:
            raise TypeError("an odd reply our reader trips on")
        return read(reply, refs)

    monkeypatch.setattr(provider, "parse_status", trips_on_one)
    time.sleep(0.7)
    stats = poll_due(settings, coordinator_for(REDIS_URL), provider)
    assert stats.polled == 2 and len(stats.errors) == 1
    rows = _rows(ids)
    assert [rows[i].status for i in ids[1:]] == ["delivered", "delivered"]
    assert "unreadable status reply: TypeError" in rows[ids[0]].last_error
