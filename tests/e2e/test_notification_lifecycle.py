"""incident-intake, dispatch and public-notification as real processes, the way an information
officer and a commander use them: a level II fire reaches opinion control and its 5 h clock
runs; a CAP alert is composed from dispatch's published plan, validated, approved by a second
person and delivered to the SMS channel (to the cell at the scene, not the one across town); the
incident cannot enter the aftermath until an official statement is out, and the statements go by
SMS to the incident's perimeter too; a rumor is refuted and answered; the all-clear in the aftermath
settles public-notification, and only then does the incident close."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ecs import testing
from ecs.gateway_client import GatewayClient
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET

SCENE = (31.2304, 121.4737)


async def eventually(check: Callable[[], Any], what: str = "") -> Any:
    # Three services as processes, each step crossing the broker: a little more patience.
    return await testing.eventually(check, what, within_s=30.0)


def alarm(n: int) -> dict[str, Any]:
    return {
        "alarm_id": f"e2e-notify-{n}",
        "received_at": datetime.now(UTC).isoformat(),
        "category": "fire",
        "location": {"lat": SCENE[0], "lon": SCENE[1], "address": "南京东路100号"},
        "caller": {"number": f"1390000000{n}"},
        "description": "a mall on fire, people trapped",
        "casualties": 10,  # level II (重大)
    }


async def test_a_level_ii_incident_from_alarm_to_close_with_public_notification(
    intake_factory, dispatch_factory, service_factory, tmp_path, operator_headers, nats_private
):
    intake = intake_factory(f"sqlite:///{tmp_path / 'intake.db'}", required_participants='["public-notification"]')
    dispatch_factory(f"sqlite:///{tmp_path / 'dispatch.db'}", min_cover="0")  # publishes the response plans
    outbox = tmp_path / "channel-outbox"
    notify = service_factory(
        "public-notification",
        "NOTIFICATION_",
        f"sqlite:///{tmp_path / 'notification.db'}",
        channel_outbox=str(outbox),
        delivery_poll_s="0.2",
    )
    dispatcher = operator_headers("dispatcher", subject="dispatcher-zhao")
    commander = operator_headers("commander", subject="commander-wang")
    officer = operator_headers("information_officer", subject="officer-li")
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    inc_api = httpx.AsyncClient(base_url=intake.url, timeout=30)
    api = httpx.AsyncClient(base_url=notify.url, timeout=30)
    try:
        r = await api.post(
            "/v1/channels", json={"kind": "sms", "name": "城区短信", "exercise": False}, headers=commander
        )
        assert r.status_code == 201, r.text
        sms = r.json()
        cells = [
            {"id": "cell-scene", "kind": "cell", "lat": SCENE[0], "lon": SCENE[1] + 0.001},
            {"id": "cell-across-town", "kind": "cell", "lat": SCENE[0] + 0.03, "lon": SCENE[1]},
        ]
        r = await api.post("/v1/targets:batch", json={"targets": cells}, headers=commander)
        assert r.status_code == 201, r.text

        incident_id = (await gw.send(alarm(1))).json()["incident_id"]

        async def incident() -> dict[str, Any]:
            return (await inc_api.get(f"/v1/incidents/{incident_id}", headers=dispatcher)).json()

        async def stage(target: str) -> httpx.Response:
            return await inc_api.post(
                f"/v1/incidents/{incident_id}/stage",
                json={"stage": target, "version": (await incident())["version"]},
                headers=commander,
            )

        async def fact(name: str) -> None:
            r = await inc_api.post(
                f"/v1/incidents/{incident_id}/facts",
                json={"fact": name, "version": (await incident())["version"]},
                headers=commander,
            )
            assert r.status_code == 200, r.text

        async def step(kind: str, item: dict[str, Any], action: str, headers: dict[str, str]) -> dict[str, Any]:
            r = await api.post(f"/v1/{kind}/{item['id']}:{action}", json={"version": item["version"]}, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()

        assert (await incident())["level"] == 2
        r = await inc_api.post(
            f"/v1/incidents/{incident_id}/verify", json={"version": (await incident())["version"]}, headers=dispatcher
        )
        assert r.status_code == 200, r.text
        r = await inc_api.put(
            f"/v1/incidents/{incident_id}/perimeter",
            json={
                "version": (await incident())["version"],
                "perimeter": {"kind": "circle", "lat": SCENE[0], "lon": SCENE[1], "radius_m": 300},
            },
            headers=dispatcher,
        )
        assert r.status_code == 200, r.text
        assert (await stage("isolation")).status_code == 200
        assert (await stage("handling")).status_code == 200
        await fact("hazard_under_control")
        assert (await stage("opinion_control")).status_code == 200

        # public-notification follows the lifecycle: level II runs the 5 h and 24 h clocks.
        async def in_opinion_control():
            r = await api.get(f"/v1/incidents/{incident_id}", headers=officer)
            return r.json() if r.status_code == 200 and r.json()["stage"] == "opinion_control" else None

        view = await eventually(in_opinion_control, "the incident in opinion control in public-notification")
        first = next(c for c in view["clocks"] if c["kind"] == "first_information")
        due, started = datetime.fromisoformat(first["due_at"]), datetime.fromisoformat(first["started_at"])
        assert due - started == timedelta(hours=5) and first["state"] == "running"

        # The alert, composed from dispatch's fire plan once it arrived.
        async def composed():
            r = await api.post(
                f"/v1/incidents/{incident_id}/alerts",
                json={"values": {"address": "南京东路100号", "shelter": "人民广场避难所"}},
                headers=officer,
            )
            return r.json() if r.status_code == 201 else None

        alert = await eventually(composed, "an alert from the plan's cap_alert template")
        assert alert["infos"][0]["headline"] == "火灾橙色预警[Ⅱ级/严重]"
        assert "人民广场避难所" in alert["infos"][1]["description"]
        alert = await step("alerts", alert, "submit", officer)  # validated against the CAP 1.2 schema
        r = await api.post(f"/v1/alerts/{alert['id']}:approve", json={"version": alert["version"]}, headers=officer)
        assert r.status_code == 403  # not by its author
        alert = await step("alerts", alert, "approve", commander)
        alert = await step("alerts", alert, "publish", officer)

        async def delivered():
            path = outbox / f"{sms['id']}.jsonl"
            return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else None

        (message,) = await eventually(delivered, "the alert in the SMS outbox")
        assert message["status"] == "Actual" and "火灾橙色预警" in message["text"]
        assert message["targets"] == ["cell-scene"]

        # No statement yet: the aftermath is refused, saying why.
        r = await stage("aftermath")
        assert r.status_code == 409 and "no official statement published" in r.json()["detail"]
        r = await api.post(
            f"/v1/incidents/{incident_id}/statements", json={"values": {"address": "南京东路100号"}}, headers=officer
        )
        assert r.status_code == 201, r.text
        statement = await step("statements", r.json(), "submit", officer)
        statement = await step("statements", statement, "approve", commander)
        await step("statements", statement, "publish", officer)

        async def statement_known():
            return (await incident())["facts"].get("statement_published") is True

        await eventually(statement_known, "intake knowing the statement is out")
        view = (await api.get(f"/v1/incidents/{incident_id}", headers=officer)).json()
        assert next(c for c in view["clocks"] if c["kind"] == "first_information")["state"] == "met"

        # A rumor: refuted, answered by a rebuttal, closed.
        r = await api.post(
            f"/v1/incidents/{incident_id}/rumors",
            json={"source": "微博", "text": "商场已坍塌，死亡数十人", "first_seen": datetime.now(UTC).isoformat()},
            headers=officer,
        )
        assert r.status_code == 201, r.text
        rumor = await step("rumors", r.json(), "refute", officer)
        r = await api.post(
            f"/v1/incidents/{incident_id}/statements",
            json={"kind": "rebuttal", "values": {"address": "南京东路100号"}, "answers_rumors": [rumor["id"]]},
            headers=officer,
        )
        rebuttal = await step("statements", r.json(), "submit", officer)
        rebuttal = await step("statements", rebuttal, "approve", commander)
        await step("statements", rebuttal, "publish", officer)
        rumor = (await api.get(f"/v1/rumors/{rumor['id']}", headers=officer)).json()
        assert rumor["status"] == "answered" and rumor["answered_by"] == [rebuttal["id"]]
        await step("rumors", rumor, "close", officer)

        r = await stage("aftermath")
        assert r.status_code == 200, r.text

        # In the aftermath the live alert keeps public-notification unsettled; the all-clear ends it.
        async def settled(value: bool):
            return True if (await incident())["facts"].get("settled", {}).get("notification") is value else None

        await eventually(lambda: settled(False), "public-notification unsettled while the alert is live")
        await fact("after_action_report")
        r = await stage("closed")
        assert r.status_code == 409 and "public-notification" in r.json()["detail"]
        r = await api.post(
            f"/v1/incidents/{incident_id}/alerts",
            json={
                "msg_type": "Cancel",
                "references": alert["id"],
                "values": {"address": "南京东路100号", "shelter": "-"},
            },
            headers=officer,
        )
        assert r.status_code == 201, r.text
        cancel = await step("alerts", r.json(), "submit", officer)
        cancel = await step("alerts", cancel, "approve", commander)
        await step("alerts", cancel, "publish", officer)
        await eventually(lambda: settled(True), "public-notification settled after the all-clear")
        r = await stage("closed")
        assert r.status_code == 200, r.text

        async def four():
            lines = await delivered()
            return lines if len(lines) == 4 else None

        # The alert, the statement, the rebuttal and the all-clear, each once, to the cell at the scene.
        lines = await eventually(four, "the alert, both statements and the all-clear on the SMS channel")
        assert {x["status"] for x in lines} == {"Actual"} and len({x["key"] for x in lines}) == 4
        assert {x["key"].split(".")[0] for x in lines} == {alert["id"], statement["id"], rebuttal["id"], cancel["id"]}
        assert all(x["targets"] == ["cell-scene"] for x in lines)
        counts = await testing.settled_exact_delivery(nats_private.url)
        assert counts["notification-incidents"] >= 5 and counts["notification-plans"] >= 1, counts
    finally:
        await gw.aclose()
        await inc_api.aclose()
        await api.aclose()
