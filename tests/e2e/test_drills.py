"""The shipped drill scenarios, each run end to end at a high speed factor against all five
services as real processes (SQLite, the tests' own nats-server), as a drill script would: through
the gateway contract, the operator API as drill_runner and the NATS events as the observer.

Each drill must reach the end of its MSEL with every inject done, close its incidents after all
four stages, put nothing on a live channel, and leave an after-action report whose objectives were
measured from the events. The ratings themselves depend on the speed factor (at speed S the
system's own latency counts S times) and are printed, not asserted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecs.drill.runner import Credentials, DrillRunner, Endpoints
from ecs.drill.scenario import read_scenario
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
