"""Reading a recipient's number with libphonenumber's metadata (``phonenumberslite``).

Digit counting cannot tell a mobile from a landline or a toll-free line, nor Kazakhstan
from Russia (both are +7): the metadata can. A number is read in ``default_region``
unless it starts with ``+``, must belong to one of ``allowed_regions`` ("*": any), and
must be of a kind that can receive an SMS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber, PhoneNumberType, ValidationResult

from dispatcher.errors import ValidationError

MAX_INPUT = 40  # characters: the longest E.164 number is 15 digits, the rest is spacing
# What people put between digits; anything else (letters, #, *, an extension) is refused.
_SPACING = re.compile(r"[ \t()\-.]")
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() also takes Arabic-Indic and other digits

# Where libphonenumber cannot tell a mobile from a landline (the US, Canada and a few
# others share one numbering range for both), the number is given the benefit of the doubt.
SMS_KINDS = {PhoneNumberType.MOBILE: "mobile", PhoneNumberType.FIXED_LINE_OR_MOBILE: "fixed_line_or_mobile"}

# Why each other kind cannot take an SMS: none of them ends at a handset on a mobile
# network, so the provider either refuses it or bills a message that never arrives.
_NOT_SMS = {
    PhoneNumberType.FIXED_LINE: "a fixed-line number cannot receive SMS",
    PhoneNumberType.TOLL_FREE: "a toll-free number (such as 8-800) is a voice line and cannot receive SMS",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number is a paid voice service and cannot receive SMS",
    PhoneNumberType.SHARED_COST: "a shared-cost number is a voice service and cannot receive SMS",
    PhoneNumberType.VOIP: "a VoIP number has no SIM on a mobile network and cannot receive SMS",
    PhoneNumberType.PAGER: "a pager number cannot receive SMS",
    PhoneNumberType.UAN: "a universal access number routes to a company's switchboard and cannot receive SMS",
    PhoneNumberType.VOICEMAIL: "a voicemail access number cannot receive SMS",
    PhoneNumberType.PERSONAL_NUMBER: (
        "a personal number forwards calls to a line of unknown kind and cannot receive SMS"
    ),
}

_LENGTH = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "no number there has that many digits",
}


@dataclass(frozen=True)
class Phone:
    """A number that can receive an SMS."""

    digits: str  # E.164 without the "+": 79161234567
    region: str  # ISO 3166 two-letter code (RU, KZ), or "001" for a non-geographic number
    kind: str  # "mobile" or "fixed_line_or_mobile" (see SMS_KINDS)


def _parse(text: str, region: str | None) -> PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def _valid(number: PhoneNumber | None) -> bool:
    return number is not None and phonenumbers.is_valid_number(number)


def _why_invalid(readings: Sequence[PhoneNumber | None]) -> str:
    """The length problem of the first reading, or: the length is right but no
    operator has numbers there (+7 000 ...)."""
    found = [phonenumbers.is_possible_number_with_reason(n) for n in readings if n is not None]
    if ValidationResult.IS_POSSIBLE in found:
        return " (no such number range)"
    return f" ({_LENGTH[found[0]]})" if found and found[0] in _LENGTH else ""


def _country(number: PhoneNumber) -> str:
    """The main region of the number's calling code (RU for +7), ZZ for none."""
    return phonenumbers.region_code_for_country_code(number.country_code or 0)


def _region_of(number: PhoneNumber) -> str:
    return phonenumbers.region_code_for_number(number) or _country(number)


def _allows(allowed_regions: Sequence[str], region: str) -> bool:
    return "*" in allowed_regions or region in allowed_regions


def read_phone(
    value: Any,
    field: str = "to",
    *,
    default_region: str = "RU",
    allowed_regions: Sequence[str] = ("RU",),
) -> Phone:
    """Read ``value`` as a number that can receive an SMS, or raise ``ValidationError``
    naming ``field``.

    ``+7 916 123-45-67``, ``89161234567``, ``9161234567`` and ``79161234567`` (RU as the
    default region) all become ``Phone("79161234567", "RU", "mobile")``. A number without
    ``+`` is read in ``default_region`` first (where 8 is the trunk prefix and 7 the
    country code); only if it is no number there is it read as international, so
    ``380501234567`` is Ukrainian while ``84912345678`` stays a landline in Ryazan.
    """
    if not isinstance(value, str | int) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValidationError(field, "expected a phone number as a string")
    if isinstance(value, int) and value.bit_length() > 64:  # str() of a huge int raises
        raise ValidationError(field, f"a {value.bit_length()}-bit integer is no phone number")
    raw = str(value).strip()
    if not raw:
        raise ValidationError(field, "empty phone number")
    if len(raw) > MAX_INPUT:
        raise ValidationError(field, f"{len(raw)} characters, more than {MAX_INPUT} for a phone number")
    plus = raw.startswith("+")
    digits = _SPACING.sub("", raw[1:] if plus else raw)
    if not _DIGITS.fullmatch(digits):
        raise ValidationError(field, f"only digits, spaces, ()-. and a leading + are allowed: {raw!r}")

    readings: list[PhoneNumber | None]
    if plus:
        number = _parse("+" + digits, None)
        readings = [number]
        if number is None or _country(number) == "ZZ":
            home = phonenumbers.country_code_for_region(default_region)
            raise ValidationError(
                field,
                f"no country has the calling code this number starts with: {raw!r}"
                f" ({default_region} is +{home})",
            )
        where = _country(number)
    else:
        number = _parse(digits, default_region)
        where = default_region
        readings = [number, _parse("+" + digits, None)]
        if not _valid(number) and _valid(readings[1]):
            number = readings[1]
    if number is None or not _valid(number):
        raise ValidationError(field, f"not a valid number in {where}: {raw!r}{_why_invalid(readings)}")

    region = _region_of(number)
    if not _allows(allowed_regions, region):
        raise ValidationError(
            field,
            f"a number in {region} (+{number.country_code}): {raw!r}; "
            f"phones.allowed_regions allows {', '.join(allowed_regions)}",
        )
    kind = phonenumbers.number_type(number)
    if kind not in SMS_KINDS:
        reason = _NOT_SMS.get(kind, "a number of no known kind cannot be relied on to receive SMS")
        hint = ""
        if not plus:
            # 84912345678 is a landline in Ryazan and +84912345678 a mobile in Vietnam: a
            # guess between them could text a stranger, so the caller is told instead.
            other = _parse("+" + digits, None)
            if _valid(other) and other is not None and phonenumbers.number_type(other) in SMS_KINDS:
                hint = f"; written +{digits} it would be a number in {_region_of(other)}"
        raise ValidationError(field, f"{raw!r} read in {region}: {reason}{hint}")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return Phone(digits=e164[1:], region=region, kind=SMS_KINDS[kind])
