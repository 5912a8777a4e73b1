"""shelter-registry's exercise data (DESIGN §8) in-process against a real nats-server and a real
database (both stores): what drills left is listed and purged — placed and checked-in exercise
evacuees give their places back first — and live shelters, registrations and their history stay
byte for byte."""

from __future__ import annotations

from typing import Any

from ecs.testing import eventually
from tests.integration import test_shelter_service as service
from tests.integration.test_shelter_automation import Lifecycle
from tests.integration.test_shelter_service import CENTRE, FAMILY_PHONE, Registry, auth, family, shelter

shelter_app = service.shelter_app

DRILL = auth("drill_runner", subject="drill-1")


async def known(registry: Registry, incident: Lifecycle) -> None:
    await incident.to("isolation")

    async def seen() -> bool:
        return (await registry.get(f"/v1/incidents/{incident.id}/dashboard")).status_code == 200

    await eventually(seen, what=f"incident {incident.id} known to shelter-registry")


async def live_view(registry: Registry, live_incident: str, registrations: list[str]) -> list[bytes]:
    """What a shelter manager sees of live data, as the bytes the API answers."""
    answers = [
        (await registry.get("/v1/shelters", "shelter_manager", exercise="false")).content,
        (await registry.get(f"/v1/incidents/{live_incident}/dashboard", "shelter_manager")).content,
    ]
    for sid in ("L1", "L2"):
        answers.append((await registry.get(f"/v1/shelters/{sid}/dashboard", "shelter_manager")).content)
    for rid in registrations:
        answers.append((await registry.get(f"/v1/registrations/{rid}", "shelter_manager")).content)
        answers.append((await registry.get(f"/v1/registrations/{rid}/history", "shelter_manager")).content)
    return answers


async def exercise(registry: Registry) -> dict[str, Any]:
    r = await registry.get("/v1/exercise")
    assert r.status_code == 200, r.text
    return r.json()


async def purge(registry: Registry, **params: Any) -> dict[str, Any]:
    r = await registry.client.delete("/v1/exercise", params=params, headers=DRILL)
    assert r.status_code == 200, r.text
    return r.json()


async def test_exercise_data_is_listed_and_purged_and_live_data_stays_byte_for_byte(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, bus):
        registry = Registry(client, bus)
        await registry.open(shelter("L1", 1), shelter("L2", 2))
        await registry.open(shelter("X1", 0.5, exercise=True), shelter("X2", 1.5, exercise=True))
        live, drill = Lifecycle(bus), Lifecycle(bus, exercise=True)
        await known(registry, live)
        await known(registry, drill)

        # Live: a household checked in, one placed, one gone home; a zone placed by batch.
        here = await registry.ok("/v1/allocations", family(incident_id=live.id))
        await registry.ok(f"/v1/registrations/{here['id']}/check-in", {}, 200)
        placed = await registry.ok("/v1/allocations", family(incident_id=live.id, shelter_id="L2"))
        gone = await registry.ok("/v1/allocations", family(incident_id=live.id))
        await registry.ok(f"/v1/registrations/{gone['id']}/check-in", {}, 200)
        await registry.ok(f"/v1/registrations/{gone['id']}/check-out", {}, 200)
        zone = [{"ref": f"z{i}", "people": 2, "pets": i % 2} for i in range(5)]
        near = {"lat": CENTRE[0], "lon": CENTRE[1]}
        await registry.ok("/v1/allocations:batch", {"near": near, "households": zone, "incident_id": live.id})
        # The drill: the same, in exercise shelters, by the drill runner.
        r = await client.post("/v1/allocations", json=family(incident_id=drill.id), headers=DRILL)
        assert r.status_code == 201 and r.json()["shelter_id"] == "X1", r.text
        drill_in = r.json()
        r = await client.post(f"/v1/registrations/{drill_in['id']}/check-in", json={}, headers=DRILL)
        assert r.status_code == 200, r.text
        r = await client.post(f"/v1/registrations/{drill_in['id']}/move", json={"to_shelter": "X2"}, headers=DRILL)
        assert r.status_code == 200, r.text
        batch = {"near": near, "households": zone, "exercise": True}
        r = await client.post("/v1/allocations:batch", json=batch, headers=DRILL)
        assert r.status_code == 201, r.text
        r = await client.post("/v1/allocations", json=family(exercise=True), headers=DRILL)
        assert r.status_code == 201, r.text
        cancelled = r.json()
        r = await client.post(f"/v1/registrations/{cancelled['id']}/cancel", json={}, headers=DRILL)
        assert r.status_code == 200, r.text
        # A relative's search that finds an exercise evacuee is exercise data too.
        search = {"name": "王芳", "phone": FAMILY_PHONE}
        assert (await registry.post("/v1/reunification/search", search, "dispatcher")).json()["found"] is True

        live_regs = [here["id"], placed["id"], gone["id"]]
        before = await live_view(registry, live.id, live_regs)
        x = [(await registry.shelter(s))["occupied"] for s in ("X1", "X2")]
        assert sum(x) == 4 + 10  # the moved family and the zone; the cancelled one holds nothing
        listed = await exercise(registry)
        # Registrations: the family (moved: its old and new registration), the zone's five, the cancelled one.
        assert listed == {"incidents": 1, "shelters": 2, "registrations": 8, "evacuees_placed": 14}, listed

        for role in ("shelter_manager", "commander", "auditor"):
            refused = await client.delete("/v1/exercise", headers=auth(role))
            service.problem(refused, 403)
        assert await exercise(registry) == listed

        purged = await purge(registry)
        assert purged == {
            "incidents_purged": 1,
            "registrations_purged": 8,
            "evacuees_released": 14,
            "shelters_purged": 0,
        }
        assert await live_view(registry, live.id, live_regs) == before
        assert await exercise(registry) == {"incidents": 0, "shelters": 2, "registrations": 0, "evacuees_placed": 0}
        for sid in ("X1", "X2"):
            s = await registry.shelter(sid)
            assert (s["occupied"], s["accessible_free"], s["pet_free"], s["status"]) == (0, 5, 5, "open")
        service.problem(await registry.get(f"/v1/registrations/{drill_in['id']}"), 404)
        service.problem(await registry.get(f"/v1/incidents/{drill.id}/dashboard"), 404)
        # The relative now finds only the live family.
        found = (await registry.post("/v1/reunification/search", search, "dispatcher")).json()
        assert found["found"] is True

        with_shelters = await purge(registry, shelters="true")
        assert with_shelters == {
            "incidents_purged": 0,
            "registrations_purged": 0,
            "evacuees_released": 0,
            "shelters_purged": 2,
        }
        assert await exercise(registry) == {"incidents": 0, "shelters": 0, "registrations": 0, "evacuees_placed": 0}
        assert await live_view(registry, live.id, live_regs) == before
        assert set((await purge(registry, shelters="true")).values()) == {0}
        ids = [s["id"] for s in (await registry.get("/v1/shelters")).json()["items"]]
        assert ids == ["L1", "L2"]
