"""The HTTP intake API (``smsdispatch api``), for apps that are not written in Python.

    POST /v1/messages            one message, or {"messages": [...]}; Idempotency-Key header
    GET  /v1/messages/{id}       the message with its attempts and status events
    GET  /v1/messages            ?status=&provider=&since=&until=&limit=
    GET  /v1/providers           breaker, rate limit, balance, last error per provider
    GET  /healthz                database, broker, and workers that actually consume
    GET  /metrics                Prometheus text format

Everything under /v1 needs ``Authorization: Bearer <api.token>``. /healthz and
/metrics carry no message content and answer without it, for probes and scrapers.
Errors are JSON ``{"error": {"field": ..., "reason": ...}}`` with a 4xx status.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions'
# annotations at runtime, and they name `bearer`, a local of create_app.
import hmac
import statistics
from collections.abc import Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, text

from dispatcher import api
from dispatcher.config import Settings
from dispatcher.errors import ConfigError, ValidationError
from dispatcher.models import ATTEMPTS, MESSAGES, utcnow


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(description="phone number: +7 916 123-45-67, 89161234567, 79161234567 ...", max_length=40)
    text: str = Field(max_length=2000)
    sender: str | None = Field(default=None, max_length=15)
    key: str | None = Field(default=None, description="idempotency key", max_length=200)
    at: str | None = Field(default=None, description="send time, ISO-8601 with a zone", max_length=64)
    ttl: float | None = Field(default=None, description="seconds the message may wait before it expires")
    priority: Literal["high", "normal"] = "normal"
    provider: str | None = Field(default=None, description="pin one provider instance", max_length=40)


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(min_length=1, max_length=10000)


class Created(BaseModel):
    id: str
    status: str


class BulkCreated(BaseModel):
    ids: list[str]
    count: int


class ErrorBody(BaseModel):
    field: str
    reason: str


class ErrorOut(BaseModel):
    error: ErrorBody


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut},
}  # fmt: skip


def _error(status: int, field: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "reason": reason}}, status_code=status)


def create_app(settings: Settings) -> FastAPI:
    token = settings.api.token
    if not token:
        raise ConfigError("api.token", "missing: the HTTP API needs a bearer token")
    app = FastAPI(title="smsdispatch", version="1", description=__doc__)
    bearer = HTTPBearer(auto_error=False)

    def auth(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        field = "authorization" if exc.status_code == 401 else "path"
        response = _error(exc.status_code, field, str(exc.detail))
        if exc.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def request_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ["body"], "msg": "invalid request"}
        field = ".".join(str(p) for p in first.get("loc", []) if p != "body") or "body"
        return _error(422, field, str(first.get("msg", "invalid")))

    @app.exception_handler(ValidationError)
    async def our_error(request: Request, exc: ValidationError) -> JSONResponse:
        status = 409 if isinstance(exc, api.IdempotencyConflict) else 422
        return _error(status, exc.field, exc.reason)

    guarded = [Depends(auth)]

    @app.post("/v1/messages", status_code=201, dependencies=guarded, responses=ERRORS)
    def post_messages(
        body: MessageIn | BulkIn,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Created | BulkCreated:
        """Queue one message, or many in one transaction (all or nothing)."""
        if isinstance(body, MessageIn):
            fields = body.model_dump(exclude_none=True)
            if idempotency_key:
                if body.key and body.key != idempotency_key:
                    raise ValidationError("key", "differs from the Idempotency-Key header")
                fields["key"] = idempotency_key
            mid = api.send_sms(**fields)
            message = api.get_message(mid) or {}
            return Created(id=mid, status=str(message.get("status")))
        items = []
        for n, m in enumerate(body.messages):
            fields = m.model_dump(exclude_none=True)
            if idempotency_key and "key" not in fields:
                fields["key"] = f"{idempotency_key}:{n}"  # one key for the call, one per message
            items.append(fields)
        ids = api.send_bulk(items)
        return BulkCreated(ids=ids, count=len(ids))

    @app.get("/v1/messages/{message_id}", dependencies=guarded, responses=ERRORS)
    def get_message(message_id: str) -> dict[str, Any]:
        """One message with its provider attempts and every status event."""
        message = api.get_message(message_id)
        if message is None:
            raise HTTPException(404, f"no message {message_id}")
        return dict(jsonable_encoder(message))

    @app.get("/v1/messages", dependencies=guarded, responses=ERRORS)
    def list_messages(
        status: str | None = None,
        provider: str | None = None,
        since: Annotated[str | None, Query(description="ISO-8601 with a zone")] = None,
        until: Annotated[str | None, Query(description="ISO-8601 with a zone")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
    ) -> list[dict[str, Any]]:
        """Messages newest first."""
        return list(jsonable_encoder(api.list_messages(status, provider, since, until, limit)))

    @app.get("/v1/providers", dependencies=guarded, responses=ERRORS)
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

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        """Prometheus text exposition."""
        return render_metrics(settings)

    return app


def _labels(**labels: Any) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in labels.items())  # fmt: skip
    return "{" + inner + "}" if inner else ""


def render_metrics(settings: Settings) -> str:
    from dispatcher.coordination import coordinator_for
    from dispatcher.db import session_scope
    from dispatcher.health import queue_depths, stuck_messages, worker_health

    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Sequence[tuple[dict[str, Any], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{_labels(**labels)} {value:g}" for labels, value in samples)

    with session_scope() as s:
        by_status = s.execute(
            select(MESSAGES.c.status, MESSAGES.c.provider, func.count()).group_by(
                MESSAGES.c.status, MESSAGES.c.provider
            )
        ).all()
        recent = s.execute(
            select(ATTEMPTS.c.provider, ATTEMPTS.c.duration_ms)
            .where(
                ATTEMPTS.c.started_at >= utcnow() - timedelta(minutes=5), ATTEMPTS.c.duration_ms.is_not(None)
            )
            .limit(20000)
        ).all()
    metric("smsdispatch_messages", "gauge", "Messages in the ledger by status and provider.",
           [({"status": st, "provider": pr or ""}, n) for st, pr, n in by_status])  # fmt: skip
    durations: dict[str, list[float]] = {}
    for provider, ms in recent:
        durations.setdefault(provider, []).append(ms / 1000.0)
    samples: list[tuple[dict[str, Any], float]] = []
    for provider, values in sorted(durations.items()):
        qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
        samples += [
            ({"provider": provider, "quantile": "0.5"}, qs[49]),
            ({"provider": provider, "quantile": "0.95"}, qs[94]),
        ]
    metric(
        "smsdispatch_send_duration_seconds",
        "gauge",
        "Provider call latency over the last 5 minutes.",
        samples,
    )
    metric("smsdispatch_send_calls_5m", "gauge", "Provider calls in the last 5 minutes.",
           [({"provider": p}, len(v)) for p, v in sorted(durations.items())])  # fmt: skip
    coordinator = coordinator_for(settings.broker_url)
    circuit, balance, low = [], [], []
    for pc in settings.providers:
        state = coordinator.breaker_state(pc.name).state
        circuit.append(({"provider": pc.name}, {"closed": 0, "half-open": 1, "open": 2}[state]))
        value = coordinator.get_value(f"balance:{pc.name}")
        if value not in (None, "None"):
            amount = float(value)
            balance.append(({"provider": pc.name}, amount))
            threshold = pc.balance_threshold
            low.append(({"provider": pc.name}, 1.0 if threshold is not None and amount < threshold else 0.0))
    metric("smsdispatch_circuit_state", "gauge", "Circuit breaker: 0 closed, 1 half-open, 2 open.", circuit)
    metric("smsdispatch_provider_balance", "gauge", "Last balance read from the provider.", balance)
    metric("smsdispatch_provider_balance_low", "gauge", "1 when the balance is under its threshold.", low)
    try:
        depths = queue_depths(settings)
        health = worker_health(settings)
    except Exception:
        depths, health = {}, {}
    metric("smsdispatch_queue_depth", "gauge", "Tasks waiting on the broker.",
           [({"queue": q}, n) for q, n in depths.items()])  # fmt: skip
    metric("smsdispatch_stuck_messages", "gauge", "Messages due for over 5 minutes and not picked up.",
           [({}, float(health.get("stuck", stuck_messages(settings))))])  # fmt: skip
    for name, key in (("smsdispatch_last_sweep_age_seconds", "last_sweep_s"),
                      ("smsdispatch_last_send_age_seconds", "last_send_s")):  # fmt: skip
        age = health.get(key)
        metric(
            name,
            "gauge",
            "Seconds since a worker last ran this task.",
            [({}, age)] if age is not None else [],
        )
    metric(
        "smsdispatch_workers_healthy",
        "gauge",
        "1 when workers consume.",
        [({}, 1.0 if health.get("ok") else 0.0)],
    )
    return "\n".join(lines) + "\n"
