"""resource-stockpile follows the incident lifecycle by itself: on handling it reserves the plan's
supplies for the level (asked of dispatch on rpc.dispatch.plan.get), a level change tops up or
releases, aftermath releases what is held and asks for what is out, and the settled fact follows;
a malformed incident event goes to the dead-letter subject with its reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from ecs.bus import Bus
from ecs.contracts import CategoryChanged, IncidentMerged
from ecs.envelope import make_event
from ecs.testing import eventually
from tests.integration import test_stockpile_service as service
from tests.integration.test_dispatch_service import Intake
from tests.integration.test_stockpile_service import Stockpile, depot, events

stockpile_app = service.stockpile_app
headers = service.headers


def plan_level(supplies: dict[str, int]) -> dict[str, Any]:
    return {
        "isolation_radius_m": 200,
        "evacuate": False,
        "evacuation_radius_m": 0,
        "isolation_units": {},
        "handling_units": {},
        "supplies": [{"item": k, "quantity": v} for k, v in supplies.items()],
        "notification_templates": {},
        "approval_required": [],
    }


CROWD_CRUSH = {
    "category": "crowd_crush",
    "version": 3,
    "levels": {
        "I": plan_level({"stretcher": 100, "first_aid_kit": 200}),
        "II": plan_level({"stretcher": 40, "first_aid_kit": 80}),
        "III": plan_level({"stretcher": 10}),
        "IV": plan_level({}),
    },
    "actor": "commander-1",
    "published_at": datetime.now(UTC).isoformat(),
}


async def serve_plans(bus: Bus) -> list[str]:
    """Plays dispatch's plan responder; returns the categories asked for."""
    asked: list[str] = []

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        asked.append(request["category"])
        return CROWD_CRUSH if request["category"] == "crowd_crush" else {"error": "no plan"}

    await bus.serve("rpc.dispatch.plan.get", answer)
    return asked


async def holding(s: Stockpile, incident: str) -> dict[str, tuple[int, int]]:
    """What the incident holds: {item: (held, out)}."""
    view = (await s.get(f"/v1/incidents/{incident}/reservations")).json()
    found: dict[str, tuple[int, int]] = {}
    for r in view["reservations"]:
        h, o = found.get(r["item"], (0, 0))
        found[r["item"]] = (h + sum(a["held"] for a in r["allocations"]), o + sum(a["out"] for a in r["allocations"]))
    return found


