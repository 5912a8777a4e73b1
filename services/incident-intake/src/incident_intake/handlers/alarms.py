"""Alarms in: every alarm, over HTTP or NATS, goes through the micro-batcher to the ``Correlator``,
which correlates a whole batch in one transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter, Histogram

from ecs.batching import MicroBatcher
from ecs.db import Database, UnitOfWork
from ecs.envelope import new_id, utcnow
from ecs.errors import Transient
from ecs.retry import retrying

from .. import store
from ..commands import ReportAlarms
from ..correlation import IncomingAlarm, IngestResult, OpenIncidentIndex, correlate, max_window, to_incoming
from ..domain import windows_from
from ..settings import IntakeSettings
from .context import Context, envelope

log = structlog.get_logger("incident_intake")

ALARMS = Counter("intake_alarms_total", "Alarms handled", ["via", "outcome"])
INCIDENTS_OPENED = Counter("intake_incidents_opened_total", "Incidents opened by correlation")
INGEST_SECONDS = Histogram("intake_ingest_batch_seconds", "One correlation batch, from lock to commit")
INGEST_SIZE = Histogram(
    "intake_ingest_batch_size", "Alarms per correlation batch", buckets=(1, 5, 20, 50, 100, 250, 500, 1000)
)

EVICT_EVERY_S = 30.0
# Incidents stay in the index this long past the longest window, so an alarm a little late
# still finds its incident without a trip to the database.
EVICT_SLACK = timedelta(minutes=10)


async def report(command: ReportAlarms, ctx: Context) -> list[IngestResult]:
    """Correlate gateway alarms; returns one receipt each, in order. Raises Transient (503, or a
    later redelivery) when the database is unavailable or intake is stopping."""
    pepper = ctx.settings.caller_pepper
    items = [to_incoming(gateway_id, alarm, command.via, pepper) for gateway_id, alarm in command.alarms]
    return await ctx.alarms.submit_many(items)


def alarm_batcher(correlator: Correlator, max_batch: int) -> MicroBatcher[IncomingAlarm, IngestResult]:
    """The micro-batcher in front of ``correlator``: whatever a batch fails with, its alarms'
    senders get Transient, so a gateway retries (503) and a NATS alarm is redelivered."""

    def failure(exc: Exception) -> BaseException:
        return exc if isinstance(exc, Transient) else Transient(f"alarm batch failed: {type(exc).__name__}")

    return MicroBatcher(correlator.ingest, max_batch, name="alarm-ingestor", failure=failure)


class Correlator:
    """Turns batches of alarms into incidents, exactly once, with any number of replicas.

    Each batch runs in one transaction that first bumps the correlation clock: that row lock
    serialises correlation across replicas, and the clock value tells this replica which incidents
    others changed since its last batch, so the index of open incidents stays exact without
    reloading it every time. The decision itself is ``correlation.correlate``.
    """

    def __init__(self, db: Database, settings: IntakeSettings) -> None:
        self.db = db
        self.settings = settings
        self.windows = windows_from(settings.correlation_windows)
        self.max_window = max_window(self.windows)
        self.index = OpenIncidentIndex.for_windows(self.windows)
        self._last_evict = 0.0

    async def ingest(self, items: Sequence[IncomingAlarm]) -> list[IngestResult]:
        """Correlate one batch; one result per alarm, in order. A deadlock or busy database runs
        the batch again; an unreachable one raises Transient. Any failure leaves the index empty,
        to be reloaded: the failed transaction may have changed it half-way."""
        try:
            return await retrying(lambda: self._ingest_once(items), on_retry=self.index.clear)
        except BaseException:
            self.index.clear()
            raise

    async def _ingest_once(self, items: Sequence[IncomingAlarm]) -> list[IngestResult]:
        started = time.perf_counter()
        now = utcnow()
        async with self.db.uow() as uow:
            conn = uow.conn
            rev = await store.tick(conn)
            await self._refresh(uow, rev, min(i.facts.received_at for i in items))
            taken = await store.existing_alarms(conn, [i.key for i in items])
            callers = await store.known_callers(conn, [i.facts.caller_key for i in items if i.facts.caller_key])
            decision = correlate(
                items, self.index, taken, callers, self.windows, self.settings.auto_verify_callers, new_id
            )
            await store.save_correlation(uow, decision, rev, now)
            uow.emit(*(envelope(e) for e in decision.events))
            await uow.commit()
        self.index.rev = rev
        for item, result in zip(items, decision.results, strict=True):
            outcome = "duplicate" if result.duplicate else "correlated" if result.correlated else "opened"
            ALARMS.labels(item.via, outcome).inc()
        INCIDENTS_OPENED.inc(len(decision.opened))
        INGEST_SECONDS.observe(time.perf_counter() - started)
        INGEST_SIZE.observe(len(items))
        return decision.results

    async def _refresh(self, uow: UnitOfWork, rev: int, oldest_alarm: datetime) -> None:
        """Bring the index up to clock revision ``rev - 1`` and back far enough for the batch's
        oldest alarm."""
        conn, index = uow.conn, self.index
        epoch = store.clock_epoch(conn)
        if epoch != index.epoch:  # incidents were deleted: only a full reload can show it
            index.clear()
            index.epoch = epoch
        needed = oldest_alarm - self.max_window
        if index.rev is None or index.floor is None:
            index.floor = needed
            index.put_all(await store.open_incidents_since(conn, needed))
        elif rev - 1 != index.rev:  # another replica wrote meanwhile
            index.put_all(await store.incidents_changed_after(conn, index.rev))
        if needed < index.floor:  # a late alarm: fetch the older incidents it could still join
            index.put_all(await store.open_incidents_since(conn, needed, until=index.floor))
            index.floor = needed
        if time.monotonic() - self._last_evict >= EVICT_EVERY_S:
            self._last_evict = time.monotonic()
            index.evict(oldest_alarm - self.max_window - EVICT_SLACK)
