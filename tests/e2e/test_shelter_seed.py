"""The seed for trying the service out: ten Shanghai shelters (parks, squares, campuses, stadiums),
all exercise shelters so live evacuees never take their places; loading it twice changes nothing."""

from __future__ import annotations

import asyncio

import httpx

from shelter_registry import seed
from tests.integration.test_shelter_service import family


async def test_the_seed_loads_exercise_shelters_once_and_live_evacuees_never_take_them(
    service_factory, tmp_path, operator_headers
):
    proc = service_factory("shelter-registry", "SHELTER_", f"sqlite:///{tmp_path / 'shelter.db'}")
    token = operator_headers("shelter_manager")["Authorization"].removeprefix("Bearer ")
    first = await asyncio.to_thread(seed.seed, proc.url, token)
    assert len(first) == len(seed.SHELTERS) and all(": done" in line for line in first), first
    again = await asyncio.to_thread(seed.seed, proc.url, token)
    assert all(line.endswith(": already there") for line in again), again

    manager, drill = operator_headers("shelter_manager"), operator_headers("drill_runner")
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
        items = (await client.get("/v1/shelters", headers=manager)).json()["items"]
        assert len(items) == len(seed.SHELTERS)
        assert all(s["exercise"] and s["status"] == "standby" and s["id"].startswith("drill-") for s in items)
        assert {s["kind"] for s in items} == {"park", "square", "school", "stadium", "sports_hall"}
        century = next(s for s in items if s["id"] == "drill-century-park")
        assert century["capacity"] == 40_000  # 60,000 m² at GB 21734's 1.5 m² a person

        r = await client.post("/v1/shelters/drill-peoples-square/status", json={"action": "open"}, headers=drill)
        assert r.status_code == 200, r.text
        live = await client.post("/v1/allocations", json=family(), headers=manager)
        assert live.status_code == 409 and live.json()["largest_household"] == 0, live.text
        practice = await client.post("/v1/allocations", json=family(exercise=True), headers=drill)
        assert practice.status_code == 201 and practice.json()["shelter_id"] == "drill-peoples-square", practice.text
