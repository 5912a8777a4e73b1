"""incident-intake's tables and the queries on them (SQLAlchemy Core: the hot path stays cheap)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

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
    func,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import BigId, UTCDateTime, new_metadata

from .domain import OPEN_STAGES

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
    # alarm_id leads: the duplicate check looks up a batch of alarm ids, usually of one gateway.
    UniqueConstraint("alarm_id", "gateway_id"),
    Index("ix_alarms_incident", "incident_id", "seq"),
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

OPEN = [str(s) for s in OPEN_STAGES]


async def tick(conn: AsyncConnection, new_epoch: bool = False) -> int:
    """Bump the correlation clock (taking its row lock until commit); returns the new rev."""
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
    return int(conn.info.get("clock_epoch", 0))


def _open_incidents() -> Any:
    return select(incidents).where(incidents.c.stage.in_(OPEN), incidents.c.merged_into.is_(None))


async def open_incidents_since(conn: AsyncConnection, floor: datetime, until: datetime | None = None) -> Sequence[Row]:
    q = _open_incidents().where(incidents.c.last_alarm_at >= floor)
    if until is not None:
        q = q.where(incidents.c.last_alarm_at < until)
    return (await conn.execute(q)).all()


async def incidents_changed_after(conn: AsyncConnection, rev: int) -> Sequence[Row]:
    return (await conn.execute(select(incidents).where(incidents.c.rev > rev))).all()


async def existing_alarms(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Alarms already taken, by (gateway_id, alarm_id); one indexed query per gateway in the batch."""
    by_gateway: dict[str, set[str]] = {}
    for gateway_id, alarm_id in keys:
        by_gateway.setdefault(gateway_id, set()).add(alarm_id)
    found: dict[tuple[str, str], str] = {}
    for gateway_id, alarm_ids in by_gateway.items():
        for chunk in _chunks(sorted(alarm_ids), 900):
            rows = await conn.execute(
                select(alarms.c.alarm_id, alarms.c.incident_id).where(
                    alarms.c.gateway_id == gateway_id, alarms.c.alarm_id.in_(chunk)
                )
            )
            found.update({(gateway_id, r.alarm_id): r.incident_id for r in rows})
    return found


async def known_callers(conn: AsyncConnection, caller_keys: Iterable[str]) -> set[tuple[str, str]]:
    keys = list(set(caller_keys))
    pairs: set[tuple[str, str]] = set()
    for chunk in _chunks(keys, 900):
        rows = await conn.execute(
            select(incident_callers.c.incident_id, incident_callers.c.caller_key).where(
                incident_callers.c.caller_key.in_(chunk)
            )
        )
        pairs.update((r.incident_id, r.caller_key) for r in rows)
    return pairs


async def get_incident(conn: AsyncConnection, incident_id: str) -> Row | None:
    return (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()


async def update_incident(conn: AsyncConnection, incident_id: str, expected_version: int, **values: Any) -> bool:
    """The database guards concurrency: the write lands only if nobody changed the incident since."""
    res = await conn.execute(
        update(incidents)
        .where(and_(incidents.c.id == incident_id, incidents.c.version == expected_version))
        .values(version=expected_version + 1, **values)
    )
    return res.rowcount == 1


async def add_timeline(conn: AsyncConnection, entries: list[dict[str, Any]]) -> None:
    if entries:
        await conn.execute(timeline.insert(), entries)


async def recount(conn: AsyncConnection, incident_id: str) -> dict[str, Any]:
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
    return {
        "alarm_count": int(row[0]),
        "first_alarm_at": row[1],
        "last_alarm_at": row[2],
        "casualties": int(row[3]),
        "caller_count": int(row[4]),
    }


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
