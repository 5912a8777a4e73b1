"""The read side of the operator API: the answers (Pydantic models, so that the OpenAPI describes
each of them) and the queries that fill them — unit and incident lists with their filters and
cursors, the per-incident view of who is coming and when, recommendations, plans, exercise data.

Times are UTC, positions WGS-84 degrees, arrival estimates seconds and distances metres.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select

from ecs.contracts import PlanPublished
from ecs.db import Database
from ecs.envelope import utcnow
from ecs.errors import InvalidInput, NotFound
from ecs.vocabulary import Category, Level, Stage

from . import store
from .context import Context
from .domain import (
    Agency,
    Assignment,
    AssignmentSource,
    Incident,
    Outcome,
    RecommendationResult,
    Unit,
    UnitStatus,
    UnitType,
    UnknownAssignment,
    UnknownIncident,
    UnknownUnit,
    next_statuses,
    required_units,
    roster_profile,
    units_to_add,
)
from .plans import PlanBook

UnitStage = Literal[Stage.isolation, Stage.handling]

# --- answers -----------------------------------------------------------------------------------


class Position(BaseModel):
    """WGS-84 degrees."""

    lat: float
    lon: float


class Fix(Position):
    """A unit's position (WGS-84 degrees) and when it was fixed (UTC)."""

    at: datetime = Field(description="when the position was fixed")


class UnitAnswer(BaseModel):
    """A unit on the roster, and the statuses it may report next."""

    id: str
    callsign: str
    agency: Agency
    unit_type: UnitType
    capabilities: list[str]
    home_station: str
    district: str
    location: Fix
    status: UnitStatus
    incident_id: str | None = Field(description="the incident the unit serves (assigned, en route, on scene)")
    exercise: bool
    lent_to_drill: str | None = Field(description="the drill a live unit is lent to")
    version: int = Field(description="send it back with a change: a unit changed meanwhile answers 409")
    next_statuses: list[UnitStatus]

    @classmethod
    def of(cls, unit: Unit) -> UnitAnswer:
        """The answer for a unit on the roster."""
        return cls(
            id=unit.id,
            **roster_profile(unit),
            location=Fix(lat=unit.lat, lon=unit.lon, at=unit.location_at),
            status=unit.status,
            incident_id=unit.incident_id,
            exercise=unit.exercise,
            lent_to_drill=unit.lent_to_drill,
            version=unit.version,
            next_statuses=sorted(next_statuses(unit.status)),
        )


class UnitList(BaseModel):
    """Units, in the order registered."""

    items: list[UnitAnswer]


class UnitPage(UnitList):
    """A page of units, by id."""

    next_cursor: str | None = Field(description="pass it as ?cursor= for the next page; null on the last")


class AssignmentAnswer(BaseModel):
    """A unit sent to an incident, from its assignment to its release."""

    id: int
    incident_id: str
    unit_id: str
    unit_type: UnitType
    agency: Agency
    stage: UnitStage = Field(description="what the unit was sent for")
    source: AssignmentSource
    actor: str
    reason: str
    eta_s: float | None = Field(description="estimated seconds to arrive, when assigned")
    distance_m: float | None = Field(description="straight-line metres to the incident, when assigned")
    exercise: bool
    assigned_at: datetime
    arrived_at: datetime | None
    released_at: datetime | None
    released_by: str | None
    release_reason: str | None

    @classmethod
    def of(cls, a: Assignment) -> AssignmentAnswer:
        """The answer for an assignment."""
        return cls(
            id=a.id,
            incident_id=a.incident_id,
            unit_id=a.unit_id,
            unit_type=a.unit_type,
            agency=a.agency,
            stage=a.stage,
            source=a.source,
            actor=a.actor,
            reason=a.reason,
            eta_s=a.eta_s,
            distance_m=a.distance_m,
            exercise=a.exercise,
            assigned_at=a.assigned_at,
            arrived_at=a.arrived_at,
            released_at=a.released_at,
            released_by=a.released_by,
            release_reason=a.release_reason,
        )


