"""The shipped drill scenarios, each run end to end at a high speed factor against all five
services as real processes (SQLite, the tests' own nats-server), as a drill script would: through
the gateway contract, the operator API as drill_runner and the NATS events as the observer.

Each drill must reach the end of its MSEL with every inject done, close its incidents after all
four stages, put nothing on a live channel, and leave an after-action report whose objectives were
measured from the events. The ratings themselves depend on the speed factor (at speed S the
system's own latency counts S times) and are printed, not asserted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecs.drill.runner import Credentials, DrillRunner, Endpoints, exercise_data, purge_exercise
from ecs.drill.scenario import load_scenario, read_scenario
from ecs.gateway_client import GatewayClient
from ecs.testing import NatsServer
from resource_stockpile.seed import catalogue
from tests.conftest import AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET

SPEED = 120.0
PARTICIPANTS = '["dispatch", "resource-stockpile", "shelter-registry", "public-notification"]'


@pytest.fixture
def city(
    intake_factory, dispatch_factory, service_factory, tmp_path: Path, nats_private: NatsServer, operator_headers
) -> Callable[[], Any]:
    """All five services as processes, the catalogue entered by a supply officer; returns the
    endpoints and the drill's credentials."""

    async def start() -> tuple[Endpoints, Credentials]:
        db = tmp_path / "db"
        db.mkdir()
        intake = intake_factory(f"sqlite:///{db / 'intake.db'}", required_participants=PARTICIPANTS)
        dispatch = dispatch_factory(f"sqlite:///{db / 'dispatch.db'}", min_cover="0")
        stockpile = service_factory("resource-stockpile", "STOCKPILE_", f"sqlite:///{db / 'stockpile.db'}")
        shelter = service_factory(
            "shelter-registry", "SHELTER_", f"sqlite:///{db / 'shelter.db'}", default_expected_evacuees="300"
        )
        notification = service_factory(
            "public-notification",
            "NOTIFICATION_",
            f"sqlite:///{db / 'notification.db'}",
            channel_outbox=str(tmp_path / "channel-outbox"),
            delivery_poll_s="0.2",
        )
        async with httpx.AsyncClient(base_url=stockpile.url, timeout=30) as http:
            r = await http.post("/v1/items", json={"items": catalogue()}, headers=operator_headers("supply_officer"))
            assert r.status_code == 201, r.text
        endpoints = Endpoints(intake.url, dispatch.url, stockpile.url, shelter.url, notification.url)
        creds = Credentials.signed(AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET, nats_private.observer_url)
        return endpoints, creds

    return start


def report_sizes(result: dict[str, Any]) -> dict[str, int]:
    """Bytes of each report file the drill wrote (JSON, Markdown, HTML, map)."""
    return {kind: Path(result["report_files"][kind]).stat().st_size for kind in ("json", "markdown", "html", "map")}


def summary(result: dict[str, Any]) -> str:
    rows = [
        f"{o['id']} {o['rating']} {o['measure']} measured={o['measured_s']} ({o['rule']})" for o in result["objectives"]
    ]
    injects = [f"{i['id']} {i['status']} {i['detail']}" for i in result["injects"]]
    return "\n".join([result["status"], str(result["reason"]), *rows, *injects])


@pytest.mark.parametrize("name", ["bund", "jinshan", "pudong-waterlogging", "jingan-highrise"])
async def test_a_shipped_scenario_runs_end_to_end_through_all_five_services(name: str, city, tmp_path: Path):
    endpoints, creds = await city()
    scenario, path = read_scenario(name)
    runner = DrillRunner(scenario, str(path), endpoints, creds, SPEED, tmp_path / "report")
    result = await runner.run()
    print(summary(result))
    assert result["status"] == "completed", summary(result)
    assert all(i["status"] == "done" for i in result["injects"]), summary(result)
    assert result["incidents"] and all(i["stage"] == "closed" for i in result["incidents"]), result["incidents"]
    assert result["live_channel_exercise_messages"] == 0
    measured = {o["measure"]: o["measured_s"] for o in result["objectives"]}
    assert all(v is not None for v in measured.values()), measured  # every objective was observed
    assert all(size > 0 for size in report_sizes(result).values()), report_sizes(result)


LIVE_SCENE = (31.1885, 121.4365)  # Xuhui, 6 km from the Bund: live traffic nowhere near the drill


async def live_world(endpoints: Endpoints, headers: dict[str, str]) -> dict[str, Any]:
    """Everything live the drill could touch, as the operator API shows it (volatile clocks aside)."""
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:

        async def get(url: str, **params: Any) -> Any:
            r = await http.get(url, params=params)
            assert r.status_code == 200, r.text
            return r.json()

        incidents = (await get(f"{endpoints.intake}/v1/incidents", exercise="false", limit=500))["items"]
        return {
            "incidents": {i["id"]: (i["stage"], i["category"], i["alarm_count"], i["version"]) for i in incidents},
            "units": (await get(f"{endpoints.dispatch}/v1/units", exercise="false", limit=1000))["items"],
            "stock": (await get(f"{endpoints.stockpile}/v1/stock", depot_id="live-xuhui"))["lines"],
            "shelters": (await get(f"{endpoints.shelter}/v1/shelters", exercise="false", limit=1000))["items"],
            "channels": [
                c for c in (await get(f"{endpoints.notification}/v1/channels"))["channels"] if not c["exercise"]
            ],
        }


