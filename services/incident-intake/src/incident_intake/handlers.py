"""One function per command or event: load, call the domain, save (with the events, in one
transaction). Alarms go through the Correlator in batches: HTTP and NATS alarms alike."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from ecs.contracts import (
    FactRecorded,
    GatewayAlarm,
    IncidentCreated,
    IncidentMerged,
    IncidentSplit,
    IncidentVerified,
    LevelChanged,
    PerimeterSet,
    StageChanged,
)
from ecs.db import Database, UnitOfWork
from ecs.envelope import Envelope, make_event, new_id
from ecs.errors import Conflict, InvalidInput, NotFound, StaleVersion, Transient
from ecs.geo import gcj02_to_wgs84

from . import domain, store
from .domain import (
    DEFAULT_WINDOWS,
    AlarmFacts,
    Category,
    CorrelationWindow,
    GuardFacts,
    IncidentState,
    Level,
    Perimeter,
    Stage,
)
from .settings import IntakeSettings

log = structlog.get_logger("incident_intake")
SOURCE = "incident-intake"

ALARMS = Counter("intake_alarms_total", "Alarms handled", ["via", "outcome"])
INCIDENTS_OPENED = Counter("intake_incidents_opened_total", "Incidents opened by correlation")
INGEST_SECONDS = Histogram("intake_ingest_batch_seconds", "One correlation batch, from lock to commit")
INGEST_SIZE = Histogram(
    "intake_ingest_batch_size", "Alarms per correlation batch", buckets=(1, 5, 20, 50, 100, 250, 500, 1000)
)


# --- alarms in ------------------------------------------------------------------------------


@dataclass
class IncomingAlarm:
    gateway_id: str
    alarm: GatewayAlarm
    via: str  # "http" | "nats"
    facts: AlarmFacts
    lat: float
    lon: float


@dataclass(frozen=True)
class IngestResult:
    alarm_id: str
    incident_id: str
    duplicate: bool
    correlated: bool


def caller_key(pepper: str, number: str) -> str:
    digits = "".join(ch for ch in number if ch.isdigit() or ch == "+").removeprefix("+86")
    return hmac.new(pepper.encode(), digits.encode(), hashlib.sha256).hexdigest()[:32]


def to_incoming(gateway_id: str, alarm: GatewayAlarm, via: str, pepper: str) -> IncomingAlarm:
    lat, lon = alarm.location.lat, alarm.location.lon
    if alarm.location.crs == "gcj02":
        lat, lon = gcj02_to_wgs84(lat, lon)
    facts = AlarmFacts(
        category=Category(alarm.category),
        lat=lat,
        lon=lon,
        received_at=alarm.received_at.astimezone(UTC),
        caller_key=caller_key(pepper, alarm.caller.number) if alarm.caller else None,
        casualties=alarm.casualties,
        exercise=alarm.exercise,
    )
    return IncomingAlarm(gateway_id, alarm, via, facts, lat, lon)


@dataclass
class _Open:
    """A cached open incident: what correlation needs, plus what it may change."""

    state: IncidentState
    verified: bool
    version: int


def windows_from(overrides: Mapping[str, Mapping[str, float]]) -> dict[Category, CorrelationWindow]:
    windows = dict(DEFAULT_WINDOWS)
    for name, w in overrides.items():
        try:
            cat = Category(name)
        except ValueError:
            raise ValueError(f"correlation_windows: unknown category {name!r}") from None
        windows[cat] = CorrelationWindow(float(w["distance_m"]), float(w["window_s"]))
    return windows


class Correlator:
    """Turns batches of alarms into incidents, exactly once, with any number of replicas.

    Each batch runs in one transaction that first bumps the correlation clock: that row lock
    serialises correlation across replicas, and the clock value tells this replica which incidents
    others changed since its last batch, so the in-memory index of open incidents stays exact
    without reloading it every time.
    """

    def __init__(self, db: Database, settings: IntakeSettings) -> None:
        self.db = db
        self.settings = settings
        self.windows = windows_from(settings.correlation_windows)
        self.max_window = timedelta(seconds=max(w.window_s for w in self.windows.values()))
        max_distance = max(w.distance_m for w in self.windows.values())
        # Cells at least as wide as the largest correlation distance (up to 60° latitude), so
        # a match is always in the alarm's cell or one of its eight neighbours.
        self.cell_deg = max(0.01, max_distance / 111_000 / 0.5)
        self._open: dict[str, _Open] = {}
        self._grid: dict[tuple[int, int], set[str]] = defaultdict(set)
        self._seen_rev: int | None = None
        self._epoch = -1
        self._floor: datetime | None = None  # the cache holds every open incident with last_alarm_at >= floor
        self._last_evict = 0.0

    # -- the cache of open incidents

    def _cell(self, lat: float, lon: float) -> tuple[int, int]:
        return (math.floor(lat / self.cell_deg), math.floor(lon / self.cell_deg))

    def _put(self, row: Any) -> None:
        self._drop(row.id)
        if row.stage not in store.OPEN or row.merged_into is not None:
            return
        state = IncidentState(
            id=row.id,
            category=Category(row.category),
            lat=row.lat,
            lon=row.lon,
            first_alarm_at=row.first_alarm_at,
            last_alarm_at=row.last_alarm_at,
            alarm_count=row.alarm_count,
            caller_count=row.caller_count,
            casualties=row.casualties,
            level=Level(row.level),
            exercise=row.exercise,
            stage=Stage(row.stage),
        )
        self._add(_Open(state, row.verified, row.version))

    def _add(self, inc: _Open) -> None:
        self._open[inc.state.id] = inc
        self._grid[self._cell(inc.state.lat, inc.state.lon)].add(inc.state.id)

    def _drop(self, incident_id: str) -> None:
        inc = self._open.pop(incident_id, None)
        if inc is not None:
            self._grid[self._cell(inc.state.lat, inc.state.lon)].discard(incident_id)

    def invalidate(self) -> None:
        self._open.clear()
        self._grid.clear()
        self._seen_rev = None
        self._floor = None

    async def _refresh(self, uow: UnitOfWork, rev: int, oldest_alarm: datetime) -> None:
        conn = uow.conn
        epoch = store.clock_epoch(conn)
        if epoch != self._epoch:
            self.invalidate()
            self._epoch = epoch
        if self._seen_rev is None:
            self._floor = oldest_alarm - self.max_window
            for row in await store.open_incidents_since(conn, self._floor):
                self._put(row)
        elif rev - 1 != self._seen_rev:
            for row in await store.incidents_changed_after(conn, self._seen_rev):
                self._put(row)
        assert self._floor is not None
        needed = oldest_alarm - self.max_window
        if needed < self._floor:  # a late alarm: fetch the older incidents it could still join
            for row in await store.open_incidents_since(conn, needed, until=self._floor):
                self._put(row)
            self._floor = needed
        self._evict(oldest_alarm)

    def _evict(self, now: datetime) -> None:
        if time.monotonic() - self._last_evict < 30:
            return
        self._last_evict = time.monotonic()
        horizon = now - self.max_window - timedelta(minutes=10)
        if self._floor is not None and horizon <= self._floor:
            return
        for inc_id in [i for i, inc in self._open.items() if inc.state.last_alarm_at < horizon]:
            self._drop(inc_id)
        self._floor = horizon

    def _candidates(self, facts: AlarmFacts) -> list[IncidentState]:
        cx, cy = self._cell(facts.lat, facts.lon)
        found = []
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for inc_id in self._grid.get((cx + dx, cy + dy), ()):
                    found.append(self._open[inc_id].state)
        return found

    # -- one batch

    async def ingest(self, items: Sequence[IncomingAlarm]) -> list[IngestResult]:
        for attempt in range(3):
            try:
                return await self._ingest_once(items)
            except (OperationalError, DBAPIError, OSError, ConnectionError) as exc:
                self.invalidate()
                if attempt == 2:
                    raise Transient(f"database unavailable: {str(exc).splitlines()[0][:200]}") from exc
                await asyncio.sleep(0.2 * (attempt + 1))
            except BaseException:
                self.invalidate()
                raise
        raise AssertionError("unreachable")

    async def _ingest_once(self, items: Sequence[IncomingAlarm]) -> list[IngestResult]:
        started = time.perf_counter()
        now = datetime.now(UTC)
        async with self.db.uow() as uow:
            rev = await store.tick(uow.conn)
            await self._refresh(uow, rev, min(i.facts.received_at for i in items))
            existing = await store.existing_alarms(uow.conn, [(i.gateway_id, i.alarm.alarm_id) for i in items])
            callers = await store.known_callers(uow.conn, [i.facts.caller_key for i in items if i.facts.caller_key])

            results: list[IngestResult] = []
            alarm_rows: list[dict[str, Any]] = []
            new_incidents: list[_Open] = []
            new_callers: list[dict[str, str]] = []
            timeline: list[dict[str, Any]] = []
            events: list[Envelope] = []
            batch_keys: dict[tuple[str, str], str] = {}
            touched: dict[str, _Open] = {}

            for item in items:
                key = (item.gateway_id, item.alarm.alarm_id)
                known = existing.get(key) or batch_keys.get(key)
                if known is not None:
                    results.append(IngestResult(item.alarm.alarm_id, known, duplicate=True, correlated=False))
                    ALARMS.labels(item.via, "duplicate").inc()
                    continue
                facts = item.facts
                match = domain.find_incident(facts, self._candidates(facts), self.windows)
                if match is None:
                    inc = _Open(domain.open_incident(new_id(), facts), verified=False, version=1)
                    self._add(inc)
                    new_incidents.append(inc)
                    if facts.caller_key:
                        callers.add((inc.state.id, facts.caller_key))
                        new_callers.append({"incident_id": inc.state.id, "caller_key": facts.caller_key})
                    events.append(self._created(inc.state, item))
                    timeline.append(
                        _entry(
                            inc.state.id,
                            now,
                            "correlation",
                            "created",
                            {
                                "alarm_id": item.alarm.alarm_id,
                                "gateway_id": item.gateway_id,
                                "level": int(inc.state.level),
                            },
                        )
                    )
                    INCIDENTS_OPENED.inc()
                else:
                    inc = self._open[match.id]
                    new_caller = bool(facts.caller_key) and (match.id, facts.caller_key) not in callers
                    if new_caller:
                        callers.add((match.id, facts.caller_key))  # type: ignore[arg-type]
                        new_callers.append({"incident_id": match.id, "caller_key": facts.caller_key})  # type: ignore[dict-item]
                    for _, change in domain.absorb(match, facts, new_caller):
                        inc.version += 1
                        events.append(
                            self._event(
                                "incident.level.changed",
                                inc.state,
                                LevelChanged(
                                    incident_id=match.id,
                                    from_level=change["from"],
                                    to_level=change["to"],
                                    reason="auto: " + _why(match),
                                    actor="correlation",
                                    version=inc.version,
                                ),
                            )
                        )
                        timeline.append(
                            _entry(
                                match.id,
                                now,
                                "correlation",
                                "level.changed",
                                {"from": change["from"], "to": change["to"], "reason": _why(match)},
                            )
                        )
                    touched[match.id] = inc
                state = inc.state
                if not inc.verified and domain.auto_verified(
                    state.caller_count, False, self.settings.auto_verify_callers
                ):
                    inc.verified = True
                    inc.version += 1
                    events.append(
                        self._event(
                            "incident.verified",
                            state,
                            IncidentVerified(
                                incident_id=state.id, actor="correlation", automatic=True, version=inc.version
                            ),
                        )
                    )
                    timeline.append(
                        _entry(
                            state.id, now, "correlation", "verified", {"automatic": True, "callers": state.caller_count}
                        )
                    )
                batch_keys[key] = state.id
                alarm_rows.append(_alarm_row(item, state.id, now))
                events.append(self._linked(state, item, new_incident=match is None))
                results.append(
                    IngestResult(item.alarm.alarm_id, state.id, duplicate=False, correlated=match is not None)
                )
                ALARMS.labels(item.via, "correlated" if match is not None else "opened").inc()

            new_ids = {i.state.id for i in new_incidents}
            changed = [i for i in touched.values() if i.state.id not in new_ids]
            await self._save(uow, rev, now, alarm_rows, new_incidents, changed, new_callers, timeline)
            uow.emit(*events)
            await uow.commit()
        self._seen_rev = rev
        INGEST_SECONDS.observe(time.perf_counter() - started)
        INGEST_SIZE.observe(len(items))
        return results

    async def _save(
        self,
        uow: UnitOfWork,
        rev: int,
        now: datetime,
        alarm_rows: list[dict[str, Any]],
        new: list[_Open],
        changed: list[_Open],
        callers: list[dict[str, str]],
        timeline: list[dict[str, Any]],
    ) -> None:
        conn = uow.conn
        await self.db.insert_many(conn, store.incidents, [_incident_row(i, rev, now) for i in new])
        if changed:
            t = store.incidents
            await conn.execute(
                update(t)
                .where(t.c.id == bindparam("b_id"))
                .values(
                    alarm_count=bindparam("alarm_count"),
                    caller_count=bindparam("caller_count"),
                    casualties=bindparam("casualties"),
                    first_alarm_at=bindparam("first_alarm_at"),
                    last_alarm_at=bindparam("last_alarm_at"),
                    level=bindparam("level"),
                    verified=bindparam("verified"),
                    version=bindparam("version"),
                    rev=rev,
                    updated_at=now,
                ),
                [
                    {
                        "b_id": i.state.id,
                        "alarm_count": i.state.alarm_count,
                        "caller_count": i.state.caller_count,
                        "casualties": i.state.casualties,
                        "first_alarm_at": i.state.first_alarm_at,
                        "last_alarm_at": i.state.last_alarm_at,
                        "level": int(i.state.level),
                        "verified": i.verified,
                        "version": i.version,
                    }
                    for i in changed
                ],
            )
        await self.db.insert_many(conn, store.alarms, alarm_rows)
        await self.db.insert_many(conn, store.incident_callers, callers)
        await self.db.insert_many(conn, store.timeline, timeline)

    def _event(self, type_: str, state: IncidentState, data: Any, causation: str | None = None) -> Envelope:
        return make_event(
            type_,
            data,
            source=SOURCE,
            incident_id=state.id,
            exercise=state.exercise,
            correlation_id=state.id,
            causation_id=causation,
        )

    def _created(self, state: IncidentState, item: IncomingAlarm) -> Envelope:
        data = IncidentCreated(
            incident_id=state.id,
            category=state.category.value,
            level=int(state.level),
            lat=state.lat,
            lon=state.lon,
            first_alarm_at=state.first_alarm_at,
            alarm_id=item.alarm.alarm_id,
            gateway_id=item.gateway_id,
            exercise=state.exercise,
        )
        return self._event("incident.created", state, data, causation=f"{item.gateway_id}:{item.alarm.alarm_id}")

    def _linked(self, state: IncidentState, item: IncomingAlarm, new_incident: bool) -> Envelope:
        data = {
            "incident_id": state.id,
            "alarm_id": item.alarm.alarm_id,
            "gateway_id": item.gateway_id,
            "category": item.alarm.category,
            "received_at": item.facts.received_at,
            "lat": item.lat,
            "lon": item.lon,
            "alarm_count": state.alarm_count,
            "caller_count": state.caller_count,
            "casualties": state.casualties,
            "new_incident": new_incident,
        }
        # Stable id: a replayed alarm maps to the same message, which JetStream then drops.
        env = self._event("incident.alarm.linked", state, data, causation=f"{item.gateway_id}:{item.alarm.alarm_id}")
        env.id = f"linked:{item.gateway_id}:{item.alarm.alarm_id}"
        return env


def _why(state: IncidentState) -> str:
    return f"{state.casualties} casualties reported, {state.caller_count} callers, category {state.category}"


def _entry(incident_id: str, at: datetime, actor: str, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"incident_id": incident_id, "at": at, "actor": actor, "kind": kind, "detail": detail}


def _incident_row(inc: _Open, rev: int, now: datetime) -> dict[str, Any]:
    s = inc.state
    return {
        "id": s.id,
        "category": s.category.value,
        "stage": s.stage.value,
        "level": int(s.level),
        "exercise": s.exercise,
        "lat": s.lat,
        "lon": s.lon,
        "first_alarm_at": s.first_alarm_at,
        "last_alarm_at": s.last_alarm_at,
        "alarm_count": s.alarm_count,
        "caller_count": s.caller_count,
        "casualties": s.casualties,
        "verified": inc.verified,
        "perimeter": None,
        "facts": {},
        "merged_into": None,
        "split_from": None,
        "version": inc.version,
        "rev": rev,
        "created_at": now,
        "updated_at": now,
    }


def _alarm_row(item: IncomingAlarm, incident_id: str, now: datetime) -> dict[str, Any]:
    a = item.alarm
    return {
        "gateway_id": item.gateway_id,
        "alarm_id": a.alarm_id,
        "incident_id": incident_id,
        "original_incident_id": incident_id,
        "category": a.category,
        "lat": item.lat,
        "lon": item.lon,
        "crs": a.location.crs,
        "reported_lat": a.location.lat,
        "reported_lon": a.location.lon,
        "accuracy_m": a.location.accuracy_m,
        "address": a.location.address,
        "received_at": item.facts.received_at,
        "ingested_at": now,
        "caller_key": item.facts.caller_key,
        "caller_number": a.caller.number if a.caller else None,
        "caller_name": a.caller.name if a.caller else None,
        "description": a.description,
        "casualties": a.casualties,
        "exercise": a.exercise,
        "via": item.via,
    }


class AlarmIngestor:
    """Groups alarms arriving at the same time (HTTP requests, NATS batches) into one
    correlation batch: one transaction and one lock for many alarms, so throughput grows with
    load while a lone alarm still goes through at once."""

    def __init__(self, correlator: Correlator, max_batch: int = 500) -> None:
        self.correlator = correlator
        self.max_batch = max_batch
        self._queue: list[tuple[IncomingAlarm, asyncio.Future[IngestResult]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alarm-ingestor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(Transient("intake is shutting down"))
        self._queue.clear()

    async def submit(self, item: IncomingAlarm) -> IngestResult:
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._wakeup.set()
        return await fut

    async def submit_many(self, items: Sequence[IncomingAlarm]) -> list[IngestResult]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._queue.extend(zip(items, futures, strict=True))
        self._wakeup.set()
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                try:
                    results = await self.correlator.ingest([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(Transient("intake is shutting down"))
                    raise
                except Exception as exc:
                    log.warning(
                        "ingest.batch_failed",
                        size=len(batch),
                        error=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                    )
                    err = exc if isinstance(exc, Transient) else Transient(f"alarm batch failed: {type(exc).__name__}")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)


# --- operator commands ----------------------------------------------------------------------


def guard_facts(row: Any) -> GuardFacts:
    facts = row.facts or {}
    return GuardFacts(
        verified=bool(row.verified),
        perimeter=Perimeter.from_dict(row.perimeter) if row.perimeter else None,
        perimeter_units_on_scene=bool(facts.get("perimeter_units_on_scene")),
        hazard_under_control=bool(facts.get("hazard_under_control")),
        statement_published=bool(facts.get("statement_published")),
        after_action_report=bool(facts.get("after_action_report")),
        settled=dict(facts.get("settled") or {}),
    )


class IncidentCommands:
    """What dispatchers and commanders do to an incident. Each command is one transaction:
    bump the clock (serialising with correlation), check the version the operator saw, ask the
    domain, write only if the version is still the same, record the timeline and the events."""

    def __init__(self, db: Database, settings: IntakeSettings) -> None:
        self.db = db
        self.settings = settings

    async def _load(self, uow: UnitOfWork, incident_id: str, expected_version: int | None) -> tuple[Any, int]:
        rev = await store.tick(uow.conn)
        row = await store.get_incident(uow.conn, incident_id)
        if row is None:
            raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
        if row.merged_into:
            raise Conflict(f"incident {incident_id} was merged into {row.merged_into}", merged_into=row.merged_into)
        if expected_version is not None and row.version != expected_version:
            raise StaleVersion(
                f"incident {incident_id} is at version {row.version}, not {expected_version}: reload and decide again",
                current_version=row.version,
            )
        return row, rev

    @staticmethod
    def _require_open(row: Any, action: str) -> None:
        if row.stage not in store.OPEN:
            raise Conflict(f"cannot {action}: incident {row.id} is {row.stage}", stage=row.stage)

    async def _write(
        self,
        uow: UnitOfWork,
        row: Any,
        rev: int,
        actor: str,
        kind: str,
        detail: dict[str, Any],
        values: dict[str, Any],
        event: tuple[str, Any] | None,
    ) -> Any:
        now = datetime.now(UTC)
        if not await store.update_incident(uow.conn, row.id, row.version, rev=rev, updated_at=now, **values):
            raise StaleVersion(f"incident {row.id} changed meanwhile: reload it and decide again")
        await store.add_timeline(uow.conn, [_entry(row.id, now, actor, kind, detail)])
        if event is not None:
            type_, data = event
            uow.emit(
                make_event(type_, data, source=SOURCE, incident_id=row.id, exercise=row.exercise, correlation_id=row.id)
            )
        fresh = await store.get_incident(uow.conn, row.id)
        await uow.commit()
        return fresh

    async def verify(self, incident_id: str, version: int, actor: str) -> Any:
        async with self.db.uow() as uow:
            row, rev = await self._load(uow, incident_id, version)
            self._require_open(row, "verify")
            if row.verified:
                raise Conflict(f"incident {incident_id} is already verified")
            data = IncidentVerified(incident_id=row.id, actor=actor, automatic=False, version=row.version + 1)
            return await self._write(
                uow, row, rev, actor, "verified", {"automatic": False}, {"verified": True}, ("incident.verified", data)
            )

    async def set_perimeter(self, incident_id: str, version: int, perimeter: Perimeter, actor: str) -> Any:
        async with self.db.uow() as uow:
            row, rev = await self._load(uow, incident_id, version)
            self._require_open(row, "set a perimeter")
            shape = perimeter.to_dict()
            data = PerimeterSet(incident_id=row.id, perimeter=shape, actor=actor, version=row.version + 1)
            return await self._write(
                uow,
                row,
                rev,
                actor,
                "perimeter.set",
                {"perimeter": shape},
                {"perimeter": shape},
                ("incident.perimeter.set", data),
            )

    async def change_stage(
        self, incident_id: str, version: int, target: Stage, actor: str, reason: str | None = None
    ) -> Any:
        trigger = domain.TRIGGER_FOR_TARGET.get(target)
        if trigger is None:
            raise InvalidInput(f"no transition leads to stage {target!s}", field="stage")
        async with self.db.uow() as uow:
            row, rev = await self._load(uow, incident_id, version)
            stage = Stage(row.stage)
            domain.next_stage(stage, trigger)  # raises IllegalTransition naming the allowed steps
            missing = domain.check_guard(
                stage,
                trigger,
                guard_facts(row),
                self.settings.required_participants,
                domain.DISPATCH in self.settings.required_participants,
            )
            if missing:
                raise domain.errors.IllegalTransition(
                    f"cannot move incident {row.id} from {stage} to {target}: " + "; ".join(missing),
                    missing=missing,
                    stage=str(stage),
                )
            data = StageChanged(
                incident_id=row.id,
                from_stage=str(stage),
                to_stage=str(target),
                actor=actor,
                version=row.version + 1,
                category=row.category,
                level=row.level,
                lat=row.lat,
                lon=row.lon,
                perimeter=row.perimeter,
                reason=reason,
            )
            detail = {"from": str(stage), "to": str(target), "reason": reason}
            return await self._write(
                uow, row, rev, actor, "stage.changed", detail, {"stage": str(target)}, ("incident.stage.changed", data)
            )

    async def change_level(self, incident_id: str, version: int, level: Level, actor: str, reason: str) -> Any:
        async with self.db.uow() as uow:
            row, rev = await self._load(uow, incident_id, version)
            self._require_open(row, "change the level")
            if row.level == int(level):
                raise Conflict(f"incident {incident_id} is already level {Level(level).name}")
            data = LevelChanged(
                incident_id=row.id,
                from_level=row.level,
                to_level=int(level),
                reason=reason,
                actor=actor,
                version=row.version + 1,
            )
            detail = {"from": row.level, "to": int(level), "reason": reason}
            return await self._write(
                uow, row, rev, actor, "level.changed", detail, {"level": int(level)}, ("incident.level.changed", data)
            )

    async def record_fact(self, incident_id: str, version: int, fact: str, actor: str, note: str = "") -> Any:
        async with self.db.uow() as uow:
            row, rev = await self._load(uow, incident_id, version)
            self._require_open(row, f"record {fact}")
            facts = dict(row.facts or {})
            facts[fact] = True
            if note:
                facts[f"{fact}_note"] = note
            data = FactRecorded(incident_id=row.id, fact=fact, actor=actor, version=row.version + 1)  # type: ignore[arg-type]
            return await self._write(
                uow, row, rev, actor, f"fact.{fact}", {"note": note}, {"facts": facts}, ("incident.fact.recorded", data)
            )

    async def merge(self, target_id: str, target_version: int, source_id: str, source_version: int, actor: str) -> Any:
        if target_id == source_id:
            raise InvalidInput("an incident cannot be merged into itself", field="source_incident_id")
        async with self.db.uow() as uow:
            target, rev = await self._load(uow, target_id, target_version)
            source = await store.get_incident(uow.conn, source_id)
            if source is None:
                raise NotFound(f"incident {source_id} not found", incident_id=source_id)
            if source.version != source_version:
                raise StaleVersion(
                    f"incident {source_id} is at version {source.version}, not {source_version}",
                    current_version=source.version,
                )
            for row in (target, source):
                self._require_open(row, "merge")
            if source.merged_into:
                raise Conflict(f"incident {source_id} was already merged into {source.merged_into}")
            if source.exercise != target.exercise:
                raise Conflict("an exercise incident and a live incident cannot be merged")
            now = datetime.now(UTC)
            a = store.alarms
            moved = (
                await uow.conn.execute(update(a).where(a.c.incident_id == source_id).values(incident_id=target_id))
            ).rowcount
            await self._rebuild_callers(uow, [target_id, source_id])
            counts = await store.recount(uow.conn, target_id)
            values = {
                **counts,
                "level": min(target.level, source.level),
                "verified": target.verified or source.verified,
            }
            if not await store.update_incident(
                uow.conn,
                source_id,
                source.version,
                rev=rev,
                updated_at=now,
                merged_into=target_id,
                alarm_count=0,
                caller_count=0,
            ):
                raise StaleVersion(f"incident {source_id} changed meanwhile")
            await store.add_timeline(
                uow.conn,
                [_entry(source_id, now, actor, "merged.into", {"incident_id": target_id, "alarms_moved": moved})],
            )
            data = IncidentMerged(incident_id=target_id, merged_incident_id=source_id, alarms_moved=moved, actor=actor)
            return await self._write(
                uow,
                target,
                rev,
                actor,
                "merged",
                {"merged_incident_id": source_id, "alarms_moved": moved},
                values,
                ("incident.merged", data),
            )

    async def split(
        self, incident_id: str, version: int, alarm_refs: Sequence[tuple[str, str]], actor: str
    ) -> tuple[Any, Any]:
        if not alarm_refs:
            raise InvalidInput("name at least one alarm to split out", field="alarms")
        async with self.db.uow() as uow:
            row, rev = await self._load(uow, incident_id, version)
            self._require_open(row, "split")
            a = store.alarms
            picked = (
                await uow.conn.execute(
                    select(a).where(a.c.incident_id == incident_id).order_by(a.c.received_at, a.c.seq)
                )
            ).all()
            wanted = set(alarm_refs)
            moving = [r for r in picked if (r.gateway_id, r.alarm_id) in wanted]
            unknown = wanted - {(r.gateway_id, r.alarm_id) for r in moving}
            if unknown:
                gw, al = sorted(unknown)[0]
                raise InvalidInput(f"alarm {gw}:{al} does not belong to incident {incident_id}", field="alarms")
            if len(moving) == len(picked):
                raise Conflict("splitting out every alarm would leave the incident empty: cancel or merge instead")
            now = datetime.now(UTC)
            first = moving[0]
            facts = AlarmFacts(
                category=Category(first.category),
                lat=first.lat,
                lon=first.lon,
                received_at=first.received_at,
                exercise=first.exercise,
            )
            state = domain.open_incident(new_id(), facts)
            new_row = _incident_row(_Open(state, verified=False, version=1), rev, now) | {"split_from": incident_id}
            await uow.conn.execute(store.incidents.insert().values(**new_row))
            await uow.conn.execute(update(a).where(a.c.seq.in_([r.seq for r in moving])).values(incident_id=state.id))
            await self._rebuild_callers(uow, [incident_id, state.id])
            new_counts = await store.recount(uow.conn, state.id)
            new_level = domain.estimate_level(state.category, new_counts["casualties"], new_counts["caller_count"])
            await uow.conn.execute(
                update(store.incidents)
                .where(store.incidents.c.id == state.id)
                .values(**new_counts, level=int(new_level))
            )
            await store.add_timeline(
                uow.conn,
                [_entry(state.id, now, actor, "split.from", {"incident_id": incident_id, "alarms": len(moving)})],
            )
            refs = [f"{r.gateway_id}:{r.alarm_id}" for r in moving]
            created = IncidentCreated(
                incident_id=state.id,
                category=state.category.value,
                level=int(new_level),
                lat=state.lat,
                lon=state.lon,
                first_alarm_at=new_counts["first_alarm_at"],
                alarm_id=first.alarm_id,
                gateway_id=first.gateway_id,
                exercise=state.exercise,
            )
            uow.emit(
                make_event(
                    "incident.created",
                    created,
                    source=SOURCE,
                    incident_id=state.id,
                    exercise=state.exercise,
                    correlation_id=state.id,
                )
            )
            counts = await store.recount(uow.conn, incident_id)
            data = IncidentSplit(incident_id=incident_id, new_incident_id=state.id, alarm_ids=refs, actor=actor)
            old = await self._write(
                uow,
                row,
                rev,
                actor,
                "split",
                {"new_incident_id": state.id, "alarms": refs},
                counts,
                ("incident.split", data),
            )
        return old, await self.get(state.id)

    async def _rebuild_callers(self, uow: UnitOfWork, incident_ids: list[str]) -> None:
        c, a = store.incident_callers, store.alarms
        await uow.conn.execute(delete(c).where(c.c.incident_id.in_(incident_ids)))
        pairs = (
            select(a.c.incident_id, a.c.caller_key)
            .where(a.c.incident_id.in_(incident_ids), a.c.caller_key.is_not(None))
            .distinct()
        )
        await uow.conn.execute(c.insert().from_select(["incident_id", "caller_key"], pairs))

    async def get(self, incident_id: str) -> Any:
        async with self.db.engine.connect() as conn:
            row = await store.get_incident(conn, incident_id)
        if row is None:
            raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
        return row

    # -- facts from other services (NATS), each exactly once through the inbox

    async def apply_fact(
        self, envelope: Envelope, consumer: str, fact: str, value: Any, participant: str | None = None
    ) -> bool:
        """Returns False for an unknown incident (the caller dead-letters it)."""
        async with self.db.uow() as uow:
            if not await uow.first_time(consumer, envelope.id):
                return True
            rev = await store.tick(uow.conn)
            row = await store.get_incident(uow.conn, envelope.incident_id or "")
            if row is None:
                return False
            facts = dict(row.facts or {})
            if participant is not None:
                settled = dict(facts.get("settled") or {})
                settled[participant] = bool(value)
                facts["settled"] = settled
            else:
                facts[fact] = value
            now = datetime.now(UTC)
            t = store.incidents
            await uow.conn.execute(update(t).where(t.c.id == row.id).values(facts=facts, rev=rev, updated_at=now))
            detail = {"fact": fact, "value": value, "participant": participant, "message_id": envelope.id}
            await store.add_timeline(uow.conn, [_entry(row.id, now, envelope.source, f"fact.{fact}", detail)])
            await uow.commit()
        return True
