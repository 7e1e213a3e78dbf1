"""Part counting at its edges (3GPP TS 23.038 / 23.040): an escape pair (``€``, ``[``,
``{``...) or a surrogate pair (an emoji) is never split across two parts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dispatcher.config import Settings
from dispatcher.errors import ValidationError
from dispatcher.segments import MAX_PARTS, count_parts, encoding
from dispatcher.simulator.base import SimState
from dispatcher.validation import validate

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "parts", "enc"),
    [
        # GSM-7 alone: 160 septets.
        ("a" * 160, 1, "gsm7"),
        ("a" * 161, 2, "gsm7"),
        ("a" * 158 + "€", 1, "gsm7"),  # 160 septets
        ("a" * 159 + "€", 2, "gsm7"),  # 161
        # Concatenated: 153 septets a part.
        ("a" * 306, 2, "gsm7"),
        ("a" * 307, 3, "gsm7"),
        ("a" * 459, 3, "gsm7"),
        ("a" * 460, 4, "gsm7"),
        # An escape pair at the 153 boundary: it fits whole, or opens the next part.
        ("a" * 151 + "€" + "a" * 153, 2, "gsm7"),  # 151+2 | 153
        ("a" * 152 + "€" + "a" * 152, 3, "gsm7"),  # the case: 152 | 2+151 | 1
        ("a" * 152 + "[" + "a" * 152, 3, "gsm7"),
        ("a" * 152 + "{" + "a" * 7, 2, "gsm7"),  # 161 septets: 152 | 2+7
        ("a" * 152 + "€" + "a" * 151, 2, "gsm7"),  # 152 | 2+151
        ("a" * 305 + "€", 3, "gsm7"),  # 153 | 152, then the pair does not fit: | 2
        ("a" * 304 + "€", 2, "gsm7"),  # 153 | 151+2
        ("€" * 80, 1, "gsm7"),  # 160 septets
        ("€" * 81, 2, "gsm7"),
        ("€" * 152, 2, "gsm7"),  # 76 pairs a part: 152 septets each
        ("€" * 153, 3, "gsm7"),
        ("€" * 760, 10, "gsm7"),
        ("€" * 765, 11, "gsm7"),  # the case: 1530 septets, 76 pairs a part
        # UCS-2 alone: 70 code units.
        ("Я" * 70, 1, "ucs2"),
        ("Я" * 71, 2, "ucs2"),
        ("Я" * 68 + "😀", 1, "ucs2"),  # 70 units
        ("Я" * 69 + "😀", 2, "ucs2"),  # 71
        # Concatenated: 67 code units a part; an emoji at the 67 boundary.
        ("Я" * 134, 2, "ucs2"),
        ("Я" * 135, 3, "ucs2"),
        ("Я" * 65 + "😀" + "Я" * 67, 2, "ucs2"),  # 65+2 | 67
        ("Я" * 66 + "😀" + "Я" * 66, 3, "ucs2"),  # 66 | 2+65 | 1
        ("Я" * 66 + "😀" + "Я" * 3, 2, "ucs2"),  # 71 units: 66 | 2+3
        ("😀" * 35, 1, "ucs2"),  # 70 units
        ("😀" * 36, 2, "ucs2"),
        ("😀" * 67, 3, "ucs2"),  # 33 emoji a part: 66 units each, 33+33+1
        ("😀" * 66, 2, "ucs2"),
        ("😀" * 330, 10, "ucs2"),
        ("😀" * 331, 11, "ucs2"),
        # An empty text is no part; an emoji forces UCS-2 for the whole text.
        ("", 0, "gsm7"),
        ("a" * 100 + "😀", 2, "ucs2"),
    ],
)
def test_parts_at_the_edges(text: str, parts: int, enc: str) -> None:
    assert encoding(text) == enc
    assert count_parts(text) == parts


def test_what_intake_stores_is_what_the_simulated_provider_bills() -> None:
    # Given a text whose escape pair sits on a part boundary
    text = "a" * 152 + "€" + "a" * 152
    # When intake takes it and a simulated provider bills it
    stored = validate(Settings(), to="79161234567", text=text, now=NOW)
    state = SimState("smstele", "demo", "secret")
    charged = state.charge(text)
    # Then both count 3 parts
    assert charged is not None
    assert stored.parts == charged[0] == 3
    assert charged[1] == 3 * state.account.price


@pytest.mark.parametrize(
    ("text", "unit"),
    [("€" * 765, "153 GSM-7 septets"), ("😀" * 331, "67 UCS-2 code units")],
)
def test_more_parts_than_the_limit_are_refused_naming_what_a_part_carries(text: str, unit: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate(Settings(), to="79161234567", text=text, now=NOW, prefix="messages[3].")
    assert info.value.field == "messages[3].text"
    assert info.value.reason.startswith(f"11 SMS parts ({unit} each")
    assert f"more than the limit of {MAX_PARTS}" in info.value.reason
