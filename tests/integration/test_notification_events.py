"""public-notification's consumers and sweeps on both stores: malformed incident and plan events
go to the dead-letter subject with the reason while the rest go on; an alert whose ``expires``
passed is expired once, leaves the public feed and counts as ended for settlement."""

from __future__ import annotations

from datetime import timedelta

from ecs.envelope import make_event, utcnow
from ecs.testing import eventually
from public_notification import commands
from public_notification.handlers import handle

from .test_notification_service import CIRCLE, as_, draft, new_incident, notification_app, ready_incident, step, wired

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
        good = new_incident()
        await intake.create(good)  # the consumer keeps going

        async def three_dead():
            return dead if len(dead) == 3 else None

        reasons = dict(await eventually(three_dead, "three messages dead-lettered"))
        assert "data.from_stage: Field required" in reasons["deadletter.incident.stage.changed"]
        assert "not a valid envelope" in reasons["deadletter.incident.created"]
        assert "data.category" in reasons["deadletter.dispatch.plan.published"]

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
