"""public-notification limits SMS and cell broadcast to the area, on both stores: each SMS or
cell-broadcast delivery of an alert carries exactly the cells (and, for SMS, the districts and
subscriber groups) inside the alert's circle or polygon, recorded on the delivery and handed to
the gateway; a channel with nothing inside is recorded as skipped and never sent, while a post
(no area) goes out as before. A statement's SMS goes to the incident's perimeter."""

from __future__ import annotations

from ecs.contracts import StageChanged
from ecs.envelope import make_event
from ecs.testing import eventually

from .test_notification_channels import channel, outbox_lines
from .test_notification_service import CENTRE, as_, draft, new_incident, notification_app, ready_incident, step, wired
from .test_notification_statement_deliveries import deliveries as statement_deliveries
from .test_notification_statement_deliveries import published_statement

__all__ = ["as_", "notification_app", "wired"]  # fixtures shared with the service tests

LAT, LON = CENTRE
TARGETS = [
    {"id": "cell-centre", "kind": "cell", "lat": LAT, "lon": LON},
    {"id": "cell-east", "kind": "cell", "lat": LAT, "lon": LON + 0.003},  # about 285 m east
    {"id": "cell-far", "kind": "cell", "lat": LAT + 0.02, "lon": LON},  # about 2.2 km north
    {"id": "subs-mall", "kind": "subscribers", "name": "商场订阅", "lat": LAT - 0.002, "lon": LON},  # 220 m
    {"id": "district-310101", "kind": "district", "lat": 31.2317, "lon": 121.4846},  # about 1.1 km
]
NEAR = {"description": "南京东路", "circle": {"lat": LAT, "lon": LON, "radius_m": 500}}
# A square of about 200 m around cell-east only (closed ring of [lat, lon]).
SQUARE = [
    [LAT - 0.001, LON + 0.002],
    [LAT - 0.001, LON + 0.004],
    [LAT + 0.001, LON + 0.004],
    [LAT + 0.001, LON + 0.002],
]
EAST_ONLY = {"description": "东侧", "polygon": [*SQUARE, SQUARE[0]]}
NOWHERE = {"description": "江心", "circle": {"lat": LAT - 0.05, "lon": LON + 0.05, "radius_m": 300}}


async def published(api, incident, author, approver, area) -> dict:
    a = (await draft(api, incident, author, description_zh="撤离", description_en="evacuate", area=area)).json()
    a = (await step(api, "alerts", a, "submit", author)).json()
    a = (await step(api, "alerts", a, "approve", approver)).json()
    r = await step(api, "alerts", a, "publish", author)
    assert r.status_code == 200, r.text
    return r.json()


async def settled(api, path: str, headers) -> dict[str, dict]:
    """The deliveries at ``path`` once none is pending, by channel id."""

    async def done():
        d = (await api.get(path, headers=headers)).json()["deliveries"]
        return d if d and all(x["status"] != "pending" for x in d) else None

    return {x["channel_id"]: x for x in await eventually(done, f"{path} done")}


