"""dispatch in-process against a real nats-server and a real database, every test on both stores
(``db_url``: SQLite and PostgreSQL; the races are in test_dispatch_concurrency.py): units, plans,
assignments and the automation driven by incident-intake's events, as a dispatcher and the
lifecycle would see them. The same behaviour against the service as a process is in
tests/e2e/test_dispatch_service_e2e.py."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from ecs.bus import Bus
from ecs.contracts import (
    CategoryChanged,
    IncidentCreated,
    IncidentMerged,
    IncidentSplit,
    LevelChanged,
    PlanPublished,
    StageChanged,
)
from ecs.envelope import make_event
from ecs.testing import eventually

CENTRE = (31.2304, 121.4737)
KM = 1 / 111.2


def unit(uid: str, unit_type: str, km_east: float = 1.0, district: str = "huangpu", **extra: Any) -> dict:
    return {
        "id": uid,
        "unit_type": unit_type,
        "home_station": f"station-{district}",
        "district": district,
        "location": {"lat": CENTRE[0], "lon": CENTRE[1] + km_east * KM * 1.17},
        **extra,
    }


class Intake:
    """Plays incident-intake: publishes its events about incidents on NATS."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.versions: dict[str, int] = {}
        self.stage: dict[str, str] = {}

    async def stage_to(
        self, incident_id: str, stage: str, *, level: int = 4, category: str = "fire", exercise: bool = False
    ) -> str:
        version = self.versions.get(incident_id, 1) + 1
        self.versions[incident_id] = version
        data = StageChanged(
            incident_id=incident_id,
            from_stage=self.stage.get(incident_id, "reported"),
            to_stage=stage,
            actor="commander-1",
            version=version,
            category=category,
            level=level,
            lat=CENTRE[0],
            lon=CENTRE[1],
            perimeter={"kind": "circle", "lat": CENTRE[0], "lon": CENTRE[1], "radius_m": 100},
        )
        self.stage[incident_id] = stage
        env = make_event(
            "incident.stage.changed", data, source="incident-intake", incident_id=incident_id, exercise=exercise
        )
        await self.bus.publish_event(env)
        return env.id

    async def level_to(self, incident_id: str, from_level: int, to_level: int) -> None:
        version = self.versions.get(incident_id, 1) + 1
        self.versions[incident_id] = version
        data = LevelChanged(
            incident_id=incident_id,
            from_level=from_level,
            to_level=to_level,
            reason="assessment",
            actor="commander-1",
            version=version,
        )
        await self.bus.publish_event(
            make_event("incident.level.changed", data, source="incident-intake", incident_id=incident_id)
        )


