"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.bus import ConsumerRunner
from ecs.db import Database
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


async def warm_pool(db: Database, connections: int) -> int:
    """Open up to ``connections`` of the PostgreSQL pool's connections before the first request
    (at most the pool's size); returns how many.

    A connection opened on demand costs its first request tens of milliseconds (connecting,
    authenticating, asyncpg's type introspection): the first burst of allocations after a quiet
    spell, when more requests overlap than connections were open, paid that many times at once.
    SQLite opens its file at once anyway (0)."""
    if db.is_sqlite or connections <= 0:
        return 0
    size = min(connections, db.engine.sync_engine.pool.size())  # type: ignore[attr-defined]
    conns: list[AsyncConnection] = []
    try:
        for _ in range(size):  # all held at once, so that each is another connection
            conns.append(await db.engine.connect())
            await conns[-1].execute(text("SELECT 1"))
    finally:
        for conn in conns:
            await conn.close()
    return len(conns)


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
        warmed = await warm_pool(p.db, settings.db_warm_connections)
        return {"m2_per_person": settings.m2_per_person, "db_connections_warmed": warmed}

    # A database out of reach answers 503 (ecs.web), any other database error 500.
    return create_service_app(SPEC, settings, wire)


def run() -> None:
    """The ``shelter-registry`` console script: serve the app."""
    serve(build_app, ShelterSettings())
