"""public-notification's tables and every write (and every read a handler decides on), SQLAlchemy Core.

The database guards every step that must happen once: a status changes with one conditional
``UPDATE ... WHERE status = :expected AND version = :seen RETURNING``; a check constraint refuses an
approver who is the author; ``sent`` is written only while it is still empty, so it is frozen at
publication; an Update or Cancel supersedes its referenced alert only while that one is still
published, so two changes racing for one alert cannot both go out; a clock starts once per
incident and kind (primary key) and is met, warned or missed once (``WHERE ... IS NULL``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import UTCDateTime, new_metadata, scene_of
from ecs.errors import InvalidInput
from ecs.vocabulary import Level, Stage

from .domain import (
    AlertStatus,
    ChannelKind,
    Clock,
    ClockKind,
    DeliveryPlan,
    DeliveryStatus,
    Holdings,
    MsgType,
    RumorStatus,
    StatementStatus,
)

metadata = new_metadata()


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _among(conn: AsyncConnection, column: Any, ids: Sequence[str]) -> Any:
    """``column`` is one of ``ids``: on PostgreSQL ``= ANY(<one text array>)``, one statement
    prepared once whatever the count (an IN list of n parameters is a new statement for each n,
    parsed and planned again: a delivery round's hundreds of ids made that most of its cost);
    on SQLite an IN list."""
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(String)))
    return column.in_(list(ids))


_PUBLISHED_ONCE = [
    s.value for s in (AlertStatus.published, AlertStatus.updated, AlertStatus.cancelled, AlertStatus.expired)
]

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("category", String(32), nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("perimeter", JSON, nullable=True),
    Column("reported_at", UTCDateTime, nullable=False),
    Column("settled", Boolean, nullable=True),  # the last value published; NULL: never published
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("stage", [s.value for s in Stage]), name="stage"),
    CheckConstraint("level BETWEEN 1 AND 4", name="level"),
)

plans = Table(
    "plans",
    metadata,
    Column("category", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("levels", JSON, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("identifier", String(255), nullable=False, unique=True),
    Column("incident_id", String(64), nullable=False, index=True),
    Column("msg_type", String(8), nullable=False),
    Column("cap_status", String(16), nullable=False),
    Column("status", String(24), nullable=False),
    Column("version", Integer, nullable=False),
    Column("category", String(32), nullable=False),
    Column("level", SmallInteger, nullable=False),
    Column("infos", JSON, nullable=False),
    Column("area", JSON, nullable=False),
    Column("references_id", String(64), ForeignKey("alerts.id"), nullable=True),
    Column("expires", UTCDateTime, nullable=True),
    Column("author", String(255), nullable=False),
    Column("approver", String(255), nullable=True),
    Column("approved_at", UTCDateTime, nullable=True),
    Column("sent", UTCDateTime, nullable=True),
    Column("exercise", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("status", [s.value for s in AlertStatus]), name="status"),
    CheckConstraint("msg_type IN ('Alert', 'Update', 'Cancel')", name="msg_type"),
    CheckConstraint("(msg_type = 'Alert') = (references_id IS NULL)", name="references"),
    CheckConstraint("approver IS NULL OR approver <> author", name="two_persons"),
    CheckConstraint(f"NOT ({_in('status', _PUBLISHED_ONCE)}) OR sent IS NOT NULL", name="sent"),
    CheckConstraint("exercise = (cap_status = 'Exercise')", name="exercise_status"),
)

statements = Table(
    "statements",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("incident_id", String(64), nullable=False, index=True),
    Column("kind", String(24), nullable=False),
    Column("status", String(24), nullable=False),
    Column("version", Integer, nullable=False),
    Column("text_zh", Text, nullable=False),
    Column("text_en", Text, nullable=False),
    Column("answers", JSON, nullable=False),  # the rumor ids it rebuts
    Column("author", String(255), nullable=False),
    Column("approver", String(255), nullable=True),
    Column("published_at", UTCDateTime, nullable=True),
    Column("exercise", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("status", [s.value for s in StatementStatus]), name="status"),
    CheckConstraint("approver IS NULL OR approver <> author", name="two_persons"),
    CheckConstraint("(status = 'published') = (published_at IS NOT NULL)", name="published_at"),
)

clocks = Table(
    "clocks",
    metadata,
    Column("incident_id", String(64), nullable=False),
    Column("kind", String(24), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("met_at", UTCDateTime, nullable=True),
    Column("met_by", String(64), nullable=True),
    Column("warned_at", UTCDateTime, nullable=True),
    Column("missed_at", UTCDateTime, nullable=True),
    Column("exercise", Boolean, nullable=False),
    PrimaryKeyConstraint("incident_id", "kind"),
    CheckConstraint(_in("kind", [k.value for k in ClockKind]), name="kind"),
    CheckConstraint("due_at > started_at", name="due"),
)
Index(
    "ix_clocks_open",
    clocks.c.due_at,
    sqlite_where=clocks.c.met_at.is_(None),
    postgresql_where=clocks.c.met_at.is_(None),
)

rumors = Table(
    "rumors",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("incident_id", String(64), nullable=False, index=True),
    Column("status", String(24), nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", String(255), nullable=False),
    Column("text", Text, nullable=False),
    Column("link", String(2048), nullable=True),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("reach", Integer, nullable=True),
    Column("reporter", String(255), nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("status", [s.value for s in RumorStatus]), name="status"),
    CheckConstraint("reach IS NULL OR reach >= 0", name="reach"),
)

rumor_answers = Table(
    "rumor_answers",
    metadata,
    Column("rumor_id", String(64), ForeignKey("rumors.id"), nullable=False),
    Column("statement_id", String(64), ForeignKey("statements.id"), nullable=True),
    Column("alert_id", String(64), ForeignKey("alerts.id"), nullable=True),
    Column("answered_at", UTCDateTime, nullable=False),
    Column("seq", Integer, nullable=False),
    PrimaryKeyConstraint("rumor_id", "seq"),
    CheckConstraint("(statement_id IS NULL) <> (alert_id IS NULL)", name="one_answer"),
)


# --- incidents and plans ---------------------------------------------------------------------------


async def remember_incident(conn: AsyncConnection, values: dict[str, Any], db: Any) -> None:
    """Insert the incident if it is new (the first event of it wins the insert)."""
    await conn.execute(db.insert_ignore(incidents).values(**values))


async def follow_incident(conn: AsyncConnection, incident_id: str, version: int, now: datetime, **values: Any) -> bool:
    """Take the incident's newer stage or level; an event older than what is stored changes
    nothing (events may come out of order). Returns True if it changed."""
    i = incidents.c
    stmt = (
        update(incidents)
        .where(i.id == incident_id, i.version <= version)
        .values(version=version, updated_at=now, **values)
        .returning(i.id)
    )
    return (await conn.execute(stmt)).first() is not None


async def follow_category(conn: AsyncConnection, incident_id: str, version: int, now: datetime, category: str) -> bool:
    """A medical-only incident became its scene (ecs.db.scene_of), unless a newer event was
    already taken. Returns True if the row changed."""
    return await follow_incident(conn, incident_id, version, now, category=scene_of(incidents.c.category, category))


async def get_incident(conn: AsyncConnection, incident_id: str) -> Row[Any] | None:
    return (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()


async def set_settled(conn: AsyncConnection, incident_id: str, settled: bool) -> bool:
    """Record ``settled`` if it differs from what was last published; True when it changed, so
    that exactly one transaction publishes each change."""
    i = incidents.c
    stmt = (
        update(incidents)
        .where(i.id == incident_id, (i.settled.is_(None)) | (i.settled != settled))
        .values(settled=settled)
        .returning(i.id)
    )
    return (await conn.execute(stmt)).first() is not None


async def holdings(conn: AsyncConnection, incident_id: str) -> Holdings | None:
    """The status of everything the service holds for the incident (None: unknown incident)."""
    incident = await get_incident(conn, incident_id)
    if incident is None:
        return None
    a = await conn.execute(select(alerts.c.status, alerts.c.msg_type).where(alerts.c.incident_id == incident_id))
    s = await conn.execute(select(statements.c.status).where(statements.c.incident_id == incident_id))
    r = await conn.execute(select(rumors.c.status).where(rumors.c.incident_id == incident_id))
    return Holdings(
        Stage(incident.stage),
        tuple((AlertStatus(x[0]), MsgType(x[1])) for x in a),
        tuple(StatementStatus(x[0]) for x in s),
        tuple(RumorStatus(x[0]) for x in r),
    )


async def save_plan(conn: AsyncConnection, category: str, version: int, levels: dict[str, Any], db: Any) -> None:
    """Keep the newest version of a category's plan (an older one arriving late changes nothing)."""
    p = plans.c
    await conn.execute(db.insert_ignore(plans).values(category=category, version=version, levels=levels))
    await conn.execute(
        update(plans).where(p.category == category, p.version < version).values(version=version, levels=levels)
    )


async def plan_templates(conn: AsyncConnection, category: str, level: Level, field: str) -> dict[str, str]:
    """The notification templates of the category's plan at ``level`` (empty: the level has none).

    Raises InvalidInput (422, naming ``field``) when no plan for the category has reached the
    service yet: dispatch publishes its plans on start and on every change, so this passes.
    """
    row = (await conn.execute(select(plans.c.levels).where(plans.c.category == category))).first()
    if row is None:
        raise InvalidInput(
            f"no response plan for {category} has reached public-notification yet (dispatch publishes it): "
            "write the text by hand or try again shortly",
            field=field,
        )
    part = row[0].get(level.name) or {}
    return dict(part.get("notification_templates") or {})


async def plan_version(conn: AsyncConnection, category: str) -> int | None:
    """The version of the category's plan the service holds (None: none has arrived yet)."""
    return (await conn.execute(select(plans.c.version).where(plans.c.category == category))).scalar()


async def plan_values(conn: AsyncConnection, category: str, level: Level) -> dict[str, Any]:
    """The plan's numbers a template may use (isolation and evacuation radii, metres)."""
    row = (await conn.execute(select(plans.c.levels).where(plans.c.category == category))).first()
    part = (row[0].get(level.name) or {}) if row is not None else {}
    return {k: part.get(k) for k in ("isolation_radius_m", "evacuation_radius_m")}


# --- alerts ------------------------------------------------------------------------------------


async def insert_alert(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(alerts.insert().values(**values))


async def get_alert(conn: AsyncConnection, alert_id: str) -> Row[Any] | None:
    return (await conn.execute(select(alerts).where(alerts.c.id == alert_id))).first()


async def get_alerts(conn: AsyncConnection, alert_ids: set[str]) -> dict[str, Row[Any]]:
    """The alerts of these ids, by id (read in one statement)."""
    if not alert_ids:
        return {}
    return {r.id: r for r in await conn.execute(select(alerts).where(_among(conn, alerts.c.id, sorted(alert_ids))))}


async def move_alert(
    conn: AsyncConnection,
    alert_id: str,
    from_status: AlertStatus,
    to_status: AlertStatus,
    now: datetime,
    seen_version: int | None = None,
    **values: Any,
) -> Row[Any] | None:
    """Move the alert on if it is still ``from_status`` (and ``seen_version``, when given); returns
    the changed row, or None when another transaction moved it first."""
    a = alerts.c
    where = [a.id == alert_id, a.status == from_status.value]
    if seen_version is not None:
        where.append(a.version == seen_version)
    stmt = (
        update(alerts)
        .where(*where)
        .values(status=to_status.value, version=a.version + 1, updated_at=now, **values)
        .returning(*alerts.c)
    )
    return (await conn.execute(stmt)).first()


async def publish_alert(conn: AsyncConnection, alert_id: str, now: datetime) -> Row[Any] | None:
    """approved → published, and ``sent`` written now, only while it is empty (frozen after)."""
    a = alerts.c
    stmt = (
        update(alerts)
        .where(a.id == alert_id, a.status == AlertStatus.approved.value, a.sent.is_(None))
        .values(status=AlertStatus.published.value, sent=now, version=a.version + 1, updated_at=now)
        .returning(*alerts.c)
    )
    return (await conn.execute(stmt)).first()


async def edit_alert(
    conn: AsyncConnection, alert_id: str, seen_version: int, now: datetime, **values: Any
) -> Row[Any] | None:
    """Change a draft's content if it is still the draft the officer saw; None otherwise."""
    a = alerts.c
    stmt = (
        update(alerts)
        .where(a.id == alert_id, a.status == AlertStatus.draft.value, a.version == seen_version)
        .values(version=a.version + 1, updated_at=now, **values)
        .returning(*alerts.c)
    )
    return (await conn.execute(stmt)).first()


async def live_alerts(conn: AsyncConnection, incident_id: str) -> list[Row[Any]]:
    a = alerts.c
    stmt = select(alerts).where(a.incident_id == incident_id, a.status == AlertStatus.published.value)
    return list(await conn.execute(stmt))


# --- statements --------------------------------------------------------------------------------


async def insert_statement(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(statements.insert().values(**values))


async def get_statement(conn: AsyncConnection, statement_id: str) -> Row[Any] | None:
    return (await conn.execute(select(statements).where(statements.c.id == statement_id))).first()


async def get_statements(conn: AsyncConnection, statement_ids: set[str]) -> dict[str, Row[Any]]:
    """The statements of these ids, by id (read in one statement)."""
    if not statement_ids:
        return {}
    s = statements.c
    return {r.id: r for r in await conn.execute(select(statements).where(s.id.in_(sorted(statement_ids))))}


async def move_statement(
    conn: AsyncConnection,
    statement_id: str,
    from_status: StatementStatus,
    to_status: StatementStatus,
    now: datetime,
    seen_version: int | None = None,
    **values: Any,
) -> Row[Any] | None:
    """Move the statement on if it is still ``from_status`` (and ``seen_version``); None otherwise."""
    s = statements.c
    where = [s.id == statement_id, s.status == from_status.value]
    if seen_version is not None:
        where.append(s.version == seen_version)
    stmt = (
        update(statements)
        .where(*where)
        .values(status=to_status.value, version=s.version + 1, updated_at=now, **values)
        .returning(*statements.c)
    )
    return (await conn.execute(stmt)).first()


# --- clocks ------------------------------------------------------------------------------------


async def start_clocks(conn: AsyncConnection, rows: Sequence[dict[str, Any]], db: Any) -> list[Clock]:
    """Start the clocks that are not running yet (one per incident and kind); returns those started."""
    started: list[Clock] = []
    for row in rows:
        if (await conn.execute(db.insert_ignore(clocks).values(**row))).rowcount == 1:
            started.append(Clock(row["incident_id"], ClockKind(row["kind"]), row["started_at"], row["due_at"]))
    return started


async def meet_clocks(
    conn: AsyncConnection, incident_id: str, kinds: Sequence[ClockKind], statement_id: str, now: datetime
) -> list[Clock]:
    """Mark the incident's clocks of ``kinds`` met by the statement, those not met yet; returns them."""
    c = clocks.c
    stmt = (
        update(clocks)
        .where(c.incident_id == incident_id, c.kind.in_([k.value for k in kinds]), c.met_at.is_(None))
        .values(met_at=now, met_by=statement_id)
        .returning(*clocks.c)
    )
    return [_clock(r) for r in await conn.execute(stmt)]


async def warn_clocks(conn: AsyncConnection, warn_before: datetime, now: datetime) -> list[Clock]:
    """Clocks unmet and due before ``warn_before`` not warned yet: mark them warned, once."""
    c = clocks.c
    stmt = (
        update(clocks)
        .where(c.met_at.is_(None), c.warned_at.is_(None), c.missed_at.is_(None), c.due_at <= warn_before)
        .values(warned_at=now)
        .returning(*clocks.c)
    )
    return [_clock(r) for r in await conn.execute(stmt)]


async def miss_clocks(conn: AsyncConnection, now: datetime) -> list[Clock]:
    """Clocks unmet past their due time: record them missed, once."""
    c = clocks.c
    stmt = (
        update(clocks)
        .where(c.met_at.is_(None), c.missed_at.is_(None), c.due_at <= now)
        .values(missed_at=now)
        .returning(*clocks.c)
    )
    return [_clock(r) for r in await conn.execute(stmt)]


def _clock(r: Row[Any]) -> Clock:
    return Clock(r.incident_id, ClockKind(r.kind), r.started_at, r.due_at, r.met_at, r.warned_at, r.missed_at)


async def clock_exercise(conn: AsyncConnection, incident_id: str) -> bool:
    row = (await conn.execute(select(incidents.c.exercise).where(incidents.c.id == incident_id))).first()
    return bool(row[0]) if row is not None else False


# --- rumors ------------------------------------------------------------------------------------


async def insert_rumor(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(rumors.insert().values(**values))


async def get_rumor(conn: AsyncConnection, rumor_id: str) -> Row[Any] | None:
    return (await conn.execute(select(rumors).where(rumors.c.id == rumor_id))).first()


async def move_rumor(
    conn: AsyncConnection,
    rumor_id: str,
    from_status: RumorStatus,
    to_status: RumorStatus,
    now: datetime,
    seen_version: int | None = None,
) -> Row[Any] | None:
    """Move the rumor on if it is still ``from_status`` (and ``seen_version``); None otherwise."""
    r = rumors.c
    where = [r.id == rumor_id, r.status == from_status.value]
    if seen_version is not None:
        where.append(r.version == seen_version)
    stmt = (
        update(rumors)
        .where(*where)
        .values(status=to_status.value, version=r.version + 1, updated_at=now)
        .returning(*rumors.c)
    )
    return (await conn.execute(stmt)).first()


async def link_answer(
    conn: AsyncConnection, rumor_id: str, now: datetime, statement_id: str | None = None, alert_id: str | None = None
) -> None:
    """Link the rumor to the statement or alert that answered it."""
    seq = (await conn.execute(select(rumor_answers.c.seq).where(rumor_answers.c.rumor_id == rumor_id))).all()
    await conn.execute(
        rumor_answers.insert().values(
            rumor_id=rumor_id, statement_id=statement_id, alert_id=alert_id, answered_at=now, seq=len(seq) + 1
        )
    )


# --- channels and deliveries ---------------------------------------------------------------------

channels = Table(
    "channels",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("name", String(255), nullable=False),
    Column("exercise", Boolean, nullable=False),  # an exercise channel: receives exercise alerts only
    Column("url", String(2048), nullable=True),  # a webhook's receiver
    Column("secret", String(255), nullable=True),  # a webhook's HMAC key
    Column("enabled", Boolean, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint("kind IN ('webhook', 'sms', 'cell_broadcast', 'social')", name="kind"),
    CheckConstraint("kind <> 'webhook' OR (url IS NOT NULL AND secret IS NOT NULL)", name="webhook"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(160), primary_key=True),  # <alert or statement>.<channel>.<round>: the delivery key
    Column("alert_id", String(64), ForeignKey("alerts.id"), nullable=True),
    Column("statement_id", String(64), ForeignKey("statements.id"), nullable=True),
    Column("channel_id", String(64), ForeignKey("channels.id"), nullable=False),
    Column("round", Integer, nullable=False),  # 1, then one more for each re-publication
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("targets", JSON, nullable=True),  # SMS and cell broadcast: the target ids inside the area
    Column("created_at", UTCDateTime, nullable=False),
    CheckConstraint(_in("status", [s.value for s in DeliveryStatus]), name="status"),
    CheckConstraint("attempts >= 0", name="attempts"),
    CheckConstraint("(alert_id IS NULL) <> (statement_id IS NULL)", name="one_subject"),
    UniqueConstraint("alert_id", "channel_id", "round", name="uq_deliveries_once"),
    UniqueConstraint("statement_id", "channel_id", "round", name="uq_deliveries_statement_once"),
)
Index(
    "ix_deliveries_due",
    deliveries.c.next_attempt_at,
    sqlite_where=deliveries.c.status == "pending",
    postgresql_where=deliveries.c.status == "pending",
)
Index("ix_deliveries_alert", deliveries.c.alert_id)
Index("ix_deliveries_statement", deliveries.c.statement_id)


async def insert_channel(conn: AsyncConnection, values: dict[str, Any]) -> None:
    await conn.execute(channels.insert().values(**values))


async def channel_names(conn: AsyncConnection) -> set[str]:
    return {r[0] for r in await conn.execute(select(channels.c.name))}


async def get_channel(conn: AsyncConnection, channel_id: str) -> Row[Any] | None:
    return (await conn.execute(select(channels).where(channels.c.id == channel_id))).first()


async def enabled_channels(conn: AsyncConnection, exercise: bool) -> list[tuple[str, ChannelKind]]:
    """The enabled channels of one world (exercise channels for exercise alerts and statements,
    live ones for live ones): (id, kind), by id."""
    c = channels.c
    stmt = select(c.id, c.kind).where(c.enabled.is_(True), c.exercise.is_(exercise)).order_by(c.id)
    return [(r.id, ChannelKind(r.kind)) for r in await conn.execute(stmt)]


async def insert_deliveries(
    conn: AsyncConnection,
    plans: Sequence[DeliveryPlan],
    round_: int,
    now: datetime,
    *,
    alert_id: str | None = None,
    statement_id: str | None = None,
) -> int:
    """Queue the deliveries of one alert or statement (one of the two), a round, in the caller's
    transaction: pending ones due now, skipped ones recorded as such with their reason; returns
    how many are pending. The unique (alert or statement, channel, round) refuses a second one."""
    subject = alert_id or statement_id
    rows = [
        {
            "id": f"{subject}.{plan.channel_id}.{round_}",
            "alert_id": alert_id,
            "statement_id": statement_id,
            "channel_id": plan.channel_id,
            "round": round_,
            "status": plan.status.value,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": plan.reason,
            "targets": list(plan.targets) if plan.targets is not None else None,
            "created_at": now,
        }
        for plan in plans
    ]
    if rows:
        await conn.execute(deliveries.insert(), rows)
    return sum(1 for plan in plans if plan.status is DeliveryStatus.pending)


async def last_round(conn: AsyncConnection, alert_id: str | None = None, statement_id: str | None = None) -> int:
    """The last round of the alert's (or the statement's) deliveries; 0 before the first."""
    d = deliveries.c
    where = d.alert_id == alert_id if alert_id is not None else d.statement_id == statement_id
    row = (await conn.execute(select(func.max(d.round)).where(where))).first()
    return int(row[0] or 0)


async def claim_due(conn: AsyncConnection, now: datetime, lease_s: float, limit: int) -> list[Row[Any]]:
    """Lease up to ``limit`` due deliveries for ``lease_s`` seconds, counting the attempt; rows
    another worker holds are skipped (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite has one writer).
    Returns them with their channel's fields."""
    d = deliveries.c
    due = (
        select(d.id)
        .where(
            d.status == DeliveryStatus.pending.value,
            d.next_attempt_at <= now,
            (d.lease_until.is_(None)) | (d.lease_until < now),
        )
        .order_by(d.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = [r[0] for r in await conn.execute(due)]
    if not ids:
        return []
    await conn.execute(
        update(deliveries)
        .where(_among(conn, d.id, ids))
        .values(lease_until=now + timedelta(seconds=lease_s), attempts=d.attempts + 1)
    )
    stmt = (
        select(
            deliveries,
            channels.c.kind,
            channels.c.name,
            channels.c.exercise.label("channel_exercise"),
            channels.c.url,
            channels.c.secret,
        )
        .join(channels, channels.c.id == d.channel_id)
        .where(_among(conn, d.id, ids))
    )
    return list(await conn.execute(stmt))


async def finish_deliveries(
    conn: AsyncConnection,
    delivery_ids: Sequence[str],
    attempts: int,
    status: DeliveryStatus,
    now: datetime,
    error: str | None,
) -> int:
    """Record the outcome of the attempt numbered ``attempts`` of each delivery (one a worker
    whose lease ran out was overtaken on changes nothing); returns how many were recorded."""
    d = deliveries.c
    stmt = (
        update(deliveries)
        .where(_among(conn, d.id, delivery_ids), d.status == DeliveryStatus.pending.value, d.attempts == attempts)
        .values(
            status=status.value,
            last_error=error,
            lease_until=None,
            delivered_at=now if status is DeliveryStatus.delivered else None,
        )
    )
    return (await conn.execute(stmt)).rowcount


async def retry_delivery(conn: AsyncConnection, delivery_id: str, attempts: int, next_at: datetime, error: str) -> bool:
    """Leave the delivery pending until ``next_at`` after a failed attempt."""
    d = deliveries.c
    stmt = (
        update(deliveries)
        .where(d.id == delivery_id, d.status == DeliveryStatus.pending.value, d.attempts == attempts)
        .values(next_attempt_at=next_at, last_error=error[:2000], lease_until=None)
    )
    return (await conn.execute(stmt)).rowcount == 1


async def expire_alerts(conn: AsyncConnection, now: datetime) -> list[Row[Any]]:
    """Published alerts whose ``expires`` passed become expired, once (a Cancel is final and
    stays); returns them."""
    a = alerts.c
    stmt = (
        update(alerts)
        .where(
            a.status == AlertStatus.published.value,
            a.msg_type != MsgType.Cancel.value,
            a.expires.is_not(None),
            a.expires <= now,
        )
        .values(status=AlertStatus.expired.value, version=a.version + 1, updated_at=now)
        .returning(*alerts.c)
    )
    return list(await conn.execute(stmt))


# --- targets (cells, districts, subscriber groups) ----------------------------------------------

targets = Table(
    "targets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("name", String(255), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("district", String(64), nullable=True),
    Column("seq", Integer, nullable=False),  # grows with each registration: replicas reload what is new
    CheckConstraint("kind IN ('cell', 'district', 'subscribers')", name="kind"),
    CheckConstraint("lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180", name="position"),
)
Index("ix_targets_seq", targets.c.seq)


async def insert_targets(conn: AsyncConnection, rows: Sequence[dict[str, Any]], db: Any) -> int:
    """Register targets (an id already registered is left as it is) in one statement; the caller
    holds the targets lock, so the count before and after says how many are new."""
    before = (await conn.execute(select(func.count()).select_from(targets))).scalar() or 0
    top = (await conn.execute(select(func.max(targets.c.seq)))).scalar() or 0
    numbered = [{**row, "seq": top + 1 + i} for i, row in enumerate(rows)]
    if numbered:
        await conn.execute(db.insert_ignore(targets), numbered)
    return ((await conn.execute(select(func.count()).select_from(targets))).scalar() or 0) - before


async def targets_after(conn: AsyncConnection, seq: int) -> list[Row[Any]]:
    """Targets registered after ``seq``, in order."""
    t = targets.c
    return list(await conn.execute(select(t.id, t.kind, t.lat, t.lon, t.seq).where(t.seq > seq).order_by(t.seq)))


# --- exercise data -------------------------------------------------------------------------------


async def exercise_incident_ids(conn: AsyncConnection) -> list[str]:
    """The exercise incidents public-notification knows, by id."""
    rows = await conn.execute(select(incidents.c.id).where(incidents.c.exercise.is_(True)).order_by(incidents.c.id))
    return list(rows.scalars())


def exercise_alert_ids() -> Any:
    """The ids of exercise alerts, as a query (for ``IN``)."""
    return select(alerts.c.id).where(alerts.c.exercise.is_(True))


def of_exercise() -> Any:
    """The condition on deliveries: of an exercise alert or an exercise statement."""
    exercise_statements = select(statements.c.id).where(statements.c.exercise.is_(True))
    return or_(deliveries.c.alert_id.in_(exercise_alert_ids()), deliveries.c.statement_id.in_(exercise_statements))


async def delete_exercise_deliveries(conn: AsyncConnection, channels_too: bool) -> int:
    """Forget the deliveries of exercise alerts and statements — pending ones never go out — (and,
    with ``channels_too``, every delivery to an exercise channel, which only ever carries exercise
    ones); returns how many."""
    cond = of_exercise()
    if channels_too:
        exercise_channels = select(channels.c.id).where(channels.c.exercise.is_(True))
        cond = or_(cond, deliveries.c.channel_id.in_(exercise_channels))
    return int((await conn.execute(delete(deliveries).where(cond))).rowcount or 0)


async def delete_exercise_documents(conn: AsyncConnection) -> tuple[int, int, int, int]:
    """Forget every exercise alert, statement, rumor (with the answers that name any of them) and
    release clock (their deliveries must be gone: delete_exercise_deliveries); returns (alerts,
    statements, rumors, clocks). Alerts go in one statement: an Update or Cancel names the
    exercise alert it references, which goes with it."""
    exercise_statements = select(statements.c.id).where(statements.c.exercise.is_(True))
    exercise_rumors = select(rumors.c.id).where(rumors.c.exercise.is_(True))
    a = rumor_answers.c
    await conn.execute(
        delete(rumor_answers).where(
            or_(
                a.rumor_id.in_(exercise_rumors),
                a.statement_id.in_(exercise_statements),
                a.alert_id.in_(exercise_alert_ids()),
            )
        )
    )
    counts = []
    for table in (alerts, statements, rumors, clocks):
        result = await conn.execute(delete(table).where(table.c.exercise.is_(True)))
        counts.append(int(result.rowcount or 0))
    return counts[0], counts[1], counts[2], counts[3]


async def delete_exercise_incidents(conn: AsyncConnection) -> int:
    """Forget public-notification's copy of every exercise incident; returns how many."""
    return int((await conn.execute(delete(incidents).where(incidents.c.exercise.is_(True)))).rowcount or 0)


async def delete_exercise_channels(conn: AsyncConnection) -> int:
    """Forget every exercise channel (its deliveries must be gone); returns how many."""
    return int((await conn.execute(delete(channels).where(channels.c.exercise.is_(True)))).rowcount or 0)
