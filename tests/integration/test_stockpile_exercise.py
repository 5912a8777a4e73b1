"""resource-stockpile's exercise data (DESIGN §8) in-process against a real nats-server and a real
database (both stores): a drill runner stocks exercise depots (never a live one), lists what the
drills left and purges exactly that — live stock, reservations and ledger stay byte for byte."""

from __future__ import annotations

from typing import Any

from tests.integration import test_stockpile_service as service
from tests.integration.test_stockpile_service import Stockpile, depot

stockpile_app, headers = service.stockpile_app, service.headers

DRILL = ("drill_runner",)
NOTHING = {
    "incidents": 0,
    "reservations": 0,
    "held": 0,
    "depots": 0,
    "stock_lines": 0,
    "documents": 0,
}


async def live_view(s: Stockpile, live_incident: str) -> list[bytes]:
    """What the supply officer sees of live data, as the bytes the API answers."""
    depots = (await s.get("/v1/depots")).json()["depots"]
    answers = [
        (await s.get("/v1/items")).content,
        repr([d for d in depots if not d["exercise"]]).encode(),
        (await s.get("/v1/stock", depot_id="A")).content,
        (await s.get("/v1/stock", depot_id="B")).content,
        (await s.get(f"/v1/incidents/{live_incident}/reservations")).content,
    ]
    return answers


async def exercise(s: Stockpile) -> dict[str, Any]:
    r = await s.get("/v1/exercise")
    assert r.status_code == 200, r.text
    return r.json()


async def purge(s: Stockpile, **params: Any) -> dict[str, Any]:
    r = await s.client.delete("/v1/exercise", params=params, headers=s.headers(*DRILL))
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_drill_runner_stocks_exercise_depots_only(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])
        await s.receive("A", {"item": "stretcher", "lot": "L", "quantity": 5})

        refused = await s.post("/v1/depots", {"depots": [depot("L2", 2.0)]}, DRILL)
        assert refused.status_code == 403, refused.text
        mixed = await s.post("/v1/depots", {"depots": [depot("X2", 2.0, exercise=True), depot("L3", 3.0)]}, DRILL)
        assert mixed.status_code == 403, mixed.text
        item = {"code": "blanket", "name_en": "blanket", "name_zh": "毛毯", "base_unit": "piece"}
        assert (await s.post("/v1/items", {"items": [item]}, DRILL)).status_code == 403
        made = await s.post("/v1/depots", {"depots": [depot("X", 1.0, exercise=True)]}, DRILL)
        assert made.status_code == 201, made.text

        line = {"item": "stretcher", "lot": "L", "quantity": 1}
        for path, body in [
            ("/v1/documents/receipts", {"depot_id": "A", "lines": [line]}),
            (
                "/v1/documents/adjustments",
                {"depot_id": "A", "item": "stretcher", "lot": "L", "delta": -1, "reason": "lost"},
            ),
            (
                "/v1/documents/transfers",
                {"from_depot": "A", "to_depot": "X", "item": "stretcher", "lot": "L", "quantity": 1},
            ),
            (
                "/v1/documents/transfers",
                {"from_depot": "X", "to_depot": "A", "item": "stretcher", "lot": "L", "quantity": 1},
            ),
        ]:
            r = await s.post(path, body, DRILL)
            assert r.status_code == 403 and "exercise depots only" in r.json()["detail"], (path, r.text)
        assert await s.available("A", "stretcher") == 5
        assert (
            await s.post("/v1/documents/receipts", {"depot_id": "nowhere", "lines": [line]}, DRILL)
        ).status_code == 404

        ok = await s.post("/v1/documents/receipts", {"depot_id": "X", "lines": [{**line, "quantity": 10}]}, DRILL)
        assert ok.status_code == 201, ok.text
        adj = {"depot_id": "X", "item": "stretcher", "lot": "L", "delta": -2, "reason": "damaged"}
        assert (await s.post("/v1/documents/adjustments", adj, DRILL)).status_code == 201
        assert await s.available("X", "stretcher") == 8


