"""A drill that loses a service midway: the inject that needed it fails saying which call and
why, the injects waiting for it are skipped, the scenario clock goes on with the others, and the
report says so. Pause and resume hold the scenario clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from ecs.drill.runner import Credentials, DrillRunner, Endpoints, exercise_data
from ecs.drill.scenario import load_scenario
from ecs.testing import ServiceProcess, eventually
from resource_stockpile.seed import catalogue
from tests.conftest import AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET

SCENARIO = """\
name: a fire, and public-notification goes down
type: functional
duration: "00:20:00"
objectives:
  - {id: O1, capability: rapid isolation, description: one incident, measure: incidents_opened, target: 1}
  - id: O2
    capability: opinion control
    description: a statement within 10 minutes
    measure: first_statement_published
    target: "00:10:00"
msel:
  - {id: A1, kind: alarms, count: 4, place: {lat: 31.2304, lon: 121.4737}, categories: {fire: 1}, callers: 4}
  - {id: ST1, kind: action, action: statement, incident: A1, at: "00:02:00", retry_for: "00:03:00"}
  - {id: ST2, kind: action, action: statement, incident: A1, at: "00:03:00", after: [ST1]}
  - {id: P1, kind: action, action: perimeter, incident: A1, radius_m: 200, at: "00:06:00"}
  - {id: S1, kind: action, action: stage, to: cancelled, incident: A1, at: "00:07:00", after: [P1]}
"""
SPEED = 60.0


@pytest.fixture
def services(intake_factory, dispatch_factory, service_factory, tmp_path: Path, nats_private, operator_headers):
    async def start() -> tuple[Endpoints, Credentials, dict[str, ServiceProcess]]:
        procs = {
            "intake": intake_factory(f"sqlite:///{tmp_path / 'intake.db'}"),
            "dispatch": dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0"),
            "stockpile": service_factory("resource-stockpile", "STOCKPILE_", f"sqlite:///{tmp_path / 'stock.db'}"),
            "shelter": service_factory("shelter-registry", "SHELTER_", f"sqlite:///{tmp_path / 'shelter.db'}"),
            "notification": service_factory(
                "public-notification", "NOTIFICATION_", f"sqlite:///{tmp_path / 'notification.db'}"
            ),
        }
        async with httpx.AsyncClient(base_url=procs["stockpile"].url, timeout=30) as http:
            r = await http.post("/v1/items", json={"items": catalogue()}, headers=operator_headers("supply_officer"))
            assert r.status_code == 201, r.text
        endpoints = Endpoints(*(procs[k].url for k in ("intake", "dispatch", "stockpile", "shelter", "notification")))
        creds = Credentials.signed(AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET, nats_private.observer_url)
        return endpoints, creds, procs

    return start


async def test_a_service_lost_mid_drill_fails_its_inject_and_the_drill_goes_on(services, tmp_path: Path):
    endpoints, creds, procs = await services()
    scenario = load_scenario(SCENARIO, "fault.yaml")
    runner = DrillRunner(scenario, "fault.yaml", endpoints, creds, SPEED, tmp_path / "report")
    drill = asyncio.create_task(runner.run())

    async def started() -> bool:
        return runner.injects["A1"].status == "done"

    await eventually(started, "the drill's alarms sent")
    procs["notification"].kill(9)  # public-notification is lost before the statement is due
    result = await drill
    injects = {i["id"]: i for i in result["injects"]}
    assert injects["ST1"]["status"] == "failed"
    assert "/statements" in injects["ST1"]["detail"] and "unreachable" in injects["ST1"]["detail"]
    assert injects["ST2"] == {**injects["ST2"], "status": "skipped", "detail": "ST1 did not succeed"}
    # The clock went on: the later, independent injects ran after the failure.
    assert injects["P1"]["status"] == "done" and injects["S1"]["status"] == "done"
    assert injects["P1"]["done_at_s"] > injects["ST1"]["done_at_s"]
    assert result["status"] == "failed" and "inject ST1 failed" in result["reason"]
    rating = {o["id"]: o["rating"] for o in result["objectives"]}
    assert rating == {"O1": "P", "O2": "U"}
    report = Path(result["report_files"]["markdown"]).read_text(encoding="utf-8")  # noqa: ASYNC240
    assert "inject ST1 failed" in report


async def test_pause_holds_the_scenario_clock_and_resume_goes_on():
    from ecs.drill.clock import ScenarioClock

    clock = ScenarioClock(1000)
    clock.start()
    await asyncio.sleep(0.05)
    clock.pause()
    held = clock.now_s()
    await asyncio.sleep(0.05)
    assert clock.now_s() == held and clock.paused
    waiter = asyncio.create_task(clock.sleep_until(held + 10))
    await asyncio.sleep(0.05)
    assert not waiter.done()  # paused: the scenario time does not come
    clock.resume()
    await asyncio.wait_for(waiter, 5)
    assert clock.now_s() >= held + 10


async def test_a_real_world_emergency_stop_ends_the_drill_at_once_and_purges_its_data(services, tmp_path: Path):
    endpoints, creds, _ = await services()
    scenario = load_scenario(SCENARIO, "fault.yaml")
    runner = DrillRunner(scenario, "fault.yaml", endpoints, creds, 1.0, tmp_path / "report")  # real time
    drill = asyncio.create_task(runner.run())

    async def incident_open() -> bool:
        return bool(runner.progress.incidents)

    await eventually(incident_open, "the drill's incident opened")
    (tmp_path / "report" / "control").write_text("emergency\n")  # as `ecs drill emergency-stop` does  # noqa: ASYNC240
    result = await drill
    assert result["status"] == "aborted" and "purged" in result["reason"]
    assert {i["status"] for i in result["injects"] if i["id"] != "A1"} == {"skipped"}
    async with httpx.AsyncClient(timeout=30) as http:
        left = await exercise_data(http, endpoints, {"Authorization": f"Bearer {creds.runner_token}"})
        r = await http.get(
            f"{endpoints.intake}/v1/incidents",
            params={"exercise": "true"},
            headers={"Authorization": f"Bearer {creds.runner_token}"},
        )
    assert r.status_code == 200 and r.json()["items"] == []
    for service in ("incident-intake", "dispatch", "resource-stockpile", "shelter-registry", "public-notification"):
        counts = {k: v for k, v in left[service].items() if isinstance(v, int)}
        assert counts and not any(counts.values()), (service, left[service])
