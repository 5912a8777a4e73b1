"""public-notification's channels on both stores: a published alert reaches every channel of its
kind once (a local webhook receiver counts, signatures checked; the embedded gateway's outbox
file is read), a channel that fails gets it later without holding the others, re-publication
on demand, and exercise isolation with a drill running beside live traffic: 0 exercise
messages on live channels, 0 live messages on exercise channels."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections import Counter
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ecs.testing import eventually, free_port

from .test_notification_service import (
    CENTRE,
    CIRCLE,
    as_,
    draft,
    new_incident,
    notification_app,
    ready_incident,
    step,
    wired,
)

__all__ = ["as_", "notification_app", "wired"]  # fixtures shared with the service tests

SECRET = "receiver-secret-0123456789"


class Receiver:
    """A local webhook receiver: counts each delivery key, checks the signature, and can be told
    to fail its first answers (500)."""

    def __init__(self) -> None:
        self.keys: Counter[str] = Counter()
        self.statuses: dict[str, str] = {}
        self.bad_signatures = 0
        self.fail_next = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        expected = (
            "sha256="
            + hmac.new(
                SECRET.encode(), request.headers["x-timestamp"].encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        if not hmac.compare_digest(expected, request.headers["x-signature"]):
            self.bad_signatures += 1
            return Response(status_code=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return Response(status_code=500)
        key = request.headers["x-delivery-key"]
        self.keys[key] += 1
        self.statuses[key] = "Exercise" if b"<status>Exercise</status>" in body else "Actual"
        return Response(status_code=204)


@pytest.fixture
async def receiver():
    rx = Receiver()
    app = Starlette(routes=[Route("/{channel}", rx.hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=rx.port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _true(server.started), "the receiver listening")
    yield rx
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _true(value: bool) -> bool | None:
    return True if value else None


def outbox_lines(folder: Path, channel_id: str) -> list[dict]:
    path = folder / f"{channel_id}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def channel(api, headers, kind: str, name: str, exercise: bool, receiver: Receiver | None = None) -> dict:
    body = {"kind": kind, "name": name, "exercise": exercise}
    if kind == "webhook":
        body |= {"url": f"{receiver.url}/{name}", "secret": SECRET}
    r = await api.post("/v1/channels", json=body, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def publish(api, incident, author, approver, **body) -> dict:
    a = (
        await draft(api, incident, author, description_zh="撤离", description_en="evacuate", area=CIRCLE, **body)
    ).json()
    a = (await step(api, "alerts", a, "submit", author)).json()
    a = (await step(api, "alerts", a, "approve", approver)).json()
    r = await step(api, "alerts", a, "publish", author)
    assert r.status_code == 200, r.text
    return r.json()


async def cell_at_the_scene(api, headers) -> None:
    """A cell inside CIRCLE: SMS and cell broadcast reach only the targets inside an alert's area."""
    cell = {"id": "cell-scene", "kind": "cell", "lat": CENTRE[0], "lon": CENTRE[1]}
    r = await api.post("/v1/targets:batch", json={"targets": [cell]}, headers=headers)
    assert r.status_code == 201, r.text


