"""The HTTP app factory every service uses (ecs.web), on a small app of its own over SQLite:
health and readiness, problem+json answers, roles, Idempotency-Key (a repeat gets the stored answer,
accepted or refused, and says so), and the body limit."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import insert, select
from structlog.testing import capture_logs

from ecs.auth import Principal, Role, TokenVerifier
from ecs.db import IDEMPOTENCY_KEYS, Database, new_metadata
from ecs.errors import Conflict
from ecs.testing import eventually
from ecs.web import create_app, json_response, problem, requires, validation_problem

SECRET = "web-test-secret-0123456789abcdef"
PROBLEM = "application/problem+json"
TOKENS = TokenVerifier(SECRET)


class Add(BaseModel):
    n: int = Field(ge=0, le=1000)


class Counter:
    """The app's state: a number the POST adds to (13 is refused, 999 crashes)."""

    def __init__(self) -> None:
        self.total = 0
        self.runs = 0


def build(db: Database, counter: Counter, health: dict[str, bool], max_body_bytes: int = 4096) -> FastAPI:
    router = APIRouter()

    @router.post("/add")
    async def add(body: Add, principal: Principal = requires(Role.DISPATCHER)) -> Any:
        counter.runs += 1
        if body.n == 13:
            raise Conflict("13 is refused", total=counter.total)
        if body.n == 999:
            raise RuntimeError("the route crashed")
        counter.total += body.n
        return json_response({"total": counter.total, "by": principal.subject}, status=201)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def readiness() -> dict[str, bool]:
            return dict(health)

        app.state.db = db
        app.state.tokens = TOKENS
        app.state.readiness = readiness
        yield

    return create_app(title="web-test", version="1", lifespan=lifespan, routers=[router], max_body_bytes=max_body_bytes)


class Env:
    def __init__(self, client: httpx.AsyncClient, db: Database, counter: Counter, health: dict[str, bool]) -> None:
        self.client, self.db, self.counter, self.health = client, db, counter, health
        self.app: FastAPI | None = None

    async def add(self, n: int, key: str | None = None, subject: str = "alice", **headers: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {TOKENS.issue(subject, ['dispatcher'])}"}
        if key is not None:
            auth["Idempotency-Key"] = key
        return await self.client.post("/add", json={"n": n}, headers={**auth, **headers})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = Database(f"sqlite:///{tmp_path / 'web.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(new_metadata().create_all)
    counter, health = Counter(), {"nats": True, "database": True}
    app = build(db, counter, health)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://web"
        ) as client,
    ):
        found = Env(client, db, counter, health)
        found.app = app
        yield found
    await db.dispose()


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["type"] == f"urn:ecs:problem:{code}" and body["status"] == status
    assert body["title"] and body["detail"]
    return body


# --- health, readiness, metrics -----------------------------------------------------------------


async def test_healthz_and_readyz_tell_what_is_up(env):
    assert (await env.client.get("/healthz")).json() == {"status": "ok"}
    ready = await env.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"nats": True, "database": True}}
    env.health["database"] = False
    down = await env.client.get("/readyz")
    assert down.status_code == 503
    assert down.json() == {"status": "not ready", "checks": {"nats": True, "database": False}}
    env.health.update(database=True, nats=False)
    assert (await env.client.get("/readyz")).status_code == 503
    env.health["nats"] = True
    assert (await env.client.get("/readyz")).status_code == 200


async def test_metrics_count_requests_by_route_and_status(env):
    await env.add(1)
    metrics = await env.client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'ecs_http_requests_total{method="POST",route="/add",status="201"}' in metrics.text
    assert 'ecs_http_request_seconds_count{method="POST",route="/add"}' in metrics.text


# --- problem+json and roles ---------------------------------------------------------------------


async def test_refusals_are_problem_json(env):
    assert_problem(await env.client.get("/nowhere"), 404, "404")
    missing = assert_problem(await env.client.post("/add", json={"n": 1}), 401, "unauthorized")
    assert "bearer" in missing["detail"].lower()
    reader = {"Authorization": f"Bearer {TOKENS.issue('eve', ['auditor'])}"}
    forbidden = assert_problem(await env.client.post("/add", json={"n": 1}, headers=reader), 403, "forbidden")
    assert "dispatcher" in forbidden["detail"] and forbidden["title"] == "Missing role"
    invalid = assert_problem(await env.add(-1), 422, "invalid_input")
    assert invalid["errors"][0]["field"] == "n" and invalid["detail"].startswith("n: ")
    # A body that is not JSON is the body at fault, at a character (not a field named "8").
    broken = await env.client.post(
        "/add", content=b'{"n": 1,', headers={**signed_in(), "content-type": "application/json"}
    )
    broken = assert_problem(broken, 422, "invalid_input")
    assert broken["errors"] == [{"field": "body", "message": "JSON decode error at character 8"}], broken
    assert invalid["title"] == "Invalid input"
    conflict = assert_problem(await env.add(13), 409, "conflict")
    assert conflict["detail"] == "13 is refused" and conflict["total"] == 0
    with capture_logs() as logs:
        crash = assert_problem(await env.add(999), 500, "500")
    assert crash["title"] == "Internal error"
    assert [e["event"] for e in logs] == ["http.unhandled"] and "the route crashed" in logs[0]["error"]
    assert env.counter.runs == 2 and env.counter.total == 0


