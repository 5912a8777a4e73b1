"""shelter-registry in-process against a real nats-server and a real database (both stores):
shelters and their status machine, households placed whole, check-in and check-out with history,
the reunification search, the dashboards and every bad input of the issue, as a shelter manager
and a relative would see them. The races are in test_shelter_concurrency.py (PostgreSQL)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from ecs.auth import TokenVerifier
from ecs.bus import Bus
from ecs.testing import NatsServer
from tests.conftest import AUTH_SECRET

CENTRE = (31.2304, 121.4737)  # People's Square, Huangpu
KM = 1 / 111.2


@pytest.fixture
def shelter_app(nats_private: NatsServer) -> Callable[..., Any]:
    """Run shelter-registry in this process: ``async with shelter_app(database_url) as (app, client, bus)``."""

    @contextlib.asynccontextmanager
    async def run(database_url: str, **overrides: Any) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Bus]]:
        from shelter_registry.main import build_app
        from shelter_registry.settings import ShelterSettings

        settings = ShelterSettings(
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
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shelter") as client,
            ):
                yield app, client, bus
        finally:
            await bus.close()

    return run


def auth(*roles: str, subject: str = "manager-1") -> dict[str, str]:
    return {"Authorization": f"Bearer {TokenVerifier(AUTH_SECRET).issue(subject, list(roles) or ['shelter_manager'])}"}


async def test_the_service_answers_health_readiness_and_metrics(shelter_app, db_url):
    async with shelter_app(db_url) as (_, client, _bus):
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert (await client.get("/v1/shelters", headers=auth())).json() == {"items": [], "next_cursor": None}
