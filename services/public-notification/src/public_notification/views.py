"""The read side: answer models of the operator API and the queries behind them — alerts (with
their CAP XML), statements, rumors, the release clocks (and those about to be missed), one
incident's whole picture, and the public CAP feed of live Actual alerts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from xml.etree import ElementTree as ET

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import Database
from ecs.errors import NotFound
from ecs.vocabulary import Category, Level, Stage

from . import store
from .capdoc import document
from .domain import (
    AlertStatus,
    ChannelKind,
    ClockKind,
    ClockState,
    DeliveryStatus,
    MsgType,
    RumorStatus,
    StatementKind,
    StatementStatus,
    allowed_actions,
    cap_time,
    clock_state,
    reach_of_area,
    unsettled_reasons,
)

ATOM_NS = "http://www.w3.org/2005/Atom"


class InfoAnswer(BaseModel):
    """One CAP ``<info>`` block."""

    language: str
    headline: str
    description: str
    instruction: str = ""


class AlertAnswer(BaseModel):
    """An alert: its status in this service, its CAP fields, who wrote and approved it, and its
    CAP 1.2 XML as it stands (``sent`` is the publication time once published)."""

    id: str
    identifier: str
    incident_id: str
    status: AlertStatus
    allowed: list[str] = Field(description="the actions the alert's status allows")
    msg_type: MsgType
    cap_status: str = Field(description="CAP status: Actual, or Exercise for an exercise incident")
    level: Level
    infos: list[InfoAnswer]
    area: dict[str, Any] = Field(
        description="description, circle [lat, lon, radius m], polygon [[lat, lon]...], geocodes"
    )
    references_id: str | None
    expires: datetime | None
    author: str
    approver: str | None
    sent: datetime | None = Field(description="frozen at publication (UTC)")
    exercise: bool
    version: int
    created_at: datetime
    updated_at: datetime
    cap_xml: str


class AlertPage(BaseModel):
    """A page of alerts, newest first."""

    alerts: list[AlertAnswer]
    next_cursor: str | None = Field(description="pass it as ?cursor= for the next page; null on the last")


class StatementAnswer(BaseModel):
    """An official statement and where it is in its approval."""

    id: str
    incident_id: str
    kind: StatementKind
    status: StatementStatus
    text_zh: str
    text_en: str
    answers: list[str] = Field(description="the rumor ids it rebuts")
    author: str
    approver: str | None
    published_at: datetime | None
    exercise: bool
    version: int
    created_at: datetime


class RumorAnswer(BaseModel):
    """A rumor in the register and the statements or alerts that answered it."""

    id: str
    incident_id: str
    status: RumorStatus
    source: str
    text: str
    link: str | None
    first_seen: datetime
    reach: int | None = Field(description="estimated people reached")
    reporter: str
    answered_by: list[str] = Field(description="statement or alert ids, in the order they answered it")
    exercise: bool
    version: int


class ClockAnswer(BaseModel):
    """A release clock: when it started and is due (UTC), its state, and what met it."""

    incident_id: str
    kind: ClockKind
    state: ClockState
    started_at: datetime
    due_at: datetime
    seconds_left: float = Field(description="until due; negative once past")
    met_at: datetime | None
    met_by: str | None
    warned_at: datetime | None
    missed_at: datetime | None = Field(description="when the service recorded it missed")
    exercise: bool


class ClockList(BaseModel):
    clocks: list[ClockAnswer]


class IncidentView(BaseModel):
    """Everything the service holds for one incident, and what keeps it from being settled."""

    incident_id: str
    category: Category = Field(description="as of the latest stage change (a medical call may become its scene)")
    stage: Stage
    level: Level
    exercise: bool
    alerts: list[AlertAnswer]
    statements: list[StatementAnswer]
    clocks: list[ClockAnswer]
    open_rumors: list[RumorAnswer]
    settled: bool
    unsettled: list[str]
    plan_version: int | None = Field(
        description="the version of the category's response plan held here (null: none has arrived from "
        "dispatch yet, so drafting from its templates is refused until it does)"
    )


def alert_answer(row: Any, ctx: Any, references: str | None = None) -> AlertAnswer:
    """The answer for a stored alert row."""
    return AlertAnswer(
        id=row.id,
        identifier=row.identifier,
        incident_id=row.incident_id,
        status=AlertStatus(row.status),
        allowed=[str(a) for a in allowed_actions(AlertStatus(row.status))],
        msg_type=MsgType(row.msg_type),
        cap_status=row.cap_status,
        level=Level(row.level),
        infos=[InfoAnswer(**i) for i in row.infos],
        area=row.area,
        references_id=row.references_id,
        expires=row.expires,
        author=row.author,
        approver=row.approver,
        sent=row.sent,
        exercise=row.exercise,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
        cap_xml=document(row, ctx, references).decode(),
    )


async def _references(conn: AsyncConnection, row: Any, ctx: Any) -> str | None:
    if not row.references_id:
        return None
    ref = await store.get_alert(conn, row.references_id)
    if ref is None or ref.sent is None:
        return None
    return f"{ctx.settings.sender},{ref.identifier},{cap_time(ref.sent)}"


def statement_answer(row: Any) -> StatementAnswer:
    """The answer for a stored statement row."""
    return StatementAnswer(
        id=row.id,
        incident_id=row.incident_id,
        kind=StatementKind(row.kind),
        status=StatementStatus(row.status),
        text_zh=row.text_zh,
        text_en=row.text_en,
        answers=list(row.answers or ()),
        author=row.author,
        approver=row.approver,
        published_at=row.published_at,
        exercise=row.exercise,
        version=row.version,
        created_at=row.created_at,
    )


async def rumor_answer(conn: AsyncConnection, row: Any) -> RumorAnswer:
    """The answer for a stored rumor row, with its answers."""
    a = store.rumor_answers.c
    links = await conn.execute(select(a.statement_id, a.alert_id).where(a.rumor_id == row.id).order_by(a.seq))
    return RumorAnswer(
        id=row.id,
        incident_id=row.incident_id,
        status=RumorStatus(row.status),
        source=row.source,
        text=row.text,
        link=row.link,
        first_seen=row.first_seen,
        reach=row.reach,
        reporter=row.reporter,
        answered_by=[s or al for s, al in links],
        exercise=row.exercise,
        version=row.version,
    )


def clock_answer(row: Any, now: datetime, warning_s: float) -> ClockAnswer:
    clock = store._clock(row)
    return ClockAnswer(
        incident_id=row.incident_id,
        kind=ClockKind(row.kind),
        state=clock_state(clock, now, warning_s),
        started_at=row.started_at,
        due_at=row.due_at,
        seconds_left=(row.due_at - now).total_seconds(),
        met_at=row.met_at,
        met_by=row.met_by,
        warned_at=row.warned_at,
        missed_at=row.missed_at,
        exercise=row.exercise,
    )


async def alert(ctx: Any, alert_id: str) -> AlertAnswer:
    """One alert; NotFound (404) if there is none."""
    async with ctx.db.engine.connect() as conn:
        row = await store.get_alert(conn, alert_id)
        if row is None:
            raise NotFound(f"no alert {alert_id!r}", field="alert_id")
        return alert_answer(row, ctx, await _references(conn, row, ctx))


async def alerts_page(
    ctx: Any,
    *,
    incident_id: str | None = None,
    status: Sequence[AlertStatus] = (),
    exercise: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> AlertPage:
    """Alerts matching every filter given, newest first (ids grow with time)."""
    a = store.alerts.c
    q = select(store.alerts)
    if incident_id:
        q = q.where(a.incident_id == incident_id)
    if status:
        q = q.where(a.status.in_([s.value for s in status]))
    if exercise is not None:
        q = q.where(a.exercise.is_(exercise))
    if cursor:
        q = q.where(a.id < cursor)
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(a.id.desc()).limit(limit + 1))).all()
        page = rows[:limit]
        answers = [alert_answer(r, ctx, await _references(conn, r, ctx)) for r in page]
    return AlertPage(alerts=answers, next_cursor=page[-1].id if len(rows) > limit else None)


async def statement(db: Database, statement_id: str) -> StatementAnswer:
    async with db.engine.connect() as conn:
        row = await store.get_statement(conn, statement_id)
    if row is None:
        raise NotFound(f"no statement {statement_id!r}", field="statement_id")
    return statement_answer(row)


async def rumor(db: Database, rumor_id: str) -> RumorAnswer:
    async with db.engine.connect() as conn:
        row = await store.get_rumor(conn, rumor_id)
        if row is None:
            raise NotFound(f"no rumor {rumor_id!r}", field="rumor_id")
        return await rumor_answer(conn, row)


async def clocks(ctx: Any, now: datetime, due_within_s: float | None = None, exercise: bool | None = None) -> ClockList:
    """Unmet clocks due within ``due_within_s`` seconds (all clocks when None), soonest first."""
    c = store.clocks.c
    q = select(store.clocks)
    if due_within_s is not None:
        q = q.where(c.met_at.is_(None), c.due_at <= now + timedelta(seconds=due_within_s))
    if exercise is not None:
        q = q.where(c.exercise.is_(exercise))
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(c.due_at).limit(1000))).all()
    return ClockList(clocks=[clock_answer(r, now, ctx.settings.clock_warning_s) for r in rows])


async def incident_view(ctx: Any, incident_id: str, now: datetime) -> IncidentView:
    """One incident's alerts, statements, clocks and open rumors; NotFound if unknown."""
    async with ctx.db.engine.connect() as conn:
        incident = await store.get_incident(conn, incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id!r} known to public-notification", field="incident_id")
        a, s, c, r = store.alerts.c, store.statements.c, store.clocks.c, store.rumors.c
        alert_rows = (await conn.execute(select(store.alerts).where(a.incident_id == incident_id).order_by(a.id))).all()
        statement_rows = (
            await conn.execute(select(store.statements).where(s.incident_id == incident_id).order_by(s.id))
        ).all()
        clock_rows = (
            await conn.execute(select(store.clocks).where(c.incident_id == incident_id).order_by(c.due_at))
        ).all()
        rumor_rows = (
            await conn.execute(
                select(store.rumors)
                .where(r.incident_id == incident_id, r.status != RumorStatus.closed.value)
                .order_by(r.first_seen)
            )
        ).all()
        holdings = await store.holdings(conn, incident_id)
        return IncidentView(
            incident_id=incident_id,
            category=Category(incident.category),
            stage=Stage(incident.stage),
            level=Level(incident.level),
            exercise=incident.exercise,
            alerts=[alert_answer(x, ctx, await _references(conn, x, ctx)) for x in alert_rows],
            statements=[statement_answer(x) for x in statement_rows],
            clocks=[clock_answer(x, now, ctx.settings.clock_warning_s) for x in clock_rows],
            open_rumors=[await rumor_answer(conn, x) for x in rumor_rows],
            settled=not unsettled_reasons(holdings),
            unsettled=unsettled_reasons(holdings),
            plan_version=await store.plan_version(conn, incident.category),
        )


