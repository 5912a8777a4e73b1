"""ecs.web at its edges: the OpenAPI document finish_openapi makes of any spec (schemas hoisted
out of request bodies, the error statuses each method can answer, what the public routes keep),
a body that is not JSON at all, the exact problem+json of a refused U+0000 and of an unavailable
or crashed request, what an Idempotency-Key stores and for whom, the metrics of a crash, and the
default body limit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY
from pydantic import BaseModel, ValidationError
from sqlalchemy import event, insert, select, update
from structlog.testing import capture_logs

from ecs.auth import Principal, Role, TokenVerifier
from ecs.db import IDEMPOTENCY_KEYS, Database, new_metadata
from ecs.web import (
    IDEMPOTENCY_LEASE,
    PROBLEM_SCHEMA,
    BodyLimitMiddleware,
    IdempotencyMiddleware,
    NulRefusalMiddleware,
    create_app,
    finish_openapi,
    requires,
    validation_problem,
)

TOKENS = TokenVerifier("web-edges-test-secret-0123456789abcdef")
PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
ALWAYS = {"401", "403", "404", "422", "503"}
WRITE = ALWAYS | {"400", "409", "413", "415"}


def ok() -> dict[str, Any]:
    return {"responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {}}}}}}


def a_spec() -> dict[str, Any]:
    """A spec as FastAPI or a hand-written service could hand it over, with no components yet."""
    body_schema = {
        "type": "object",
        "properties": {
            "alarm": {"$ref": "#/components/schemas/Alarm"},
            "extra": {"anyOf": [{"type": "null"}, {"$defs": {"Deep": {"type": "integer"}}, "type": "object"}]},
        },
        "$defs": {
            "Alarm": {"type": "object", "$defs": {"Place": {"type": "string"}}},
            "Existing": {"title": "from the body"},
        },
    }
    return {
        "openapi": "3.1.0",
        "paths": {
            "/healthz": {"get": ok()},
            "/readyz": {"get": ok()},
            "/metrics": {"get": ok()},
            "/docs/oauth2-redirect": {"get": ok()},
            "/v1/things": {
                # path-level members that are not operations come first: they are skipped, not the end
                "summary": "things",
                "parameters": [{"name": "x", "in": "header"}],
                "x-owner": {"team": "ops"},
                "get": {
                    "responses": {
                        "200": {"description": "OK", "content": {"application/json": {"schema": {}}}},
                        "default": {"description": "anything else"},
                    }
                },
                "post": {
                    "requestBody": {"content": {"application/json": {"schema": body_schema}}},
                    "responses": {
                        "201": {"description": "Created"},
                        "409": {"description": "the version moved"},
                        "422": {"description": "Validation Error"},
                        "429": {},
                    },
                },
            },
            "/v1/things/{id}": {"put": ok(), "patch": ok(), "delete": ok()},
        },
    }


def test_finish_openapi_documents_the_errors_each_method_can_answer():
    spec = finish_openapi(a_spec())
    ops = spec["paths"]["/v1/things"]
    assert set(ops["get"]["responses"]) == {"200", "default"} | ALWAYS
    assert set(ops["post"]["responses"]) == {"201", "429"} | WRITE
    one = spec["paths"]["/v1/things/{id}"]
    assert set(one["put"]["responses"]) == {"200"} | WRITE
    assert set(one["patch"]["responses"]) == {"200"} | WRITE
    assert set(one["delete"]["responses"]) == {"200", "409"} | ALWAYS
    # the path-level members are left as they were
    assert ops["summary"] == "things" and ops["x-owner"] == {"team": "ops"}


def test_finish_openapi_answers_every_error_as_problem_json_and_leaves_successes_alone():
    spec = finish_openapi(a_spec())
    for path in ("/v1/things", "/v1/things/{id}"):
        for method, op in spec["paths"][path].items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for status, answer in op["responses"].items():
                if status.isdigit() and int(status) >= 400:
                    assert answer["content"] == PROBLEM_CONTENT, (path, method, status)
                else:
                    assert answer.get("content", {}) != PROBLEM_CONTENT, (path, method, status)
    get = spec["paths"]["/v1/things"]["get"]["responses"]
    assert get["200"]["content"] == {"application/json": {"schema": {}}}
    assert get["default"] == {"description": "anything else"}


def test_finish_openapi_describes_errors_keeping_a_description_of_their_own():
    post = finish_openapi(a_spec())["paths"]["/v1/things"]["post"]["responses"]
    assert post["409"]["description"] == "the version moved"
    assert post["422"]["description"] == "invalid input, naming each field"  # FastAPI's "Validation Error" replaced
    assert post["404"]["description"] == "no such object"
    assert post["413"]["description"] == "the body is larger than the limit"
    assert post["429"]["description"] == "error"  # a status without a text of its own
    assert post["201"] == {"description": "Created"}


def test_finish_openapi_leaves_the_public_routes_undocumented_but_readyz_may_be_503():
    paths = finish_openapi(a_spec())["paths"]
    for path in ("/healthz", "/metrics", "/docs/oauth2-redirect"):
        assert paths[path]["get"] == ok(), path
    readyz = paths["/readyz"]["get"]["responses"]
    assert set(readyz) == {"200", "503"}
    assert readyz["503"] == {} and readyz["200"] == ok()["responses"]["200"]


def test_finish_openapi_moves_nested_defs_into_components_without_overwriting():
    spec = a_spec()
    spec["components"] = {
        "schemas": {"Existing": {"title": "kept"}, "HTTPValidationError": {}, "ValidationError": {}},
    }
    schemas = finish_openapi(spec)["components"]["schemas"]
    assert schemas["Problem"] == PROBLEM_SCHEMA
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Existing"] == {"title": "kept"}
    assert schemas["Alarm"] == {"type": "object"}  # its own $defs moved out too
    assert schemas["Place"] == {"type": "string"}
    assert schemas["Deep"] == {"type": "integer"}  # from a schema inside a list (anyOf)
    body = spec["paths"]["/v1/things"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "$defs" not in body and "$defs" not in body["properties"]["extra"]["anyOf"][1]
    assert set(schemas) == {"Problem", "Existing", "Alarm", "Place", "Deep"}


def test_finish_openapi_of_a_bare_spec_adds_the_problem_schema():
    spec = finish_openapi({"openapi": "3.1.0"})
    assert spec["components"] == {"schemas": {"Problem": PROBLEM_SCHEMA}}
    only_components = finish_openapi({"components": {}})
    assert only_components["components"]["schemas"] == {"Problem": PROBLEM_SCHEMA}


def test_a_body_that_is_not_json_names_the_body_without_a_position_when_pydantic_gives_none():
    class Model(BaseModel):
        n: int

    try:
        Model.model_validate_json('{"n": 1,')
    except ValidationError as exc:
        errors = exc.errors()
    assert errors[0]["loc"] == ()
    body = orjson.loads(validation_problem(errors, prefix="alarm.").body)
    assert body["errors"] == [{"field": "alarm.body", "message": errors[0]["msg"]}]
    named = orjson.loads(validation_problem([{"type": "json_invalid", "loc": ("body",), "msg": "bad JSON"}]).body)
    assert named["errors"] == [{"field": "body", "message": "bad JSON"}]
    assert named["detail"] == "body: bad JSON"


# --- U+0000 ----------------------------------------------------------------------------------------


class Inner(BaseModel):
    label: str


class Body(BaseModel):
    name: str
    items: list[Inner]


@contextlib.asynccontextmanager
async def things(seen: list[Any]) -> AsyncIterator[httpx.AsyncClient]:
    router = APIRouter()

    @router.post("/things", status_code=201)
    async def add(body: Body, principal: Principal = requires(Role.DISPATCHER)) -> dict[str, str]:
        seen.append(body)
        return {"name": body.name}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tokens = TOKENS
        yield

    app = create_app(title="t", version="1", lifespan=lifespan, routers=[router])
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        yield client


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}", "Content-Type": "application/json"}


async def test_u0000_is_refused_as_invalid_input_with_the_whole_problem():
    seen: list[Any] = []
    async with things(seen) as client:
        r = await client.post("/things", content=b'{"name": "a\\u0000", "items": []}', headers=bearer())
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "urn:ecs:problem:invalid_input",
        "title": "Invalid input",
        "status": 422,
        "detail": "name: text must not contain the character U+0000",
        "field": "name",
        "errors": [{"field": "name", "message": "text must not contain the character U+0000"}],
    }
    assert seen == []


async def test_u0000_in_a_member_name_names_the_object_holding_it():
    seen: list[Any] = []
    async with things(seen) as client:
        r = await client.post(
            "/things", content=b'{"name": "a", "items": [{"label": "x", "b\\u0000d": 1}]}', headers=bearer()
        )
    assert r.status_code == 422 and r.json()["field"] == "items.0"
    assert seen == []


async def test_the_text_backslash_u0000_is_not_a_u0000_and_reaches_the_route():
    """The bytes \\u0000 of an escaped backslash followed by "u0000" are six characters of text,
    not U+0000: the route gets them unchanged (they used to be refused as U+0000)."""
    seen: list[Any] = []
    async with things(seen) as client:
        r = await client.post("/things", content=b'{"name": "C:\\\\u0000", "items": []}', headers=bearer())
    assert r.status_code == 201, r.text
    assert r.json() == {"name": "C:\\u0000"} and len(seen) == 1


async def test_u0000_in_a_body_that_is_a_bare_string_names_the_body():
    seen: list[Any] = []
    async with things(seen) as client:
        r = await client.post("/things", content=b'"a\\u0000"', headers=bearer())
    assert r.status_code == 422 and r.json()["field"] == "body"
    assert seen == []


# --- Idempotency-Key: what is stored, and for whom ---------------------------------------------


@contextlib.asynccontextmanager
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Database, list[str]]]:
    """An app over SQLite whose POST /seen reports the caller and its own key's stored status while
    it runs, and whose POST /raw answers bytes that are not UTF-8."""
    db = Database(f"sqlite:///{tmp_path / 'web.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(new_metadata().create_all)
    runs: list[str] = []
    router = APIRouter()

    @router.post("/seen", status_code=201)
    async def seen(request: Request, principal: Principal = requires(Role.DISPATCHER)) -> dict[str, Any]:
        runs.append(principal.subject)
        key = request.headers["idempotency-key"].strip()
        async with db.engine.connect() as conn:
            rows = (await conn.execute(select(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.key == key))).all()
        return {
            "caller": request.state.principal.subject,
            "stored": sorted((r.principal, r.status, r.body) for r in rows),
        }

    @router.post("/raw")
    async def raw(principal: Principal = requires(Role.DISPATCHER)) -> Response:
        runs.append(principal.subject)
        return Response(b"\xff ok", status_code=201, media_type="application/octet-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.db = db
        app.state.tokens = TOKENS
        yield

    app = create_app(title="t", version="1", lifespan=lifespan, routers=[router])
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
        ) as client,
    ):
        yield client, db, runs
    await db.dispose()


def as_(subject: str, key: str) -> dict[str, str]:
    return {**bearer_of(subject), "Idempotency-Key": key}


def bearer_of(subject: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS.issue(subject, ['dispatcher'])}", "Content-Type": "application/json"}


async def test_a_key_is_held_in_progress_while_its_request_runs_and_the_route_knows_its_caller(tmp_path):
    async with keyed(tmp_path) as (client, _, runs):
        first = await client.post("/seen", json={}, headers=as_("alice", "k-1"))
    assert first.status_code == 201
    assert first.json() == {"caller": "alice", "stored": [["alice", 0, ""]]}
    assert runs == ["alice"]


async def test_two_holders_of_the_same_key_each_get_their_own_answer_again(tmp_path):
    async with keyed(tmp_path) as (client, _, runs):
        alice = await client.post("/seen", json={}, headers=as_("alice", "k-1"))
        bob = await client.post("/seen", json={}, headers=as_("bob", "k-1"))
        assert bob.json()["caller"] == "bob" and "idempotent-replay" not in bob.headers
        alice_again = await client.post("/seen", json={}, headers=as_("alice", "k-1"))
        bob_again = await client.post("/seen", json={}, headers=as_("bob", "k-1"))
    assert alice_again.headers["Idempotent-Replay"] == "true" and alice_again.json() == alice.json()
    assert bob_again.headers["Idempotent-Replay"] == "true" and bob_again.json() == bob.json()
    assert runs == ["alice", "bob"]


async def test_taking_over_a_stale_key_leaves_another_holders_key_alone(tmp_path):
    body = b"{}"
    fingerprint = hashlib.sha256(b"POST/seen\n" + body).hexdigest()
    stale = datetime.now(UTC) - IDEMPOTENCY_LEASE - timedelta(seconds=5)
    async with keyed(tmp_path) as (client, db, runs):
        async with db.engine.begin() as conn:
            for holder in ("alice", "bob"):
                await conn.execute(
                    insert(IDEMPOTENCY_KEYS).values(
                        principal=holder, key="k-dead", fingerprint=fingerprint, status=0, body="",
                        created_at=stale,
                    )
                )  # fmt: skip
        taken = await client.post("/seen", content=body, headers=as_("alice", "k-dead"))
        assert taken.status_code == 201 and runs == ["alice"]
        assert taken.json()["stored"] == [["alice", 0, ""], ["bob", 0, ""]]
        async with db.engine.connect() as conn:
            bob = (await conn.execute(select(IDEMPOTENCY_KEYS).where(IDEMPOTENCY_KEYS.c.principal == "bob"))).one()
    assert bob.status == 0 and bob.created_at == stale


async def test_an_answer_that_is_not_utf8_is_stored_and_replayed_without_a_failure(tmp_path):
    async with keyed(tmp_path) as (client, _, runs):
        first = await client.post("/raw", json={}, headers=as_("alice", "k-raw"))
        again = await client.post("/raw", json={}, headers=as_("alice", "k-raw"))
    assert first.status_code == 201 and first.content == b"\xff ok"
    assert again.status_code == 201 and again.headers["Idempotent-Replay"] == "true"
    assert again.content == "\ufffd ok".encode() and again.headers["content-type"] == "application/octet-stream"
    assert runs == ["alice"]


async def test_a_body_whose_first_message_carries_no_body_member_is_read_whole():
    """ASGI lets an ``http.request`` message leave ``body`` out (it means b"")."""
    received: list[bytes] = []

    async def app(scope, receive, send):
        message = await receive()
        received.append(message["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    messages = [
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": b'{"a": "b"}', "more_body": False},
    ]

    async def receive():
        return messages.pop(0)

    sent: list[dict[str, Any]] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"authorization", f"Bearer {TOKENS.issue('alice', ['dispatcher'])}".encode())],
        "query_string": b"",
    }
    await NulRefusalMiddleware(app)(scope, receive, send)
    assert received == [b'{"a": "b"}'] and sent[0]["status"] == 201


# --- more of what a keyed request stores --------------------------------------------------------


async def test_a_key_is_trimmed_so_surrounding_spaces_name_the_same_key(tmp_path):
    async with keyed(tmp_path) as (client, _, runs):
        first = await client.post("/seen", json={}, headers=as_("alice", "  k-1 "))
        again = await client.post("/seen", json={}, headers=as_("alice", "k-1"))
    assert first.json()["stored"] == [["alice", 0, ""]]
    assert again.headers["Idempotent-Replay"] == "true" and again.json() == first.json()
    assert runs == ["alice"]


# --- the app's own answers ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def failing(strict: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app whose routes fail: a Transient, a lost database, a defect. ``strict``:
    an exception the app raises (again) after answering reaches the client, as the closing of
    the connection it causes in a real server would."""
    from sqlalchemy.exc import OperationalError

    from ecs.errors import Transient

    router = APIRouter()

    @router.get("/v1/transient")
    async def transient() -> None:
        raise Transient("the broker is restarting")

    @router.get("/v1/lost")
    async def lost() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    @router.get("/v1/bug")
    async def bug() -> None:
        raise ZeroDivisionError("a defect")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = create_app(title="t", version="1", lifespan=lifespan, routers=[router])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=strict)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def test_unavailable_and_crashed_requests_answer_the_whole_problem_and_log_it():
    async with failing() as client:
        with capture_logs() as logs:
            transient = await client.get("/v1/transient")
            lost = await client.get("/v1/lost")
            bug = await client.get("/v1/bug")
    assert transient.status_code == 503 and transient.json() == {
        "type": "urn:ecs:problem:unavailable",
        "title": "Try again",
        "status": 503,
        "detail": "the service is unavailable: the broker is restarting; nothing was changed",
        "retry_after_s": 1,
    }
    assert lost.status_code == 503 and lost.json() == {
        "type": "urn:ecs:problem:unavailable",
        "title": "Try again",
        "status": 503,
        "detail": "the database is out of reach; nothing was changed",
        "retry_after_s": 1,
    }
    assert transient.headers["retry-after"] == lost.headers["retry-after"] == "1"
    assert "retry-after" not in bug.headers
    assert bug.status_code == 500 and bug.json() == {
        "type": "urn:ecs:problem:500",
        "title": "Internal error",
        "status": 500,
        "detail": "the request failed; nothing was changed unless the response said so",
    }
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [
        ("http.unavailable", "warning"),
        ("http.database_unavailable", "warning"),
        ("http.unhandled", "error"),
    ]
    assert logs[0]["error"] == "the broker is restarting"
    assert "connection refused" in logs[1]["error"] and logs[2]["error"] == "a defect"


