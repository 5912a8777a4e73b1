"""dispatch's tables and the queries on them (SQLAlchemy Core).

The database guards every count that must never go wrong: a unit is claimed with one conditional
UPDATE (``... WHERE status = 'available'``) and the partial unique index on active assignments
refuses a second one for the same unit, whatever replica or operator raced for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import BigId, UTCDateTime, new_metadata

metadata = new_metadata()

# Statuses in which a unit serves an incident (and only then has incident_id set).
BUSY = ("assigned", "en_route", "on_scene")

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


async def get_unit(conn: AsyncConnection, unit_id: str) -> Row | None:
    return (await conn.execute(select(units).where(units.c.id == unit_id))).first()


async def get_units(conn: AsyncConnection, unit_ids: Iterable[str]) -> dict[str, Row]:
    ids = list(dict.fromkeys(unit_ids))
    found: dict[str, Row] = {}
    for chunk in _chunks(ids, 500):
        for row in await conn.execute(select(units).where(units.c.id.in_(chunk))):
            found[row.id] = row
    return found


async def claim_units(
    conn: AsyncConnection, unit_ids: Sequence[str], incident_id: str, exercise: bool, now: datetime
) -> set[str]:
    """Take the units that are still available for this incident; returns the ids it got.

    One conditional UPDATE: a unit another transaction took meanwhile does not match any more.
    An exercise incident takes exercise units and live units lent to a drill, a live incident
    live units only.
    """
    if not unit_ids:
        return set()
    u = units.c
    eligible = u.exercise.is_(True) | u.lent_to_drill.is_not(None) if exercise else u.exercise.is_(False)
    stmt = (
        update(units)
        .where(u.id.in_(sorted(unit_ids)), u.status == "available", eligible)
        .values(status="assigned", incident_id=incident_id, version=u.version + 1, changed_at=now)
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
        .where(u.id.in_(sorted(unit_ids)), u.incident_id == from_incident, u.status.in_(BUSY))
        .values(incident_id=to_incident, version=u.version + 1, changed_at=now)
        .returning(u.id)
    )
    return {r[0] for r in await conn.execute(stmt)}


async def set_unit_status(
    conn: AsyncConnection,
    unit_id: str,
    from_status: str,
    to_status: str,
    incident_id: str | None,
    now: datetime,
    expected_version: int | None = None,
) -> Row | None:
    """Change the status if the unit is still as the caller saw it; returns the new row or None."""
    u = units.c
    where = [u.id == unit_id, u.status == from_status]
    if expected_version is not None:
        where.append(u.version == expected_version)
    stmt = (
        update(units)
        .where(*where)
        .values(status=to_status, incident_id=incident_id, version=u.version + 1, changed_at=now)
        .returning(*units.c)
    )
    return (await conn.execute(stmt)).first()


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


async def move_units(conn: AsyncConnection, positions: Sequence[dict[str, Any]]) -> None:
    """Write position reports ({uid, lat, lon, at}), one per unit; an older report never
    overwrites a newer one. Rows are taken in id order, as claims take them."""
    if not positions:
        return
    ordered = sorted(positions, key=lambda p: p["uid"])
    if conn.dialect.name == "postgresql":
        await conn.execute(
            _LOCATION_PG,
            {
                "uids": [p["uid"] for p in ordered],
                "lats": [p["lat"] for p in ordered],
                "lons": [p["lon"] for p in ordered],
                "ats": [p["at"] for p in ordered],
            },
        )
    else:
        await conn.execute(_LOCATION, ordered)


async def existing_unit_ids(conn: AsyncConnection, unit_ids: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(list(set(unit_ids)), 500):
        found.update(r[0] for r in await conn.execute(select(units.c.id).where(units.c.id.in_(chunk))))
    return found


async def units_changed_since(conn: AsyncConnection, since: datetime) -> Sequence[Row]:
    return (await conn.execute(select(units).where(units.c.changed_at >= since))).all()


async def positions_since(conn: AsyncConnection, since: datetime) -> Sequence[Row]:
    u = units.c
    return (await conn.execute(select(u.id, u.lat, u.lon, u.location_at).where(u.location_at >= since))).all()


# --- assignments ------------------------------------------------------------------------------


async def add_assignments(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Insert active assignments; returns the rows with their ids."""
    if not rows:
        return []
    a = assignments
    result = await conn.execute(a.insert().returning(a.c.id, a.c.unit_id, sort_by_parameter_order=True), rows)
    return [{**row, "id": r.id} for row, r in zip(rows, result, strict=True)]