class OutcomeAnswer(BaseModel):
    """What an assignment did: the assignments made and, if any, the units it could not find."""

    assignments: list[AssignmentAnswer]
    shortfalls: list[str]
    complete: bool

    @classmethod
    def of(cls, outcome: Outcome) -> OutcomeAnswer:
        """The answer for what an assignment command did."""
        return cls(
            assignments=[AssignmentAnswer.of(a) for a in outcome.assignments],
            shortfalls=outcome.shortfalls,
            complete=not outcome.shortfalls,
        )


class IncidentSummary(BaseModel):
    """Dispatch's copy of an incident and what dispatch last told the lifecycle about it."""

    id: str
    category: Category
    level: Level
    stage: Stage
    location: Position
    exercise: bool
    perimeter: dict[str, Any] | None
    merged_into: str | None
    perimeter_secured: bool
    settled: bool | None = Field(description="null until dispatch first held units for it")
    shortfalls: list[str] = Field(description="units the plan wants that the automation could not find")
    updated_at: datetime

    @classmethod
    def fields_of(cls, row: Any) -> dict[str, Any]:
        """The summary's fields from a row of store.incidents."""
        return {
            "id": row.id,
            "category": row.category,
            "level": row.level,
            "stage": row.stage,
            "location": Position(lat=row.lat, lon=row.lon),
            "exercise": row.exercise,
            "perimeter": row.perimeter,
            "merged_into": row.merged_into,
            "perimeter_secured": bool(row.perimeter_secured),
            "settled": row.settled,
            "shortfalls": list(row.shortfalls or []),
            "updated_at": row.updated_at,
        }


class IncidentPage(BaseModel):
    """A page of incidents, the most recently changed first (then by id)."""

    items: list[IncidentSummary]
    next_cursor: str | None = Field(description="pass it as ?cursor= for the next page; null on the last")


class PlanRef(BaseModel):
    """The plan version and level the incident's requirement comes from."""

    category: Category
    version: int
    level: Level


class HeldUnit(AssignmentAnswer):
    """A unit the incident holds, where it is and when it is expected."""

    callsign: str
    status: UnitStatus
    district: str
    location: Fix
    eta_now_s: float = Field(description="seconds to arrive from where the unit is now; 0 on scene")
    expected_at: datetime | None = Field(description="when it should arrive, or when it arrived")


class IncidentView(IncidentSummary):
    """Who is coming and when: the units the incident holds, what its plan wants, what it lacks."""

    plan: PlanRef
    required: dict[str, int]
    held: dict[str, int]
    missing: dict[str, int]
    on_scene: int
    coming: int
    units: list[HeldUnit] = Field(description="on the way first, by arrival; then on scene")
    released: list[AssignmentAnswer]


class RecommendedUnit(BaseModel):
    """A unit to send: arrival estimate in seconds, straight-line distance in metres."""

    unit_id: str
    unit_type: UnitType
    eta_s: float = Field(description="estimated travel time to the incident, seconds")
    distance_m: float = Field(description="straight-line distance to the incident, metres")
    district: str
    reason: str = Field(description="why this unit, in words an operator reads")
    strips_cover: bool = Field(description="takes its district below its minimum cover (level I only)")
    borrowed: bool = Field(description="a live unit lent to the drill")


class ShortfallAnswer(BaseModel):
    """Units of a type the recommendation could not find."""

    unit_type: UnitType
    needed: int
    found: int
    held_by_cover: list[str] = Field(description="districts that have more, kept back for their cover")
    message: str


class RecommendationsAnswer(BaseModel):
    """Units to send, nearest by arrival first, each with its reason."""

    incident_id: str
    stage: Stage
    plan: PlanRef
    required: dict[str, int]
    held: dict[str, int]
    requirement: dict[str, int]
    recommendations: list[RecommendedUnit]
    shortfalls: list[ShortfallAnswer]
    complete: bool


class PlanEntry(BaseModel):
    """A category and its active plan version."""

    category: Category
    version: int


class PlanList(BaseModel):
    """The active plan of each category."""

    items: list[PlanEntry]


class PlanAnswer(PlanPublished):
    """A stored version of a category's response plan."""

    origin: Literal["shipped", "api"]


