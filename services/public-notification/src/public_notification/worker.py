"""The delivery worker of one process: sends due deliveries as soon as this process queued some
(``Context.deliveries_due``) or, for those other replicas queued or that wait for a retry, every
``delivery_poll_s`` seconds."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from .commands import DeliverDue
from .context import Context
from .handlers import handle

log = structlog.get_logger("public-notification")


class DeliveryWorker:
    """Started and stopped with the service (``Platform.run``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deliveries")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for adapter in set(self.ctx.adapters.values()):
            close = getattr(adapter, "close", None)
            if close is not None:
                await close()

    async def _run(self) -> None:
        settings = self.ctx.settings
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ctx.deliveries_due.wait(), settings.delivery_poll_s)
            self.ctx.deliveries_due.clear()
            try:
                while await handle(self.ctx, DeliverDue(settings.delivery_batch)) >= settings.delivery_batch:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database away: the next round tries again
                log.warning(
                    "notification.delivery_round_failed",
                    error=str(exc).splitlines()[0][:300] if str(exc) else repr(exc),
                )
