"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.feed import FeedConsumer
from ecs.service import Platform, ServiceSpec, create_service_app, serve

from . import api, consumers
from .directory import UnitDirectory
from .handlers import Dispatcher
from .plans import PlanBook
from .settings import DispatchSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_dispatch"

SPEC = ServiceSpec(
    title="dispatch",
    description="Units, response plans, recommendation, race-free assignment and stage-driven automatic dispatch.",
    migrations=MIGRATIONS,
    version_table=VERSION_TABLE,
    streams=consumers.STREAMS,
    consumers=consumers.CONSUMERS,
    routers=[api.units_api, api.plans_api, api.incidents_api],
)


def build_app(settings: DispatchSettings | None = None) -> FastAPI:
    settings = settings or DispatchSettings()

    async def wire(app: FastAPI, p: Platform) -> dict[str, Any]:
        plans = PlanBook(p.db)
        directory = UnitDirectory(p.db, settings)
        dispatcher = Dispatcher(p.db, settings, plans, directory)
        seeded = await plans.seed()  # the relay is running: seeded plans go out through the outbox
        await directory.reload()
        app.state.plans = plans
        app.state.directory = directory
        app.state.dispatcher = dispatcher
        await p.bus.serve(consumers.PLAN_REQUEST, consumers.plan_responder(plans))

        async def keep_fresh() -> None:  # other replicas' changes to units and plans
            await directory.refresh()
            await plans.refresh()

        p.every(settings.refresh_interval_s, keep_fresh, "keep-fresh")
        await p.run(
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
        )
        return {"units": len(directory.index), "plans": len(plans.categories()), "plans_seeded": seeded}

    return create_service_app(SPEC, settings, wire)


def run() -> None:
    serve(build_app, DispatchSettings())
