"""shelter-registry following the lifecycle, in-process against a real nats-server and both stores:
an evacuation order (the response plan's ``evacuate`` and ``evacuation_radius_m``, answered on
``rpc.dispatch.plan.get`` from dispatch's own gas-leak plan) opens the nearest standby shelters of
the incident's world until the expected evacuees (the plan's circle times a density, unless an
operator set them) fit; a level raise that evacuates farther opens more, a lowering closes none;
``shelter.incident.settled`` follows the incident's evacuees in aftermath; malformed events are
dead-lettered with the reason."""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Any

import orjson

from dispatch.domain import parse_plan, plan_published
from ecs.bus import Bus
from ecs.contracts import CategoryChanged, IncidentMerged, LevelChanged, StageChanged
from ecs.envelope import make_event, utcnow
from ecs.testing import eventually
from tests.integration import test_shelter_service as service
from tests.integration.test_shelter_service import CENTRE, Registry, family, shelter

shelter_app = service.shelter_app


async def serve_plans(bus: Bus) -> None:
    """Answer plan requests with dispatch's own plan files, as dispatch does."""
    plans = {}
    for name in ("gas_leak", "fire"):
        text = resources.files("dispatch").joinpath(f"plans/{name}.yaml").read_text()
        plans[name] = plan_published(parse_plan(text, f"{name}.yaml"), "test", utcnow())

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        return orjson.loads(orjson.dumps(plans[request["category"]].model_dump(mode="json")))

    await bus.serve("rpc.dispatch.plan.get", answer)


async def serve_radii(bus: Bus, radii: dict[str, int]) -> None:
    """Answer plan requests with a plan that evacuates ``radii[level]`` metres (0: does not)."""

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        levels = {name: {"evacuate": r > 0, "evacuation_radius_m": r} for name, r in radii.items()}
        return {"category": request["category"], "version": 1, "levels": levels}

    await bus.serve("rpc.dispatch.plan.get", answer)


class Lifecycle:
    """Plays incident-intake: its stage events about one incident."""

    def __init__(self, bus: Bus, category: str = "gas_leak", level: int = 3, exercise: bool = False) -> None:
        self.bus, self.category, self.level, self.exercise = bus, category, level, exercise
        self.id = "I" + uuid.uuid4().hex[:12]
        self.version, self.stage = 1, "reported"

    async def to(self, stage: str) -> None:
        self.version += 1
        data = StageChanged(
            incident_id=self.id,
            from_stage=self.stage,
            to_stage=stage,
            actor="commander-1",
            version=self.version,
            category=self.category,
            level=self.level,
            lat=CENTRE[0],
            lon=CENTRE[1],
        )
        self.stage = stage
        await self.bus.publish_event(
            make_event(
                "incident.stage.changed", data, source="incident-intake", incident_id=self.id, exercise=self.exercise
            )
        )

    async def level_to(self, level: int) -> None:
        self.version += 1
        data = LevelChanged(
            incident_id=self.id,
            from_level=self.level,
            to_level=level,
            reason="more casualties",
            actor="commander-1",
            version=self.version,
        )
        self.level = level
        await self.bus.publish_event(
            make_event(
                "incident.level.changed", data, source="incident-intake", incident_id=self.id, exercise=self.exercise
            )
        )


async def settled_facts(bus: Bus, incident_id: str) -> list[bool]:
    found = []
    for e in await service.shelter_events(bus, "shelter.incident.settled"):
        if e["data"]["incident_id"] == incident_id:
            assert e["data"]["participant"] == "shelter"
            found.append(e["data"]["settled"])
    return found