class PlanVersion(BaseModel):
    """A stored plan version: who stored it, when, and from where (shipped or the API)."""

    version: int
    origin: Literal["shipped", "api"]
    actor: str
    created_at: datetime


class PlanVersions(BaseModel):
    """Every stored version of a category's plan, newest first."""

    items: list[PlanVersion]


class ExerciseData(BaseModel):
    """What exercise data dispatch holds."""

    incidents: list[str]
    active_assignments: int
    units: list[str]
    lent_units: list[str] = Field(description="live units lent to drills")


class Purged(BaseModel):
    """What the purge of exercise data removed."""

    incidents_purged: int
    assignments_purged: int
    units_purged: int


# --- queries -------------------------------------------------------------------------------------


async def unit(db: Database, unit_id: str) -> Unit:
    """One unit; UnknownUnit (404) if it is not on the roster."""
    async with db.engine.connect() as conn:
        found = await store.get_unit(conn, unit_id)
    if found is None:
        raise UnknownUnit(unit_id)
    return found


async def units_page(
    db: Database,
    *,
    status: Sequence[UnitStatus] = (),
    unit_type: Sequence[UnitType] = (),
    agency: Sequence[str] = (),
    district: Sequence[str] = (),
    exercise: bool | None = None,
    incident_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> UnitPage:
    """Units matching every filter given (a list matches any of its values), by id. Raises
    InvalidInput (422) for a filter or cursor holding U+0000 (the database refuses it)."""
    for name, values in (("agency", agency), ("district", district), ("incident_id", [incident_id or ""])):
        _refuse_nul(name, values)
    _refuse_nul("cursor", [cursor or ""])
    u = store.units.c
    q = select(store.units)
    if status:
        q = q.where(u.status.in_([s.value for s in status]))
    if unit_type:
        q = q.where(u.unit_type.in_([t.value for t in unit_type]))
    if agency:
        q = q.where(u.agency.in_(agency))
    if district:
        q = q.where(u.district.in_(district))
    if exercise is not None:
        q = q.where(u.exercise.is_(exercise))
    if incident_id:
        q = q.where(u.incident_id == incident_id)
    if cursor:
        q = q.where(u.id > cursor)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(u.id).limit(limit + 1))).all()
    page = rows[:limit]
    return UnitPage(
        items=[UnitAnswer.of(store.to_unit(r)) for r in page],
        next_cursor=page[-1].id if len(rows) > limit else None,
    )


async def incident(db: Database, incident_id: str) -> Incident:
    """Dispatch's copy of an incident; UnknownIncident (404) if no event about it arrived."""
    async with db.engine.connect() as conn:
        found = await store.get_incident(conn, incident_id)
    if found is None:
        raise UnknownIncident(incident_id)
    return found


