"""incident-intake, dispatch and shelter-registry as real processes, the way a commander, a shelter
manager and a relative use them: a gas leak's evacuation order opens shelters; a family is placed
and checked in; a relative finds them without learning where they are; in the aftermath the
incident may not close until everyone is checked out, and then it closes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from ecs import testing
from ecs.gateway_client import GatewayClient
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET
from tests.integration.test_shelter_service import FAMILY_PHONE, family, shelter

SCENE = (31.2304, 121.4737)


async def eventually(check: Callable[[], Any], what: str = "") -> Any:
    # Three services as processes, each step crossing the broker twice: a little more patience.
    return await testing.eventually(check, what, within_s=30.0)


def alarm(n: int) -> dict[str, Any]:
    return {
        "alarm_id": f"e2e-gas-{n}",
        "received_at": datetime.now(UTC).isoformat(),
        "category": "gas_leak",
        "location": {"lat": SCENE[0], "lon": SCENE[1], "address": "100 Nanjing East Road"},
        "caller": {"number": f"1390000000{n}"},
        "description": "strong smell of gas in the stairwell",
        "casualties": 3,
    }


async def test_an_evacuation_from_order_to_close_with_shelters_in_the_loop(
    intake_factory, dispatch_factory, service_factory, tmp_path, operator_headers, nats_private
):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}", required_participants='["shelter-registry"]')
    dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")  # serves the response plans
    shelters = service_factory(
        "shelter-registry",
        "SHELTER_",
        f"sqlite:///{tmp_path / 'shelter.db'}",
        evacuation_density_per_km2="4775",  # the plan's 100 m: 151 people
    )
    dispatcher, commander = operator_headers("dispatcher"), operator_headers("commander")
    manager, relative = operator_headers("shelter_manager"), operator_headers("auditor", subject="hotline-1")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    inc_api = httpx.AsyncClient(base_url=intake.url, timeout=30)
    shl_api = httpx.AsyncClient(base_url=shelters.url, timeout=30)
    try:
        standby = [shelter(f"S{i}", i, hotline="021-63215555") for i in (1, 2, 3)]
        r = await shl_api.post("/v1/shelters:batch", json={"shelters": standby}, headers=manager)
        assert r.status_code == 201, r.text

        incident_id = (await gw.send(alarm(1))).json()["incident_id"]

        async def incident() -> dict[str, Any]:
            return (await inc_api.get(f"/v1/incidents/{incident_id}", headers=dispatcher)).json()

        async def stage(target: str) -> httpx.Response:
            body = {"stage": target, "version": (await incident())["version"]}
            return await inc_api.post(f"/v1/incidents/{incident_id}/stage", json=body, headers=commander)

        async def fact(name: str) -> None:
            body = {"fact": name, "version": (await incident())["version"]}
            r = await inc_api.post(f"/v1/incidents/{incident_id}/facts", json=body, headers=commander)
            assert r.status_code == 200, r.text

        assert (await incident())["level"] == 3  # gas leak level III: the plan evacuates 100 m
        r = await inc_api.post(
            f"/v1/incidents/{incident_id}/verify", json={"version": (await incident())["version"]}, headers=dispatcher
        )
        assert r.status_code == 200, r.text
        perimeter = {"kind": "circle", "lat": SCENE[0], "lon": SCENE[1], "radius_m": 100}
        r = await inc_api.put(
            f"/v1/incidents/{incident_id}/perimeter",
            json={"version": (await incident())["version"], "perimeter": perimeter},
            headers=dispatcher,
        )
        assert r.status_code == 200, r.text
        assert (await stage("isolation")).status_code == 200

        # The evacuation order opens the two nearest standby shelters (151 people expected).
        async def opened() -> list[str] | None:
            page = (await shl_api.get("/v1/shelters", params={"status": "open"}, headers=manager)).json()
            ids = sorted(s["id"] for s in page["items"])
            return ids if len(ids) == 2 else None

        assert await eventually(opened, "two shelters opened by the evacuation order") == ["S1", "S2"]

        # A household of 4 with a wheelchair user and a dog is placed whole and checks in.
        r = await shl_api.post("/v1/allocations", json=family(incident_id=incident_id), headers=manager)
        assert r.status_code == 201, r.text
        reg = r.json()
        assert reg["shelter_id"] == "S1" and reg["people"] == 4
        r = await shl_api.post(f"/v1/registrations/{reg['id']}/check-in", json={}, headers=manager)
        assert r.status_code == 200, r.text

        # A relative finds them: safe, the hotline to call, not where they are.
        r = await shl_api.post(
            "/v1/reunification/search", json={"name": "王芳", "phone": FAMILY_PHONE}, headers=relative
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "found": True,
            "message": "registered safe at a shelter",
            "shelter_hotline": "021-63215555",
            "shelter_name": None,
            "registration_id": None,
        }

        # Handling, control, opinion; then the aftermath, where the family is still in the shelter.
        assert (await stage("handling")).status_code == 200
        await fact("hazard_under_control")
        assert (await stage("opinion_control")).status_code == 200
        assert (await stage("aftermath")).status_code == 200
        await fact("after_action_report")

        async def settled_is(value: bool) -> Callable[[], Any]:
            async def probe() -> bool:
                return (await incident())["facts"].get("settled", {}).get("shelter") is value

            return probe

        await eventually(await settled_is(False), "shelter-registry reports evacuees still in shelters")
        r = await stage("closed")
        assert r.status_code == 409 and "shelter" in r.json()["detail"], r.text

        # Everyone goes home: checked out, the shelter-registry is settled, the incident closes.
        r = await shl_api.post(f"/v1/registrations/{reg['id']}/check-out", json={}, headers=manager)
        assert r.status_code == 200, r.text
        await eventually(await settled_is(True), "shelter-registry settled")
        r = await stage("closed")
        assert r.status_code == 200, r.text
        d = (await shl_api.get(f"/v1/incidents/{incident_id}/dashboard", headers=manager)).json()
        assert (d["occupied"], d["households"]) == (0, 0)
    finally:
        await gw.aclose()
        await inc_api.aclose()
        await shl_api.aclose()
