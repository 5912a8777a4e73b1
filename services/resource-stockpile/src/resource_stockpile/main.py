"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.service import Platform, ServiceSpec, create_service_app, serve

from . import api, consumers
from .context import Context
from .handlers import alerts
from .settings import StockpileSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_stockpile"

SPEC = ServiceSpec(
    title="resource-stockpile",
    description="Depots, items and a stock ledger that never goes negative; reservations nearest first "
    "across depots, issue, return and release, settled per incident.",
    migrations=MIGRATIONS,
    version_table=VERSION_TABLE,
    streams=consumers.STREAMS,
    consumers=consumers.CONSUMERS,
    routers=[api.catalogue_api, api.stock_api, api.alerts_api, api.reservations_api, api.edxl_api],
)


def build_app(settings: StockpileSettings | None = None) -> FastAPI:
    """The resource-stockpile app for ``settings`` (default: from the environment, STOCKPILE_*)."""
    settings = settings or StockpileSettings()

    async def wire(app: FastAPI, p: Platform) -> dict[str, Any]:
        ctx = Context(p.db, settings, consumers.plan_source(p.bus, settings.plan_request_timeout_s))
        app.state.stockpile = ctx
        await p.run(
            ConsumerRunner(
                p.bus,
                consumers.INCIDENT_CONSUMER,
                consumers.incidents_handler(ctx),
                settings.incident_batch,
                settings.max_deliver,
            )
        )
        p.every(settings.alert_sweep_s, lambda: alerts.sweep(ctx), "alert-sweep")
        return {"automatic": settings.automatic}

    return create_service_app(SPEC, settings, wire)


def run() -> None:
    """The ``resource-stockpile`` console script: serve the app."""
    serve(build_app, StockpileSettings())