async def test_starlettes_own_refusals_are_problem_json():
    async with failing() as client:
        missing = await client.get("/v1/nowhere")
        wrong = await client.post("/v1/bug")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.json() == {"type": "urn:ecs:problem:404", "title": "Not Found", "status": 404, "detail": "Not Found"}
    assert wrong.status_code == 405 and wrong.json()["title"] == "Method Not Allowed"


async def test_metrics_count_a_crash_as_500_and_an_unknown_route_as_unmatched():
    def count(route: str, status: str) -> float:
        return (
            REGISTRY.get_sample_value("ecs_http_requests_total", {"method": "GET", "route": route, "status": status})
            or 0.0
        )

    def observed(route: str) -> float:
        return REGISTRY.get_sample_value("ecs_http_request_seconds_count", {"method": "GET", "route": route}) or 0.0

    before = (count("/v1/bug", "500"), count("unmatched", "404"), observed("/v1/bug"), observed("unmatched"))
    async with failing() as client:
        with capture_logs():
            await client.get("/v1/bug")
        await client.get("/v1/nowhere")
    after = (count("/v1/bug", "500"), count("unmatched", "404"), observed("/v1/bug"), observed("unmatched"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1, 1]


def test_the_document_carries_the_title_version_and_description_given():
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    app = create_app(title="intake", version="2.1", description="takes calls", lifespan=lifespan, routers=[])
    info = app.openapi()["info"]
    assert (info["title"], info["version"], info["description"]) == ("intake", "2.1", "takes calls")
    assert app.openapi() is app.openapi()  # made once


async def test_the_default_body_limit_is_4_mib():
    seen: list[Any] = []
    async with things(seen) as client:
        over = await client.post("/things", content=b" " * (4 * 1024 * 1024 + 1), headers=bearer())
        at = await client.post(
            "/things", content=b'{"name": "a", "items": []}' + b" " * (4 * 1024 * 1024 - 26), headers=bearer()
        )
    assert over.status_code == 413 and over.json()["detail"] == "the body is larger than 4194304 bytes"
    assert at.status_code == 201 and len(seen) == 1


async def test_u0000_from_a_caller_without_a_bearer_token_is_left_to_the_route():
    seen: list[Any] = []
    async with things(seen) as client:
        r = await client.post(
            "/things", content=b'{"name": "a\\u0000", "items": []}', headers={"Content-Type": "application/json"}
        )
        lower = await client.post(
            "/things",
            content=b'{"name": "a\\u0000", "items": []}',
            headers={**bearer(), "Authorization": bearer()["Authorization"].replace("Bearer", "bearer")},
        )
    assert r.status_code == 401  # the route's own refusal, not the U+0000 one
    assert lower.status_code == 422 and lower.json()["field"] == "name"


async def test_u0000_in_a_body_that_is_not_json_names_the_body():
    seen: list[Any] = []
    async with things(seen) as client:
        r = await client.post("/things", content=b'{"name": "a\\u0000", "items": [', headers=bearer())
    assert r.status_code == 422 and r.json()["field"] == "body" and seen == []


async def test_the_app_starts_and_stops_through_the_asgi_lifespan_as_a_server_runs_it():
    """A server sends the ``lifespan`` scope through every middleware: each lets it pass."""
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def readiness() -> dict[str, bool]:
            return {"database": True}

        app.state.readiness = readiness
        events.append("started")
        yield
        events.append("stopped")

    app = create_app(title="t", version="1", lifespan=lifespan, routers=[])
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    server = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, answers.put)
    )

    async def answer() -> str:
        """The app's next lifespan message, or the error the app failed with."""
        getter = asyncio.ensure_future(answers.get())
        done, _ = await asyncio.wait({getter, server}, return_when=asyncio.FIRST_COMPLETED)
        if getter not in done:
            getter.cancel()
            server.result()
        return getter.result()["type"]

    await inbox.put({"type": "lifespan.startup"})
    assert await answer() == "lifespan.startup.complete" and events == ["started"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/readyz")).json() == {"status": "ready", "checks": {"database": True}}
    await inbox.put({"type": "lifespan.shutdown"})
    assert await answer() == "lifespan.shutdown.complete"
    await server
    assert events == ["started", "stopped"]


def test_the_document_describes_the_ops_routes():
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield

    spec = create_app(title="t", version="1", lifespan=lifespan, routers=[]).openapi()
    assert "description" not in spec["info"]  # none given, none made up
    paths = spec["paths"]
    readiness = {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
        },
    }
    healthz, readyz, metrics = paths["/healthz"]["get"], paths["/readyz"]["get"], paths["/metrics"]["get"]
    assert [op["tags"] for op in (healthz, readyz, metrics)] == [["ops"]] * 3
    assert healthz["summary"] == "The process is alive"
    assert readyz["summary"] == "NATS and the database are reachable"
    assert metrics["summary"] == "Prometheus metrics"
    assert readyz["responses"]["200"]["content"] == {"application/json": {"schema": readiness}}
    assert readyz["responses"]["503"] == {
        "description": "not ready",
        "content": {"application/json": {"schema": readiness}},
    }
    assert metrics["responses"]["200"]["content"] == {"text/plain": {"schema": {"type": "string"}}}


