"""The ``smsdispatch`` command.

Exit codes: 0 done; 1 the command ran but something it reports failed (a provider
error, a lost message); 2 bad usage or input; 3 bad configuration; 4 a service we
need (broker, database, provider) is unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from dispatcher import config as config_mod
from dispatcher.errors import ConfigError, ProviderError, ValidationError
from dispatcher.ops import doctor_checks, provider_rows
from dispatcher.redact import install_log_redaction, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str) -> Callable[[Callable[[argparse.ArgumentParser], None]], Any]:
    """Register ``run_<name>`` with the argument builder it decorates."""

    def register(build: Callable[[argparse.ArgumentParser], None]) -> Any:
        runner = globals()[f"run_{name.replace('-', '_')}"]
        COMMANDS[name] = (runner, build, help)
        return build

    return register


def emit(args: argparse.Namespace, data: Any, table: Callable[[], str]) -> None:
    """Print ``data`` as JSON under --json, else the human table."""
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        print(table())


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# -- balance ------------------------------------------------------------------------


def run_balance(args: argparse.Namespace) -> int:
    from dispatcher.providers import make_provider

    settings = config_mod.get_settings()
    rows: list[dict[str, Any]] = []
    failed = False
    for pc in settings.providers:
        row: dict[str, Any] = {
            "provider": pc.name,
            "kind": pc.kind,
            "balance": None,
            "currency": None,
            "error": None,
        }
        provider = make_provider(pc)
        try:
            balance = provider.balance()
            row["balance"], row["currency"] = balance.amount, balance.currency
        except NotImplementedError as exc:
            row["error"] = str(exc)  # not a failure: the provider has no such call
        except ProviderError as exc:
            row["error"] = f"{exc.action.value}: {exc}"
            failed = True
        finally:
            provider.close()
        rows.append(row)

    def table() -> str:
        return render_table(
            ["provider", "kind", "balance", "currency", "error"],
            [
                [
                    r["provider"],
                    r["kind"],
                    "" if r["balance"] is None else f"{r['balance']:.2f}",
                    r["currency"],
                    r["error"],
                ]
                for r in rows
            ],
        )

    emit(args, rows, table)
    return EXIT_FAILED if failed else EXIT_OK


@command("balance", "read the balance of every configured provider instance")
def _balance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list")


# -- providers ------------------------------------------------------------------------


def run_providers(args: argparse.Namespace) -> int:
    rows = provider_rows(config_mod.get_settings())

    def table() -> str:
        return render_table(
            ["provider", "kind", "prio", "on", "breaker", "rate/s", "balance", "24h sent", "parts", "cost",
             "polls due (lag)", "status/s", "1st poll", "attention / last error"],
            [[r["provider"], r["kind"], r["priority"], "yes" if r["enabled"] else "no",
              r["breaker"] + (f" ({r['breaker_retry_in']:.0f}s)" if r["breaker"] == "open" else ""),
              r["rate_limit"] or "-",
              "" if r["balance"] is None else f"{r['balance']:.2f} {r['currency'] or ''}".strip()
              + (f" +{r['credit']:.2f} credit" if r["credit"] else ""),
              r["sent_24h"], r["parts_24h"], "" if r["cost_24h"] is None else f"{r['cost_24h']:.2f}",
              f"{r['polls_due']} ({r['poll_lag_s']:.0f}s)",
              "-" if r["status_calls_per_s"] is None else f"{r['status_calls_per_s']:.1f}",
              "-" if r["first_poll_s"] is None else f"{r['first_poll_s']:g}s",
              ("ATTENTION " + r["attention"] if r["attention"] else r["last_error"] or "")[:100]]
             for r in rows],
        )  # fmt: skip

    emit(args, rows, table)
    return EXIT_OK


@command(
    "providers", "provider instances: priority, circuit breaker, rate limit, balance, polling, last error"
)
def _providers_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


# -- api ------------------------------------------------------------------------------


def run_api(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from dispatcher.http_api import create_app
    except ImportError:
        print("smsdispatch: the HTTP API needs its extra: pip install 'smsdispatch[api]'", file=sys.stderr)
        return EXIT_USAGE
    settings = config_mod.get_settings()
    app = create_app(settings)
    # Behind a proxy that terminates TLS, the console's origin check and its Secure
    # cookies need the scheme and client address the proxy forwards; uvicorn trusts
    # those headers only from these addresses (its default: 127.0.0.1, or the
    # FORWARDED_ALLOW_IPS environment variable).
    uvicorn.run(
        app, host=args.host or settings.api.host, port=args.port or settings.api.port, log_level="warning",
        proxy_headers=True, forwarded_allow_ips=args.forwarded_allow_ips,
    )  # fmt: skip
    return EXIT_OK


@command("api", "run the HTTP intake API (needs api.token in the config)")
def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated addresses (or *) of the reverse proxies whose X-Forwarded-Proto and"
        " X-Forwarded-For to trust (default: 127.0.0.1, or $FORWARDED_ALLOW_IPS)",
    )


# -- doctor -------------------------------------------------------------------------


def run_doctor(args: argparse.Namespace) -> int:
    settings = config_mod.get_settings()
    checks = doctor_checks(settings)
    emit(args, checks, lambda: render_table(
        ["check", "ok", "detail"], [[c["check"], "ok" if c["ok"] else "FAIL", c["detail"]] for c in checks]
    ))  # fmt: skip
    return EXIT_OK if all(c["ok"] for c in checks) else EXIT_FAILED


@command("doctor", "check config, database, broker, workers and every provider, and say what is wrong")
def _doctor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


# -- simulator ----------------------------------------------------------------------


def _parse_assignments(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError(what, f"expected KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def run_simulator(args: argparse.Namespace) -> int:
    from dispatcher.simulator.core import Simulator

    sim = Simulator(host=args.host, base_port=args.base_port)
    for spec in args.fault or []:
        kind, sep, rest = spec.partition(":")
        if not sep or kind not in sim.servers:
            raise ValidationError("--fault", f"expected KIND:KEY=VALUE with KIND in {', '.join(sim.servers)}")
        try:
            sim[kind].state.faults.update(_parse_assignments(rest.split(","), "--fault"))
        except KeyError as exc:
            raise ValidationError("--fault", f"unknown fault {exc}") from None
    for key, value in _parse_assignments(args.timing or [], "--timing").items():
        for server in sim.servers.values():
            if not hasattr(server.state.timing, key):
                raise ValidationError("--timing", f"unknown timing {key!r} (sent_after, final_after)")
            try:
                setattr(server.state.timing, key, float(value))
            except ValueError:
                raise ValidationError(f"--timing {key}", f"not a number of seconds: {value!r}") from None
    sim.start()
    for kind, server in sim.servers.items():
        print(f"{kind:8} {server.base_url}")
    if args.write_config:
        with open(args.write_config, "w", encoding="utf-8") as fh:
            fh.write(sim.config_toml())
        print(f"config written to {args.write_config}")
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait(args.duration if args.duration else None)
    sim.stop()
    return EXIT_OK


@command("simulator", "run the provider simulator (five HTTP servers on loopback)")
def _simulator_args(p: argparse.ArgumentParser) -> None:
    from dispatcher.simulator import defaults

    p.add_argument("--host", default=defaults.HOST)
    p.add_argument(
        "--base-port", type=int, default=defaults.BASE_PORT, help="kinds listen on base+1..base+5; 0 = any"
    )
    p.add_argument("--write-config", metavar="PATH", help="write a ready smsdispatch.toml for these servers")
    p.add_argument(
        "--fault", action="append", metavar="KIND:KEY=VALUE[,KEY=VALUE]", help="a fault from the start"
    )
    p.add_argument("--timing", action="append", metavar="KEY=VALUE", help="sent_after / final_after seconds")
    p.add_argument(
        "--duration", type=float, default=0, help="stop after this many seconds (0: until stopped)"
    )


def run_fault(args: argparse.Namespace) -> int:
    import requests

    settings = config_mod.get_settings()
    targets = [p for p in settings.providers if args.target in (p.name, p.kind)]
    if not targets:
        raise ValidationError("target", f"no provider instance or kind {args.target!r} in {settings.source}")
    body: dict[str, Any] = {} if args.reset else _parse_assignments(args.settings, "settings")
    path = "reset" if args.reset else "faults"
    results = []
    for pc in targets:
        parts = urlsplit(pc.base_url)
        url = f"{parts.scheme}://{parts.netloc}/_sim/{path}"
        try:
            reply = requests.post(url, json=body, timeout=5)
        except requests.RequestException as exc:
            print(f"{pc.name}: simulator unreachable: {redact(str(exc))}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if reply.status_code != 200:
            print(f"{pc.name}: {reply.text}", file=sys.stderr)
            return EXIT_USAGE
        results.append({"provider": pc.name, "state": reply.json()})
    emit(args, results, lambda: "\n".join(f"{r['provider']}: {r['state']}" for r in results))
    return EXIT_OK


@command("fault", "change a running simulator's faults (latency_ms, error_rate, http500_rate, hang, ...)")
def _fault_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a provider instance name or kind from the config")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--reset", action="store_true", help="clear faults, messages and counters")
    p.add_argument("--json", action="store_true")


# -- send, status, db -------------------------------------------------------------------


def run_send(args: argparse.Namespace) -> int:
    from dispatcher.api import get_message, send_sms

    message_id = send_sms(
        args.to, args.text, sender=args.sender, key=args.key, provider=args.provider, priority=args.priority
    )
    message = get_message(message_id) or {}
    emit(args, {"id": message_id, "status": message.get("status")}, lambda: message_id)
    return EXIT_OK


@command("send", "queue one SMS and print its id")
def _send_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, help="the phone number: +7 916 123-45-67, 89161234567, ...")
    p.add_argument("--text", required=True)
    p.add_argument("--sender")
    p.add_argument("--key", help="idempotency key: the same key returns the same message")
    p.add_argument("--provider", help="pin one provider instance")
    p.add_argument("--priority", choices=["high", "normal"], default="normal")
    p.add_argument("--json", action="store_true", help="print an object with id and status")


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def run_status(args: argparse.Namespace) -> int:
    from dispatcher.api import get_message

    message = get_message(args.id)
    if message is None:
        print(f"smsdispatch: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    data = {k: _iso(v) for k, v in message.items() if k not in ("attempts", "events")}
    data["attempts"] = [{k: _iso(v) for k, v in a.items()} for a in message["attempts"]]
    data["events"] = [{k: _iso(v) for k, v in e.items()} for e in message["events"]]

    def human() -> str:
        lines = [
            f"{data['id']}  {data['status']}  to {data['to']}  via {data['provider'] or '-'}"
            f"  provider id {data['provider_message_id'] or '-'}",
            f"text: {data['text']}",
            "",
            render_table(
                ["at", "from", "to", "source", "provider", "raw", "detail"],
                [[e[k] for k in ("at", "old_status", "new_status", "source", "provider", "raw", "detail")]
                 for e in data["events"]],
            ),
        ]  # fmt: skip
        if data["attempts"]:
            lines += [
                "",
                render_table(
                    ["started", "provider", "outcome", "http", "code", "ms", "parts", "cost"],
                    [[a["started_at"], a["provider"], a["outcome"], a["http_status"], a["provider_code"],
                      f"{a['duration_ms']:.0f}" if a["duration_ms"] is not None else "",
                      a.get("parts") if a.get("parts") is not None else "",
                      f"{a['cost']:.2f}" if a.get("cost") is not None else ""]
                     for a in data["attempts"]],
                ),
            ]  # fmt: skip
            if data.get("cost") is not None:
                lines.append(f"cost reported by the provider: {data['cost']:.2f}")
        return "\n".join(lines)

    emit(args, data, human)
    return EXIT_OK


@command("status", "show one message with its attempts and status events")
def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("id")
    p.add_argument("--json", action="store_true")


class _Progress:
    """A one-line progress bar on stderr, for files long enough to wait for.

    Drawn only when asked (a terminal, or --progress), and only when the shown value
    changes, so a 10,000-line file writes ~100 updates, not 10,000."""

    WIDTH = 30

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.open = False  # a line without its newline yet: an error must start afresh
        self.shown: tuple[str, int] | None = None

    def update(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        filled = self.WIDTH * done // max(total, 1)
        percent = 100 * done // max(total, 1)
        if (label, percent) == self.shown and done < total:
            return
        self.shown = (label, percent)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        sys.stderr.write(f"\r{label} [{bar}] {done}/{total}")
        self.open = True
        if done >= total:
            self.end()
        sys.stderr.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            self.end()
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def end(self) -> None:
        if self.open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.open = False


class UsageError(Exception):
    """Bad input that is not one message's field: a file we cannot read. Exit 2."""


