"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.service import Platform, ServiceSpec, create_service_app, serve

from . import api, consumers
from .gateways import GatewayRegistry
from .handlers import Context
from .handlers.alarms import Correlator, alarm_batcher
from .settings import IntakeSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_intake"

SPEC = ServiceSpec(
    title="incident-intake",
    description="110 gateway contract v1, alarm correlation and the incident lifecycle.",
    migrations=MIGRATIONS,
    version_table=VERSION_TABLE,
    streams=consumers.STREAMS,
    consumers=consumers.CONSUMERS,
    routers=[api.gateway, api.operator],
)


def build_app(settings: IntakeSettings | None = None) -> FastAPI:
    """The intake app: its routes, and at start-up its correlator, batcher and consumers."""
    settings = settings or IntakeSettings()

    async def wire(app: FastAPI, p: Platform) -> dict[str, Any]:
        gateways = GatewayRegistry.from_settings(settings)
        batcher = alarm_batcher(Correlator(p.db, settings), settings.ingest_batch)
        ctx = Context(p.db, settings, batcher)
        app.state.gateways = gateways
        app.state.context = ctx
        await p.run(
            batcher,
            ConsumerRunner(
                p.bus,
                consumers.ALARM_CONSUMER,
                consumers.alarms_handler(ctx, gateways),
                settings.consumer_batch,
                settings.max_deliver,
                fetchers=settings.alarm_fetchers,
            ),
            *(
                ConsumerRunner(p.bus, spec, consumers.facts_handler(ctx, spec.durable), 100, settings.max_deliver)
                for spec in consumers.FACT_CONSUMERS
            ),
        )
        return {"gateways": gateways.ids()}

    return create_service_app(SPEC, settings, wire)


def run() -> None:
    """The ``incident-intake`` command: serve until SIGTERM or SIGINT."""
    serve(build_app, IntakeSettings())