# --- U+0000 in the path and the query, and what an operator's request hands on -----------------


def nul_guarded(reached: list[tuple[str, str, bytes]]) -> httpx.AsyncClient:
    """A client of a bare app behind the U+0000 refusal alone; the app records the method, the path
    and the body it read, and answers 200."""

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reached.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"reached"})

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=NulRefusalMiddleware(app)), base_url="http://t")


async def call_nul_guarded(scope: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One request straight through the U+0000 refusal, as a server hands it over: what the app
    received (each message) and what was sent back."""
    received: list[dict[str, Any]] = []
    queue = list(messages or [{"type": "http.request", "body": b"", "more_body": False}])

    async def app(scope, receive, send):
        received.append(await receive())
        if scope["method"] in ("POST", "PUT", "PATCH"):
            received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"reached"})

    async def receive():
        return queue.pop(0)

    sent: list[dict[str, Any]] = []

    async def send(message):
        sent.append(message)

    token = f"Bearer {TOKENS.issue('alice', ['dispatcher'])}".encode()
    await NulRefusalMiddleware(app)({"headers": [(b"authorization", token)], **scope}, receive, send)
    problem = orjson.loads(sent[1]["body"]) if sent[0]["status"] == 422 else None
    return {"received": received, "status": sent[0]["status"], "problem": problem}


async def test_an_operators_get_without_u0000_reaches_the_route_and_reads_its_body():
    reached: list[tuple[str, str, bytes]] = []
    async with nul_guarded(reached) as client:
        got = await client.get("/things/a", params={"q": "b"}, headers=bearer())
        gone = await client.request("DELETE", "/things/a", content=b'{"why": "dup"}', headers=bearer())
    assert got.status_code == 200 and got.text == "reached"
    assert gone.status_code == 200
    assert reached == [("GET", "/things/a", b""), ("DELETE", "/things/a", b'{"why": "dup"}')]


async def test_the_text_percent_00_in_a_path_is_not_a_u0000():
    """%2500 is the text "%00" (its % escaped): no U+0000 in the path, so it reaches the route."""
    reached: list[tuple[str, str, bytes]] = []
    async with nul_guarded(reached) as client:
        r = await client.get("/things/a%2500b", headers=bearer())
    assert r.status_code == 200 and reached == [("GET", "/things/a%00b", b"")]


async def test_u0000_in_a_put_or_patch_body_is_refused_as_in_a_post():
    reached: list[tuple[str, str, bytes]] = []
    async with nul_guarded(reached) as client:
        put = await client.put("/things/a", content=b'{"name": "a\\u0000"}', headers=bearer())
        patch = await client.patch("/things/a", content=b'{"items": [{"label": "\\u0000"}]}', headers=bearer())
        clean = await client.patch("/things/a", content=b'{"name": "a"}', headers=bearer())
    assert put.status_code == 422 and put.json()["field"] == "name"
    assert patch.status_code == 422 and patch.json()["field"] == "items.0.label"
    assert clean.status_code == 200 and reached == [("PATCH", "/things/a", b'{"name": "a"}')]


async def test_u0000_in_a_query_parameter_name_with_no_value_names_that_parameter():
    reached: list[tuple[str, str, bytes]] = []
    async with nul_guarded(reached) as client:
        bare = await client.get("/things?flag%00", headers=bearer())
        blank = await client.get("/things?x=1&tag%00=", headers=bearer())
    assert bare.status_code == 422 and bare.json()["field"] == "flag\x00"
    assert blank.status_code == 422 and blank.json()["field"] == "tag\x00"
    assert bare.json()["detail"] == "flag\x00: text must not contain the character U+0000"
    assert reached == []


async def test_u0000_as_a_raw_byte_in_the_query_or_a_decoded_path_without_raw_path_is_refused():
    """A server may hand over the query's bytes unescaped, and may give no raw_path (ASGI lets it)."""
    get = {"type": "http", "method": "GET", "path": "/things", "query_string": b""}
    raw_query = await call_nul_guarded({**get, "query_string": b"q=b\x00c"})
    assert raw_query["status"] == 422 and raw_query["problem"]["field"] == "q"
    for raw_path in ({}, {"raw_path": None}):
        path = await call_nul_guarded({**get, "path": "/things/a\x00b", **raw_path})
        assert path["status"] == 422 and path["problem"]["field"] == "path" and path["received"] == []


async def test_the_text_percent_00_in_a_decoded_path_without_raw_path_reaches_the_route():
    """Without raw_path the middleware sees only the decoded path, where "%00" is three characters
    of text (sent as %2500): it used to be refused as U+0000."""
    get = {"type": "http", "method": "GET", "path": "/things/100%00", "query_string": b""}
    for raw_path in ({}, {"raw_path": None}):
        reached = await call_nul_guarded({**get, **raw_path})
        assert reached["status"] == 200, reached


async def test_a_scope_without_a_query_string_is_a_request_without_a_query():
    scope = {"type": "http", "method": "GET", "path": "/things"}
    reached = await call_nul_guarded(scope)
    assert reached["status"] == 200
    assert reached["received"] == [{"type": "http.request", "body": b"", "more_body": False}]


async def test_the_route_gets_the_body_once_as_one_message_and_then_the_servers_own_messages():
    """The body read to look for U+0000 is handed on whole, once; what the server sends next (a
    disconnect) reaches the route as it was."""
    body = b'{"name": "a", "items": []}'
    scope = {"type": "http", "method": "POST", "path": "/things", "query_string": b""}
    messages = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.request", "body": body[5:], "more_body": False},
        {"type": "http.disconnect"},
    ]
    reached = await call_nul_guarded(scope, messages)
    assert reached["status"] == 200
    assert reached["received"] == [
        {"type": "http.request", "body": body, "more_body": False},
        {"type": "http.disconnect"},
    ]