def _read_input(path: str) -> tuple[str, str]:
    """The file's name for messages and its text. UTF-8 only (a BOM is fine): a file
    in another encoding is refused rather than stored as mojibake."""
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{name}: is a directory, not a file") from None
    except PermissionError:
        raise UsageError(f"{name}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UsageError(f"{name}: UTF-16 text; save the file as UTF-8")
    try:
        return name, data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(
            f"{name}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


def _parse_csv(name: str, text: str, priority: str | None) -> list[tuple[int, dict[str, Any]]]:
    """(line number in the file, fields) per message. The line is the one the record
    starts on, counting the header and blank lines, as an editor shows it."""
    import csv
    import io

    from dispatcher.api import FIELDS

    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, Any]]] = []
    end = 0
    try:
        for record in reader:
            line, end = end + 1, reader.line_num
            # Spreadsheets leave empty rows (",,,") behind: they are not messages.
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip() for cell in record]
                for column in header:
                    if column not in FIELDS:
                        raise ValidationError(
                            f"{name}: line {line}: column {column!r}", f"unknown (known: {', '.join(FIELDS)})"
                        )
                    if header.count(column) > 1:
                        raise ValidationError(f"{name}: line {line}: column {column!r}", "given twice")
                for column in ("to", "text"):
                    if column not in header:
                        raise ValidationError(f"{name}: line {line}: header", f"no {column!r} column")
                continue
            if len(record) > len(header):
                raise ValidationError(
                    f"{name}: line {line}",
                    f"{len(record)} fields but the header has {len(header)} (quote a text with commas)",
                )
            fields: dict[str, Any] = {k: v for k, v in zip(header, record, strict=False) if v != ""}
            for column in ("to", "text"):
                if column not in fields:
                    raise ValidationError(f"{name}: line {line}: {column}", "missing")
            if "ttl" in fields:
                try:
                    fields["ttl"] = float(fields["ttl"])
                except ValueError:
                    raise ValidationError(f"{name}: line {line}: ttl", "not a number") from None
            if priority and "priority" not in fields:
                fields["priority"] = priority
            rows.append((line, fields))
    except csv.Error as exc:  # a NUL byte, a field over the csv module's size limit
        raise ValidationError(f"{name}: line {reader.line_num}", str(exc)) from None
    if header is None:
        raise ValidationError(name, "empty file (expected a header line: to,text,...)")
    return rows