async def test_exercise_data_is_listed_and_purged_and_live_data_stays_byte_for_byte(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 3.0)])
        await s.receive("A", {"item": "stretcher", "lot": "SA", "quantity": 6})
        await s.receive("B", {"item": "first_aid_kit", "lot": "KB", "quantity": 40})
        made = await s.post(
            "/v1/depots", {"depots": [depot("X", 1.0, exercise=True), depot("Y", 2.0, exercise=True)]}, DRILL
        )
        assert made.status_code == 201, made.text
        for depot_id in ("X", "Y"):
            r = await s.post(
                "/v1/documents/receipts",
                {"depot_id": depot_id, "lines": [{"item": "stretcher", "lot": f"S{depot_id}", "quantity": 10}]},
                DRILL,
            )
            assert r.status_code == 201, r.text

        # Live: one reservation partly issued, one still held.
        live = await s.incident()
        held_live = await s.ok(f"/v1/incidents/{live}/reservations", {"item": "stretcher", "quantity": 4})
        issued_live = await s.ok(f"/v1/incidents/{live}/reservations", {"item": "first_aid_kit", "quantity": 10})
        await s.ok(f"/v1/reservations/{issued_live['id']}/issue", {"quantity": 3}, 200)
        # A drill: reservations holding exercise stock, one partly issued and partly returned.
        drills = [await s.incident(exercise=True), await s.incident(exercise=True)]
        r = await s.post(f"/v1/incidents/{drills[0]}/reservations", {"item": "stretcher", "quantity": 12}, DRILL)
        assert r.status_code == 201 and r.json()["reserved"] == 12, r.text
        rid = r.json()["id"]
        for action, body in (("issue", {"quantity": 5}), ("return", {"quantity": 2, "condition": "damaged"})):
            r = await s.post(f"/v1/reservations/{rid}/{action}", body, DRILL)
            assert r.status_code == 200, r.text
        r = await s.post(f"/v1/incidents/{drills[1]}/reservations", {"item": "stretcher", "quantity": 3}, DRILL)
        assert r.status_code == 201, r.text
        assert await s.available("A", "stretcher") == 2  # the live hold stays put throughout

        before = await live_view(s, live)
        listed = await exercise(s)
        assert listed == {
            "incidents": 2,
            "reservations": 2,
            "held": 10,  # 12 - 5 issued, and 3
            "depots": 2,
            "stock_lines": 3,  # X and Y good, X damaged
            "documents": 4,  # two receipts, the issue and the return
        }, listed

        for role in ("supply_officer", "commander", "auditor"):
            refused = await client.delete("/v1/exercise", headers=s.headers(role))
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
        assert await exercise(s) == listed

        purged = await purge(s)
        assert purged == {
            "incidents_purged": 2,
            "reservations_purged": 2,
            "released": 10,
            "depots_purged": 0,
            "stock_lines_purged": 0,
            "documents_purged": 0,
        }
        assert await live_view(s, live) == before
        left = await exercise(s)
        assert (left["incidents"], left["reservations"], left["held"]) == (0, 0, 0)
        assert (left["depots"], left["stock_lines"]) == (2, 3)  # exercise depots stay by default, whole again
        stock = {
            (x["depot_id"], x["condition"]): (x["on_hand"], x["reserved"]) for x in await s.stock(item="stretcher")
        }
        assert stock[("X", "good")] == (5, 0) and stock[("Y", "good")] == (10, 0)
        assert stock[("X", "damaged")] == (2, 0)
        for drill in drills:
            assert (await s.get(f"/v1/incidents/{drill}/reservations")).status_code == 404
        assert (await s.get(f"/v1/reservations/{rid}")).status_code == 404
        assert (await s.get(f"/v1/reservations/{held_live['id']}")).status_code == 200

        with_depots = await purge(s, depots="true")
        assert (with_depots["incidents_purged"], with_depots["reservations_purged"]) == (0, 0)
        assert (with_depots["depots_purged"], with_depots["stock_lines_purged"]) == (2, 3)
        assert with_depots["documents_purged"] == listed["documents"]
        assert await exercise(s) == NOTHING
        assert await live_view(s, live) == before
        again = await purge(s, depots="true")
        assert set(again.values()) == {0}

        from resource_stockpile import views

        assert await views.replay_mismatches(app.state.stockpile.db) == []
        assert [d["id"] for d in (await s.get("/v1/depots")).json()["depots"]] == ["A", "B"]