# --- Idempotency-Key: its refusals, whole, and the answers a keyed app may give -------------------


async def test_the_idempotency_refusals_are_the_whole_problem(tmp_path):
    fingerprint = hashlib.sha256(b"POST/seen\n" + b"{}").hexdigest()
    async with keyed(tmp_path) as (client, db, runs):
        too_long = await client.post("/seen", content=b"{}", headers=as_("alice", "k" * 256))
        await client.post("/seen", content=b"{}", headers=as_("alice", "k-1"))
        reused = await client.post("/seen", content=b'{"x": 1}', headers=as_("alice", "k-1"))
        async with db.engine.begin() as conn:
            await conn.execute(
                insert(IDEMPOTENCY_KEYS).values(
                    principal="alice", key="k-busy", fingerprint=fingerprint, status=0, body="",
                    created_at=datetime.now(UTC),
                )
            )  # fmt: skip
        busy = await client.post("/seen", content=b"{}", headers=as_("alice", "k-busy"))
    assert (too_long.status_code, too_long.headers["content-type"]) == (422, "application/problem+json")
    assert too_long.json() == {
        "type": "urn:ecs:problem:invalid_input",
        "title": "Invalid input",
        "status": 422,
        "detail": "Idempotency-Key must be 1-255 characters",
        "field": "Idempotency-Key",
    }
    assert reused.status_code == 422 and reused.json() == {
        "type": "urn:ecs:problem:idempotency_key_reused",
        "title": "Idempotency-Key reused",
        "status": 422,
        "detail": "this Idempotency-Key was already used with a different request (the same bytes of the"
        " same method and path are the same request): use a new key for a new request",
        "field": "Idempotency-Key",
    }
    assert busy.status_code == 409 and busy.json() == {
        "type": "urn:ecs:problem:idempotency_in_progress",
        "title": "Request in progress",
        "status": 409,
        "detail": "a request with this Idempotency-Key is still being processed",
        "retry_after_s": 1,
    }
    assert busy.headers["retry-after"] == "1"
    assert runs == ["alice"]


