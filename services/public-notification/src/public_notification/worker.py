"""The delivery worker of one process: sends due deliveries as soon as this process queued some
(``Context.deliveries_due``) or, for those other replicas queued or that wait for a retry, every
``delivery_poll_s`` seconds.

It leases and records through database connections of its own (two at most), not the pool the
API and the consumers share: when a burst of requests holds every pooled connection (sixty
publications of one incident, each waiting for the incident's lock), the deliveries already
queued still go out instead of waiting in line for a connection behind them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import structlog

from ecs.db import Database
from ecs.stopping import step, stop_task

from .commands import DeliverDue
from .context import Context
from .handlers import handle

log = structlog.get_logger("public-notification")


class DeliveryWorker:
    """Started and stopped with the service (``Platform.run``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._db: Database | None = None

    async def start(self) -> None:
        self._stopping = False
        self._db = Database(self.ctx.settings.database_url, pool_size=2)
        self._task = asyncio.create_task(self._run(dataclasses.replace(self.ctx, db=self._db)), name="deliveries")

    async def stop(self) -> None:
        self._stopping = True
        await stop_task(self._task, "deliveries")
        self._task = None
        if self._db is not None:
            await step(self._db.dispose(), "dispose of the delivery worker's database engine")
            self._db = None
        for adapter in set(self.ctx.adapters.values()):
            close = getattr(adapter, "close", None)
            if close is not None:
                await step(close(), f"close the {type(adapter).__name__} channel", within_s=5.0)

    async def _run(self, ctx: Context) -> None:
        settings = ctx.settings
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.deliveries_due.wait(), settings.delivery_poll_s)
            ctx.deliveries_due.clear()
            try:
                while await handle(ctx, DeliverDue(settings.delivery_batch)) >= settings.delivery_batch:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: the next round tries again
                if self._stopping:  # the stop's cancellation, turned into an error on its way
                    return
                log.warning(
                    "notification.delivery_round_failed",
                    error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc),
                )
