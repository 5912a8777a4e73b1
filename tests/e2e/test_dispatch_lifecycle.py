"""incident-intake and dispatch as real processes, as a dispatcher and a commander use them: signed
gateway alarms open an incident; a dispatcher verifies it; isolation units are assigned
automatically; only when they are on scene may the incident move to handling; handling teams
follow; the aftermath releases every unit, and only then may the incident close."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from ecs import testing
from ecs.gateway_client import GatewayClient
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET

SCENE = (31.2304, 121.4737)
KM = 1 / 111.2


async def eventually(check: Callable[[], Any]) -> Any:
    # Two services as processes, each step crossing the broker twice: a little more patience.
    return await testing.eventually(check, within_s=20.0)


def roster() -> list[dict[str, Any]]:
    """Fire level III wants 2 patrol cars and 2 fire engines to isolate, then 2 more engines, a
    ladder truck and 2 ambulances to handle; a spare of each, farther out, must stay home."""
    wanted = {"patrol_car": 3, "fire_engine": 5, "ladder_truck": 2, "ambulance": 3}
    units = []
    for unit_type, n in wanted.items():
        for i in range(n):
            units.append(
                {
                    "id": f"{unit_type}-{i}",
                    "callsign": f"{unit_type.replace('_', ' ').title()} {i}",
                    "unit_type": unit_type,
                    "home_station": "Huangpu station",
                    "district": "huangpu",
                    "location": {"lat": SCENE[0] + (i + 1) * KM, "lon": SCENE[1]},
                }
            )
    return units


def alarm(n: int, casualties: int) -> dict[str, Any]:
    return {
        "alarm_id": f"e2e-{n}",
        "received_at": datetime.now(UTC).isoformat(),
        "category": "fire",
        "location": {"lat": SCENE[0], "lon": SCENE[1], "address": "88 Zhongshan East Road"},
        "caller": {"number": f"1390000000{n}"},
        "description": "flames on the fourth floor, people on the balcony",
        "casualties": casualties,
    }


async def test_an_incident_from_alarm_to_close_with_dispatch_in_the_loop(
    intake_factory, dispatch_factory, tmp_path, operator_headers, nats_private
):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}", required_participants='["dispatch"]')
    dispatch = dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")
    dispatcher, commander = operator_headers("dispatcher"), operator_headers("commander")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    inc_api = httpx.AsyncClient(base_url=intake.url, timeout=30)
    dsp_api = httpx.AsyncClient(base_url=dispatch.url, timeout=30)
    try:
        r = await dsp_api.post("/v1/units:batch", json={"units": roster()}, headers=dispatcher)
        assert r.status_code == 201, r.text

        receipts = [(await gw.send(alarm(n, casualties=3))).json() for n in range(2)]
        incident_id = receipts[0]["incident_id"]
        assert receipts[1]["incident_id"] == incident_id and receipts[1]["correlated"] is True

        async def incident() -> dict[str, Any]:
            return (await inc_api.get(f"/v1/incidents/{incident_id}", headers=dispatcher)).json()

        async def stage(target: str, headers: dict[str, str]) -> httpx.Response:
            return await inc_api.post(
                f"/v1/incidents/{incident_id}/stage",
                json={"stage": target, "version": (await incident())["version"]},
                headers=headers,
            )

        async def fact(name: str) -> None:
            r = await inc_api.post(
                f"/v1/incidents/{incident_id}/facts",
                json={"fact": name, "version": (await incident())["version"]},
                headers=commander,
            )
            assert r.status_code == 200, r.text

        async def units_at_scene() -> dict[str, Any]:
            return (await dsp_api.get(f"/v1/incidents/{incident_id}", headers=dispatcher)).json()

        assert (await incident())["level"] == 3
        # A dispatcher verifies and sets the perimeter; then isolation may begin.
        r = await inc_api.post(
            f"/v1/incidents/{incident_id}/verify", json={"version": (await incident())["version"]}, headers=dispatcher
        )
        assert r.status_code == 200, r.text
        r = await inc_api.put(
            f"/v1/incidents/{incident_id}/perimeter",
            json={
                "version": (await incident())["version"],
                "perimeter": {"kind": "circle", "lat": SCENE[0], "lon": SCENE[1], "radius_m": 100},
            },
            headers=dispatcher,
        )
        assert r.status_code == 200, r.text
        assert (await stage("isolation", dispatcher)).status_code == 200

        # Dispatch assigns the plan's isolation units on its own: the nearest two of each.
        async def isolation_units():
            view = await units_at_scene()
            return view if len(view.get("units", [])) == 4 else None

        view = await eventually(isolation_units)
        assert sorted(u["unit_id"] for u in view["units"]) == [
            "fire_engine-0",
            "fire_engine-1",
            "patrol_car-0",
            "patrol_car-1",
        ]
        assert all(u["stage"] == "isolation" and u["source"] == "automatic" for u in view["units"])
        assert view["missing"] == {}

        # The units are not on scene yet: handling is refused, and says why.
        r = await stage("handling", commander)
        assert r.status_code == 409 and "perimeter units not on scene (dispatch)" in r.json()["detail"]

        for u in view["units"]:
            for status in ("en_route", "on_scene"):
                r = await dsp_api.post(f"/v1/units/{u['unit_id']}/status", json={"status": status}, headers=dispatcher)
                assert r.status_code == 200, r.text

        async def perimeter_secured():
            return (await incident())["facts"].get("perimeter_units_on_scene") is True

        await eventually(perimeter_secured)
        assert (await incident())["facts"]["settled"] == {"dispatch": False}
        r = await stage("handling", commander)
        assert r.status_code == 200, r.text

        # Handling teams follow, on top of the isolation units that hold the perimeter.
        async def handling_units():
            view = await units_at_scene()
            return view if len(view.get("units", [])) == 9 else None

        view = await eventually(handling_units)
        assert view["held"] == {"ambulance": 2, "fire_engine": 4, "ladder_truck": 1, "patrol_car": 2}
        handling = [u for u in view["units"] if u["stage"] == "handling"]
        assert sorted(u["unit_id"] for u in handling) == [
            "ambulance-0",
            "ambulance-1",
            "fire_engine-2",
            "fire_engine-3",
            "ladder_truck-0",
        ]
        assert all(u["expected_at"] is not None and u["eta_now_s"] > 0 for u in handling)
        spare = (await dsp_api.get("/v1/units/fire_engine-4", headers=dispatcher)).json()
        assert spare["status"] == "available"

        # The commander takes it through control and opinion into the aftermath.
        await fact("hazard_under_control")
        assert (await stage("opinion_control", commander)).status_code == 200
        assert (await stage("aftermath", commander)).status_code == 200

        # The aftermath stands every unit down; dispatch reports itself settled; closing may proceed.
        async def settled():
            return (await incident())["facts"].get("settled") == {"dispatch": True}

        await eventually(settled)
        view = await units_at_scene()
        assert view["units"] == [] and len(view["released"]) == 9 and view["settled"] is True
        units = (await dsp_api.get("/v1/units", params={"limit": 100}, headers=dispatcher)).json()["items"]
        assert all(u["incident_id"] is None for u in units)
        assert {u["status"] for u in units if u["id"] in {a["unit_id"] for a in view["released"]}} == {
            "returning",
            "available",
        }
        r = await stage("closed", commander)
        assert r.status_code == 409 and "after-action report missing" in r.json()["detail"]
        await fact("after_action_report")
        r = await stage("closed", commander)
        assert r.status_code == 200, r.text
        assert (await incident())["stage"] == "closed"

        async def closed_in_dispatch():
            return (await units_at_scene())["stage"] == "closed"

        await eventually(closed_in_dispatch)

        # Each consumer was handed exactly the messages on its subjects, once, and nothing was
        # dead-lettered: no consumer receives what it does not handle.
        delivered = await testing.settled_exact_delivery(nats_private.url)
        assert delivered["dispatch-incidents"] >= 5 and delivered["intake-facts-dispatch"] >= 3, delivered
    finally:
        await gw.aclose()
        await inc_api.aclose()
        await dsp_api.aclose()


async def test_cancelling_a_false_alarm_releases_its_units(
    intake_factory, dispatch_factory, tmp_path, operator_headers
):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}", required_participants='["dispatch"]')
    dispatch = dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")
    dispatcher = operator_headers("dispatcher")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    inc_api = httpx.AsyncClient(base_url=intake.url, headers=dispatcher, timeout=30)
    dsp_api = httpx.AsyncClient(base_url=dispatch.url, headers=dispatcher, timeout=30)
    try:
        await dsp_api.post("/v1/units:batch", json={"units": roster()})
        incident_id = (await gw.send(alarm(9, casualties=0))).json()["incident_id"]  # fire IV
        version = (await inc_api.get(f"/v1/incidents/{incident_id}")).json()["version"]
        version = (await inc_api.post(f"/v1/incidents/{incident_id}/verify", json={"version": version})).json()[
            "version"
        ]
        perimeter = {"kind": "circle", "lat": SCENE[0], "lon": SCENE[1], "radius_m": 30}
        r = await inc_api.put(
            f"/v1/incidents/{incident_id}/perimeter", json={"version": version, "perimeter": perimeter}
        )
        r = await inc_api.post(
            f"/v1/incidents/{incident_id}/stage", json={"stage": "isolation", "version": r.json()["version"]}
        )
        assert r.status_code == 200, r.text

        async def two_units():
            view = (await dsp_api.get(f"/v1/incidents/{incident_id}")).json()
            return view if len(view.get("units", [])) == 2 else None

        view = await eventually(two_units)
        held = [u["unit_id"] for u in view["units"]]
        r = await inc_api.post(
            f"/v1/incidents/{incident_id}/cancel", json={"version": r.json()["version"], "reason": "a barbecue"}
        )
        assert r.status_code == 200, r.text

        async def all_back():
            statuses = [(await dsp_api.get(f"/v1/units/{uid}")).json()["status"] for uid in held]
            return statuses == ["available", "available"]

        await eventually(all_back)

        async def settled():
            facts = (await inc_api.get(f"/v1/incidents/{incident_id}")).json()["facts"]
            return facts.get("settled") == {"dispatch": True}

        await eventually(settled)
    finally:
        await gw.aclose()
        await inc_api.aclose()
        await dsp_api.aclose()
