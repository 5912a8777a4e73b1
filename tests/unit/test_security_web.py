"""ecs.web's refusals of text no database stores (U+0000), and the OpenAPI it finishes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from openapi_spec_validator import validate
from pydantic import BaseModel

from ecs.auth import Principal, Role, TokenVerifier
from ecs.web import create_app, requires

TOKENS = TokenVerifier("web-security-test-secret-0123456789")


class Inner(BaseModel):
    label: str


class Body(BaseModel):
    name: str
    items: list[Inner]


def build(seen: list[Any]) -> FastAPI:
    router = APIRouter()

    @router.post("/things", status_code=201)
    async def add(body: Body, principal: Principal = requires(Role.DISPATCHER)) -> dict[str, str]:
        seen.append(body)
        return {"name": body.name}

    @router.get("/things/{thing_id}")
    async def one(thing_id: str, q: str = "", principal: Principal = requires(Role.DISPATCHER)) -> dict[str, str]:
        seen.append(thing_id)
        return {"id": thing_id}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tokens = TOKENS

        async def readiness() -> dict[str, bool]:
            return {"ok": True}

        app.state.readiness = readiness
        yield

    return create_app(title="t", version="1", lifespan=lifespan, routers=[router])


HEADERS = {"Authorization": f"Bearer {TOKENS.issue('alice', ['dispatcher'])}"}


async def test_text_with_u0000_is_refused_naming_the_field_and_nothing_runs():
    seen: list[Any] = []
    app = build(seen)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        r = await client.post("/things", content=b'{"name": "a", "items": [{"label": "x\\u0000y"}]}', headers=HEADERS)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["field"] == "items.0.label"
        r = await client.get("/things/a", params={"q": "b\x00"}, headers=HEADERS)
        assert r.status_code == 422 and r.json()["field"] == "q"
        r = await client.get("/things/a%00b", headers=HEADERS)
        assert r.status_code == 422 and r.json()["field"] == "path"
        assert seen == []
        r = await client.post("/things", json={"name": "a", "items": [{"label": "xy"}]}, headers=HEADERS)
        assert r.status_code == 201 and len(seen) == 1


def test_the_finished_openapi_validates_and_documents_problem_errors():
    spec = build([]).openapi()
    validate(spec)
    add = spec["paths"]["/things"]["post"]
    assert {"400", "401", "403", "404", "409", "413", "415", "422", "503"} <= set(add["responses"])
    for status, answer in add["responses"].items():
        if int(status) >= 400:
            assert answer["content"] == {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            }
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "Inner" in spec["components"]["schemas"]
