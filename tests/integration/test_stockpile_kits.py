"""resource-stockpile's kits on both stores: a catalogue item declaring its parts (``kit_of``),
kits made and broken only by assembly and disassembly documents (parts taken earliest expiry
first from good, unexpired stock; the kit's expiry its earliest part's; the ledger still replays
to every balance), reservations taking assembled kits only, and the bad input of each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from resource_stockpile import views
from tests.integration import test_stockpile_service as service
from tests.integration.test_stockpile_service import Stockpile, depot, events

stockpile_app, headers = service.stockpile_app, service.headers

PARTS = [
    {"code": "bandage", "name_en": "bandage", "name_zh": "绷带", "base_unit": "roll"},
    {"code": "gauze", "name_en": "gauze pad", "name_zh": "纱布", "base_unit": "pad", "packs": {"box": 50}},
    {"code": "tourniquet", "name_en": "tourniquet", "name_zh": "止血带", "base_unit": "piece"},
]
KIT = {
    "code": "trauma_kit",
    "name_en": "trauma kit",
    "name_zh": "创伤急救包",
    "base_unit": "kit",
    "packs": {"carton": 4},
    "kit_of": {"bandage": 2, "gauze": 5, "tourniquet": 1},
}


def days(n: int) -> str:
    return (datetime.now(UTC) + timedelta(days=n)).date().isoformat()


async def lines(s: Stockpile, depot_id: str, item: str) -> list[tuple[str, str | None, int, int]]:
    """(lot, expiry, on hand, available) of the depot's lines of the item, by lot."""
    found = await s.stock(depot_id=depot_id, item=item)
    return sorted((x["lot"], x["expiry"], x["on_hand"], x["available"]) for x in found)


async def kits_ready(s: Stockpile, stocked: bool = True) -> None:
    """The catalogue with the parts and the kit, two depots; parts at A (two lots of bandages)."""
    await s.setup([depot("A", 1.0), depot("B", 3.0)])
    assert (await s.post("/v1/items", {"items": [*PARTS, KIT]})).status_code == 201
    if stocked:
        await s.receive(
            "A",
            {"item": "bandage", "lot": "late", "quantity": 20, "expiry": days(400)},
            {"item": "bandage", "lot": "soon", "quantity": 6, "expiry": days(90)},
            {"item": "bandage", "lot": "gone", "quantity": 50, "expiry": days(-1)},
            {"item": "bandage", "lot": "wet", "quantity": 50, "condition": "damaged"},
            {"item": "gauze", "lot": "G", "quantity": 1, "unit": "box", "expiry": days(200)},
            {"item": "tourniquet", "lot": "T", "quantity": 10},
        )


async def test_an_assembly_takes_parts_earliest_expiry_first_and_the_kit_gets_the_earliest_expiry(
    stockpile_app, db_url, headers
):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await kits_ready(s)
        item = next(i for i in (await s.get("/v1/items")).json()["items"] if i["code"] == "trauma_kit")
        assert item["kit_of"] == {"bandage": 2, "gauze": 5, "tourniquet": 1}

        doc = (await s.ok("/v1/documents/assemblies", {"depot_id": "A", "item": "trauma_kit", "quantity": 4}))[
            "document_id"
        ]

        # 8 bandages: the 6 expiring soonest, then 2 of the later lot; never expired or damaged ones.
        assert await lines(s, "A", "bandage") == [
            ("gone", days(-1), 50, 50),
            ("late", days(400), 18, 18),
            ("wet", None, 50, 50),  # on hand, damaged: never taken
        ]
        assert await lines(s, "A", "gauze") == [("G", days(200), 30, 30)]
        assert await lines(s, "A", "tourniquet") == [("T", None, 6, 6)]
        assert await lines(s, "A", "trauma_kit") == [(f"A{doc}", days(90), 4, 4)]  # the earliest part's expiry
        assert await views.replay_mismatches(app.state.stockpile.db) == []
        [posted] = [e for e in await events(bus, "stockpile.document.posted") if e["data"]["kind"] == "assembly"]
        changes = sorted((c["item"], c["lot"], c["delta"]) for c in posted["data"]["lines"])
        assert changes == [
            ("bandage", "late", -2),
            ("bandage", "soon", -6),
            ("gauze", "G", -20),
            ("tourniquet", "T", -4),
            ("trauma_kit", f"A{doc}", 4),
        ]


async def test_a_disassembly_gives_the_parts_back_and_the_ledger_still_replays(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await kits_ready(s)
        made = (await s.ok("/v1/documents/assemblies", {"depot_id": "A", "item": "trauma_kit", "quantity": 4}))[
            "document_id"
        ]
        doc = (await s.ok("/v1/documents/disassemblies", {"depot_id": "A", "item": "trauma_kit", "quantity": 3}))[
            "document_id"
        ]

        assert await lines(s, "A", "trauma_kit") == [(f"A{made}", days(90), 1, 1)]
        assert (f"D{doc}", days(90), 6, 6) in await lines(s, "A", "bandage")
        assert (f"D{doc}", days(90), 15, 15) in await lines(s, "A", "gauze")
        assert (f"D{doc}", days(90), 3, 3) in await lines(s, "A", "tourniquet")
        assert await s.available("A", "tourniquet") == 9
        assert await views.replay_mismatches(app.state.stockpile.db) == []
        kinds = [e["data"]["kind"] for e in await events(bus, "stockpile.document.posted")]
        assert kinds[-2:] == ["assembly", "disassembly"]

        # A reserved kit is not broken down.
        incident = await s.incident()
        got = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "trauma_kit", "quantity": 1})
        assert got["reserved"] == 1
        r = await s.post("/v1/documents/disassemblies", {"depot_id": "A", "item": "trauma_kit", "quantity": 1})
        assert r.status_code == 409 and "trauma_kit short by 1" in r.json()["detail"], r.text