async def public_alert_xml(ctx: Any, alert_id: str) -> bytes:
    """The CAP XML of a published live (Actual) alert: what the public may fetch. NotFound for
    anything else, exercise alerts included (DESIGN §8)."""
    async with ctx.db.engine.connect() as conn:
        row = await store.get_alert(conn, alert_id)
        if row is None or row.sent is None or row.exercise:
            raise NotFound(f"no published alert {alert_id!r}", field="alert_id")
        return document(row, ctx, await _references(conn, row, ctx))


async def public_feed(ctx: Any, base_url: str, now: datetime) -> bytes:
    """An Atom feed (RFC 4287) of the live Actual alerts in force, newest first, each linking its
    CAP XML — the way CAP feeds are commonly syndicated."""
    a = store.alerts.c
    q = (
        select(store.alerts)
        .where(a.status == AlertStatus.published.value, a.exercise.is_(False))
        .order_by(a.sent.desc())
        .limit(500)
    )
    async with ctx.db.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    ET.register_namespace("", ATOM_NS)
    feed = ET.Element(f"{{{ATOM_NS}}}feed")

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        el = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        el.text = text
        return el

    sub(feed, "id", f"{base_url}/cap/feed.xml")
    sub(feed, "title", ctx.settings.sender_name)
    sub(feed, "updated", cap_time(rows[0].sent if rows else now))
    sub(feed, "link", href=f"{base_url}/cap/feed.xml", rel="self")
    author = sub(feed, "author")
    sub(author, "name", ctx.settings.sender_name)
    for row in rows:
        if row.expires is not None and row.expires <= now:
            continue
        entry = sub(feed, "entry")
        sub(entry, "id", row.identifier)
        sub(entry, "title", row.infos[0]["headline"] if row.infos else row.identifier)
        sub(entry, "updated", cap_time(row.sent))
        sub(entry, "summary", row.infos[0]["description"] if row.infos else "")
        sub(entry, "link", href=f"{base_url}/cap/alerts/{row.id}.xml", type="application/cap+xml", rel="alternate")
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


