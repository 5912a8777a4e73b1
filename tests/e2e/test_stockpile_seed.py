"""The seed for trying the service out: every item the shipped plans name, four Shanghai district
depots with stock, all exercise depots so live incidents never take from them; loading it twice
changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import yaml

from ecs.bus import Bus
from resource_stockpile import seed
from tests.e2e.test_stockpile_reliability import announce

PLANS = Path(__file__).resolve().parents[2] / "services" / "dispatch" / "src" / "dispatch" / "plans"


def plan_items() -> set[str]:
    found = set()
    for path in PLANS.glob("*.yaml"):
        for level in yaml.safe_load(path.read_text())["levels"].values():
            found.update(s["item"] for s in level.get("supplies", []))
    return found


def test_the_seed_names_every_item_of_the_shipped_plans():
    assert {code for code, *_ in seed.ITEMS} == plan_items()
    assert set(seed.STOCK) == plan_items()


async def test_the_seed_loads_exercise_depots_once_and_live_incidents_never_take_from_them(
    service_factory, tmp_path, operator_headers, nats_private
):
    proc = service_factory("resource-stockpile", "STOCKPILE_", f"sqlite:///{tmp_path / 'stockpile.db'}")
    token = operator_headers("commander")["Authorization"].removeprefix("Bearer ")
    first = await asyncio.to_thread(seed.seed, proc.url, token)
    assert all(line.endswith(": done") for line in first), first
    again = await asyncio.to_thread(seed.seed, proc.url, token)
    assert all(line.endswith(": already there") for line in again), again

    officer = operator_headers("supply_officer")
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
        depots = (await client.get("/v1/depots", headers=officer)).json()["depots"]
        assert {d["district"] for d in depots} == {"huangpu", "jingan", "xuhui", "pudong"}
        assert all(d["exercise"] for d in depots)
        lines = (await client.get("/v1/stock", params={"limit": 1000}, headers=officer)).json()["lines"]
        assert len(lines) == 4 * len(seed.STOCK)
        water = sum(line["on_hand"] for line in lines if line["item"] == "drinking_water_bottle")
        assert water == 4 * seed.STOCK["drinking_water_bottle"]
        assert all(line["expiry"] for line in lines if line["item"] == "first_aid_kit")

    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    try:
        [live_incident] = await announce(proc, bus, officer, count=1)
    finally:
        await bus.close()
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
        r = await client.post(
            f"/v1/incidents/{live_incident}/reservations", json={"item": "stretcher", "quantity": 5}, headers=officer
        )
        assert r.status_code == 201, r.text
        assert (r.json()["reserved"], r.json()["missing"]) == (0, 5)
