"""resource-stockpile in-process against a real nats-server and a real database (both stores): the
catalogue, depots, ledger documents, reservations nearest first across depots, issue, return,
consume and release, and the bad input of each — as a supply officer would see them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from ecs.auth import TokenVerifier
from ecs.bus import Bus
from ecs.contracts import IncidentCreated
from ecs.envelope import make_event
from ecs.testing import NatsServer, eventually
from tests.conftest import AUTH_SECRET

CENTRE = (31.2304, 121.4737)  # People's Square, Huangpu
KM = 1 / 111.2

ITEMS = [
    {
        "code": "drinking_water_bottle",
        "gb_code": "3010101",
        "name_en": "drinking water, 550 ml bottle",
        "name_zh": "瓶装饮用水",
        "base_unit": "bottle",
        "packs": {"case": 24},
        "shelf_life_days": 365,
    },
    {"code": "stretcher", "name_en": "folding stretcher", "name_zh": "折叠担架", "base_unit": "piece"},
    {
        "code": "first_aid_kit",
        "name_en": "first-aid kit",
        "name_zh": "急救包",
        "base_unit": "kit",
        "packs": {"carton": 10},
        "shelf_life_days": 730,
    },
]


def depot(depot_id: str, km_east: float, district: str = "huangpu", exercise: bool = False) -> dict[str, Any]:
    return {
        "id": depot_id,
        "name": f"{district} depot {depot_id}",
        "district": district,
        "lat": CENTRE[0],
        "lon": CENTRE[1] + km_east * KM * 1.17,
        "exercise": exercise,
    }


class Stockpile:
    """A supply officer at the operator API, and incident-intake on NATS."""

    def __init__(self, client: httpx.AsyncClient, bus: Bus, headers: Callable[..., dict[str, str]]) -> None:
        self.client = client
        self.bus = bus
        self.headers = headers
        self.officer = headers("supply_officer")

    async def post(self, path: str, body: Any, roles: tuple[str, ...] = ("supply_officer",)) -> httpx.Response:
        return await self.client.post(path, json=body, headers=self.headers(*roles))

    async def get(self, path: str, **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers("auditor"))

    async def ok(self, path: str, body: Any, status: int = 201) -> dict[str, Any]:
        r = await self.post(path, body)
        assert r.status_code == status, r.text
        return r.json()

    async def setup(self, depots: list[dict[str, Any]]) -> None:
        await self.ok("/v1/items", {"items": ITEMS})
        await self.ok("/v1/depots", {"depots": depots})

    async def receive(self, depot_id: str, *lines: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return await self.ok("/v1/documents/receipts", {"depot_id": depot_id, "lines": list(lines), **extra})

    async def incident(self, exercise: bool = False, category: str = "crowd_crush", level: int = 2) -> str:
        incident_id = "I" + uuid.uuid4().hex[:12]
        data = IncidentCreated(
            incident_id=incident_id,
            category=category,
            level=level,
            lat=CENTRE[0],
            lon=CENTRE[1],
            first_alarm_at=datetime.now(UTC),
            alarm_id=f"a-{incident_id}",
            gateway_id="gw",
            exercise=exercise,
        )
        await self.bus.publish_event(
            make_event("incident.created", data, source="incident-intake", incident_id=incident_id, exercise=exercise)
        )

        async def known() -> bool:
            r = await self.get(f"/v1/incidents/{incident_id}/reservations")
            return r.status_code == 200

        await eventually(known, what=f"incident {incident_id} known to resource-stockpile")
        return incident_id

    async def stock(self, **filters: Any) -> list[dict[str, Any]]:
        r = await self.get("/v1/stock", **filters)
        assert r.status_code == 200, r.text
        return r.json()["lines"]

    async def available(self, depot_id: str, item: str) -> int:
        return sum(line["available"] for line in await self.stock(depot_id=depot_id, item=item))


@pytest.fixture
def stockpile_app(nats_private: NatsServer) -> Callable[..., Any]:
    """Run resource-stockpile in this process: ``async with stockpile_app(database_url) as (app, client, bus)``."""

    @contextlib.asynccontextmanager
    async def run(database_url: str, **overrides: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Bus]]:
        from resource_stockpile.main import build_app
        from resource_stockpile.settings import StockpileSettings

        settings = StockpileSettings(
            database_url=database_url,
            nats_url=nats_private.url,
            auth_secret=AUTH_SECRET,
            log_level="WARNING",
            **overrides,
        )
        app = build_app(settings)
        bus = Bus(nats_private.url, "test")
        await bus.connect()
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://stockpile") as client,
            ):
                yield app, client, bus
        finally:
            await bus.close()

    return run


@pytest.fixture
def headers() -> Callable[..., dict[str, str]]:
    tokens = TokenVerifier(AUTH_SECRET)

    def make(*roles: str, subject: str = "officer-1") -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(subject, list(roles))}"}

    return make


async def events(bus: Bus, subject: str = "stockpile.>") -> list[dict[str, Any]]:
    """Every stockpile event on the STOCKPILE stream so far, in order."""
    sub = await bus.js.pull_subscribe(subject, durable=None, stream="STOCKPILE")
    found: list[dict[str, Any]] = []
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=0.5)
        except Exception:
            break
        for m in msgs:
            found.append({"subject": m.subject, **orjson.loads(m.data)})
            await m.ack()
    await sub.unsubscribe()
    return found


async def test_the_service_answers_health_readiness_and_metrics(stockpile_app, db_url):
    async with stockpile_app(db_url) as (_, client, _bus):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert "stockpile_reserved_base_units_total" in metrics.text


async def test_a_pool_of_one_serves_the_work_beside_the_relay_leaders_session(stockpile_app, pg_url, headers):
    """The outbox relay's leader holds a session while it leads: with DB_POOL_SIZE=1 that was the
    pool's only one, and the service was never ready (every request waited, then 503)."""
    async with stockpile_app(pg_url, db_pool_size=1, db_pool_timeout_s=3) as (_, client, bus):
        s = Stockpile(client, bus, headers)

        async def ready() -> bool:
            return (await client.get("/readyz")).status_code == 200

        await eventually(ready, "ready beside the relay's leader")
        await s.setup([depot("near", 1.0)])
        await asyncio.gather(
            *(s.receive("near", {"item": "stretcher", "lot": f"L{i}", "quantity": 1}) for i in range(4))
        )
        assert sum(x["on_hand"] for x in await s.stock(depot_id="near")) == 4