async def test_a_drill_beside_live_traffic_changes_no_live_data_and_its_purge_leaves_live_data_alone(
    city, tmp_path: Path, operator_headers
):
    """Live alarms keep coming in Xuhui while the Bund drill runs; live units, a live depot's stock,
    live shelters and a live channel stand by. The drill changes none of them and none of its
    messages reaches the live channel; every live alarm lands on a live incident; then one purge
    removes the drill's data from every service and the live data is still the same."""
    endpoints, creds = await city()
    commander = operator_headers("commander", subject="live-commander")
    officer = operator_headers("supply_officer")
    async with httpx.AsyncClient(timeout=30) as http:
        units = [
            {
                "id": f"live-{kind.replace('_', '-')}-{n}",
                "unit_type": kind,
                "home_station": "xuhui-1",
                "district": "huangpu",  # the drill's district: the closest live units a drill could take
                "location": {"lat": 31.2400 + 0.001 * n, "lon": 121.4850},
            }
            for kind in ("patrol_car", "ambulance")
            for n in range(3)
        ]
        r = await http.post(f"{endpoints.dispatch}/v1/units:batch", json={"units": units}, headers=commander)
        assert r.status_code == 201, r.text
        depot = {"id": "live-xuhui", "name": "徐汇区储备库", "district": "xuhui", "lat": 31.19, "lon": 121.44}
        r = await http.post(f"{endpoints.stockpile}/v1/depots", json={"depots": [depot]}, headers=officer)
        assert r.status_code == 201, r.text
        lines = [{"item": "stretcher", "lot": "l1", "quantity": 500}, {"item": "blanket", "lot": "l1", "quantity": 900}]
        r = await http.post(
            f"{endpoints.stockpile}/v1/documents/receipts",
            json={"depot_id": "live-xuhui", "lines": lines},
            headers=officer,
        )
        assert r.status_code == 201, r.text
        shelter = {
            "id": "live-bund-park",
            "name_zh": "黄浦公园",
            "kind": "park",
            "district": "huangpu",
            "location": {"lat": 31.2420, "lon": 121.4890},  # nearer the Bund than any drill shelter
            "area_m2": 3000,
        }
        r = await http.post(f"{endpoints.shelter}/v1/shelters", json=shelter, headers=commander)
        assert r.status_code == 201, r.text
        r = await http.post(
            f"{endpoints.notification}/v1/channels",
            json={"kind": "sms", "name": "全市短信", "exercise": False},
            headers=commander,
        )
        assert r.status_code == 201, r.text

    gateway = GatewayClient(endpoints.intake, GATEWAY_ID, GATEWAY_SECRET)
    sent: list[dict[str, Any]] = []

    async def live_alarm(n: int) -> None:
        alarm = {
            "alarm_id": f"live-{n}",
            "received_at": datetime.now(UTC).isoformat(),
            "category": "traffic_accident",
            "location": {"lat": LIVE_SCENE[0], "lon": LIVE_SCENE[1] + 0.0001 * (n % 5)},
            "caller": {"number": f"1380000{n:04d}"},
            "description": "two cars collided at the crossing",
        }
        r = await gateway.send(alarm)
        assert r.status_code == 202, r.text
        sent.append(r.json())

    try:
        await live_alarm(0)
        before = await live_world(endpoints, commander)
        stop = asyncio.Event()

        async def live_traffic() -> None:
            n = 1
            while not stop.is_set():
                await live_alarm(n)
                n += 1
                await asyncio.sleep(0.3)

        traffic = asyncio.create_task(live_traffic())
        scenario, path = read_scenario("bund")
        result = await DrillRunner(scenario, str(path), endpoints, creds, SPEED, tmp_path / "report").run()
        stop.set()
        await traffic
        assert result["status"] == "completed", summary(result)
        assert result["live_channel_exercise_messages"] == 0
        after = await live_world(endpoints, commander)
        # The live incident only grew by the live alarms sent meanwhile; nothing else live changed.
        live_incidents = {r["incident_id"] for r in sent}
        assert len(live_incidents) == 1 and len(sent) > 1
        (live_id,) = live_incidents
        assert after["incidents"][live_id][2] == len(sent)
        assert set(after["incidents"]) == set(before["incidents"])
        for key in ("units", "stock", "shelters", "channels"):
            assert after[key] == before[key], key
        drill_ids = {i["id"] for i in result["incidents"]}
        assert drill_ids and not drill_ids & set(after["incidents"])

        async with httpx.AsyncClient(timeout=60) as http:
            drill = {"Authorization": f"Bearer {creds.runner_token}"}
            purged = await purge_exercise(http, endpoints, drill)
            assert not [k for k, v in purged.items() if "error" in v], purged
            left = await exercise_data(http, endpoints, drill)
        assert purged["incident-intake"]["incidents_purged"] == len(drill_ids), purged
        assert purged["dispatch"]["units_purged"] == len(scenario.unit_ids()), purged
        for service in ("incident-intake", "dispatch", "resource-stockpile", "shelter-registry", "public-notification"):
            counts = {k: v for k, v in left[service].items() if isinstance(v, int)}
            assert counts and not any(counts.values()), (service, left[service])
        assert await live_world(endpoints, commander) == after
    finally:
        await gateway.aclose()


def readme_scenario() -> str:
    """The small scenario the README shows, as it is written there."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("A small one, whole")
    block = readme[readme.index("```yaml\n", start) + len("```yaml\n") :]
    return block[: block.index("```")]


async def test_the_readme_scenario_runs_as_written(city, tmp_path: Path):
    endpoints, creds = await city()
    scenario = load_scenario(readme_scenario(), "README.md")
    result = await DrillRunner(scenario, "README.md", endpoints, creds, SPEED, tmp_path / "report").run()
    assert result["status"] == "completed", summary(result)
    assert [i["stage"] for i in result["incidents"]] == ["closed"], result["incidents"]
