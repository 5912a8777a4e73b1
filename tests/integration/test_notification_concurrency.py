"""public-notification's races on PostgreSQL, decided by the database: many officers publishing one
alert get one publication and one ``sent``; an Update and a Cancel racing for one live alert end
it once; two commanders approving at once approve once; two sweeps (two replicas) warn of and miss
a clock once each."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from ecs.envelope import utcnow
from ecs.testing import eventually
from public_notification import commands
from public_notification.handlers import handle

from .test_notification_service import CIRCLE, as_, draft, new_incident, notification_app, ready_incident, step, wired

__all__ = ["as_", "notification_app", "wired"]  # fixtures shared with the service tests

TEXT = {"description_zh": "撤离", "description_en": "evacuate", "area": CIRCLE}
RACERS = 20


async def approved(api, incident, officer, commander) -> dict:
    a = (await draft(api, incident, officer, **TEXT)).json()
    a = (await step(api, "alerts", a, "submit", officer)).json()
    return (await step(api, "alerts", a, "approve", commander)).json()


async def test_many_publishers_of_one_alert_publish_it_once(notification_app, pg_url, wired, as_):
    intake, facts = wired
    officer, commander = as_("information_officer", "officer-li"), as_("commander", "commander-wang")
    async with notification_app(pg_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        alert = await approved(api, incident, officer, commander)
        answers = await asyncio.gather(*(step(api, "alerts", alert, "publish", officer) for _ in range(RACERS)))
        codes = Counter(r.status_code for r in answers)
        assert codes == Counter({200: 1, 409: RACERS - 1})
        sent = {r.json()["sent"] for r in answers if r.status_code == 200}
        assert (await api.get(f"/v1/alerts/{alert['id']}", headers=officer)).json()["sent"] in sent

        async def published():
            return facts.of("notification.alert.published", incident) or None

        await eventually(published, "alert.published")
        assert len(facts.of("notification.alert.published", incident)) == 1


async def test_an_update_and_a_cancel_racing_end_the_alert_once(notification_app, pg_url, wired, as_):
    intake, _ = wired
    officer, commander = as_("information_officer", "officer-li"), as_("commander", "commander-wang")
    async with notification_app(pg_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        live = await approved(api, incident, officer, commander)
        live = (await step(api, "alerts", live, "publish", officer)).json()
        changes = []
        for msg_type in ["Update", "Cancel"] * (RACERS // 2):
            c = (await draft(api, incident, officer, msg_type=msg_type, references=live["id"], **TEXT)).json()
            c = (await step(api, "alerts", c, "submit", officer)).json()
            changes.append((await step(api, "alerts", c, "approve", commander)).json())
        answers = await asyncio.gather(*(step(api, "alerts", c, "publish", officer) for c in changes))
        assert Counter(r.status_code for r in answers) == Counter({200: 1, 409: RACERS - 1})
        winner = next(r.json() for r in answers if r.status_code == 200)
        ended = (await api.get(f"/v1/alerts/{live['id']}", headers=officer)).json()
        assert ended["status"] == ("cancelled" if winner["msg_type"] == "Cancel" else "updated")
        page = (
            await api.get("/v1/alerts", params={"incident_id": incident, "status": "published"}, headers=officer)
        ).json()
        assert [a["id"] for a in page["alerts"]] == [winner["id"]]


async def test_two_commanders_approving_at_once_approve_once(notification_app, pg_url, wired, as_):
    intake, _ = wired
    officer = as_("information_officer", "officer-li")
    commanders = [as_("commander", f"commander-{i}") for i in range(RACERS)]
    async with notification_app(pg_url) as api:
        incident = new_incident()
        await ready_incident(api, intake, incident, officer)
        a = (await draft(api, incident, officer, **TEXT)).json()
        a = (await step(api, "alerts", a, "submit", officer)).json()
        answers = await asyncio.gather(*(step(api, "alerts", a, "approve", c) for c in commanders))
        assert Counter(r.status_code for r in answers) == Counter({200: 1, 409: RACERS - 1})
        approver = next(r.json()["approver"] for r in answers if r.status_code == 200)
        assert (await api.get(f"/v1/alerts/{a['id']}", headers=officer)).json()["approver"] == approver


@pytest.mark.parametrize("sweeps", [8])
async def test_sweeps_side_by_side_warn_and_miss_each_clock_once(notification_app, pg_url, wired, as_, sweeps):
    intake, facts = wired
    officer = as_("information_officer")
    # Sweeps only when told: the background sweep waits an hour.
    async with notification_app(pg_url, first_information_s=2, clock_warning_s=1, clock_sweep_s=3600) as api:
        incidents = [new_incident() for _ in range(5)]
        for incident in incidents:
            await intake.create(incident, level=2)

        async def all_known():
            r = await api.get("/v1/clocks", headers=officer)
            mine = [c for c in r.json()["clocks"] if c["incident_id"] in incidents]
            return mine if len(mine) == 2 * len(incidents) else None

        await eventually(all_known, "the clocks of every incident")
        ctx = api._transport.app.state.notification  # the app's own context: sweeps as replicas would
        later = utcnow() + timedelta(seconds=5)
        results = await asyncio.gather(*(handle(ctx, commands.SweepClocks(later)) for _ in range(sweeps)))
        warned = sum(len(w) for w, _ in results)
        missed = sum(len(m) for _, m in results)
        assert (warned, missed) == (len(incidents), len(incidents))  # the first-information clocks only

        async def missed_events():
            got = [e for e in facts.of("notification.clock.missed") if e["incident_id"] in incidents]
            return got if len(got) == len(incidents) else None

        await eventually(missed_events, "one clock.missed per incident")