async def test_stock_is_received_in_packs_and_shown_in_both(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("D1", 1.0)])
        await s.receive("D1", {"item": "drinking_water_bottle", "lot": "W-1", "quantity": 4, "unit": "case"})
        await s.receive("D1", {"item": "drinking_water_bottle", "lot": "W-1", "quantity": 2})
        [line] = await s.stock(depot_id="D1")
        assert (line["on_hand"], line["available"], line["available_in_packs"]) == (98, 98, {"case": 4, "bottle": 2})


async def test_long_idempotency_keys_of_long_subjects_are_kept_whole_and_tiny_quantities_refused(
    stockpile_app, db_url, headers
):
    """A subject and an Idempotency-Key may each have 255 characters: joined, they overflowed the
    inbox's message id (a 500 from 249 characters on with a short subject), and cut to 300 two keys
    that differ past the cut were one request. A quantity the default decimal context underflows
    to 0 (1e-999999999) passed as whole and failed in the database (a 500)."""
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("near", 1.0)])
        await s.receive("near", {"item": "first_aid_kit", "lot": "A", "quantity": 100})
        incident = await s.incident()
        long_subject = headers("supply_officer", subject="s" * 255)
        path = f"/v1/incidents/{incident}/reservations"
        body = {"item": "first_aid_kit", "quantity": 2}
        made = []
        for key in ("k" * 254 + "1", "k" * 254 + "2", "k" * 254 + "1"):
            r = await client.post(path, json=body, headers={**long_subject, "Idempotency-Key": key})
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
        short = await client.post(path, json=body, headers={**s.officer, "Idempotency-Key": "k" * 255})
        assert short.status_code == 201, short.text
        assert made[0] == made[2] != made[1] != short.json()["id"]  # a repeat, and three requests
        assert await s.available("near", "first_aid_kit") == 100 - 3 * 2

        for quantity, unit in (
            ("1e-999999999", None),
            ("1e-1000030", "carton"),
            ("1.00000000000000000000000000000001", None),
        ):
            line = {"item": "first_aid_kit", "quantity": quantity, **({"unit": unit} if unit else {})}
            for where, sent in ((path, line), (f"{path}:batch", {"lines": [line]})):
                r = await s.post(where, sent)
                assert r.status_code == 422, r.text
                assert r.json()["field"] in ("quantity", "lines.0.quantity")
        released = await s.post(f"/v1/reservations/{made[1]}/release", {"quantity": "1e-1000030"})
        assert released.status_code == 422, released.text
        assert await s.available("near", "first_aid_kit") == 100 - 3 * 2


