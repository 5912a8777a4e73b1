"""Composition root: settings, engine, NATS, wiring, start and stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.feed import FeedConsumer
from ecs.logs import get_logger
from ecs.service import platform, serve
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
        async with platform(
            app,
            settings,
            migrations=MIGRATIONS,
            version_table=VERSION_TABLE,
            streams=consumers.STREAMS,
            consumers=consumers.CONSUMERS,
        ) as p:
            plans = PlanBook(p.db)
            directory = UnitDirectory(p.db, settings)
            dispatcher = Dispatcher(p.db, settings, plans, directory)
            seeded = await plans.seed()  # the relay is running: seeded plans go out through the outbox
            await directory.reload()
            runners = [
                ConsumerRunner(
                    p.bus,
                    consumers.INCIDENT_CONSUMER,
                    consumers.incidents_handler(dispatcher, settings.automation_concurrency),
                    settings.incident_batch,
                    settings.max_deliver,
                ),
                FeedConsumer(
                    p.bus,
                    consumers.LOCATION_FEED,
                    consumers.locations_handler(dispatcher),
                    settings.location_batch,
                    max_deliver=settings.max_deliver,
                ),
            ]
            await p.bus.serve(consumers.PLAN_REQUEST, consumers.plan_responder(plans))
            app.state.plans = plans
            app.state.directory = directory
            app.state.dispatcher = dispatcher

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
                log.info("dispatch.stopped")

    return create_app(
        title="dispatch",
        version="1.0.0",
        description="Units, response plans, recommendation, race-free assignment and stage-driven automatic dispatch.",
        lifespan=lifespan,
        routers=[api.units_api, api.plans_api, api.incidents_api],
    )


def run() -> None:
    serve(build_app, DispatchSettings())
