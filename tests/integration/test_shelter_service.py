"""shelter-registry in-process against a real nats-server and a real database (both stores):
shelters and their status machine, households placed whole, check-in and check-out with history,
the reunification search, the dashboards and every bad input of the issue, as a shelter manager
and a relative would see them. The races are in test_shelter_concurrency.py (PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from ecs.auth import TokenVerifier
from ecs.bus import Bus
from ecs.testing import NatsServer
from tests.conftest import AUTH_SECRET

CENTRE = (31.2304, 121.4737)  # People's Square, Huangpu
KM = 1 / 111.2


@pytest.fixture
def shelter_app(nats_private: NatsServer) -> Callable[..., Any]:
    """Run shelter-registry in this process: ``async with shelter_app(database_url) as (app, client, bus)``."""

    @contextlib.asynccontextmanager
    async def run(database_url: str, **overrides: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Bus]]:
        from shelter_registry.main import build_app
        from shelter_registry.settings import ShelterSettings

        settings = ShelterSettings(
            database_url=database_url,
            nats_url=nats_private.url,
            auth_secret=AUTH_SECRET,
            log_level="WARNING",
            **overrides,
        )
        app = build_app(settings)
        bus = Bus(nats_private.url, "test")
        await bus.connect()
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shelter") as client,
            ):
                yield app, client, bus
        finally:
            await bus.close()

    return run


def auth(*roles: str, subject: str = "manager-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {TokenVerifier(AUTH_SECRET).issue(subject, list(roles) or ['shelter_manager'])}"}


async def test_the_service_answers_health_readiness_and_metrics(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, _bus):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert (await client.get("/v1/shelters", headers=auth())).json() == {"items": [], "next_cursor": None}


# --- a shelter manager, a relative and the lifecycle ----------------------------------------------

FAMILY_ID = "11010519491231002X"  # GB 11643-1999's example
FAMILY_PHONE = "13812345678"


def shelter(sid: str, km_east: float, area_m2: float = 150, **extra: Any) -> dict[str, Any]:
    """A shelter ``km_east`` km east of People's Square: 150 m² sleeps 100 at 1.5 m² a person."""
    return {
        "id": sid,
        "name_zh": f"避难场所{sid}",
        "name_en": f"Shelter {sid}",
        "kind": "school",
        "district": "huangpu",
        "location": {"lat": CENTRE[0], "lon": CENTRE[1] + km_east * KM * 1.17},
        "area_m2": area_m2,
        "accessible_places": 5,
        "pet_places": 5,
        "hotline": "021-63210000",
        **extra,
    }


def family(**extra: Any) -> dict[str, Any]:
    """A household of 4 with one wheelchair user and a dog, near People's Square."""
    return {
        "near": {"lat": CENTRE[0], "lon": CENTRE[1]},
        "household": {
            "persons": [
                {"name": "王芳", "id_number": FAMILY_ID, "phone": FAMILY_PHONE, "consent_to_share": False},
                {"name": "李强", "phone": "13900001111"},
                {"name": "李小明"},
                {"name": "王秀英", "wheelchair": True},
            ],
            "pets": 1,
            "origin_address": "黄浦区南京东路100号",
        },
        **extra,
    }


class Registry:
    """A shelter manager at the operator API; NATS for what the service publishes."""

    def __init__(self, client: httpx.AsyncClient, bus: Bus) -> None:
        self.client = client
        self.bus = bus

    async def post(self, path: str, body: Any, *roles: str, subject: str = "manager-1") -> httpx.Response:
        return await self.client.post(path, json=body, headers=auth(*roles, subject=subject))

    async def get(self, path: str, *roles: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=auth(*(roles or ("auditor",))))

    async def ok(self, path: str, body: Any, status: int = 201, *roles: str) -> dict[str, Any]:
        r = await self.post(path, body, *roles)
        assert r.status_code == status, r.text
        return r.json()

    async def open(self, *shelters: dict[str, Any]) -> None:
        await self.ok("/v1/shelters:batch", {"shelters": list(shelters)})
        for s in shelters:
            await self.ok(f"/v1/shelters/{s['id']}/status", {"action": "open"}, 200)

    async def shelter(self, sid: str) -> dict[str, Any]:
        r = await self.get(f"/v1/shelters/{sid}")
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
async def registry(shelter_app, db_url) -> AsyncIterator[Registry]:
    async with shelter_app(db_url) as (_, client, bus):
        yield Registry(client, bus)