async def incidents_page(
    db: Database,
    *,
    stage: Sequence[str] = (),
    exercise: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> IncidentPage:
    """Incidents in any of ``stage`` (all if empty), the most recently changed first, then by id
    (keyset paging: a page never repeats or skips an incident that did not change meanwhile).
    Raises InvalidInput (422) for a cursor this API did not give out or a stage with U+0000."""
    _refuse_nul("stage", stage)
    i = store.incidents.c
    q = select(store.incidents)
    if stage:
        q = q.where(i.stage.in_(stage))
    if exercise is not None:
        q = q.where(i.exercise.is_(exercise))
    if cursor:
        changed, last_id = _page_cursor(cursor)
        q = q.where(or_(i.updated_at < changed, and_(i.updated_at == changed, i.id < last_id)))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(i.updated_at.desc(), i.id.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    last = page[-1] if len(rows) > limit else None
    return IncidentPage(
        items=[IncidentSummary(**IncidentSummary.fields_of(r)) for r in page],
        next_cursor=_encode_cursor(last.updated_at, last.id) if last is not None else None,
    )


def _encode_cursor(changed: datetime, incident_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([changed.isoformat(), incident_id])).decode()


def _page_cursor(cursor: str) -> tuple[datetime, str]:
    """(updated_at, id) of the last incident of the previous page; InvalidInput (422) for anything
    this API did not give out."""
    try:
        changed, incident_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        at = datetime.fromisoformat(changed)
        if at.tzinfo is None or not isinstance(incident_id, str) or "\x00" in incident_id:
            raise ValueError(cursor)
    except Exception:
        raise InvalidInput("cursor is not one this API gave out", field="cursor") from None
    return at, incident_id


def _refuse_nul(name: str, values: Sequence[str]) -> None:
    if any("\x00" in v for v in values):
        raise InvalidInput(f"{name} holds U+0000", field=name)


async def incident_view(ctx: Context, incident_id: str) -> IncidentView:
    """The incident, the units it holds with their arrival now, what its plan wants and lacks,
    and the units it released; all as of one moment. NotFound if the incident or its plan is
    unknown."""
    a, u = store.assignments, store.units
    if "\x00" in incident_id:  # no incident id has one, and PostgreSQL refuses it in a query
        raise UnknownIncident(incident_id)
    async with ctx.db.engine.connect() as conn:
        if not ctx.db.is_sqlite:  # SQLite reads in one transaction are a snapshot already
            await conn.execution_options(isolation_level="REPEATABLE READ")
        row = (await conn.execute(select(store.incidents).where(store.incidents.c.id == incident_id))).first()
        if row is None:
            raise UnknownIncident(incident_id)
        held_q = (
            select(a, u.c.status, u.c.callsign, u.c.lat, u.c.lon, u.c.location_at, u.c.district)
            .join(u, u.c.id == a.c.unit_id)
            .where(a.c.incident_id == incident_id, a.c.released_at.is_(None))
            .order_by(a.c.id)
        )
        held = (await conn.execute(held_q)).all()
        history_q = select(a).where(a.c.incident_id == incident_id, a.c.released_at.is_not(None)).order_by(a.c.id)
        released = (await conn.execute(history_q)).all()
    version, level_plan = ctx.plans.level_plan(row.category, row.level)
    required = required_units(level_plan, Stage(row.stage), ctx.settings.release_on_aftermath)
    now = utcnow()
    held_by_type: dict[str, int] = {}
    units = []
    for h in held:
        held_by_type[h.unit_type] = held_by_type.get(h.unit_type, 0) + 1
        moving = h.status in (UnitStatus.ASSIGNED, UnitStatus.EN_ROUTE)
        eta = ctx.directory.eta_s(h, row) if moving else 0.0
        units.append(
            HeldUnit(
                **AssignmentAnswer.of(store.to_assignment(h)).model_dump(),
                callsign=h.callsign,
                status=h.status,
                district=h.district,
                location=Fix(lat=h.lat, lon=h.lon, at=h.location_at),
                eta_now_s=round(eta, 1),
                expected_at=now + timedelta(seconds=eta) if moving else h.arrived_at,
            )
        )
    units.sort(key=lambda v: (v.status == UnitStatus.ON_SCENE, v.eta_now_s))
    missing = {str(t): n - held_by_type.get(str(t), 0) for t, n in required.items() if n > held_by_type.get(str(t), 0)}
    on_scene = sum(1 for v in units if v.status == UnitStatus.ON_SCENE)
    return IncidentView(
        **IncidentSummary.fields_of(row),
        plan=PlanRef(category=row.category, version=version, level=row.level),
        required=_by_type(required),
        held=dict(sorted(held_by_type.items())),
        missing=missing,
        on_scene=on_scene,
        coming=len(units) - on_scene,
        units=units,
        released=[AssignmentAnswer.of(store.to_assignment(r)) for r in released],
    )


async def recommendations(
    ctx: Context, incident_id: str, requirement: Mapping[UnitType, int] | None, stage: Stage | None
) -> RecommendationsAnswer:
    """Units to send to the incident: for ``requirement`` if given, else what its plan for
    ``stage`` (default: its own) still lacks. NotFound if the incident or its plan is unknown."""
    found = await incident(ctx.db, incident_id)
    async with ctx.db.engine.connect() as conn:
        held = await store.active_assignments(conn, incident_id)
    version, level_plan = ctx.plans.level_plan(found.category, found.level)
    stage = stage or found.stage
    required = required_units(level_plan, stage, ctx.settings.release_on_aftermath)
    holding = Counter(a.unit_type for a in held)
    wanted = dict(requirement) if requirement is not None else units_to_add(holding, required)
    result: RecommendationResult = ctx.directory.recommend(wanted, found)
    return RecommendationsAnswer(
        incident_id=found.id,
        stage=stage,
        plan=PlanRef(category=found.category, version=version, level=found.level),
        required=_by_type(required),
        held=_by_type(holding),
        requirement=_by_type(wanted),
        recommendations=[
            RecommendedUnit(
                unit_id=r.unit_id,
                unit_type=r.unit_type,
                eta_s=round(r.eta_s, 1),
                distance_m=round(r.distance_m, 1),
                district=r.district,
                reason=r.reason,
                strips_cover=r.strips_cover,
                borrowed=r.borrowed,
            )
            for r in result.recommendations
        ],
        shortfalls=[
            ShortfallAnswer(
                unit_type=s.unit_type,
                needed=s.needed,
                found=s.found,
                held_by_cover=list(s.held_by_cover),
                message=s.message,
            )
            for s in result.shortfalls
        ],
        complete=result.complete,
    )


async def assignment(db: Database, assignment_id: int) -> Assignment:
    """One assignment; UnknownAssignment (404) if there is none of this id."""
    found = await assignment_or_none(db, assignment_id)
    if found is None:
        raise UnknownAssignment(assignment_id)
    return found


async def assignment_or_none(db: Database, assignment_id: int) -> Assignment | None:
    """One assignment, or None."""
    async with db.engine.connect() as conn:
        return await store.get_assignment(conn, assignment_id)


def plan_list(plans: PlanBook) -> PlanList:
    """The active version of each category's plan."""
    return PlanList(items=[PlanEntry(category=c, version=plans.active(c)[0]) for c in plans.categories()])


async def plan(db: Database, category: str, version: int | None = None) -> PlanAnswer:
    """A stored plan version (the active one if ``version`` is None); NotFound if there is none."""
    async with db.engine.connect() as conn:
        row = await store.get_plan(conn, category, version)
    if row is None:
        what = f"version {version} of the plan" if version else "plan"
        raise NotFound(f"no {what} for category {category!r}", category=category)
    return PlanAnswer(**row.document, actor=row.actor, published_at=row.created_at, origin=row.origin)


async def plan_yaml(db: Database, category: str, version: int | None = None) -> str:
    """A stored plan version as its author wrote it (YAML); NotFound if there is none."""
    async with db.engine.connect() as conn:
        row = await store.get_plan(conn, category, version)
    if row is None:
        raise NotFound(f"no such plan for category {category!r}", category=category)
    return str(row.body)


async def plan_versions(db: Database, category: str) -> PlanVersions:
    """Every stored version of a category's plan, newest first."""
    p = store.plans.c
    q = select(p.version, p.origin, p.actor, p.created_at).where(p.category == category).order_by(p.version.desc())
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return PlanVersions(
        items=[PlanVersion(version=r.version, origin=r.origin, actor=r.actor, created_at=r.created_at) for r in rows]
    )


async def exercise_data(db: Database) -> ExerciseData:
    """The exercise incidents and units, how many exercise assignments are active, and which live
    units are lent to drills."""
    i, a, u = store.incidents.c, store.assignments.c, store.units.c
    async with db.engine.connect() as conn:
        incidents = (await conn.execute(select(i.id).where(i.exercise.is_(True)).order_by(i.id))).scalars().all()
        active = (await conn.execute(select(a.id).where(a.exercise.is_(True), a.released_at.is_(None)))).scalars().all()
        units = (await conn.execute(select(u.id).where(u.exercise.is_(True)).order_by(u.id))).scalars().all()
        lent = (await conn.execute(select(u.id).where(u.lent_to_drill.is_not(None)).order_by(u.id))).scalars().all()
    return ExerciseData(
        incidents=list(incidents), active_assignments=len(active), units=list(units), lent_units=list(lent)
    )


def _by_type(counts: Mapping[Any, int]) -> dict[str, int]:
    return {str(t): n for t, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}
