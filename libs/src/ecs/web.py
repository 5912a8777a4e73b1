"""The HTTP app factory every service uses: health, readiness, metrics, problem+json errors,
bearer-token roles, Idempotency-Key on POST, and a request body limit."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import Principal, Role, TokenVerifier
from .db import IDEMPOTENCY_KEYS, Database
from .envelope import field_path
from .errors import AppError, Transient
from .retry import db_error_text, is_unavailable

log = structlog.get_logger("ecs.web")

PROBLEM = "application/problem+json"
HTTP_REQUESTS = Counter("ecs_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "ecs_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

_bearer = HTTPBearer(auto_error=False, description="Operator token with roles")


PROBLEM_MEMBERS = frozenset({"type", "title", "status", "detail", "instance"})
"""The members RFC 9457 §3.1 defines; an error's own details never overwrite them."""


def problem(status: int, title: str, detail: str, /, code: str | None = None, **extra: Any) -> JSONResponse:
    """An ``application/problem+json`` answer (RFC 9457): type, title, status, detail and the
    error's own members (e.g. ``field``); one named like a standard member is kept under
    ``context`` instead. ``retry_after_s`` is also sent as the Retry-After header (whole seconds,
    RFC 9110 §10.2.3)."""
    own = {k: v for k, v in extra.items() if k not in PROBLEM_MEMBERS}
    clashing = {k: v for k, v in extra.items() if k in PROBLEM_MEMBERS}
    body = {
        "type": f"urn:ecs:problem:{code or status}",
        "title": title,
        "status": status,
        "detail": detail,
        **own,
        **({"context": clashing} if clashing else {}),
    }
    retry = extra.get("retry_after_s")
    headers = {"Retry-After": str(max(1, math.ceil(retry)))} if isinstance(retry, int | float) else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def crash_problem(exc: BaseException) -> JSONResponse:
    """The answer to an error no route handled: 503 when the database went away under the request
    (``ecs.retry.is_unavailable``: the request changed nothing, try again), else a logged 500."""
    if is_unavailable(exc):
        log.warning("http.database_unavailable", error=db_error_text(exc))
        return problem(
            503, "Try again", "the database is out of reach; nothing was changed", "unavailable", retry_after_s=1
        )
    log.exception("http.unhandled", error=str(exc)[:300], exc_info=exc)
    return problem(
        500,
        "Internal error",
        "the request failed; nothing was changed unless the response said so",
    )


def validation_problem(errors: Sequence[dict[str, Any]], prefix: str = "") -> JSONResponse:
    """422 problem+json naming each invalid field (pydantic's ``errors()``, at most five in the
    detail). A body that is not JSON at all is the ``body`` field, its error at a character
    position (pydantic puts the position where a field name would be)."""
    items = [_invalid_field(e, prefix) for e in errors]
    detail = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return problem(422, "Invalid input", detail, code="invalid_input", errors=items)


