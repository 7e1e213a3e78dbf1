"""The console's routes: login and logout, and four pages behind the operator's key.

Every answer carries no-store caching, a CSP without inline scripts or styles, and
X-Frame-Options DENY. Pages read their parameters themselves (never FastAPI's typed
parameters, whose refusals are JSON): any input a page cannot use comes back as that
page with a message naming the field, and a fault of ours as an HTML 500 with nothing
but "internal error" (the traceback goes to the log).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from dispatcher.config import Settings
from dispatcher.console import stats
from dispatcher.console.auth import (
    LOGIN_COOKIE,
    LOGIN_TTL,
    SESSION_COOKIE,
    LoginThrottle,
    Session,
    Signer,
)
from dispatcher.errors import ValidationError
from dispatcher.status import Status

log = logging.getLogger("smsdispatch.console")

HERE = Path(__file__).parent
MAX_FORM = 4096  # bytes of a login or logout form: a key and a token, nothing more
FAILED_LOGIN_DELAY = 1.0  # seconds every wrong key waits before its answer
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it Chrome sends "Origin: null" with the console's own
    # form posts, and the origin check could no longer tell them from a forged one.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
STATUSES = [s.value for s in Status]


def _static_files() -> dict[str, tuple[bytes, str]]:
    # Read once: a fixed list of small files, so no path from a request reaches the disk.
    out = {}
    for path in (HERE / "static").iterdir():
        media = STATIC_TYPES.get(path.suffix)
        if path.is_file() and media:
            out[path.name] = (path.read_bytes(), media)
    return out


def _ts(value: Any) -> str:
    if not isinstance(value, datetime):
        return "–" if value is None else str(value)
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + f"{aware.microsecond // 1000:03d}"


def _seconds(value: Any) -> str:
    if value is None:
        return "–"
    v = float(value)
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _percent(value: Any) -> str:
    return "–" if value is None else f"{float(value) * 100:.1f}%"


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{float(value):,.{digits}f}".replace(",", " ")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=_ts, seconds=_seconds, percent=_percent, number=_number)
    return env


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


def _series(rows: list[dict[str, Any]], x: str, y: str, names: list[str]) -> dict[str, Any]:
    """Rows of (provider, x, y) as uPlot wants them: one x axis, one aligned list of
    values per provider, null where a provider has no point."""
    xs = sorted({r[x] for r in rows})
    index = {v: i for i, v in enumerate(xs)}
    values: dict[str, list[Any]] = {n: [None] * len(xs) for n in names}
    for r in rows:
        if r["provider"] in values:
            values[r["provider"]][index[r[x]]] = r[y]
    shown = [n for n in names if any(v is not None for v in values[n])]
    return {
        "x": [_epoch(v) if isinstance(v, datetime) else _day_epoch(v) for v in xs],
        # "color": the provider's place among all, so it keeps its colour in every chart.
        "series": [{"label": n, "values": values[n], "color": names.index(n)} for n in shown],
    }


def _day_epoch(day: str) -> int:
    return _epoch(datetime.fromisoformat(day).replace(tzinfo=UTC))


def router(settings: Settings) -> APIRouter:
    """The console's routes under ``/console``, for ``create_app`` to include."""
    token = settings.api.token
    if not token:  # create_app refuses to start without one; a router alone must too
        raise ValueError("the console needs api.token")
    signer = Signer(token)
    throttle = LoginThrottle()
    env = _environment()
    static = _static_files()

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/") + "/console"

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path=base(request), secure=secure(request), httponly=True,
            samesite="strict",
        )  # fmt: skip

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "console_session", None)
        context.setdefault("error", None)
        html = env.get_template(template).render(
            base=base(request), csrf=signer.csrf_for(session) if session else None, **context
        )
        return HTMLResponse(html, status_code=status)

    def coordinator() -> Any:
        from dispatcher.coordination import coordinator_for

        return coordinator_for(settings.broker_url)

    def current(request: Request) -> Session | None:
        session = signer.read_session(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        try:
            if coordinator().get_value(f"console:ended:{session.nonce}"):
                return None
        except Exception:
            # The coordinator (Redis) is down: a logged-out cookie would pass until its
            # expiry, but the console stays usable to look into the outage.
            log.warning("console: cannot check session revocation", exc_info=True)
        request.state.console_session = session
        return session

    def to_login(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{base(request)}/login", status_code=303)

    async def read_form(request: Request) -> dict[str, str] | None:
        """The urlencoded body, or None when it is not one a browser's form sends.
        Parsed here: python-multipart, which FastAPI's Form needs, is not a dependency."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM:
                return None
        try:
            parsed = parse_qs(
                body.decode("utf-8"), keep_blank_values=True, max_num_fields=8, strict_parsing=False
            )
        except (UnicodeDecodeError, ValueError):
            return None
        return {k: v[0] for k, v in parsed.items()}

    def same_origin(request: Request) -> bool:
        # SameSite=Strict already keeps the cookie off cross-site POSTs; an Origin
        # from elsewhere is refused as well, for browsers that send one.
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        here = f"{request.url.scheme}://{request.url.netloc}"
        if origin != here:
            # Most often a TLS-terminating proxy whose X-Forwarded-Proto is not trusted:
            # `smsdispatch api --forwarded-allow-ips` (docs/console.md).
            log.warning("console: a form from origin %r, this console is %r", origin[:200], here)
        return origin == here

    class ConsoleRoute(APIRoute):
        """Adds the security headers to every answer and turns a fault into an HTML 500."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            inner = super().get_route_handler()

            async def handler(request: Request) -> Response:
                try:
                    response = await inner(request)
                except HTTPException:
                    raise
                except OperationalError as exc:
                    # The ledger is down, or a page's SQL ran past stats.STATEMENT_TIMEOUT.
                    log.warning("console: the ledger did not answer %s: %s", request.url.path,
                                type(getattr(exc, "orig", None) or exc).__name__)  # fmt: skip
                    response = render(request, "error.html", 503, title="Ledger unavailable",
                                      error="The ledger did not answer in time: try again, or see the"
                                      " database's health (/healthz).")  # fmt: skip
                except Exception:
                    log.exception("console: internal error answering %s %s", request.method, request.url.path)
                    response = render(request, "error.html", 500, title="Internal error",
                                      error="Internal error: the details are in the API's log.")  # fmt: skip
                if not request.url.path.startswith(f"{base(request)}/static/"):
                    response.headers.update(SECURITY_HEADERS)
                return response

            return handler

    r = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)

    # -- login and logout

    def login_page(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
        login_token = signer.new_login_token()
        response = render(request, "login.html", status, title="Log in", login_token=login_token, error=error)
        cookie(response, request, LOGIN_COOKIE, login_token, LOGIN_TTL)
        return response

    @r.get("/login")
    def login_form(request: Request) -> Response:
        if current(request) is not None:
            return RedirectResponse(base(request), status_code=303)
        return login_page(request)

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await read_form(request)
        if form is None:
            return login_page(request, 400, "The login form was not sent as a browser sends it.")
        if not same_origin(request) or not signer.check_login_token(
            request.cookies.get(LOGIN_COOKIE), form.get("csrf")
        ):
            return login_page(request, 403, "This login form has expired or did not come from this console:"
                              " try again.")  # fmt: skip
        address = request.client.host if request.client else "unknown"
        wait = throttle.wait(address)
        if wait > 0:
            return login_page(
                request, 429, f"Too many wrong keys from your address: try again in {wait:.0f} s."
            )
        if not signer.is_operator(form.get("key", "")):
            throttle.failed(address)
            # Not the key, nor whether it is a client's: a client key is simply not the operator's.
            log.info("console: refused a login from %s", address)
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            return login_page(request, 401, "Wrong key: the console takes the operator's key ([api] token).")
        throttle.succeeded(address)
        session, value = signer.new_session()
        response = RedirectResponse(base(request), status_code=303)
        cookie(response, request, SESSION_COOKIE, value, session.expires - session.issued)
        response.delete_cookie(LOGIN_COOKIE, path=base(request), secure=secure(request), httponly=True,
                               samesite="strict")  # fmt: skip
        log.info("console: operator logged in from %s", address)
        return response

    @r.post("/logout")
    async def logout(request: Request) -> Response:
        # The coordinator is read and written off the event loop: it may be a Redis call.
        session = await run_in_threadpool(current, request)
        if session is None:
            return to_login(request)
        form = await read_form(request)
        if form is None or not same_origin(request) or not signer.check_csrf(session, form.get("csrf")):
            why = "Refused: the form did not come from this console (CSRF token missing or wrong)."
            return render(request, "error.html", 403, title="Refused", error=why)
        remaining = max(1, int(session.expires - datetime.now(UTC).timestamp()))
        try:
            await run_in_threadpool(coordinator().set_value, f"console:ended:{session.nonce}", "1", remaining)
        except Exception:
            log.warning(
                "console: could not record a logout; the cookie is dropped all the same", exc_info=True
            )
        response = to_login(request)
        response.delete_cookie(SESSION_COOKIE, path=base(request), secure=secure(request), httponly=True,
                               samesite="strict")  # fmt: skip
        return response

    # -- pages

    def param(request: Request, name: str) -> str:
        return request.query_params.get(name, "").strip()

    @r.get("")
    def search_page(request: Request) -> Response:
        if current(request) is None:
            return to_login(request)
        q, by = param(request, "q"), param(request, "by") or "any"
        client, status, cursor = param(request, "client"), param(request, "status"), param(request, "cursor")
        form = {"q": q, "by": by, "client": client, "status": status}
        context: dict[str, Any] = {
            "title": "Search", "nav": "search", "form": form, "by_options": stats.SEARCH_BY,
            "statuses": STATUSES, "found": None,
        }  # fmt: skip
        try:
            # A status that is none names its field: search.statement refuses it.
            found = stats.find_messages(settings, q, by, client=client or None, status=status or None,
                                        cursor=cursor or None)  # fmt: skip
        except ValidationError as exc:
            context["error"] = f"{stats.field_label(exc.field)}: {exc.reason}"
            return render(request, "search.html", 422, **context)
        context["found"] = found
        context["next_query"] = {**form, "cursor": found.next} if found.next else None
        return render(request, "search.html", **context)

    @r.get("/messages/{message_id}")
    def message_page(request: Request, message_id: str) -> Response:
        if current(request) is None:
            return to_login(request)
        context: dict[str, Any] = {"title": "Message", "nav": "search", "message_id": message_id}
        try:
            found = stats.timeline(settings, message_id)
        except ValidationError as exc:
            return render(request, "error.html", 422, **context, error=f"message id: {exc.reason}")
        if found is None:
            return render(request, "error.html", 404, **context, error=f"message id: no message {message_id}")
        return render(request, "message.html", **context, t=found)

    @r.get("/providers")
    def providers_page(request: Request) -> Response:
        if current(request) is None:
            return to_login(request)
        from dispatcher.ops import provider_rows

        names = [pc.name for pc in settings.providers]
        with stats.bounded(settings) as s:
            # The last day's sent/parts/cost are in provider_stats' rates: not counted twice.
            rows = provider_rows(settings, redis_optional=True, session=s, spend=False)
        notes = []
        if any(row["breaker"] == "unknown" for row in rows):
            notes.append("Breaker state unavailable: the coordinator (Redis) does not answer.")
        figures = stats.provider_stats(settings, names)
        charts = {
            "balance": {**_series(figures.balances, "at", "amount", names), "unit": "balance"},
            "spend": {**_series(figures.spend, "day", "cost", names), "unit": "spend", "days": True},
            "parts": {**_series(figures.spend, "day", "parts", names), "unit": "parts", "days": True},
        }
        return render(request, "providers.html", title="Providers", nav="providers", rows=rows, s=figures,
                      charts=charts, notes=notes, windows=list(stats.WINDOWS))  # fmt: skip

    @r.get("/queues")
    def queues_page(request: Request) -> Response:
        if current(request) is None:
            return to_login(request)
        from dispatcher import health as health_mod
        from dispatcher.callbacks import backlog

        notes = []
        embedded = settings.broker_url == "memory://"  # as dispatcher.health tells it
        depths: dict[str, int] = {}
        sweep_age = send_age = None
        broker_read = False
        if not embedded:
            try:
                depths = health_mod.queue_depths(settings)
                sweep_age = health_mod.heartbeat_age(settings, "sweep")
                send_age = health_mod.heartbeat_age(settings, "send")
                broker_read = True
            except Exception as exc:
                log.warning("console: broker unreadable", exc_info=True)
                notes.append(f"The broker does not answer ({type(exc).__name__}): queue depths unknown.")
        health: dict[str, Any] = {}
        if embedded:
            health = health_mod.judge(settings, sweep_age=None, send_age=None, depths={}, stuck=0)
        with stats.bounded(settings) as s:
            waiting = backlog(settings, s)
            pipe = stats.in_pipe(s)
            if broker_read:
                # Judged from the facts read once (as /metrics does): the depths are not read again.
                stuck = health_mod.stuck_messages(settings, s)
                health = health_mod.judge(settings, sweep_age=sweep_age, send_age=send_age, depths=depths,
                                          stuck=stuck)  # fmt: skip
        return render(request, "queues.html", title="Queues", nav="queues", depths=depths, health=health,
                      embedded=embedded, backlog=waiting, pipe=pipe, stuck_after=health_mod.STUCK_AFTER,
                      notes=notes)  # fmt: skip

    @r.get("/static/{name}")
    def static_file(name: str) -> Response:
        found = static.get(name)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body, media = found
        return Response(body, media_type=media, headers={"Cache-Control": "no-cache",
                                                         "X-Content-Type-Options": "nosniff"})  # fmt: skip

    @r.get("/{rest:path}")
    def unknown(request: Request, rest: str) -> Response:
        if rest == "":
            return RedirectResponse(base(request), status_code=308)
        current(request)
        return render(
            request, "error.html", 404, title="Not found", error=f"No console page at /console/{rest}."
        )

    return r