async def test_a_reservation_takes_the_nearest_depots_first_and_splits_across_them(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("near", 1.0), depot("middle", 4.0), depot("far", 12.0)])
        soon = (datetime.now(UTC) + timedelta(days=90)).date().isoformat()
        later = (datetime.now(UTC) + timedelta(days=400)).date().isoformat()
        await s.receive(
            "near",
            {"item": "first_aid_kit", "lot": "late", "quantity": 30, "expiry": later},
            {"item": "first_aid_kit", "lot": "soon", "quantity": 20, "expiry": soon},
        )
        await s.receive("middle", {"item": "first_aid_kit", "lot": "M", "quantity": 50, "expiry": later})
        await s.receive("far", {"item": "first_aid_kit", "lot": "F", "quantity": 500, "expiry": later})
        incident = await s.incident()

        got = await s.ok(
            f"/v1/incidents/{incident}/reservations", {"item": "first_aid_kit", "quantity": 8, "unit": "carton"}
        )

        assert (got["requested"], got["reserved"], got["missing"]) == (80, 80, 0)
        taken = [(a["depot_id"], a["held"]) for a in got["allocations"]]
        assert taken == [("near", 20), ("near", 30), ("middle", 30)]  # earliest expiry first within a depot
        assert await s.available("near", "first_aid_kit") == 0
        assert await s.available("middle", "first_aid_kit") == 20
        assert await s.available("far", "first_aid_kit") == 500


async def test_a_depot_beyond_the_travel_limit_is_never_reserved_from_and_the_shortfall_is_missing(
    stockpile_app, db_url, headers
):
    """STOCKPILE_MAX_TRAVEL_S (8 h by default): stock 300 km away cannot arrive in time, and a
    reservation would keep it from the incidents it could reach. Here the limit is 10 minutes:
    1 km (168 s at 30 km/h and a road factor of 1.4) is in, 4 km (672 s) and 300 km are out."""
    async with stockpile_app(db_url, max_travel_s=600) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("near", 1.0), depot("beyond", 4.0), depot("other-city", 300.0)])
        await s.receive("near", {"item": "first_aid_kit", "lot": "N", "quantity": 5})
        await s.receive("beyond", {"item": "first_aid_kit", "lot": "B", "quantity": 50})
        await s.receive("other-city", {"item": "first_aid_kit", "lot": "O", "quantity": 500})
        incident = await s.incident()

        got = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "first_aid_kit", "quantity": 20})

        assert (got["requested"], got["reserved"], got["missing"]) == (20, 5, 15)
        assert [(a["depot_id"], a["held"]) for a in got["allocations"]] == [("near", 5)]
        assert await s.available("beyond", "first_aid_kit") == 50
        assert await s.available("other-city", "first_aid_kit") == 500


async def test_expired_short_dated_damaged_and_exercise_stock_is_never_reserved(stockpile_app, db_url, headers):
    async with stockpile_app(db_url, min_shelf_life_days=30) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("X", 0.5, exercise=True)])
        short = (datetime.now(UTC) + timedelta(days=10)).date().isoformat()
        await s.receive(
            "A",
            {"item": "first_aid_kit", "lot": "short", "quantity": 10, "expiry": short},
            {"item": "first_aid_kit", "lot": "bad", "quantity": 10, "condition": "damaged"},
            {"item": "first_aid_kit", "lot": "q", "quantity": 10, "condition": "quarantined"},
            {"item": "first_aid_kit", "lot": "ok", "quantity": 3},
        )
        await s.receive("X", {"item": "first_aid_kit", "lot": "drill", "quantity": 100})
        incident = await s.incident()

        got = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "first_aid_kit", "quantity": 10})

        assert (got["reserved"], got["missing"]) == (3, 7)
        assert [(a["depot_id"], a["held"]) for a in got["allocations"]] == [("A", 3)]
        [made] = [e for e in await events(bus, "stockpile.reservation.made")]
        assert made["data"]["missing"] == 7 and made["incident_id"] == incident


