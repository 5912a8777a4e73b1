"""dispatch's tables and every write (and every read a handler decides on), SQLAlchemy Core.

Rows come back as the domain's objects (Unit, Incident, Held, Assignment). The database guards
every count that must never go wrong: a unit is claimed with one conditional UPDATE
(``... WHERE status = 'available'``) and the partial unique index on active assignments refuses a
second one for the same unit, whatever replica or operator raced for it. The read side of the
operator API (lists, per-incident views) is in views.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import BigId, UTCDateTime, chunks, new_metadata, scene_of, take_scene
from ecs.vocabulary import Category, Level, Stage

from .domain import (
    BUSY,
    Agency,
    Assignment,
    AssignmentSource,
    Held,
    Incident,
    Position,
    ResponsePlan,
    Unit,
    UnitStatus,
    UnitType,
    plan_document,
)

metadata = new_metadata()

units = Table(
    "units",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("callsign", String(64), nullable=False),
    Column("agency", String(16), nullable=False),
    Column("unit_type", String(32), nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("home_station", String(128), nullable=False),
    Column("district", String(64), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("location_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("incident_id", String(32), nullable=True),
    Column("exercise", Boolean, nullable=False),
    # A live unit a drill may use (the drill's name); exercise incidents take no other live unit.
    Column("lent_to_drill", String(128), nullable=True),
    Column("version", Integer, nullable=False),
    # Every change but a position report: replicas re-read what changed since they last looked.
    Column("changed_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # domain.BUSY, as SQL: the constraint's text is part of the migrated schema.
    CheckConstraint(
        "(incident_id IS NOT NULL) = (status IN ('assigned', 'en_route', 'on_scene'))", name="busy_iff_incident"
    ),
    Index("ix_units_changed_at", "changed_at"),
    Index("ix_units_location_at", "location_at"),
    Index("ix_units_incident", "incident_id"),
)

assignments = Table(
    "assignments",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("incident_id", String(32), nullable=False),
    Column("unit_id", String(64), nullable=False),
    Column("unit_type", String(32), nullable=False),
    Column("agency", String(16), nullable=False),
    Column("stage", String(16), nullable=False),  # isolation | handling: what the unit was sent for
    Column("source", String(16), nullable=False),  # automatic | recommended | override | reassigned
    Column("actor", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("eta_s", Float, nullable=True),
    Column("distance_m", Float, nullable=True),
    Column("exercise", Boolean, nullable=False),
    Column("assigned_at", UTCDateTime, nullable=False),
    Column("arrived_at", UTCDateTime, nullable=True),
    Column("released_at", UTCDateTime, nullable=True),
    Column("released_by", String(255), nullable=True),
    Column("release_reason", Text, nullable=True),
    # At most one active assignment per unit, whoever tries: the second insert fails.
    Index(
        "uq_assignments_active_unit",
        "unit_id",
        unique=True,
        sqlite_where=text("released_at IS NULL"),
        postgresql_where=text("released_at IS NULL"),
    ),
    Index("ix_assignments_incident", "incident_id", "released_at"),
)

# dispatch's own copy of the incident facts it acts on, kept from incident-intake's events.
incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("category", String(32), nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("stage", String(24), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("perimeter", JSON, nullable=True),
    Column("merged_into", String(32), nullable=True),
    # The incident version of the event that last set the stage / the level: events may arrive
    # out of order (redeliveries, two replicas), and an older one must not undo a newer one.
    Column("stage_version", Integer, nullable=False),
    Column("level_version", Integer, nullable=False),
    # What dispatch last published about the incident (NULL: nothing yet).
    Column("perimeter_secured", Boolean, nullable=True),
    Column("settled", Boolean, nullable=True),
    Column("shortfalls", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_incidents_stage", "stage", "updated_at"),
)

# Every version of every response plan; the active one of a category is its highest version.
plans = Table(
    "plans",
    metadata,
    Column("category", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", Text, nullable=False),  # the YAML as submitted
    Column("document", JSON, nullable=False),  # the plan as published
    Column("origin", String(16), nullable=False),  # shipped | api
    Column("actor", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("category", "version"),
)


# --- units ------------------------------------------------------------------------------------


def to_unit(row: Any) -> Unit:
    """A row of ``units`` as the domain's Unit."""
    return Unit(
        id=row.id,
        callsign=row.callsign,
        agency=Agency(row.agency),
        unit_type=UnitType(row.unit_type),
        capabilities=tuple(row.capabilities or ()),
        home_station=row.home_station,
        district=row.district,
        lat=row.lat,
        lon=row.lon,
        location_at=row.location_at,
        status=UnitStatus(row.status),
        incident_id=row.incident_id,
        exercise=row.exercise,
        lent_to_drill=row.lent_to_drill,
        version=row.version,
    )