class ChannelAnswer(BaseModel):
    """A channel (a webhook's key is never shown)."""

    id: str
    kind: ChannelKind
    name: str
    exercise: bool = Field(description="an exercise channel receives exercise alerts only; a live one, Actual only")
    url: str | None
    enabled: bool
    created_by: str
    created_at: datetime


class ChannelList(BaseModel):
    channels: list[ChannelAnswer]


class DeliveryAnswer(BaseModel):
    """One alert's or statement's delivery to one channel, in one round (1, then one per
    re-publication)."""

    id: str = Field(description="also the X-Delivery-Key a receiver gets")
    alert_id: str | None = Field(description="the alert delivered (null for a statement's delivery)")
    statement_id: str | None = Field(description="the statement delivered (null for an alert's delivery)")
    channel_id: str
    round: int
    status: DeliveryStatus = Field(
        description="pending, delivered, refused (a live channel and a message not Actual), or skipped "
        "(an SMS or cell broadcast with no target inside the area)"
    )
    attempts: int
    next_attempt_at: datetime
    last_error: str | None = Field(description="the last failure, or why it was refused or skipped")
    delivered_at: datetime | None
    targets: list[str] | None = Field(
        description="SMS and cell broadcast: the cells, districts and subscriber groups inside the area it "
        "was limited to, by id; null for a channel without an area (webhook, post)"
    )