async def test_an_exercise_incident_takes_only_exercise_stock(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("live", 0.5), depot("drill", 5.0, exercise=True)])
        await s.receive("live", {"item": "stretcher", "lot": "L", "quantity": 10})
        await s.receive("drill", {"item": "stretcher", "lot": "D", "quantity": 10})
        drill = await s.incident(exercise=True)
        got = await s.ok(f"/v1/incidents/{drill}/reservations", {"item": "stretcher", "quantity": 12})
        assert (got["reserved"], got["exercise"]) == (10, True)
        assert [a["depot_id"] for a in got["allocations"]] == ["drill"]
        assert await s.available("live", "stretcher") == 10


async def test_issue_return_consume_release_and_the_settled_fact(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 3.0)])
        await s.receive("A", {"item": "stretcher", "lot": "SA", "quantity": 6})
        await s.receive("B", {"item": "stretcher", "lot": "SB", "quantity": 10})
        incident = await s.incident()
        r = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "stretcher", "quantity": 12})
        rid = r["id"]

        issued = await s.ok(f"/v1/reservations/{rid}/issue", {"quantity": 8}, 200)
        assert [(a["depot_id"], a["held"], a["out"]) for a in issued["allocations"]] == [("A", 0, 6), ("B", 4, 2)]
        stock = {line["depot_id"]: (line["on_hand"], line["reserved"]) for line in await s.stock(item="stretcher")}
        assert stock == {"B": (8, 4)}  # A's 6 all left the depot; B gave 2 and holds 4 reserved

        await s.ok(f"/v1/reservations/{rid}/release", {}, 200)  # the 4 still held go back
        await s.ok(f"/v1/reservations/{rid}/return", {"quantity": 5}, 200)
        await s.ok(f"/v1/reservations/{rid}/return", {"quantity": 2, "condition": "damaged"}, 200)
        done = await s.ok(f"/v1/reservations/{rid}/consume", {}, 200)
        assert sum(a["returned"] for a in done["allocations"]) == 7
        assert sum(a["consumed"] for a in done["allocations"]) == 1
        assert sum(a["held"] + a["out"] for a in done["allocations"]) == 0

        stock = {(line["depot_id"], line["condition"]): line["on_hand"] for line in await s.stock(item="stretcher")}
        assert stock == {("A", "good"): 5, ("A", "damaged"): 1, ("B", "good"): 8, ("B", "damaged"): 1}
        listing = (await s.get(f"/v1/incidents/{incident}/reservations")).json()
        assert listing["settled"] is True

        settled_facts = [e["data"]["settled"] for e in await events(bus, "stockpile.incident.settled")]
        assert settled_facts == [True, False, True]  # known, holding, all back
        from resource_stockpile import views

        assert await views.replay_mismatches(app.state.stockpile.db) == []


async def test_a_stale_version_or_more_than_there_is_is_refused_and_changes_nothing(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 5})
        incident = await s.incident()
        r = await s.ok(f"/v1/incidents/{incident}/reservations", {"item": "stretcher", "quantity": 5})
        rid, version = r["id"], r["version"]

        stale = await s.post(f"/v1/reservations/{rid}/issue", {"quantity": 1, "version": version + 5})
        assert stale.status_code == 409, stale.text
        too_much = await s.post(f"/v1/reservations/{rid}/issue", {"quantity": 6})
        assert too_much.status_code == 409 and too_much.json()["available"] == 5
        nothing_out = await s.post(f"/v1/reservations/{rid}/return", {"quantity": 1})
        assert nothing_out.status_code == 409
        fresh = await s.ok(f"/v1/reservations/{rid}/issue", {"quantity": 1, "version": version}, 200)
        assert fresh["version"] == version + 1
        assert sum(a["out"] for a in fresh["allocations"]) == 1