async def get_unit(conn: AsyncConnection, unit_id: str) -> Unit | None:
    """The unit of this id, or None (also for an id no unit can have: PostgreSQL refuses U+0000)."""
    if "\x00" in unit_id:
        return None
    row = (await conn.execute(select(units).where(units.c.id == unit_id))).first()
    return to_unit(row) if row is not None else None


async def get_units(conn: AsyncConnection, unit_ids: Iterable[str]) -> dict[str, Unit]:
    """The units of these ids that exist, by id."""
    ids = list(dict.fromkeys(unit_ids))
    found: dict[str, Unit] = {}
    for chunk in chunks(ids):
        for row in await conn.execute(select(units).where(units.c.id.in_(chunk))):
            found[row.id] = to_unit(row)
    return found


async def existing_unit_ids(conn: AsyncConnection, unit_ids: Iterable[str]) -> set[str]:
    """Which of these ids are on the roster."""
    found: set[str] = set()
    for chunk in chunks(list(set(unit_ids))):
        found.update(r[0] for r in await conn.execute(select(units.c.id).where(units.c.id.in_(chunk))))
    return found


async def insert_units(conn: AsyncConnection, new: Sequence[Unit], now: datetime) -> bool:
    """Add units to the roster; False (and nothing added) if one of the ids is taken meanwhile."""
    rows = [
        {
            "id": u.id,
            "callsign": u.callsign,
            "agency": u.agency.value,
            "unit_type": u.unit_type.value,
            "capabilities": list(u.capabilities),
            "home_station": u.home_station,
            "district": u.district,
            "lat": u.lat,
            "lon": u.lon,
            "location_at": u.location_at,
            "status": u.status.value,
            "incident_id": u.incident_id,
            "exercise": u.exercise,
            "lent_to_drill": u.lent_to_drill,
            "version": u.version,
            "changed_at": now,
            "created_at": now,
        }
        for u in new
    ]
    try:
        await conn.execute(units.insert(), rows)
    except IntegrityError:
        return False
    return True


async def update_unit(
    conn: AsyncConnection, unit_id: str, version: int, values: dict[str, Any], now: datetime
) -> Unit | None:
    """Change roster fields if the unit is still at ``version``; returns it, or None if it changed."""
    u = units.c
    stmt = (
        update(units)
        .where(u.id == unit_id, u.version == version)
        .values(**values, version=u.version + 1, changed_at=now)
        .returning(*units.c)
    )
    row = (await conn.execute(stmt)).first()
    return to_unit(row) if row is not None else None


async def set_lent(conn: AsyncConnection, unit_id: str, drill: str | None, now: datetime) -> Unit | None:
    """Lend the unit to ``drill`` (None: take it back); returns it, or None if it is gone or, when
    lending, no longer an available live unit (a claim took it meanwhile)."""
    u = units.c
    where = u.id == unit_id
    if drill is not None:
        where = where & (u.status == UnitStatus.AVAILABLE.value) & u.incident_id.is_(None) & u.exercise.is_(False)
    stmt = (
        update(units)
        .where(where)
        .values(lent_to_drill=drill, version=u.version + 1, changed_at=now)
        .returning(*units.c)
    )
    row = (await conn.execute(stmt)).first()
    return to_unit(row) if row is not None else None


