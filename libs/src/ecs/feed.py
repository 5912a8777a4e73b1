"""A high-rate feed on JetStream: a durable push consumer shared by a queue group, batched in memory.

``ecs.bus.ConsumerRunner`` pulls with ``fetch()``, which in nats-py costs tens of microseconds a
message (a timer per message, a task per ack). A feed of thousands of small messages a second (vehicle
positions) is several times cheaper delivered by push to a callback and batched here. The rules
are ConsumerRunner's: the handler gets a batch and returns {index: poison reason}; acks go out only
after it returned (so after its commit); poison goes to the dead-letter subject with the reason; a
``Transient`` failure naks the batch with backoff; a batch that keeps failing is dead-lettered
after ``max_deliver`` attempts. In flight is bounded by the consumer's ``max_ack_pending`` (the
server stops delivering) and one batch is handled at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import api

from .bus import BATCH_SECONDS, PROCESSED, RETRIED, BatchHandler, Bus, _delivered, _first_line
from .errors import Transient
from .stopping import step, stop_task

log = structlog.get_logger("ecs.feed")

FEED_PREFIX = "_feed"
"""Feeds are pushed to ``_feed.<durable>``; only the consumer's service may subscribe there."""


@dataclass(frozen=True)
class FeedSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30
    max_ack_pending: int = 20_000

    @property
    def deliver_subject(self) -> str:
        """Where the server pushes; outside every stream's subjects."""
        return f"{FEED_PREFIX}.{self.durable}"

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            deliver_subject=self.deliver_subject,
            deliver_group=self.durable,  # replicas share the feed: each message goes to one of them
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
        )


class FeedConsumer:
    def __init__(
        self,
        bus: Bus,
        spec: FeedSpec,
        handle: BatchHandler,
        max_batch: int = 2000,
        max_wait_s: float = 0.05,
        max_deliver: int = 8,
    ) -> None:
        self.bus = bus
        self.spec = spec
        self.handle = handle
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_deliver = max_deliver
        self._buffer: list[Msg] = []
        self._full = asyncio.Event()
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Create (or confirm) the durable push consumer, then subscribe; safe from every replica."""
        await self.bus.js.add_consumer(self.spec.stream, self.spec.config())
        self._sub = await self.bus.nc.subscribe(
            self.spec.deliver_subject,
            queue=self.spec.durable,
            cb=self._on_msg,
            pending_msgs_limit=2 * self.spec.max_ack_pending,
            pending_bytes_limit=256 * 1024 * 1024,
        )
        self._task = asyncio.create_task(self._run(), name=f"feed:{self.spec.durable}")

    async def stop(self) -> None:
        """Stop taking messages; what is buffered and not yet handled is redelivered after ack_wait."""
        self._stopping = True
        if self._sub is not None:
            await step(self._sub.unsubscribe(), f"feed {self.spec.durable}: unsubscribe", within_s=5.0)
            self._sub = None
        if self._task is not None:
            await stop_task(self._task, f"feed {self.spec.durable}")
            self._task = None

    async def _on_msg(self, msg: Msg) -> None:
        self._buffer.append(msg)
        if len(self._buffer) >= self.max_batch:
            self._full.set()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            self._full.clear()
            if not self._buffer:
                continue
            batch = self._buffer[: self.max_batch]
            del self._buffer[: self.max_batch]
            if len(self._buffer) >= self.max_batch:
                self._full.set()
            try:
                await self.process(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the loop die: unacked messages come back anyway
                if self._stopping:
                    return
                log.warning("feed.settle_failed", consumer=self.spec.durable, error=_first_line(exc))

    async def process(self, msgs: list[Msg]) -> None:
        durable = self.spec.durable
        try:
            with BATCH_SECONDS.labels(durable).time():
                rejected = await self.handle(msgs)
        except Exception as exc:
            if not isinstance(exc, Transient):
                log.exception("feed.batch_failed", consumer=durable, size=len(msgs))
            await self._retry_later(msgs, exc)
            return
        for i, reason in rejected.items():
            await self.bus.dead_letter(msgs[i], reason, durable)
        for m in msgs:
            with contextlib.suppress(Exception):
                await m.ack()
        PROCESSED.labels(durable).inc(len(msgs) - len(rejected))

    async def _retry_later(self, msgs: list[Msg], exc: BaseException) -> None:
        durable = self.spec.durable
        delivered = max((_delivered(m) for m in msgs), default=1)
        if delivered >= self.max_deliver:
            for m in msgs:
                await self.bus.dead_letter(m, f"failed {delivered} times: {_first_line(exc)}", durable)
                with contextlib.suppress(Exception):
                    await m.ack()
            return
        delay = min(30.0, 0.25 * 2 ** (delivered - 1))
        RETRIED.labels(durable).inc(len(msgs))
        log.warning("feed.retry_later", consumer=durable, size=len(msgs), delay_s=delay, error=_first_line(exc))
        for m in msgs:
            with contextlib.suppress(Exception):
                await m.nak(delay=delay)
