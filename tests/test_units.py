"""Pure functions: the status order, segment counting, the providers document."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.providers.base import parse_amount
from dispatcher.providers.docs import render
from dispatcher.segments import count_parts, encoding
from dispatcher.status import FINAL, Status, can_transition


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        (Status.QUEUED, Status.SENDING, True),
        (Status.SENDING, Status.ACCEPTED, True),
        (Status.ACCEPTED, Status.SENT, True),
        (Status.SENT, Status.DELIVERED, True),
        (Status.ACCEPTED, Status.DELIVERED, True),
        (Status.SENT, Status.ACCEPTED, False),  # a late reply does not move backwards
        (Status.SENDING, Status.QUEUED, True),  # back in the queue after a failed try
        (Status.UNKNOWN, Status.QUEUED, True),  # an operator's retry
        (Status.ACCEPTED, Status.QUEUED, False),
        (Status.SCHEDULED, Status.QUEUED, True),
        (Status.QUEUED, Status.QUEUED, False),
    ],
)
def test_transitions(current: Status, new: Status, allowed: bool) -> None:
    assert can_transition(current, new) is allowed


@pytest.mark.parametrize("final", sorted(FINAL))
def test_final_statuses_never_change(final: Status) -> None:
    assert not any(can_transition(final, other) for other in Status)


@pytest.mark.parametrize(
    ("text", "parts", "enc"),
    [
        ("", 0, "gsm7"),
        ("a" * 160, 1, "gsm7"),
        ("a" * 161, 2, "gsm7"),
        ("a" * 306, 2, "gsm7"),
        ("a" * 307, 3, "gsm7"),
        ("€" * 80, 1, "gsm7"),  # extension characters take two septets
        ("€" * 81, 2, "gsm7"),
        ("Я" * 70, 1, "ucs2"),
        ("Я" * 71, 2, "ucs2"),
        ("Я" * 134, 2, "ucs2"),
        ("Я" * 135, 3, "ucs2"),
        ("🔑" * 35, 1, "ucs2"),  # a surrogate pair is two units
        ("🔑" * 36, 2, "ucs2"),
    ],
)
def test_segments(text: str, parts: int, enc: str) -> None:
    assert count_parts(text) == parts
    assert encoding(text) == enc


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("77212,0000", 77212.0),
        ("12.50", 12.5),
        (7464, 7464.0),
        ("1,234.50", 1234.5),
        ("", None),
        ("n/a", None),
    ],
)
def test_parse_amount(raw: object, amount: float | None) -> None:
    assert parse_amount(raw) == amount


def test_providers_document_is_rendered_from_code() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    assert committed == render(), "run: python -m dispatcher.providers.docs > docs/providers.md"