async def test_an_evacuation_order_opens_the_nearest_standby_shelters_until_the_evacuees_fit(shelter_app, db_url):
    # Gas leak level III evacuates 100 m: 0.0314 km² at 4,775 people a km² is 151 people.
    async with shelter_app(db_url, evacuation_density_per_km2=4775) as (_, client, bus):
        await serve_plans(bus)
        registry = Registry(client, bus)
        standby = [shelter(f"S{i}", i) for i in (1, 2, 3)] + [shelter("EX1", 0.5, exercise=True)]
        await registry.ok("/v1/shelters:batch", {"shelters": standby})
        leak = Lifecycle(bus)
        await leak.to("isolation")

        async def opened() -> list[str]:
            page = (await registry.get("/v1/shelters", status="open")).json()["items"]
            return sorted(s["id"] for s in page)

        assert await eventually(opened) == ["S1", "S2"]  # 151 people: the two nearest, 100 each
        assert (await registry.shelter("S1"))["opened_for"] == leak.id
        assert (await registry.shelter("EX1"))["status"] == "standby"  # a live incident takes no drill shelter

        # The commander's estimate grows: one more opens.
        r = await registry.client.put(
            f"/v1/incidents/{leak.id}/expected-evacuees",
            json={"expected_evacuees": 250},
            headers=service.auth("commander"),
        )
        assert r.status_code == 200 and r.json()["opened"] == ["S3"], r.text
        r = await registry.client.put(
            "/v1/incidents/nope/expected-evacuees", json={"expected_evacuees": 1}, headers=service.auth("commander")
        )
        assert r.status_code == 404

        # A drill's evacuation opens drill shelters only.
        drill = Lifecycle(bus, exercise=True)
        await drill.to("isolation")

        async def drill_opened() -> bool:
            return (await registry.shelter("EX1"))["status"] == "open"

        await eventually(drill_opened)
        r = await registry.post("/v1/allocations", family(incident_id=drill.id), "drill_runner")
        assert r.status_code == 201 and r.json()["shelter_id"] == "EX1", r.text


async def open_ids(registry: Registry) -> list[str]:
    page = (await registry.get("/v1/shelters", status=["open", "full"], limit=1000)).json()["items"]
    return sorted(s["id"] for s in page)


async def test_a_level_raise_that_evacuates_farther_opens_more_shelters_and_a_lowering_closes_none(shelter_app, db_url):
    # 500 people a km²: the plan's 300 m is 142 people, its 1,000 m 1,571.
    async with shelter_app(db_url, evacuation_density_per_km2=500) as (_, client, bus):
        await serve_radii(bus, {"I": 1000, "II": 1000, "III": 300, "IV": 0})
        registry = Registry(client, bus)
        standby = [shelter(f"S{i}", i) for i in (1, 2)] + [shelter(f"S{i}", i, area_m2=1500) for i in (3, 4, 5)]
        await registry.ok("/v1/shelters:batch", {"shelters": standby})
        leak = Lifecycle(bus, level=3)
        await leak.to("isolation")

        async def opened(expected: list[str]):
            async def probe() -> bool:
                return await open_ids(registry) == expected

            return probe

        await eventually(await opened(["S1", "S2"]), "142 people: two shelters of 100")
        # A household placed meanwhile holds places of the incident: they count as fitting.
        await registry.ok("/v1/allocations", family(incident_id=leak.id))

        await leak.level_to(2)  # the plan now evacuates 1,000 m: 1,571 people
        await eventually(await opened(["S1", "S2", "S3", "S4"]), "the raise opens the next nearest")
        assert (await registry.shelter("S3"))["opened_for"] == leak.id
        assert (await registry.shelter("S5"))["status"] == "standby"  # 2,200 places take 1,571

        await leak.level_to(4)  # the plan no longer evacuates: nothing closes
        await leak.to("handling")  # the stage event (level IV) is handled after the lowering
        lowered = await open_ids(registry)

        async def handled() -> bool:
            return (await registry.get(f"/v1/incidents/{leak.id}/dashboard")).status_code == 200 and (
                await open_ids(registry)
            ) == ["S1", "S2", "S3", "S4"]

        await eventually(handled)
        assert lowered == ["S1", "S2", "S3", "S4"]