@contextlib.asynccontextmanager
async def keys_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(new_metadata().create_all)
    yield db
    await db.dispose()


async def call_keyed(db: Database, app: Any, key: str = "k-1", body: bytes = b"{}") -> list[dict[str, Any]]:
    """One keyed POST straight through the Idempotency-Key handling, as a server hands it over;
    returns what was sent back."""
    token = f"Bearer {TOKENS.issue('alice', ['dispatcher'])}".encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/direct",
        "query_string": b"",
        "headers": [(b"authorization", token), (b"idempotency-key", key.encode())],
        "app": SimpleNamespace(state=SimpleNamespace(tokens=TOKENS, db=db)),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message):
        sent.append(message)

    await IdempotencyMiddleware(app)(scope, receive, send)
    return sent


async def stored_keys(db: Database) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(IDEMPOTENCY_KEYS).order_by(IDEMPOTENCY_KEYS.c.key))
        return [(r.key, r.status, r.body, r.content_type) for r in rows]


async def test_an_answer_in_parts_without_headers_or_body_members_is_sent_and_stored_whole(tmp_path):
    """ASGI lets a response start leave out ``headers`` and a body message leave out ``body``
    and ``more_body``; the route gets the request body as one final message."""
    received: list[dict[str, Any]] = []

    async def app(scope, receive, send):
        received.append(await receive())
        await send({"type": "http.response.debug", "info": {"template": "t"}})
        await send({"type": "http.response.start", "status": 201})
        await send({"type": "http.response.body", "body": b'{"a"', "more_body": True})
        await send({"type": "http.response.body", "body": b":1}", "more_body": True})
        await send({"type": "http.response.body"})

    async with keys_db(tmp_path) as db:
        first = await call_keyed(db, app)
        stored = await stored_keys(db)
        again = await call_keyed(db, app)
    assert received == [{"type": "http.request", "body": b"{}", "more_body": False}]  # ran once
    assert first == [
        {"type": "http.response.debug", "info": {"template": "t"}},
        {"type": "http.response.start", "status": 201},
        {"type": "http.response.body", "body": b'{"a":1}', "more_body": False},
    ]
    assert stored == [("k-1", 201, '{"a":1}', "application/json")]
    assert again[0]["status"] == 201 and b"".join(m.get("body", b"") for m in again[1:]) == b'{"a":1}'
    headers = dict(again[0]["headers"])
    assert headers[b"content-type"] == b"application/json" and headers[b"idempotent-replay"] == b"true"