async def delete_unit(conn: AsyncConnection, unit_id: str, statuses: Iterable[UnitStatus]) -> bool:
    """Remove the unit if its status is one of ``statuses``; False if it is not (or is gone)."""
    u = units.c
    res = await conn.execute(delete(units).where(u.id == unit_id, u.status.in_([s.value for s in statuses])))
    return res.rowcount == 1


async def idle_exercise_unit_ids(conn: AsyncConnection) -> list[str]:
    """Exercise units that serve no incident."""
    u = units.c
    return [r[0] for r in await conn.execute(select(u.id).where(u.exercise.is_(True) & u.incident_id.is_(None)))]


async def delete_units(conn: AsyncConnection, unit_ids: Sequence[str]) -> int:
    """Remove these units; returns how many there were."""
    return (await conn.execute(delete(units).where(units.c.id.in_(unit_ids)))).rowcount


async def claim_units(
    conn: AsyncConnection, unit_ids: Sequence[str], incident_id: str, exercise: bool, now: datetime
) -> set[str]:
    """Take the units that are still available for this incident; returns the ids it got.

    One conditional UPDATE: a unit another transaction took meanwhile does not match any more.
    An exercise incident takes exercise units and live units lent to a drill, a live incident
    live units only (domain.may_serve).
    """
    if not unit_ids:
        return set()
    u = units.c
    eligible = u.exercise.is_(True) | u.lent_to_drill.is_not(None) if exercise else u.exercise.is_(False)
    stmt = (
        update(units)
        .where(u.id.in_(sorted(unit_ids)), u.status == UnitStatus.AVAILABLE.value, eligible)
        .values(status=UnitStatus.ASSIGNED.value, incident_id=incident_id, version=u.version + 1, changed_at=now)
        .returning(u.id)
    )
    return {r[0] for r in await conn.execute(stmt)}


async def hand_over_units(
    conn: AsyncConnection, unit_ids: Sequence[str], from_incident: str, to_incident: str, now: datetime
) -> set[str]:
    """Move busy units from one incident to another (reassignment, merge); returns the ids moved."""
    if not unit_ids:
        return set()
    u = units.c
    stmt = (
        update(units)
        .where(u.id.in_(sorted(unit_ids)), u.incident_id == from_incident, u.status.in_(_BUSY))
        .values(incident_id=to_incident, version=u.version + 1, changed_at=now)
        .returning(u.id)
    )
    return {r[0] for r in await conn.execute(stmt)}


_BUSY = sorted(s.value for s in BUSY)


async def set_unit_status(
    conn: AsyncConnection,
    unit_id: str,
    from_status: UnitStatus,
    to_status: UnitStatus,
    incident_id: str | None,
    now: datetime,
    expected_version: int | None = None,
) -> Unit | None:
    """Change the status if the unit is still as the caller saw it; returns the new unit or None."""
    u = units.c
    where = [u.id == unit_id, u.status == UnitStatus(from_status).value]
    if expected_version is not None:
        where.append(u.version == expected_version)
    stmt = (
        update(units)
        .where(*where)
        .values(status=UnitStatus(to_status).value, incident_id=incident_id, version=u.version + 1, changed_at=now)
        .returning(*units.c)
    )
    row = (await conn.execute(stmt)).first()
    return to_unit(row) if row is not None else None


_LOCATION = (
    update(units)
    .where(
        units.c.id == bindparam("uid"),
        units.c.location_at < bindparam("at"),
    )
    .values(lat=bindparam("lat"), lon=bindparam("lon"), location_at=bindparam("at"))
)


