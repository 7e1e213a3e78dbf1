"""Quiet hours and per-recipient rates: parsing, and when a held message may go."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from dispatcher import config
from dispatcher.errors import ConfigError, ValidationError
from dispatcher.quiet import Rate, Window, opens_at, parse_rate, parse_window, zone

MSK = ZoneInfo("Europe/Moscow")


def at(text: str, tz: ZoneInfo = MSK) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("09:00-21:00", Window(540, 1260)),
        ("22:00-06:30", Window(1320, 390)),
        ("08:15-24:00", Window(495, 1440)),
    ],
)
def test_windows_parse(text: str, window: Window) -> None:
    assert parse_window(text, "w") == window
    assert str(window) == text


@pytest.mark.parametrize("text", ["", "always", "00:00-24:00", None])
def test_no_window(text: str | None) -> None:
    assert parse_window(text, "w") is None


@pytest.mark.parametrize(
    "text", ["9-21", "09:00", "25:00-26:00", "09:60-10:00", "10:00-10:00", "09:00-24:30"]
)
def test_bad_windows_name_the_field(text: str) -> None:
    with pytest.raises(ValidationError) as bad:
        parse_window(text, "policy.send_window")
    assert bad.value.field == "policy.send_window"


@pytest.mark.parametrize(
    ("now", "opens"),
    [
        ("2026-12-01 12:00", None),  # inside
        ("2026-12-01 09:00", None),  # the start is inside
        ("2026-12-01 21:00", "2026-12-02 09:00"),  # the end is not
        ("2026-12-01 23:30", "2026-12-02 09:00"),
        ("2026-12-01 03:00", "2026-12-01 09:00"),
        ("2026-12-31 22:00", "2027-01-01 09:00"),  # over a year's end
    ],
)
def test_opens_at_in_moscow(now: str, opens: str | None) -> None:
    window = parse_window("09:00-21:00", "w")
    got = opens_at(at(now).astimezone(UTC), window, MSK)
    assert got == (at(opens).astimezone(UTC) if opens else None)
    assert got is None or got.tzinfo == UTC


def test_a_window_over_midnight() -> None:
    window = parse_window("22:00-06:00", "w")
    assert opens_at(at("2026-12-01 23:00"), window, MSK) is None
    assert opens_at(at("2026-12-01 05:59"), window, MSK) is None
    assert opens_at(at("2026-12-01 06:00"), window, MSK) == at("2026-12-01 22:00").astimezone(UTC)


def test_a_window_opening_in_a_dst_gap_opens_after_it() -> None:
    """Berlin skips 02:00-03:00 on 2026-03-29: a 02:30 opening that night is 03:30."""
    berlin = ZoneInfo("Europe/Berlin")
    window = parse_window("02:30-05:00", "w")
    got = opens_at(at("2026-03-29 01:00", berlin), window, berlin)
    assert got is not None and got.astimezone(berlin).hour == 3
    # And on an ordinary day the local time is kept across the zone's offset.
    assert opens_at(at("2026-07-01 01:00", berlin), window, berlin) == at("2026-07-01 02:30", berlin)


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("5/hour", Rate(5, 3600)),
        ("20/day", Rate(20, 86400)),
        ("3/10min", Rate(3, 600)),
        ("1/30s", Rate(1, 30)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text, "r") == rate


@pytest.mark.parametrize("text", ["5", "five/hour", "5/week", "0/hour", "5/0s", "5/31d"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_rate(text, "r")


def test_zones() -> None:
    assert zone("Asia/Vladivostok", "tz").key == "Asia/Vladivostok"
    for bad in ("Mars/Olympus", "../../etc/passwd", "", "Europe/Moscow\x00", "localtime", "posixrules"):
        with pytest.raises(ValidationError) as refused:
            zone(bad, "tz")
        assert refused.value.field == "tz"


def test_policy_settings_are_checked_with_their_key() -> None:
    policy = config.parse(
        {
            "policy": {
                "send_window": "09:00-21:00",
                "recipient_limit": {"high": "5/hour"},
                "retention_mode": "mask",
            }
        }
    ).policy
    assert policy.window() == Window(540, 1260) and policy.rate("high") == Rate(5, 3600)
    assert policy.rate("normal") is None
    assert config.parse({"policy": {"recipient_limit": "3/day"}}).policy.rate("normal") == Rate(3, 86400)
    cases = {
        "policy.send_window": {"send_window": "9 to 5"},
        "policy.timezone": {"timezone": "Moscow"},
        "policy.recipient_limit.high": {"recipient_limit": {"high": "lots"}},
        "policy.recipient_limit.urgent": {"recipient_limit": {"urgent": "1/hour"}},
        "policy.retention_mode": {"retention_mode": "shred"},
        "policy.retention_days": {"retention_days": 0},
        "policy.colour": {"colour": "red"},
    }
    for key, table in cases.items():
        with pytest.raises(ConfigError) as bad:
            config.parse({"policy": table})
        assert bad.value.key == key, (key, bad.value)