async def test_an_app_that_answers_nothing_frees_its_key_for_a_retry(tmp_path):
    runs: list[bytes] = []

    async def app(scope, receive, send):
        runs.append((await receive())["body"])

    async with keys_db(tmp_path) as db:
        assert await call_keyed(db, app) == []
        assert await stored_keys(db) == []
        assert await call_keyed(db, app) == []
    assert runs == [b"{}", b"{}"]  # the retry ran again, not "in progress"


# --- Idempotency-Key: the lease of a key left in progress ----------------------------------------


def frozen_clock(monkeypatch: Any, now: datetime) -> None:
    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return now

    monkeypatch.setattr("ecs.web.datetime", Frozen)


async def reserve_stale(db: Database, key: str, created_at: datetime, body: bytes = b"{}") -> None:
    fingerprint = hashlib.sha256(b"POST/seen\n" + body).hexdigest()
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(IDEMPOTENCY_KEYS).values(
                principal="alice", key=key, fingerprint=fingerprint, status=0, body="", created_at=created_at
            )
        )


async def test_a_key_in_progress_for_exactly_the_lease_is_still_in_progress(tmp_path, monkeypatch):
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    frozen_clock(monkeypatch, now)
    async with keyed(tmp_path) as (client, db, runs):
        await reserve_stale(db, "k-at", now - IDEMPOTENCY_LEASE)
        await reserve_stale(db, "k-past", now - IDEMPOTENCY_LEASE - timedelta(microseconds=1))
        at = await client.post("/seen", content=b"{}", headers=as_("alice", "k-at"))
        past = await client.post("/seen", content=b"{}", headers=as_("alice", "k-past"))
    assert at.status_code == 409 and at.json()["type"] == "urn:ecs:problem:idempotency_in_progress"
    assert past.status_code == 201 and runs == ["alice"]


