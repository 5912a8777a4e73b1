"""public-notification's consumers and sweeps on both stores: malformed incident and plan events
go to the dead-letter subject with the reason while the rest go on; an alert whose ``expires``
passed is expired once, leaves the public feed and counts as ended for settlement."""

from __future__ import annotations

from datetime import timedelta

from ecs.contracts import CategoryChanged
from ecs.envelope import make_event, utcnow
from ecs.testing import eventually
from public_notification import commands
from public_notification.handlers import handle

from .test_notification_service import (
    CIRCLE,
    as_,
    draft,
    known,
    new_incident,
    notification_app,
    ready_incident,
    step,
    wired,
)

__all__ = ["as_", "notification_app", "wired"]  # fixtures shared with the service tests


async def test_malformed_events_are_dead_lettered_with_the_reason(notification_app, db_url, wired, as_, nats_private):
    intake, _ = wired
    dead: list[tuple[str, str]] = []

    async def on_dead(msg):
        dead.append((msg.subject, msg.headers.get("Ecs-Reason", "")))

    await intake.bus.nc.subscribe("deadletter.>", cb=on_dead)
    async with notification_app(db_url) as api:
        bad = make_event(
            "incident.stage.changed", {"incident_id": "x", "to_stage": "isolation"}, source="incident-intake"
        )
        await intake.bus.publish_event(bad)
        await intake.bus.publish("incident.created", b"not an envelope", {"Nats-Msg-Id": "garbage-1"})
        plan = make_event("dispatch.plan.published", {"category": "volcano", "version": 1}, source="dispatch")
        await intake.bus.publish_event(plan)
        # A version past what any service stores (a database overflow retried for ever before),
        # and a category "change" that is not medical to a scene.
        huge = {
            "incident_id": "y",
            "from_category": "medical",
            "to_category": "fire",
            "level": 3,
            "alarm_id": "a-1",
            "reason": "r",
            "actor": "correlation",
            "version": 2**63,
        }
        await intake.bus.publish_event(
            make_event("incident.category.changed", huge, source="incident-intake", incident_id="y")
        )
        back = {**huge, "from_category": "fire", "to_category": "medical", "version": 5}
        await intake.bus.publish_event(
            make_event("incident.category.changed", back, source="incident-intake", incident_id="y")
        )
        good = new_incident()
        await intake.create(good)  # the consumer keeps going

        async def five_dead():
            return dead if len(dead) == 5 else None

        found = await eventually(five_dead, "five messages dead-lettered")
        reasons = dict(found)
        assert "data.from_stage: Field required" in reasons["deadletter.incident.stage.changed"]
        assert "not a valid envelope: envelope: Invalid JSON" in reasons["deadletter.incident.created"]
        assert "data.category" in reasons["deadletter.dispatch.plan.published"]
        changed = sorted(reason for subject, reason in found if subject == "deadletter.incident.category.changed")
        assert len(changed) == 2
        assert any("data.version" in r and "less than or equal to 2147483647" in r for r in changed), changed
        assert any("only from medical to a scene" in r for r in changed), changed

        async def known():
            return (await api.get(f"/v1/incidents/{good}", headers=as_("auditor"))).status_code == 200

        await eventually(known, "the good incident handled after the bad ones")


async def test_an_expired_alert_ends_once_and_leaves_the_feed(notification_app, db_url, wired, as_):
    intake, facts = wired
    officer, commander = as_("information_officer", "officer-li"), as_("commander", "commander-wang")
    async with notification_app(db_url, clock_sweep_s=3600) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        expires = (utcnow() + timedelta(minutes=30)).isoformat()
        a = (
            await draft(api, incident, officer, description_zh="z", description_en="e", area=CIRCLE, expires=expires)
        ).json()
        a = (await step(api, "alerts", a, "submit", officer)).json()
        a = (await step(api, "alerts", a, "approve", commander)).json()
        a = (await step(api, "alerts", a, "publish", officer)).json()
        assert a["identifier"] in (await api.get("/cap/feed.xml")).text
        ctx = api._transport.app.state.notification
        assert await handle(ctx, commands.ExpireAlerts(utcnow())) == 0  # not yet
        later = utcnow() + timedelta(hours=1)
        assert [await handle(ctx, commands.ExpireAlerts(later)) for _ in range(3)] == [1, 0, 0]
        assert (await api.get(f"/v1/alerts/{a['id']}", headers=officer)).json()["status"] == "expired"
        assert a["identifier"] not in (await api.get("/cap/feed.xml")).text

        async def ended():
            return facts.of("notification.alert.ended", incident) or None

        (event,) = await eventually(ended, "alert.ended")
        assert event["data"]["status"] == "expired"


