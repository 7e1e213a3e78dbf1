"""Recipients' numbers read with libphonenumber's metadata: only a number that can
receive an SMS, in an allowed region, is taken; every refusal says why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import phonenumbers
import pytest

from dispatcher.config import Settings, parse
from dispatcher.errors import ValidationError
from dispatcher.phones import Phone, read_phone
from dispatcher.validation import normalize_phone, validate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def settings(*allowed: str) -> Settings:
    return parse({"phones": {"default_region": "RU", "allowed_regions": list(allowed or ["RU"])}})


def refusal(to: Any, config: Settings | None = None) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate(config or settings(), to=to, text="x", prefix="messages[3].", now=NOW)
    assert info.value.field == "messages[3].to"
    return info.value


@pytest.mark.parametrize("raw", ["+7 916 123-45-67", "89161234567", "9161234567", "79161234567", 79161234567])
def test_russian_forms_become_e164_digits_and_region(raw: Any) -> None:
    message = validate(settings(), to=raw, text="x", now=NOW)
    assert (message.to, message.region) == ("79161234567", "RU")


def test_a_russian_landline_without_plus_is_refused_not_read_as_vietnam() -> None:
    # 84912345678 is 8 (the trunk prefix) and a Ryazan landline: no SMS reaches it
    err = refusal("84912345678")
    assert "fixed-line number cannot receive SMS" in err.reason
    # and the caller learns what the same digits with a + would be
    assert "+84912345678" in err.reason and "VN" in err.reason


def test_a_vietnamese_mobile_needs_vn_allowed() -> None:
    err = refusal("+84912345678")
    assert "a number in VN" in err.reason and "phones.allowed_regions allows RU" in err.reason
    message = validate(settings("RU", "VN"), to="+84912345678", text="x", now=NOW)
    assert (message.to, message.region) == ("84912345678", "VN")


def test_a_kazakh_plus_7_number_is_kazakh() -> None:
    err = refusal("+7 701 123 45 67")
    assert "a number in KZ" in err.reason and "allows RU" in err.reason
    assert read_phone("+7 701 123 45 67", allowed_regions=("KZ",)) == Phone("77011234567", "KZ", "mobile")
    # also written with the trunk prefix 8, as Kazakhstan shares it; "*" allows any region
    assert refusal("87011234567").reason.startswith("a number in KZ")
    assert validate(settings("*"), to="87011234567", text="x", now=NOW).region == "KZ"


def test_plus_8_is_no_country() -> None:
    err = refusal("+8 916 123 45 67")
    assert "no country has the calling code" in err.reason and "+8 916 123 45 67" in err.reason


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("8 800 200-06-00", "toll-free"),
        ("+7 800 200-06-00", "toll-free"),
        ("8 809 123-45-67", "premium-rate"),
        ("+7 495 123-45-67", "fixed-line"),
        ("84912345678", "fixed-line"),
    ],
)
def test_numbers_that_cannot_receive_sms_are_refused_saying_which_kind(raw: str, kind: str) -> None:
    err = refusal(raw)
    assert f"a {kind} number" in err.reason and "cannot receive SMS" in err.reason


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("70001234567", "not a valid number in RU"),  # no operator has +7 000
        ("+7 916 12", "too short"),
        ("916123456", "not a valid number in RU"),
        ("7916abc4567", "only digits"),
        ("٧٩١٦١٢٣٤٥٦٧", "only digits"),  # Arabic-Indic digits
        ("７９１６１２３４５６７", "only digits"),  # fullwidth digits
        ("+7 916 123 45 67 ext 1", "only digits"),
        ("7916\x001234567", "only digits"),
        ("", "empty"),
        ("   ", "empty"),
        (True, "expected a phone number"),
        (None, "expected a phone number"),
        (7.9161234567e10, "expected a phone number"),
        (-79161234567, "expected a phone number"),
        ("+7" + " " * 50 + "9161234567", "more than 40"),
    ],
)
def test_what_is_no_number_is_refused_with_the_reason(raw: Any, why: str) -> None:
    assert why in refusal(raw).reason


def test_foreign_numbers_pass_where_allowed_and_stay_refused_when_not_mobile() -> None:
    anywhere = settings("*")
    # A US number may be a landline or a mobile (libphonenumber cannot tell): taken
    us = validate(anywhere, to="+1 202 555 0123", text="x", now=NOW)
    assert (us.to, us.region) == ("12025550123", "US")
    assert read_phone("+1 202 555 0123", allowed_regions=("*",)).kind == "fixed_line_or_mobile"
    # A Kyiv landline is refused though every region is allowed
    assert "fixed-line number cannot receive SMS" in refusal("+380 44 123 4567", anywhere).reason
    # Digits without + that are no Russian number are read as international
    assert validate(anywhere, to="380501234567", text="x", now=NOW).region == "UA"


def test_normalize_phone_keeps_its_contract() -> None:
    assert normalize_phone("+7 (916) 123-45-67") == "79161234567"
    with pytest.raises(ValidationError) as info:
        normalize_phone("+77011234567", "row 3: to")
    assert info.value.field == "row 3: to"


def test_stored_digits_read_back_the_same() -> None:
    # The ledger keeps E.164 digits without "+": with the "+" put back they read the same
    anywhere = settings("*")
    for raw in ["+7 916 123-45-67", "89161234567", "+84912345678", "+1 202 555 0123", "+380 50 123 4567"]:
        first = validate(anywhere, to=raw, text="x", now=NOW)
        again = validate(anywhere, to="+" + first.to, text="x", now=NOW)
        assert (again.to, again.region) == (first.to, first.region)


def test_simulator_test_numbers_are_mobile() -> None:
    # The numbers tests and the demo send to must pass intake to reach a provider
    from dispatcher.simulator.base import INVALID_PREFIX, SILENT_SUFFIX, UNDELIVERED_SUFFIX

    assert "79000001234".startswith(INVALID_PREFIX)
    for digits in ["79000001234", "79000000000", "7916123" + UNDELIVERED_SUFFIX, "7926123" + SILENT_SUFFIX]:
        number = phonenumbers.parse("+" + digits)
        assert phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.MOBILE, digits