class DeliveryList(BaseModel):
    deliveries: list[DeliveryAnswer]


class Queued(BaseModel):
    queued: int = Field(description="deliveries queued")


def channel_answer(row: Any) -> ChannelAnswer:
    return ChannelAnswer(
        id=row.id,
        kind=ChannelKind(row.kind),
        name=row.name,
        exercise=row.exercise,
        url=row.url,
        enabled=row.enabled,
        created_by=row.created_by,
        created_at=row.created_at,
    )


async def channels(db: Database) -> ChannelList:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(store.channels).order_by(store.channels.c.created_at))).all()
    return ChannelList(channels=[channel_answer(r) for r in rows])


async def deliveries(db: Database, alert_id: str | None = None, statement_id: str | None = None) -> DeliveryList:
    """Every delivery of the alert (or of the statement), by round and channel."""
    d = store.deliveries.c
    of = d.alert_id == alert_id if alert_id is not None else d.statement_id == statement_id
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(store.deliveries).where(of).order_by(d.round, d.channel_id))).all()
    return DeliveryList(
        deliveries=[
            DeliveryAnswer(
                id=r.id,
                alert_id=r.alert_id,
                statement_id=r.statement_id,
                channel_id=r.channel_id,
                round=r.round,
                status=DeliveryStatus(r.status),
                attempts=r.attempts,
                next_attempt_at=r.next_attempt_at,
                last_error=r.last_error,
                delivered_at=r.delivered_at,
                targets=r.targets,
            )
            for r in rows
        ]
    )


class TargetsAnswer(BaseModel):
    """What an alert's area reaches: how many targets of each kind, and their ids (the first
    ``limit``, by id)."""

    alert_id: str
    total: int
    by_kind: dict[str, int]
    ids: list[str]
    truncated: bool
    seconds: float = Field(description="time the index took to answer")


class Registered(BaseModel):
    registered: int = Field(description="targets new to the service")


async def alert_targets(ctx: Any, alert_id: str, limit: int) -> TargetsAnswer:
    """The targets inside the alert's polygon or circle (domain.TargetIndex); NotFound if no alert."""
    import time

    async with ctx.db.engine.connect() as conn:
        row = await store.get_alert(conn, alert_id)
    if row is None:
        raise NotFound(f"no alert {alert_id!r}", field="alert_id")
    started = time.perf_counter()
    reach = reach_of_area(row.area)
    found = ctx.targets.index.within(reach) if reach is not None else []
    seconds = time.perf_counter() - started
    by_kind: dict[str, int] = {}
    for t in found:
        by_kind[t.kind] = by_kind.get(t.kind, 0) + 1
    ids = sorted(t.id for t in found)
    return TargetsAnswer(
        alert_id=alert_id,
        total=len(found),
        by_kind=by_kind,
        ids=ids[:limit],
        truncated=len(ids) > limit,
        seconds=seconds,
    )


# --- exercise data -------------------------------------------------------------------------------


class ExerciseData(BaseModel):
    """What exercise data public-notification holds (DESIGN §8)."""

    incidents: int = Field(description="exercise incidents known to public-notification")
    alerts: int
    statements: int
    rumors: int
    clocks: int = Field(description="release clocks of exercise incidents")
    deliveries: int = Field(description="deliveries of exercise alerts and statements, whatever their status")
    pending_deliveries: int = Field(description="of those, the ones not sent yet")
    channels: int = Field(description="exercise channels")


class Purged(BaseModel):
    """What the purge of exercise data removed."""

    incidents_purged: int
    alerts_purged: int
    deliveries_purged: int
    statements_purged: int
    rumors_purged: int
    clocks_purged: int
    channels_purged: int


async def exercise_data(db: Database) -> ExerciseData:
    """How many exercise incidents, alerts, statements, rumors, clocks, deliveries (and pending
    ones) and exercise channels there are."""

    async def count(conn: AsyncConnection, table: Any, *where: Any) -> int:
        return int((await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one())

    d = store.deliveries.c
    of_exercise = store.of_exercise()
    async with db.engine.connect() as conn:
        found = {
            name: await count(conn, table, table.c.exercise.is_(True))
            for name, table in (
                ("incidents", store.incidents),
                ("alerts", store.alerts),
                ("statements", store.statements),
                ("rumors", store.rumors),
                ("clocks", store.clocks),
                ("channels", store.channels),
            )
        }
        found["deliveries"] = await count(conn, store.deliveries, of_exercise)
        found["pending_deliveries"] = await count(conn, store.deliveries, of_exercise, d.status == "pending")
    return ExerciseData(**found)