class Facts:
    """Everything dispatch publishes, as core NATS delivers it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def on(self, msg: Any) -> None:
        self.events.append({"subject": msg.subject, **orjson.loads(msg.data)})

    def of(self, subject: str, incident_id: str | None = None) -> list[dict[str, Any]]:
        wanted = [e for e in self.events if e["subject"] == subject]
        return [e for e in wanted if incident_id is None or e["incident_id"] == incident_id]


@pytest.fixture
async def wired(nats_private):
    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    facts = Facts()
    await bus.nc.subscribe("dispatch.>", cb=facts.on)
    yield Intake(bus), facts, bus
    await bus.close()


def new_incident() -> str:
    return uuid.uuid4().hex


async def fire_iv_in_isolation(api: Any, intake: Any, headers: dict[str, str], per_type: int, **waiting: Any) -> dict:
    """``per_type`` fire engines (1 km, 2 km ... east) and patrol cars (0.5 km, 1.5 km ...), then
    a fire at level IV into isolation (its plan: 1 fire engine, 1 patrol car); the incident's
    view once both are assigned (``waiting``: for ecs.testing.eventually)."""
    roster = [unit(f"fe-{i}", "fire_engine", km_east=i + 1) for i in range(per_type)]
    roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 0.5) for i in range(per_type)]
    r = await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
    assert r.status_code == 201, r.text

    incident = new_incident()
    await intake.stage_to(incident, "isolation", level=4)

    async def assigned():
        view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
        return view if len(view.get("units", [])) == 2 else None

    return await eventually(assigned, **waiting)


async def test_isolation_assigns_the_plan_units_and_on_scene_secures_the_perimeter(
    dispatch_app, db_url, wired, operator_headers
):
    intake, facts, _ = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        view = await fire_iv_in_isolation(api, intake, headers, 3)
        incident = view["id"]
        assert {u["unit_id"] for u in view["units"]} == {"fe-0", "pc-0"}  # the nearest of each type
        assert all(u["source"] == "automatic" and u["stage"] == "isolation" for u in view["units"])
        assert view["missing"] == {} and view["settled"] is False and view["perimeter_secured"] is False
        assert all(u["eta_now_s"] > 0 for u in view["units"])

        # The perimeter is secured only when every isolation unit is on scene.
        for uid in ("fe-0", "pc-0"):
            r = await api.post(f"/v1/units/{uid}/status", json={"status": "en_route"}, headers=headers)
            assert r.status_code == 200
        r = await api.post("/v1/units/fe-0/status", json={"status": "on_scene"}, headers=headers)
        assert r.status_code == 200
        # The status change and the facts it implies commit together: not secured yet.
        view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
        assert view["perimeter_secured"] is False and view["on_scene"] == 1
        await api.post("/v1/units/pc-0/status", json={"status": "on_scene"}, headers=headers)

        async def secured():
            return facts.of("dispatch.incident.perimeter_secured", incident)

        (secured_event,) = await eventually(secured)  # one fact only: none before the second arrival
        assert secured_event["data"]["on_scene"] is True
        assert secured_event["incident_id"] == incident and secured_event["exercise"] is False
        settled = facts.of("dispatch.incident.settled", incident)
        assert [e["data"]["settled"] for e in settled] == [False]
        assert settled[0]["data"]["participant"] == "dispatch"

        # Handling brings the handling teams on top (fire IV has none); cancel releases everything.
        await intake.stage_to(incident, "cancelled")

        async def released():
            return [e["data"]["settled"] for e in facts.of("dispatch.incident.settled", incident)] == [False, True]

        await eventually(released)
        assert {e["data"]["unit_id"] for e in facts.of("dispatch.unit.released", incident)} == {"fe-0", "pc-0"}
        fe0 = (await api.get("/v1/units/fe-0", headers=headers)).json()
        assert fe0["status"] == "returning" and fe0["incident_id"] is None
        assigned_events = facts.of("dispatch.unit.assigned", incident)
        assert sorted(e["data"]["unit_id"] for e in assigned_events) == ["fe-0", "pc-0"]


async def test_units_lost_to_other_transactions_are_claimed_again_later_not_left_missing(
    dispatch_app, db_url, wired, operator_headers, monkeypatch
):
    """Every claim round of an isolation lost its units to other transactions (as under load, or
    after a restart with the roster moving): that is no shortage, and nothing would ever try again
    for a shortfall recorded as "taken meanwhile" unless a unit came free. The event is tried
    again later instead, and the incident gets its units."""
    from dispatch import store

    intake, _, _ = wired
    headers = operator_headers("dispatcher")
    claim_units = store.claim_units
    lost: list[int] = []

    async def contended(conn, unit_ids, *args, **kwargs):
        if len(lost) < 4:  # every round of the first attempt: another transaction was first
            lost.append(len(unit_ids))
            return []
        return await claim_units(conn, unit_ids, *args, **kwargs)

    monkeypatch.setattr(store, "claim_units", contended)
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        view = await fire_iv_in_isolation(
            api, intake, headers, 6, what="the isolation units claimed on a later try", within_s=60
        )
        assert len(lost) == 4 and view["missing"] == {}
        assert sorted(u["unit_type"] for u in view["units"]) == ["fire_engine", "patrol_car"]


async def test_level_change_tops_up_and_releases(dispatch_app, db_url, wired, operator_headers):
    intake, facts, _ = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit(f"fe-{i}", "fire_engine", km_east=i + 1) for i in range(4)]
        roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 1) for i in range(4)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        incident = new_incident()
        await intake.stage_to(incident, "isolation", level=4)

        async def held(n):
            async def check():
                view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
                return view if len(view.get("units", [])) == n else None

            return await eventually(check)

        await held(2)
        await intake.level_to(incident, 4, 3)  # fire III isolation: 2 patrol cars, 2 fire engines
        view = await held(4)
        assert view["held"] == {"fire_engine": 2, "patrol_car": 2} and view["level"] == 3, view
        await intake.level_to(incident, 3, 4)
        view = await held(2)
        assert view["held"] == {"fire_engine": 1, "patrol_car": 1}
        # The nearest stay; the later, farther ones went back.
        assert {u["unit_id"] for u in view["units"]} == {"fe-0", "pc-0"}

        async def released():
            return {e["data"]["unit_id"] for e in facts.of("dispatch.unit.released", incident)} == {"fe-1", "pc-1"}

        await eventually(released)


async def test_a_unit_that_breaks_down_on_the_way_is_replaced_at_once(dispatch_app, db_url, wired, operator_headers):
    """Out of service (or sent back) while serving: its assignment ends and, the automation being
    on, the next nearest unit of its type comes at once, not at the incident's next stage change."""
    intake, facts, _ = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit(f"fe-{i}", "fire_engine", km_east=i + 1) for i in range(3)]
        roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 1) for i in range(2)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        incident = new_incident()
        await intake.stage_to(incident, "isolation", level=4)  # fire IV isolation: 1 fire engine, 1 patrol car

        async def holding(*unit_ids):
            async def check():
                view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
                return view if sorted(u["unit_id"] for u in view.get("units", [])) == sorted(unit_ids) else None

            return await eventually(check)

        await holding("fe-0", "pc-0")
        r = await api.post("/v1/units/fe-0/status", json={"status": "out_of_service"}, headers=headers)
        assert r.status_code == 200, r.text
        view = await holding("fe-1", "pc-0")  # the next nearest engine
        assert view["held"] == {"fire_engine": 1, "patrol_car": 1}
        for status in ("en_route", "on_scene", "returning"):  # sent back from the scene
            r = await api.post("/v1/units/pc-0/status", json={"status": status}, headers=headers)
            assert r.status_code == 200, r.text
        await holding("fe-1", "pc-1")

        async def four_assigned():
            ids = sorted(e["data"]["unit_id"] for e in facts.of("dispatch.unit.assigned", incident))
            return ids if len(ids) >= 4 else None

        assert await eventually(four_assigned) == ["fe-0", "fe-1", "pc-0", "pc-1"]


