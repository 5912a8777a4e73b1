"""The read side of the operator API: incidents as operators see them (with the steps the lifecycle
allows next), their alarms and timelines, lists with filters and cursors. Each answer is a
Pydantic model, so the OpenAPI document describes it. Queries only: every write is in ``store``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictFloat
from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.contracts import CategoryName, LevelName, StageName
from ecs.db import Database
from ecs.errors import InvalidInput, NotFound

from . import store
from .domain import MAX_RADIUS_M, Level, Participant, Stage

# Spelled from the vocabulary, so the OpenAPI lists exactly the colours Level has.
LevelColour = Literal[tuple(level.colour for level in Level)]  # type: ignore[valid-type]

Timestamp = Annotated[datetime, PlainSerializer(lambda v: v.isoformat(), return_type=str, when_used="json")]
"""An aware datetime, written as Python's ``isoformat`` (RFC 3339, ``+00:00`` for UTC)."""


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- answers ---------------------------------------------------------------------------------


class CirclePerimeter(_View):
    """A circular cordon: its centre and radius in metres."""

    kind: Literal["circle"]
    # strict: true or "31.2" is not a number (an operator's body takes this shape as it is).
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False, strict=True)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False, strict=True)
    radius_m: float = Field(gt=0, le=MAX_RADIUS_M, allow_inf_nan=False, strict=True)


class PolygonPerimeter(_View):
    """A polygonal cordon: its ring, open (the first point is not repeated)."""

    kind: Literal["polygon"]
    points: list[tuple[StrictFloat, StrictFloat]] = Field(min_length=3, max_length=500, description="[lat, lon] pairs")


PerimeterShape = Annotated[CirclePerimeter | PolygonPerimeter, Field(discriminator="kind")]


class Location(_View):
    """Where the incident is: its first alarm's place, WGS-84."""

    lat: float
    lon: float


class NextStepView(_View):
    """A step the lifecycle has from the current stage: allowed now, or what is still missing."""

    stage: StageName
    allowed: bool
    missing: list[str]


class IncidentView(_View):
    """An incident as operators see it."""

    id: str
    category: CategoryName
    stage: StageName
    level: int = Field(description="1 = I (red) .. 4 = IV (blue)")
    level_name: LevelName
    level_colour: LevelColour
    exercise: bool
    location: Location
    first_alarm_at: Timestamp
    last_alarm_at: Timestamp
    alarm_count: int
    caller_count: int = Field(description="distinct identified callers")
    casualties: int = Field(description="the most any alarm reported")
    verified: bool
    perimeter: PerimeterShape | None
    facts: dict[str, Any] = Field(description="lifecycle facts: on scene, under control, statement, report, settled")
    merged_into: str | None
    split_from: str | None
    version: int = Field(description="send it back with a change; a changed incident answers 409")
    created_at: Timestamp
    updated_at: Timestamp
    next: list[NextStepView]


class AlarmLocationView(_View):
    """Where the alarm was: WGS-84 (``lat``, ``lon``) and as reported (``reported_*`` in ``crs``)."""

    lat: float
    lon: float
    reported_lat: float
    reported_lon: float
    crs: str
    accuracy_m: float | None
    address: str | None


class CallerView(_View):
    """Who called."""

    number: str
    name: str | None


class AlarmView(_View):
    """One alarm of an incident, with its provenance (the incident correlation first put it in)."""

    gateway_id: str
    alarm_id: str
    incident_id: str
    original_incident_id: str
    category: CategoryName
    location: AlarmLocationView
    received_at: Timestamp
    ingested_at: Timestamp
    caller: CallerView | None
    description: str
    casualties: int | None
    exercise: bool
    via: Literal["http", "nats"]


class TimelineEntryView(_View):
    """One change on the incident's timeline: when, who, what."""

    at: Timestamp
    actor: str
    kind: str
    detail: dict[str, Any]


class IncidentDetail(IncidentView):
    """An incident with its latest alarms (newest first) and its whole timeline (oldest first)."""

    alarms: list[AlarmView]
    timeline: list[TimelineEntryView]


class IncidentPage(_View):
    """A page of incidents, newest first; ``next_cursor`` fetches the next page (None: the last)."""

    items: list[IncidentView]
    next_cursor: str | None


class AlarmPage(_View):
    """A page of an incident's alarms, oldest first; ``next_cursor`` fetches the next page."""

    items: list[AlarmView]
    next_cursor: str | None


class RefusalView(_View):
    """An alarm refused after it was parsed: an alarm_id reused for a different alarm, or input
    the database would not store."""

    gateway_id: str
    alarm_id: str
    via: str = Field(description="http or nats")
    at: Timestamp = Field(description="when it was refused (UTC)")
    reason: str


