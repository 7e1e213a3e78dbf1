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
import signal
import sys
import threading
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
             "attention / last error"],
            [[r["provider"], r["kind"], r["priority"], "yes" if r["enabled"] else "no",
              r["breaker"] + (f" ({r['breaker_retry_in']:.0f}s)" if r["breaker"] == "open" else ""),
              r["rate_limit"] or "-",
              "" if r["balance"] is None else f"{r['balance']:.2f} {r['currency'] or ''}".strip()
              + (f" +{r['credit']:.2f} credit" if r["credit"] else ""),
              r["sent_24h"], r["parts_24h"], "" if r["cost_24h"] is None else f"{r['cost_24h']:.2f}",
              ("ATTENTION " + r["attention"] if r["attention"] else r["last_error"] or "")[:100]]
             for r in rows],
        )  # fmt: skip

    emit(args, rows, table)
    return EXIT_OK


@command("providers", "provider instances: priority, circuit breaker, rate limit, balance, last error")
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
    uvicorn.run(
        app, host=args.host or settings.api.host, port=args.port or settings.api.port, log_level="warning"
    )
    return EXIT_OK


@command("api", "run the HTTP intake API (needs api.token in the config)")
def _api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host")
    p.add_argument("--port", type=int)


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
            setattr(server.state.timing, key, float(value))
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


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def run_bulk(args: argparse.Namespace) -> int:
    import csv

    from dispatcher.api import FIELDS, send_bulk

    with open(args.file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for name in header:
            if name not in FIELDS:
                raise ValidationError(
                    f"{args.file}: column {name!r}", f"unknown (known: {', '.join(FIELDS)})"
                )
        rows = []
        for n, row in enumerate(reader, start=2):  # line 1 is the header
            fields: dict[str, Any] = {k: v for k, v in row.items() if v not in (None, "")}
            if "ttl" in fields:
                try:
                    fields["ttl"] = float(fields["ttl"])
                except ValueError:
                    raise ValidationError(f"{args.file}: line {n}: ttl", "not a number") from None
            if args.priority and "priority" not in fields:
                fields["priority"] = args.priority
            rows.append((n, fields))
    # Validate every line before storing any, so a bad line 900 stores nothing.
    from dispatcher.config import get_settings
    from dispatcher.validation import validate

    settings = get_settings()
    for n, fields in rows:
        try:
            validate(settings, **fields)
        except ValidationError as exc:
            raise ValidationError(f"{args.file}: line {n}: {exc.field}", exc.reason) from None
        except TypeError:
            raise ValidationError(f"{args.file}: line {n}", "to and text are required") from None
    ids: list[str] = []
    for start in range(0, len(rows), 500):
        ids += send_bulk([fields for _, fields in rows[start : start + 500]])
        _progress(len(ids), len(rows), "queued")
    emit(args, {"count": len(ids), "ids": ids}, lambda: f"{len(ids)} messages queued")
    return EXIT_OK


@command("bulk", "queue every message of a CSV file (columns: to,text and optional sender,key,at,ttl,...)")
def _bulk_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("--priority", choices=["high", "normal"], help="for lines that name none")
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

    old = api.cancel_message(args.id) if action == "cancel" else api.retry_message(args.id)
    message = api.get_message(args.id)
    if message is None:
        print(f"smsdispatch: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    done = old is not None
    data = {"id": args.id, "done": done, "from": old, "status": message["status"]}
    if not done:
        allowed = "queued or scheduled" if action == "cancel" else "failed or unknown"
        print(
            f"smsdispatch: cannot {action} a message in {message['status']} (only {allowed})", file=sys.stderr
        )
    emit(args, data, lambda: f"{args.id}: {old} -> {message['status']}" if done else "")
    return EXIT_OK if done else EXIT_FAILED


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
        return "\n".join([*head, "", body, "", tail])

    emit(args, result.as_dict(), table)
    return EXIT_FAILED if result.lost else EXIT_OK


@command("demo", "the whole pipeline on a mixed load against the simulator, with an outage half way")
def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--workers", type=int, default=8, help="worker threads (embedded) or processes (celery)")
    p.add_argument("--broker", help="run real Celery workers on this broker (redis://...)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()
    runner = COMMANDS[args.command][0]
    try:
        return runner(args)
    except ConfigError as exc:
        print(f"smsdispatch: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValidationError as exc:
        print(f"smsdispatch: invalid {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