async def shelter_events(bus: Bus, subject: str = "shelter.>") -> list[dict[str, Any]]:
    """Every shelter event on the SHELTER stream so far, in order."""
    import orjson

    sub = await bus.js.pull_subscribe(subject, durable=None, stream="SHELTER")
    found: list[dict[str, Any]] = []
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=0.5)
        except Exception:
            break
        for m in msgs:
            found.append({"subject": m.subject, **orjson.loads(m.data)})
            await m.ack()
    await sub.unsubscribe()
    return found


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    return r.json()


async def test_capacity_comes_from_the_area_and_is_set_lower_by_hand_only(registry):
    s = await registry.ok("/v1/shelters", shelter("S1", 1, area_m2=3000))
    assert (s["capacity"], s["day_capacity"], s["status"], s["free"]) == (2000, 2000, "standby", 2000)
    s = await registry.ok("/v1/shelters", shelter("S2", 1, area_m2=3000, capacity=1200, day_capacity=3000))
    assert (s["capacity"], s["day_capacity"]) == (1200, 3000)
    body = problem(await registry.post("/v1/shelters", shelter("S3", 1, area_m2=3000, capacity=2001)), 422)
    assert body["field"] == "capacity" and "2000" in body["detail"]
    body = problem(await registry.post("/v1/shelters", shelter("S4", 1, accessible_places=101)), 422)
    assert body["field"] == "accessible_places"
    assert problem(await registry.post("/v1/shelters", shelter("S1", 2)), 409)
    assert problem(await registry.post("/v1/shelters", {**shelter("S5", 1), "kind": "castle"}), 422)
    body = problem(await registry.post("/v1/shelters:batch", {"shelters": [shelter("S6", 1), shelter("S6", 2)]}), 422)
    assert body["field"] == "shelters.1.id"
    problem(await registry.get("/v1/shelters/S6"), 404)  # the batch wrote nothing
    problem(await registry.get("/v1/shelters/nowhere"), 404)
    page = (await registry.get("/v1/shelters", limit=1)).json()
    assert [s["id"] for s in page["items"]] == ["S1"] and page["next_cursor"] == "S1"
    page = (await registry.get("/v1/shelters", limit=1, cursor=page["next_cursor"])).json()
    assert [s["id"] for s in page["items"]] == ["S2"] and page["next_cursor"] is None
    refused = problem(await registry.get("/v1/shelters", cursor="not a shelter id!"), 422)
    assert [e["field"] for e in refused["errors"]] == ["cursor"], refused


async def test_a_household_is_placed_whole_nearest_first_with_its_needs_and_history(registry):
    await registry.open(
        shelter("NEAR", 0.5, accessible_places=0), shelter("MID", 1.0, pet_places=0), shelter("FAR", 2.0)
    )
    reg = await registry.ok("/v1/allocations", family())
    assert reg["shelter_id"] == "FAR"  # NEAR has no accessible place, MID no pet place
    assert (reg["people"], reg["wheelchairs"], reg["pets"], reg["status"]) == (4, 1, 1, "planned")
    assert reg["persons"][0]["name"] == "王芳"
    assert reg["persons"][0]["id_number"] == "110105********002X"
    assert reg["persons"][0]["phone"] == "138****5678"
    far = await registry.shelter("FAR")
    assert (far["occupied"], far["accessible_free"], far["pet_free"]) == (4, 4, 4)

    # Need to know: a dispatcher sees the household, masked.
    seen = (await registry.get(f"/v1/registrations/{reg['id']}", "dispatcher")).json()
    assert seen["persons"][0]["name"] == "王*" and seen["origin_address"] == "***"

    reg = await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {"version": reg["version"]}, 200)
    assert reg["status"] == "checked_in"
    stale = await registry.post(f"/v1/registrations/{reg['id']}/check-out", {"version": 1})
    assert problem(stale, 409)["type"] == "urn:ecs:problem:stale_version"
    reg = await registry.ok(f"/v1/registrations/{reg['id']}/check-out", {}, 200)
    assert reg["status"] == "checked_out"
    assert (await registry.shelter("FAR"))["occupied"] == 0
    history = (await registry.get(f"/v1/registrations/{reg['id']}/history")).json()["items"]
    assert [(h["action"], h["from_status"], h["to_status"], h["to_shelter"]) for h in history] == [
        ("placed", None, "planned", "FAR"),
        ("check_in", "planned", "checked_in", "FAR"),
        ("check_out", "checked_in", "checked_out", "FAR"),
    ]
    assert {h["actor"] for h in history} == {"manager-1"}
    problem(await registry.post(f"/v1/registrations/{reg['id']}/check-out", {}), 409)
    problem(await registry.post("/v1/registrations/nope/check-in", {}), 404)
    problem(await registry.get("/v1/registrations/nope"), 404)