class RefusalPage(_View):
    """A page of refused alarms, newest first; ``next_cursor`` fetches the next page."""

    items: list[RefusalView]
    next_cursor: str | None


class SplitView(_View):
    """The incident the alarms left, and the new incident they form."""

    incident: IncidentView
    new_incident: IncidentView


class ExerciseView(_View):
    """How much exercise data incident-intake holds (what ``DELETE /v1/exercise/incidents`` would purge)."""

    incidents: int
    open_incidents: int
    alarms: int


class PurgeView(_View):
    """How much exercise data a purge deleted."""

    incidents_purged: int
    alarms_purged: int


# --- rows to answers ---------------------------------------------------------------------------


def incident_view(row: Any, participants: Sequence[Participant]) -> IncidentView:
    """An ``incidents`` row as operators see it; ``next`` from the domain's guards with the
    participants the settings require."""
    level = Level(row.level)
    steps = store.incident_from_row(row).next_steps(participants)
    return IncidentView(
        id=row.id,
        category=row.category,
        stage=row.stage,
        level=int(level),
        level_name=level.name,
        level_colour=level.colour,
        exercise=row.exercise,
        location=Location(lat=row.lat, lon=row.lon),
        first_alarm_at=row.first_alarm_at,
        last_alarm_at=row.last_alarm_at,
        alarm_count=row.alarm_count,
        caller_count=row.caller_count,
        casualties=row.casualties,
        verified=row.verified,
        perimeter=row.perimeter,
        facts=row.facts or {},
        merged_into=row.merged_into,
        split_from=row.split_from,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        next=[NextStepView(stage=s.stage, allowed=s.allowed, missing=s.missing) for s in steps],
    )


def alarm_view(r: Any) -> AlarmView:
    """An ``alarms`` row as operators see it."""
    return AlarmView(
        gateway_id=r.gateway_id,
        alarm_id=r.alarm_id,
        incident_id=r.incident_id,
        original_incident_id=r.original_incident_id,
        category=r.category,
        location=AlarmLocationView(
            lat=r.lat,
            lon=r.lon,
            reported_lat=r.reported_lat,
            reported_lon=r.reported_lon,
            crs=r.crs,
            accuracy_m=r.accuracy_m,
            address=r.address,
        ),
        received_at=r.received_at,
        ingested_at=r.ingested_at,
        caller=CallerView(number=r.caller_number, name=r.caller_name) if r.caller_number else None,
        description=r.description,
        casualties=r.casualties,
        exercise=r.exercise,
        via=r.via,
    )


# --- cursors -----------------------------------------------------------------------------------