_MESSAGE_INDEX = re.compile(r"messages\[(\d+)\]\.?(.*)")


def run_bulk(args: argparse.Namespace) -> int:
    """All or nothing: every line is read and checked before any is stored, and the
    whole file is stored in one transaction (api.send_validated), so an error at line
    9,000 of 10,000 leaves the ledger as it was and names line 9,000."""
    from dispatcher.api import keyed, send_validated
    from dispatcher.validation import NewMessage, validate

    progress = _Progress(args.progress or (not args.json and sys.stderr.isatty()))
    try:
        name, text = _read_input(args.file)
        rows = _parse_csv(name, text, args.priority)
        settings = config_mod.get_settings()
        # Checked here line by line, for the progress bar and the file's line numbers,
        # and stored as checked.
        first_use: dict[str, tuple[int, str]] = {}
        items: list[NewMessage] = []
        for n, ((line, _), fields) in enumerate(
            zip(rows, keyed([f for _, f in rows], args.key), strict=True), 1
        ):
            try:
                item = validate(settings, **fields)
            except ValidationError as exc:
                raise ValidationError(f"{name}: line {line}: {exc.field}", exc.reason) from None
            if item.key is not None:
                earlier = first_use.setdefault(item.key, (line, item.payload_hash()))
                if earlier[1] != item.payload_hash():
                    raise ValidationError(
                        f"{name}: line {line}: key",
                        f"{item.key!r} is used on line {earlier[0]} for a different message",
                    )
            items.append(item)
            progress.update("checked", n, len(rows))
        progress.note(f"storing {len(rows)} messages in one transaction")
        try:
            ids = send_validated(items, key=args.key)
        except ValidationError as exc:
            # The store names the n-th message (messages[n].key for a key already used by a
            # different stored message): say which line of the file that is.
            found = _MESSAGE_INDEX.fullmatch(exc.field)
            if found is None or int(found.group(1)) >= len(rows):
                raise
            line = rows[int(found.group(1))][0]
            field = f": {found.group(2)}" if found.group(2) else ""
            raise type(exc)(f"{name}: line {line}{field}", exc.reason) from None
    finally:
        progress.end()
    emit(args, {"count": len(ids), "ids": ids}, lambda: f"{len(ids)} messages queued")
    return EXIT_OK