async def test_a_medical_call_that_becomes_a_gas_leak_opens_shelters_at_once(shelter_app, db_url):
    """In isolation as a medical call (whose plan evacuates nobody), the incident becomes a gas
    leak (incident.category.changed, no stage change with it): the gas leak's evacuation opens
    shelters at once."""
    async with shelter_app(db_url, evacuation_density_per_km2=500) as (_, client, bus):

        async def answer(request: dict[str, Any]) -> dict[str, Any]:
            r = 300 if request["category"] == "gas_leak" else 0
            levels = {name: {"evacuate": r > 0, "evacuation_radius_m": r} for name in ("I", "II", "III", "IV")}
            return {"category": request["category"], "version": 1, "levels": levels}

        await bus.serve("rpc.dispatch.plan.get", answer)
        registry = Registry(client, bus)
        await registry.ok("/v1/shelters:batch", {"shelters": [shelter(f"S{i}", i) for i in (1, 2, 3)]})
        call = Lifecycle(bus, category="medical", level=3)
        await call.to("isolation")

        async def known() -> bool:
            return (await registry.get(f"/v1/incidents/{call.id}/dashboard")).status_code == 200

        await eventually(known, "the medical call known")
        assert await open_ids(registry) == []
        call.version += 1
        changed = CategoryChanged(
            incident_id=call.id,
            from_category="medical",
            to_category="gas_leak",
            level=3,
            alarm_id="a-2",
            reason="a gas_leak alarm arrived near this medical-only incident",
            actor="correlation",
            version=call.version,
        )
        await bus.publish_event(
            make_event("incident.category.changed", changed, source="incident-intake", incident_id=call.id)
        )

        async def opened() -> bool:
            return await open_ids(registry) == ["S1", "S2"]

        await eventually(opened, "142 people: two shelters of 100")
        assert (await registry.shelter("S1"))["opened_for"] == call.id


async def test_an_operators_expected_evacuees_override_the_plans_estimate(shelter_app, db_url):
    async with shelter_app(db_url, evacuation_density_per_km2=500) as (_, client, bus):
        await serve_radii(bus, {"I": 1000, "II": 1000, "III": 300, "IV": 0})
        registry = Registry(client, bus)
        await registry.ok("/v1/shelters:batch", {"shelters": [shelter(f"S{i}", i) for i in (1, 2, 3, 4)]})
        leak = Lifecycle(bus, level=4)  # level IV: the plan does not evacuate
        await leak.to("isolation")

        async def known() -> bool:
            return (await registry.get(f"/v1/incidents/{leak.id}/dashboard")).status_code == 200

        await eventually(known)
        assert await open_ids(registry) == []
        r = await client.put(
            f"/v1/incidents/{leak.id}/expected-evacuees",
            json={"expected_evacuees": 150},
            headers=service.auth("shelter_manager"),
        )
        assert r.status_code == 200 and r.json()["opened"] == ["S1", "S2"], r.text

        await leak.level_to(2)  # 1,000 m would be 1,571 people; the operator said 150
        await leak.to("handling")  # a later event, to know the raise was handled

        async def handling() -> bool:
            return (await registry.get(f"/v1/incidents/{leak.id}/dashboard")).status_code == 200

        await eventually(handling)
        for _ in range(20):  # give the raise every chance to (wrongly) open more
            assert await open_ids(registry) == ["S1", "S2"]


async def test_an_exercise_incidents_raise_opens_exercise_shelters_only(shelter_app, db_url):
    async with shelter_app(db_url, evacuation_density_per_km2=500) as (_, client, bus):
        await serve_radii(bus, {"I": 1000, "II": 1000, "III": 300, "IV": 0})
        registry = Registry(client, bus)
        live = [shelter("L1", 0.2, area_m2=3000)]
        drill = [shelter(f"EX{i}", i, exercise=True) for i in (1, 2, 3)] + [
            shelter("EX4", 4, area_m2=3000, exercise=True)
        ]
        await registry.ok("/v1/shelters:batch", {"shelters": live + drill})
        exercise = Lifecycle(bus, level=3, exercise=True)
        await exercise.to("isolation")

        async def opened(expected: list[str]):
            async def probe() -> bool:
                return await open_ids(registry) == expected

            return probe

        await eventually(await opened(["EX1", "EX2"]), "142 people: two exercise shelters")
        await exercise.level_to(1)
        await eventually(await opened(["EX1", "EX2", "EX3", "EX4"]), "1,571 people: every exercise shelter")
        assert (await registry.shelter("L1"))["status"] == "standby"  # the nearest, but live


async def test_a_plan_without_evacuation_opens_nothing(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, bus):
        await serve_plans(bus)
        registry = Registry(client, bus)
        await registry.ok("/v1/shelters", shelter("S1", 1))
        small = Lifecycle(bus, category="gas_leak", level=4)  # level IV: evacuate: false
        await small.to("isolation")

        async def known() -> bool:
            return (await registry.get(f"/v1/incidents/{small.id}/dashboard")).status_code == 200

        await eventually(known)
        assert (await registry.shelter("S1"))["status"] == "standby"


