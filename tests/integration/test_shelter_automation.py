"""shelter-registry following the lifecycle, in-process against a real nats-server and both stores:
an evacuation order (the response plan's ``evacuate``, answered on ``rpc.dispatch.plan.get`` from
dispatch's own gas-leak plan) opens the nearest standby shelters of the incident's world until the
expected evacuees fit; ``shelter.incident.settled`` follows the incident's evacuees in aftermath;
malformed events are dead-lettered with the reason."""

from __future__ import annotations

import uuid
from importlib import resources
from typing import Any

import orjson

from dispatch.domain import parse_plan, plan_published
from ecs.bus import Bus
from ecs.contracts import StageChanged
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


async def settled_facts(bus: Bus, incident_id: str) -> list[bool]:
    found = []
    for e in await service.shelter_events(bus, "shelter.incident.settled"):
        if e["data"]["incident_id"] == incident_id:
            assert e["data"]["participant"] == "shelter"
            found.append(e["data"]["settled"])
    return found


async def test_an_evacuation_order_opens_the_nearest_standby_shelters_until_the_evacuees_fit(shelter_app, db_url):
    async with shelter_app(db_url, default_expected_evacuees=150) as (_, client, bus):
        await serve_plans(bus)
        registry = Registry(client, bus)
        standby = [shelter(f"S{i}", i) for i in (1, 2, 3)] + [shelter("EX1", 0.5, exercise=True)]
        await registry.ok("/v1/shelters:batch", {"shelters": standby})
        leak = Lifecycle(bus)
        await leak.to("isolation")

        async def opened() -> list[str]:
            page = (await registry.get("/v1/shelters", status="open")).json()["items"]
            return sorted(s["id"] for s in page)

        assert await eventually(opened) == ["S1", "S2"]  # 150 people: the two nearest, 100 each
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
