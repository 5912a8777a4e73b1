"""What every service process does around its own wiring: logging, migrations, the engine, the
NATS connection and its streams, the outbox relay, tokens and readiness; and serving HTTP."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from .auth import TokenVerifier
from .bus import Bus, ConsumerSpec, StreamSpec
from .db import Database, OutboxRelay
from .logs import configure_logging
from .migrations import upgrade
from .settings import ServiceSettings


@dataclass
class Platform:
    db: Database
    bus: Bus
    relay: OutboxRelay


@contextlib.asynccontextmanager
async def platform(
    app: FastAPI,
    settings: ServiceSettings,
    *,
    migrations: Path,
    version_table: str,
    streams: Sequence[StreamSpec],
    consumers: Sequence[ConsumerSpec],
) -> AsyncIterator[Platform]:
    """Start the shared machinery, put it on ``app.state``, and stop it again in reverse order.

    The service starts its own consumers inside this block and stops them before it ends, so
    nothing is still handling a message when the connection and the engine go away.
    """
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    await upgrade(settings.database_url, migrations, version_table)
    db = Database(settings.database_url)
    bus = Bus(settings.nats_url, settings.service_name, settings.stream_replicas)
    await bus.connect()
    await bus.declare(streams, consumers)
    relay = OutboxRelay(db, bus, settings.outbox_batch)

    async def readiness() -> dict[str, bool]:
        return {"nats": bus.connected, "database": await db.ping()}

    app.state.settings = settings
    app.state.db = db
    app.state.bus = bus
    app.state.tokens = TokenVerifier(
        settings.auth_secret, settings.oidc_jwks_url, settings.oidc_issuer, settings.oidc_audience
    )
    app.state.readiness = readiness
    await relay.start()
    # Everything loaded so far lives as long as the process: keep it out of the collector's full
    # passes, which otherwise pause the event loop for 100 ms at a time under load.
    gc.freeze()
    try:
        yield Platform(db, bus, relay)
    finally:
        await relay.stop()
        await bus.close()
        await db.dispose()


def serve(build_app: Callable[[ServiceSettings], FastAPI], settings: ServiceSettings) -> None:
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