async def test_taking_over_a_stale_key_leaves_the_holders_other_stale_keys_alone(tmp_path):
    stale = datetime.now(UTC) - IDEMPOTENCY_LEASE - timedelta(seconds=5)
    async with keyed(tmp_path) as (client, db, runs):
        for key in ("k-a", "k-b"):
            await reserve_stale(db, key, stale)
        first = await client.post("/seen", content=b"{}", headers=as_("alice", "k-a"))
        second = await client.post("/seen", content=b"{}", headers=as_("alice", "k-b"))
    assert (first.status_code, second.status_code) == (201, 201) and runs == ["alice", "alice"]


def after_the_keys_are_read(db: Database, change: Any) -> None:
    """Runs ``change`` on the same connection right after the first read of the idempotency keys:
    what another request could do between that read and the take-over."""
    done: list[bool] = []

    @event.listens_for(db.engine.sync_engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):
        if not done and statement.lstrip().upper().startswith("SELECT") and "FROM idempotency_keys" in statement:
            done.append(True)
            conn.execute(change)


async def test_a_stale_key_settled_or_taken_by_another_request_meanwhile_is_not_run_again(tmp_path):
    stale = datetime.now(UTC) - IDEMPOTENCY_LEASE - timedelta(seconds=5)
    k = IDEMPOTENCY_KEYS.c
    for key, change in (
        ("k-settled", update(IDEMPOTENCY_KEYS).where(k.key == "k-settled").values(status=201, body="{}")),
        ("k-taken", update(IDEMPOTENCY_KEYS).where(k.key == "k-taken").values(created_at=datetime.now(UTC))),
    ):
        async with keyed(tmp_path / key) as (client, db, runs):
            await reserve_stale(db, key, stale)
            after_the_keys_are_read(db, change)
            r = await client.post("/seen", content=b"{}", headers=as_("alice", key))
        assert r.status_code == 409 and runs == [], key