async def test_no_event_and_no_log_carries_personal_data(registry, caplog):
    await registry.open(shelter("S1", 1))
    reg = await registry.ok("/v1/allocations", family())
    await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {}, 200)
    events = await shelter_events(registry.bus)
    assert [e["type"] for e in events] == [
        "shelter.status.changed",
        "shelter.registration.changed",
        "shelter.registration.changed",
    ]
    text = str(events) + caplog.text
    for secret in (FAMILY_ID, FAMILY_PHONE, "王芳", "南京东路"):
        assert secret not in text


async def test_a_household_no_open_shelter_takes_is_refused_naming_the_largest_that_could_be(registry):
    small = {"accessible_places": 1, "pet_places": 1}
    await registry.open(
        shelter("A", 1, area_m2=4.5, **small), shelter("B", 2, area_m2=6, accessible_places=1, pet_places=0)
    )
    body = problem(await registry.post("/v1/allocations", family()), 409)
    assert body["largest_household"] == 3  # B takes 4 but no dog
    assert "largest" in body["detail"]
    assert (await registry.shelter("A"))["occupied"] == 0
    problem(await registry.post("/v1/allocations", family(incident_id="I-unknown")), 404)
    problem(await registry.post("/v1/allocations", family(shelter_id="nowhere")), 404)


async def test_check_in_to_a_closed_or_out_of_service_shelter_is_refused(registry):
    await registry.open(shelter("S1", 1), shelter("S2", 2))
    first = await registry.ok("/v1/allocations", family(shelter_id="S1"))
    await registry.ok("/v1/shelters/S1/status", {"action": "take_out_of_service"}, 200)
    body = problem(await registry.post(f"/v1/registrations/{first['id']}/check-in", {}), 409)
    assert "out_of_service" in body["detail"]
    # Out of service takes no new people, and the one placed stays.
    assert problem(await registry.post("/v1/allocations", family(shelter_id="S1")), 409)["field"] == "shelter_id"
    assert (await registry.shelter("S1"))["occupied"] == 4
    moved = await registry.ok(f"/v1/registrations/{first['id']}/move", {"to_shelter": "S2"}, 200)
    assert moved["status"] == "moved" and moved["moved_to"]
    new = (await registry.get(f"/v1/registrations/{moved['moved_to']}")).json()
    assert (new["shelter_id"], new["status"], len(new["persons"])) == ("S2", "planned", 4)
    assert ((await registry.shelter("S1"))["occupied"], (await registry.shelter("S2"))["occupied"]) == (0, 4)
    history = (await registry.get(f"/v1/registrations/{first['id']}/history")).json()["items"]
    assert (history[-1]["action"], history[-1]["from_shelter"], history[-1]["to_shelter"]) == ("move", "S1", "S2")


