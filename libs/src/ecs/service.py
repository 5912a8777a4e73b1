"""What every service process does around its own wiring: logging, migrations, the engine, the
NATS connection (refused when the server is too old) and its streams, the outbox relay, tokens
and readiness; its consumers and background tasks, stopped in reverse order; and serving HTTP.

A service's ``main.py`` declares a ``ServiceSpec`` and one ``wire(app, platform)`` coroutine that
builds its handlers and hands its runners to ``platform.run``; ``create_service_app`` does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import uvicorn
from fastapi import APIRouter, FastAPI

from .auth import TokenVerifier
from .bus import Bus, ConsumerSpec, StreamSpec
from .db import Database
from .logs import configure_logging
from .migrations import upgrade
from .outbox import OutboxRelay
from .settings import ServiceSettings
from .stopping import step, stop_task
from .web import create_app

log = structlog.get_logger("ecs.service")


class Runner(Protocol):
    """Anything started with the service and stopped before the connection and the engine go:
    ``ConsumerRunner``, ``FeedConsumer``, a micro-batcher."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class ServiceSpec:
    """A service as ``create_service_app`` builds it: its name and documentation, its Alembic
    migrations (and their version table), the streams and consumers it declares, its routers."""

    title: str
    description: str
    migrations: Path
    version_table: str
    streams: Sequence[StreamSpec]
    consumers: Sequence[ConsumerSpec]
    routers: Sequence[APIRouter]
    version: str = "1.0.0"


@dataclass
class Platform:
    """The shared machinery of one running service process."""

    db: Database
    bus: Bus
    relay: OutboxRelay
    settings: ServiceSettings
    _runners: list[Runner] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    async def run(self, *runners: Runner) -> None:
        """Start runners now; they are stopped, last started first, when the service stops."""
        for runner in runners:
            await runner.start()
            self._runners.append(runner)

    def every(self, seconds: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
        """Run ``work`` every ``seconds`` in the background until the service stops; a failure is
        logged and the next round goes on."""

        async def loop() -> None:
            while not self._stopping:
                await asyncio.sleep(seconds)
                try:
                    await work()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self._stopping:  # the stop's cancellation, turned into an error on its way
                        return
                    log.warning(
                        "service.background_failed", task=name, error=str(exc).splitlines()[0][:300] or repr(exc)
                    )

        self._tasks.append(asyncio.create_task(loop(), name=name))

    async def _stop(self) -> None:
        """Background tasks, then runners, last started first; each within a bound (ecs.stopping):
        one that does not end is logged with where it waits and left behind, never waited for
        forever."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop_task(task, task.get_name())
        for runner in reversed(self._runners):
            await step(runner.stop(), f"stop {type(runner).__name__}")


@contextlib.asynccontextmanager
async def platform(app: FastAPI, settings: ServiceSettings, spec: ServiceSpec) -> AsyncIterator[Platform]:
    """Start the shared machinery, put it on ``app.state``, and stop it again in reverse order.

    Raises RuntimeError before anything is served when the NATS server is older than
    ``ecs.bus.MIN_SERVER_VERSION`` (the message names both versions).
    """
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    settings.check_secrets()
    await upgrade(settings.database_url, spec.migrations, spec.version_table)
    # One session more than DB_POOL_SIZE: the outbox relay's leader holds its own for as long as it
    # leads (its advisory lock lives on it), and the work must not wait on it.
    db = Database(settings.database_url, pool_size=settings.db_pool_size + 1, pool_timeout_s=settings.db_pool_timeout_s)
    bus = Bus(
        settings.nats_url, settings.service_name, settings.stream_replicas, settings.nats_user, settings.nats_password
    )
    try:
        await bus.connect()
        await bus.declare(spec.streams, spec.consumers)
    except BaseException:
        await bus.close()
        await db.dispose()
        raise
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
    p = Platform(db, bus, relay, settings)
    try:
        yield p
    finally:
        await p._stop()
        await relay.stop()
        await bus.close()
        await step(db.dispose(), "dispose of the database engine")


Wiring = Callable[[FastAPI, Platform], Awaitable[dict[str, Any]]]
"""A service's own start-up: build its handlers on the platform, put what routes need on
``app.state``, start its runners with ``platform.run``; returns what the start-up log line says."""


def create_service_app(spec: ServiceSpec, settings: ServiceSettings, wire: Wiring) -> FastAPI:
    """The FastAPI app of one service: the shared platform around the service's own ``wire``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with platform(app, settings, spec) as p:
            started = await wire(app, p)
            # Everything loaded so far lives as long as the process: keep it out of the
            # collector's full passes, which otherwise pause the event loop for 100 ms at a time.
            gc.freeze()
            log.info(
                "service.started",
                service=settings.service_name,
                http=f"http://{settings.http_host}:{settings.http_port}",
                nats_server=p.bus.server_version,
                **started,
            )
            try:
                yield
            finally:
                log.info("service.stopping", service=settings.service_name)

    return create_app(
        title=spec.title,
        version=spec.version,
        description=spec.description,
        lifespan=lifespan,
        routers=spec.routers,
    )


def serve(build_app: Callable[[ServiceSettings], FastAPI], settings: ServiceSettings) -> None:
    """Serve the app with uvicorn on ``settings.http_host:http_port`` until SIGTERM or SIGINT."""
    uvicorn.run(
        build_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        log_config=None,  # uvicorn's records go through ecs.logs (masked, one format)
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
