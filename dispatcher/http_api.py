"""The HTTP intake API (``smsdispatch api``), for apps that are not written in Python.

    POST   /v1/messages          one message, or {"messages": [...]}; Idempotency-Key header
    GET    /v1/messages/{id}     the message with its attempts and status events
    GET    /v1/messages          ?to=&key=&provider_message_id=&client=&status=&provider=
                                 &since=&until=&limit=&cursor= -> {"messages": [...], "next": ...}
    POST   /v1/stop-list         {"to", "scope"?: "normal" | "all", "reason"?}: 201 new, 200 listed already
    DELETE /v1/stop-list/{to}    204, or 404 when not listed
    GET    /v1/stop-list         ?after=&limit= -> {"entries": [...], "next": ...}
    GET    /v1/providers         breaker, rate limit, balance, last error per provider (operator only)
    GET    /healthz              database, broker, and workers that actually consume
    GET    /metrics              Prometheus text format (dispatcher/metrics.py)

Everything under /v1 needs ``Authorization: Bearer <key>``: ``[api] token`` is the
operator's key, which sees everything; a client's key (``smsdispatch clients add``)
sees only the messages it sent (another's id is the same 404 as a missing one), may
filter only by itself, sends only from its senders and within its quota, and lists
and removes only the stop-list entries it added. A key is checked against the ledger
on every request, so a revoked key is refused by the next request on every process.
/healthz and /metrics carry no message content and answer without a key, for probes
and scrapers.

Lists are newest first (the stop list by number), a page at a time: ``next`` is the
cursor of the following page (``cursor=``, or ``after=`` for the stop list), null on
the last; rows stored meanwhile neither repeat nor shift a walk in progress.

Every error, whatever refuses the request, is JSON ``{"error": {"field": ..., "reason": ...}}``:
400 a body that is not JSON (field ``body``), 401 a missing, unknown or revoked key
(``authorization``), 403 an operator's route asked with a client's key
(``authorization``), 404 an unknown route (``path``), message (``message_id``) or
stop-list entry (``to``), 405 a method the route does not take (``method``), 409 an
idempotency key reused with another payload, 422 a field or parameter at fault, named
as the request spells it (``to``, ``messages[3].ttl``, ``since``, ``cursor``,
``Idempotency-Key``), 429 a limit (``code``: ``quota`` for the client's daily quota,
``recipient_rate`` for too many to one number) with ``Retry-After`` in seconds. A fault
of ours is a 500 with ``field`` null and ``reason`` "internal error": logged here,
never a traceback to the client.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions'
# annotations at runtime, and they name `bearer`, a local of create_app.
import hmac
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from sqlalchemy import select, text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dispatcher import api
from dispatcher.clients import ClientInfo, authenticate
from dispatcher.config import Settings
from dispatcher.db import session_scope
from dispatcher.errors import ConfigError, IdempotencyConflict, LimitExceeded, ValidationError
from dispatcher.metrics import count_refusal, refusals
from dispatcher.models import STOP_LIST
from dispatcher.scrape import api_registry, exposition
from dispatcher.search import MAX_LIMIT, search
from dispatcher.validation import MAX_TTL, normalize_phone, text_problem

log = logging.getLogger("smsdispatch.http")


class MessageIn(BaseModel):
    # strict: a JSON `true` is not the number 1, nor "5" the number 5 (lax pydantic
    # takes both); a JSON integer is still a float.
    model_config = ConfigDict(extra="forbid", strict=True)

    to: str = Field(description="phone number: +7 916 123-45-67, 89161234567, 79161234567 ...", max_length=40)
    text: str = Field(max_length=2000)
    sender: str | None = Field(default=None, max_length=15)
    key: str | None = Field(default=None, description="idempotency key", max_length=200)
    at: str | None = Field(default=None, description="send time, ISO-8601 with a zone", max_length=64)
    ttl: float | None = Field(
        default=None, description="seconds the message may wait before it expires", gt=0, le=MAX_TTL,
        allow_inf_nan=False,
    )  # fmt: skip
    priority: Literal["high", "normal"] = "normal"
    provider: str | None = Field(default=None, description="pin one provider instance", max_length=40)
    callback_url: str | None = Field(
        default=None, description="http(s) URL for signed status callbacks", max_length=2000
    )
    callback_task: str | None = Field(
        default=None, description="Celery task name for status callbacks", max_length=200
    )
    tz: str | None = Field(
        default=None, description="the recipient's IANA time zone, for quiet hours", max_length=64
    )


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    messages: list[MessageIn] = Field(min_length=1, max_length=10000)


def _body_kind(value: Any) -> str:
    # An object with "messages" is a bulk call, anything else one message: one model
    # validates it, so its errors name the field at fault, not the other model's.
    return "bulk" if isinstance(value, dict) and "messages" in value else "one"


Body = Annotated[Annotated[MessageIn, Tag("one")] | Annotated[BulkIn, Tag("bulk")], Discriminator(_body_kind)]


class Created(BaseModel):
    id: str
    status: str


class BulkCreated(BaseModel):
    ids: list[str]
    count: int


class MessagePage(BaseModel):
    messages: list[dict[str, Any]]
    next: str | None = Field(description="cursor of the next page; null on the last")


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    to: str = Field(description="phone number, in any spelling send_sms takes", max_length=40)
    scope: Literal["normal", "all"] = Field(
        default="normal", description="normal: advertising and bulk; all: one-time codes too"
    )
    reason: str | None = Field(default=None, max_length=500)


class StopEntryOut(BaseModel):
    phone: str
    scope: str
    source: str | None = Field(description="operator, client:NAME or provider:NAME; null: another client's")
    reason: str | None
    created_at: datetime


class StopPage(BaseModel):
    entries: list[StopEntryOut]
    next: str | None = Field(description="`after` of the next page; null on the last")


class ErrorBody(BaseModel):
    field: str | None = Field(description="the field or parameter at fault; null for a fault of ours")
    reason: str
    code: str | None = Field(default=None, description="on a 429, the limit: quota or recipient_rate")


class ErrorOut(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut}, 401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut},
    422: {"model": ErrorOut},
}  # fmt: skip
LIMITED: dict[int | str, dict[str, Any]] = {
    **ERRORS, 429: {"model": ErrorOut, "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}  # fmt: skip
OPERATOR_ONLY: dict[int | str, dict[str, Any]] = {**ERRORS, 403: {"model": ErrorOut}}


@dataclass(frozen=True)
class Caller:
    """Who a request's key belongs to."""

    client: ClientInfo | None  # None: the operator

    @property
    def source(self) -> str:
        """As the stop list records who added an entry."""
        return "operator" if self.client is None else f"client:{self.client.name}"

    def sees(self, client: str | None) -> bool:
        """Whether this caller may see what ``client`` sent or added."""
        return self.client is None or client == self.client.name