# PostgreSQL takes a whole batch in one statement, several times faster than one UPDATE a row.
_LOCATION_PG = text(
    "UPDATE units AS u SET lat = v.lat, lon = v.lon, location_at = v.at"
    " FROM unnest(:uids, :lats, :lons, :ats) AS v(id, lat, lon, at)"
    " WHERE u.id = v.id AND u.location_at < v.at"
).bindparams(
    bindparam("uids", type_=ARRAY(String)),
    bindparam("lats", type_=ARRAY(Float)),
    bindparam("lons", type_=ARRAY(Float)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
)


async def move_units(conn: AsyncConnection, positions: Iterable[Position]) -> None:
    """Write position reports, one per unit; an older report never overwrites a newer one. Rows
    are taken in id order, as claims take them."""
    ordered = sorted(positions, key=lambda p: p[0])
    if not ordered:
        return
    if conn.dialect.name == "postgresql":
        await conn.execute(
            _LOCATION_PG,
            {
                "uids": [p[0] for p in ordered],
                "lats": [p[1] for p in ordered],
                "lons": [p[2] for p in ordered],
                "ats": [p[3] for p in ordered],
            },
        )
    else:
        await conn.execute(_LOCATION, [{"uid": uid, "lat": lat, "lon": lon, "at": at} for uid, lat, lon, at in ordered])


async def stream_units(conn: AsyncConnection, size: int = 1000) -> AsyncIterator[Sequence[Row]]:
    """Every unit, ``size`` rows at a time (rows with the columns of ``units``)."""
    result = await conn.stream(units.select())
    async for rows in result.partitions(size):
        yield rows


async def units_changed_since(conn: AsyncConnection, since: datetime) -> list[Unit]:
    """Units whose roster entry or status changed at or after ``since`` (UTC)."""
    return [to_unit(r) for r in await conn.execute(select(units).where(units.c.changed_at >= since))]


async def positions_since(conn: AsyncConnection, since: datetime) -> list[Position]:
    """Positions fixed at or after ``since`` (UTC), one per unit."""
    u = units.c
    q = select(u.id, u.lat, u.lon, u.location_at).where(u.location_at >= since)
    return [(r[0], r[1], r[2], r[3]) for r in await conn.execute(q)]


# --- assignments ------------------------------------------------------------------------------


def to_assignment(row: Any) -> Assignment:
    """A row of ``assignments`` as the domain's Assignment."""
    return Assignment(
        id=row.id,
        incident_id=row.incident_id,
        unit_id=row.unit_id,
        unit_type=UnitType(row.unit_type),
        agency=Agency(row.agency),
        stage=Stage(row.stage),
        source=AssignmentSource(row.source),
        actor=row.actor,
        reason=row.reason,
        eta_s=row.eta_s,
        distance_m=row.distance_m,
        exercise=row.exercise,
        assigned_at=row.assigned_at,
        arrived_at=row.arrived_at,
        released_at=row.released_at,
        released_by=row.released_by,
        release_reason=row.release_reason,
    )


async def add_assignments(conn: AsyncConnection, new: Sequence[Assignment]) -> list[Assignment]:
    """Insert active assignments; returns them with their ids. IntegrityError if a unit has one."""
    if not new:
        return []
    rows = [
        {
            "incident_id": a.incident_id,
            "unit_id": a.unit_id,
            "unit_type": a.unit_type.value,
            "agency": a.agency.value,
            "stage": a.stage.value,
            "source": a.source.value,
            "actor": a.actor,
            "reason": a.reason,
            "eta_s": a.eta_s,
            "distance_m": a.distance_m,
            "exercise": a.exercise,
            "assigned_at": a.assigned_at,
            "arrived_at": None,
            "released_at": None,
            "released_by": None,
            "release_reason": None,
        }
        for a in new
    ]
    t = assignments
    result = await conn.execute(t.insert().returning(t.c.id, t.c.unit_id, sort_by_parameter_order=True), rows)
    return [dataclasses.replace(a, id=r.id) for a, r in zip(new, result, strict=True)]


_HELD = select(
    assignments.c.id,
    assignments.c.incident_id,
    assignments.c.unit_id,
    assignments.c.unit_type,
    assignments.c.stage,
    assignments.c.source,
    units.c.status,
).join(units, units.c.id == assignments.c.unit_id)


def _held(row: Any) -> Held:
    return Held(
        id=row.id,
        incident_id=row.incident_id,
        unit_id=row.unit_id,
        unit_type=UnitType(row.unit_type),
        stage=Stage(row.stage),
        source=AssignmentSource(row.source),
        status=UnitStatus(row.status),
    )


async def active_assignments(conn: AsyncConnection, incident_id: str) -> list[Held]:
    """The incident's active assignments, oldest first, with each unit's current status."""
    a = assignments.c
    q = _HELD.where(a.incident_id == incident_id, a.released_at.is_(None)).order_by(a.id)
    return [_held(r) for r in await conn.execute(q)]


async def units_ended_by(conn: AsyncConnection, incident_id: str, reason: str) -> set[str]:
    """The units whose assignment to ``incident_id`` ended for ``reason`` (e.g. a merge)."""
    a = assignments.c
    q = select(a.unit_id).where(a.incident_id == incident_id, a.release_reason == reason)
    return {r[0] for r in await conn.execute(q)}


async def active_assignment_of(conn: AsyncConnection, unit_id: str) -> Held | None:
    """The unit's active assignment, with its status, or None."""
    a = assignments.c
    row = (await conn.execute(_HELD.where(a.unit_id == unit_id, a.released_at.is_(None)))).first()
    return _held(row) if row is not None else None


async def get_assignment(conn: AsyncConnection, assignment_id: int) -> Assignment | None:
    """The assignment of this id (active or ended), or None."""
    row = (await conn.execute(select(assignments).where(assignments.c.id == assignment_id))).first()
    return to_assignment(row) if row is not None else None


async def close_assignments(
    conn: AsyncConnection, assignment_ids: Sequence[int], now: datetime, actor: str, reason: str
) -> set[int]:
    """End these assignments (those still active); returns the ids ended."""
    if not assignment_ids:
        return set()
    a = assignments.c
    stmt = (
        update(assignments)
        .where(a.id.in_(list(assignment_ids)), a.released_at.is_(None))
        .values(released_at=now, released_by=actor, release_reason=reason)
        .returning(a.id)
    )
    return {r[0] for r in await conn.execute(stmt)}


async def mark_arrived(conn: AsyncConnection, unit_id: str, now: datetime) -> None:
    """Record the arrival on the unit's active assignment (the first arrival counts)."""
    a = assignments.c
    await conn.execute(
        update(assignments)
        .where(a.unit_id == unit_id, a.released_at.is_(None), a.arrived_at.is_(None))
        .values(arrived_at=now)
    )


async def delete_exercise_assignments(conn: AsyncConnection) -> int:
    """Forget every exercise assignment; returns how many there were."""
    return (await conn.execute(delete(assignments).where(assignments.c.exercise.is_(True)))).rowcount


# --- incidents --------------------------------------------------------------------------------


def to_incident(row: Any) -> Incident:
    """A row of ``incidents`` as the domain's Incident."""
    return Incident(
        id=row.id,
        category=Category(row.category),
        level=Level(row.level),
        stage=Stage(row.stage),
        lat=row.lat,
        lon=row.lon,
        exercise=row.exercise,
        merged_into=row.merged_into,
        perimeter_secured=row.perimeter_secured,
        settled=row.settled,
        shortfalls=tuple(row.shortfalls or ()),
    )


async def get_incident(conn: AsyncConnection, incident_id: str) -> Incident | None:
    """Dispatch's copy of the incident, or None if no event about it arrived (or the id holds a
    U+0000, which no incident id has and PostgreSQL refuses)."""
    if "\x00" in incident_id:
        return None
    row = (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()
    return to_incident(row) if row is not None else None


async def remember_incident(
    conn: AsyncConnection, incident: Incident, perimeter: Any, version: int, now: datetime
) -> None:
    """Keep dispatch's copy of an incident it hears of for the first time (a copy it has stays)."""
    await conn.execute(
        _insert_ignore(conn, incidents).values(
            id=incident.id,
            category=incident.category.value,
            level=int(incident.level),
            stage=incident.stage.value,
            lat=incident.lat,
            lon=incident.lon,
            exercise=incident.exercise,
            perimeter=perimeter,
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


async def update_incident(conn: AsyncConnection, incident_id: str, **values: Any) -> None:
    """Set columns of dispatch's copy of the incident (what dispatch published, shortfalls, merge)."""
    await conn.execute(update(incidents).where(incidents.c.id == incident_id).values(**values))


async def set_stage(
    conn: AsyncConnection,
    incident_id: str,
    version: int,
    stage: Stage,
    perimeter: Any,
    now: datetime,
    category: Category | None = None,
) -> bool:
    """Apply a stage change unless a newer one was already applied. The change carries the
    incident's category at that version: a medical call that grew into a crowd crush is
    dispatched by the crowd-crush plan (ecs.db.scene_of: never back)."""
    i = incidents.c
    values: dict[str, Any] = {"stage": Stage(stage).value, "stage_version": version, "updated_at": now}
    if category is not None:
        values["category"] = scene_of(i.category, category)
    if perimeter is not None:
        values["perimeter"] = perimeter
    res = await conn.execute(update(incidents).where(i.id == incident_id, i.stage_version < version).values(**values))
    return res.rowcount == 1


async def set_category(conn: AsyncConnection, incident_id: str, category: Category, now: datetime) -> bool:
    """A medical-only incident becomes the scene reported near it (ecs.db.take_scene); False when
    it changed nothing (not known here, or already a scene)."""
    return await take_scene(conn, incidents, incident_id, category, updated_at=now)


async def set_level(conn: AsyncConnection, incident_id: str, version: int, level: Level, now: datetime) -> bool:
    """Apply a level change unless a newer one was already applied."""
    i = incidents.c
    res = await conn.execute(
        update(incidents)
        .where(i.id == incident_id, i.level_version < version)
        .values(level=int(level), level_version=version, updated_at=now)
    )
    return res.rowcount == 1


async def exercise_incident_ids(conn: AsyncConnection) -> list[str]:
    """The exercise incidents dispatch knows of."""
    i = incidents.c
    return [r[0] for r in await conn.execute(select(i.id).where(i.exercise.is_(True)))]


async def delete_exercise_incidents(conn: AsyncConnection) -> int:
    """Forget every exercise incident; returns how many there were."""
    return (await conn.execute(delete(incidents).where(incidents.c.exercise.is_(True)))).rowcount


# --- plans ------------------------------------------------------------------------------------


async def active_plan_versions(conn: AsyncConnection) -> dict[str, int]:
    """The highest stored version of each category's plan."""
    p = plans.c
    rows = await conn.execute(select(p.category, func.max(p.version)).group_by(p.category))
    return {r[0]: int(r[1]) for r in rows}


async def get_plan(conn: AsyncConnection, category: str, version: int | None = None) -> Row | None:
    """A stored plan version (the highest when ``version`` is None): the row of ``plans``."""
    p = plans.c
    q = select(plans).where(p.category == category)
    q = q.where(p.version == version) if version is not None else q.order_by(p.version.desc()).limit(1)
    return (await conn.execute(q)).first()


async def insert_plan(
    conn: AsyncConnection, plan: ResponsePlan, body: str, origin: str, actor: str, now: datetime
) -> bool:
    """Store a plan version; False if that version of the category is stored already."""
    res = await conn.execute(
        _insert_ignore(conn, plans).values(
            category=plan.category.value,
            version=plan.version,
            body=body,
            document=plan_document(plan),
            origin=origin,
            actor=actor,
            created_at=now,
        )
    )
    return res.rowcount == 1


def _insert_ignore(conn: AsyncConnection, table: Table) -> Any:
    # INSERT ... ON CONFLICT DO NOTHING in the connection's dialect.
    ins = sqlite.insert(table) if conn.dialect.name == "sqlite" else postgresql.insert(table)
    return ins.on_conflict_do_nothing()
