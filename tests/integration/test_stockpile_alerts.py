"""resource-stockpile's low-stock alerts and expiry warnings in-process against a real nats-server
and a real database (both stores): a minimum per depot and item, one alert while below and one
event on entering and on clearing however the stock moves, expiry warnings once per lot, the lists
in the API — as a supply officer would see them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from resource_stockpile.handlers import alerts
from tests.integration import test_stockpile_service as service
from tests.integration.test_stockpile_service import Stockpile, depot, events

stockpile_app, headers = service.stockpile_app, service.headers


def days(n: int) -> str:
    return (datetime.now(UTC) + timedelta(days=n)).date().isoformat()


async def set_minimum(s: Stockpile, depot_id: str, item: str, minimum: float, **extra) -> dict:
    r = await s.client.put(
        f"/v1/depots/{depot_id}/minimums/{item}", json={"minimum": minimum, **extra}, headers=s.officer
    )
    assert r.status_code == 200, r.text
    return r.json()


async def low(s: Stockpile, **params) -> list[dict]:
    r = await s.get("/v1/alerts/low-stock", **params)
    assert r.status_code == 200, r.text
    return r.json()["alerts"]


async def alert_events(bus) -> list[tuple[str, str, str, int]]:
    found = await events(bus, "stockpile.stock.>")
    return [
        (e["subject"].rsplit(".", 1)[1], e["data"]["depot_id"], e["data"]["item"], e["data"]["available"])
        for e in found
    ]


async def test_one_alert_while_below_and_one_event_entering_and_clearing(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 3.0)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 12})
        m = await set_minimum(s, "A", "stretcher", 10)
        assert (m["minimum"], m["available"], m["below"], m["version"]) == (10, 12, False, 1)
        incident = await s.incident()

        # Three reservations take A below 10 and further down: one alert, one event.
        for _ in range(3):
            await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "stretcher", "quantity": 2})
        [alert] = await low(s)
        assert (alert["depot_id"], alert["item"], alert["minimum"]) == ("A", "stretcher", 10)
        assert (alert["available_when_raised"], alert["available_now"], alert["cleared_at"]) == (8, 6, None)

        # A receipt still below changes nothing; one that recovers clears it, once.
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 1})
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 5})
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 5})
        assert await low(s) == []
        [cleared] = await low(s, state="cleared")
        assert cleared["id"] == alert["id"] and cleared["cleared_at"] is not None

        # Below again (an adjustment), then the minimum lowered: a new alert, cleared by the minimum.
        await s.ok(
            "/v1/documents/adjustments",
            {"depot_id": "A", "item": "stretcher", "lot": "S", "delta": -10, "reason": "lost"},
        )
        [again] = await low(s)
        assert again["id"] != alert["id"] and again["available_when_raised"] == 7
        await set_minimum(s, "A", "stretcher", 5)
        assert await low(s) == []
        assert await alert_events(bus) == [
            ("low", "A", "stretcher", 8),
            ("recovered", "A", "stretcher", 12),
            ("low", "A", "stretcher", 7),
            ("recovered", "A", "stretcher", 7),
        ]
        assert len(await low(s, state="all")) == 2
        assert (await low(s, state="all", depot_id="B")) == []


async def test_releases_transfers_and_the_sweep_move_alerts_too(stockpile_app, db_url, headers):
    async with stockpile_app(db_url, min_shelf_life_days=30) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 3.0)])
        await s.receive("A", {"item": "first_aid_kit", "lot": "K", "quantity": 10, "expiry": days(400)})
        await set_minimum(s, "A", "first_aid_kit", 1, unit="carton")  # 10 kits
        await set_minimum(s, "B", "first_aid_kit", 5)
        assert [(a["depot_id"], a["available_now"]) for a in await low(s)] == [("B", 0)]  # B has none

        incident = await s.incident()
        r = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "first_aid_kit", "quantity": 4})
        assert {a["depot_id"] for a in await low(s)} == {"A", "B"}
        await s.ok(f"/v1/reservations/{r['id']}/release", {}, 200)
        assert {a["depot_id"] for a in await low(s)} == {"B"}
        await s.ok(
            "/v1/documents/transfers",
            {"from_depot": "A", "to_depot": "B", "item": "first_aid_kit", "lot": "K", "quantity": 5},
        )
        assert {a["depot_id"] for a in await low(s)} == {"A"}  # B recovered, A fell

        # A lot turning short-dated moves no document: the sweep finds it.
        await s.receive("B", {"item": "first_aid_kit", "lot": "short", "quantity": 20, "expiry": days(400)})
        ctx = app.state.stockpile
        async with ctx.db.engine.begin() as conn:
            from resource_stockpile import store

            await conn.execute(
                store.stock_lines.update()
                .where(store.stock_lines.c.depot_id == "B")
                .values(expiry=datetime.now(UTC).date() + timedelta(days=5))
            )
        await alerts.sweep(ctx)
        await alerts.sweep(ctx)  # a second sweep (or replica) adds nothing
        assert {a["depot_id"] for a in await low(s)} == {"A", "B"}
        subjects = [e for e in await alert_events(bus) if e[0] == "low"]
        assert sorted(d for _, d, _, _ in subjects) == ["A", "A", "B", "B"]


async def test_racing_documents_raise_one_alert_and_one_event(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])
        await s.receive(
            "A", *[{"item": "stretcher", "lot": f"L{i}", "quantity": 3} for i in range(10)]
        )  # 30 in ten lots: racers update different rows
        await set_minimum(s, "A", "stretcher", 25)
        incident = await s.incident()

        async def take() -> None:
            await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "stretcher", "quantity": 3})

        await asyncio.gather(*(take() for _ in range(8)))
        assert len(await low(s)) == 1
        assert [e[0] for e in await alert_events(bus)] == ["low"]


async def test_exercise_depots_alerts_are_marked_and_purged_with_them(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("X", 2.0, exercise=True)])
        await set_minimum(s, "A", "stretcher", 1)
        await set_minimum(s, "X", "stretcher", 1)
        await s.receive("X", {"item": "stretcher", "lot": "D", "quantity": 5, "expiry": days(3)})
        await alerts.sweep(app.state.stockpile)
        marked = {a["depot_id"]: a["exercise"] for a in await low(s)}
        assert marked == {"A": False, "X": True}
        assert [a["depot_id"] for a in await low(s, exercise=True)] == ["X"]
        low_events = {e["data"]["depot_id"]: e["exercise"] for e in await events(bus, "stockpile.stock.low")}
        assert low_events == {"A": False, "X": True}
        [warning] = (await s.get("/v1/alerts/expiry")).json()["warnings"]
        assert (warning["depot_id"], warning["exercise"], warning["days_left"]) == ("X", True, 3)
        r = await client.delete("/v1/exercise", params={"depots": "true"}, headers=headers("drill_runner"))
        assert r.status_code == 200, r.text
        assert [a["depot_id"] for a in await low(s, state="all")] == ["A"]
        assert (await s.get("/v1/alerts/expiry")).json()["warnings"] == []


async def test_expiry_warnings_once_per_lot_within_the_horizon_newest_first(stockpile_app, db_url, headers):
    async with stockpile_app(db_url, expiry_warning_days=60) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])
        await s.receive(
            "A",
            {"item": "drinking_water_bottle", "lot": "old", "quantity": 5, "expiry": days(-2)},
            {"item": "drinking_water_bottle", "lot": "soon", "quantity": 2, "unit": "case", "expiry": days(20)},
            {"item": "drinking_water_bottle", "lot": "soon", "quantity": 4, "expiry": days(20), "condition": "damaged"},
            {"item": "drinking_water_bottle", "lot": "later", "quantity": 9, "expiry": days(90)},
            {"item": "stretcher", "lot": "none", "quantity": 9},
        )
        ctx = app.state.stockpile
        assert (await alerts.sweep(ctx))[0] == 2
        assert (await alerts.sweep(ctx))[0] == 0  # once per lot
        page = (await s.get("/v1/alerts/expiry", limit=1)).json()
        assert page["next_cursor"] is not None
        rest = (await s.get("/v1/alerts/expiry", cursor=page["next_cursor"])).json()
        warnings = page["warnings"] + rest["warnings"]
        assert [(w["lot"], w["days_left"], w["on_hand_when_warned"]) for w in warnings] == [
            ("soon", 20, 52),
            ("old", -2, 5),
        ]  # newest first: the expired lot was warned of first
        made = [(e["data"]["lot"], e["data"]["days_left"]) for e in await events(bus, "stockpile.lot.expiring")]
        assert made == [("old", -2), ("soon", 20)]


async def test_bad_minimums_are_refused_naming_the_field(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])

        async def put(depot_id: str, item: str, body: dict, roles=("supply_officer",)):
            return await client.put(f"/v1/depots/{depot_id}/minimums/{item}", json=body, headers=headers(*roles))

        assert (await put("nowhere", "stretcher", {"minimum": 1})).status_code == 404
        assert (await put("A", "no_such_item", {"minimum": 1})).status_code == 404
        r = await put("A", "stretcher", {"minimum": 1.5})
        assert r.status_code == 422 and "minimum" in r.text
        r = await put("A", "stretcher", {"minimum": 1, "unit": "case"})
        assert r.status_code == 422 and "unit" in r.text
        assert (await put("A", "stretcher", {"minimum": -1})).status_code == 422
        assert (await put("A", "stretcher", {"minimum": 1}, ("dispatcher",))).status_code == 403
        assert (await put("A", "stretcher", {"minimum": 1}, ("commander",))).status_code == 200
        stale = await put("A", "stretcher", {"minimum": 2, "version": 7})
        assert stale.status_code == 409
        assert (await put("A", "stretcher", {"minimum": 2, "version": 1})).json()["version"] == 2
        [m] = (await s.get("/v1/minimums")).json()["minimums"]
        assert (m["minimum"], m["version"]) == (2, 2)
