"""public-notification as two replicas on PostgreSQL, one killed with SIGKILL between approval
and delivery and started again, while the live channel fails for a while and a drill runs beside
live traffic: every approved alert reaches every channel of its kind exactly once (the receiver
counts each delivery key), the failing channel gets everything afterwards, and 0 exercise
messages reach the live channel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ecs.bus import Bus
from ecs.testing import eventually, free_port
from tests.integration.test_notification_service import CIRCLE, Intake

SECRET = "receiver-secret-0123456789"
ALERTS = 20  # per incident: a live one and a drill
OUTAGE_S = 6.0


class Receiver:
    """An idempotent webhook receiver, as a real one is: the first message of each delivery key
    counts, a repeat is acknowledged and counted apart. Down (503) until ``up_at``."""

    def __init__(self) -> None:
        self.accepted: dict[str, Counter[str]] = {"live": Counter(), "drill": Counter()}
        self.statuses: dict[str, Counter[str]] = {"live": Counter(), "drill": Counter()}
        self.repeats = 0
        self.refused_while_down = 0
        self.up_at = 0.0
        self.port = free_port()

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        channel = request.path_params["channel"]
        if channel == "live" and time.monotonic() < self.up_at:
            self.refused_while_down += 1
            return Response(status_code=503)
        key = request.headers["x-delivery-key"]
        if key in self.accepted[channel]:
            self.repeats += 1
        else:
            self.statuses[channel]["Exercise" if b"<status>Exercise</status>" in body else "Actual"] += 1
        self.accepted[channel][key] += 1
        return Response(status_code=204)


async def test_killed_replica_and_failing_channel_deliver_every_alert_exactly_once(
    service_factory, nats_private, pg_url, operator_headers
):
    rx = Receiver()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/{channel}", rx.hook, methods=["POST"])]),
            host="127.0.0.1",
            port=rx.port,
            log_level="warning",
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    settings = {"delivery_lease_s": "2", "delivery_poll_s": "0.2"}
    a = service_factory("public-notification", "NOTIFICATION_", pg_url, **settings)
    b = service_factory("public-notification", "NOTIFICATION_", pg_url, **settings)
    commander = operator_headers("commander", subject="commander-wang")
    officer = operator_headers("information_officer", subject="officer-li")
    drill_a = operator_headers("drill_runner", subject="drill-a")
    drill_b = operator_headers("drill_runner", subject="drill-b")
    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    api_a = httpx.AsyncClient(base_url=a.url, timeout=30)
    api_b = httpx.AsyncClient(base_url=b.url, timeout=30)
    try:
        for name, exercise, headers in (("live", False, commander), ("drill", True, drill_a)):
            body = {
                "kind": "webhook",
                "name": name,
                "exercise": exercise,
                "url": f"http://127.0.0.1:{rx.port}/{name}",
                "secret": SECRET,
            }
            r = await api_a.post("/v1/channels", json=body, headers=headers)
            assert r.status_code == 201, r.text
        intake = Intake(bus)
        await intake.create("live-1", level=2)
        await intake.create("drill-1", level=2, exercise=True)

        async def known():
            for incident in ("live-1", "drill-1"):
                if (await api_b.get(f"/v1/incidents/{incident}", headers=commander)).status_code != 200:
                    return None
            return True

        await eventually(known, "both incidents known")

        async def approved(api, incident, author, approver) -> dict:
            body = {"description_zh": "撤离", "description_en": "evacuate", "area": CIRCLE}
            alert = (await api.post(f"/v1/incidents/{incident}/alerts", json=body, headers=author)).json()
            for action, who in (("submit", author), ("approve", approver)):
                r = await api.post(
                    f"/v1/alerts/{alert['id']}:{action}", json={"version": alert["version"]}, headers=who
                )
                assert r.status_code == 200, r.text
                alert = r.json()
            return alert

        ready = []
        for n in range(ALERTS):
            api = api_a if n % 2 else api_b
            ready.append((api, await approved(api, "live-1", officer, commander), officer))
            ready.append((api, await approved(api, "drill-1", drill_a, drill_b), drill_a))

        # The live channel goes down; everything is published; replica A dies mid-delivery.
        rx.up_at = time.monotonic() + OUTAGE_S
        for api, alert, who in ready:
            r = await api.post(f"/v1/alerts/{alert['id']}:publish", json={"version": alert["version"]}, headers=who)
            assert r.status_code == 200, r.text
        a.kill(9)
        assert sum(rx.accepted["live"].values()) < ALERTS, "the live channel took everything before the kill"
        a.start()

        async def all_in():
            done = len(rx.accepted["live"]) == ALERTS and len(rx.accepted["drill"]) == ALERTS
            return True if done else None

        await eventually(all_in, "every alert on its channel", within_s=90)

        async def recorded():
            for _, alert, _ in ready:
                d = (await api_b.get(f"/v1/alerts/{alert['id']}/deliveries", headers=commander)).json()
                if [x["status"] for x in d["deliveries"]] != ["delivered"]:
                    return None
            return True

        await eventually(recorded, "every delivery recorded delivered", within_s=60)
    finally:
        await api_a.aclose()
        await api_b.aclose()
        await bus.close()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    live_ids = {alert["id"] for _, alert, _ in ready if not alert["exercise"]}
    drill_ids = {alert["id"] for _, alert, _ in ready if alert["exercise"]}
    assert {k.split(".")[0] for k in rx.accepted["live"]} == live_ids
    assert {k.split(".")[0] for k in rx.accepted["drill"]} == drill_ids
    assert rx.statuses["live"] == Counter({"Actual": ALERTS})  # 0 exercise messages on the live channel
    assert rx.statuses["drill"] == Counter({"Exercise": ALERTS})
    assert rx.refused_while_down > 0, "the live channel never failed: nothing was tested"
    print(f"repeats absorbed by the receiver's key: {rx.repeats}; refused while down: {rx.refused_while_down}")