# Where pydantic puts a request error, and the names of the body's union members:
# neither is part of the field's name as the client wrote it.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}
_TAGS = {"one", "bulk"}


def _error(
    status: int, field: str | None, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "reason": reason}}, status_code=status, headers=headers)


def _field_name(loc: Sequence[Any]) -> str:
    """``("body", "bulk", "messages", 3, "ttl")`` -> ``messages[3].ttl``, as
    ``dispatcher.api`` names the fields of a bulk call; a header by its usual spelling."""
    parts = list(loc)
    if parts and parts[0] == "header" and len(parts) > 1:
        return "-".join(w.capitalize() for w in str(parts[1]).split("-"))
    name = ""
    for i, part in enumerate(parts):
        if (i == 0 and part in _LOCATIONS) or (i <= 1 and part in _TAGS):
            continue
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "body"


class _InternalErrors:
    """Any exception a handler lets out ends as a JSON 500 and a log line here (through
    the root handlers, which redact secrets), never as a traceback to the client.
    Starlette's own catch-all answers in plain text and raises again to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            if started:  # part of a response went out: nothing valid can follow it
                raise
            await _error(500, None, "internal error")(scope, receive, send)


def create_app(settings: Settings) -> FastAPI:
    token = settings.api.token
    if not token:
        raise ConfigError("api.token", "missing: the HTTP API needs a bearer token")
    app = FastAPI(title="smsdispatch", version="1", description=__doc__)
    app.add_middleware(_InternalErrors)
    bearer = HTTPBearer(auto_error=False)

    def auth(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        # The key itself goes nowhere but these comparisons: no log line, no error text.
        if credentials is None:
            raise HTTPException(401, "a valid bearer token is required")
        given = credentials.credentials
        if hmac.compare_digest(given.encode(), token.encode()):
            return Caller(None)
        # Looked up on every request, never cached: a revoked key is refused by the
        # very next request on every API process.
        with session_scope(settings.database_url) as s:
            client = authenticate(s, given)
        if client is None:
            raise HTTPException(401, "a valid bearer token is required")
        return Caller(client)

    def operator(caller: Annotated[Caller, Depends(auth)]) -> Caller:
        if caller.client is not None:
            raise HTTPException(403, "the operator's key is required")
        return caller

    def printable(request: Request) -> None:
        # After auth: a stranger learns nothing. A control character in a path
        # parameter names nothing that can exist (404); in a query parameter it is a
        # value no filter takes (422). Either way it never reaches a query.
        for name, value in request.path_params.items():
            # text_problem: NUL (which PostgreSQL refuses in a query) and every other
            # character no id, status, provider name or time contains.
            if isinstance(value, str) and text_problem(value):
                raise HTTPException(404, f"no such {name}: it contains control characters")
        for name, value in request.query_params.multi_items():
            if text_problem(value):
                raise ValidationError(name, "control characters are not allowed")

    # Registered for Starlette's class: the router raises that one for an unknown
    # route (404) or method (405), and it would otherwise answer {"detail": ...}.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            field = "authorization"
            headers["WWW-Authenticate"] = "Bearer"
        elif exc.status_code == 403:
            field = "authorization"
        elif exc.status_code == 405:
            field = "method"
            return _error(405, field, f"{request.method} is not allowed on {request.url.path}", headers)
        elif exc.status_code == 400 and not request.path_params:
            # FastAPI's own 400: a body it could not even decode (not UTF-8).
            return _error(400, "body", f"not a readable JSON body: {exc.detail}", headers)
        elif request.path_params:
            field = next(iter(request.path_params))
        else:  # the router found no route
            field = "path"
            if exc.status_code == 404:
                return _error(404, field, f"no such route: {request.url.path}", headers)
        return _error(exc.status_code, field, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {"loc": ["body"], "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # not JSON at all: nothing to name in it
            context: dict[str, Any] = first.get("ctx") or {}
            return _error(400, "body", f"not valid JSON: {context.get('error', 'malformed')}")
        if request.method == "POST" and request.url.path == "/v1/messages":
            # Refused by the schema before dispatcher.api saw it, which counts its own.
            count_refusal("api", "invalid", _messages_in(exc.body))
        return _error(422, _field_name(first.get("loc", ())), str(first.get("msg", "invalid")))

    @app.exception_handler(ValidationError)
    async def our_error(request: Request, exc: ValidationError) -> JSONResponse:
        if isinstance(exc, LimitExceeded):
            wait = exc.retry_after if math.isfinite(exc.retry_after) else 86400.0
            # At least a second: "Retry-After: 0" invites a client to hammer a limit.
            seconds = max(1, math.ceil(wait))
            body = {"error": {"field": exc.field, "reason": exc.reason, "code": exc.code}}
            return JSONResponse(body, status_code=429, headers={"Retry-After": str(seconds)})
        status = 409 if isinstance(exc, IdempotencyConflict) else 422
        return _error(status, exc.field, exc.reason)

    guarded = [Depends(auth), Depends(printable)]
    Who = Annotated[Caller, Depends(auth)]

    @app.post("/v1/messages", status_code=201, dependencies=guarded, responses=LIMITED)
    def post_messages(
        caller: Who,
        body: Body,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Created | BulkCreated:
        """Queue one message, or many in one transaction (all or nothing)."""
        # api applies the client's senders, quota and window; the operator has none.
        scope: dict[str, Any] = {} if caller.client is None else {"client": caller.client.name}
        many = body.messages if isinstance(body, BulkIn) else [body]
        with refusals("api", n=len(many)):  # refused here, before dispatcher.api counts its own
            if caller.client is not None:
                # A task name is published on our broker: a remote key naming one could call
                # any app's task there. A client's task is the operator's to set (clients add).
                for n, m in enumerate(many):
                    if m.callback_task is not None:
                        raise ValidationError(
                            f"messages[{n}].callback_task" if isinstance(body, BulkIn) else "callback_task",
                            "a client key cannot name a Celery task; use callback_url, or ask the operator"
                            " to set the client's callback task",
                        )  # fmt: skip
            if isinstance(body, MessageIn) and idempotency_key and body.key and body.key != idempotency_key:
                raise ValidationError("key", "differs from the Idempotency-Key header")
        if isinstance(body, MessageIn):
            fields = body.model_dump(exclude_none=True)
            if idempotency_key:
                fields["key"] = idempotency_key
            mid = api.send_sms(**fields, **scope)
            message = api.get_message(mid) or {}
            return Created(id=mid, status=str(message.get("status")))
        # The call's key covers the whole payload: send_bulk derives the per-message
        # keys and refuses the same key with another list (IdempotencyConflict, 409).
        items = [m.model_dump(exclude_none=True) for m in body.messages]
        ids = api.send_bulk(items, key=idempotency_key, **scope)
        return BulkCreated(ids=ids, count=len(ids))

    @app.get("/v1/messages/{message_id}", dependencies=guarded, responses=ERRORS)
    def get_message(caller: Who, message_id: str) -> dict[str, Any]:
        """One message with its provider attempts and every status event."""
        message = api.get_message(message_id)
        # Another client's message answers as a missing one: its id tells nothing.
        if message is None or not caller.sees(message.get("client")):
            raise HTTPException(404, f"no message {message_id}")
        return dict(jsonable_encoder(message))

    @app.get("/v1/messages", dependencies=guarded, responses=ERRORS)
    def list_messages(
        caller: Who,
        to: Annotated[str | None, Query(description="the recipient, in any spelling", max_length=40)] = None,
        key: Annotated[str | None, Query(description="idempotency key", max_length=200)] = None,
        provider_message_id: Annotated[str | None, Query(max_length=100)] = None,
        client: Annotated[
            str | None, Query(description="a client's name (a client: only its own)", max_length=64)
        ] = None,
        status: Annotated[str | None, Query(max_length=16)] = None,
        provider: Annotated[str | None, Query(max_length=40)] = None,
        since: Annotated[str | None, Query(description="ISO-8601 with a zone")] = None,
        until: Annotated[str | None, Query(description="ISO-8601 with a zone")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    ) -> MessagePage:
        """Messages newest first, a page at a time."""
        if caller.client is not None:
            if client is not None and client != caller.client.name:
                raise ValidationError("client", "a client's key searches only its own messages")
            client = caller.client.name
        rows, following = search(
            settings, client=client, to=to, key=key, provider_message_id=provider_message_id, status=status,
            provider=provider, since=since, until=until, limit=limit, cursor=cursor,
        )  # fmt: skip
        return MessagePage(messages=jsonable_encoder(rows), next=following)

    def entry_out(caller: Caller, row: Any) -> StopEntryOut:
        entry = dict(row)
        if not caller.sees(_client_of(entry.get("source"))):
            # Another client's entry: it exists, but why and for whom is not ours to tell.
            entry["source"] = entry["reason"] = None
        return StopEntryOut.model_validate({k: entry.get(k) for k in StopEntryOut.model_fields})

    @app.post(
        "/v1/stop-list",
        status_code=201,
        dependencies=guarded,
        responses={**ERRORS, 200: {"model": StopEntryOut}},
    )
    def stop_add(caller: Who, body: StopIn, response: Response) -> StopEntryOut:
        """Stop sending to a number: 201 when added, 200 when it was listed already."""
        from dispatcher import stoplist

        phone = normalize_phone(body.to, "to", settings.phones)
        if body.reason is not None and text_problem(body.reason):
            raise ValidationError("reason", "control characters are not allowed")
        listed = select(STOP_LIST).where(STOP_LIST.c.phone == phone)
        with session_scope(settings.database_url) as s:
            # A client changes only an entry it made: another's stays as it is (it could
            # otherwise take it over, narrow it, then delete it), decided in the write.
            only = caller.source if caller.client is not None else None
            new = stoplist.add(s, phone, scope=body.scope, source=caller.source, reason=body.reason,
                               only_if_source=only)  # fmt: skip
            row = s.execute(listed).mappings().one()
        response.status_code = 201 if new else 200
        return entry_out(caller, row)

    @app.delete("/v1/stop-list/{to}", status_code=204, dependencies=guarded, responses=ERRORS)
    def stop_remove(caller: Who, to: str) -> Response:
        """Send to a number again. A client removes only the entries it added."""
        from dispatcher import stoplist

        phone = normalize_phone(to, "to", settings.phones)
        only = caller.source if caller.client is not None else None
        with session_scope(settings.database_url) as s:
            # Not listed, or (for a client) not its own to remove: the same 404.
            if not stoplist.remove(s, phone, only_if_source=only):
                raise HTTPException(404, f"{phone} is not on the stop list")
        return Response(status_code=204)

    @app.get("/v1/stop-list", dependencies=guarded, responses=ERRORS)
    def stop_entries(
        caller: Who,
        after: Annotated[str | None, Query(description="`next` of the previous page", max_length=15)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    ) -> StopPage:
        """Stop-list entries by number, a page at a time (a client: those it added)."""
        from dispatcher import stoplist

        if after is not None and not (after.isascii() and after.isdigit()):
            raise ValidationError("after", "the E.164 digits of a number, as `next` gives them")
        source = None if caller.client is None else caller.source
        with session_scope(settings.database_url) as s:
            found = stoplist.entries(s, source=source, after=after, limit=limit + 1)
        page = found[:limit]
        following = page[-1]["phone"] if len(found) > limit else None
        return StopPage(entries=[entry_out(caller, e) for e in page], next=following)

    @app.get("/v1/providers", dependencies=[Depends(operator), Depends(printable)], responses=OPERATOR_ONLY)
    def providers() -> list[dict[str, Any]]:
        from dispatcher.ops import provider_rows

        return provider_rows(settings)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Healthy when the database and broker answer and workers consume."""
        from dispatcher.db import session_scope
        from dispatcher.health import worker_health

        checks: dict[str, Any] = {}
        try:
            with session_scope() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = {"ok": True}
        except Exception as exc:
            checks["database"] = {"ok": False, "detail": type(exc).__name__}
        try:
            checks["workers"] = worker_health(settings)
        except Exception as exc:
            checks["workers"] = {"ok": False, "detail": f"broker: {type(exc).__name__}: {exc}"}
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ok": ok, "checks": jsonable_encoder(checks)}, status_code=200 if ok else 503)

    registry = api_registry(settings)

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus text exposition (dispatcher/scrape.py, docs/metrics.md)."""
        return PlainTextResponse(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    from dispatcher import console  # the operator's web console under /console (docs/console.md)

    app.include_router(console.router(settings))
    return app


def _messages_in(body: Any) -> int:
    """The messages a refused ``POST /v1/messages`` body held, for the refusal counter:
    a bulk body's list counts each, anything else (one message, or a body too broken
    to tell) one."""
    if _body_kind(body) == "bulk" and isinstance(body["messages"], list):
        return len(body["messages"])
    return 1


def _client_of(source: Any) -> str | None:
    """The client a stop-list source names (``client:NAME``), else None."""
    if isinstance(source, str) and source.startswith("client:"):
        return source.removeprefix("client:")
    return None
