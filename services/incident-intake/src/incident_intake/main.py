"""Composition root: settings, engine, NATS, wiring, start and stop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.logs import get_logger
from ecs.service import platform, serve
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
        async with platform(
            app,
            settings,
            migrations=MIGRATIONS,
            version_table=VERSION_TABLE,
            streams=consumers.STREAMS,
            consumers=consumers.CONSUMERS,
        ) as p:
            gateways = GatewayRegistry.from_settings(settings)
            ingestor = AlarmIngestor(Correlator(p.db, settings), settings.ingest_batch)
            commands = IncidentCommands(p.db, settings)
            alarms = consumers.alarms_handler(ingestor, gateways, settings.caller_pepper)
            runners = [
                ConsumerRunner(
                    p.bus,
                    consumers.ALARM_CONSUMER,
                    alarms,
                    settings.consumer_batch,
                    settings.max_deliver,
                    fetchers=settings.alarm_fetchers,
                ),
                *(
                    ConsumerRunner(
                        p.bus, spec, consumers.facts_handler(commands, spec.durable), 100, settings.max_deliver
                    )
                    for spec in consumers.FACT_CONSUMERS
                ),
            ]
            app.state.gateways = gateways
            app.state.ingestor = ingestor
            app.state.commands = commands

            await ingestor.start()
            for runner in runners:
                await runner.start()
            log.info(
                "intake.started", http=f"http://{settings.http_host}:{settings.http_port}", gateways=gateways.ids()
            )
            try:
                yield
            finally:
                for runner in runners:
                    await runner.stop()
                await ingestor.stop()
                log.info("intake.stopped")

    return create_app(
        title="incident-intake",
        version="1.0.0",
        description="110 gateway contract v1, alarm correlation and the incident lifecycle.",
        lifespan=lifespan,
        routers=[api.gateway, api.operator],
    )


def run() -> None:
    serve(build_app, IntakeSettings())
