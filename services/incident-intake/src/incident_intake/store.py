"""incident-intake's tables and every write to them (SQLAlchemy Core: the hot path stays cheap).

Rows come out as domain objects (``Incident``, ``Counts``); decisions (``Change``, ``Correlation``)
go in. The read side of the operator API (lists, timelines, pages) is ``views.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import BigId, UnitOfWork, UTCDateTime, chunks, new_metadata

from .correlation import Correlation, IncomingAlarm
from .domain import (
    OPEN_STAGES,
    AlarmFacts,
    AlarmKey,
    Category,
    Change,
    Counts,
    Entry,
    Incident,
    Level,
    Perimeter,
    Stage,
)

metadata = new_metadata()

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("category", String(32), nullable=False),
    Column("stage", String(24), nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("first_alarm_at", UTCDateTime, nullable=False),
    Column("last_alarm_at", UTCDateTime, nullable=False),
    Column("alarm_count", Integer, nullable=False),
    Column("caller_count", Integer, nullable=False),
    Column("casualties", Integer, nullable=False),
    Column("verified", Boolean, nullable=False),
    Column("perimeter", JSON, nullable=True),
    # Lifecycle facts, many from other services: on-scene, under control, statement, report, settled.
    Column("facts", JSON, nullable=False),
    Column("merged_into", String(32), nullable=True),
    Column("split_from", String(32), nullable=True),
    # version: what an operator saw (optimistic concurrency); rev: the correlation clock at the last write.
    Column("version", Integer, nullable=False),
    Column("rev", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_incidents_rev", "rev"),
    Index("ix_incidents_stage_last", "stage", "last_alarm_at"),
    Index("ix_incidents_created", "created_at", "id"),
)

alarms = Table(
    "alarms",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("gateway_id", String(64), nullable=False),
    Column("alarm_id", String(64), nullable=False),
    Column("incident_id", String(32), nullable=False),
    # Provenance: the incident correlation first put the alarm in, kept through merges and splits.
    Column("original_incident_id", String(32), nullable=False),
    Column("category", String(32), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("crs", String(16), nullable=False),
    Column("reported_lat", Float, nullable=False),
    Column("reported_lon", Float, nullable=False),
    Column("accuracy_m", Float, nullable=True),
    Column("address", String(500), nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("ingested_at", UTCDateTime, nullable=False),
    Column("caller_key", String(40), nullable=True),
    Column("caller_number", String(32), nullable=True),
    Column("caller_name", String(100), nullable=True),
    Column("description", Text, nullable=False),
    Column("casualties", Integer, nullable=True),
    Column("exercise", Boolean, nullable=False),
    Column("via", String(8), nullable=False),
    # What the alarm said, hashed (IncomingAlarm.fingerprint): a repeat must say the same.
    Column("fingerprint", String(32), nullable=True),
    # alarm_id leads: the duplicate check looks up a batch of alarm ids, usually of one gateway.
    UniqueConstraint("alarm_id", "gateway_id"),
    Index("ix_alarms_incident", "incident_id", "seq"),
)

# Alarms refused after they were parsed (an alarm_id reused for a different alarm, input the
# database would not store), so an operator can find them; NATS refusals also go to dead letter.
alarm_refusals = Table(
    "alarm_refusals",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("gateway_id", String(64), nullable=False),
    Column("alarm_id", String(64), nullable=False),
    Column("via", String(8), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("reason", Text, nullable=False),
    Index("ix_alarm_refusals_at", "at", "seq"),
)

incident_callers = Table(
    "incident_callers",
    metadata,
    # caller_key leads: a batch asks which incidents already heard from these callers.
    Column("caller_key", String(40), primary_key=True),
    Column("incident_id", String(32), primary_key=True),
)

timeline = Table(
    "timeline",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("incident_id", String(32), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_timeline_incident", "incident_id", "seq"),
)

# One row. Every transaction that writes incidents bumps it first: the row lock serialises
# correlation across replicas, and the value tells a replica which incidents changed under it.
clock = Table(
    "correlation_clock",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rev", BigInteger, nullable=False),
    # Bumped when incidents are deleted (an exercise purge): the rev alone cannot show a deletion.
    Column("epoch", BigInteger, nullable=False, server_default="0"),
)

OPEN = [s.value for s in OPEN_STAGES]

# --- incidents as the domain sees them ---------------------------------------------------------


def incident_from_row(row: Any) -> Incident:
    """An ``incidents`` row as a domain ``Incident``."""
    return Incident(
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
        verified=row.verified,
        version=row.version,
        perimeter=Perimeter.from_dict(row.perimeter) if row.perimeter else None,
        facts=dict(row.facts or {}),
        merged_into=row.merged_into,
        split_from=row.split_from,
    )


def incident_row(incident: Incident, rev: int, now: datetime) -> dict[str, Any]:
    """A new incident as an ``incidents`` row, created at ``now`` in clock revision ``rev``."""
    return {
        "id": incident.id,
        "category": incident.category.value,
        "stage": incident.stage.value,
        "level": int(incident.level),
        "exercise": incident.exercise,
        "lat": incident.lat,
        "lon": incident.lon,
        "first_alarm_at": incident.first_alarm_at,
        "last_alarm_at": incident.last_alarm_at,
        "alarm_count": incident.alarm_count,
        "caller_count": incident.caller_count,
        "casualties": incident.casualties,
        "verified": incident.verified,
        "perimeter": incident.perimeter.to_dict() if incident.perimeter else None,
        "facts": incident.facts,
        "merged_into": incident.merged_into,
        "split_from": incident.split_from,
        "version": incident.version,
        "rev": rev,
        "created_at": now,
        "updated_at": now,
    }


def alarm_row(item: IncomingAlarm, incident_id: str, now: datetime) -> dict[str, Any]:
    """A new alarm as an ``alarms`` row: linked to ``incident_id``, which is also its provenance."""
    a = item.alarm
    return {
        "gateway_id": item.gateway_id,
        "alarm_id": a.alarm_id,
        "incident_id": incident_id,
        "original_incident_id": incident_id,
        "category": a.category.value,
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
        "fingerprint": item.fingerprint,
    }


def timeline_rows(entries: Iterable[Entry], at: datetime) -> list[dict[str, Any]]:
    """Timeline entries as ``timeline`` rows, all at ``at``."""
    return [
        {"incident_id": e.incident_id, "at": at, "actor": e.actor, "kind": e.kind, "detail": e.detail} for e in entries
    ]


# --- the correlation clock ---------------------------------------------------------------------


async def tick(conn: AsyncConnection, new_epoch: bool = False) -> int:
    """Bump the correlation clock (taking its row lock until commit); returns the new rev.
    ``new_epoch`` also tells every replica to drop its index (incidents were deleted).
    Raises RuntimeError when the clock row is missing (the migrations did not run)."""
    values: dict[str, Any] = {"rev": clock.c.rev + 1}
    if new_epoch:
        values["epoch"] = clock.c.epoch + 1
    row = (
        await conn.execute(update(clock).where(clock.c.id == 1).values(**values).returning(clock.c.rev, clock.c.epoch))
    ).first()
    if row is None:
        raise RuntimeError("correlation_clock is empty: the migrations did not run")
    conn.info["clock_epoch"] = int(row.epoch)
    return int(row.rev)


def clock_epoch(conn: AsyncConnection) -> int:
    """The clock epoch the last ``tick`` on this connection saw."""
    return int(conn.info.get("clock_epoch", 0))


# --- correlation's reads and writes ------------------------------------------------------------


def _open_incidents() -> Any:
    return select(incidents).where(incidents.c.stage.in_(OPEN), incidents.c.merged_into.is_(None))


async def open_incidents_since(conn: AsyncConnection, floor: datetime, until: datetime | None = None) -> list[Incident]:
    """Open, unmerged incidents whose last alarm is at or after ``floor`` (and before ``until``)."""
    q = _open_incidents().where(incidents.c.last_alarm_at >= floor)
    if until is not None:
        q = q.where(incidents.c.last_alarm_at < until)
    return [incident_from_row(r) for r in await conn.execute(q)]


async def incidents_changed_after(conn: AsyncConnection, rev: int) -> list[Incident]:
    """Every incident written after clock revision ``rev``, whatever its stage."""
    return [incident_from_row(r) for r in await conn.execute(select(incidents).where(incidents.c.rev > rev))]


class Taken(NamedTuple):
    """The alarms of a batch already stored: their incident, and what they said (fingerprint)."""

    incidents: dict[AlarmKey, str]
    fingerprints: dict[AlarmKey, str | None]


async def existing_alarms(conn: AsyncConnection, keys: Sequence[AlarmKey]) -> Taken:
    """Alarms already taken, by (gateway_id, alarm_id), with their incident and fingerprint; one
    indexed query per gateway in the batch."""
    by_gateway: dict[str, set[str]] = {}
    for gateway_id, alarm_id in keys:
        by_gateway.setdefault(gateway_id, set()).add(alarm_id)
    found = Taken({}, {})
    for gateway_id, alarm_ids in by_gateway.items():
        for chunk in chunks(sorted(alarm_ids), 900):
            rows = await conn.execute(
                select(alarms.c.alarm_id, alarms.c.incident_id, alarms.c.fingerprint).where(
                    alarms.c.gateway_id == gateway_id, alarms.c.alarm_id.in_(chunk)
                )
            )
            for r in rows:
                found.incidents[(gateway_id, r.alarm_id)] = r.incident_id
                found.fingerprints[(gateway_id, r.alarm_id)] = r.fingerprint
    return found


async def known_callers(conn: AsyncConnection, caller_keys: Iterable[str]) -> set[tuple[str, str]]:
    """The (incident_id, caller_key) pairs already recorded for these callers."""
    keys = list(set(caller_keys))
    pairs: set[tuple[str, str]] = set()
    for chunk in chunks(keys, 900):
        rows = await conn.execute(
            select(incident_callers.c.incident_id, incident_callers.c.caller_key).where(
                incident_callers.c.caller_key.in_(chunk)
            )
        )
        pairs.update((r.incident_id, r.caller_key) for r in rows)
    return pairs


async def save_correlation(uow: UnitOfWork, decision: Correlation, rev: int, now: datetime) -> None:
    """Write one batch's decision in the unit of work: new incidents, the changed ones' counts,
    level and verification, the alarms, the first-heard callers and the timeline (bulk writes)."""
    db, conn = uow.db, uow.conn
    await db.insert_many(conn, incidents, [incident_row(i, rev, now) for i in decision.opened])
    if decision.changed:
        await conn.execute(
            update(incidents)
            .where(incidents.c.id == bindparam("b_id"))
            .values(
                category=bindparam("category"),
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
                    "b_id": i.id,
                    "category": i.category.value,
                    "alarm_count": i.alarm_count,
                    "caller_count": i.caller_count,
                    "casualties": i.casualties,
                    "first_alarm_at": i.first_alarm_at,
                    "last_alarm_at": i.last_alarm_at,
                    "level": int(i.level),
                    "verified": i.verified,
                    "version": i.version,
                }
                for i in decision.changed
            ],
        )
    await db.insert_many(conn, alarms, [alarm_row(item, incident_id, now) for item, incident_id in decision.linked])
    callers = [{"incident_id": i, "caller_key": k} for i, k in decision.callers]
    await db.insert_many(conn, incident_callers, callers)
    await db.insert_many(conn, timeline, timeline_rows(decision.timeline, now))
    await add_refusals(conn, decision.refused, now)


async def add_refusals(conn: AsyncConnection, refused: Sequence[tuple[IncomingAlarm, str]], at: datetime) -> None:
    """Record alarms refused after parsing, each with its reason, at ``at``."""
    if refused:
        rows = [
            {"gateway_id": i.gateway_id, "alarm_id": i.alarm.alarm_id, "via": i.via, "at": at, "reason": reason}
            for i, reason in refused
        ]
        await conn.execute(alarm_refusals.insert(), rows)


# --- operator commands ---------------------------------------------------------------------------


async def get_incident(conn: AsyncConnection, incident_id: str) -> Row | None:
    """One ``incidents`` row, or None (also for an id no incident can have: PostgreSQL refuses
    a U+0000 in a query's text)."""
    if "\x00" in incident_id:
        return None
    return (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()


async def load_incident(conn: AsyncConnection, incident_id: str) -> Incident | None:
    """One incident as the domain sees it, or None."""
    row = await get_incident(conn, incident_id)
    return incident_from_row(row) if row is not None else None


async def update_incident(conn: AsyncConnection, incident_id: str, expected_version: int, **values: Any) -> bool:
    """The database guards concurrency: the write lands only if nobody changed the incident since
    ``expected_version``, and bumps the version; returns whether it landed."""
    res = await conn.execute(
        update(incidents)
        .where(and_(incidents.c.id == incident_id, incidents.c.version == expected_version))
        .values(version=expected_version + 1, **values)
    )
    return res.rowcount == 1


async def apply_change(conn: AsyncConnection, change: Change, version: int, rev: int, now: datetime) -> bool:
    """Write a decision's values and its timeline entry. A versioned change lands only on
    ``version`` (returns False if the incident moved on, writing nothing); an unversioned one
    always lands and leaves the version alone."""
    values = {**change.values, "rev": rev, "updated_at": now}
    if change.versioned:
        if not await update_incident(conn, change.incident_id, version, **values):
            return False
    else:
        await conn.execute(update(incidents).where(incidents.c.id == change.incident_id).values(**values))
    await add_timeline(conn, [change.entry], now)
    return True


async def insert_incident(conn: AsyncConnection, incident: Incident, rev: int, now: datetime) -> None:
    """Insert one new incident."""
    await conn.execute(incidents.insert().values(**incident_row(incident, rev, now)))


async def add_timeline(conn: AsyncConnection, entries: Sequence[Entry], at: datetime) -> None:
    """Append entries to their incidents' timelines, at ``at``."""
    if entries:
        await conn.execute(timeline.insert(), timeline_rows(entries, at))


class StoredAlarm(NamedTuple):
    """An incident's alarm as a split needs it: its key, its row, its facts, and the incident
    correlation first put it in."""

    key: AlarmKey
    seq: int
    facts: AlarmFacts
    original_incident_id: str = ""


async def incident_alarms(conn: AsyncConnection, incident_id: str) -> list[StoredAlarm]:
    """The incident's alarms, oldest first (received_at, then arrival)."""
    a = alarms
    rows = await conn.execute(
        select(
            a.c.seq,
            a.c.gateway_id,
            a.c.alarm_id,
            a.c.category,
            a.c.lat,
            a.c.lon,
            a.c.received_at,
            a.c.exercise,
            a.c.original_incident_id,
        )
        .where(a.c.incident_id == incident_id)
        .order_by(a.c.received_at, a.c.seq)
    )
    return [
        StoredAlarm(
            (r.gateway_id, r.alarm_id),
            r.seq,
            AlarmFacts(
                category=Category(r.category), lat=r.lat, lon=r.lon, received_at=r.received_at, exercise=r.exercise
            ),
            r.original_incident_id,
        )
        for r in rows
    ]


async def move_incident_alarms(conn: AsyncConnection, source_id: str, target_id: str) -> int:
    """Move every alarm of ``source_id`` to ``target_id`` (their provenance stays); returns how many."""
    res = await conn.execute(update(alarms).where(alarms.c.incident_id == source_id).values(incident_id=target_id))
    return int(res.rowcount)


async def move_alarms(conn: AsyncConnection, seqs: Sequence[int], target_id: str) -> None:
    """Move these alarms (by ``seq``) to ``target_id``; their provenance stays."""
    for chunk in chunks(list(seqs), 900):
        await conn.execute(update(alarms).where(alarms.c.seq.in_(chunk)).values(incident_id=target_id))


async def rebuild_callers(conn: AsyncConnection, incident_ids: list[str]) -> None:
    """Recompute which callers each of these incidents has heard from, from their alarms."""
    c, a = incident_callers, alarms
    await conn.execute(delete(c).where(c.c.incident_id.in_(incident_ids)))
    pairs = (
        select(a.c.incident_id, a.c.caller_key)
        .where(a.c.incident_id.in_(incident_ids), a.c.caller_key.is_not(None))
        .distinct()
    )
    await conn.execute(c.insert().from_select(["incident_id", "caller_key"], pairs))


async def recount(conn: AsyncConnection, incident_id: str) -> Counts:
    """Aggregates of an incident recomputed from its alarms (after a merge or a split)."""
    row = (
        await conn.execute(
            select(
                func.count(),
                func.min(alarms.c.received_at),
                func.max(alarms.c.received_at),
                func.coalesce(func.max(alarms.c.casualties), 0),
                func.count(alarms.c.caller_key.distinct()),
            ).where(alarms.c.incident_id == incident_id)
        )
    ).one()
    return Counts(
        alarm_count=int(row[0]),
        first_alarm_at=row[1],
        last_alarm_at=row[2],
        casualties=int(row[3]),
        caller_count=int(row[4]),
    )


async def purge_exercise(conn: AsyncConnection) -> tuple[int, int]:
    """Delete every exercise incident with its alarms, callers and timeline; live data untouched.
    Returns (incidents, alarms) deleted. Bump the clock to a new epoch in the same transaction."""
    t, a, c, tl = incidents, alarms, incident_callers, timeline
    ids = select(t.c.id).where(t.c.exercise.is_(True)).scalar_subquery()
    await conn.execute(delete(c).where(c.c.incident_id.in_(ids)))
    await conn.execute(delete(tl).where(tl.c.incident_id.in_(ids)))
    alarms_gone = (await conn.execute(delete(a).where(a.c.exercise.is_(True)))).rowcount
    incidents_gone = (await conn.execute(delete(t).where(t.c.exercise.is_(True)))).rowcount
    return int(incidents_gone), int(alarms_gone)
