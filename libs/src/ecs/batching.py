"""Micro-batching: work items that arrive at about the same time (HTTP requests, NATS batches) go
through one flush together, so one transaction and one lock serve many items. Throughput grows
with load while a lone item still goes through at once: nothing waits for a batch to fill."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog

from .errors import Transient
from .stopping import stop_task

log = structlog.get_logger("ecs.batching")

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[list[R]]]


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


class MicroBatcher(Generic[T, R]):
    """Coalesces submitted items into batches of at most ``max_batch`` for ``flush``.

    ``flush(items)`` returns one result per item, in the same order; each submitter gets its own.
    When a flush raises, every submitter of that batch gets the error ``failure(exc)`` maps it to
    (the error itself by default) and the next batch goes on. Items still waiting when the batcher
    stops get ``Transient``: they were never attempted, so trying again later is safe.

    Batches run one at a time, in arrival order. ``start`` and ``stop`` follow the service runner
    protocol (``ecs.service.Runner``).
    """

    def __init__(
        self,
        flush: Flush[T, R],
        max_batch: int = 500,
        name: str = "micro-batcher",
        failure: Callable[[Exception], BaseException] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.flush = flush
        self.max_batch = max_batch
        self.name = name
        self.failure = failure or (lambda exc: exc)
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Begin flushing in a background task."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the running flush (its submitters get Transient) and refuse what still waits."""
        self._stopping = True
        if self._task:
            await stop_task(self._task, self.name)
            self._task = None
        self._refuse(self._queue)
        self._queue.clear()

    async def submit(self, item: T) -> R:
        """Queue one item; returns its result once its batch is flushed, or raises its error."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._wakeup.set()
        return await fut

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Queue several items at once (they may still be flushed in different batches); returns
        their results in order, or raises the first error among them."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futures, strict=True))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    def _refuse(self, waiting: Sequence[tuple[T, asyncio.Future[R]]]) -> None:
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(Transient(f"{self.name} is shutting down"))

    async def _run(self) -> None:
        while not self._stopping:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and not self._stopping:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self.flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: flush returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            self._refuse(batch)
            raise
        except Exception as exc:
            log.warning("batch.flush_failed", batcher=self.name, size=len(batch), error=_first_line(exc))
            err = self.failure(exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)
