"""One function per command or event: load, call the domain, save with the events in one
transaction.

Two caches of the database live in memory, which stays the truth: the active plans (plans.py) and
the unit index recommendations are made from (directory.py). A stale cache costs a retry, never a
wrong assignment: units are claimed with a conditional UPDATE, so a unit another replica took
meanwhile simply is not claimed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

from ecs.contracts import (
    IncidentCreated,
    IncidentMerged,
    LevelChanged,
    ParticipantSettled,
    PerimeterSecured,
    StageChanged,
    UnitAssigned,
    UnitRegistered,
    UnitReleased,
    UnitStatusChanged,
)
from ecs.db import Database, UnitOfWork
from ecs.envelope import Envelope, make_event
from ecs.errors import Conflict, InvalidInput, NotFound, StaleVersion, Transient
from ecs.geo import haversine_m
from ecs.vocabulary import TERMINAL_STAGES, Participant, Stage

from . import store
from .directory import UnitDirectory
from .domain import (
    RecommendationResult,
    UnitStatus,
    UnitType,
    check_status_change,
    units_to_add,
    units_to_release,
)
from .plans import SOURCE, PlanBook
from .settings import DispatchSettings

log = structlog.get_logger("dispatch")

ASSIGNED = Counter("dispatch_units_assigned_total", "Units assigned to incidents", ["source"])
RELEASED = Counter("dispatch_units_released_total", "Units released from incidents")
SHORTFALLS = Counter("dispatch_shortfalls_total", "Plan requirements that found too few units", ["unit_type"])
POSITIONS = Counter("dispatch_positions_total", "Vehicle position reports written")
AUTOMATION_SECONDS = Histogram(
    "dispatch_automation_seconds",
    "One incident event, from the lock to the commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5),
)

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def incident_lock(incident_id: str) -> str:
    return f"dispatch:incident:{incident_id}"


def assignment_stage(incident_stage: str) -> Stage:
    """What a unit sent now is for: the perimeter until handling starts, handling after."""
    return Stage.isolation if incident_stage in (Stage.reported, Stage.isolation) else Stage.handling


def _db_error(exc: DBAPIError) -> str:
    return str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0][:200]


def _retryable(exc: DBAPIError) -> bool:
    """Deadlocks and serialisation failures (PostgreSQL) or a busy SQLite: try the work again."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in ("40P01", "40001", "55P03"):
        return True
    return "database is locked" in str(orig)