def test_problem_and_validation_problem_shapes():
    resp = problem(409, "Conflict", "it moved", code="stale_version", current_version=3)
    assert resp.status_code == 409 and resp.media_type == PROBLEM
    import orjson

    assert orjson.loads(resp.body) == {
        "type": "urn:ecs:problem:stale_version",
        "title": "Conflict",
        "status": 409,
        "detail": "it moved",
        "current_version": 3,
    }
    assert orjson.loads(problem(404, "Not found", "no such thing").body)["type"] == "urn:ecs:problem:404"
    errors = [{"loc": ("body", "a", 0), "msg": "bad"}, {"loc": ("query", "b"), "msg": "worse"}, {}]
    body = orjson.loads(validation_problem(errors, prefix="data.").body)
    assert body["status"] == 422 and body["type"] == "urn:ecs:problem:invalid_input"
    assert body["errors"] == [
        {"field": "data.a.0", "message": "bad"},
        {"field": "data.b", "message": "worse"},
        {"field": "data.body", "message": "invalid"},
    ]
    assert body["detail"] == "data.a.0: bad; data.b: worse; data.body: invalid"
    many = [{"loc": ("body", f"f{i}"), "msg": "m"} for i in range(7)]
    assert orjson.loads(validation_problem(many).body)["detail"].count(";") == 4  # five named in the detail


def test_json_response():
    resp = json_response({"a": 1}, status=202)
    assert (resp.status_code, resp.media_type, resp.body) == (202, "application/json", b'{"a":1}')
    assert json_response([1]).status_code == 200


# --- Idempotency-Key ----------------------------------------------------------------------------


async def test_an_accepted_request_repeated_gets_the_stored_answer(env):
    first = await env.add(5, key="k-1")
    assert first.status_code == 201 and first.json() == {"total": 5, "by": "alice"}
    assert "idempotent-replay" not in first.headers
    await env.add(100)  # the state moves on: a re-run would answer 105
    again = await env.add(5, key="k-1")
    assert again.status_code == 201 and again.headers["Idempotent-Replay"] == "true"
    assert again.json() == {"total": 5, "by": "alice"} and again.headers["content-type"] == "application/json"
    assert (env.counter.runs, env.counter.total) == (2, 105)


async def test_a_refused_request_repeated_gets_the_stored_refusal(env):
    first = assert_problem(await env.add(13, key="k-13"), 409, "conflict")
    await env.add(7)
    again = await env.add(13, key="k-13")
    assert again.status_code == 409 and again.headers["Idempotent-Replay"] == "true"
    assert again.headers["content-type"].startswith(PROBLEM) and again.json() == first  # total was 0, not 7
    invalid = assert_problem(await env.add(-1, key="k-bad"), 422, "invalid_input")
    replay = await env.add(-1, key="k-bad")
    assert replay.headers["Idempotent-Replay"] == "true" and replay.json() == invalid
    assert env.counter.runs == 2


async def test_each_key_keeps_its_own_answer(env):
    first = await env.add(5, key="k-a")
    second = await env.add(6, key="k-b")
    assert (first.json()["total"], second.json()["total"]) == (5, 11)
    assert (await env.add(5, key="k-a")).json() == first.json()
    assert (await env.add(6, key="k-b")).json() == second.json()


async def test_a_keyed_body_sent_in_chunks_is_read_whole(env):
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"n"', b": 4", b"2}"):
            yield part

    headers = {
        "Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}",
        "Idempotency-Key": "k-chunks",
        "Content-Type": "application/json",
    }
    first = await env.client.post("/add", content=chunks(), headers=headers)
    assert first.status_code == 201 and first.json()["total"] == 42
    again = await env.client.post("/add", content=chunks(), headers=headers)
    assert again.headers["Idempotent-Replay"] == "true" and again.json() == first.json()
    assert env.counter.runs == 1


async def test_a_key_reused_for_another_request_is_422_and_keys_belong_to_their_holder(env):
    await env.add(5, key="k-1")
    assert_problem(await env.add(6, key="k-1"), 422, "idempotency_key_reused")
    theirs = await env.add(6, key="k-1", subject="bob")
    assert theirs.status_code == 201 and "idempotent-replay" not in theirs.headers
    assert env.counter.total == 11


