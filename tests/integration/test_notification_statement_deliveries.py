"""public-notification publishes official statements to its channels, on both stores: a published
statement reaches every channel of its world once (a local webhook receiver counts each delivery
key and checks the signature; the embedded gateway's outbox file is read), an exercise statement
never reaches a live channel, and a failing channel is retried while the others go on. A webhook
gets the statement's JSON document (not CAP), SMS and cell broadcast its Chinese text, a post
both languages."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ecs.testing import eventually

from .test_notification_channels import SECRET, Receiver, channel, outbox_lines
from .test_notification_service import CENTRE, as_, new_incident, notification_app, ready_incident, step, wired

__all__ = ["as_", "notification_app", "wired"]  # fixtures shared with the service tests

STATEMENT_JSON = "application/vnd.ecs.statement+json"


class StatementReceiver(Receiver):
    """The channels' receiver, reading a statement's JSON: its status and its id per key."""

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, dict] = {}

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        mac = hmac.new(SECRET.encode(), request.headers["x-timestamp"].encode() + b"." + body, hashlib.sha256)
        if not hmac.compare_digest("sha256=" + mac.hexdigest(), request.headers["x-signature"]):
            self.bad_signatures += 1
            return Response(status_code=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return Response(status_code=500)
        assert request.headers["content-type"] == STATEMENT_JSON
        key = request.headers["x-delivery-key"]
        self.keys[key] += 1
        self.documents[key] = json.loads(body)
        self.statuses[key] = self.documents[key]["status"]
        return Response(status_code=204)


@pytest.fixture
async def receiver():
    rx = StatementReceiver()
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


async def published_statement(api, incident: str, author, approver, **body) -> dict:
    body.setdefault("values", {"address": "南京东路100号"})
    r = await api.post(f"/v1/incidents/{incident}/statements", json=body, headers=author)
    assert r.status_code == 201, r.text
    s = (await step(api, "statements", r.json(), "submit", author)).json()
    s = (await step(api, "statements", s, "approve", approver)).json()
    r = await step(api, "statements", s, "publish", author)
    assert r.status_code == 200, r.text
    return r.json()


async def deliveries(api, statement: dict, headers) -> list[dict]:
    r = await api.get(f"/v1/statements/{statement['id']}/deliveries", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


async def test_a_statement_reaches_every_channel_of_its_world_once_and_a_drill_never_a_live_one(
    notification_app, db_url, wired, as_, receiver, tmp_path
):
    intake, _ = wired
    commander = as_("commander", "commander-wang")
    officer = as_("information_officer", "officer-li")
    drill_a, drill_b = as_("drill_runner", "drill-a"), as_("drill_runner", "drill-b")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:
        cell = {"id": "cell-scene", "kind": "cell", "lat": CENTRE[0], "lon": CENTRE[1]}
        r = await api.post("/v1/targets:batch", json={"targets": [cell]}, headers=commander)
        assert r.status_code == 201, r.text
        live = {
            "hook": await channel(api, commander, "webhook", "live-hook", False, receiver),
            "sms": await channel(api, commander, "sms", "live-sms", False),
            "cell": await channel(api, commander, "cell_broadcast", "live-cb", False),
            "post": await channel(api, commander, "social", "live-post", False),
        }
        drill = {
            "hook": await channel(api, drill_a, "webhook", "drill-hook", True, receiver),
            "sms": await channel(api, drill_a, "sms", "drill-sms", True),
            "post": await channel(api, drill_a, "social", "drill-post", True),
        }
        live_incident, drill_incident = new_incident(), new_incident()
        await ready_incident(api, intake, live_incident, officer)
        await ready_incident(api, intake, drill_incident, drill_a, exercise=True)
        statements = []
        for _ in range(3):  # the drill runs beside live traffic
            statements.append(await published_statement(api, live_incident, officer, commander))
            statements.append(await published_statement(api, drill_incident, drill_a, drill_b))
        live_ids = {s["id"] for s in statements if not s["exercise"]}
        drill_ids = {s["id"] for s in statements if s["exercise"]}

        async def all_delivered():
            for s in statements:
                d = await deliveries(api, s, officer)
                if not d or any(x["status"] != "delivered" for x in d):
                    return None
            return True

        await eventually(all_delivered, "every statement on every channel of its world")
        for s in statements:  # one delivery per channel of its world, none to the other world's
            world = drill if s["exercise"] else live
            d = await deliveries(api, s, officer)
            assert sorted(x["channel_id"] for x in d) == sorted(c["id"] for c in world.values())
            assert {x["statement_id"] for x in d} == {s["id"]} and {x["alert_id"] for x in d} == {None}

        # The webhook receiver: each key once, signed; the live hook only live statements, all Actual.
        assert set(receiver.keys.values()) == {1} and receiver.bad_signatures == 0
        by_channel: dict[str, set[str]] = {}
        for key in receiver.keys:
            subject, channel_id, _ = key.split(".")
            by_channel.setdefault(channel_id, set()).add(subject)
        assert by_channel == {live["hook"]["id"]: live_ids, drill["hook"]["id"]: drill_ids}
        live_keys = [k for k in receiver.keys if k.split(".")[1] == live["hook"]["id"]]
        assert {receiver.statuses[k] for k in live_keys} == {"Actual"}
        document = receiver.documents[live_keys[0]]
        assert document["type"] == "statement" and document["incident_id"] == live_incident
        assert set(document["text"]) == {"zh-CN", "en-US"} and "南京东路100号" in document["text"]["zh-CN"]

        # The gateway's outbox: each live channel holds each live statement once, Actual; drill ones Exercise.
        for kind in ("sms", "cell", "post"):
            lines = outbox_lines(outbox, live[kind]["id"])
            assert sorted(x["key"].split(".")[0] for x in lines) == sorted(live_ids)
            assert {x["status"] for x in lines} == {"Actual"}
        for kind in ("sms", "post"):
            lines = outbox_lines(outbox, drill[kind]["id"])
            assert sorted(x["key"].split(".")[0] for x in lines) == sorted(drill_ids)
            assert {x["status"] for x in lines} == {"Exercise"}
        sms = outbox_lines(outbox, live["sms"]["id"])[0]
        post = outbox_lines(outbox, live["post"]["id"])[0]
        assert "南京东路100号" in sms["text"] and "\n" not in sms["text"]  # Chinese only on a phone
        assert post["text"].startswith(sms["text"]) and len(post["text"]) > len(sms["text"])  # both on a post
        assert sms["targets"] == ["cell-scene"] and "targets" not in post

        r = await api.get("/v1/statements/nope/deliveries", headers=officer)
        assert r.status_code == 404 and r.json()["field"] == "statement_id"


async def test_a_failing_channel_gets_the_statement_later_and_holds_no_other_back(
    notification_app, db_url, wired, as_, receiver, tmp_path
):
    intake, _ = wired
    commander, officer = as_("commander", "commander-wang"), as_("information_officer", "officer-li")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:
        hook = await channel(api, commander, "webhook", "hook", False, receiver)
        post = await channel(api, commander, "social", "post", False)
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        receiver.fail_next = 3
        statement = await published_statement(api, incident, officer, commander)

        async def on_post():
            return outbox_lines(outbox, post["id"]) or None

        await eventually(on_post, "the post channel served while the webhook fails")

        async def all_delivered():
            d = await deliveries(api, statement, officer)
            return d if d and all(x["status"] == "delivered" for x in d) else None

        d = await eventually(all_delivered, "the webhook delivered after its failures")
        on_hook = next(x for x in d if x["channel_id"] == hook["id"])
        assert on_hook["attempts"] == 4 and receiver.fail_next == 0
        assert list(receiver.keys.values()) == [1]
