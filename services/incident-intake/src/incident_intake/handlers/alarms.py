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
from ecs.errors import AppError, InvalidInput
from ecs.retry import db_error_text, refused_input, retrying

from .. import store
from ..commands import ReportAlarms
from ..correlation import (
    AlarmPolicy,
    IncomingAlarm,
    OpenIncidentIndex,
    Outcome,
    admit,
    correlate,
    max_window,
)
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


def policy(settings: IntakeSettings) -> AlarmPolicy:
    """The settings' limits on what an alarm may say (``correlation.AlarmPolicy``)."""
    return AlarmPolicy(
        max_skew=timedelta(seconds=settings.max_clock_skew_s),
        max_age=timedelta(seconds=settings.max_alarm_age_s),
        area=settings.service_area,
        region=settings.caller_region,
    )


async def report(command: ReportAlarms, ctx: Context) -> list[Outcome]:
    """Correlate gateway alarms; returns one outcome each, in order: a receipt, or the error that
    refused that alarm alone (InvalidInput 422 naming the field, Conflict 409 for a reused
    alarm_id). Raises Transient (503, or a later redelivery) only when the database is unavailable
    or intake is stopping."""
    settings, now = ctx.settings, utcnow()
    rules = policy(settings)
    outcomes: list[Outcome | None] = []
    admitted: list[tuple[int, IncomingAlarm]] = []
    for i, (gateway_id, alarm) in enumerate(command.alarms):
        try:
            item = admit(gateway_id, alarm, command.via, settings.caller_pepper, rules, now)
        except InvalidInput as exc:
            outcomes.append(exc)
            continue
        outcomes.append(None)
        admitted.append((i, item))
    if admitted:
        results = await ctx.alarms.submit_many([item for _, item in admitted])
        for (i, _), result in zip(admitted, results, strict=True):
            outcomes[i] = result
    return outcomes  # type: ignore[return-value]


def alarm_batcher(correlator: Correlator, max_batch: int) -> MicroBatcher[IncomingAlarm, Outcome]:
    """The micro-batcher in front of ``correlator``. A batch fails whole only when the database
    is unavailable (Transient: a gateway retries on 503, a NATS alarm is redelivered) or on a
    defect; an alarm that fails on its own is refused on its own by the correlator."""
    return MicroBatcher(correlator.ingest, max_batch, name="alarm-ingestor")


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

    async def ingest(self, items: Sequence[IncomingAlarm]) -> list[Outcome]:
        """Correlate one batch; one outcome per alarm, in order. A deadlock or busy database runs
        the batch again; an unreachable one raises Transient. A batch the database refuses for
        another reason is correlated again alarm by alarm, so only the alarm it refuses fails
        (InvalidInput, recorded among the refusals). Any failure leaves the index empty, to be
        reloaded: the failed transaction may have changed it half-way."""
        try:
            return await self._ingest_retrying(items)
        except Exception as exc:
            if not refused_input(exc):
                raise
            log.warning("intake.batch_refused_isolating", size=len(items), error=db_error_text(exc))
        outcomes: list[Outcome] = []
        for item in items:
            try:
                outcomes += await self._ingest_retrying([item])
            except Exception as exc:
                if not refused_input(exc):
                    raise
                reason = f"the database refused this alarm: {db_error_text(exc)}"
                outcomes.append(InvalidInput(reason, field="alarm"))
                await self._record_refusal(item, reason)
        return outcomes

    async def _ingest_retrying(self, items: Sequence[IncomingAlarm]) -> list[Outcome]:
        try:
            return await retrying(lambda: self._ingest_once(items), on_retry=self.index.clear)
        except BaseException:
            self.index.clear()
            raise

    async def _record_refusal(self, item: IncomingAlarm, reason: str) -> None:
        async with self.db.uow() as uow:
            await store.add_refusals(uow.conn, [(item, reason[:2000])], utcnow())
            await uow.commit()

    async def _ingest_once(self, items: Sequence[IncomingAlarm]) -> list[Outcome]:
        started = time.perf_counter()
        now = utcnow()
        async with self.db.uow() as uow:
            conn = uow.conn
            rev = await store.tick(conn)
            await self._refresh(uow, rev, min(i.facts.received_at for i in items))
            taken = await store.existing_alarms(conn, [i.key for i in items])
            callers = await store.known_callers(conn, [i.facts.caller_key for i in items if i.facts.caller_key])
            decision = correlate(
                items,
                self.index,
                taken.incidents,
                callers,
                self.windows,
                self.settings.auto_verify_callers,
                new_id,
                taken.fingerprints,
            )
            await store.save_correlation(uow, decision, rev, now)
            uow.emit(*(envelope(e) for e in decision.events))
            await uow.commit()
        self.index.rev = rev
        for item, result in zip(items, decision.results, strict=True):
            if isinstance(result, AppError):
                outcome = "refused"
            else:
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