async def active_assignments(conn: AsyncConnection, incident_id: str) -> Sequence[Row]:
    """The incident's active assignments with each unit's current status and position."""
    a, u = assignments, units
    q = (
        select(a, u.c.status, u.c.callsign, u.c.lat, u.c.lon, u.c.location_at, u.c.district)
        .join(u, u.c.id == a.c.unit_id)
        .where(a.c.incident_id == incident_id, a.c.released_at.is_(None))
        .order_by(a.c.id)
    )
    return (await conn.execute(q)).all()


async def get_assignment(conn: AsyncConnection, assignment_id: int) -> Row | None:
    return (await conn.execute(select(assignments).where(assignments.c.id == assignment_id))).first()


async def active_assignment_of(conn: AsyncConnection, unit_id: str) -> Row | None:
    a = assignments.c
    q = select(assignments).where(a.unit_id == unit_id, a.released_at.is_(None))
    return (await conn.execute(q)).first()


async def close_assignments(
    conn: AsyncConnection, assignment_ids: Sequence[int], now: datetime, actor: str, reason: str
) -> set[int]:
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
    a = assignments.c
    await conn.execute(
        update(assignments)
        .where(a.unit_id == unit_id, a.released_at.is_(None), a.arrived_at.is_(None))
        .values(arrived_at=now)
    )


async def assignment_history(conn: AsyncConnection, incident_id: str) -> Sequence[Row]:
    a = assignments.c
    q = select(assignments).where(a.incident_id == incident_id).order_by(a.id)
    return (await conn.execute(q)).all()


# --- incidents --------------------------------------------------------------------------------


async def get_incident(conn: AsyncConnection, incident_id: str) -> Row | None:
    return (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()


async def update_incident(conn: AsyncConnection, incident_id: str, **values: Any) -> None:
    await conn.execute(update(incidents).where(incidents.c.id == incident_id).values(**values))


async def set_stage(
    conn: AsyncConnection, incident_id: str, version: int, stage: str, perimeter: Any, now: datetime
) -> bool:
    """Apply a stage change unless a newer one was already applied."""
    i = incidents.c
    values: dict[str, Any] = {"stage": stage, "stage_version": version, "updated_at": now}
    if perimeter is not None:
        values["perimeter"] = perimeter
    res = await conn.execute(update(incidents).where(i.id == incident_id, i.stage_version < version).values(**values))
    return res.rowcount == 1


async def set_level(conn: AsyncConnection, incident_id: str, version: int, level: int, now: datetime) -> bool:
    i = incidents.c
    res = await conn.execute(
        update(incidents)
        .where(i.id == incident_id, i.level_version < version)
        .values(level=level, level_version=version, updated_at=now)
    )
    return res.rowcount == 1


# --- plans ------------------------------------------------------------------------------------


async def active_plan_versions(conn: AsyncConnection) -> dict[str, int]:
    p = plans.c
    rows = await conn.execute(select(p.category, func.max(p.version)).group_by(p.category))
    return {r[0]: int(r[1]) for r in rows}


async def get_plan(conn: AsyncConnection, category: str, version: int | None = None) -> Row | None:
    p = plans.c
    q = select(plans).where(p.category == category)
    q = q.where(p.version == version) if version is not None else q.order_by(p.version.desc()).limit(1)
    return (await conn.execute(q)).first()


async def plan_versions(conn: AsyncConnection, category: str) -> Sequence[Row]:
    p = plans.c
    q = select(p.category, p.version, p.origin, p.actor, p.created_at).where(p.category == category)
    return (await conn.execute(q.order_by(p.version.desc()))).all()


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