async def test_documents_that_would_make_a_balance_negative_are_refused_with_item_and_date(
    stockpile_app, db_url, headers
):
    async with stockpile_app(db_url) as (app, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 2.0)])
        now = datetime.now(UTC)
        await s.receive(
            "A", {"item": "stretcher", "lot": "S", "quantity": 10}, effective_at=(now - timedelta(days=10)).isoformat()
        )
        adjust = {"depot_id": "A", "item": "stretcher", "lot": "S", "reason": "lost"}
        await s.ok(
            "/v1/documents/adjustments", {**adjust, "delta": -8, "effective_at": (now - timedelta(days=5)).isoformat()}
        )

        back_dated = await s.post(
            "/v1/documents/adjustments", {**adjust, "delta": -5, "effective_at": (now - timedelta(days=7)).isoformat()}
        )
        assert back_dated.status_code == 409, back_dated.text
        problem = back_dated.json()
        assert problem["item"] == "stretcher"
        assert problem["date"] == (now - timedelta(days=5)).date().isoformat()

        too_much = await s.post("/v1/documents/adjustments", {**adjust, "delta": -3})
        assert too_much.status_code == 409 and too_much.json()["item"] == "stretcher"
        transfer = await s.post(
            "/v1/documents/transfers",
            {"from_depot": "A", "to_depot": "B", "item": "stretcher", "lot": "S", "quantity": 3},
        )
        assert transfer.status_code == 409

        await s.ok(
            "/v1/documents/transfers",
            {"from_depot": "A", "to_depot": "B", "item": "stretcher", "lot": "S", "quantity": 2},
        )
        stock = {line["depot_id"]: line["on_hand"] for line in await s.stock(item="stretcher")}
        assert stock == {"B": 2}  # A is at 0: lines with nothing on hand are not listed
        from resource_stockpile import views

        assert await views.replay_mismatches(app.state.stockpile.db) == []


BAD_RESERVATIONS = [
    ({"item": "stretcher", "quantity": 0}, 422, "quantity"),
    ({"item": "stretcher", "quantity": -1}, 422, "quantity"),
    ({"item": "stretcher", "quantity": 1.5}, 422, "quantity"),
    ({"item": "stretcher", "quantity": 2_000_000_000}, 422, "quantity"),
    ({"item": "stretcher", "quantity": 1, "unit": "case"}, 422, "unit"),
    ({"item": "drinking_water_bottle", "quantity": 0.1, "unit": "case"}, 422, "quantity"),
    ({"item": "no_such_item", "quantity": 1}, 404, None),
    ({"item": "stretcher"}, 422, "quantity"),
    ({"item": "stretcher", "quantity": 1, "near": {"lat": 95, "lon": 0}}, 422, "near.lat"),
    ({"item": "stretcher", "quantity": 1, "colour": "red"}, 422, "colour"),
]


async def test_bad_input_answers_a_clear_problem_naming_the_field_and_changes_nothing(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 5})
        incident = await s.incident()
        for body, status, field in BAD_RESERVATIONS:
            r = await s.post(f"/v1/incidents/{incident}/reservations", body)
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            if field is not None:
                assert field in r.text, (body, r.text)
        unknown_incident = await s.post("/v1/incidents/INOPE/reservations", {"item": "stretcher", "quantity": 1})
        assert unknown_incident.status_code == 404
        assert (await s.post("/v1/reservations/999999/issue", {})).status_code == 404
        bad_receipts = [
            ({"depot_id": "NOPE", "lines": [{"item": "stretcher", "lot": "x", "quantity": 1}]}, 404),
            ({"depot_id": "A", "lines": [{"item": "nope", "lot": "x", "quantity": 1}]}, 404),
            ({"depot_id": "A", "lines": [{"item": "stretcher", "lot": "x", "quantity": 1, "unit": "box"}]}, 422),
            ({"depot_id": "A", "lines": [{"item": "stretcher", "lot": "x", "quantity": 0.5}]}, 422),
            ({"depot_id": "A", "lines": []}, 422),
            (
                {
                    "depot_id": "A",
                    "lines": [{"item": "stretcher", "lot": "x", "quantity": 1}],
                    "effective_at": "2999-01-01T00:00:00Z",
                },
                422,
            ),
            ({"depot_id": "A", "lines": [{"item": "stretcher", "lot": "x", "quantity": 1, "condition": "wet"}]}, 422),
        ]
        for body, status in bad_receipts:
            r = await s.post("/v1/documents/receipts", body)
            assert r.status_code == status, (body, r.text)
        adjust = {"depot_id": "A", "item": "stretcher", "lot": "S", "delta": 0, "reason": "count"}
        assert (await s.post("/v1/documents/adjustments", adjust)).status_code == 422
        assert (
            await s.post("/v1/documents/adjustments", {**adjust, "delta": -1, "reason": "stolen"})
        ).status_code == 422
        assert (await s.post("/v1/documents/adjustments", {**adjust, "delta": -1, "lot": "nope"})).status_code == 404
        bad_items = [
            {"code": "x", "name_en": "x", "name_zh": "x", "base_unit": "piece", "gb_code": "12"},
            {"code": "x", "name_en": "x", "name_zh": "x", "base_unit": "piece", "packs": {"box": 1}},
            {"code": "X Y", "name_en": "x", "name_zh": "x", "base_unit": "piece"},
        ]
        for item in bad_items:
            assert (await s.post("/v1/items", {"items": [item]}, ("commander",))).status_code == 422, item
        assert (await s.post("/v1/items", {"items": ITEMS[:1]}, ("commander",))).status_code == 409
        assert (await s.post("/v1/depots", {"depots": [depot("A", 2.0)]})).status_code == 409
        assert (
            await s.post("/v1/documents/receipts", {"depot_id": "A", "lines": []}, ("dispatcher",))
        ).status_code == 403

        assert [(line["on_hand"], line["reserved"]) for line in await s.stock()] == [(5, 0)]
        assert (await s.get(f"/v1/incidents/{incident}/reservations")).json()["reservations"] == []


