"""Every error rule of every kind points at the line of its provider's document that
names its code, so the table in docs/providers.md can be checked by reading it."""

from __future__ import annotations

import re

import pytest

from dispatcher.providers import adapter_class
from tests.conftest import FIXTURES, KINDS

DOCUMENTS = FIXTURES / "documents"
CASES = [(kind, code) for kind in KINDS for code in adapter_class(kind).ERRORS]


@pytest.mark.parametrize(("kind", "code"), CASES, ids=[f"{k}:{c}" for k, c in CASES])
def test_error_rule_points_at_its_line(kind: str, code: str) -> None:
    rule = adapter_class(kind).ERRORS[code]
    found = re.match(r"([\w.-]+\.md):(\d+)", rule.doc)
    assert found, f"{kind} {code}: doc {rule.doc!r} is not file.md:LINE"
    name, line = found.group(1), int(found.group(2))
    assert name == adapter_class(kind).DOC
    lines = (DOCUMENTS / name).read_text(encoding="utf-8").splitlines()
    assert 1 <= line <= len(lines), f"{kind} {code}: {name} has {len(lines)} lines"
    if "(" in rule.doc:
        return  # the rule says where the code comes from beyond the line: e.g. "(REST vocabulary)"
    assert code.lower() in lines[line - 1].lower(), f"{kind} {code}: {name}:{line} is {lines[line - 1]!r}"