async def test_an_alert_area_reaches_the_targets_inside_it(notification_app, db_url, wired, as_):
    intake, _ = wired
    officer, commander = as_("information_officer", "officer-li"), as_("commander", "commander-wang")
    lat, lon = CIRCLE["circle"]["lat"], CIRCLE["circle"]["lon"]
    async with notification_app(db_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        near = [{"id": f"cell-{i}", "kind": "cell", "lat": lat + 0.0005 * i, "lon": lon} for i in range(5)]
        far = [{"id": "cell-far", "kind": "cell", "lat": lat + 0.1, "lon": lon}]
        district = [{"id": "huangpu", "kind": "district", "name": "黄浦区", "lat": lat, "lon": lon + 0.001}]
        r = await api.post("/v1/targets:batch", json={"targets": near + far + district}, headers=commander)
        assert r.status_code == 201 and r.json() == {"registered": 7}
        r = await api.post("/v1/targets:batch", json={"targets": far}, headers=commander)
        assert r.json() == {"registered": 0}  # known ids stay as they are
        bad = {"targets": [{"id": "x", "kind": "cell", "lat": 91, "lon": 0}]}
        r = await api.post("/v1/targets:batch", json=bad, headers=commander)
        assert r.status_code == 422 and "targets.0.lat" in r.text
        assert (await api.post("/v1/targets:batch", json={"targets": far}, headers=officer)).status_code == 403

        a = (await draft(api, incident, officer, description_zh="z", description_en="e", area=CIRCLE)).json()
        r = await api.get(f"/v1/alerts/{a['id']}/targets", headers=officer)
        assert r.status_code == 200, r.text
        reached = r.json()
        assert reached["by_kind"] == {"cell": 5, "district": 1} and "cell-far" not in reached["ids"]
        ring = [
            [lat - 0.001, lon - 0.001],
            [lat - 0.001, lon + 0.002],
            [lat + 0.0012, lon + 0.002],
            [lat + 0.0012, lon - 0.001],
        ]
        square = {"polygon": [*ring, ring[0]]}
        b = (await draft(api, incident, officer, description_zh="z", description_en="e", area=square)).json()
        reached = (await api.get(f"/v1/alerts/{b['id']}/targets", headers=officer)).json()
        assert sorted(reached["ids"]) == ["cell-0", "cell-1", "cell-2", "huangpu"]


async def test_a_repeated_post_with_its_idempotency_key_answers_the_same_and_adds_nothing(
    notification_app, sqlite_url, wired, as_
):
    intake, _ = wired
    officer = as_("information_officer", "officer-li")
    async with notification_app(sqlite_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        body = {"description_zh": "z", "description_en": "e", "area": CIRCLE}
        headers = {**officer, "Idempotency-Key": "draft-1"}
        first = await api.post(f"/v1/incidents/{incident}/alerts", json=body, headers=headers)
        again = await api.post(f"/v1/incidents/{incident}/alerts", json=body, headers=headers)
        assert first.status_code == again.status_code == 201
        assert again.json()["id"] == first.json()["id"]
        page = (await api.get("/v1/alerts", params={"incident_id": incident}, headers=officer)).json()
        assert len(page["alerts"]) == 1
        other = await api.post(
            f"/v1/incidents/{incident}/alerts", json={**body, "description_en": "x"}, headers=headers
        )
        assert other.status_code == 422 and "already used with a different request" in other.json()["detail"]


async def test_a_medical_call_that_became_a_fire_is_a_fire_here_too(notification_app, db_url, wired, as_):
    """intake turns a medical-only incident into the scene reported near it and says so with the
    next stage change; public-notification takes the category with it (its templates and headline
    are the scene's, not a medical call's)."""
    intake, _ = wired
    officer = as_("information_officer", "officer-li")
    async with notification_app(db_url) as api:
        await intake.publish_plan()  # the fire plan
        incident = new_incident()
        await intake.create(incident, category="medical")
        await known(api, incident, officer, category="medical")
        await intake.stage_to(incident, "isolation", category="fire")
        await known(api, incident, officer, category="fire", stage="isolation", plan_version=1)
        r = await draft(api, incident, officer)
        assert r.status_code == 201, r.text
        assert r.json()["infos"][0]["headline"].startswith("火灾")


async def test_a_medical_call_that_becomes_a_fire_between_stages_is_a_fire_here_at_once(
    notification_app, db_url, wired, as_
):
    """incident.category.changed (no stage change with it): public-notification's copy takes the
    scene at once, and drafts from the scene's templates."""
    intake, _ = wired
    officer = as_("information_officer", "officer-li")
    async with notification_app(db_url) as api:
        await intake.publish_plan()  # the fire plan
        incident = new_incident()
        await intake.create(incident, category="medical")
        await intake.stage_to(incident, "isolation", category="medical")
        await known(api, incident, officer, category="medical", stage="isolation")
        changed = CategoryChanged(
            incident_id=incident,
            from_category="medical",
            to_category="fire",
            level=2,
            alarm_id="a-9",
            reason="a fire alarm arrived near this medical-only incident",
            actor="correlation",
            version=intake.versions[incident] + 1,
        )
        await intake.bus.publish_event(
            make_event("incident.category.changed", changed, source="incident-intake", incident_id=incident)
        )
        await known(api, incident, officer, category="fire", stage="isolation", plan_version=1)
        r = await draft(api, incident, officer)
        assert r.status_code == 201, r.text
        assert r.json()["infos"][0]["headline"].startswith("火灾")