def _cursor_encode(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode()


def _cursor_decode(cursor: str, *types: type) -> list[Any]:
    """The parts of a cursor this API gave out, each of the expected type (an int within 64
    bits, a str the database can compare); else InvalidInput (422)."""
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except Exception:
        parts = None
    if (
        not isinstance(parts, list)
        or len(parts) != len(types)
        or not all(isinstance(p, t) and _storable(p) for p, t in zip(parts, types, strict=True))
    ):
        raise InvalidInput("cursor is not one this API gave out", field="cursor")
    return parts


def _storable(part: Any) -> bool:
    if isinstance(part, bool):
        return False
    if isinstance(part, int):
        return -(2**63) <= part < 2**63
    if isinstance(part, str):
        return "\x00" not in part and len(part) <= 200
    return True


# --- queries -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IncidentFilter:
    """Which incidents a list shows: each given condition must hold. ``bbox`` is (min_lat,
    min_lon, max_lat, max_lon); ``since``/``until`` bound the first alarm's time (aware)."""

    stages: Sequence[str] = ()
    levels: Sequence[int] = ()
    categories: Sequence[str] = ()
    exercise: bool | None = None
    bbox: tuple[float, float, float, float] | None = None
    since: datetime | None = None
    until: datetime | None = None
    include_merged: bool = False


async def incident_row(db: Database, incident_id: str) -> Any:
    """One ``incidents`` row; raises NotFound (404)."""
    async with db.engine.connect() as conn:
        row = await store.get_incident(conn, incident_id)
    if row is None:
        raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
    return row


async def incident_page(
    db: Database, where: IncidentFilter, limit: int, cursor: str | None, participants: Sequence[Participant]
) -> IncidentPage:
    """Incidents matching ``where``, newest first (created_at, then id), ``limit`` at a time.
    Raises InvalidInput (422) for a cursor this API did not give out."""
    t = store.incidents
    q = select(t)
    if where.stages:
        q = q.where(t.c.stage.in_([str(s) for s in where.stages]))
    if where.levels:
        q = q.where(t.c.level.in_(list(where.levels)))
    if where.categories:
        q = q.where(t.c.category.in_([str(c) for c in where.categories]))
    if where.exercise is not None:
        q = q.where(t.c.exercise == where.exercise)
    if not where.include_merged:
        q = q.where(t.c.merged_into.is_(None))
    if where.bbox:
        min_lat, min_lon, max_lat, max_lon = where.bbox
        q = q.where(t.c.lat.between(min_lat, max_lat), t.c.lon.between(min_lon, max_lon))
    if where.since:
        q = q.where(t.c.first_alarm_at >= where.since)
    if where.until:
        q = q.where(t.c.first_alarm_at < where.until)
    if cursor:
        created, last_id = _cursor_decode(cursor, str, str)
        try:
            created_at = datetime.fromisoformat(created)
        except ValueError:
            raise InvalidInput("cursor is not one this API gave out", field="cursor") from None
        if created_at.tzinfo is None:
            raise InvalidInput("cursor is not one this API gave out", field="cursor")
        q = q.where(or_(t.c.created_at < created_at, and_(t.c.created_at == created_at, t.c.id < last_id)))
    q = q.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    page = rows[:limit]
    nxt = _cursor_encode(page[-1].created_at.isoformat(), page[-1].id) if len(rows) > limit else None
    return IncidentPage(items=[incident_view(r, participants) for r in page], next_cursor=nxt)


async def incident_detail(
    db: Database, incident_id: str, alarms_limit: int, participants: Sequence[Participant]
) -> IncidentDetail:
    """One incident with its latest ``alarms_limit`` alarms and its timeline; raises NotFound."""
    a, tl = store.alarms, store.timeline
    async with db.engine.connect() as conn:
        row = await _row(conn, incident_id)
        alarm_rows = (
            await conn.execute(
                select(a).where(a.c.incident_id == incident_id).order_by(a.c.seq.desc()).limit(alarms_limit)
            )
        ).all()
        entries = (await conn.execute(select(tl).where(tl.c.incident_id == incident_id).order_by(tl.c.seq))).all()
    view = incident_view(row, participants)
    return IncidentDetail(
        **dict(view),
        alarms=[alarm_view(r) for r in alarm_rows],
        timeline=[TimelineEntryView(at=e.at, actor=e.actor, kind=e.kind, detail=e.detail) for e in entries],
    )


async def alarm_page(db: Database, incident_id: str, limit: int, cursor: str | None) -> AlarmPage:
    """The incident's alarms, oldest first (arrival order), ``limit`` at a time; raises NotFound,
    or InvalidInput (422) for a cursor this API did not give out."""
    a = store.alarms
    q = select(a).where(a.c.incident_id == incident_id)
    async with db.engine.connect() as conn:
        await _row(conn, incident_id)
        if cursor:
            (after,) = _cursor_decode(cursor, int)
            q = q.where(a.c.seq > after)
        rows = (await conn.execute(q.order_by(a.c.seq).limit(limit + 1))).all()
    page = rows[:limit]
    return AlarmPage(
        items=[alarm_view(r) for r in page],
        next_cursor=_cursor_encode(page[-1].seq) if len(rows) > limit else None,
    )


async def exercise_data(db: Database) -> ExerciseView:
    """Counts of the exercise incidents (all, and those not yet closed or cancelled) and alarms."""
    i, a = store.incidents.c, store.alarms.c
    terminal = [s.value for s in Stage if not s.is_open]
    async with db.engine.connect() as conn:
        incidents = await conn.scalar(select(func.count()).where(i.exercise.is_(True)))
        open_ = await conn.scalar(select(func.count()).where(i.exercise.is_(True), i.stage.not_in(terminal)))
        alarms = await conn.scalar(select(func.count()).where(a.exercise.is_(True)))
    return ExerciseView(incidents=int(incidents or 0), open_incidents=int(open_ or 0), alarms=int(alarms or 0))


async def refusal_page(db: Database, limit: int, cursor: str | None) -> RefusalPage:
    """Alarms refused after parsing, newest first, ``limit`` at a time; raises InvalidInput (422)
    for a cursor this API did not give out."""
    r = store.alarm_refusals
    q = select(r)
    if cursor:
        (before,) = _cursor_decode(cursor, int)
        q = q.where(r.c.seq < before)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(r.c.seq.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    return RefusalPage(
        items=[
            RefusalView(gateway_id=x.gateway_id, alarm_id=x.alarm_id, via=x.via, at=x.at, reason=x.reason) for x in page
        ],
        next_cursor=_cursor_encode(page[-1].seq) if len(rows) > limit else None,
    )


async def _row(conn: AsyncConnection, incident_id: str) -> Any:
    row = await store.get_incident(conn, incident_id)
    if row is None:
        raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
    return row
