"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.feed import FeedConsumer
from ecs.service import Platform, ServiceSpec, create_service_app, serve

from . import api, consumers
from .context import Context
from .directory import UnitDirectory
from .handlers.plans import seed_plans
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
    """The dispatch app for ``settings`` (default: from the environment, DISPATCH_*)."""
    settings = settings or DispatchSettings()

    async def wire(app: FastAPI, p: Platform) -> dict[str, Any]:
        ctx = Context(p.db, settings, PlanBook(p.db), UnitDirectory(p.db, settings))
        seeded = await seed_plans(ctx)  # the relay is running: seeded plans go out through the outbox
        await ctx.directory.reload()
        app.state.dispatch = ctx
        await p.bus.serve(consumers.PLAN_REQUEST, consumers.plan_responder(ctx))

        async def keep_fresh() -> None:  # other replicas' changes to units and plans
            await ctx.directory.refresh()
            await ctx.plans.refresh()

        p.every(settings.refresh_interval_s, keep_fresh, "keep-fresh")
        await p.run(
            ConsumerRunner(
                p.bus,
                consumers.INCIDENT_CONSUMER,
                consumers.incidents_handler(ctx, settings.automation_concurrency),
                settings.incident_batch,
                settings.max_deliver,
            ),
            FeedConsumer(
                p.bus,
                consumers.LOCATION_FEED,
                consumers.locations_handler(ctx),
                settings.location_batch,
                max_deliver=settings.max_deliver,
            ),
        )
        return {"units": len(ctx.directory.index), "plans": len(ctx.plans.categories()), "plans_seeded": seeded}

    return create_service_app(SPEC, settings, wire)


def run() -> None:
    """The ``dispatch`` console script: serve the app."""
    serve(build_app, DispatchSettings())