# --- the body limit: how a declared length is read, and the refusal of a streamed body ----------


async def status_for_declared_length(declared: bytes, max_bytes: int = 20) -> int:
    """The status BodyLimitMiddleware gives a POST of ``{}`` whose Content-Length says ``declared``
    (201: let through to an app that accepts anything)."""

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[dict[str, Any]] = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", declared)]}
    await BodyLimitMiddleware(app, max_bytes=max_bytes)(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


async def test_a_declared_length_is_judged_by_its_value_up_to_18_digits_and_over_the_limit_beyond():
    """Leading zeros do not make a length larger; a length of more than 18 digits is over any limit
    without being converted."""
    assert await status_for_declared_length(b"2".zfill(18)) == 201
    assert await status_for_declared_length(b"2".zfill(19)) == 413


@pytest.mark.parametrize("declared", [b"9" * 5000, "²".encode(), b"21", b"-1", b"1e9"])
async def test_an_odd_or_huge_content_length_is_judged_without_a_crash(declared):
    """A declared length of thousands of digits is over any limit (413, no int() of it), and one
    that is not ASCII digits is left to the body's own count: never a 5xx."""
    assert await status_for_declared_length(declared) == (413 if declared in (b"9" * 5000, b"21") else 201)


async def test_a_streamed_body_over_the_limit_is_the_whole_problem_naming_the_limit():
    async def body() -> AsyncIterator[bytes]:
        for part in (b'{"name": "a", ', b'"items": []}', b" " * 40):
            yield part

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tokens = TOKENS
        yield

    router = APIRouter()
    seen: list[Body] = []

    @router.post("/things", status_code=201)
    async def add(body: Body, principal: Principal = requires(Role.DISPATCHER)) -> dict[str, str]:
        seen.append(body)
        return {"name": body.name}

    app = create_app(title="t", version="1", lifespan=lifespan, routers=[router], max_body_bytes=32)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        r = await client.post("/things", content=body(), headers=bearer())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "urn:ecs:problem:payload_too_large",
        "title": "Payload too large",
        "status": 413,
        "detail": "the body is larger than 32 bytes",
    }
    assert seen == []