async def test_settled_follows_the_incidents_evacuees_in_aftermath(shelter_app, db_url):
    async with shelter_app(db_url, default_expected_evacuees=10) as (_, client, bus):
        await serve_plans(bus)
        registry = Registry(client, bus)
        await registry.ok("/v1/shelters", shelter("S1", 1))
        leak = Lifecycle(bus)
        await leak.to("isolation")

        async def open_() -> bool:
            return (await registry.shelter("S1"))["status"] == "open"

        await eventually(open_)
        reg = await registry.ok("/v1/allocations", family(incident_id=leak.id))
        await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {}, 200)
        for stage in ("handling", "opinion_control", "aftermath"):
            await leak.to(stage)

        async def facts(expected: list[bool]):
            async def probe() -> bool:
                return await settled_facts(bus, leak.id) == expected

            return probe

        await eventually(await facts([False]), "settled: false while the family is in the shelter")
        await registry.ok(f"/v1/registrations/{reg['id']}/check-out", {}, 200)
        await eventually(await facts([False, True]), "settled once the family checked out")
        d = (await registry.get(f"/v1/incidents/{leak.id}/dashboard")).json()
        assert (d["households"], d["occupied"], d["checked_in_people"]) == (0, 0, 0)
        assert sum(b["arrivals"] for b in d["timeline"]) == sum(b["departures"] for b in d["timeline"]) == 4


async def test_malformed_incident_events_go_to_the_dead_letter_subject_with_the_reason(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, bus):
        dead: list[tuple[str, str]] = []

        async def on_dead(msg):
            dead.append((msg.subject, msg.headers.get("Ecs-Reason", "")))

        await bus.nc.subscribe("deadletter.incident.>", cb=on_dead)
        bad = make_event(
            "incident.stage.changed", {"incident_id": "x", "to_stage": "isolation"}, source="incident-intake"
        )
        await bus.publish_event(bad)
        await bus.publish("incident.level.changed", b"not an envelope", {"Nats-Msg-Id": "garbage-1"})
        good = Lifecycle(bus, category="fire", level=4)
        await good.to("isolation")  # the consumer keeps going (no dispatch here: no plan, no evacuation)

        async def two_dead() -> bool:
            return len(dead) == 2

        await eventually(two_dead)
        reasons = dict(dead)
        assert "data.from_stage: Field required" in reasons["deadletter.incident.stage.changed"]
        assert "not a valid envelope" in reasons["deadletter.incident.level.changed"]
        registry = Registry(client, bus)

        async def known() -> bool:
            return (await registry.get(f"/v1/incidents/{good.id}/dashboard")).status_code == 200

        await eventually(known)


async def test_reunification_records_expire_after_the_incident_closed(shelter_app, db_url):
    from datetime import timedelta

    from sqlalchemy import update

    from shelter_registry import store
    from shelter_registry.handlers.households import forget_expired

    async with shelter_app(db_url, retention_days=30) as (app, client, bus):
        await serve_plans(bus)
        registry = Registry(client, bus)
        await registry.open(shelter("S1", 1))
        fire = Lifecycle(bus, category="fire", level=4)
        await fire.to("isolation")

        async def known() -> bool:
            return (await registry.get(f"/v1/incidents/{fire.id}/dashboard")).status_code == 200

        await eventually(known)
        reg = await registry.ok("/v1/allocations", family(incident_id=fire.id))
        search = {"name": "王芳", "phone": service.FAMILY_PHONE}
        assert (await registry.ok("/v1/reunification/search", search, 200))["found"] is True
        await registry.ok(f"/v1/registrations/{reg['id']}/cancel", {}, 200)
        for stage in ("handling", "opinion_control", "aftermath", "closed"):
            await fire.to(stage)

        async def closed() -> bool:
            async with app.state.db.engine.connect() as conn:
                row = await store.incident(conn, fire.id)
            return row is not None and row.closed_at is not None

        await eventually(closed)
        assert await forget_expired(app.state.shelter) == 0  # closed just now: kept
        async with app.state.db.engine.begin() as conn:
            month_ago = utcnow() - timedelta(days=31)
            await conn.execute(
                update(store.incidents).where(store.incidents.c.id == fire.id).values(closed_at=month_ago)
            )
        assert await forget_expired(app.state.shelter) == 4
        assert (await registry.ok("/v1/reunification/search", search, 200))["found"] is False
        kept = (await registry.get(f"/v1/registrations/{reg['id']}")).json()
        assert kept["persons"] == [] and kept["people"] == 4  # the counts and the history stay
        assert len((await registry.get(f"/v1/registrations/{reg['id']}/history")).json()["items"]) == 2