def _invalid_field(error: dict[str, Any], prefix: str) -> dict[str, str]:
    loc, message = tuple(error.get("loc", ())), str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid":
        at = loc[-1] if loc and isinstance(loc[-1], int) else None
        return {"field": prefix + "body", "message": message + (f" at character {at}" if at is not None else "")}
    return {"field": prefix + field_path(loc), "message": message}


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 problem details: what went wrong and, where it can, which field.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "urn:ecs:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string", "description": "the field, header or parameter at fault"},
        "errors": {
            "type": "array",
            "description": "every invalid field (422)",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

_STATUS_TEXT = {
    400: "malformed request (not JSON, not UTF-8)",
    401: "missing, expired or invalid credentials",
    403: "the caller's roles do not allow this (or a drill runner on a live object)",
    404: "no such object",
    409: "conflict with the object's state or version (the current version is included)",
    413: "the body is larger than the limit",
    415: "the body is not in a media type this operation reads",
    422: "invalid input, naming each field",
    503: "not ready or temporarily unable to take the request: retry",
}


def _operation_statuses(path: str, method: str, op: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer, from its shape: every route may refuse
    credentials and input; a path with an id may not find it; a write may conflict; a body
    may be too large, of the wrong type or malformed."""
    # 404 too without an id in the path: a body may name an object that does not exist.
    statuses = {401, 403, 404, 422, 503}
    if method in ("post", "put", "patch", "delete"):
        statuses.add(409)
    if method in ("post", "put", "patch"):
        statuses |= {400, 413, 415}
    return statuses


def _hoist_defs(schema: Any, schemas: dict[str, Any]) -> None:
    if isinstance(schema, dict):
        for name, sub in schema.pop("$defs", {}).items():
            _hoist_defs(sub, schemas)
            schemas.setdefault(name, sub)
        for value in schema.values():
            _hoist_defs(value, schemas)
    elif isinstance(schema, list):
        for value in schema:
            _hoist_defs(value, schemas)


def finish_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Make a FastAPI-generated OpenAPI document say what the service does: schemas nested in
    request bodies (``$defs``) moved into ``components``; every error answered as
    ``application/problem+json`` with the Problem schema; and the error statuses each operation
    can answer (``_operation_statuses``) documented. Returns ``spec``, changed in place."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    problem_content = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            body = op.get("requestBody", {})
            for media in body.get("content", {}).values():
                _hoist_defs(media.get("schema", {}), schemas)
            responses = op["responses"]
            public = path in ("/healthz", "/readyz", "/metrics") or path.startswith("/docs")
            wanted = set() if public else _operation_statuses(path, method, op)
            if path == "/readyz":
                wanted.add(503)
            for status in wanted:
                responses.setdefault(str(status), {})
            for status, answer in list(responses.items()):
                if status.isdigit() and int(status) >= 400 and not public:
                    answer["content"] = problem_content
                    if not answer.get("description") or answer["description"] in ("Validation Error",):
                        answer["description"] = _STATUS_TEXT.get(int(status), "error")
    return spec


def requires(*roles: Role) -> Any:
    """FastAPI dependency: a valid bearer token holding one of ``roles``."""

    async def dependency(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        header = request.headers.get("authorization")
        principal = request.app.state.tokens.verify(header)
        principal.require(*roles)
        request.state.principal = principal
        return principal

    return Depends(dependency)


_NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)
"""FastAPI's own OpenTelemetry, off: the services observe through structlog and Prometheus
(DESIGN §9), and with it on, every request looked up the global providers (environment reads
among them) only to find none configured."""


def create_app(
    *,
    title: str,
    version: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    routers: Sequence[APIRouter],
    description: str = "",
    max_body_bytes: int = 4 * 1024 * 1024,
) -> FastAPI:
    """The app's lifespan must put ``db`` (Database), ``tokens`` (TokenVerifier) and a
    ``readiness`` coroutine returning {check: ok} on ``app.state``."""
    app = FastAPI(title=title, version=version, description=description, lifespan=lifespan, **_NO_OTEL)

    @app.exception_handler(AppError)
    async def on_app_error(_: Request, exc: AppError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.code, **exc.extra)

    @app.exception_handler(Transient)
    async def on_unavailable(_: Request, exc: Transient) -> JSONResponse:
        # 503 means only "the service is unavailable": the request changed nothing, try again.
        log.warning("http.unavailable", error=str(exc)[:300])
        return problem(
            503, "Try again", f"the service is unavailable: {exc}; nothing was changed", "unavailable", retry_after_s=1
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    async def on_crash(_: Request, exc: Exception) -> JSONResponse:
        return crash_problem(exc)

    # The database's errors get their own handler, not only the catch-all: Starlette answers an
    # exception that only the catch-all (``Exception``) handles and then raises it again, and the
    # server closes the connection, so that the client's next request on it went unanswered.
    for kind in (DBAPIError, PoolTimeout, OSError):
        app.add_exception_handler(kind, on_crash)
    app.add_exception_handler(Exception, on_crash)

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    readiness_answer = {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "string", "enum": ["ready", "not ready"]},
                        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
                    },
                }
            }
        }
    }

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="NATS and the database are reachable",
        response_class=JSONResponse,
        responses={200: readiness_answer, 503: {"description": "not ready", **readiness_answer}},
    )
    async def readyz(request: Request) -> JSONResponse:
        checks = await request.app.state.readiness()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_openapi(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(NulRefusalMiddleware)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    return app


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()
            HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - start)


def _nul_path(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_path(key, path) or _nul_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_path(item, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    return None


class NulRefusalMiddleware:
    """Refuses an operator's request (bearer token) with U+0000 in a query parameter or in a JSON
    body's text with 422 naming the field: no database stores it (PostgreSQL refuses it in text),
    so it is bad input, never a 500. Signed gateway requests keep their own handling."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not dict(scope["headers"]).get(b"authorization", b"").lower().startswith(
            b"bearer"
        ):
            await self.app(scope, receive, send)
            return
        # raw_path is optional in ASGI; "path" is already percent-decoded, so without raw_path the
        # text "%00" there is three characters, not U+0000.
        raw_path = scope.get("raw_path")
        if (raw_path is not None and b"%00" in raw_path) or "\x00" in scope["path"]:
            await _nul_problem("path")(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            from urllib.parse import parse_qsl

            names = [k for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if "\x00" in k + v]
            await _nul_problem(names[0] if names else "query")(scope, receive, send)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if b"\\u0000" in body:
            # The bytes \u0000 may also be text: a backslash written as \\ followed by "u0000".
            # Only a U+0000 in the parsed body is refused.
            try:
                field = _nul_path(orjson.loads(body), "")
            except orjson.JSONDecodeError:
                field = "body"
            if field is not None:
                await _nul_problem(field or "body")(scope, receive, send)
                return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _nul_problem(field: str) -> JSONResponse:
    return problem(
        422,
        "Invalid input",
        f"{field}: text must not contain the character U+0000",
        code="invalid_input",
        field=field,
        errors=[{"field": field, "message": "text must not contain the character U+0000"}],
    )


class BodyLimitMiddleware:
    """Refuses bodies over the limit with 413 before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        # bytes.isdigit is ASCII only; a length of more digits than any limit has is over it
        # without converting it (int() refuses more than 4,300 digits).
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and (len(declared) > 18 or int(declared) > self.max_bytes)
        ):
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.max_bytes)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return problem(
        413,
        "Payload too large",
        f"the body is larger than {limit} bytes",
        code="payload_too_large",
    )


class IdempotencyMiddleware:
    """POST with ``Idempotency-Key``: the first request runs, a repeat gets the stored answer.

    The key is reserved before the request runs, so two identical requests racing each other
    cannot both take effect; a repeat with a different body is refused.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._unsettled: dict[tuple[str, str], tuple[float, Database, int, bytes, str]] = {}
        self._settler: asyncio.Task[None] | None = None

    async def _settle(self, db: Database, owner: str, key: str, status: int, body: bytes, ctype: str) -> None:
        """Store the key's answer (or free the key after a failure). When the database is out of
        reach it is done later, by a task that tries every SETTLE_RETRY_S until it succeeds or the
        key's lease is over: the request's own answer is still sent (its effect, if any, committed),
        and a repeat meanwhile is 409 "in progress" for as long as the database is away, not for
        the whole lease."""
        try:
            await _settle(db, owner, key, status, body, ctype)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            log.warning("http.idempotency_settle_deferred", error=db_error_text(exc))
            given_up_at = time.monotonic() + IDEMPOTENCY_LEASE.total_seconds()
            self._unsettled[(owner, key)] = (given_up_at, db, status, body, ctype)
            if self._settler is None or self._settler.done():
                self._settler = asyncio.create_task(self._settle_later(), name="idempotency-settler")

    async def _settle_later(self) -> None:
        while self._unsettled:
            await asyncio.sleep(SETTLE_RETRY_S)
            for (owner, key), (given_up_at, db, status, body, ctype) in list(self._unsettled.items()):
                try:
                    await _settle(db, owner, key, status, body, ctype)
                except Exception as exc:
                    if is_unavailable(exc) and time.monotonic() < given_up_at:
                        continue  # past its lease a repeat takes the key over anyway
                    log.error("http.idempotency_settle_failed", error=db_error_text(exc))
                del self._unsettled[(owner, key)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        key = headers.get(b"idempotency-key")
        if key is None:
            await self.app(scope, receive, send)
            return
        key_s = key.decode("latin-1").strip()
        if not (1 <= len(key_s) <= 255):
            await problem(
                422,
                "Invalid input",
                "Idempotency-Key must be 1-255 characters",
                code="invalid_input",
                field="Idempotency-Key",
            )(scope, receive, send)
            return
        state = scope["app"].state
        try:
            principal = state.tokens.verify(headers.get(b"authorization", b"").decode("latin-1") or None)
        except AppError:
            await self.app(scope, receive, send)  # the route answers 401 itself
            return
        body = await _read_body(receive)
        fingerprint = hashlib.sha256(scope["method"].encode() + scope["path"].encode() + b"\n" + body).hexdigest()
        db: Database = state.db
        owner = principal.subject
        try:
            reserved = await _reserve(db, owner, key_s, fingerprint)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            await crash_problem(exc)(scope, receive, send)  # answered here: nothing ran
            return
        if reserved is not None:
            status, stored, stored_fp, stored_type = reserved
            if stored_fp != fingerprint:
                resp = problem(
                    422,
                    "Idempotency-Key reused",
                    "this Idempotency-Key was already used with a different request (the same bytes of the"
                    " same method and path are the same request): use a new key for a new request",
                    code="idempotency_key_reused",
                    field="Idempotency-Key",
                )
            elif status == 0:
                resp = problem(
                    409,
                    "Request in progress",
                    "a request with this Idempotency-Key is still being processed",
                    code="idempotency_in_progress",
                    retry_after_s=1,
                )
            else:
                resp = Response(
                    stored,
                    status_code=status,
                    media_type=stored_type,
                    headers={"Idempotent-Replay": "true"},
                )
            await resp(scope, receive, send)
            return

        # The answer is stored before it is sent: a client that repeats the request the moment it
        # has the answer must get the same answer, not "in progress".
        start: Message | None = None
        chunks: list[bytes] = []

        async def replay_receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            assert start is not None
            ctype = dict(start.get("headers", [])).get(b"content-type", b"application/json").decode("latin-1")
            await self._settle(db, owner, key_s, start["status"], b"".join(chunks), ctype)
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            await self._settle(db, owner, key_s, 500, b"", "")
            raise
        if start is None:  # the app answered nothing: free the key for a retry
            await self._settle(db, owner, key_s, 500, b"", "")


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


IDEMPOTENCY_LEASE = timedelta(seconds=120)
"""How long a key stays "in progress" (409 to a repeat) without an answer. A request that is still
running settles its key long before; one whose process was killed never does, and the first repeat
after the lease runs the request again instead of getting 409 for ever. A service whose effect must
never run twice records the key in the same transaction as its effect (resource-stockpile does)."""


SETTLE_RETRY_S = 0.5
"""How often a key whose answer could not be stored (the database was out of reach) is tried again."""


async def _reserve(db: Database, owner: str, key: str, fingerprint: str) -> tuple[int, str, str, str] | None:
    t = IDEMPOTENCY_KEYS
    now = datetime.now(UTC)
    async with db.engine.begin() as conn:
        res = await conn.execute(
            db.insert_ignore(t).values(
                principal=owner,
                key=key,
                fingerprint=fingerprint,
                status=0,
                body="",
                created_at=now,
            )
        )
        if res.rowcount == 1:
            return None
        row = (
            await conn.execute(
                select(t.c.status, t.c.body, t.c.fingerprint, t.c.content_type, t.c.created_at).where(
                    t.c.principal == owner, t.c.key == key
                )
            )
        ).one()
        if row.status == 0 and row.fingerprint == fingerprint and row.created_at < now - IDEMPOTENCY_LEASE:
            # Its request died with its process (a live one settles the key within the lease): this
            # repeat takes the reservation over, if no other repeat took it first.
            taken = await conn.execute(
                update(t)
                .where(t.c.principal == owner, t.c.key == key, t.c.status == 0, t.c.created_at == row.created_at)
                .values(created_at=now)
            )
            if taken.rowcount == 1:
                return None
        return int(row.status), row.body, row.fingerprint, row.content_type


async def _settle(db: Database, owner: str, key: str, status: int, body: bytes, content_type: str) -> None:
    t = IDEMPOTENCY_KEYS
    where = (t.c.principal == owner) & (t.c.key == key)
    async with db.engine.begin() as conn:
        if status >= 500 or status == 0:
            await conn.execute(delete(t).where(where))  # failed: the client may try again
        else:
            await conn.execute(
                update(t)
                .where(where)
                .values(status=status, body=body.decode("utf-8", "replace"), content_type=content_type)
            )


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


__all__ = [
    "create_app",
    "finish_openapi",
    "requires",
    "problem",
    "validation_problem",
    "json_response",
    "Principal",
    "Role",
    "TokenVerifier",
]
