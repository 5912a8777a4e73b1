"""dispatch's refusals, one parametrised test per promise over every endpoint it covers, on both
stores (SQLite and PostgreSQL) with a real nats-server:

- every POST with an ``Idempotency-Key`` gets its STORED answer on a repeat, accepted or refused,
  marked ``Idempotent-Replay: true``, though the state changed meanwhile so that a re-run would
  answer differently, and the repeat changes nothing;
- every unit change made on a version the operator saw answers 409 ``stale_version`` when the unit
  moved on, and changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from dispatch.domain import UnitStatus
from ecs.bus import Bus
from ecs.testing import eventually
from ecs.vocabulary import Stage
from tests.integration.test_dispatch_service import Intake, new_incident, unit

PROBLEM = "application/problem+json"


@dataclass
class World:
    """The running dispatch, an operator's headers, and intake playing its part on NATS."""

    api: httpx.AsyncClient
    headers: dict[str, str]
    intake: Intake

    async def post(self, path: str, body: dict[str, Any] | None, key: str | None = None) -> httpx.Response:
        headers = {**self.headers, **({"Idempotency-Key": key} if key else {})}
        return await self.api.post(path, json=body, headers=headers)

    async def ok(self, method: str, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
        resp = await self.api.request(method, path, json=body, headers=self.headers)
        assert resp.status_code == status, resp.text
        return resp.json() if resp.content else None

    async def incident(self, stage: Stage = Stage.isolation) -> str:
        """An incident dispatch knows about (intake's event, consumed)."""
        incident_id = new_incident()
        await self.intake.stage_to(incident_id, stage.value)

        async def known() -> bool:
            return (await self.api.get(f"/v1/incidents/{incident_id}", headers=self.headers)).status_code == 200

        await eventually(known, f"dispatch knows incident {incident_id}")
        return incident_id

    async def state(self) -> dict[str, Any]:
        """Everything an operator can see of units and the incidents' assignments."""
        units = await self.ok("GET", "/v1/units?limit=500")
        return {"units": units}


@pytest.fixture
async def world(dispatch_app, db_url, nats_private, operator_headers):
    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    async with dispatch_app(db_url, min_cover=0, automatic=False) as (_, api):
        yield World(api, operator_headers("dispatcher"), Intake(bus))
    await bus.close()


def assert_problem(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    if code is not None:
        assert resp.json()["type"] == f"urn:ecs:problem:{code}", resp.json()
    return resp.json()


# --- Idempotency-Key on every POST --------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """One POST endpoint, in two situations.

    ``refused(world)`` sets up a request the endpoint refuses and returns (path, body, status,
    fix); after ``fix()`` a re-run of that request would be accepted. ``accepted(world)`` sets up a
    request the endpoint accepts and returns (path, body, status); a re-run of it after it was
    accepted would answer differently."""

    name: str
    refused: Callable[[World], Awaitable[tuple[str, Any, int, Callable[[], Awaitable[None]]]]]
    accepted: Callable[[World], Awaitable[tuple[str, Any, int]]]


async def register_refused(w: World):
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)

    async def fix() -> None:
        await w.ok("DELETE", "/v1/units/fe-1", status=204)

    return "/v1/units", unit("fe-1", "fire_engine"), 409, fix  # already on the roster


async def register_accepted(w: World):
    return "/v1/units", unit("fe-2", "fire_engine"), 201  # a re-run: 409, already on the roster


async def batch_refused(w: World):
    refused, body, status, fix = await register_refused(w)
    return "/v1/units:batch", {"units": [unit("fe-3", "fire_engine"), body]}, status, fix


async def batch_accepted(w: World):
    return "/v1/units:batch", {"units": [unit("fe-4", "fire_engine"), unit("pc-4", "patrol_car")]}, 201


async def status_refused(w: World):
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)

    async def fix() -> None:  # the unit reaches the version the request names
        await w.ok("PATCH", "/v1/units/fe-1", {"version": 1, "district": "jingan"})

    return "/v1/units/fe-1/status", {"status": UnitStatus.OUT_OF_SERVICE.value, "version": 2}, 409, fix


async def status_accepted(w: World):
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    return "/v1/units/fe-1/status", {"status": UnitStatus.OUT_OF_SERVICE.value, "version": 1}, 200


async def assign_refused(w: World):
    incident = await w.incident()
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    await w.ok("POST", "/v1/units/fe-1/status", {"status": UnitStatus.OUT_OF_SERVICE.value})

    async def fix() -> None:
        await w.ok("POST", "/v1/units/fe-1/status", {"status": UnitStatus.AVAILABLE.value})

    return f"/v1/incidents/{incident}/assignments", {"unit_ids": ["fe-1"], "reason": "nearest"}, 409, fix


async def assign_accepted(w: World):
    incident = await w.incident()
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    return f"/v1/incidents/{incident}/assignments", {"unit_ids": ["fe-1"], "reason": "nearest"}, 201


async def recommended_refused(w: World):
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    incident = new_incident()  # not known to dispatch yet: 404

    async def fix() -> None:
        await w.intake.stage_to(incident, Stage.isolation.value)

        async def known() -> bool:
            return (await w.api.get(f"/v1/incidents/{incident}", headers=w.headers)).status_code == 200

        await eventually(known, "the incident reached dispatch")

    return f"/v1/incidents/{incident}/assignments:recommended", None, 404, fix


async def recommended_accepted(w: World):
    incident = await w.incident()
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    return f"/v1/incidents/{incident}/assignments:recommended", None, 201  # a re-run finds fe-1 taken


async def _assignment(w: World) -> int:
    incident = await w.incident()
    await w.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    made = await w.ok("POST", f"/v1/incidents/{incident}/assignments", {"unit_ids": ["fe-1"], "reason": "r"}, 201)
    return int(made["assignments"][0]["id"])


async def release_refused(w: World):
    assignment = await _assignment(w)

    async def fix() -> None:  # nothing makes an empty reason acceptable; the state still changes
        await w.ok("POST", "/v1/units/fe-1/status", {"status": UnitStatus.EN_ROUTE.value})

    return f"/v1/assignments/{assignment}/release", {"reason": ""}, 422, fix


async def release_accepted(w: World):
    assignment = await _assignment(w)
    return f"/v1/assignments/{assignment}/release", {"reason": "stood down"}, 200  # a re-run: 409, ended


async def reassign_refused(w: World):
    assignment = await _assignment(w)
    other = new_incident()  # not known to dispatch yet: 404

    async def fix() -> None:
        await w.intake.stage_to(other, Stage.isolation.value)

        async def known() -> bool:
            return (await w.api.get(f"/v1/incidents/{other}", headers=w.headers)).status_code == 200

        await eventually(known, "the other incident reached dispatch")

    return f"/v1/assignments/{assignment}/reassign", {"incident_id": other, "reason": "worse"}, 404, fix


async def reassign_accepted(w: World):
    assignment = await _assignment(w)
    other = await w.incident()
    return f"/v1/assignments/{assignment}/reassign", {"incident_id": other, "reason": "worse"}, 201  # re-run: 409


POSTS = [
    Post("register", register_refused, register_accepted),
    Post("batch", batch_refused, batch_accepted),
    Post("status", status_refused, status_accepted),
    Post("assign", assign_refused, assign_accepted),
    Post("recommended", recommended_refused, recommended_accepted),
    Post("release", release_refused, release_accepted),
    Post("reassign", reassign_refused, reassign_accepted),
]


@pytest.mark.parametrize("post", POSTS, ids=[p.name for p in POSTS])
async def test_a_refused_post_repeated_gets_the_stored_refusal(world, post):
    path, body, status, fix = await post.refused(world)
    key = f"refused-{post.name}-{time.time_ns()}"
    first = assert_problem(await world.post(path, body, key), status)
    await fix()  # a re-run would now be accepted
    before = await world.state()
    again = await world.post(path, body, key)
    assert again.status_code == status and again.headers.get("Idempotent-Replay") == "true"
    assert again.headers["content-type"].startswith(PROBLEM)
    assert again.json() == first
    assert await world.state() == before


@pytest.mark.parametrize("post", POSTS, ids=[p.name for p in POSTS])
async def test_an_accepted_post_repeated_gets_the_stored_answer_and_changes_nothing(world, post):
    path, body, status = await post.accepted(world)
    key = f"accepted-{post.name}-{time.time_ns()}"
    first = await world.post(path, body, key)
    assert first.status_code == status, first.text
    assert first.headers.get("Idempotent-Replay") is None
    after = await world.state()
    again = await world.post(path, body, key)
    assert again.status_code == status and again.headers.get("Idempotent-Replay") == "true"
    assert again.json() == first.json()
    assert await world.state() == after


# --- stale versions -----------------------------------------------------------------------------

UNIT_CHANGES = {
    "roster fields": ("PATCH", "/v1/units/fe-1", {"callsign": "Engine 1"}),
    "status": ("POST", "/v1/units/fe-1/status", {"status": UnitStatus.OUT_OF_SERVICE.value}),
}


@pytest.mark.parametrize("change", sorted(UNIT_CHANGES))
async def test_a_unit_change_on_a_version_the_unit_left_is_409_stale_version_and_changes_nothing(world, change):
    method, path, fields = UNIT_CHANGES[change]
    seen = await world.ok("POST", "/v1/units", unit("fe-1", "fire_engine"), 201)
    moved = await world.ok("PATCH", "/v1/units/fe-1", {"version": seen["version"], "district": "jingan"})
    before = await world.state()

    resp = await world.api.request(method, path, json={**fields, "version": seen["version"]}, headers=world.headers)
    problem = assert_problem(resp, 409, "stale_version")
    assert problem["current_version"] == moved["version"]
    assert await world.state() == before

    # The same change on the version the unit has now goes through: only the version was wrong.
    await world.ok(method, path, {**fields, "version": moved["version"]})


async def test_a_plan_published_on_a_version_another_commander_replaced_is_409_stale_version(world, operator_headers):
    commander = operator_headers("commander")
    yaml_headers = {**commander, "Content-Type": "application/yaml"}
    original = (await world.api.get("/v1/plans/fire", headers={**commander, "Accept": "application/yaml"})).text
    mine = original.replace("version: 1", "version: 2").replace("isolation_radius_m: 300", "isolation_radius_m: 350")
    theirs = original.replace("version: 1", "version: 2").replace("isolation_radius_m: 300", "isolation_radius_m: 400")
    assert (await world.api.put("/v1/plans/fire", content=theirs, headers=yaml_headers)).status_code == 200
    before = (await world.api.get("/v1/plans/fire", headers=commander)).json()

    problem = assert_problem(
        await world.api.put("/v1/plans/fire", content=mine, headers=yaml_headers), 409, "stale_version"
    )
    assert problem["detail"]
    assert (await world.api.get("/v1/plans/fire", headers=commander)).json() == before
    versions = (await world.api.get("/v1/plans/fire/versions", headers=commander)).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]

    # On the version active now, the same change goes through.
    resp = await world.api.put("/v1/plans/fire", content=mine.replace("version: 2", "version: 3"), headers=yaml_headers)
    assert resp.status_code == 200 and resp.json()["levels"]["II"]["isolation_radius_m"] == 350