async def test_operator_assignment_rules(dispatch_app, db_url, wired, operator_headers):
    intake, _, _ = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0, automatic=False) as (_, api):
        roster = [unit(f"fe-{i}", "fire_engine", km_east=i + 1) for i in range(3)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        first, second = new_incident(), new_incident()
        for incident in (first, second):
            await intake.stage_to(incident, "isolation")

        async def known():
            return [(await api.get(f"/v1/incidents/{i}", headers=headers)).status_code for i in (first, second)] == [
                200,
                200,
            ]

        await eventually(known)

        rec = (await api.get(f"/v1/incidents/{first}/recommendations", headers=headers)).json()
        assert [r["unit_id"] for r in rec["recommendations"]] == ["fe-0"]
        assert rec["recommendations"][0]["reason"].startswith("nearest available fire_engine")
        assert rec["shortfalls"][0]["unit_type"] == "patrol_car"  # none registered

        # A unit that is not the recommended one needs a reason.
        r = await api.post(f"/v1/incidents/{first}/assignments", json={"unit_ids": ["fe-2"]}, headers=headers)
        assert r.status_code == 422 and r.json()["field"] == "reason" and r.json()["not_recommended"] == ["fe-2"]
        r = await api.post(
            f"/v1/incidents/{first}/assignments",
            json={"unit_ids": ["fe-2"], "reason": "crew knows the building"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        (made,) = r.json()["assignments"]
        assert made["source"] == "override" and "crew knows the building" in made["reason"]

        # Busy elsewhere: 409 naming the incident.
        r = await api.post(
            f"/v1/incidents/{second}/assignments", json={"unit_ids": ["fe-2"], "reason": "x"}, headers=headers
        )
        assert r.status_code == 409 and r.json()["incident_id"] == first and first in r.json()["detail"]

        # Accepting the recommendation tops up to the plan.
        r = await api.post(f"/v1/incidents/{second}/assignments:recommended", headers=headers)
        assert r.status_code == 201
        body = r.json()
        assert [a["unit_id"] for a in body["assignments"]] == ["fe-0"] and body["complete"] is False
        assert "patrol_car" in body["shortfalls"][0]

        # Reassign fe-0 from second to first, then release it.
        r = await api.post(
            f"/v1/assignments/{body['assignments'][0]['id']}/reassign",
            json={"incident_id": first, "reason": "first is worse"},
            headers=headers,
        )
        assert r.status_code == 201 and r.json()["incident_id"] == first and r.json()["source"] == "reassigned"
        assert (await api.get("/v1/units/fe-0", headers=headers)).json()["incident_id"] == first
        r = await api.post(f"/v1/assignments/{r.json()['id']}/release", json={"reason": "done"}, headers=headers)
        assert r.status_code == 200 and r.json()["released_at"] is not None
        r = await api.post(f"/v1/assignments/{r.json()['id']}/release", json={"reason": "again"}, headers=headers)
        assert r.status_code == 409

        # Bad input.
        assert (await api.get("/v1/units/nope", headers=headers)).status_code == 404
        r = await api.get(f"/v1/incidents/{new_incident()}", headers=headers)
        assert r.status_code == 404 and "unknown to dispatch" in r.json()["detail"]
        r = await api.post("/v1/units/fe-1/status", json={"status": "on_scene"}, headers=headers)
        assert r.status_code == 409 and r.json()["allowed"] == ["assigned", "out_of_service"]
        r = await api.put("/v1/units/fe-1/location", json={"lat": 91, "lon": 0}, headers=headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "lat"
        r = await api.post("/v1/units", json=unit("fe-1", "fire_engine"), headers=headers)
        assert r.status_code == 409
        r = await api.post("/v1/units", json=unit("bad.id", "fire_engine"), headers=headers)
        assert r.status_code == 422
        assert (await api.get("/v1/units", headers=operator_headers("auditor"))).status_code == 200
        r = await api.post("/v1/units", json=unit("x-1", "fire_engine"), headers=operator_headers("auditor"))
        assert r.status_code == 403
        assert (await api.get("/v1/units")).status_code == 401


async def test_plans_are_versioned_and_a_bad_one_changes_nothing(dispatch_app, db_url, wired, operator_headers):
    _, facts, bus = wired
    commander = operator_headers("commander")
    async with dispatch_app(db_url) as (_, api):
        listed = (await api.get("/v1/plans", headers=commander)).json()["items"]
        assert len(listed) == 11 and all(p["version"] == 1 for p in listed)
        original = (await api.get("/v1/plans/fire", headers={**commander, "Accept": "application/yaml"})).text

        bad = original.replace("version: 1", "version: 2").replace("isolation_radius_m: 300", "isolation_radius_m: -5")
        r = await api.put("/v1/plans/fire", content=bad, headers={**commander, "Content-Type": "application/yaml"})
        assert r.status_code == 422
        problem = r.json()["problems"][0]
        assert problem["path"] == "levels.II.isolation_radius_m"
        assert bad.splitlines()[problem["line"] - 1].strip().startswith("isolation_radius_m: -5")
        assert "line" in r.json()["detail"]
        assert (await api.get("/v1/plans/fire", headers=commander)).json()["version"] == 1

        stale = original.replace("isolation_radius_m: 300", "isolation_radius_m: 350")
        r = await api.put("/v1/plans/fire", content=stale, headers={**commander, "Content-Type": "application/yaml"})
        assert r.status_code == 409  # still says version 1

        good = stale.replace("version: 1", "version: 2")
        r = await api.put(
            "/v1/plans/fire", content=good, headers={**operator_headers("dispatcher"), "Content-Type": "text/yaml"}
        )
        assert r.status_code == 403
        r = await api.put("/v1/plans/fire", content=good, headers={**commander, "Content-Type": "text/yaml"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["levels"]["II"]["isolation_radius_m"] == 350
        versions = (await api.get("/v1/plans/fire/versions", headers=commander)).json()["items"]
        assert [(v["version"], v["origin"]) for v in versions] == [(2, "api"), (1, "shipped")]

        # Other services read plans from the stream and by request/reply.
        async def published():
            return [e for e in facts.of("dispatch.plan.published") if e["data"]["version"] == 2]

        (event,) = await eventually(published)
        PlanPublished.model_validate(event["data"])
        answer = await bus.request("rpc.dispatch.plan.get", {"category": "fire"})
        assert answer["version"] == 2 and answer["levels"]["I"]["supplies"][0]["item"] == "foam_concentrate_litre"
        assert "error" in await bus.request("rpc.dispatch.plan.get", {"category": "volcano"})


async def test_a_position_fixed_in_the_future_is_refused_and_never_freezes_the_unit(
    dispatch_app, db_url, wired, operator_headers
):
    """A fix stamped 2099 (a vehicle clock gone wrong) used to be stored and, newer than every true
    fix after it, froze the unit there: now 422 naming ``at`` over HTTP, a dead letter with the
    reason on the feed, and the next true fix moves the unit."""
    _, _, bus = wired
    headers = operator_headers("dispatcher")
    dead: list[tuple[str, str]] = []

    async def on_dead(msg):
        dead.append((msg.subject, msg.headers.get("Ecs-Reason", "")))

    await bus.nc.subscribe("deadletter.vehicle.>", cb=on_dead)
    async with dispatch_app(db_url) as (_, api):
        await api.post("/v1/units:batch", json={"units": [unit("fe-0", "fire_engine")]}, headers=headers)
        r = await api.put(
            "/v1/units/fe-0/location", json={"lat": 31.24, "lon": 121.48, "at": "2099-01-01T00:00:00Z"}, headers=headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "at" and "ahead of dispatch's clock" in r.json()["detail"]
        assert (await api.get("/v1/units/fe-0", headers=headers)).json()["location"]["lat"] == CENTRE[0]
        await bus.publish(
            "vehicle.location.fe-0", orjson.dumps({"lat": 31.3, "lon": 121.5, "at": "2099-01-01T00:00:00+00:00"})
        )

        async def dead_lettered():
            return [reason for subject, reason in dead if subject == "deadletter.vehicle.location.fe-0"]

        [reason] = await eventually(dead_lettered, "the future fix dead-lettered")
        assert reason.startswith("at: ") and "ahead of dispatch's clock" in reason
        now = datetime.now(UTC).isoformat()
        await bus.publish("vehicle.location.fe-0", orjson.dumps({"lat": 31.25, "lon": 121.5, "at": now}))

        async def moved():
            return (await api.get("/v1/units/fe-0", headers=headers)).json()["location"]["lat"] == 31.25

        await eventually(moved, "the next true fix taken")
        r = await api.put("/v1/units/fe-0/location", json={"lat": 31.26, "lon": 121.5}, headers=headers)
        assert r.status_code == 200 and r.json()["location"]["lat"] == 31.26


async def test_location_feed_keeps_the_newest_position_and_dead_letters_bad_reports(
    dispatch_app, db_url, wired, operator_headers
):
    _, _, bus = wired
    headers = operator_headers("dispatcher")
    dead: list[tuple[str, str]] = []

    async def on_dead(msg):
        dead.append((msg.subject, msg.headers.get("Ecs-Reason", "")))

    await bus.nc.subscribe("deadletter.vehicle.>", cb=on_dead)
    async with dispatch_app(db_url) as (_, api):
        await api.post(
            "/v1/units:batch",
            json={"units": [unit("fe-0", "fire_engine"), unit("pc-0", "patrol_car")]},
            headers=headers,
        )
        base = time.time()

        def report(lat: float, seconds: float) -> bytes:
            at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(base + seconds)) + "+00:00"
            return orjson.dumps({"lat": lat, "lon": 121.5, "at": at, "speed_kmh": 42.0})

        for i in range(200):
            await bus.publish("vehicle.location.fe-0", report(31.0 + i / 1000, 10 + i))
        await bus.publish("vehicle.location.fe-0", report(30.0, 5))  # older than the rest: ignored
        await bus.publish("vehicle.location.pc-0", b"{not json")
        await bus.publish(
            "vehicle.location.pc-0", orjson.dumps({"lat": 95, "lon": 121.5, "at": "2026-01-01T00:00:00Z"})
        )
        await bus.publish("vehicle.location.pc-0", orjson.dumps({"lat": 31, "lon": 121.5}))
        await bus.publish("vehicle.location.ghost", report(31.1, 20))

        async def all_dead():
            return len(dead) == 4

        await eventually(all_dead)
        reasons = {subject: reason for subject, reason in dead}
        assert "unknown unit 'ghost'" in reasons["deadletter.vehicle.location.ghost"]
        pc_reasons = [r for s, r in dead if s == "deadletter.vehicle.location.pc-0"]
        assert any("lat" in r and "less than or equal to 90" in r for r in pc_reasons)
        assert any("at: Field required" in r for r in pc_reasons)
        assert any("Invalid JSON" in r or "invalid position report" in r for r in pc_reasons)

        async def moved():
            row = (await api.get("/v1/units/fe-0", headers=headers)).json()
            return row if abs(row["location"]["lat"] - 31.199) < 1e-9 else None

        row = await eventually(moved)
        assert row["location"]["lon"] == 121.5
        assert (await api.get("/v1/units/pc-0", headers=headers)).json()["location"]["lat"] == CENTRE[0]

        # An older report arriving on its own, after the newest was stored, changes nothing; the
        # report behind it (pc-0's) shows it was consumed.
        await bus.publish("vehicle.location.fe-0", report(30.0, 5))
        await bus.publish("vehicle.location.pc-0", report(31.5, 5))

        async def pc_moved():
            return (await api.get("/v1/units/pc-0", headers=headers)).json()["location"]["lat"] == 31.5

        await eventually(pc_moved, "the report after the older one was consumed")
        assert (await api.get("/v1/units/fe-0", headers=headers)).json()["location"]["lat"] == row["location"]["lat"]

        # The same through the API: an older position is ignored, a newer one is stored.
        older = {"lat": 30.0, "lon": 121.0, "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base))}
        answer = await api.put("/v1/units/fe-0/location", json=older, headers=headers)
        assert answer.status_code == 200 and answer.json()["location"] == row["location"]
        newer = {**older, "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(base + 250))}
        answer = await api.put("/v1/units/fe-0/location", json=newer, headers=headers)
        assert answer.status_code == 200 and answer.json()["location"]["lat"] == 30.0


async def test_exercise_incidents_take_exercise_units_or_lent_live_ones(dispatch_app, db_url, wired, operator_headers):
    intake, facts, _ = wired
    headers = operator_headers("dispatcher")
    drill = operator_headers("drill_runner", subject="drill-bot")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        live = [unit("live-fe", "fire_engine", km_east=0.1), unit("live-pc", "patrol_car", km_east=0.1)]
        assert (await api.post("/v1/units:batch", json={"units": live}, headers=headers)).status_code == 201
        # A drill runner registers exercise units only.
        r = await api.post("/v1/units", json=unit("x-fe", "fire_engine", km_east=5), headers=drill)
        assert r.status_code == 403
        r = await api.post("/v1/units", json=unit("x-fe", "fire_engine", km_east=5, exercise=True), headers=drill)
        assert r.status_code == 201

        drill_incident = new_incident()
        await intake.stage_to(drill_incident, "isolation", exercise=True)

        async def first_round():
            view = (await api.get(f"/v1/incidents/{drill_incident}", headers=drill)).json()
            return view if view.get("units") else None

        view = await eventually(first_round)
        assert [u["unit_id"] for u in view["units"]] == ["x-fe"]  # the nearer live units were not touched
        assert view["missing"] == {"patrol_car": 1} and view["exercise"] is True
        assert "patrol_car" in view["shortfalls"][0]

        # The drill borrows the live patrol car explicitly, then tops up.
        r = await api.put("/v1/units/live-pc/lend", json={"drill": "city-drill-7"}, headers=drill)
        assert r.status_code == 200 and r.json()["lent_to_drill"] == "city-drill-7"
        r = await api.post(f"/v1/incidents/{drill_incident}/assignments:recommended", headers=drill)
        assert [a["unit_id"] for a in r.json()["assignments"]] == ["live-pc"]
        assert all(e["exercise"] for e in facts.of("dispatch.unit.assigned", drill_incident))

        # A live incident never takes an exercise unit, and a drill runner cannot act on it.
        live_incident = new_incident()
        await intake.stage_to(live_incident, "isolation")

        async def live_round():
            view = (await api.get(f"/v1/incidents/{live_incident}", headers=headers)).json()
            return view if view.get("units") else None

        view = await eventually(live_round)
        assert [u["unit_id"] for u in view["units"]] == ["live-fe"]
        r = await api.post(
            f"/v1/incidents/{live_incident}/assignments", json={"unit_ids": ["x-fe"], "reason": "x"}, headers=headers
        )
        assert r.status_code == 409 and "exercise unit" in r.json()["detail"]
        r = await api.post(f"/v1/incidents/{live_incident}/assignments:recommended", headers=drill)
        assert r.status_code == 403

        # Taking the lent unit back releases it from the drill at once.
        r = await api.delete("/v1/units/live-pc/lend", headers=headers)
        assert r.status_code == 200 and r.json()["lent_to_drill"] is None and r.json()["incident_id"] is None
        view = (await api.get(f"/v1/incidents/{drill_incident}", headers=drill)).json()
        assert [u["unit_id"] for u in view["units"]] == ["x-fe"]


async def test_merge_moves_the_units_and_a_returning_unit_leaves_its_incident(
    dispatch_app, db_url, wired, operator_headers
):
    intake, facts, bus = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit(f"fe-{i}", "fire_engine", km_east=i + 1) for i in range(3)]
        roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 1) for i in range(3)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        target, source = new_incident(), new_incident()
        for incident in (target, source):
            await intake.stage_to(incident, "isolation")

        async def both_served():
            views = [(await api.get(f"/v1/incidents/{i}", headers=headers)).json() for i in (target, source)]
            return views if all(len(v.get("units", [])) == 2 for v in views) else None

        _, source_view = await eventually(both_served)
        moving = {u["unit_id"] for u in source_view["units"]}

        merged = IncidentMerged(incident_id=target, merged_incident_id=source, alarms_moved=3, actor="dispatcher-2")
        await bus.publish_event(make_event("incident.merged", merged, source="incident-intake", incident_id=target))

        async def merged_away():
            view = (await api.get(f"/v1/incidents/{source}", headers=headers)).json()
            return view if view["merged_into"] == target and not view["units"] else None

        view = await eventually(merged_away)
        assert view["settled"] is True
        # The target's plan wants one of each: the units it took over are more than that, and the
        # surplus automatic assignments go home.
        target_view = (await api.get(f"/v1/incidents/{target}", headers=headers)).json()
        assert target_view["held"] == {"fire_engine": 1, "patrol_car": 1}

        async def moved_events():
            return {e["data"]["unit_id"] for e in facts.of("dispatch.unit.assigned", target)} >= moving

        await eventually(moved_events)
        moved = [e for e in facts.of("dispatch.unit.assigned", target) if e["data"]["source"] == "reassigned"]
        assert {e["data"]["unit_id"] for e in moved} == moving

        # A unit reporting that it returns is no longer held by its incident (which, still in
        # isolation, gets others in its place: see the breakdown test).
        returned = [u["unit_id"] for u in target_view["units"]]
        for uid in returned:
            for status in ("en_route", "on_scene", "returning"):
                r = await api.post(f"/v1/units/{uid}/status", json={"status": status}, headers=headers)
                assert r.status_code == 200, r.text
        view = (await api.get(f"/v1/incidents/{target}", headers=headers)).json()
        assert not {u["unit_id"] for u in view["units"]} & set(returned)
        assert {a["unit_id"] for a in view["released"] if a["release_reason"] == "unit reported returning"} == set(
            returned
        )
        r = await api.post(f"/v1/units/{uid}/status", json={"status": "available"}, headers=headers)
        assert r.json()["status"] == "available" and r.json()["incident_id"] is None


async def test_a_medical_call_that_became_a_crowd_crush_gets_the_crowd_crush_units_at_once(
    dispatch_app, db_url, wired, operator_headers
):
    """In isolation as a medical call (one ambulance), the incident becomes a crowd crush
    (incident.category.changed): the crowd-crush plan's isolation units go out without waiting for
    the next stage, and a stage change that left intake before the category change but arrives
    after it does not make it a medical call again."""
    intake, facts, bus = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit(f"amb-{i}", "ambulance", km_east=i + 1) for i in range(2)]
        roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 1) for i in range(4)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        incident = new_incident()
        await intake.stage_to(incident, "isolation", category="medical")

        async def holding(expected: dict[str, int]) -> dict | None:
            view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
            return view if view.get("held") == expected else None

        await eventually(lambda: holding({"ambulance": 1}), "the medical plan's ambulance")
        changed = CategoryChanged(
            incident_id=incident,
            from_category="medical",
            to_category="crowd_crush",
            level=4,
            alarm_id="a-7",
            reason="a crowd_crush alarm arrived near this medical-only incident",
            actor="correlation",
            version=intake.versions[incident] + 5,
        )
        await bus.publish_event(
            make_event("incident.category.changed", changed, source="incident-intake", incident_id=incident)
        )
        view = await eventually(lambda: holding({"patrol_car": 3}), "the crowd-crush plan's isolation units")
        assert view["category"] == "crowd_crush"

        # Older than the category change, newer than the stage dispatch holds: its stage counts,
        # its category (medical) does not.
        await intake.stage_to(incident, "handling", category="medical")
        view = await eventually(lambda: holding({"patrol_car": 3, "ambulance": 1}), "the crowd crush's handling")
        assert view["category"] == "crowd_crush" and view["stage"] == "handling"


async def test_a_split_that_gives_back_a_merged_incident_takes_its_units_back(
    dispatch_app, db_url, wired, operator_headers
):
    """X (in isolation, its units out) merged into Y, then X's alarms split out again into N:
    X's units go with N, Y gets units of its own again, and nobody else moves."""
    intake, facts, bus = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit(f"fe-{i}", "fire_engine", km_east=i + 1) for i in range(4)]
        roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 1) for i in range(4)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        y, x, n = new_incident(), new_incident(), new_incident()
        for incident in (y, x):
            await intake.stage_to(incident, "isolation")

        async def held(incident: str, count: int) -> set[str] | None:
            units = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json().get("units", [])
            return {u["unit_id"] for u in units} if len(units) == count else None

        x_units = await eventually(lambda: held(x, 2), "x served")
        merged = IncidentMerged(incident_id=y, merged_incident_id=x, alarms_moved=2, actor="dispatcher-2")
        await bus.publish_event(make_event("incident.merged", merged, source="incident-intake", incident_id=y))

        async def y_took_over() -> bool | None:
            return True if await held(y, 2) == x_units else None

        await eventually(y_took_over, "y holding x's units")

        # intake's order for a split that gives x's state back: N, the split, then N's stage.
        created = IncidentCreated(
            incident_id=n,
            category="fire",
            level=4,
            lat=CENTRE[0],
            lon=CENTRE[1],
            first_alarm_at=datetime.now(UTC),
            alarm_id="a-x",
            gateway_id="gw-1",
            exercise=False,
        )
        await bus.publish_event(make_event("incident.created", created, source="incident-intake", incident_id=n))
        split = IncidentSplit(incident_id=y, new_incident_id=n, alarm_ids=["gw-1:a-x"], actor="bob", state_of=x)
        await bus.publish_event(make_event("incident.split", split, source="incident-intake", incident_id=y))
        await intake.stage_to(n, "isolation")

        # N's stage may be worked on before the split (another incident's lane): then N first gets
        # units of its own, which go home once x's come back. Either way N ends with x's units.

        async def n_took_back() -> bool | None:
            return True if await held(n, 2) == x_units else None

        await eventually(n_took_back, "n holding x's units")
        y_units = await eventually(lambda: held(y, 2), "y served again")
        assert not y_units & x_units

        async def back() -> list[dict] | None:
            told = [e for e in facts.of("dispatch.unit.assigned", n) if e["data"]["unit_id"] in x_units]
            return told if len(told) == 2 else None

        for event in await eventually(back, "n's assignments announced"):
            assert event["data"]["source"] == "reassigned"
            assert event["data"]["reason"] == f"alarms split from {y} into {n}, with the units that came with them"
        view = (await api.get(f"/v1/incidents/{n}", headers=headers)).json()
        assert view["held"] == {"fire_engine": 1, "patrol_car": 1}
        assert not {a["unit_id"] for a in view["released"]} & x_units  # only units of its own went home


async def test_unit_edits_are_versioned_and_posts_idempotent(dispatch_app, db_url, operator_headers):
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url) as (_, api):
        key = {**headers, "Idempotency-Key": "register-fe-9"}
        first = await api.post("/v1/units", json=unit("fe-9", "fire_engine"), headers=key)
        again = await api.post("/v1/units", json=unit("fe-9", "fire_engine"), headers=key)
        assert first.status_code == again.status_code == 201
        assert again.headers.get("Idempotent-Replay") == "true" and again.json() == first.json()
        assert first.json()["agency"] == "fire" and first.json()["version"] == 1

        r = await api.patch("/v1/units/fe-9", json={"version": 1, "district": "jingan"}, headers=headers)
        assert r.status_code == 200 and r.json()["district"] == "jingan" and r.json()["version"] == 2
        r = await api.patch("/v1/units/fe-9", json={"version": 1, "callsign": "Engine 9"}, headers=headers)
        assert r.status_code == 409 and r.json()["current_version"] == 2
        r = await api.post("/v1/units/fe-9/status", json={"status": "out_of_service", "version": 1}, headers=headers)
        assert r.status_code == 409
        r = await api.post("/v1/units/fe-9/status", json={"status": "out_of_service", "version": 2}, headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "out_of_service"
        assert (await api.delete("/v1/units/fe-9", headers=headers)).status_code == 204
        assert (await api.get("/v1/units/fe-9", headers=headers)).status_code == 404


async def test_exercise_data_is_purged_without_touching_live_data(dispatch_app, db_url, wired, operator_headers):
    intake, facts, _ = wired
    drill = operator_headers("drill_runner", subject="drill-bot")
    headers = operator_headers("dispatcher", "commander")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit("live-fe", "fire_engine"), unit("live-pc", "patrol_car")]
        roster += [unit("x-fe", "fire_engine", exercise=True), unit("x-pc", "patrol_car", exercise=True)]
        roster += [unit("lent-pc", "patrol_car", km_east=9)]
        await api.post("/v1/units:batch", json={"units": roster}, headers=headers)
        await api.put("/v1/units/lent-pc/lend", json={"drill": "d-1"}, headers=drill)
        live, drill_incidents = new_incident(), [new_incident(), new_incident()]
        await intake.stage_to(live, "isolation")
        for incident in drill_incidents:
            await intake.stage_to(incident, "isolation", exercise=True)

        async def dispatched():
            views = [(await api.get(f"/v1/incidents/{i}", headers=headers)).json() for i in (live, *drill_incidents)]
            return views if all(v.get("settled") is False for v in views) else None

        await eventually(dispatched)
        listed = (await api.get("/v1/exercise", headers=drill)).json()
        assert sorted(listed["incidents"]) == sorted(drill_incidents) and listed["active_assignments"] == 3
        assert (await api.delete("/v1/exercise", headers=headers)).status_code == 403
        r = await api.delete("/v1/exercise", params={"units": "true"}, headers=drill)
        assert r.json() == {"incidents_purged": 2, "assignments_purged": 3, "units_purged": 2}

        live_view = (await api.get(f"/v1/incidents/{live}", headers=headers)).json()
        assert {u["unit_id"] for u in live_view["units"]} == {"live-fe", "live-pc"}
        assert (await api.get("/v1/units/lent-pc", headers=headers)).json()["status"] == "available"
        assert (await api.get("/v1/units/x-fe", headers=headers)).status_code == 404
        assert (await api.get(f"/v1/incidents/{drill_incidents[0]}", headers=drill)).status_code == 404


async def test_malformed_incident_events_go_to_the_dead_letter_subject_with_the_reason(
    dispatch_app, db_url, wired, operator_headers
):
    intake, _, bus = wired
    dead: list[tuple[str, str]] = []

    async def on_dead(msg):
        dead.append((msg.subject, msg.headers.get("Ecs-Reason", "")))

    await bus.nc.subscribe("deadletter.incident.>", cb=on_dead)
    async with dispatch_app(db_url) as (_, api):
        bad = make_event(
            "incident.stage.changed", {"incident_id": "x", "to_stage": "isolation"}, source="incident-intake"
        )
        await bus.publish_event(bad)
        await bus.publish("incident.level.changed", b"not an envelope", {"Nats-Msg-Id": "garbage-1"})
        good = new_incident()
        await intake.stage_to(good, "isolation")  # the consumer keeps going

        async def two_dead():
            return len(dead) == 2

        await eventually(two_dead)
        reasons = dict(dead)
        assert "data.from_stage: Field required" in reasons["deadletter.incident.stage.changed"]
        assert "not a valid envelope" in reasons["deadletter.incident.level.changed"]

        async def known():
            return (await api.get(f"/v1/incidents/{good}", headers=operator_headers("auditor"))).status_code == 200

        await eventually(known)


async def test_an_incident_that_became_a_crowd_crush_is_dispatched_by_the_crowd_crush_plan(
    dispatch_app, db_url, wired, operator_headers
):
    """Intake turns a medical-only incident into the scene reported near it; the stage change
    carries the new category, and dispatch follows that plan, not the one it first heard of."""
    intake, _, bus = wired
    headers = operator_headers("dispatcher")
    async with dispatch_app(db_url, min_cover=0) as (_, api):
        roster = [unit(f"amb-{i}", "ambulance", km_east=i + 1) for i in range(2)]
        roster += [unit(f"pc-{i}", "patrol_car", km_east=i + 0.5) for i in range(4)]
        assert (await api.post("/v1/units:batch", json={"units": roster}, headers=headers)).status_code == 201

        incident = new_incident()
        created = IncidentCreated(
            incident_id=incident,
            category="medical",
            level=4,
            lat=CENTRE[0],
            lon=CENTRE[1],
            first_alarm_at=datetime.now(UTC),
            alarm_id="a-1",
            gateway_id="gw-1",
            exercise=False,
        )
        await bus.publish_event(make_event("incident.created", created, source="incident-intake", incident_id=incident))

        async def known():
            return (await api.get(f"/v1/incidents/{incident}", headers=headers)).status_code == 200

        await eventually(known)
        await intake.stage_to(incident, "isolation", level=4, category="crowd_crush")  # IV: 3 patrol cars

        async def assigned():
            view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
            return view if len(view.get("units", [])) == 3 else None

        view = await eventually(assigned)
        assert view["category"] == "crowd_crush"
        assert sorted(u["unit_id"] for u in view["units"]) == ["pc-0", "pc-1", "pc-2"]  # not the medical ambulance
