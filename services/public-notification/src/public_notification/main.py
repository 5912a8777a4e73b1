"""Composition root: the service's spec and its wiring on the shared platform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ecs.bus import ConsumerRunner
from ecs.envelope import utcnow
from ecs.service import Platform, ServiceSpec, create_service_app, serve

from . import api, commands, consumers
from .channels import default_adapters
from .context import Context
from .handlers import handle
from .settings import NotificationSettings
from .targets import TargetDirectory
from .worker import DeliveryWorker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version_notification"

SPEC = ServiceSpec(
    title="public-notification",
    description="CAP 1.2 alerts with two-person approval, official statements on the release clocks, "
    "the rumor register and exercise isolation.",
    migrations=MIGRATIONS,
    version_table=VERSION_TABLE,
    streams=consumers.STREAMS,
    consumers=consumers.CONSUMERS,
    routers=[api.alerts_api, api.statements_api, api.rumors_api, api.channels_api, api.public_api],
)


def build_app(settings: NotificationSettings | None = None) -> FastAPI:
    """The public-notification app for ``settings`` (default: from the environment, NOTIFICATION_*)."""
    settings = settings or NotificationSettings()

    async def wire(app: FastAPI, p: Platform) -> dict[str, Any]:
        adapters = default_adapters(Path(settings.channel_outbox), settings.webhook_timeout_s)
        directory = TargetDirectory(p.db)
        indexed = await directory.refresh()
        ctx = Context(p.db, settings, adapters, directory)
        app.state.notification = ctx

        async def sweep() -> None:  # every replica sweeps; the database lets each change happen once
            now = utcnow()
            await handle(ctx, commands.SweepClocks(now))
            await handle(ctx, commands.ExpireAlerts(now))

        p.every(settings.clock_sweep_s, sweep, "clock-sweep")
        p.every(settings.targets_refresh_s, directory.refresh, "targets-refresh")
        await p.run(
            ConsumerRunner(
                p.bus,
                consumers.INCIDENT_CONSUMER,
                consumers.events_handler(ctx, consumers.INCIDENT_CONSUMER, consumers.INCIDENT_EVENTS),
                settings.incident_batch,
                settings.max_deliver,
            ),
            ConsumerRunner(
                p.bus,
                consumers.PLAN_CONSUMER,
                consumers.events_handler(ctx, consumers.PLAN_CONSUMER, consumers.PLAN_EVENTS),
                50,
                settings.max_deliver,
            ),
            DeliveryWorker(ctx),
        )
        return {"targets": indexed}

    return create_service_app(SPEC, settings, wire)


def run() -> None:
    """The ``public-notification`` console script: serve the app."""
    serve(build_app, NotificationSettings())
