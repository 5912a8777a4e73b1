"""The walking skeleton end to end: a signed alarm in, an incident out, an operator reads it."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from ecs.gateway_client import GatewayClient
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET


def fire_alarm(alarm_id: str, number: str) -> dict:
    return {
        "alarm_id": alarm_id,
        "received_at": datetime.now(UTC).isoformat(),
        "category": "fire",
        "location": {"lat": 31.2304, "lon": 121.4737},
        "caller": {"number": number},
        "description": "smoke from the third floor",
    }


async def test_alarms_correlate_into_one_incident(intake_factory, sqlite_url, operator_headers):
    intake = intake_factory(sqlite_url)
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    first = (await gw.send(fire_alarm("a-1", "13900000001"))).json()
    second = (await gw.send(fire_alarm("a-2", "13900000002"))).json()
    await gw.aclose()
    assert first["correlated"] is False and second["correlated"] is True
    assert first["incident_id"] == second["incident_id"]
    async with httpx.AsyncClient(base_url=intake.url, headers=operator_headers("dispatcher")) as api:
        incident = (await api.get(f"/v1/incidents/{first['incident_id']}")).json()
    assert incident["alarm_count"] == 2
    assert incident["caller_count"] == 2
    assert [a["alarm_id"] for a in incident["alarms"]] == ["a-2", "a-1"]