async def test_sms_and_cell_broadcast_carry_exactly_the_targets_inside_and_skip_an_empty_area(
    notification_app, db_url, wired, as_, tmp_path
):
    intake, _ = wired
    commander, officer = as_("commander", "commander-wang"), as_("information_officer", "officer-li")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:
        r = await api.post("/v1/targets:batch", json={"targets": TARGETS}, headers=commander)
        assert r.status_code == 201 and r.json() == {"registered": len(TARGETS)}
        sms = await channel(api, commander, "sms", "sms", False)
        cb = await channel(api, commander, "cell_broadcast", "cb", False)
        post = await channel(api, commander, "social", "post", False)
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)

        # A circle of 500 m: the two cells and the subscriber group inside; not the far cell, not the district.
        near = await published(api, incident, officer, commander, NEAR)
        d = await settled(api, f"/v1/alerts/{near['id']}/deliveries", officer)
        assert d[sms["id"]]["status"] == "delivered"
        assert d[sms["id"]]["targets"] == ["cell-centre", "cell-east", "subs-mall"]
        assert d[cb["id"]]["status"] == "delivered" and d[cb["id"]]["targets"] == ["cell-centre", "cell-east"]
        assert d[post["id"]]["status"] == "delivered" and d[post["id"]]["targets"] is None
        # The gateway was handed the same targets.
        (line,) = outbox_lines(outbox, cb["id"])
        assert line["key"].startswith(near["id"]) and line["targets"] == ["cell-centre", "cell-east"]
        (line,) = outbox_lines(outbox, sms["id"])
        assert line["targets"] == ["cell-centre", "cell-east", "subs-mall"]

        # A polygon around the east cell only.
        east = await published(api, incident, officer, commander, EAST_ONLY)
        d = await settled(api, f"/v1/alerts/{east['id']}/deliveries", officer)
        assert d[cb["id"]]["targets"] == ["cell-east"] and d[sms["id"]]["targets"] == ["cell-east"]
        assert [x["targets"] for x in outbox_lines(outbox, cb["id"])] == [["cell-centre", "cell-east"], ["cell-east"]]

        # Nothing inside: SMS and cell broadcast skipped, recorded with the reason, never sent; the post goes.
        nowhere = await published(api, incident, officer, commander, NOWHERE)
        d = await settled(api, f"/v1/alerts/{nowhere['id']}/deliveries", officer)
        for skipped in (sms, cb):
            x = d[skipped["id"]]
            assert x["status"] == "skipped" and x["attempts"] == 0 and x["targets"] == []
            assert "inside the alert's area" in x["last_error"] and x["delivered_at"] is None
        assert d[post["id"]]["status"] == "delivered"
        assert len(outbox_lines(outbox, sms["id"])) == 2 and len(outbox_lines(outbox, cb["id"])) == 2
        assert any(x["key"].startswith(nowhere["id"]) for x in outbox_lines(outbox, post["id"]))

        # What the targets view says of an alert's area agrees with the deliveries.
        r = await api.get(f"/v1/alerts/{near['id']}/targets", headers=officer)
        assert r.json()["ids"] == ["cell-centre", "cell-east", "subs-mall"]

        # Re-published: the new round is targeted again, the skipped channels skipped again.
        r = await api.post(f"/v1/alerts/{nowhere['id']}:republish", headers=officer)
        assert r.status_code == 200 and r.json() == {"queued": 1}


async def test_a_statement_goes_by_sms_to_the_incident_perimeter(notification_app, db_url, wired, as_, tmp_path):
    intake, _ = wired
    commander, officer = as_("commander", "commander-wang"), as_("information_officer", "officer-li")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:
        await api.post("/v1/targets:batch", json={"targets": TARGETS}, headers=commander)
        sms = await channel(api, commander, "sms", "sms", False)
        cb = await channel(api, commander, "cell_broadcast", "cb", False)

        # Without a perimeter: the plan's evacuation circle (400 m) around the incident.
        plain = new_incident()
        await ready_incident(api, intake, plain, officer)
        statement = await published_statement(api, plain, officer, commander)
        d = {x["channel_id"]: x for x in await statement_deliveries(api, statement, officer)}
        assert d[cb["id"]]["targets"] == ["cell-centre", "cell-east"]
        assert d[sms["id"]]["targets"] == ["cell-centre", "cell-east", "subs-mall"]

        # With intake's perimeter (a polygon, its ring open, around the far cell only): that perimeter.
        cordoned = new_incident()
        await ready_incident(api, intake, cordoned, officer)
        ring = [[LAT + 0.019, LON - 0.001], [LAT + 0.019, LON + 0.001], [LAT + 0.021, LON + 0.001], [LAT + 0.021, LON]]
        intake.versions[cordoned] += 1
        change = StageChanged(
            incident_id=cordoned,
            from_stage="opinion_control",
            to_stage="opinion_control",
            actor="commander-1",
            version=intake.versions[cordoned],
            category="fire",
            level=2,
            lat=LAT,
            lon=LON,
            perimeter={"kind": "polygon", "points": ring},
        )
        await intake.bus.publish_event(
            make_event("incident.stage.changed", change, source="incident-intake", incident_id=cordoned)
        )

        async def perimeter_known():
            r = await api.post(
                f"/v1/incidents/{cordoned}/statements", json={"values": {"address": "外滩"}}, headers=officer
            )
            s = (await step(api, "statements", r.json(), "submit", officer)).json()
            s = (await step(api, "statements", s, "approve", commander)).json()
            s = (await step(api, "statements", s, "publish", officer)).json()
            d = {x["channel_id"]: x for x in await statement_deliveries(api, s, officer)}
            return d if d[cb["id"]]["targets"] == ["cell-far"] else None

        d = await eventually(perimeter_known, "a statement targeted at the perimeter")
        assert d[sms["id"]]["targets"] == ["cell-far"]

        async def sent():
            lines = outbox_lines(outbox, cb["id"])
            return lines if any(x["targets"] == ["cell-far"] for x in lines) else None

        await eventually(sent, "the perimeter's cell broadcast handed to the gateway")