async def test_the_plan_supplies_follow_stage_and_level_and_settle_after_returns(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        intake = Intake(bus)
        await s.setup([depot("near", 1.0), depot("far", 6.0)])
        await s.receive(
            "near",
            {"item": "stretcher", "lot": "n", "quantity": 30},
            {"item": "first_aid_kit", "lot": "n", "quantity": 50},
        )
        await s.receive(
            "far",
            {"item": "stretcher", "lot": "f", "quantity": 200},
            {"item": "first_aid_kit", "lot": "f", "quantity": 100},
        )
        incident = await s.incident(category="crowd_crush", level=2)

        await intake.stage_to(incident, "isolation", level=2, category="crowd_crush")
        await intake.stage_to(incident, "handling", level=2, category="crowd_crush")

        async def reserved_for_level_two():
            h = await holding(s, incident)
            return h if h == {"stretcher": (40, 0), "first_aid_kit": (80, 0)} else None

        await eventually(reserved_for_level_two, what="level II supplies reserved")
        view = (await s.get(f"/v1/incidents/{incident}/reservations")).json()
        stretchers = next(r for r in view["reservations"] if r["item"] == "stretcher")
        assert [(a["depot_id"], a["held"]) for a in stretchers["allocations"]] == [("near", 30), ("far", 10)]
        assert stretchers["source"] == "automatic"

        await intake.level_to(incident, 2, 1)  # up to I: top up

        async def topped_up():
            h = await holding(s, incident)
            return h == {"stretcher": (100, 0), "first_aid_kit": (150, 0)}  # 150 of 200 kits exist

        await eventually(topped_up, what="level I top-up")

        await intake.level_to(incident, 1, 3)  # down to III: release what the plan no longer wants

        async def released():
            return await holding(s, incident) == {"stretcher": (10, 0), "first_aid_kit": (0, 0)}

        await eventually(released, what="level III release")

        stretcher_ids = [r["id"] for r in view["reservations"] if r["item"] == "stretcher"]
        issued = await s.post(f"/v1/reservations/{stretcher_ids[0]}/issue", {"quantity": 10})
        assert issued.status_code == 200, issued.text

        await intake.stage_to(incident, "opinion_control", level=3, category="crowd_crush")
        await intake.stage_to(incident, "aftermath", level=3, category="crowd_crush")

        async def returns_asked():
            asked = await events(bus, "stockpile.returns.requested")
            return [e["data"] for e in asked if e["incident_id"] == incident]

        assert await eventually(returns_asked) == [{"incident_id": incident, "items": {"stretcher": 10}}]
        back = await s.post(f"/v1/reservations/{stretcher_ids[0]}/return", {})
        assert back.status_code == 200, back.text

        async def settled_facts():
            facts = [e for e in await events(bus, "stockpile.incident.settled") if e["incident_id"] == incident]
            return [e["data"]["settled"] for e in facts] if facts and facts[-1]["data"]["settled"] else None

        assert await eventually(settled_facts) == [True, False, True]
        assert sum(line["on_hand"] for line in await s.stock(item="stretcher")) == 230
        assert sum(line["reserved"] for line in await s.stock()) == 0


async def test_what_was_consumed_or_returned_counts_towards_the_plan_when_the_level_rises(
    stockpile_app, db_url, headers
):
    """Level III wants 10 stretchers: all 10 are issued, 6 consumed and 4 returned. Up to level II
    (40): 30 more, not 40 again; the 10 the incident already had were the plan's."""
    async with stockpile_app(db_url) as (_, client, bus):
        await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        intake = Intake(bus)
        await s.setup([depot("near", 1.0)])
        await s.receive("near", {"item": "stretcher", "lot": "n", "quantity": 200})
        incident = await s.incident(category="crowd_crush", level=3)
        await intake.stage_to(incident, "isolation", level=3, category="crowd_crush")
        await intake.stage_to(incident, "handling", level=3, category="crowd_crush")

        async def ten_held() -> bool:
            return await holding(s, incident) == {"stretcher": (10, 0)}

        await eventually(ten_held, what="level III stretchers reserved")
        view = (await s.get(f"/v1/incidents/{incident}/reservations")).json()
        (first,) = [r["id"] for r in view["reservations"]]
        for action, body in (("issue", {}), ("consume", {"quantity": 6}), ("return", {"quantity": 4})):
            r = await s.post(f"/v1/reservations/{first}/{action}", body)
            assert r.status_code == 200, r.text

        await intake.level_to(incident, 3, 2)

        async def topped_up() -> dict[str, tuple[int, int]] | None:
            h = await holding(s, incident)
            return h if h.get("stretcher", (0, 0))[0] > 0 else None

        got = await eventually(topped_up, what="level II top-up")
        assert got["stretcher"] == (30, 0)  # (no first-aid kits are stocked: none reserved)
        stock = await s.stock(item="stretcher")
        assert sum(line["reserved"] for line in stock) == 30
        assert sum(line["on_hand"] for line in stock) == 200 - 6  # the 4 returned are back


async def test_an_exercise_incident_never_consumes_live_stock(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        await s.setup([depot("live", 0.5), depot("drill", 3.0, exercise=True)])
        await s.receive("live", {"item": "stretcher", "lot": "L", "quantity": 100})
        await s.receive("drill", {"item": "stretcher", "lot": "D", "quantity": 15})
        drill = await s.incident(exercise=True, category="crowd_crush", level=3)
        await Intake(bus).stage_to(drill, "handling", level=3, category="crowd_crush", exercise=True)

        async def reserved():
            return await holding(s, drill) == {"stretcher": (10, 0)}

        await eventually(reserved)
        lines = {line["depot_id"]: line["reserved"] for line in await s.stock(item="stretcher")}
        assert lines == {"live": 0, "drill": 10}


async def test_malformed_incident_events_go_to_the_dead_letter_subject_with_the_reason(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        dead: list[tuple[str, str]] = []

        async def on_dead(msg):
            dead.append((msg.subject, msg.headers.get("Ecs-Reason", "")))

        await bus.nc.subscribe("deadletter.incident.>", cb=on_dead)
        bad = make_event(
            "incident.stage.changed", {"incident_id": "x", "to_stage": "handling"}, source="incident-intake"
        )
        await bus.publish_event(bad)
        await bus.publish("incident.level.changed", b"not an envelope", {"Nats-Msg-Id": "garbage-" + uuid.uuid4().hex})
        s = Stockpile(client, bus, headers)
        good = await s.incident()  # the consumer keeps going

        async def two_dead():
            return len(dead) >= 2

        await eventually(two_dead)
        reasons = dict(dead)
        assert "data.from_stage: Field required" in reasons["deadletter.incident.stage.changed"]
        assert "not a valid envelope" in reasons["deadletter.incident.level.changed"]
        assert (await s.get(f"/v1/incidents/{good}/reservations")).status_code == 200


async def test_a_level_change_follows_the_plan_of_the_category_the_incident_became(stockpile_app, db_url, headers):
    """A medical call that became a crowd crush (the stage change carries the new category): a later
    level change tops up by the crowd-crush plan, not the medical one it was first heard of as."""
    async with stockpile_app(db_url) as (_, client, bus):
        asked = await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        intake = Intake(bus)
        await s.setup([depot("near", 1.0)])
        await s.receive(
            "near",
            {"item": "stretcher", "lot": "n", "quantity": 300},
            {"item": "first_aid_kit", "lot": "n", "quantity": 300},
        )
        incident = await s.incident(category="medical", level=2)
        await intake.stage_to(incident, "isolation", level=2, category="crowd_crush")
        await intake.stage_to(incident, "handling", level=2, category="crowd_crush")

        async def level_two():
            return await holding(s, incident) == {"stretcher": (40, 0), "first_aid_kit": (80, 0)}

        await eventually(level_two, what="level II crowd-crush supplies reserved")
        await intake.level_to(incident, 2, 1)

        async def level_one():
            return await holding(s, incident) == {"stretcher": (100, 0), "first_aid_kit": (200, 0)}

        await eventually(level_one, what="level I crowd-crush top-up")
        assert "medical" not in asked


async def test_a_medical_call_in_handling_that_becomes_a_crowd_crush_gets_its_supplies_at_once(
    stockpile_app, db_url, headers
):
    """incident.category.changed while the incident is in handling (no stage change with it):
    the crowd-crush plan's supplies are reserved at once."""
    async with stockpile_app(db_url) as (_, client, bus):
        asked = await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        intake = Intake(bus)
        await s.setup([depot("near", 1.0)])
        await s.receive(
            "near",
            {"item": "stretcher", "lot": "n", "quantity": 300},
            {"item": "first_aid_kit", "lot": "n", "quantity": 300},
        )
        incident = await s.incident(category="medical", level=2)
        await intake.stage_to(incident, "isolation", level=2, category="medical")
        await intake.stage_to(incident, "handling", level=2, category="medical")

        async def asked_for_medical():
            return "medical" in asked

        await eventually(asked_for_medical, what="handling as a medical call")
        assert await holding(s, incident) == {}  # no medical plan here: nothing to reserve
        changed = CategoryChanged(
            incident_id=incident,
            from_category="medical",
            to_category="crowd_crush",
            level=2,
            alarm_id="a-2",
            reason="a crowd_crush alarm arrived near this medical-only incident",
            actor="correlation",
            version=intake.versions[incident] + 1,
        )
        await bus.publish_event(
            make_event("incident.category.changed", changed, source="incident-intake", incident_id=incident)
        )

        async def crowd_crush():
            return await holding(s, incident) == {"stretcher": (40, 0), "first_aid_kit": (80, 0)}

        await eventually(crowd_crush, what="level II crowd-crush supplies reserved")
        view = (await s.get(f"/v1/incidents/{incident}/reservations")).json()
        assert {r["item"] for r in view["reservations"]} == {"stretcher", "first_aid_kit"}


async def test_a_shortfall_is_asked_for_once_whatever_repeats(stockpile_app, db_url, headers):
    """Too few first-aid kits for the plan: the reservation records what is missing; another event
    that changes nothing (a second stage change into handling) reserves nothing more, and a raise
    asks only for what the new level adds."""
    async with stockpile_app(db_url) as (_, client, bus):
        await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        intake = Intake(bus)
        await s.setup([depot("near", 1.0)])
        await s.receive(
            "near",
            {"item": "stretcher", "lot": "n", "quantity": 300},
            {"item": "first_aid_kit", "lot": "n", "quantity": 15},
        )
        incident = await s.incident(category="crowd_crush", level=2)
        await intake.stage_to(incident, "isolation", level=2, category="crowd_crush")
        await intake.stage_to(incident, "handling", level=2, category="crowd_crush")

        async def reservations() -> list[dict[str, Any]]:
            return (await s.get(f"/v1/incidents/{incident}/reservations")).json()["reservations"]

        async def level_two():
            return await holding(s, incident) == {"stretcher": (40, 0), "first_aid_kit": (15, 0)}

        await eventually(level_two, what="level II supplies reserved, first-aid kits short")
        await intake.stage_to(incident, "handling", level=2, category="crowd_crush")  # changes nothing
        await intake.level_to(incident, 2, 1)  # I wants 100 stretchers and 200 kits

        async def level_one():
            return await holding(s, incident) == {"stretcher": (100, 0), "first_aid_kit": (15, 0)}

        await eventually(level_one, what="level I top-up")
        kits = [r for r in await reservations() if r["item"] == "first_aid_kit"]
        # 80 asked at level II (15 got, 65 missing), 120 more at level I (all missing): never again.
        assert sorted((r["requested"], r["missing"]) for r in kits) == [(80, 65), (120, 120)]


async def test_a_merged_incidents_supplies_go_with_it_and_the_surplus_is_released(stockpile_app, db_url, headers):
    """X and Y, both crowd crushes at level II in handling, each hold the plan's supplies, and 10 of
    X's stretchers are out. X merged into Y: Y answers for X's reservations (what is out too),
    releases what it now holds beyond its plan, X holds nothing and is settled, and what came from
    X counts toward Y's plan afterwards."""
    async with stockpile_app(db_url) as (_, client, bus):
        await serve_plans(bus)
        s = Stockpile(client, bus, headers)
        intake = Intake(bus)
        await s.setup([depot("near", 1.0)])
        await s.receive(
            "near",
            {"item": "stretcher", "lot": "n", "quantity": 300},
            {"item": "first_aid_kit", "lot": "n", "quantity": 300},
        )
        x, y = await s.incident(level=2), await s.incident(level=2)
        for incident in (x, y):
            await intake.stage_to(incident, "isolation", level=2, category="crowd_crush")
            await intake.stage_to(incident, "handling", level=2, category="crowd_crush")

        async def both_served():
            held = [await holding(s, i) for i in (x, y)]
            return all(h == {"stretcher": (40, 0), "first_aid_kit": (80, 0)} for h in held)

        await eventually(both_served, what="each incident's level II supplies reserved")
        x_view = (await s.get(f"/v1/incidents/{x}/reservations")).json()["reservations"]
        x_stretchers = next(r for r in x_view if r["item"] == "stretcher")
        issued = await s.post(f"/v1/reservations/{x_stretchers['id']}/issue", {"quantity": 10})
        assert issued.status_code == 200, issued.text

        merged = make_event(
            "incident.merged",
            IncidentMerged(incident_id=y, merged_incident_id=x, alarms_moved=3, actor="dispatcher-2"),
            source="incident-intake",
            incident_id=y,
        )
        await bus.publish_event(merged)

        async def taken_over():
            h = await holding(s, y)
            return h if h == {"stretcher": (30, 10), "first_aid_kit": (80, 0)} else None

        await eventually(taken_over, what="y holding x's supplies, its surplus released")
        y_view = (await s.get(f"/v1/incidents/{y}/reservations")).json()["reservations"]
        assert x_stretchers["id"] in {r["id"] for r in y_view}
        assert (await s.get(f"/v1/incidents/{x}/reservations")).json()["reservations"] == []

        async def x_settled():
            facts = [e for e in await events(bus, "stockpile.incident.settled") if e["incident_id"] == x]
            return facts and facts[-1]["data"]["settled"]

        await eventually(x_settled, what="x told settled")
        await intake.level_to(y, 2, 1)  # what came from x counts toward y's plan: I tops up the rest

        async def topped_up():
            return await holding(s, y) == {"stretcher": (90, 10), "first_aid_kit": (200, 0)}

        await eventually(topped_up, what="y topped up to level I, x's stretchers counted")