async def test_a_merged_incidents_households_go_with_it_and_its_settlement_waits_for_them(shelter_app, db_url):
    """X's household, checked in, becomes Y's when X is merged into Y: Y's dashboard counts it, X
    holds nobody, and Y in aftermath is settled only once the household checked out."""
    async with shelter_app(db_url, default_expected_evacuees=10) as (_, client, bus):
        await serve_plans(bus)
        registry = Registry(client, bus)
        await registry.ok("/v1/shelters", shelter("S1", 1))
        x, y = Lifecycle(bus), Lifecycle(bus)
        for incident in (x, y):
            await incident.to("isolation")

        async def known() -> bool:
            for incident in (x, y):
                if (await registry.get(f"/v1/incidents/{incident.id}/dashboard")).status_code != 200:
                    return False
            return (await registry.shelter("S1"))["status"] == "open"

        await eventually(known, "both incidents known and S1 open")
        reg = await registry.ok("/v1/allocations", family(incident_id=x.id))
        await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {}, 200)
        merged = IncidentMerged(incident_id=y.id, merged_incident_id=x.id, alarms_moved=2, actor="dispatcher-2")
        await bus.publish_event(make_event("incident.merged", merged, source="incident-intake", incident_id=y.id))

        async def moved() -> bool:
            d = (await registry.get(f"/v1/incidents/{y.id}/dashboard")).json()
            return d["households"] == 1 and d["checked_in_people"] == 4

        await eventually(moved, "x's household counted on y")
        d = (await registry.get(f"/v1/incidents/{x.id}/dashboard")).json()
        assert (d["households"], d["checked_in_people"]) == (0, 0)
        for stage in ("handling", "opinion_control", "aftermath"):
            await y.to(stage)

        async def facts(expected: list[bool]):
            async def probe() -> bool:
                return await settled_facts(bus, y.id) == expected

            return probe

        await eventually(await facts([False]), "y not settled while x's household is in the shelter")
        await registry.ok(f"/v1/registrations/{reg['id']}/check-out", {}, 200)
        await eventually(await facts([False, True]), "y settled once the household checked out")


async def test_nobody_is_placed_for_a_closed_incident_and_its_settlement_stays(shelter_app, db_url):
    """A household placed for a closed incident used to be taken, and told the lifecycle the
    incident was unsettled again: now 409 naming incident_id, and nothing is stored or told."""
    async with shelter_app(db_url) as (_, client, bus):
        registry = Registry(client, bus)
        await registry.ok("/v1/shelters", shelter("S1", 1))
        done = Lifecycle(bus, category="fire", level=4)
        for stage in ("isolation", "handling", "opinion_control", "aftermath", "closed"):
            await done.to(stage)

        async def settled() -> bool:
            return await settled_facts(bus, done.id) == [True]

        await eventually(settled, "the closed incident settled")
        for path, body in (
            ("/v1/allocations", family(incident_id=done.id)),
            (
                "/v1/allocations:batch",
                {
                    "incident_id": done.id,
                    "near": {"lat": CENTRE[0], "lon": CENTRE[1]},
                    "households": [{"ref": "h-1", "people": 2}],
                },
            ),
        ):
            r = await registry.post(path, body)
            assert r.status_code == 409, (path, r.text)
            assert r.json()["field"] == "incident_id" and "is closed" in r.json()["detail"]
        d = (await registry.get(f"/v1/incidents/{done.id}/dashboard")).json()
        assert (d["households"], d["occupied"]) == (0, 0)
        assert await settled_facts(bus, done.id) == [True]