@command(
    "bulk",
    "queue every message of a CSV file, all or none (columns: to,text and optional sender,key,at,ttl,...)",
)
def _bulk_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a UTF-8 CSV file with a header line; - reads standard input")
    p.add_argument("--priority", choices=["high", "normal"], help="for lines that name none")
    p.add_argument(
        "--key",
        help="an idempotency key for the whole file: run again after a lost reply (exit 4 at commit),"
        " it stores nothing twice; with another file it is refused",
    )
    p.add_argument(
        "--progress", action="store_true", help="a progress bar even when stderr is not a terminal"
    )
    p.add_argument("--json", action="store_true")


def run_list(args: argparse.Namespace) -> int:
    from dispatcher.api import list_messages

    rows = list_messages(args.status, args.provider, args.since, args.until, args.limit)
    data = [{k: _iso(v) for k, v in r.items()} for r in rows]
    emit(args, data, lambda: render_table(
        ["id", "to", "status", "provider", "attempts", "created"],
        [[r["id"], r["to"], r["status"], r["provider"], r["attempts"], r["created_at"]] for r in data],
    ))  # fmt: skip
    return EXIT_OK


@command("list", "list messages, newest first")
def _list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status")
    p.add_argument("--provider")
    p.add_argument("--since", help="ISO-8601 time with a zone")
    p.add_argument("--until", help="ISO-8601 time with a zone")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")