async def test_several_items_at_once_all_or_none(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 2.0)])
        await s.receive(
            "A", {"item": "stretcher", "lot": "S", "quantity": 5}, {"item": "first_aid_kit", "lot": "K", "quantity": 30}
        )
        await s.receive("B", {"item": "stretcher", "lot": "S", "quantity": 5})
        incident = await s.incident()
        path = f"/v1/incidents/{incident}/reservations:batch"
        bad = await s.post(
            path,
            {
                "lines": [
                    {"item": "stretcher", "quantity": 2},
                    {"item": "first_aid_kit", "quantity": 0.55, "unit": "carton"},
                    {"item": "stretcher", "quantity": 1},
                ]
            },
        )
        assert bad.status_code == 422 and "lines.1.quantity" in bad.text, bad.text
        assert sum(line["reserved"] for line in await s.stock()) == 0  # nothing partial

        got = await s.ok(
            path,
            {
                "lines": [
                    {"item": "stretcher", "quantity": 8},
                    {"item": "first_aid_kit", "quantity": 2, "unit": "carton"},
                ]
            },
        )
        answers = got["reservations"]
        assert [(r["item"], r["reserved"], r["missing"]) for r in answers] == [
            ("stretcher", 8, 0),
            ("first_aid_kit", 20, 0),
        ]
        assert [(a["depot_id"], a["held"]) for a in answers[0]["allocations"]] == [("A", 5), ("B", 3)]


async def test_the_same_item_twice_in_one_request_never_counts_a_line_twice(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("B", 2.0)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 5})
        await s.receive("B", {"item": "stretcher", "lot": "S", "quantity": 5})
        incident = await s.incident()
        lines = [{"item": "stretcher", "quantity": 4}, {"item": "stretcher", "quantity": 4}]
        got = await s.ok(f"/v1/incidents/{incident}/reservations:batch", {"lines": lines})
        answers = got["reservations"]
        assert [[(a["depot_id"], a["held"]) for a in r["allocations"]] for r in answers] == [
            [("A", 4)],
            [("A", 1), ("B", 3)],
        ]
        assert await s.available("A", "stretcher") == 0
        assert await s.available("B", "stretcher") == 2
        # The answer written from what was just made is what reading the reservations gives.
        for answer in answers:
            assert (await s.get(f"/v1/reservations/{answer['id']}")).json() == answer