async def test_each_alert_reaches_each_channel_of_its_kind_once_and_never_the_other_kind(
    notification_app, db_url, wired, as_, receiver, tmp_path
):
    intake, _ = wired
    commander = as_("commander", "commander-wang")
    officer = as_("information_officer", "officer-li")
    drill_a, drill_b = as_("drill_runner", "drill-a"), as_("drill_runner", "drill-b")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:
        await cell_at_the_scene(api, commander)
        live_hook = await channel(api, commander, "webhook", "live-hook", False, receiver)
        live_sms = await channel(api, commander, "sms", "live-sms", False)
        drill_hook = await channel(api, drill_a, "webhook", "drill-hook", True, receiver)
        drill_cb = await channel(api, drill_a, "cell_broadcast", "drill-cb", True)
        r = await api.post("/v1/channels", json={"kind": "sms", "name": "x", "exercise": False}, headers=drill_a)
        assert r.status_code == 403  # a drill runner registers exercise channels only

        live, drill = new_incident(), new_incident()
        await ready_incident(api, intake, live, officer)
        await ready_incident(api, intake, drill, drill_a, exercise=True)
        published = []
        for _ in range(6):  # the drill runs beside live traffic
            published.append(await publish(api, live, officer, commander))
            published.append(await publish(api, drill, drill_a, drill_b))
        live_ids = {a["id"] for a in published if not a["exercise"]}
        drill_ids = {a["id"] for a in published if a["exercise"]}

        async def all_delivered():
            total = 0
            for a in published:
                d = (await api.get(f"/v1/alerts/{a['id']}/deliveries", headers=officer)).json()["deliveries"]
                total += sum(x["status"] == "delivered" for x in d)
            return total if total == 2 * len(published) else None

        await eventually(all_delivered, "every alert on both channels of its kind")
        # The webhook receiver got each key once; each live key on the live hook, each drill key on the drill hook.
        assert set(receiver.keys.values()) == {1} and receiver.bad_signatures == 0
        on_live_hook = {k.split(".")[0] for k in receiver.keys if k.split(".")[1] == live_hook["id"]}
        on_drill_hook = {k.split(".")[0] for k in receiver.keys if k.split(".")[1] == drill_hook["id"]}
        assert on_live_hook == live_ids and on_drill_hook == drill_ids
        assert {receiver.statuses[k] for k in receiver.keys if k.split(".")[1] == live_hook["id"]} == {"Actual"}
        # The gateway's outbox: the live SMS channel holds only Actual messages of live alerts.
        sms = outbox_lines(outbox, live_sms["id"])
        cb = outbox_lines(outbox, drill_cb["id"])
        assert {x["key"].split(".")[0] for x in sms} == live_ids and {x["status"] for x in sms} == {"Actual"}
        assert {x["key"].split(".")[0] for x in cb} == drill_ids and {x["status"] for x in cb} == {"Exercise"}
        assert len(sms) == len(live_ids) and len(cb) == len(drill_ids)

        # Re-published on demand: one more round, each channel once more.
        first = published[0]
        r = await api.post(f"/v1/alerts/{first['id']}:republish", headers=officer)
        assert r.status_code == 200 and r.json() == {"queued": 2}

        async def second_round():
            return None if len(outbox_lines(outbox, live_sms["id"])) < len(live_ids) + 1 else True

        await eventually(second_round, "the second round")
        d = (await api.get(f"/v1/alerts/{first['id']}/deliveries", headers=officer)).json()["deliveries"]
        assert sorted(x["round"] for x in d) == [1, 1, 2, 2]


async def test_a_failing_channel_gets_everything_later_and_holds_no_other_back(
    notification_app, db_url, wired, as_, receiver, tmp_path
):
    intake, _ = wired
    commander, officer = as_("commander", "commander-wang"), as_("information_officer", "officer-li")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:
        await cell_at_the_scene(api, commander)
        await channel(api, commander, "webhook", "hook", False, receiver)
        sms = await channel(api, commander, "sms", "sms", False)
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        receiver.fail_next = 3
        alert = await publish(api, incident, officer, commander)

        async def on_sms():
            return outbox_lines(outbox, sms["id"]) or None

        await eventually(on_sms, "the SMS channel served while the webhook fails")

        async def hook_delivered():
            d = (await api.get(f"/v1/alerts/{alert['id']}/deliveries", headers=officer)).json()["deliveries"]
            return d if all(x["status"] == "delivered" for x in d) else None

        deliveries = await eventually(hook_delivered, "the webhook delivered after its failures")
        hook = next(x for x in deliveries if x["channel_id"] != sms["id"])
        assert hook["attempts"] == 4 and receiver.fail_next == 0
        assert list(receiver.keys.values()) == [1]
