"""resource-stockpile in-process against a real nats-server and a real database (both stores): the
catalogue, depots, ledger documents, reservations nearest first across depots, issue, return,
consume and release, and the bad input of each — as a supply officer would see them."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
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
