"""public-notification's exercise data (DESIGN §8) on both stores: what a drill left — a published
exercise alert with its deliveries (one still pending on a failing channel), a statement that
answered a rumor with its deliveries (likewise), the release clocks — is listed and purged; the
pending deliveries never go out,
and live alerts, deliveries, statements, rumors, clocks and channels stay as they were."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from ecs.testing import eventually, free_port

from .test_notification_channels import cell_at_the_scene, publish
from .test_notification_service import as_, new_incident, notification_app, ready_incident, step, wired

__all__ = ["as_", "notification_app", "wired"]  # fixtures shared with the service tests

RUMOR = {"source": "weibo @someone", "text": "the tower will collapse", "first_seen": datetime.now(UTC).isoformat()}


async def live_view(api, headers, incident: str, alert: dict, statement: dict, rumor: dict) -> list[Any]:
    """What an information officer sees of live data (the clocks' seconds left aside: they run)."""
    view = (await api.get(f"/v1/incidents/{incident}", headers=headers)).json()
    for clock in view["clocks"]:
        clock.pop("seconds_left")
    channels = (await api.get("/v1/channels", headers=headers)).json()["channels"]
    return [
        view,
        (await api.get(f"/v1/alerts/{alert['id']}", headers=headers)).content,
        (await api.get(f"/v1/alerts/{alert['id']}/deliveries", headers=headers)).content,
        (await api.get("/v1/alerts", params={"exercise": "false"}, headers=headers)).content,
        (await api.get(f"/v1/statements/{statement['id']}", headers=headers)).content,
        (await api.get(f"/v1/rumors/{rumor['id']}", headers=headers)).content,
        [c for c in channels if not c["exercise"]],
        (await api.get(f"/cap/alerts/{alert['id']}.xml")).content,
    ]


async def test_exercise_data_is_listed_and_purged_and_live_data_stays(notification_app, db_url, wired, as_, tmp_path):
    intake, _ = wired
    commander, officer = as_("commander", "commander-wang"), as_("information_officer", "officer-li")
    drill_a, drill_b = as_("drill_runner", "drill-a"), as_("drill_runner", "drill-b")
    outbox = tmp_path / "outbox"
    async with notification_app(db_url, channel_outbox=str(outbox), delivery_poll_s=0.1) as api:

        async def channel(headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
            r = await api.post("/v1/channels", json=body, headers=headers)
            assert r.status_code == 201, r.text
            return r.json()

        await cell_at_the_scene(api, commander)  # SMS reaches the targets inside the area only
        await channel(commander, {"kind": "sms", "name": "live-sms", "exercise": False})
        await channel(drill_a, {"kind": "sms", "name": "drill-sms", "exercise": True})
        dead = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: the delivery stays pending
        await channel(
            drill_a, {"kind": "webhook", "name": "drill-hook", "exercise": True, "url": dead, "secret": "s" * 20}
        )

        live, drill = new_incident(), new_incident()
        await ready_incident(api, intake, live, officer)  # level II: both release clocks run
        await ready_incident(api, intake, drill, drill_a, exercise=True)
        live_alert = await publish(api, live, officer, commander)
        drill_alert = await publish(api, drill, drill_a, drill_b)
        live_rumor = (await api.post(f"/v1/incidents/{live}/rumors", json=RUMOR, headers=officer)).json()
        drill_rumor = (await api.post(f"/v1/incidents/{drill}/rumors", json=RUMOR, headers=drill_a)).json()
        texts = {"text_zh": "情况说明", "text_en": "what happened"}
        live_statement = (await api.post(f"/v1/incidents/{live}/statements", json=texts, headers=officer)).json()
        s = (
            await api.post(
                f"/v1/incidents/{drill}/statements",
                json={**texts, "answers_rumors": [drill_rumor["id"]]},
                headers=drill_a,
            )
        ).json()
        for action, who in (("submit", drill_a), ("approve", drill_b), ("publish", drill_a)):
            r = await step(api, "statements", s, action, who)
            assert r.status_code == 200, r.text
            s = r.json()

        async def deliveries_settled() -> bool | None:
            got = {}
            for a in (live_alert, drill_alert):
                d = (await api.get(f"/v1/alerts/{a['id']}/deliveries", headers=officer)).json()["deliveries"]
                got[a["id"]] = sorted((x["status"], x["attempts"] > 0) for x in d)
            d = (await api.get(f"/v1/statements/{s['id']}/deliveries", headers=officer)).json()["deliveries"]
            got[s["id"]] = sorted((x["status"], x["attempts"] > 0) for x in d)
            done = got[live_alert["id"]] == [("delivered", True)]
            drill_done = [("delivered", True), ("pending", True)]
            return True if done and got[drill_alert["id"]] == got[s["id"]] == drill_done else None

        await eventually(deliveries_settled, "the live and exercise sms delivered, the failing hook pending")

        before = await live_view(api, officer, live, live_alert, live_statement, live_rumor)
        r = await api.get("/v1/exercise", headers=as_("auditor"))
        assert r.status_code == 200, r.text
        assert r.json() == {
            "incidents": 1,
            "alerts": 1,
            "statements": 1,
            "rumors": 1,
            "clocks": 2,
            "deliveries": 4,  # the alert's and the statement's, each on the SMS and the hook
            "pending_deliveries": 2,
            "channels": 2,
        }
        for role in ("information_officer", "commander", "auditor"):
            refused = await api.delete("/v1/exercise", headers=as_(role))
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")

        r = await api.delete("/v1/exercise", headers=drill_a)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "incidents_purged": 1,
            "alerts_purged": 1,
            "deliveries_purged": 4,
            "statements_purged": 1,
            "rumors_purged": 1,
            "clocks_purged": 2,
            "channels_purged": 0,
        }
        assert await live_view(api, officer, live, live_alert, live_statement, live_rumor) == before
        left = (await api.get("/v1/exercise", headers=officer)).json()
        assert {k: v for k, v in left.items() if k != "channels"} == dict.fromkeys(left.keys() - {"channels"}, 0)
        assert left["channels"] == 2  # exercise channels stay unless asked
        for path in (
            f"/v1/alerts/{drill_alert['id']}",
            f"/v1/statements/{s['id']}",
            f"/v1/rumors/{drill_rumor['id']}",
            f"/v1/incidents/{drill}",
        ):
            assert (await api.get(path, headers=officer)).status_code == 404, path
        clocks = (await api.get("/v1/clocks", headers=officer)).json()["clocks"]
        assert {c["incident_id"] for c in clocks} == {live}

        r = await api.delete("/v1/exercise", params={"channels": "true"}, headers=drill_a)
        assert r.status_code == 200 and r.json()["channels_purged"] == 2, r.text
        assert set((await api.get("/v1/exercise", headers=officer)).json().values()) == {0}
        assert await live_view(api, officer, live, live_alert, live_statement, live_rumor) == before
        again = await api.delete("/v1/exercise", params={"channels": "true"}, headers=drill_a)
        assert set(again.json().values()) == {0}
        await asyncio.sleep(0.5)  # the worker keeps polling: nothing of the drill is left for it
        assert (await api.get("/readyz")).status_code == 200
