"""Composition root: settings, engine, NATS, wiring, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from ecs.auth import TokenVerifier
from ecs.bus import Bus, ConsumerRunner
from ecs.db import Database, OutboxRelay
from ecs.feed import FeedConsumer
from ecs.logs import configure_logging, get_logger
from ecs.migrations import upgrade
from ecs.web import create_app

from . import api, consumers
from .directory import UnitDirectory
from .handlers import Dispatcher
from .plans import PlanBook
from .settings import DispatchSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_dispatch"

log = get_logger("dispatch")


async def _keep_fresh(directory: UnitDirectory, plans: PlanBook, every_s: float) -> None:
    """Other replicas' changes: units and plans re-read in the background."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await directory.refresh()
            await plans.refresh()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("dispatch.refresh_failed", error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc))


def build_app(settings: DispatchSettings | None = None) -> FastAPI:
    settings = settings or DispatchSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service_name, settings.log_level, settings.log_json)
        await upgrade(settings.database_url, MIGRATIONS, VERSION_TABLE)
        db = Database(settings.database_url)
        bus = Bus(settings.nats_url, settings.service_name, settings.stream_replicas)
        await bus.connect()
        await bus.declare(consumers.STREAMS, consumers.CONSUMERS)

        plans = PlanBook(db)
        directory = UnitDirectory(db, settings)
        dispatcher = Dispatcher(db, settings, plans, directory)
        relay = OutboxRelay(db, bus, settings.outbox_batch)
        await relay.start()  # plans seeded below go out through the outbox
        seeded = await plans.seed()
        await directory.reload()
        runners = [
            ConsumerRunner(
                bus,
                consumers.INCIDENT_CONSUMER,
                consumers.incidents_handler(dispatcher, settings.automation_concurrency),
                settings.incident_batch,
                settings.max_deliver,
            ),
            FeedConsumer(
                bus,
                consumers.LOCATION_FEED,
                consumers.locations_handler(dispatcher),
                settings.location_batch,
                max_deliver=settings.max_deliver,
            ),
        ]
        await bus.serve(consumers.PLAN_REQUEST, consumers.plan_responder(plans))

        async def readiness() -> dict[str, bool]:
            return {"nats": bus.connected, "database": await db.ping()}

        app.state.settings = settings
        app.state.db = db
        app.state.bus = bus
        app.state.plans = plans
        app.state.directory = directory
        app.state.dispatcher = dispatcher
        app.state.tokens = TokenVerifier(
            settings.auth_secret, settings.oidc_jwks_url, settings.oidc_issuer, settings.oidc_audience
        )
        app.state.readiness = readiness

        fresh = asyncio.create_task(_keep_fresh(directory, plans, settings.refresh_interval_s), name="keep-fresh")
        for runner in runners:
            await runner.start()
        log.info(
            "dispatch.started",
            http=f"http://{settings.http_host}:{settings.http_port}",
            units=len(directory.index),
            plans=len(plans.categories()),
            plans_seeded=seeded,
        )
        try:
            yield
        finally:
            for runner in runners:
                await runner.stop()
            fresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fresh
            await relay.stop()
            await bus.close()
            await db.dispose()
            log.info("dispatch.stopped")

    return create_app(
        title="dispatch",
        version="1.0.0",
        description="Units, response plans, recommendation, race-free assignment and stage-driven automatic dispatch.",
        lifespan=lifespan,
        routers=[api.units_api, api.plans_api, api.incidents_api],
    )


def run() -> None:
    settings = DispatchSettings()
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