async def test_a_drill_runner_reserves_for_exercise_incidents_only(stockpile_app, db_url, headers):
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("A", 1.0), depot("X", 1.0, exercise=True)])
        await s.receive("A", {"item": "stretcher", "lot": "S", "quantity": 5})
        await s.receive("X", {"item": "stretcher", "lot": "S", "quantity": 5})
        live, drill = await s.incident(), await s.incident(exercise=True)
        refused = await s.post(
            f"/v1/incidents/{live}/reservations", {"item": "stretcher", "quantity": 1}, ("drill_runner",)
        )
        assert refused.status_code == 403, refused.text
        assert (await s.get(f"/v1/incidents/{live}/reservations")).json()["reservations"] == []
        allowed = await s.post(
            f"/v1/incidents/{drill}/reservations", {"item": "stretcher", "quantity": 1}, ("drill_runner",)
        )
        assert allowed.status_code == 201, allowed.text


async def test_a_lot_keeps_one_expiry_and_a_receipt_that_disagrees_is_409_and_writes_nothing(
    stockpile_app, db_url, headers
):
    """Stock received under a lot already held with another expiry used to merge into its line and
    take the line's expiry (5 bottles expiring in 4 days shown as 2028: no warning, wrong FEFO)."""
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("near", 1.0)])
        await s.receive("near", {"item": "stretcher", "lot": "L-1", "quantity": 4, "expiry": "2028-01-01"})
        before = await s.stock(depot_id="near")
        for lines, field in (
            ([{"item": "stretcher", "lot": "L-1", "quantity": 5, "expiry": "2026-12-05"}], "lines.0.expiry"),
            ([{"item": "stretcher", "lot": "L-1", "quantity": 5}], "lines.0.expiry"),
            (
                [
                    {"item": "stretcher", "lot": "D", "quantity": 1},
                    {"item": "stretcher", "lot": "D", "quantity": 1, "expiry": "2030-01-01"},
                ],
                "lines.1.expiry",
            ),
        ):
            r = await s.post("/v1/documents/receipts", {"depot_id": "near", "lines": lines})
            assert r.status_code == 409, r.text
            assert r.json()["field"] == field and "a lot has one expiry" in r.json()["detail"], r.text
            assert await s.stock(depot_id="near") == before  # nothing of the document was written
        await s.receive("near", {"item": "stretcher", "lot": "L-1", "quantity": 6, "expiry": "2028-01-01"})
        [line] = [x for x in await s.stock(depot_id="near") if x["lot"] == "L-1"]
        assert (line["on_hand"], line["expiry"]) == (10, "2028-01-01")


async def test_a_transfer_into_a_lot_held_with_another_expiry_is_409_and_writes_nothing(stockpile_app, db_url, headers):
    """A transfer used to merge into the target's line of the lot and take its expiry: two
    stretchers expiring in 2027 shown as 2035."""
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        await s.setup([depot("near", 1.0), depot("far", 9.0)])
        await s.receive("near", {"item": "stretcher", "lot": "X9", "quantity": 3, "expiry": "2027-06-01"})
        await s.receive("far", {"item": "stretcher", "lot": "X9", "quantity": 3, "expiry": "2035-01-01"})
        before = await s.stock()
        move = {"from_depot": "near", "to_depot": "far", "item": "stretcher", "lot": "X9", "quantity": 2}
        r = await s.post("/v1/documents/transfers", move)
        assert r.status_code == 409 and r.json()["field"] == "lot", r.text
        assert "a lot has one expiry" in r.json()["detail"]
        assert await s.stock() == before


async def test_an_item_or_depot_listed_twice_in_one_batch_is_422_naming_it(stockpile_app, db_url, headers):
    """The second one reached the database's unique key: a 500."""
    async with stockpile_app(db_url) as (_, client, bus):
        s = Stockpile(client, bus, headers)
        item = {"code": "dup1", "name_en": "N", "name_zh": "名", "base_unit": "piece"}
        r = await s.post("/v1/items", {"items": [item, {**item, "code": "dup2"}, item]})
        assert r.status_code == 422 and r.json()["field"] == "items.2.code", r.text
        r = await s.post("/v1/depots", {"depots": [depot("X1", 1.0), depot("X1", 2.0)]})
        assert r.status_code == 422 and r.json()["field"] == "depots.1.id", r.text
        r = await s.post("/v1/depots", {"depots": [{**depot("X2", 1.0), "lat": "31.2"}]})
        assert r.status_code == 422, r.text
        assert (await s.get("/v1/items")).json()["items"] == []
        assert (await s.get("/v1/depots")).json()["depots"] == []