async def test_a_crashed_request_frees_its_key_for_a_retry(env):
    with capture_logs():
        assert_problem(await env.add(999, key="k-crash"), 500, "500")
        again = await env.add(999, key="k-crash")
    assert again.status_code == 500 and "idempotent-replay" not in again.headers
    assert env.counter.runs == 2
    async with env.db.engine.connect() as conn:
        assert (await conn.execute(select(IDEMPOTENCY_KEYS))).all() == []


async def test_a_request_still_running_under_the_key_is_409_in_progress(env):
    body = b'{"n":5}'
    fingerprint = hashlib.sha256(b"POST/add\n" + body).hexdigest()
    async with env.db.engine.begin() as conn:
        await conn.execute(
            insert(IDEMPOTENCY_KEYS).values(
                principal="alice", key="k-busy", fingerprint=fingerprint, status=0, body="",
                created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    headers = {
        "Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}",
        "Idempotency-Key": "k-busy",
        "Content-Type": "application/json",
    }
    resp = await env.client.post("/add", content=body, headers=headers)
    assert_problem(resp, 409, "idempotency_in_progress")
    assert env.counter.runs == 0


async def test_a_key_left_in_progress_by_a_killed_process_is_taken_over_after_the_lease(env):
    """The process that reserved the key was killed mid-request: after the lease a repeat runs the
    request (once, even when two repeats race), instead of 409 for ever; within the lease it is 409."""
    from ecs.web import IDEMPOTENCY_LEASE

    body = b'{"n":5}'
    fingerprint = hashlib.sha256(b"POST/add\n" + body).hexdigest()
    stale = datetime.now(UTC) - IDEMPOTENCY_LEASE - timedelta(seconds=1)
    async with env.db.engine.begin() as conn:
        await conn.execute(
            insert(IDEMPOTENCY_KEYS).values(
                principal="alice", key="k-dead", fingerprint=fingerprint, status=0, body="", created_at=stale,
            )
        )  # fmt: skip
    headers = {
        "Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}",
        "Idempotency-Key": "k-dead",
        "Content-Type": "application/json",
    }
    first, second = await asyncio.gather(
        env.client.post("/add", content=body, headers=headers), env.client.post("/add", content=body, headers=headers)
    )
    assert sorted([first.status_code, second.status_code]) in ([201, 201], [201, 409]), (first.text, second.text)
    assert env.counter.runs == 1 and env.counter.total == 5
    again = await env.client.post("/add", content=body, headers=headers)
    assert again.status_code == 201 and again.headers["Idempotent-Replay"] == "true"


async def test_the_key_is_1_to_255_characters(env):
    for key in ("", "   ", "k" * 256):
        refused = assert_problem(await env.add(1, key=key), 422, "invalid_input")
        assert refused["field"] == "Idempotency-Key"
    assert (await env.add(1, key="k" * 255)).status_code == 201
    assert (await env.add(1, key="k")).status_code == 201
    assert env.counter.runs == 2


async def test_a_keyed_request_without_a_valid_token_is_answered_by_the_route_and_not_stored(env):
    resp = await env.client.post("/add", json={"n": 1}, headers={"Idempotency-Key": "k-anon"})
    assert_problem(resp, 401, "unauthorized")
    assert (await env.add(1, key="k-anon")).status_code == 201  # a fresh request, not a replay
    async with env.db.engine.connect() as conn:
        assert [r.principal for r in await conn.execute(select(IDEMPOTENCY_KEYS))] == ["alice"]


async def test_only_post_is_idempotent(env):
    headers = {"Idempotency-Key": "k-get"}
    assert (await env.client.get("/healthz", headers=headers)).status_code == 200
    assert "idempotent-replay" not in (await env.client.get("/healthz", headers=headers)).headers


# --- the body limit -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def limited_app(tmp_path: Path, counter: Counter, limit: int) -> AsyncIterator[httpx.AsyncClient]:
    db = Database(f"sqlite:///{tmp_path / 'web.db'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(new_metadata().create_all)
    app = build(db, counter, {"nats": True, "database": True}, max_body_bytes=limit)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://web"
        ) as client,
    ):
        yield client
    await db.dispose()


HEADERS = {"Content-Type": "application/json"}


def signed_in() -> dict[str, str]:
    return {**HEADERS, "Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}"}


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_body_over_the_limit_is_413(tmp_path):
    counter = Counter()
    async with limited_app(tmp_path, counter, 20) as client:
        exact = b'{"n": 1}' + b" " * 12  # 20 bytes: at the limit
        assert (await client.post("/add", content=exact, headers=signed_in())).status_code == 201
        big = b'{"n": 1}' + b" " * 13
        too_large = assert_problem(
            await client.post("/add", content=big, headers=signed_in()), 413, "payload_too_large"
        )
        assert too_large["detail"] == "the body is larger than 20 bytes" and too_large["title"] == "Payload too large"
        fits = await client.post("/add", content=chunks(b'{"n": 2}', b" " * 6, b" " * 6), headers=signed_in())
        assert fits.status_code == 201
    assert counter.runs == 2 and counter.total == 3


async def test_a_streamed_body_over_the_limit_is_413(tmp_path):
    counter = Counter()
    async with limited_app(tmp_path, counter, 20) as client:
        streamed = await client.post("/add", content=chunks(b'{"n": 1}', b" " * 8, b" " * 8), headers=signed_in())
        assert counter.runs == 0
        assert_problem(streamed, 413, "payload_too_large")


async def test_an_error_whose_details_name_a_problem_member_keeps_them_under_context():
    answer = problem(409, "Conflict", "the shelter is closing", "conflict", status="closing", field="status")
    body = orjson.loads(answer.body)
    assert body["status"] == 409 and body["context"] == {"status": "closing"} and body["field"] == "status"


async def test_a_lost_database_answers_503_and_a_transient_failure_too():
    from tests.unit.test_platform_web_edges import failing

    async with failing() as c:
        for path in ("/v1/transient", "/v1/lost"):
            r = await c.get(path)
            assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert "nothing was changed" in r.json()["detail"]
        assert (await c.get("/v1/bug")).status_code == 500


# --- the database lost around a keyed request ---------------------------------------------------


def lost_database() -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def failing_once(real: Any, calls: list[tuple[Any, ...]]) -> Any:
    """``real`` (ecs.web's _reserve or _settle), failing its first call as a lost database."""

    async def call(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise lost_database()
        return await real(*args)

    return call


async def test_a_database_error_a_route_raises_is_answered_not_raised_again():
    """An error only the catch-all handler answered was raised again after its answer, and the
    server closed the connection: the client's next request on it went unanswered. The in-memory
    transport shows it as the app raising."""
    from tests.unit.test_platform_web_edges import failing

    async with failing(strict=True) as client:
        with capture_logs():
            answer = await client.get("/v1/lost")
    assert_problem(answer, 503, "unavailable")
    assert answer.headers["retry-after"] == "1"


async def test_a_key_that_cannot_be_reserved_for_a_lost_database_is_503_and_nothing_runs(env, monkeypatch):
    import ecs.web

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ecs.web, "_reserve", failing_once(ecs.web._reserve, calls))
    headers = {"Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}", "Idempotency-Key": "k-lost"}
    strict = httpx.ASGITransport(app=env.app, raise_app_exceptions=True)  # an error raised again shows
    async with httpx.AsyncClient(transport=strict, base_url="http://web") as client:
        with capture_logs():
            first = await client.post("/add", json={"n": 5}, headers=headers)
    assert_problem(first, 503, "unavailable")
    assert env.counter.runs == 0
    again = await env.add(5, key="k-lost")  # the database is back: the request runs
    assert again.status_code == 201 and env.counter.total == 5


async def test_an_answer_that_cannot_be_stored_is_still_sent_and_stored_once_the_database_is_back(env, monkeypatch):
    """The request committed its effect, then the database went away before its answer was stored:
    the answer was a 503 "nothing was changed" (untrue), and the key stayed "in progress" for the
    whole lease. Now the true answer is sent and stored as soon as the database answers again."""
    import ecs.web

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ecs.web, "_settle", failing_once(ecs.web._settle, calls))
    monkeypatch.setattr(ecs.web, "SETTLE_RETRY_S", 0.01)
    with capture_logs() as logs:
        first = await env.add(7, key="k-late")
    assert first.status_code == 201, first.text
    assert first.json() == {"total": 7, "by": "alice"}
    assert [e["event"] for e in logs] == ["http.idempotency_settle_deferred"]

    async def replayed() -> httpx.Response | None:
        r = await env.add(7, key="k-late")
        return r if r.headers.get("idempotent-replay") == "true" else None

    repeat = await eventually(replayed, what="the stored answer replayed")
    assert repeat.status_code == 201 and repeat.json() == first.json()
    assert env.counter.runs == 1 and env.counter.total == 7


async def test_a_failed_request_whose_key_cannot_be_freed_frees_it_once_the_database_is_back(env, monkeypatch):
    import ecs.web

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(ecs.web, "_settle", failing_once(ecs.web._settle, calls))
    monkeypatch.setattr(ecs.web, "SETTLE_RETRY_S", 0.01)
    with capture_logs():
        assert_problem(await env.add(999, key="k-crash-lost"), 500, "500")

    async def freed() -> bool:
        async with env.db.engine.connect() as conn:
            return (await conn.execute(select(IDEMPOTENCY_KEYS))).all() == []

    await eventually(freed, what="the key freed")
    with capture_logs():
        await env.add(999, key="k-crash-lost")
    assert env.counter.runs == 2  # the retry ran, not 409 "in progress"
