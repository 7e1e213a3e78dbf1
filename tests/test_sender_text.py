"""What intake refuses in a message's sender, text and times, each naming the field:
a sender per the providers' documents, a text with characters no SMS can carry, a time
outside datetime's range."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from dispatcher.config import Settings, check_sender
from dispatcher.errors import ConfigError, ValidationError
from dispatcher.providers.base import common_sender_problem
from dispatcher.providers.mysms import MySms
from dispatcher.providers.prostor import Prostor
from dispatcher.providers.sms1000 import Sms1000
from dispatcher.providers.smska import SmsKa
from dispatcher.providers.smstele import SmsTele
from dispatcher.validation import _as_utc, validate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def refusal(field: str, **fields: Any) -> ValidationError:
    fields = {"to": "79161234567", "text": "x", **fields}
    with pytest.raises(ValidationError) as info:
        validate(Settings(), prefix="messages[3].", now=NOW, **fields)
    assert info.value.field == f"messages[3].{field}"
    return info.value


# -- the sender ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "why"),
    [
        ("²³", "U+00B2 SUPERSCRIPT TWO at character 1"),  # str.isdigit() says True
        ("12³", "U+00B3 SUPERSCRIPT THREE at character 3"),
        ("٧٩١٦", "not a Latin letter"),  # Arabic-Indic digits
        ("Магазин", "U+041C CYRILLIC CAPITAL LETTER EM"),  # str.isalnum() says True
        (" MyBrand", "whitespace around the name"),
        ("MyBrand ", "whitespace around the name"),
        ("MyBrand\n", "whitespace around the name"),
        ("My Brand", "a space"),
        ("My\u00a0Brand", "a space"),
        ("My\u200bBrand", "an invisible format character: U+200B ZERO WIDTH SPACE at character 3"),
        ("\ufeffMyBrand", "an invisible format character"),
        ("My\u200dBrand", "an invisible format character"),
        ("My\x00Brand", "not a Latin letter"),
        ("Shop&Co", "not a Latin letter, a digit, . or -"),
        ("Shop_24", "not a Latin letter"),
        ("TwelveLetter", "at most 11 characters, got 12"),
        ("1" * 16, "at most 15 digits, got 16"),
        ("12-34", "a Latin letter"),
        ("", "empty"),
    ],
)
def test_a_sender_breaking_the_documents_rule_is_refused_naming_the_character(sender: str, why: str) -> None:
    assert why in refusal("sender", sender=sender).reason
    with pytest.raises(ConfigError) as info:
        check_sender(sender, "providers.main.sender")
    assert why in info.value.reason


@pytest.mark.parametrize(
    "sender", ["MyBrand", "sms-tester", "REX400.RU", "A", "Abcdefghij", "1" * 15, "3132018"]
)
def test_documented_senders_pass_and_their_near_misses_do_not(sender: str) -> None:
    # my-sms.md:43 (11 Latin, 15 digits), 1000sms.md:100 "sms-tester", smstele.md:349
    # "REX400.RU", prostor.md:285 "3132018"
    assert common_sender_problem(sender) is None
    assert validate(Settings(), to="79161234567", text="x", sender=sender, now=NOW).sender == sender
    # The same with a trailing space, or with a last digit only str.isdigit() takes
    near_miss = sender[:-1] + "\u00b2" if sender.isdigit() else sender + " "
    assert refusal("sender", sender=near_miss).reason


@pytest.mark.parametrize(
    ("adapter", "code", "doc"),
    [
        (SmsKa, "-7", "sms-ka.md:49"),
        (SmsTele, "-31", "smstele.md:43"),
        (Prostor, "sender address invalid", "prostor.md:62"),
        (MySms, "-11", "my-sms.md:43"),
        (Sms1000, "620", "1000sms.md:83"),
    ],
)
@pytest.mark.parametrize("sender", ["²³", "My\u200bBrand", " MyBrand", "My Brand"])
def test_every_adapter_refuses_such_a_sender_with_its_documented_code(
    adapter: Any, code: str, doc: str, sender: str
) -> None:
    refusal_ = adapter.sender_refusal(sender)
    assert refusal_ is not None and refusal_[0] == code and doc in refusal_[1]
    assert adapter.sender_refusal("MyBrand") is None


def test_sms1000_digit_limit_counts_only_ascii_digits() -> None:
    # 1000sms.md:85: at most 2 digits; "²" is no digit there and no Latin either
    assert Sms1000.sender_refusal("Shop12") is None
    code, reason = Sms1000.sender_refusal("Shop²³4") or ("", "")
    assert code == "620" and "SUPERSCRIPT TWO" in reason


# -- the text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Hello world \ud800!", "an unpaired surrogate (U+D800) at character 13 cannot be sent in an SMS"),
        ("\udfff", "an unpaired surrogate (U+DFFF) at character 1"),
        ("code \ud83d", "an unpaired surrogate (U+D83D) at character 6"),  # half an emoji
        ("a\x00b", "a control character (U+0000) at character 2 cannot be sent in an SMS"),
        ("a\x07b", "a control character (U+0007)"),
        ("a\x1bb", "a control character (U+001B)"),  # GSM's escape, never text
        ("page\x0cbreak", "a control character (U+000C)"),
        ("a\x7fb", "a control character (U+007F)"),
        ("a\x85b", "a control character (U+0085)"),  # C1: NEXT LINE
        ("a\x9fb", "a control character (U+009F)"),
        ("a\ufffeb", "a Unicode noncharacter (U+FFFE) at character 2"),
        ("a\uffffb", "a Unicode noncharacter (U+FFFF)"),
        ("a\ufdd0b", "a Unicode noncharacter (U+FDD0)"),
        ("a\U0001fffeb", "a Unicode noncharacter (U+1FFFE)"),
    ],
)
def test_a_text_with_a_character_no_sms_can_carry_is_refused_with_its_position(text: str, why: str) -> None:
    assert why in refusal("text", text=text).reason


@pytest.mark.parametrize(
    "text", ["line one\nline two", "a\r\nb", "col\tcol", "Код 1234 🔑", "€[]{}", "\u200bzero"]
)
def test_a_text_sms_can_carry_passes_and_a_lone_surrogate_after_it_does_not(text: str) -> None:
    message = validate(Settings(), to="79161234567", text=text, now=NOW)
    assert message.text == text
    text.encode("utf-16")  # what a UCS-2 part is made of
    reason = refusal("text", text=text + "\udc00").reason
    assert f"(U+DC00) at character {len(text) + 1}" in reason


def test_a_key_with_an_unpaired_surrogate_is_refused() -> None:
    # PostgreSQL stores UTF-8, which has no form for it
    assert "printable" in refusal("key", key="order-\ud800").reason


# -- times: `at` and list_messages' since/until ----------------------------------------


@pytest.mark.parametrize(
    ("at", "why"),
    [
        ("9999-12-31T00:00:00+00:00", "more than a year ahead"),
        ("9999-12-31T23:59:59-05:00", "out of range"),  # no UTC time in year 9999
        ("0001-01-01T00:00:00+01:00", "out of range"),  # no UTC time in year 1
        (datetime(9999, 12, 31, tzinfo=UTC), "more than a year ahead"),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), "out of range"),
        (datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "out of range"),
        ((NOW + timedelta(days=367)).isoformat(), "more than a year ahead"),
        ("2030-01-01\x0010:00:00+03:00", "not an ISO-8601 time"),  # fromisoformat takes it
        ("2030-01-01Я10:00:00+03:00", "not an ISO-8601 time"),
        (1767225600, "expected a datetime or an ISO-8601 string, got int"),
        (["2030-01-01T10:00:00Z"], "got list"),
        (True, "got bool"),
        ("2030-01-01T10:00:00", "needs a zone"),
    ],
)
def test_a_time_out_of_range_or_of_no_type_is_refused_naming_at(at: Any, why: str) -> None:
    assert why in refusal("at", at=at).reason


def test_the_edges_of_datetimes_range() -> None:
    # A year ahead plus a month's TTL still fits
    ahead = validate(
        Settings(), to="79161234567", text="x", at=NOW + timedelta(days=365), ttl=2592000, now=NOW
    )
    assert ahead.expires_at == NOW + timedelta(days=395)
    # 0001-01-01 UTC has passed: sent now; an hour east of UTC it has no UTC time at all
    past = validate(Settings(), to="79161234567", text="x", at="0001-01-01T00:00:00+00:00", now=NOW)
    assert past.send_at is None and past.expires_at > NOW
    assert "out of range: 0001-01-01T00:00:00+01:00" in refusal("at", at="0001-01-01T00:00:00+01:00").reason


@pytest.mark.parametrize("field", ["since", "until"])
@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00", 42])
def test_list_filters_name_their_field(field: str, value: Any) -> None:
    # list_messages reads since/until with _as_utc(value, "since")
    with pytest.raises(ValidationError) as info:
        _as_utc(value, field)
    assert info.value.field == field
