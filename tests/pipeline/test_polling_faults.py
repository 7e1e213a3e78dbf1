"""Status polling never stalls: one message the provider chokes on backs off alone,
and only a provider failing as a whole pauses its polling (issue 11, item 1), now that
a group's calls go out concurrently (issue 21)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from dispatcher import config, db
from dispatcher.config import Settings
from dispatcher.models import MESSAGES, utcnow
from dispatcher.providers import adapter_class
from dispatcher.simulator.core import Simulator
from tests.conftest import KINDS
from tests.support import InlinePolls, Stack, store_accepted

# The kinds asked one message per status call: one stuck message used to stop them all.
ONE_PER_CALL = [k for k in KINDS if adapter_class(k).MAX_STATUS_BATCH == 1]
BROKEN = "79161112233"


def _in_flight(settings: Settings, kind: str, phones: list[str]) -> list[str]:
    """Send to the simulator for real and store the messages as accepted, due for a poll
    in the order given."""
    return store_accepted(
        settings, kind, phones, due_ago=[float(len(phones) - n) for n in range(len(phones))]
    )


def _rows(ids: list[str]) -> dict[str, Any]:
    with db.session_scope() as s:
        found = s.execute(
            select(MESSAGES.c.id, MESSAGES.c.status, MESSAGES.c.next_poll_at, MESSAGES.c.last_error,
                   MESSAGES.c.polls).where(MESSAGES.c.id.in_(ids))
        ).all()  # fmt: skip
    return {r.id: r for r in found}


def _settings(stack: Stack, kind: str, **overrides: Any) -> Settings:
    stack.configure(providers=[kind], **{kind: overrides} if overrides else {})
    return config.get_settings()


@pytest.fixture
def polls() -> Iterator[list[InlinePolls]]:
    made: list[InlinePolls] = []
    yield made
    for p in made:
        p.close()


def _polls(made: list[InlinePolls], settings: Settings) -> InlinePolls:
    made.append(InlinePolls(settings))
    return made[-1]


# Status calls spaced by a rate limit, so that "in a row" is the order they were made in
# (a whole group's calls at once would all be in flight before the first failed).
SPACED = {"status_rate_limit": 5.0}


@pytest.mark.parametrize("kind", ONE_PER_CALL)
def test_one_failing_message_backs_off_alone(
    kind: str, stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    settings = _settings(stack, kind)
    sim[kind].state.faults.broken_status = BROKEN
    ids = _in_flight(settings, kind, [BROKEN, *(f"7916123456{n}" for n in range(6))])
    time.sleep(0.7)  # the simulator moves them on to delivered
    inline = _polls(polls, settings)
    before = utcnow()
    stats = inline.round(kind)
    assert stats.calls == 7 and stats.polled == 6 and len(stats.errors) == 1
    rows = _rows(ids)
    broken, healthy = rows[ids[0]], [rows[i] for i in ids[1:]]
    assert [r.status for r in healthy] == ["delivered"] * 6
    assert broken.status == "accepted" and broken.polls == 1
    assert "status check failed" in broken.last_error and "500" in broken.last_error
    # it waits its own next turn, at least the floor away: never asked again at once
    floor = min(settings.polling.first_poll_floor, settings.polling.intervals[0])
    assert broken.next_poll_at >= before + timedelta(seconds=floor)
    # the provider itself is fine: the next round is not paused
    assert "polling paused" not in " ".join(inline.round(kind).errors)


def test_a_provider_that_refuses_connections_pauses_its_polling(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    settings = _settings(stack, "smska")
    ids = _in_flight(settings, "smska", [f"7916123456{n}" for n in range(5)])
    down = _settings(stack, "smska", base_url="http://127.0.0.1:9/api/httppost.php", **SPACED)
    inline = _polls(polls, down)
    stats = inline.round("smska")
    assert stats.calls == 1  # no reply at all: the calls not yet made are not made
    again = inline.round("smska")
    assert again.calls == 0 and "polling paused" in again.errors[0]
    rows = _rows(ids)
    asked = [r for r in rows.values() if r.polls]
    assert len(asked) == 1 and "status check failed" in asked[0].last_error
    # the four not asked keep their turn: due again a round later, never counted as polled
    again_at = utcnow() + timedelta(seconds=down.polling.interval)
    assert all(r.polls == 0 and r.next_poll_at <= again_at for r in rows.values() if r.id != asked[0].id)


def test_several_5xx_in_a_row_pause_the_provider(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    settings = _settings(stack, "smstele", **SPACED)
    ids = _in_flight(settings, "smstele", [f"7916123456{n}" for n in range(6)])
    sim["smstele"].state.faults.http500_rate = 1.0
    inline = _polls(polls, settings)
    stats = inline.round("smstele")
    assert stats.calls == 3 and stats.polled == 0  # three failed calls in a row
    assert "polling paused" in inline.round("smstele").errors[0]
    rows = _rows(ids)
    assert sum(1 for r in rows.values() if r.last_error) == 3  # the other three were not asked


def test_a_pause_grows_even_when_the_round_began_well(
    stack: Stack, sim: Simulator, polls: list[InlinePolls]
) -> None:
    settings = _settings(stack, "smstele", **SPACED)
    _in_flight(settings, "smstele", [f"7916123456{n}" for n in range(6)])
    sim["smstele"].state.faults.fail_after = 6 + 2  # the six sends, two status calls, then HTTP 500
    inline = _polls(polls, settings)
    stats = inline.round("smstele")
    assert (stats.calls, stats.polled) == (5, 2)  # two answered, then three failed in a row
    assert inline.coordinator.get_value("poll_pauses:smstele") == "1"  # the next pause is twice as long


def test_a_reply_the_adapter_cannot_read_is_that_messages_failure(
    stack: Stack, sim: Simulator, monkeypatch: pytest.MonkeyPatch, polls: list[InlinePolls]
) -> None:
    settings = _settings(stack, "smska")
    ids = _in_flight(settings, "smska", [BROKEN, "79161234560", "79161234561"])
    inline = _polls(polls, settings)
    provider = inline.calls.get("smska")
    read = provider.parse_status

    def trips_on_one(reply: Any, refs: Any) -> Any:
        if refs[0].to == BROKEN:
            raise TypeError("an odd reply our reader trips on")
        return read(reply, refs)

    monkeypatch.setattr(provider, "parse_status", trips_on_one)
    time.sleep(0.7)
    stats = inline.round("smska")
    assert stats.polled == 2 and len(stats.errors) == 1
    rows = _rows(ids)
    assert [rows[i].status for i in ids[1:]] == ["delivered", "delivered"]
    assert "unreadable status reply: TypeError" in rows[ids[0]].last_error
