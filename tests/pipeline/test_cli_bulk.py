"""`smsdispatch bulk`: a file is stored whole or not at all, and every refusal names
the file's own line (issue 12, item 2). Run as a user runs it, against a real ledger."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from dispatcher import db, ledger
from tests.support import Stack, run_cli

LINES = 10_000


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack.config_path, *args)


def stored() -> int:
    with db.session_scope() as s:
        return sum(ledger.count_by_status(s).values())


def big_file(path: Path, odd_line: int | None = None) -> Path:
    """LINES messages after a header; ``odd_line`` (a line of the file) gets another text."""
    rows = ["to,text,key"]
    for n in range(LINES):
        line = n + 2  # the header is line 1
        text = "другой текст" if line == odd_line else f"Рассылка, сообщение {n}"
        rows.append(f'7916{1_000_000 + n:07d},"{text}",key-{n}')
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_ten_thousand_lines_all_or_nothing(any_stack: Stack, tmp_path: Path) -> None:
    """A key at line 9,000 already used for a different message: nothing of the file is
    stored (the old command had committed 8,500) and the error names line 9,000."""
    stack = any_stack
    stack.configure(providers=["prostor"])
    first = cli(stack, "send", "--to", "79161008998", "--text", "Рассылка, сообщение 8998", "--key",
                "key-8998", "--json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    earlier = json.loads(first.stdout)["id"]

    conflicting = big_file(tmp_path / "conflict.csv", odd_line=9000)
    result = cli(stack, "bulk", str(conflicting))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"smsdispatch: invalid {conflicting}: line 9000: key: already used")
    assert stored() == 1

    # The same file without the odd line: all 10,000 in one go, the line that repeats
    # the stored message answering with its id; the bar only because --progress asks.
    good = big_file(tmp_path / "good.csv")
    started = time.monotonic()
    result = cli(stack, "bulk", str(good), "--json", "--progress")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    ids = json.loads(result.stdout)["ids"]
    assert len(ids) == LINES and len(set(ids)) == LINES and ids[8998] == earlier
    assert stored() == LINES
    assert "checked [##############################] 10000/10000" in result.stderr
    assert "storing 10000 messages in one transaction" in result.stderr
    assert took < 60, f"{took:.1f}s for {LINES} lines"
    # No worker ran: the 10,000 published tasks would only reach a later test's workers.
    stack.redis.delete("sms.bulk", "sms.high")


def test_errors_name_the_line_of_the_file(stack: Stack, tmp_path: Path) -> None:
    """Line numbers count the header, blank lines and the lines inside a quoted text,
    as an editor shows them; a key reused in the file names both lines."""
    stack.configure(providers=["prostor"])
    path = tmp_path / "load.csv"
    path.write_text(
        'to,text,key\n79161234567,"a text\nover two lines",a\n\n79161234568,fine,b\n12345,bad,c\n',
        encoding="utf-8",
    )
    result = cli(stack, "bulk", str(path))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"smsdispatch: invalid {path}: line 6: to: "), lines

    path.write_text(
        "to,text,key\n79161234567,first,a\n79161234568,second,b\n79161234569,third,a\n", encoding="utf-8"
    )
    result = cli(stack, "bulk", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"smsdispatch: invalid {path}: line 4: key: 'a' is used on line 2 for a different message\n"
    )

    path.write_text("to,text\n79161234567,one, two\n", encoding="utf-8")
    result = cli(stack, "bulk", str(path))
    assert result.returncode == 2
    assert "line 2: 3 fields but the header has 2" in result.stderr
    assert stored() == 0


def test_bom_and_quiet_without_a_terminal(stack: Stack, tmp_path: Path) -> None:
    """UTF-8 with a BOM (Excel's "CSV UTF-8") is read; with stderr not a terminal and no
    --progress, a good run writes nothing there; an empty file is refused."""
    stack.configure(providers=["prostor"])
    path = tmp_path / "bom.csv"
    path.write_bytes("to,text\r\n+7 916 123-45-67,Привет\r\n".encode("utf-8-sig"))
    result = cli(stack, "bulk", str(path), "--json")
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["count"] == 1

    empty = tmp_path / "empty.csv"
    empty.write_text("\n", encoding="utf-8")
    result = cli(stack, "bulk", str(empty))
    assert result.returncode == 2
    assert (
        result.stderr == f"smsdispatch: invalid {empty}: empty file (expected a header line: to,text,...)\n"
    )


def test_a_file_run_again_with_its_key_is_stored_once(stack: Stack, tmp_path: Path) -> None:
    """A run whose reply was lost (the commit went through, the exit said otherwise) is
    run again with the same --key: the same ids, nothing stored twice; the key with
    another file is refused."""
    stack.configure(providers=["prostor"])
    path = tmp_path / "news.csv"
    path.write_text("to,text\n79161234567,один\n79161234568,два\n", encoding="utf-8")
    first = cli(stack, "bulk", str(path), "--key", "news-2026-12-01", "--json")
    assert first.returncode == 0, first.stderr
    again = cli(stack, "bulk", str(path), "--key", "news-2026-12-01", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ids"] == json.loads(first.stdout)["ids"]
    assert stored() == 2
    path.write_text("to,text\n79161234567,один\n79161234568,два\n79161234569,три\n", encoding="utf-8")
    other = cli(stack, "bulk", str(path), "--key", "news-2026-12-01")
    assert other.returncode == 2 and "Idempotency-Key" in other.stderr, other.stderr
    assert stored() == 2
