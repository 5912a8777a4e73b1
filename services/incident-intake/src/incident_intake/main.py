"""Composition root: settings, engine, NATS, wiring, start and stop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from ecs.auth import TokenVerifier
from ecs.bus import Bus, ConsumerRunner
from ecs.db import Database, OutboxRelay
from ecs.logs import configure_logging, get_logger
from ecs.migrations import upgrade
from ecs.web import create_app

from . import api, consumers
from .gateways import GatewayRegistry
from .handlers import AlarmIngestor, Correlator, IncidentCommands
from .settings import IntakeSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_intake"

log = get_logger("incident_intake")


def build_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service_name, settings.log_level, settings.log_json)
        await upgrade(settings.database_url, MIGRATIONS, VERSION_TABLE)
        db = Database(settings.database_url)
        bus = Bus(settings.nats_url, settings.service_name, settings.stream_replicas)
        await bus.connect()
        await bus.declare(consumers.STREAMS, consumers.CONSUMERS)

        gateways = GatewayRegistry.from_settings(settings)
        correlator = Correlator(db, settings)
        ingestor = AlarmIngestor(correlator, settings.ingest_batch)
        commands = IncidentCommands(db, settings)
        relay = OutboxRelay(db, bus, settings.outbox_batch)
        runners = [
            ConsumerRunner(
                bus,
                consumers.ALARM_CONSUMER,
                consumers.alarms_handler(ingestor, gateways, settings.caller_pepper),
                settings.consumer_batch,
                settings.max_deliver,
            ),
            *(
                ConsumerRunner(bus, spec, consumers.facts_handler(commands, spec.durable), 100, settings.max_deliver)
                for spec in consumers.FACT_CONSUMERS
            ),
        ]

        async def readiness() -> dict[str, bool]:
            return {"nats": bus.connected, "database": await db.ping()}

        app.state.settings = settings
        app.state.db = db
        app.state.bus = bus
        app.state.gateways = gateways
        app.state.ingestor = ingestor
        app.state.commands = commands
        app.state.tokens = TokenVerifier(
            settings.auth_secret, settings.oidc_jwks_url, settings.oidc_issuer, settings.oidc_audience
        )
        app.state.readiness = readiness

        await ingestor.start()
        await relay.start()
        for runner in runners:
            await runner.start()
        log.info("intake.started", http=f"http://{settings.http_host}:{settings.http_port}", gateways=gateways.ids())
        try:
            yield
        finally:
            for runner in runners:
                await runner.stop()
            await ingestor.stop()
            await relay.stop()
            await bus.close()
            await db.dispose()
            log.info("intake.stopped")

    return create_app(
        title="incident-intake",
        version="1.0.0",
        description="110 gateway contract v1, alarm correlation and the incident lifecycle.",
        lifespan=lifespan,
        routers=[api.gateway, api.operator],
    )


def run() -> None:
    settings = IntakeSettings()
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