async def retrying(work: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
    """Run one transaction, again after a deadlock; a lost database becomes Transient."""
    for attempt in range(attempts):
        try:
            return await work()
        except IntegrityError:
            raise
        except DBAPIError as exc:
            if exc.connection_invalidated or not _retryable(exc):
                if exc.connection_invalidated or isinstance(exc.orig, OSError | ConnectionError):
                    raise Transient(f"database unavailable: {_db_error(exc)}") from exc
                raise
            if attempt == attempts - 1:
                raise Transient(f"gave up after {attempts} attempts: {_db_error(exc)}") from exc
            await asyncio.sleep(random.uniform(0.01, 0.05) * 2**attempt)
        except (OSError, ConnectionError) as exc:
            raise Transient(f"database unavailable: {exc}") from exc
    raise AssertionError("unreachable")


# --- commands and events ----------------------------------------------------------------------


@dataclasses.dataclass
class UnitSpec:
    id: str
    unit_type: UnitType
    district: str
    home_station: str
    lat: float
    lon: float
    callsign: str = ""
    capabilities: tuple[str, ...] = ()
    exercise: bool = False
    status: UnitStatus = UnitStatus.AVAILABLE


@dataclasses.dataclass
class Outcome:
    """What an assignment command did: the assignments made and what could not be found."""

    assignments: list[dict[str, Any]]
    shortfalls: list[str]


class Dispatcher:
    def __init__(self, db: Database, settings: DispatchSettings, plans: PlanBook, directory: UnitDirectory) -> None:
        self.db = db
        self.settings = settings
        self.plans = plans
        self.directory = directory

    # -- transactions that change units: afterwards (committed or not) the index re-reads them

    async def _changing_units(self, work: Callable[[_Tx], Awaitable[T]], actor: str, cause: Envelope | None) -> T:
        async def attempt() -> T:
            tx = _Tx(actor, cause)
            try:
                return await work(tx)
            finally:
                if tx.touched:
                    await asyncio.shield(self.directory.reload_units(tx.touched))

        return await retrying(attempt)

    def _event(self, type_: str, data: Any, incident: Any | None, cause: Envelope | None = None) -> Envelope:
        incident_id = incident.id if incident is not None else None
        return make_event(
            type_,
            data,
            source=SOURCE,
            incident_id=incident_id,
            exercise=bool(incident.exercise) if incident is not None else False,
            correlation_id=(cause.correlation_id if cause is not None and cause.correlation_id else incident_id),
            causation_id=cause.id if cause is not None else None,
        )

    # -- units

    async def register_units(self, specs: Sequence[UnitSpec], actor: str) -> list[Any]:
        ids = [s.id for s in specs]
        repeated = sorted(i for i, n in Tally(ids).items() if n > 1)
        if repeated:
            raise InvalidInput(f"unit {repeated[0]} is listed twice", field="units")

        async def work() -> list[Any]:
            now = _now()
            async with self.db.uow() as uow:
                existing = await store.existing_unit_ids(uow.conn, ids)
                if existing:
                    first = sorted(existing)[0]
                    raise Conflict(f"unit {first} is already registered", unit_id=first, existing=sorted(existing))
                rows = [
                    {
                        "id": s.id,
                        "callsign": s.callsign or s.id,
                        "agency": UnitType(s.unit_type).agency.value,
                        "unit_type": UnitType(s.unit_type).value,
                        "capabilities": sorted(set(s.capabilities)),
                        "home_station": s.home_station,
                        "district": s.district,
                        "lat": s.lat,
                        "lon": s.lon,
                        "location_at": now,
                        "status": UnitStatus(s.status).value,
                        "incident_id": None,
                        "exercise": s.exercise,
                        "lent_to_drill": None,
                        "version": 1,
                        "changed_at": now,
                        "created_at": now,
                    }
                    for s in specs
                ]
                try:
                    await uow.conn.execute(store.units.insert(), rows)
                except IntegrityError:
                    raise Conflict("a unit with one of these ids was registered meanwhile") from None
                uow.emit(*(self._unit_event("dispatch.unit.registered", r, actor) for r in rows))
                fresh = await store.get_units(uow.conn, ids)
                await uow.commit()
            return [fresh[i] for i in ids]

        rows = await retrying(work)
        self.directory.apply(rows)
        return rows

    def _unit_event(self, type_: str, row: Any, actor: str) -> Envelope:
        get = row.get if isinstance(row, dict) else row._mapping.get
        data = UnitRegistered(
            unit_id=get("id"),
            callsign=get("callsign"),
            agency=get("agency"),
            unit_type=get("unit_type"),
            capabilities=list(get("capabilities") or []),
            home_station=get("home_station"),
            district=get("district"),
            exercise=get("exercise"),
            lent_to_drill=get("lent_to_drill"),
            actor=actor,
        )
        return make_event(type_, data, source=SOURCE, exercise=bool(get("exercise")))

    async def get_unit(self, unit_id: str) -> Any:
        async with self.db.engine.connect() as conn:
            row = await store.get_unit(conn, unit_id)
        if row is None:
            raise NotFound(f"unit {unit_id} not found", unit_id=unit_id)
        return row

    async def update_unit(self, unit_id: str, version: int, changes: Mapping[str, Any], actor: str) -> Any:
        allowed = {"callsign", "capabilities", "home_station", "district"}
        values = {k: v for k, v in changes.items() if k in allowed}
        if "capabilities" in values:
            values["capabilities"] = sorted(set(values["capabilities"]))

        async def work() -> Any:
            async with self.db.uow() as uow:
                row = await store.get_unit(uow.conn, unit_id)
                if row is None:
                    raise NotFound(f"unit {unit_id} not found", unit_id=unit_id)
                u = store.units.c
                res = await uow.conn.execute(
                    store.units.update()
                    .where(u.id == unit_id, u.version == version)
                    .values(**values, version=u.version + 1, changed_at=_now())
                    .returning(*store.units.c)
                )
                fresh = res.first()
                if fresh is None:
                    raise StaleVersion(
                        f"unit {unit_id} is at version {row.version}, not {version}: reload it and decide again",
                        current_version=row.version,
                    )
                uow.emit(self._unit_event("dispatch.unit.updated", fresh, actor))
                await uow.commit()
            return fresh

        row = await retrying(work)
        self.directory.apply([row])
        return row

    async def remove_unit(self, unit_id: str, actor: str) -> None:
        async def work() -> None:
            async with self.db.uow() as uow:
                row = await store.get_unit(uow.conn, unit_id)
                if row is None:
                    raise NotFound(f"unit {unit_id} not found", unit_id=unit_id)
                u = store.units.c
                res = await uow.conn.execute(
                    store.units.delete().where(u.id == unit_id, u.status.in_(("available", "out_of_service")))
                )
                if res.rowcount != 1:
                    raise _busy(row)
                uow.emit(self._unit_event("dispatch.unit.removed", row, actor))
                await uow.commit()

        await retrying(work)
        self.directory.forget(unit_id)

    async def lend(self, unit_id: str, drill: str | None, actor: str) -> Any:
        """Lend a live unit to drills (``drill``) or take it back (None, releasing any exercise job)."""

        async def work() -> Any:
            async with self.db.uow() as uow:
                row = await store.get_unit(uow.conn, unit_id)
                if row is None:
                    raise NotFound(f"unit {unit_id} not found", unit_id=unit_id)
                if row.exercise:
                    raise Conflict(f"unit {unit_id} is an exercise unit: only live units are lent to drills")
                if drill is None and row.incident_id is not None:
                    await uow.lock(incident_lock(row.incident_id))
                    incident = await store.get_incident(uow.conn, row.incident_id)
                    if incident is not None and incident.exercise:
                        held = await store.active_assignments(uow.conn, incident.id)
                        tx = _Tx(actor, None, uow)
                        await self._release(tx, incident, [a for a in held if a.unit_id == unit_id], "taken back")
                        await self._publish_facts(tx, incident)
                u = store.units.c
                res = await uow.conn.execute(
                    store.units.update()
                    .where(u.id == unit_id)
                    .values(lent_to_drill=drill, version=u.version + 1, changed_at=_now())
                    .returning(*store.units.c)
                )
                fresh = res.first()
                uow.emit(self._unit_event("dispatch.unit.updated", fresh, actor))
                await uow.commit()
            return fresh

        row = await retrying(work)
        self.directory.apply([row])
        return row

    async def change_status(self, unit_id: str, to: UnitStatus, actor: str, version: int | None = None) -> Any:
        """A unit's reported status. Returning or out of service ends its assignment."""
        to = UnitStatus(to)

        async def work() -> Any:
            async with self.db.uow() as uow:
                row = await store.get_unit(uow.conn, unit_id)
                if row is None:
                    raise NotFound(f"unit {unit_id} not found", unit_id=unit_id)
                if version is not None and row.version != version:
                    raise StaleVersion(
                        f"unit {unit_id} is at version {row.version}, not {version}: reload it and decide again",
                        current_version=row.version,
                    )
                frm = UnitStatus(row.status)
                check_status_change(frm, to)
                if to is UnitStatus.ASSIGNED:
                    raise Conflict(
                        "a unit is assigned through POST /v1/incidents/{incident_id}/assignments, not by status"
                    )
                if to is UnitStatus.AVAILABLE and row.incident_id is not None:
                    raise Conflict(
                        f"unit {unit_id} serves incident {row.incident_id}: release its assignment instead",
                        incident_id=row.incident_id,
                    )
                incident = None
                if row.incident_id is not None:
                    await uow.lock(incident_lock(row.incident_id))
                    incident = await store.get_incident(uow.conn, row.incident_id)
                leaves = row.incident_id is not None and to in (UnitStatus.RETURNING, UnitStatus.OUT_OF_SERVICE)
                now = _now()
                fresh = await store.set_unit_status(
                    uow.conn, unit_id, frm, to, None if leaves else row.incident_id, now, row.version
                )
                if fresh is None:
                    raise _Changed
                if leaves:
                    held = await store.active_assignment_of(uow.conn, unit_id)
                    if held is not None:
                        await store.close_assignments(uow.conn, [held.id], now, actor, f"unit reported {to}")
                        uow.emit(self._released_event(held, incident, to, actor, f"unit reported {to}", None))
                        RELEASED.inc()
                if to is UnitStatus.ON_SCENE:
                    await store.mark_arrived(uow.conn, unit_id, now)
                data = UnitStatusChanged(
                    unit_id=unit_id,
                    unit_type=row.unit_type,
                    from_status=frm.value,
                    to_status=to.value,
                    incident_id=row.incident_id,
                    actor=actor,
                )
                uow.emit(
                    self._event("dispatch.unit.status.changed", data, incident)
                    if incident is not None
                    else make_event("dispatch.unit.status.changed", data, source=SOURCE, exercise=row.exercise)
                )
                if incident is not None:
                    await self._publish_facts(_Tx(actor, None, uow), incident)
                await uow.commit()
            return fresh

        for _ in range(5):
            try:
                row = await retrying(work)
                break
            except _Changed:
                if version is not None:
                    raise StaleVersion(f"unit {unit_id} changed meanwhile: reload it and decide again") from None
        else:
            raise Conflict(f"unit {unit_id} keeps changing: try again")
        self.directory.apply([row])
        return row

    async def move_unit(self, unit_id: str, lat: float, lon: float, at: datetime | None = None) -> Any:
        at = at or _now()

        async def work() -> Any:
            async with self.db.uow() as uow:
                await store.move_units(uow.conn, [{"uid": unit_id, "lat": lat, "lon": lon, "at": at}])
                row = await store.get_unit(uow.conn, unit_id)
                if row is None:
                    raise NotFound(f"unit {unit_id} not found", unit_id=unit_id)
                await uow.commit()
            return row

        row = await retrying(work)
        self.directory.move([(unit_id, row.lat, row.lon, row.location_at)])
        return row

    # -- incidents as dispatch knows them

    async def get_incident(self, incident_id: str) -> Any:
        async with self.db.engine.connect() as conn:
            row = await store.get_incident(conn, incident_id)
        if row is None:
            raise NotFound(
                f"incident {incident_id} is unknown to dispatch (no event about it has arrived)",
                incident_id=incident_id,
            )
        return row

    async def snapshot(self, incident_id: str) -> tuple[Any, Sequence[Any], Sequence[Any]]:
        """The incident, its active assignments and its history, as of one moment."""
        async with self.db.engine.connect() as conn:
            if not self.db.is_sqlite:  # SQLite reads in one transaction are a snapshot already
                await conn.execution_options(isolation_level="REPEATABLE READ")
            incident = await store.get_incident(conn, incident_id)
            if incident is None:
                raise NotFound(
                    f"incident {incident_id} is unknown to dispatch (no event about it has arrived)",
                    incident_id=incident_id,
                )
            held = await store.active_assignments(conn, incident_id)
            history = await store.assignment_history(conn, incident_id)
        return incident, held, history

    def requirement(self, incident: Any, stage: str | None = None) -> tuple[int, dict[UnitType, int]]:
        """The plan version and the units the incident should hold in ``stage`` (default: its own)."""
        stage = stage or incident.stage
        version, level_plan = self.plans.level_plan(incident.category, incident.level)
        if stage in (Stage.reported, Stage.isolation):
            return version, level_plan.units_for(Stage.isolation)
        if stage in (Stage.handling, Stage.opinion_control) or (
            stage == Stage.aftermath and not self.settings.release_on_aftermath
        ):
            return version, level_plan.units_for(Stage.handling)
        return version, {}

    async def recommend(self, incident_id: str, requirement: Mapping[UnitType, int] | None, stage: str | None) -> dict:
        incident = await self.get_incident(incident_id)
        async with self.db.engine.connect() as conn:
            held = await store.active_assignments(conn, incident_id)
        version, required = self.requirement(incident, stage)
        held_by_type = Tally(UnitType(a.unit_type) for a in held)
        wanted = dict(requirement) if requirement is not None else units_to_add(held_by_type, required)
        result = self.directory.recommend(wanted, incident)
        return {
            "incident": incident,
            "plan_version": version,
            "required": required,
            "held": dict(held_by_type),
            "requirement": wanted,
            "result": result,
        }

    # -- assignments

    async def assign(self, incident_id: str, unit_ids: Sequence[str], actor: str, reason: str | None) -> Outcome:
        """Assign chosen units: recommended ones as such, any other needs a reason (an override)."""
        if not unit_ids:
            raise InvalidInput("name at least one unit", field="unit_ids")
        if len(set(unit_ids)) != len(unit_ids):
            raise InvalidInput("a unit is listed twice", field="unit_ids")

        async def work(tx: _Tx) -> Outcome:
            async with self.db.uow() as uow:
                tx.uow = uow
                await uow.lock(incident_lock(incident_id))
                incident = await self._open_incident(uow, incident_id)
                rows = await store.get_units(uow.conn, unit_ids)
                for uid in unit_ids:
                    if uid not in rows:
                        raise NotFound(f"unit {uid} not found", unit_id=uid)
                    _check_eligible(rows[uid], incident)
                    if rows[uid].status != UnitStatus.AVAILABLE:
                        raise _busy(rows[uid])
                by_type = Tally(UnitType(rows[uid].unit_type) for uid in unit_ids)
                picks = self.directory.recommend(by_type, incident)
                recommended = {r.unit_id: r for r in picks.recommendations}
                overrides = [uid for uid in unit_ids if uid not in recommended]
                if overrides and not (reason and reason.strip()):
                    raise InvalidInput(
                        f"unit {overrides[0]} is not among the recommended units: give a reason to override",
                        field="reason",
                        not_recommended=overrides,
                    )
                now = _now()
                got = await store.claim_units(uow.conn, list(unit_ids), incident_id, incident.exercise, now)
                tx.touched.extend(got)
                self.directory.mark_taken(got)
                if len(got) != len(unit_ids):
                    lost = sorted(set(unit_ids) - got)
                    fresh = await store.get_unit(uow.conn, lost[0])
                    raise _busy(fresh) if fresh is not None else NotFound(f"unit {lost[0]} not found")
                stage = assignment_stage(incident.stage)
                new = []
                for uid in unit_ids:
                    row, rec = rows[uid], recommended.get(uid)
                    source = "recommended" if rec is not None else "override"
                    why = rec.reason if rec is not None else f"override: {reason}"
                    if rec is not None and reason:
                        why += f" ({reason})"
                    new.append(self._assignment_row(incident, row, stage, source, actor, why, now))
                made = await self._add(tx, incident, new)
                await self._publish_facts(tx, incident)
                await uow.commit()
            return Outcome(made, [])

        return await self._changing_units(work, actor, None)

    async def assign_recommended(self, incident_id: str, actor: str, stage: str | None = None) -> Outcome:
        """Accept the recommendation: top the incident up to its plan for ``stage`` (default: now)."""

        async def work(tx: _Tx) -> Outcome:
            async with self.db.uow() as uow:
                tx.uow = uow
                await uow.lock(incident_lock(incident_id))
                incident = await self._open_incident(uow, incident_id)
                held = await store.active_assignments(uow.conn, incident_id)
                _, required = self.requirement(incident, stage)
                add = units_to_add(Tally(UnitType(a.unit_type) for a in held), required)
                unit_stage = assignment_stage(stage or incident.stage)
                made, shortfalls = await self._claim_recommended(tx, incident, add, unit_stage, "recommended")
                await self._publish_facts(tx, incident)
                await uow.commit()
            return Outcome(made, shortfalls)

        return await self._changing_units(work, actor, None)

    async def release(self, assignment_id: int, actor: str, reason: str) -> dict[str, Any]:
        async def work(tx: _Tx) -> dict[str, Any]:
            async with self.db.uow() as uow:
                tx.uow = uow
                first = await store.get_assignment(uow.conn, assignment_id)
                if first is None:
                    raise NotFound(f"assignment {assignment_id} not found", assignment_id=assignment_id)
                await uow.lock(incident_lock(first.incident_id))
                incident = await store.get_incident(uow.conn, first.incident_id)
                held = [a for a in await store.active_assignments(uow.conn, first.incident_id) if a.id == assignment_id]
                if not held:
                    raise Conflict(
                        f"assignment {assignment_id} was already released at {first.released_at}",
                        assignment_id=assignment_id,
                    )
                await self._release(tx, incident, held, reason)
                await self._publish_facts(tx, incident)
                done = await store.get_assignment(uow.conn, assignment_id)
                await uow.commit()
            return dict(done._mapping)

        return await self._changing_units(work, actor, None)

    async def reassign(self, assignment_id: int, to_incident_id: str, actor: str, reason: str) -> dict[str, Any]:
        """Send an assigned or en-route unit to another incident, in one transaction."""

        async def work(tx: _Tx) -> dict[str, Any]:
            async with self.db.uow() as uow:
                tx.uow = uow
                first = await store.get_assignment(uow.conn, assignment_id)
                if first is None:
                    raise NotFound(f"assignment {assignment_id} not found", assignment_id=assignment_id)
                if first.incident_id == to_incident_id:
                    raise Conflict(f"unit {first.unit_id} already serves incident {to_incident_id}")
                for iid in sorted((first.incident_id, to_incident_id)):  # one order: no deadlock
                    await uow.lock(incident_lock(iid))
                source = await store.get_incident(uow.conn, first.incident_id)
                target = await self._open_incident(uow, to_incident_id)
                held = [a for a in await store.active_assignments(uow.conn, first.incident_id) if a.id == assignment_id]
                if not held:
                    raise Conflict(f"assignment {assignment_id} was already released", assignment_id=assignment_id)
                a = held[0]
                if a.status not in (UnitStatus.ASSIGNED, UnitStatus.EN_ROUTE):
                    raise Conflict(
                        f"unit {a.unit_id} is {a.status} at incident {a.incident_id}: release it first",
                        incident_id=a.incident_id,
                    )
                unit = await store.get_unit(uow.conn, a.unit_id)
                _check_eligible(unit, target)
                made = await self._hand_over(tx, source, target, [a], f"reassigned: {reason}")
                for inc in (source, target):
                    await self._publish_facts(tx, inc)
                await uow.commit()
            return made[0]

        return await self._changing_units(work, actor, None)

    async def _open_incident(self, uow: UnitOfWork, incident_id: str) -> Any:
        incident = await store.get_incident(uow.conn, incident_id)
        if incident is None:
            raise NotFound(
                f"incident {incident_id} is unknown to dispatch (no event about it has arrived)",
                incident_id=incident_id,
            )
        if incident.merged_into:
            raise Conflict(
                f"incident {incident_id} was merged into {incident.merged_into}", merged_into=incident.merged_into
            )
        if incident.stage in TERMINAL_STAGES:
            raise Conflict(f"incident {incident_id} is {incident.stage}", stage=incident.stage)
        return incident

    def _assignment_row(
        self, incident: Any, unit: Any, stage: str, source: str, actor: str, reason: str, now: datetime
    ) -> dict[str, Any]:
        eta = self.directory.eta_s(unit, incident)
        return {
            "incident_id": incident.id,
            "unit_id": unit.id,
            "unit_type": unit.unit_type,
            "agency": unit.agency,
            "stage": stage,
            "source": source,
            "actor": actor,
            "reason": reason,
            "eta_s": round(eta, 1),
            "distance_m": round(haversine_m(unit.lat, unit.lon, incident.lat, incident.lon), 1),
            "exercise": incident.exercise,
            "assigned_at": now,
            "arrived_at": None,
            "released_at": None,
            "released_by": None,
            "release_reason": None,
        }

    async def _add(self, tx: _Tx, incident: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        made = await store.add_assignments(tx.uow.conn, rows)
        for row in made:
            data = UnitAssigned(
                incident_id=incident.id,
                assignment_id=row["id"],
                unit_id=row["unit_id"],
                unit_type=row["unit_type"],
                agency=row["agency"],
                stage=row["stage"],
                source=row["source"],
                actor=row["actor"],
                eta_s=row["eta_s"],
                distance_m=row["distance_m"],
                reason=row["reason"],
            )
            tx.uow.emit(self._event("dispatch.unit.assigned", data, incident, tx.cause))
            ASSIGNED.labels(row["source"]).inc()
        return made

    async def _claim_recommended(
        self, tx: _Tx, incident: Any, add: Mapping[UnitType, int], stage: str, source: str
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """Claim the best available units for ``add``; a unit taken meanwhile gives way to the next."""
        remaining = {t: n for t, n in add.items() if n > 0}
        rows: list[dict[str, Any]] = []
        result = RecommendationResult()
        now = _now()
        for _ in range(4):
            if not remaining:
                break
            result = self.directory.recommend(remaining, incident)
            picks = result.recommendations
            if not picks:
                break
            conn = tx.uow.conn
            got = await store.claim_units(conn, [r.unit_id for r in picks], incident.id, incident.exercise, now)
            tx.touched.extend(r.unit_id for r in picks)
            self.directory.mark_taken(r.unit_id for r in picks)  # the ones not got are taken by others
            units = await store.get_units(conn, got)
            for rec in picks:
                if rec.unit_id in got:
                    unit = units[rec.unit_id]
                    rows.append(self._assignment_row(incident, unit, stage, source, tx.actor, rec.reason, now))
                    remaining[rec.unit_type] -= 1
            remaining = {t: n for t, n in remaining.items() if n > 0}
            if len(got) == len(picks):
                break
        made = await self._add(tx, incident, rows)
        shortfalls = [s.message for s in result.shortfalls if s.unit_type in remaining]
        for unit_type, n in remaining.items():
            if not any(s.unit_type == unit_type for s in result.shortfalls):
                shortfalls.append(f"need {n} more {unit_type}: the units found were taken meanwhile")
            SHORTFALLS.labels(str(unit_type)).inc()
        return made, shortfalls

    async def _release(self, tx: _Tx, incident: Any, held: Sequence[Any], reason: str) -> None:
        """End active assignments (rows of store.active_assignments); the units go back or return."""
        now = _now()
        conn = tx.uow.conn
        for a in held:
            frm = UnitStatus(a.status)
            to = UnitStatus.AVAILABLE if frm is UnitStatus.ASSIGNED else UnitStatus.RETURNING
            fresh = await store.set_unit_status(conn, a.unit_id, frm, to, None, now)
            if fresh is None:
                raise Transient(f"unit {a.unit_id} changed while being released")
            await store.close_assignments(conn, [a.id], now, tx.actor, reason)
            tx.uow.emit(self._released_event(a, incident, to, tx.actor, reason, tx.cause))
            tx.touched.append(a.unit_id)
            RELEASED.inc()

    def _released_event(
        self, a: Any, incident: Any, status: UnitStatus, actor: str, reason: str, cause: Envelope | None
    ) -> Envelope:
        data = UnitReleased(
            incident_id=a.incident_id,
            assignment_id=a.id,
            unit_id=a.unit_id,
            unit_type=a.unit_type,
            status=UnitStatus(status).value,
            reason=reason,
            actor=actor,
        )
        return self._event("dispatch.unit.released", data, incident, cause)

    async def _hand_over(
        self, tx: _Tx, source: Any, target: Any, held: Sequence[Any], reason: str
    ) -> list[dict[str, Any]]:
        now = _now()
        conn = tx.uow.conn
        moved = await store.hand_over_units(conn, [a.unit_id for a in held], source.id, target.id, now)
        moving = [a for a in held if a.unit_id in moved]
        await store.close_assignments(conn, [a.id for a in moving], now, tx.actor, reason)
        units = await store.get_units(conn, moved)
        rows = []
        for a in moving:
            tx.uow.emit(self._released_event(a, source, UnitStatus(a.status), tx.actor, reason, tx.cause))
            rows.append(self._assignment_row(target, units[a.unit_id], a.stage, "reassigned", tx.actor, reason, now))
            tx.touched.append(a.unit_id)
        return await self._add(tx, target, rows)

    async def _publish_facts(self, tx: _Tx, incident: Any) -> None:
        """Tell the lifecycle what it waits for, when it changed: perimeter units on scene, settled."""
        uow, cause = tx.uow, tx.cause
        incident = await store.get_incident(uow.conn, incident.id)
        held = await store.active_assignments(uow.conn, incident.id)
        perimeter = [a for a in held if a.stage == Stage.isolation]
        on_scene_count = sum(1 for a in perimeter if a.status == UnitStatus.ON_SCENE)
        try:
            _, level_plan = self.plans.level_plan(incident.category, incident.level)
            plan_wants = sum(level_plan.isolation_units.values())
        except NotFound:
            plan_wants = 0
        secured = on_scene_count == len(perimeter) and (bool(perimeter) or plan_wants == 0)
        settled = not held
        values: dict[str, Any] = {}
        if bool(incident.perimeter_secured) != secured:
            values["perimeter_secured"] = secured
            detail = f"{on_scene_count} of {len(perimeter)} perimeter units on scene"
            if len(perimeter) < plan_wants:
                detail += f" (the plan wants {plan_wants})"
            data = PerimeterSecured(incident_id=incident.id, on_scene=secured, detail=detail)
            uow.emit(self._event("dispatch.incident.perimeter_secured", data, incident, cause))
        if incident.settled is None or incident.settled != settled:
            values["settled"] = settled
            detail = "no units held" if settled else f"{len(held)} units held"
            data = ParticipantSettled(
                incident_id=incident.id, participant=Participant.dispatch, settled=settled, detail=detail
            )
            uow.emit(self._event("dispatch.incident.settled", data, incident, cause))
        if values:
            await store.update_incident(uow.conn, incident.id, **values, updated_at=_now())

    # -- incident events (the automation), each exactly once through the inbox

    async def on_incident_event(self, envelope: Envelope, data: Any, consumer: str) -> None:
        started = time.perf_counter()

        async def work(tx: _Tx) -> None:
            async with self.db.uow() as uow:
                tx.uow = uow
                if not await uow.first_time(consumer, envelope.id):
                    return
                if isinstance(data, IncidentCreated):
                    await self._remember(uow, data.incident_id, envelope, data)
                    await uow.commit()
                    return
                if isinstance(data, IncidentMerged):
                    ids = sorted((data.incident_id, data.merged_incident_id))
                else:
                    ids = [data.incident_id]
                for iid in ids:
                    await uow.lock(incident_lock(iid))
                incident = await self._remember(uow, data.incident_id, envelope, data)
                if incident is None:
                    await uow.commit()  # a level change of an incident never seen: nothing to act on
                    return
                if isinstance(data, IncidentMerged):
                    await self._merge(tx, incident, data.merged_incident_id)
                if self.settings.automatic:
                    await self._reconcile(tx, incident)
                await uow.commit()

        await self._changing_units(work, "automation", envelope)
        AUTOMATION_SECONDS.observe(time.perf_counter() - started)

    async def _remember(self, uow: UnitOfWork, incident_id: str, envelope: Envelope, data: Any) -> Any:
        """Keep dispatch's copy of the incident up to date; returns it (None if never seen)."""
        now = _now()
        conn = uow.conn
        if isinstance(data, IncidentCreated | StageChanged):
            stage = data.to_stage if isinstance(data, StageChanged) else Stage.reported
            version = data.version if isinstance(data, StageChanged) else 1
            await conn.execute(
                self.db.insert_ignore(store.incidents).values(
                    id=incident_id,
                    category=data.category,
                    level=data.level,
                    stage=stage,
                    lat=data.lat,
                    lon=data.lon,
                    exercise=envelope.exercise,
                    perimeter=data.perimeter if isinstance(data, StageChanged) else None,
                    merged_into=None,
                    stage_version=version,
                    level_version=version,
                    perimeter_secured=None,
                    settled=None,
                    shortfalls=[],
                    created_at=now,
                    updated_at=now,
                )
            )
            if isinstance(data, StageChanged):
                await store.set_stage(conn, incident_id, data.version, data.to_stage, data.perimeter, now)
                await store.set_level(conn, incident_id, data.version, data.level, now)
        elif isinstance(data, LevelChanged):
            await store.set_level(conn, incident_id, data.version, data.to_level, now)
        return await store.get_incident(conn, incident_id)

    async def _merge(self, tx: _Tx, target: Any, source_id: str) -> None:
        conn = tx.uow.conn
        source = await store.get_incident(conn, source_id)
        if source is None:
            return
        await store.update_incident(conn, source_id, merged_into=target.id, updated_at=_now())
        held = await store.active_assignments(conn, source_id)
        if held and target.stage not in TERMINAL_STAGES:
            await self._hand_over(tx, source, target, held, f"incident merged into {target.id}")
        elif held:
            await self._release(tx, source, held, f"incident merged into {target.id}")
        await self._publish_facts(tx, source)

    async def _reconcile(self, tx: _Tx, incident: Any) -> None:
        """Bring the units the incident holds to what its plan wants at its stage and level."""
        conn = tx.uow.conn
        incident = await store.get_incident(conn, incident.id)
        held = await store.active_assignments(conn, incident.id)
        shortfalls: list[str] = []
        if incident.merged_into or incident.stage in TERMINAL_STAGES or not self._holds_units(incident.stage):
            await self._release(tx, incident, held, _why_release(incident))
        elif incident.stage != Stage.reported:
            _, required = self.requirement(incident)
            held_by_type = Tally(UnitType(a.unit_type) for a in held)
            excess = units_to_release(held_by_type, required)
            if excess:
                await self._release(tx, incident, _surplus(held, excess), _why_lower(incident))
            add = units_to_add(held_by_type, required)
            if add:
                stage = assignment_stage(incident.stage)
                _, shortfalls = await self._claim_recommended(tx, incident, add, stage, "automatic")
                if shortfalls:
                    log.warning("dispatch.shortfall", incident_id=incident.id, shortfalls=shortfalls)
        if shortfalls != list(incident.shortfalls or []):
            await store.update_incident(conn, incident.id, shortfalls=shortfalls, updated_at=_now())
        await self._publish_facts(tx, incident)

    def _holds_units(self, stage: str) -> bool:
        return stage != Stage.aftermath or not self.settings.release_on_aftermath

    # -- exercise data

    async def purge_exercise(self, actor: str, units_too: bool) -> dict[str, int]:
        """Forget every exercise incident and assignment (and exercise units); live data untouched.

        Units still serving an exercise are released first, so a live unit lent to a drill goes
        back to work and the release is published like any other.
        """

        async def work(tx: _Tx) -> dict[str, int]:
            async with self.db.uow() as uow:
                tx.uow = uow
                await uow.lock("dispatch:exercise-purge")
                i, a, u = store.incidents.c, store.assignments.c, store.units.c
                ids = [r[0] for r in await uow.conn.execute(select(i.id).where(i.exercise.is_(True)))]
                for incident_id in ids:
                    await uow.lock(incident_lock(incident_id))
                    incident = await store.get_incident(uow.conn, incident_id)
                    held = await store.active_assignments(uow.conn, incident_id)
                    await self._release(tx, incident, held, "exercise data purged")
                gone_assignments = (
                    await uow.conn.execute(store.assignments.delete().where(a.exercise.is_(True)))
                ).rowcount
                gone_incidents = (await uow.conn.execute(store.incidents.delete().where(i.exercise.is_(True)))).rowcount
                gone_units = 0
                if units_too:
                    removable = u.exercise.is_(True) & u.incident_id.is_(None)
                    doomed = [r[0] for r in await uow.conn.execute(select(u.id).where(removable))]
                    gone_units = (await uow.conn.execute(store.units.delete().where(u.id.in_(doomed)))).rowcount
                    tx.touched.extend(doomed)
                await uow.commit()
            log.info("exercise.purged", incidents=gone_incidents, assignments=gone_assignments, units=gone_units)
            return {
                "incidents_purged": gone_incidents,
                "assignments_purged": gone_assignments,
                "units_purged": gone_units,
            }

        return await self._changing_units(work, actor, None)

    # -- vehicle positions

    async def absorb_positions(self, reports: Sequence[tuple[str, float, float, datetime]]) -> set[str]:
        """Write a batch of position reports, the newest per unit; returns the unknown unit ids."""
        latest: dict[str, tuple[str, float, float, datetime]] = {}
        for report in reports:
            seen = latest.get(report[0])
            if seen is None or report[3] > seen[3]:
                latest[report[0]] = report
        unknown = {uid for uid in latest if uid not in self.directory}
        if unknown:
            async with self.db.engine.connect() as conn:
                unknown -= await store.existing_unit_ids(conn, unknown)
        rows = [{"uid": u, "lat": lat, "lon": lon, "at": at} for u, lat, lon, at in latest.values() if u not in unknown]

        async def work() -> None:
            async with self.db.engine.begin() as conn:
                await store.move_units(conn, rows)

        if rows:
            await retrying(work)
            POSITIONS.inc(len(rows))
            self.directory.move(r for r in latest.values() if r[0] not in unknown)
        return unknown


@dataclasses.dataclass
class _Tx:
    """One transaction's context: who acts, the message that caused it, the units it touched."""

    actor: str
    cause: Envelope | None
    uow: UnitOfWork = None  # type: ignore[assignment]
    touched: list[str] = dataclasses.field(default_factory=list)


class _Changed(Exception):
    """The unit changed between reading and writing it: read it again."""


def _busy(row: Any) -> Conflict:
    if row.incident_id:
        return Conflict(
            f"unit {row.id} is already assigned to incident {row.incident_id} ({row.status})",
            unit_id=row.id,
            incident_id=row.incident_id,
            unit_status=row.status,
        )
    return Conflict(f"unit {row.id} is {row.status}", unit_id=row.id, unit_status=row.status)


def _check_eligible(unit: Any, incident: Any) -> None:
    if incident.exercise and not unit.exercise and not unit.lent_to_drill:
        raise Conflict(
            f"unit {unit.id} is a live unit not lent to a drill: exercise incident {incident.id} cannot take it",
            unit_id=unit.id,
        )
    if not incident.exercise and unit.exercise:
        raise Conflict(
            f"unit {unit.id} is an exercise unit: live incident {incident.id} cannot take it", unit_id=unit.id
        )


def _surplus(held: Sequence[Any], excess: Mapping[UnitType, int]) -> list[Any]:
    """Automatic assignments to give back: not yet on scene first, the most recent first."""
    order = {UnitStatus.ASSIGNED: 0, UnitStatus.EN_ROUTE: 1, UnitStatus.ON_SCENE: 2}
    picked: list[Any] = []
    for unit_type, n in excess.items():
        pool = [a for a in held if a.unit_type == unit_type and a.source == "automatic"]
        pool.sort(key=lambda a: (order.get(UnitStatus(a.status), 3), -a.id))
        picked.extend(pool[:n])
    return picked


def _why_release(incident: Any) -> str:
    if incident.merged_into:
        return f"incident merged into {incident.merged_into}"
    return f"incident {incident.stage}"


def _why_lower(incident: Any) -> str:
    return f"incident lowered to level {incident.level}: more units than the plan wants"