async def test_a_shelter_with_people_does_not_close_and_the_refusal_counts_them(registry):
    await registry.open(shelter("S1", 1))
    reg = await registry.ok("/v1/allocations", family())
    await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {}, 200)
    s = await registry.ok("/v1/shelters/S1/status", {"action": "begin_closing"}, 200)
    assert s["status"] == "closing"
    body = problem(await registry.post("/v1/shelters/S1/status", {"action": "close"}), 409)
    assert body["occupied"] == 4 and "4 people" in body["detail"]
    await registry.ok(f"/v1/registrations/{reg['id']}/check-out", {}, 200)
    s = await registry.ok("/v1/shelters/S1/status", {"action": "close"}, 200)
    assert (s["status"], s["occupied"]) == ("closed", 0)
    body = problem(await registry.post("/v1/shelters/S1/status", {"action": "open"}), 409)
    assert body["allowed"] == ["make_ready"]
    body = problem(await registry.post(f"/v1/registrations/{reg['id']}/check-in", {}), 409)
    stale = await registry.post("/v1/shelters/S1/status", {"action": "make_ready", "version": 1})
    assert problem(stale, 409)["type"] == "urn:ecs:problem:stale_version"


async def test_malformed_id_and_phone_numbers_are_refused_naming_the_field_and_nothing_is_written(registry):
    await registry.open(shelter("S1", 1))
    bad = family()
    bad["household"]["persons"][0]["id_number"] = "110105194912310021"  # wrong check character
    body = problem(await registry.post("/v1/allocations", bad), 422)
    assert body["field"] == "household.persons.0.id_number"
    bad = family()
    bad["household"]["persons"][1]["phone"] = "12345"
    assert problem(await registry.post("/v1/allocations", bad), 422)["field"] == "household.persons.1.phone"
    assert (await registry.shelter("S1"))["occupied"] == 0
    assert problem(await registry.post("/v1/allocations", {**family(), "near": {"lat": 91, "lon": 0}}), 422)


async def test_a_relative_finds_a_person_safe_without_learning_where_unless_they_consented(registry):
    await registry.open(shelter("S1", 1, hotline="021-63215555"))
    await registry.ok("/v1/allocations", family())
    search = {"name": "王芳", "phone": "+86 138 1234 5678"}
    found = await registry.ok("/v1/reunification/search", search, 200)
    assert found == {
        "found": True,
        "message": "registered safe at a shelter",
        "shelter_hotline": "021-63215555",
        "shelter_name": None,
        "registration_id": None,
    }
    by_id = await registry.ok("/v1/reunification/search", {"name": "王芳", "id_number": FAMILY_ID}, 200)
    assert by_id["found"] is True and by_id["shelter_name"] is None
    # The consenting member's relative learns the shelter.
    consenting = family()
    consenting["household"]["persons"] = [{"name": "张伟", "phone": "13700002222", "consent_to_share": True}]
    consenting["household"]["pets"] = 0
    await registry.ok("/v1/allocations", consenting)
    found = await registry.ok("/v1/reunification/search", {"name": "张伟", "phone": "13700002222"}, 200)
    assert found["shelter_name"] == "避难场所S1" and found["registration_id"]
    # A wrong pair finds nothing; the name alone is refused; never a list.
    assert (await registry.ok("/v1/reunification/search", {"name": "王芳", "phone": "13900001111"}, 200))[
        "found"
    ] is False
    assert problem(await registry.post("/v1/reunification/search", {"name": "王芳"}), 422)["field"] == "phone"
    body = problem(await registry.post("/v1/reunification/search", {"name": "王芳", "id_number": "123"}), 422)
    assert body["field"] == "id_number"


async def test_searches_are_logged_and_rate_limited_per_searcher(shelter_app, db_url):
    async with shelter_app(db_url, search_limit=3, search_window_s=3600) as (app, client, bus):
        registry = Registry(client, bus)
        await registry.open(shelter("S1", 1))
        await registry.ok("/v1/allocations", family())
        search = {"name": "王芳", "phone": FAMILY_PHONE}
        for _ in range(3):
            await registry.ok("/v1/reunification/search", search, 200, "dispatcher")
        body = problem(await registry.post("/v1/reunification/search", search, "dispatcher"), 429)
        assert "at most 3" in body["detail"]
        other = await registry.post("/v1/reunification/search", search, "dispatcher", subject="hotline-2")
        assert other.status_code == 200
        from sqlalchemy import func, select

        from shelter_registry import store

        async with app.state.db.engine.connect() as conn:
            rows = (await conn.execute(select(store.searches.c.searcher, func.count()).group_by("searcher"))).all()
        assert dict(rows) == {"manager-1": 3, "hotline-2": 1}  # the refused search looked at nothing