def _operator(args: argparse.Namespace, action: str) -> int:
    from dispatcher import api

    if action == "cancel":
        return _cancel(args)
    old = api.retry_message(args.id)
    message = api.get_message(args.id)
    if message is None:
        print(f"smsdispatch: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    done = old is not None
    data = {"id": args.id, "done": done, "from": old, "status": message["status"]}
    if not done:
        print(
            f"smsdispatch: cannot retry a message in {message['status']} (only failed or unknown)",
            file=sys.stderr,
        )
    emit(args, data, lambda: f"{args.id}: {old} -> {message['status']}" if done else "")
    return EXIT_OK if done else EXIT_FAILED


def _cancel(args: argparse.Namespace) -> int:
    """``cancelled``: it ends failed (or unknown, when an earlier call may have gone
    out). ``requested``: a call for it is in doubt or in flight; the send path
    settles that call first (exit 0: the cancel is recorded, and `status` shows how
    it ended)."""
    from dispatcher import api

    done = api.cancel(args.id)
    if done.outcome == "missing":
        print(f"smsdispatch: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    ok = done.outcome in ("cancelled", "requested")
    data = {"id": args.id, "done": ok, "outcome": done.outcome, "from": done.old, "status": done.status,
            "reason": done.reason}  # fmt: skip
    if not ok:
        print(f"smsdispatch: {done.reason}", file=sys.stderr)

    def line() -> str:
        if done.outcome == "requested":
            return f"{args.id}: cancel requested ({done.old}): {done.reason}"
        return f"{args.id}: {done.old} -> {done.status}" + (
            f" ({done.reason})" if done.status != "failed" else ""
        )

    emit(args, data, line if ok else lambda: "")
    return EXIT_OK if ok else EXIT_FAILED


def run_cancel(args: argparse.Namespace) -> int:
    return _operator(args, "cancel")


def run_retry(args: argparse.Namespace) -> int:
    return _operator(args, "retry")


@command("cancel", "cancel a queued or scheduled message")
def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("id")
    p.add_argument("--json", action="store_true")


@command("retry", "send a failed or unknown message again")
def _retry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("id")
    p.add_argument("--json", action="store_true")


def run_db(args: argparse.Namespace) -> int:
    from dispatcher.db import current_revision, make_engine, upgrade

    settings = config_mod.get_settings()
    engine = make_engine(settings.database_url)
    try:
        before = current_revision(engine)
        if args.action == "upgrade":
            upgrade(engine)
        data = {
            "database": engine.url.render_as_string(hide_password=True),
            "revision": current_revision(engine),
            "was": before,
        }
    finally:
        engine.dispose()
    emit(args, data, lambda: f"{data['database']}: revision {data['revision']}")
    return EXIT_OK


@command("db", "database schema: db upgrade applies the migrations, db current shows the revision")
def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["upgrade", "current"])
    p.add_argument("--json", action="store_true")


# -- clients, stop list, search, callbacks, purge (issue 13) ----------------------------


def _subcommands(p: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Subcommands under one command; without one argparse prints the usage, exit 2."""
    return p.add_subparsers(dest="action", required=True, metavar="ACTION")


# The options of `clients add` by the field names create_client reports.
_CLIENT_OPTIONS = {
    "name": "NAME", "sender": "--sender", "daily_quota": "--daily-quota", "callback_url": "--callback-url",
    "callback_task": "--callback-task", "send_window": "--send-window", "timezone": "--timezone",
}  # fmt: skip


def _client_add(args: argparse.Namespace) -> int:
    from dispatcher.clients import create_client
    from dispatcher.db import session_scope

    settings = config_mod.get_settings()
    try:
        with session_scope() as s:
            info, key, secret = create_client(
                s, args.name, senders=tuple(args.sender or ()), daily_quota=args.daily_quota,
                callback_url=args.callback_url, callback_task=args.callback_task,
                send_window=args.send_window, timezone=args.timezone,
                allow_private=settings.callbacks.allow_private,
            )  # fmt: skip
    except ValidationError as exc:
        # Said in the terms the user typed: the option, not the field behind it.
        raise type(exc)(_CLIENT_OPTIONS.get(exc.field, exc.field), exc.reason) from None

    # The only time the key and the secret are ever shown: the ledger keeps the key's
    # hash alone, and no other command prints either.
    def human() -> str:
        return "\n".join([
            f"client {info.name} created",
            f"API key:        {key}",
            f"webhook secret: {secret}",
            "Both are shown only this once: store them now (the ledger keeps only a hash of the key).",
        ])  # fmt: skip

    emit(args, {"name": info.name, "key": key, "webhook_secret": secret}, human)
    return EXIT_OK


def _client_list(args: argparse.Namespace) -> int:
    from dispatcher.clients import list_clients
    from dispatcher.db import session_scope

    with session_scope() as s:
        data = [{k: _iso(v) for k, v in c.public().items()} for c in list_clients(s)]
    emit(args, data, lambda: render_table(
        ["name", "key", "senders", "quota/day", "callback", "window", "timezone", "created", "revoked"],
        [[c["name"], c["key_prefix"] + "...", ",".join(c["senders"]), c["daily_quota"],
          c["callback_url"] or c["callback_task"], c["send_window"], c["timezone"], c["created_at"],
          c["revoked_at"]] for c in data],
    ))  # fmt: skip
    return EXIT_OK


def _client_revoke(args: argparse.Namespace) -> int:
    from dispatcher.clients import revoke_client
    from dispatcher.db import session_scope

    with session_scope() as s:
        done = revoke_client(s, args.name)
    if not done:
        raise UsageError(f"no live client {args.name!r} (none by that name, or revoked already)")
    emit(
        args, {"name": args.name, "revoked": True}, lambda: f"client {args.name} revoked: its key is refused"
    )
    return EXIT_OK


def run_clients(args: argparse.Namespace) -> int:
    actions: dict[str, Command] = {"add": _client_add, "list": _client_list, "revoke": _client_revoke}
    return actions[args.action](args)


@command("clients", "apps with their own API keys: clients add | list | revoke")
def _clients_args(p: argparse.ArgumentParser) -> None:
    sub = _subcommands(p)
    add = sub.add_parser(
        "add", help="a new client; prints its API key and webhook secret, shown only this once"
    )
    add.add_argument("name", metavar="NAME", help="1-64 letters, digits, '_', '.' or '-'")
    add.add_argument("--sender", action="append", metavar="S", help="a sender it may use (repeat for more)")
    add.add_argument("--daily-quota", type=int, metavar="N", help="messages per day (policy.timezone's day)")
    add.add_argument("--callback-url", metavar="URL", help="its status callbacks: a signed POST here")
    add.add_argument("--callback-task", metavar="NAME", help="its status callbacks: this Celery task")
    add.add_argument(
        "--send-window",
        metavar="HH:MM-HH:MM",
        help="when its normal-priority messages may go out (local time)",
    )
    add.add_argument("--timezone", metavar="TZ", help="of its send window (IANA, e.g. Europe/Moscow)")
    add.add_argument("--json", action="store_true", help="print an object with name, key and webhook_secret")
    listing = sub.add_parser("list", help="every client, never its key or secret")
    listing.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="refuse the client's key from now on")
    revoke.add_argument("name", metavar="NAME")
    revoke.add_argument("--json", action="store_true")


def _phone(value: str) -> str:
    from dispatcher.validation import normalize_phone

    return normalize_phone(value, "PHONE", config_mod.get_settings().phones)


def _stop_add(args: argparse.Namespace) -> int:
    from dispatcher import stoplist
    from dispatcher.db import session_scope
    from dispatcher.validation import text_problem

    phone, scope = _phone(args.phone), "all" if args.all else "normal"
    if args.reason is not None:
        # Printed again by `stop list`: no terminal escapes, and a line's length.
        problem = text_problem(args.reason) or ("" if "\n" not in args.reason else "a line break")
        if problem or len(args.reason) > stoplist.MAX_REASON:
            why = problem or f"{len(args.reason)} characters, more than {stoplist.MAX_REASON}"
            raise ValidationError("--reason", why)
    with session_scope() as s:
        added = stoplist.add(s, phone, scope=scope, source="operator", reason=args.reason)
    data = {"phone": phone, "added": added, "scope": scope}
    emit(args, data, lambda: f"{phone}: " + (
        f"on the stop list ({'every message' if args.all else 'bulk and advertising'})" if added
        else f"on the stop list already (scope now {scope})"))  # fmt: skip
    return EXIT_OK


def _stop_remove(args: argparse.Namespace) -> int:
    from dispatcher import stoplist
    from dispatcher.db import session_scope

    phone = _phone(args.phone)
    with session_scope() as s:
        removed = stoplist.remove(s, phone)
    if not removed:
        raise UsageError(f"{phone} is not on the stop list")
    emit(args, {"phone": phone, "removed": True}, lambda: f"{phone}: off the stop list")
    return EXIT_OK


def _stop_list(args: argparse.Namespace) -> int:
    from dispatcher import stoplist
    from dispatcher.db import session_scope

    if not 1 <= args.limit <= 10000:
        raise ValidationError("--limit", f"from 1 to 10000, got {args.limit}")
    with session_scope() as s:
        rows = [{k: _iso(v) for k, v in e.items()} for e in stoplist.entries(s, limit=args.limit)]
        total = stoplist.count(s)

    def human() -> str:
        shown = f" (the first {len(rows)})" if len(rows) < total else ""
        table = render_table(
            ["phone", "scope", "source", "added", "reason"],
            [
                [r.get("phone"), r.get("scope"), r.get("source"), r.get("created_at"), r.get("reason")]
                for r in rows
            ],
        )
        return f"{table}\n\n{total} numbers on the stop list{shown}"

    emit(args, {"count": total, "entries": rows}, human)
    return EXIT_OK


def run_stop(args: argparse.Namespace) -> int:
    actions: dict[str, Command] = {"add": _stop_add, "remove": _stop_remove, "list": _stop_list}
    return actions[args.action](args)


@command("stop", "the stop list (numbers we do not send to): stop add | remove | list")
def _stop_args(p: argparse.ArgumentParser) -> None:
    sub = _subcommands(p)
    add = sub.add_parser("add", help="stop bulk and advertising to a number (--all: one-time codes too)")
    add.add_argument("phone", metavar="PHONE")
    add.add_argument("--all", action="store_true", help="every message, one-time codes included")
    add.add_argument("--reason", metavar="TEXT")
    add.add_argument("--json", action="store_true")
    remove = sub.add_parser("remove", help="take a number off the stop list")
    remove.add_argument("phone", metavar="PHONE")
    remove.add_argument("--json", action="store_true")
    listing = sub.add_parser("list", help="the stop list, newest first")
    listing.add_argument("--limit", type=int, default=100, metavar="N")
    listing.add_argument("--json", action="store_true")


def run_search(args: argparse.Namespace) -> int:
    from dispatcher.search import MAX_LIMIT, search

    settings = config_mod.get_settings()
    filters: dict[str, Any] = {
        "to": args.to, "key": args.key, "provider_message_id": args.provider_message_id,
        "client": args.client, "status": args.status, "provider": args.provider, "since": args.since,
        "until": args.until,
    }  # fmt: skip
    # --all walks every page; the pages are as big as the API allows, --limit caps none.
    limit = MAX_LIMIT if args.all else args.limit
    try:
        rows, cursor = search(settings, **filters, limit=limit, cursor=args.cursor)
        while args.all and cursor is not None:
            page, cursor = search(settings, **filters, limit=limit, cursor=cursor)
            rows += page
    except ValidationError as exc:
        field = {"to": "--to", "provider_message_id": "--provider-message-id"}.get(
            exc.field, f"--{exc.field}"
        )
        raise type(exc)(field, exc.reason) from None
    data = [{k: _iso(v) for k, v in r.items()} for r in rows]

    def human() -> str:
        table = render_table(
            ["id", "to", "status", "provider", "provider id", "client", "key", "created"],
            [[r["id"], r["to"], r["status"], r["provider"], r["provider_message_id"], r["client"], r["key"],
              r["created_at"]] for r in data],
        )  # fmt: skip
        more = f"\nmore: --cursor {cursor}" if cursor else ""
        return f"{table}\n{len(data)} messages{more}"

    emit(args, {"messages": data, "next": cursor}, human)
    return EXIT_OK


@command("search", "find messages by recipient, key, provider id or client, newest first")
def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="PHONE", help="the recipient, in any form send takes")
    p.add_argument("--key", metavar="K", help="the idempotency key")
    p.add_argument("--provider-message-id", metavar="ID", help="the provider's own id")
    p.add_argument("--client", metavar="NAME")
    p.add_argument("--status")
    p.add_argument("--provider", metavar="INSTANCE")
    p.add_argument("--since", help="ISO-8601 time with a zone")
    p.add_argument("--until", help="ISO-8601 time with a zone")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="a page's size (1-1000)")
    p.add_argument("--cursor", help="the next page: the cursor a previous search printed")
    p.add_argument("--all", action="store_true", help="every page, to the end")
    p.add_argument("--json", action="store_true", help="print an object with messages and next")


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


def run_callbacks(args: argparse.Namespace) -> int:
    from dispatcher.callbacks import backlog

    data = backlog(config_mod.get_settings())

    def human() -> str:
        head = (
            f"pending {data['pending']}, failed {data['failed']}, delivered in 24h {data['delivered_24h']},"
            f" oldest pending {_age(data.get('oldest_pending_age_s'))}"
        )
        endpoints = data.get("endpoints") or []
        if not endpoints:
            return head
        table = render_table(
            ["endpoint", "client", "pending", "failing", "failed 24h", "oldest", "last error"],
            [[e.get("url") or f"task {e.get('task')}", e.get("client"), e.get("pending"), e.get("failing"),
              e.get("failed_24h"), _age(e.get("oldest_s")), (e.get("last_error") or "")[:80]]
             for e in endpoints],
        )  # fmt: skip
        return f"{head}\n\n{table}"

    emit(args, data, human)
    return EXIT_OK


@command("callbacks", "the status callback outbox: pending, failed, and each endpoint's backlog")
def _callbacks_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _before(value: str) -> Any:
    """``--before``: an ISO date (00:00 UTC that day) or a time with a zone; not ahead."""
    from datetime import UTC, date, datetime

    from dispatcher.validation import _as_utc

    if len(value) == 10:
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ValidationError("--before", f"not an ISO date (YYYY-MM-DD): {value!r}") from None
        at = datetime(day.year, day.month, day.day, tzinfo=UTC)
    else:
        at = _as_utc(value, "--before")
    if at > datetime.now(UTC):
        raise ValidationError("--before", f"{at.isoformat()} is in the future: nothing would be kept")
    return at


def run_purge(args: argparse.Namespace) -> int:
    from dispatcher.retention import purge

    settings = config_mod.get_settings()
    before = _before(args.before)
    mode = args.mode or settings.policy.retention_mode
    counts = purge(settings, before=before, mode=mode, dry_run=args.dry_run)
    data = {"before": before.isoformat(), "mode": mode, "dry_run": args.dry_run, "counts": counts}

    def human() -> str:
        cleared = "cleared of replies and details" if mode == "mask" else "deleted"
        what = {
            "messages": "messages deleted",
            "masked": "messages masked (phone and text)",
            "attempts": f"attempts {cleared}",
            "events": f"status events {cleared}",
            "callbacks": "callbacks deleted",
            "balance_readings": "balance readings deleted",
            "bulk_requests": "bulk request keys deleted",
            "client_usage": "client daily counts deleted",
        }
        rows = [
            [label, counts[k]]
            for k, label in what.items()
            if k != ("messages" if mode == "mask" else "masked")
        ]
        head = f"before {before.isoformat()}, {mode} mode" + (
            ": a dry run, nothing changed" if args.dry_run else ""
        )
        tail = f"{counts['kept_in_flight']} older messages kept: not settled yet"
        table = render_table(["", "would be" if args.dry_run else "done"], rows)
        return "\n".join([head, table, tail])

    emit(args, data, human)
    return EXIT_OK


@command("purge", "delete (or mask) messages and their history older than a date (retention, 152-FZ)")
def _purge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--before", required=True, metavar="DATE",
        help="an ISO date (00:00 UTC) or time with a zone: what was created before it goes",
    )  # fmt: skip
    p.add_argument("--mode", choices=["delete", "mask"], help="default: policy.retention_mode")
    p.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    p.add_argument("--json", action="store_true")


# -- demo ---------------------------------------------------------------------------


LATENCY_KEYS = ("p50_accepted_s", "p95_accepted_s", "p50_delivered_s", "p95_delivered_s")


def run_demo(args: argparse.Namespace) -> int:
    from dispatcher import demo

    broker = args.broker
    if (
        broker is None
        and not args.embedded
        and (config_mod.config_path() or "SMSDISPATCH_BROKER_URL" in os.environ)
    ):
        broker = config_mod.get_settings().broker_url  # a broker the user configured
    result = demo.run(
        messages=args.messages, broker=broker, workers=args.workers, outage=not args.no_outage,
        progress=(not args.json and sys.stderr.isatty()) or args.progress,
    )  # fmt: skip

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def table() -> str:
        head = [
            f"smsdispatch demo: {result.messages} messages in {result.seconds:.1f}s ({result.mode} workers)",
            f"ledger: {result.ledger}",
        ]
        if result.outage:
            head.append(f"outage injected: {result.outage}")
        head += result.notes
        head.append("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(result.statuses.items()) if v))
        body = render_table(
            ["provider", "accepted", "delivered", "undeliv.", "rejected", "failed", "unknown", "retries",
             "failovers", "parts", "cost", "p50 acc", "p95 acc", "p50 deliv", "p95 deliv"],
            [[r["provider"], r["accepted"], r["delivered"], r["undelivered"], r["rejected"], r["failed"],
              r["unknown"], r["retries"], r["failovers"], r["parts"], f"{r['cost']:.2f}",
              *(secs(r[k]) for k in LATENCY_KEYS)]
             for r in result.providers],
        )  # fmt: skip
        tail = f"lost: {result.lost}" + ("" if not result.lost else "  <- messages not settled in time")
        cb = result.callbacks
        untold = f", {len(cb['missing'])} messages not told" if cb["missing"] else ""
        signed = ", all signed" if cb["all_signed"] else ", SOME BADLY SIGNED"
        hooks = [
            f"client {cb['client']!r} (its own key): {cb['messages']} messages, the last to a number on the"
            f" stop list ({cb['stopped']}); its callback receiver got {cb['received']} status changes"
            f"{signed}{untold}:",
            *(f"  {line}" for line in cb["lines"]),
        ]
        return "\n".join([*head, "", body, "", *hooks, "", tail])

    emit(args, result.as_dict(), table)
    return EXIT_FAILED if result.lost or result.callbacks.get("missing") else EXIT_OK


@command("demo", "the whole pipeline on a mixed load against the simulator, with an outage half way")
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--workers", type=int, default=8, help="worker threads (embedded) or processes (celery)")
    p.add_argument(
        "--broker",
        help="run real Celery workers on this broker (redis://... or sentinel://...?master_name=NAME)",
    )
    p.add_argument(
        "--embedded", action="store_true", help="the in-process worker pool even if a broker is configured"
    )
    p.add_argument("--no-outage", action="store_true")
    p.add_argument(
        "--progress", action="store_true", help="a progress bar even when stderr is not a terminal"
    )
    p.add_argument("--json", action="store_true")


# -- entry point --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smsdispatch", description="A distributed SMS dispatcher.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, build, help_text) in COMMANDS.items():
        build(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's text: drivers add hints and SQLAlchemy a
    "Background on this error" link on lines of their own."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return redact(lines[0]) if lines else type(exc).__name__


def _configured(attr: str) -> str:
    try:
        return redact(str(getattr(config_mod.get_settings(), attr)))
    except Exception:  # the settings themselves failed: the message names no URL then
        return "?"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from, outermost first (kombu wraps redis errors)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _backend_failure(exc: BaseException) -> tuple[int, str] | None:
    """Exit code and one line for a database or broker that does not answer as it
    should; None when ``exc`` is none of those."""
    import redis.exceptions
    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError

    for err in _chain(exc):
        if isinstance(err, DBAPIError):
            reason = _first_line(err.orig if err.orig is not None else err)
            database = _configured("database_url")
            lowered = reason.lower()
            # The server answered but will not serve this configuration: fix the config
            # (or run the migrations), waiting will not help.
            # A table or column the code expects is missing: a schema older than the code.
            missing_table = (
                "no such table" in lowered
                or "no such column" in lowered
                or (isinstance(err, ProgrammingError) and "does not exist" in lowered)
            )
            if missing_table:
                return EXIT_CONFIG, (
                    f"the database ({database}) lacks the schema of this version:"
                    f" run `smsdispatch db upgrade` ({reason})"
                )
            if "authentication failed" in lowered or ("database" in lowered and "does not exist" in lowered):
                return EXIT_CONFIG, f"the database ({database}) refused the connection: {reason}"
            if "file is not a database" in lowered:
                return EXIT_CONFIG, f"the database ({database}) is not an SQLite database: {reason}"
            if isinstance(err, OperationalError | InterfaceError) or err.connection_invalidated:
                return EXIT_UNAVAILABLE, f"the database is unreachable ({database}): {reason}"
        if isinstance(
            err, KombuOperationalError | redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
        ):
            return (
                EXIT_UNAVAILABLE,
                f"the broker is unreachable ({_configured('broker_url')}): {_first_line(err)}",
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A command's own warnings (a message stored but its publish deferred) read as one
    # line of ours; -v brings timestamps and logger names back for debugging.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if args.verbose
        else "smsdispatch: %(levelname)s: %(message)s",
    )
    install_log_redaction()
    runner = COMMANDS[args.command][0]

    def fail(code: int, line: str) -> int:
        if args.verbose and code not in (EXIT_USAGE,):
            sys.stderr.write(redact(traceback.format_exc()))
        print(f"smsdispatch: {line}", file=sys.stderr)
        return code

    try:
        return runner(args)
    except ConfigError as exc:
        return fail(EXIT_CONFIG, redact(str(exc)))
    except ValidationError as exc:
        return fail(EXIT_USAGE, f"invalid {redact(str(exc))}")
    except UsageError as exc:
        return fail(EXIT_USAGE, redact(str(exc)))
    except KeyboardInterrupt:
        return fail(130, "interrupted")
    except BrokenPipeError:
        # The reader of our output went away (| head): nothing left to tell anyone.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit flush cannot fail
        return EXIT_FAILED
    except Exception as exc:
        known = _backend_failure(exc)
        if known is not None:
            return fail(*known)
        if isinstance(exc, OSError) and exc.filename is not None:
            # A path we were given cannot be read or written (--write-config, ...).
            return fail(EXIT_USAGE, f"{exc.filename}: {(exc.strerror or str(exc)).lower()}")
        if isinstance(exc, ConnectionError):
            return fail(EXIT_UNAVAILABLE, f"a service is unreachable: {_first_line(exc)}")
        hint = "" if args.verbose else " (run with -v for the traceback)"
        return fail(EXIT_FAILED, f"unexpected error: {type(exc).__name__}: {_first_line(exc)}{hint}")


if __name__ == "__main__":
    sys.exit(main())
