"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.service import Platform, ServiceSpec, create_service_app, serve

from . import api, consumers
from .context import Context
from .handlers import households
from .settings import ShelterSettings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_shelter"

log = structlog.get_logger("shelter.main")

SPEC = ServiceSpec(
    title="shelter-registry",
    description="Shelters whose capacity is never over-claimed, households placed whole, check-in and "
    "check-out with history, reunification search that protects people.",
    migrations=MIGRATIONS,
    version_table=VERSION_TABLE,
    streams=consumers.STREAMS,
    consumers=consumers.CONSUMERS,
    routers=[api.shelters_api, api.registrations_api, api.reunification_api],
)


def build_app(settings: ShelterSettings | None = None) -> FastAPI:
    """The shelter-registry app for ``settings`` (default: from the environment, SHELTER_*)."""
    settings = settings or ShelterSettings()

    async def wire(app: FastAPI, p: Platform) -> dict[str, Any]:
        ctx = Context(p.db, settings)
        app.state.shelter = ctx
        await p.run(
            ConsumerRunner(
                p.bus,
                consumers.INCIDENT_CONSUMER,
                consumers.incidents_handler(ctx, p.bus),
                settings.incident_batch,
                settings.max_deliver,
            )
        )
        p.every(settings.retention_sweep_s, lambda: households.forget_expired(ctx), "forget-expired")
        return {"m2_per_person": settings.m2_per_person}

    # A database out of reach answers 503 (ecs.web), any other database error 500.
    return create_service_app(SPEC, settings, wire)


def run() -> None:
    """The ``shelter-registry`` console script: serve the app."""
    serve(build_app, ShelterSettings())