async def test_a_reservation_takes_assembled_kits_only_and_names_what_is_missing(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await kits_ready(s)
        await s.receive("B", {"item": "tourniquet", "lot": "T", "quantity": 5})
        await s.ok("/v1/documents/assemblies", {"depot_id": "A", "item": "trauma_kit", "quantity": 2})
        incident = await s.incident()

        got = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "trauma_kit", "quantity": 5})

        # Parts for more kits sit at A: they are not assembled, and no kit is made silently.
        assert (got["reserved"], got["missing"]) == (2, 3)
        assert [(a["depot_id"], a["held"]) for a in got["allocations"]] == [("A", 2)]
        [made] = await events(bus, "stockpile.reservation.made")
        assert (made["data"]["item"], made["data"]["missing"]) == ("trauma_kit", 3)
        assert [x for x in await lines(s, "A", "bandage") if x[0] in ("soon", "late")] == [
            ("late", days(400), 20, 20),
            ("soon", days(90), 2, 2),
        ]
        # Nor is a kit broken down for its parts: 8 tourniquets are loose at A, 5 at B.
        got = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "tourniquet", "quantity": 20})
        assert (got["reserved"], got["missing"]) == (13, 7)
        [(lot, expiry, on_hand, available)] = await lines(s, "A", "trauma_kit")
        assert (lot[0], expiry, on_hand, available) == ("A", days(90), 2, 0)


async def test_not_enough_parts_is_refused_naming_each_part_the_depot_and_what_is_short(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await kits_ready(s)
        before = await s.stock()

        r = await s.post("/v1/documents/assemblies", {"depot_id": "A", "item": "trauma_kit", "quantity": 12})

        assert r.status_code == 409, r.text
        problem = r.json()
        # 24 bandages wanted, 26 good but 6 + 20 unexpired = 26: enough; gauze 60 of 50; tourniquets 12 of 10.
        assert problem["depot_id"] == "A"
        assert problem["short"] == {"gauze": 10, "tourniquet": 2}
        assert "gauze short by 10" in problem["detail"] and "tourniquet short by 2" in problem["detail"]
        r = await s.post("/v1/documents/assemblies", {"depot_id": "B", "item": "trauma_kit", "quantity": 1})
        assert r.status_code == 409 and r.json()["short"] == {"bandage": 2, "gauze": 5, "tourniquet": 1}, r.text
        assert await s.stock() == before  # nothing partial
        assert await views.replay_mismatches(app.state.stockpile.db) == []


async def test_bad_kit_documents_answer_a_problem_naming_the_field_and_change_nothing(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await kits_ready(s)
        before = await s.stock()
        path = "/v1/documents/assemblies"
        for body, status, field in [
            ({"depot_id": "A", "item": "trauma_kit", "quantity": 0}, 422, "quantity"),
            ({"depot_id": "A", "item": "trauma_kit", "quantity": -2}, 422, "quantity"),
            ({"depot_id": "A", "item": "trauma_kit", "quantity": 1.5}, 422, "quantity"),
            ({"depot_id": "A", "item": "trauma_kit", "quantity": 1, "unit": "box"}, 422, "unit"),
            ({"depot_id": "A", "item": "bandage", "quantity": 1}, 422, "item"),
            ({"depot_id": "A", "item": "no_such_kit", "quantity": 1}, 404, "no_such_kit"),
            ({"depot_id": "Z", "item": "trauma_kit", "quantity": 1}, 404, "Z"),
        ]:
            for p in (path, "/v1/documents/disassemblies"):
                r = await s.post(p, body)
                assert r.status_code == status and field in r.text, (p, body, r.text)
        assert await s.stock() == before


async def test_a_kit_containing_itself_or_unknown_parts_is_refused_naming_the_field(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await kits_ready(s, stocked=False)

        def kit(code: str, parts: dict[str, Any]) -> dict[str, Any]:
            return {"code": code, "name_en": code, "name_zh": code, "base_unit": "kit", "kit_of": parts}

        cases = [
            ([kit("loop", {"loop": 1})], "items.0.kit_of.loop", "itself"),
            ([kit("outer", {"inner": 1}), kit("inner", {"outer": 2})], "items.0.kit_of.inner", "itself"),
            ([kit("big", {"trauma_kit": 2, "unknown_part": 1})], "items.0.kit_of.unknown_part", "not in the catalogue"),
            ([kit("zero", {"bandage": 0})], "kit_of", "greater than or equal to 1"),
        ]
        for items, field, says in cases:
            r = await s.post("/v1/items", {"items": items})
            assert r.status_code == 422 and field in r.text and says in r.text, (items, r.text)
        codes = {i["code"] for i in (await s.get("/v1/items")).json()["items"]}
        assert codes.isdisjoint({"loop", "outer", "inner", "big", "zero"})  # nothing partial
        # A kit of kits is fine: an existing kit as a part.
        r = await s.post("/v1/items", {"items": [kit("team_pack", {"trauma_kit": 3, "bandage": 4})]})
        assert r.status_code == 201, r.text
