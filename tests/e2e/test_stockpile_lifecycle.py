"""incident-intake, dispatch and resource-stockpile as real processes: an incident reaches handling,
its plan's supplies are reserved nearest first across two depots, some are issued, the aftermath
releases what is held and asks for the rest back, the supply officer returns it, and only then may
the incident close (the lifecycle waits for ``stockpile.incident.settled``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from ecs import testing
from ecs.gateway_client import GatewayClient
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET
from tests.e2e.test_dispatch_lifecycle import SCENE, alarm, roster
from tests.integration.test_stockpile_service import ITEMS, depot

CYLINDERS = {
    "code": "breathing_apparatus_cylinder",
    "gb_code": "2010301",
    "name_en": "breathing apparatus cylinder, 6.8 L",
    "name_zh": "空气呼吸器气瓶",
    "base_unit": "cylinder",
}
BLANKETS = {
    "code": "blanket",
    "name_en": "cotton blanket",
    "name_zh": "棉被",
    "base_unit": "piece",
    "packs": {"bale": 10},
}


async def eventually(check: Callable[[], Any]) -> Any:
    return await testing.eventually(check, within_s=30.0)


async def test_supplies_are_reserved_nearest_first_returned_in_aftermath_and_the_incident_closes(
    intake_factory, dispatch_factory, service_factory, tmp_path, operator_headers
):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}", required_participants='["dispatch", "stockpile"]')
    dispatch = dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")
    stockpile = service_factory("resource-stockpile", "STOCKPILE_", f"sqlite:///{tmp_path / 'stockpile.db'}")
    dispatcher, commander = operator_headers("dispatcher"), operator_headers("commander")
    officer = operator_headers("supply_officer")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    inc_api = httpx.AsyncClient(base_url=intake.url, timeout=30)
    dsp_api = httpx.AsyncClient(base_url=dispatch.url, timeout=30)
    sp_api = httpx.AsyncClient(base_url=stockpile.url, timeout=30)
    try:
        assert (await dsp_api.post("/v1/units:batch", json={"units": roster()}, headers=dispatcher)).status_code == 201
        r = await sp_api.post("/v1/items", json={"items": [*ITEMS, CYLINDERS, BLANKETS]}, headers=officer)
        assert r.status_code == 201, r.text
        r = await sp_api.post(
            "/v1/depots", json={"depots": [depot("huangpu-1", 0.8), depot("jingan-2", 5.0)]}, headers=officer
        )
        assert r.status_code == 201, r.text
        for depot_id, cylinders, bales in (("huangpu-1", 8, 2), ("jingan-2", 50, 10)):
            body = {
                "depot_id": depot_id,
                "lines": [
                    {"item": "breathing_apparatus_cylinder", "lot": f"{depot_id}-c", "quantity": cylinders},
                    {"item": "blanket", "lot": f"{depot_id}-b", "quantity": bales, "unit": "bale"},
                ],
            }
            assert (await sp_api.post("/v1/documents/receipts", json=body, headers=officer)).status_code == 201

        receipts = [(await gw.send(alarm(n, casualties=3))).json() for n in range(2)]
        incident_id = receipts[0]["incident_id"]

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

        async def supplies() -> dict[str, Any]:
            return (await sp_api.get(f"/v1/incidents/{incident_id}/reservations", headers=officer)).json()

        assert (await incident())["level"] == 3  # fire III: 12 cylinders and 30 blankets
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

        async def isolation_units():
            view = (await dsp_api.get(f"/v1/incidents/{incident_id}", headers=dispatcher)).json()
            return view if len(view.get("units", [])) == 4 else None

        view = await eventually(isolation_units)
        for u in view["units"]:
            for status in ("en_route", "on_scene"):
                r = await dsp_api.post(f"/v1/units/{u['unit_id']}/status", json={"status": status}, headers=dispatcher)
                assert r.status_code == 200, r.text

        async def perimeter_secured():
            return (await incident())["facts"].get("perimeter_units_on_scene") is True

        await eventually(perimeter_secured)
        assert (await supplies())["reservations"] == []  # nothing before handling
        assert (await stage("handling", commander)).status_code == 200

        async def reserved():
            view = await supplies()
            return view if len(view["reservations"]) == 2 else None

        view = await eventually(reserved)
        by_item = {r["item"]: r for r in view["reservations"]}
        cylinders = by_item["breathing_apparatus_cylinder"]
        assert (cylinders["reserved"], cylinders["missing"]) == (12, 0)
        assert [(a["depot_id"], a["held"]) for a in cylinders["allocations"]] == [("huangpu-1", 8), ("jingan-2", 4)]
        blankets = by_item["blanket"]
        assert [(a["depot_id"], a["held"]) for a in blankets["allocations"]] == [("huangpu-1", 20), ("jingan-2", 10)]

        r = await sp_api.post(f"/v1/reservations/{cylinders['id']}/issue", json={"quantity": 10}, headers=officer)
        assert r.status_code == 200, r.text

        async def stockpile_unsettled():
            return (await incident())["facts"].get("settled", {}).get("stockpile") is False

        await eventually(stockpile_unsettled)
        await fact("hazard_under_control")
        assert (await stage("opinion_control", commander)).status_code == 200
        assert (await stage("aftermath", commander)).status_code == 200

        async def only_issued_left():
            view = await supplies()
            held = sum(a["held"] for r in view["reservations"] for a in r["allocations"])
            out = sum(a["out"] for r in view["reservations"] for a in r["allocations"])
            return (held, out) == (0, 10)

        await eventually(only_issued_left)
        await fact("after_action_report")
        r = await stage("closed", commander)
        assert r.status_code == 409 and "stockpile" in r.json()["detail"], r.text

        r = await sp_api.post(f"/v1/reservations/{cylinders['id']}/return", json={"quantity": 9}, headers=officer)
        assert r.status_code == 200, r.text
        r = await sp_api.post(f"/v1/reservations/{cylinders['id']}/consume", json={}, headers=officer)
        assert r.status_code == 200, r.text

        async def settled():
            return (await incident())["facts"].get("settled") == {"dispatch": True, "stockpile": True}

        await eventually(settled)
        r = await stage("closed", commander)
        assert r.status_code == 200, r.text
        stock = (await sp_api.get("/v1/stock", params={"item": "breathing_apparatus_cylinder"}, headers=officer)).json()
        assert sum(line["on_hand"] for line in stock["lines"]) == 57  # one cylinder was used up
        assert sum(line["reserved"] for line in stock["lines"]) == 0
    finally:
        await gw.aclose()
        await inc_api.aclose()
        await dsp_api.aclose()
        await sp_api.aclose()