async def test_a_batch_places_households_whole_once_even_when_sent_again(registry):
    await registry.open(shelter("S1", 1, area_m2=30), shelter("S2", 2, area_m2=30), shelter("S3", 3, area_m2=30))
    households = [{"ref": f"h{i}", "people": 1 + i % 4, "wheelchairs": i % 2, "pets": 0} for i in range(20)]
    batch = {"near": {"lat": CENTRE[0], "lon": CENTRE[1]}, "households": households}
    first = await registry.ok("/v1/allocations:batch", batch)
    people = sum(h["people"] for h in households)  # 50 people, 60 places
    assert first["households_placed"] == 20 and first["already_placed"] == 0
    occupied = [(await registry.shelter(s))["occupied"] for s in ("S1", "S2", "S3")]
    assert sum(occupied) == people and occupied[0] == 20
    again = await registry.ok("/v1/allocations:batch", batch)
    assert again["already_placed"] == 20 and again["placed"] == first["placed"]
    assert [(await registry.shelter(s))["occupied"] for s in ("S1", "S2", "S3")] == occupied
    dup = {**batch, "households": [households[0], households[0]]}
    assert problem(await registry.post("/v1/allocations:batch", dup), 422)["field"] == "households.1.ref"


async def test_a_household_is_split_only_when_the_operator_allows_it(registry):
    small = {"area_m2": 4.5, "accessible_places": 1, "pet_places": 1}  # 3 places each
    await registry.open(shelter("S1", 1, **small), shelter("S2", 2, **small))
    batch = {"near": {"lat": CENTRE[0], "lon": CENTRE[1]}, "households": [{"ref": "big", "people": 5}]}
    whole = await registry.ok("/v1/allocations:batch", batch)
    assert (whole["placed"], whole["households_unplaced"]) == ([None], 1)
    assert (await registry.shelter("S1"))["occupied"] == 0
    split = await registry.ok("/v1/allocations:batch", {**batch, "allow_split": True})
    assert split["placed"] == ["S1"]
    assert [(await registry.shelter(s))["occupied"] for s in ("S1", "S2")] == [3, 2]


async def test_dashboards_count_capacity_occupancy_and_movements(registry):
    await registry.open(shelter("S1", 1))
    reg = await registry.ok("/v1/allocations", family())
    await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {}, 200)
    d = (await registry.get("/v1/shelters/S1/dashboard")).json()
    assert (d["capacity"], d["occupied"], d["night_free"], d["accessible_free"], d["pet_free"]) == (100, 4, 96, 4, 4)
    assert (d["households"], d["checked_in_people"], d["planned_people"]) == (1, 4, 0)
    assert sum(b["arrivals"] for b in d["timeline"]) == 4
    problem(await registry.get("/v1/shelters/nowhere/dashboard"), 404)
    problem(await registry.get("/v1/incidents/nowhere/dashboard"), 404)


async def test_a_drill_runner_works_on_exercise_shelters_only_and_exercise_never_takes_live_places(registry):
    await registry.open(shelter("LIVE", 1))
    drill = auth("drill_runner", subject="drill-1")
    r = await registry.client.post("/v1/shelters/LIVE/status", json={"action": "begin_closing"}, headers=drill)
    assert problem(r, 403)
    r = await registry.client.post("/v1/shelters", json=shelter("EX", 2, exercise=True), headers=drill)
    assert r.status_code == 201, r.text
    r = await registry.client.post("/v1/allocations", json=family(exercise=True), headers=drill)
    assert problem(r, 409)["largest_household"] == 0  # the live shelter is not offered
    await registry.client.post("/v1/shelters/EX/status", json={"action": "open"}, headers=drill)
    r = await registry.client.post("/v1/allocations", json=family(exercise=True), headers=drill)
    assert r.status_code == 201 and r.json()["shelter_id"] == "EX"
    assert (await registry.shelter("LIVE"))["occupied"] == 0
