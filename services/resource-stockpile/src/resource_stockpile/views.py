"""The read side of the operator API: queries and the answer models the routes declare.
Quantities are in base units, with the same in packs beside them where the item has packs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select

from ecs.db import Database
from ecs.errors import Conflict, NotFound

from . import edxl_rm, store
from .domain import Allocation, Item, in_packs, is_below


class ItemAnswer(BaseModel):
    """A catalogue item; ``packs`` maps a pack's name to its size in base units."""

    code: str
    gb_code: str | None
    name_en: str
    name_zh: str
    base_unit: str
    packs: dict[str, int]
    shelf_life_days: int | None
    version: int
    kit_of: dict[str, int] = Field(description="a kit's parts: item code -> base units in one kit (empty: not a kit)")


class ItemList(BaseModel):
    items: list[ItemAnswer]


class DepotAnswer(BaseModel):
    """A depot; position in WGS-84 degrees."""

    id: str
    name: str
    district: str
    lat: float
    lon: float
    hours: str
    contact: str
    exercise: bool
    version: int


class DepotList(BaseModel):
    depots: list[DepotAnswer]


class StockAnswer(BaseModel):
    """One stock line: quantities in base units, and what is available also in packs."""

    line_id: int
    depot_id: str
    item: str
    lot: str
    expiry: date | None
    condition: str
    on_hand: int
    reserved: int
    available: int
    available_in_packs: dict[str, int]


class StockPage(BaseModel):
    """Stock lines by id; ``next_cursor`` asks for the next page (None: the last)."""

    lines: list[StockAnswer]
    next_cursor: int | None


class AllocationAnswer(BaseModel):
    depot_id: str
    line_id: int
    travel_s: float = Field(description="estimated travel time from the depot, seconds")
    held: int
    out: int
    returned: int
    consumed: int
    released: int


class ReservationAnswer(BaseModel):
    """A reservation and where its quantity is, by depot (base units)."""

    id: int
    incident_id: str
    item: str
    requested: int
    reserved: int
    missing: int
    source: str
    exercise: bool
    version: int
    created_at: datetime
    allocations: list[AllocationAnswer]


class ReservationList(BaseModel):
    """An incident's reservations, newest first, and whether it still holds anything."""

    incident_id: str
    settled: bool
    reservations: list[ReservationAnswer]


class ReservationBatch(BaseModel):
    """The reservations one multi-item request made, in the order of its lines."""

    reservations: list[ReservationAnswer]


class DocumentAnswer(BaseModel):
    document_id: int


class ExerciseData(BaseModel):
    """What exercise data resource-stockpile holds (DESIGN §8)."""

    incidents: int = Field(description="exercise incidents known to resource-stockpile")
    reservations: int = Field(description="reservations of exercise incidents")
    held: int = Field(description="base units exercise reservations still hold in exercise depots")
    depots: int = Field(description="exercise depots")
    stock_lines: int = Field(description="stock lines of exercise depots")
    documents: int = Field(description="ledger documents of exercise depots")


class Purged(BaseModel):
    """What the purge of exercise data removed; ``released``: base units exercise reservations
    held, given back to their stock lines first."""

    incidents_purged: int
    reservations_purged: int
    released: int
    depots_purged: int
    stock_lines_purged: int
    documents_purged: int


class MinimumAnswer(BaseModel):
    """The least a depot should keep of an item (base units; 0: no minimum), and what it could
    reserve now (good, not short-dated)."""

    depot_id: str
    item: str
    minimum: int
    minimum_in_packs: dict[str, int]
    available: int
    below: bool
    version: int


class MinimumList(BaseModel):
    minimums: list[MinimumAnswer]


class LowStockAlert(BaseModel):
    """A (depot, item) below its minimum: open while ``cleared_at`` is null."""

    id: int
    depot_id: str
    item: str
    minimum: int
    available_when_raised: int
    available_now: int
    exercise: bool
    raised_at: datetime
    cleared_at: datetime | None


class LowStockPage(BaseModel):
    """Newest first; ``next_cursor`` asks for the next page (None: the last)."""

    alerts: list[LowStockAlert]
    next_cursor: int | None


class ExpiryWarning(BaseModel):
    """A lot warned of as expiring (once per lot), with what is on hand of it now."""

    id: int
    depot_id: str
    item: str
    lot: str
    expiry: date
    days_left: int = Field(description="from today; negative: expired")
    on_hand_when_warned: int
    on_hand_now: int
    exercise: bool
    warned_at: datetime


class ExpiryPage(BaseModel):
    """Newest first; ``next_cursor`` asks for the next page (None: the last)."""

    warnings: list[ExpiryWarning]
    next_cursor: int | None


def item_answer(i: Item) -> ItemAnswer:
    return ItemAnswer(
        code=i.code,
        gb_code=i.gb_code,
        name_en=i.name_en,
        name_zh=i.name_zh,
        base_unit=i.base_unit,
        packs=dict(i.packs),
        shelf_life_days=i.shelf_life_days,
        version=i.version,
        kit_of=dict(i.kit_of),
    )


async def items(db: Database) -> ItemList:
    """The catalogue, by code."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(store.items).order_by(store.items.c.code))
        return ItemList(items=[item_answer(store.to_item(r)) for r in rows])


async def depots(db: Database) -> DepotList:
    """Every depot, by id."""
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(store.depots).order_by(store.depots.c.id))
        return DepotList(
            depots=[
                DepotAnswer(
                    id=r.id,
                    name=r.name,
                    district=r.district,
                    lat=r.lat,
                    lon=r.lon,
                    hours=r.hours,
                    contact=r.contact,
                    exercise=r.exercise,
                    version=r.version,
                )
                for r in rows
            ]
        )


async def stock(
    db: Database,
    depot_id: str | None = None,
    item: str | None = None,
    district: str | None = None,
    cursor: int = 0,
    limit: int = 100,
) -> StockPage:
    """Stock lines with something on hand, by depot, item and district if given, city-wide otherwise."""
    t, d = store.stock_lines, store.depots
    q = select(t).join(d, d.c.id == t.c.depot_id).where(t.c.id > cursor, t.c.on_hand > 0)
    if depot_id is not None:
        q = q.where(t.c.depot_id == depot_id)
    if item is not None:
        q = q.where(t.c.item == item)
    if district is not None:
        q = q.where(d.c.district == district)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(t.c.id).limit(limit + 1))).all()
        catalogue = await store.get_items(conn, {r.item for r in rows})
    lines = [
        StockAnswer(
            line_id=r.id,
            depot_id=r.depot_id,
            item=r.item,
            lot=r.lot,
            expiry=r.expiry,
            condition=r.condition,
            on_hand=r.on_hand,
            reserved=r.reserved,
            available=r.on_hand - r.reserved,
            available_in_packs=in_packs(catalogue[r.item], r.on_hand - r.reserved),
        )
        for r in rows[:limit]
    ]
    return StockPage(lines=lines, next_cursor=lines[-1].line_id if len(rows) > limit else None)


async def reservation(db: Database, reservation_id: int) -> ReservationAnswer:
    """One reservation; NotFound if there is none."""
    async with db.engine.connect() as conn:
        row = await store.get_reservation(conn, reservation_id)
        if row is None:
            raise NotFound(f"reservation {reservation_id} not found", reservation_id=reservation_id)
        return _reservation(row, await store.reservation_allocations(conn, reservation_id))


_EXERCISE_OF: dict[str, bool] = {}
"""Incidents' exercise flags as read, by id: a flag never changes once the incident is known
(store.remember_incident), so a handler that reads the incident again itself (and answers 404
for one purged since) may be told it without a query. Forgotten whole at _EXERCISE_KEPT."""
_EXERCISE_KEPT = 50_000


async def incident_is_exercise(db: Database, incident_id: str, *, remembered: bool = False) -> bool:
    """Whether the incident is an exercise; NotFound for an incident never heard of.
    ``remembered``: answer from what an earlier call read, when there is one (only for a
    caller whose handler reads the incident anyway)."""
    if remembered and incident_id in _EXERCISE_OF:
        return _EXERCISE_OF[incident_id]
    async with db.engine.connect() as conn:
        incident = await store.get_incident(conn, incident_id)
    if incident is None:
        raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
    if len(_EXERCISE_OF) >= _EXERCISE_KEPT:
        _EXERCISE_OF.clear()
    _EXERCISE_OF[incident_id] = bool(incident.exercise)
    return bool(incident.exercise)


async def reservations(db: Database, ids: list[int]) -> ReservationBatch:
    """These reservations, in this order."""
    r, a = store.reservations, store.allocations
    async with db.engine.connect() as conn:
        rows = {row.id: row for row in await conn.execute(select(r).where(r.c.id.in_(ids)))}
        allocs = [store.to_allocation(x) for x in await conn.execute(select(a).where(a.c.reservation_id.in_(ids)))]
    by_reservation: dict[int, list[Allocation]] = {}
    for x in sorted(allocs, key=lambda x: x.id):
        by_reservation.setdefault(x.reservation_id, []).append(x)
    return ReservationBatch(reservations=[_reservation(rows[i], by_reservation.get(i, [])) for i in ids])


def just_made(got: Sequence[Any]) -> ReservationBatch | None:
    """The answer about reservations a handler just made (handlers.reservations.Reserved, each
    with the columns it wrote and its takes), without reading them back; None when any was only
    found again (a repeated request), whose answer must be read (``reservations``)."""
    if any(r.row is None for r in got):
        return None
    answers = []
    for r in got:
        allocs = [
            Allocation(0, r.reservation_id, t.line_id, t.depot_id, r.row["item"], t.travel_s, t.quantity, 0)
            for t in r.parts
        ]
        answers.append(_reservation(SimpleNamespace(**r.row), allocs))
    return ReservationBatch(reservations=answers)


async def incident_reservations(db: Database, incident_id: str) -> ReservationList:
    """An incident's reservations, newest first; NotFound for an incident never heard of."""
    async with db.engine.connect() as conn:
        incident = await store.get_incident(conn, incident_id)
        if incident is None:
            raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
        rows = (
            await conn.execute(
                select(store.reservations)
                .where(store.reservations.c.incident_id == incident_id)
                .order_by(store.reservations.c.id.desc())
            )
        ).all()
        allocs = await store.incident_allocations(conn, incident_id)
    answers = [_reservation(r, [a for a in allocs if a.reservation_id == r.id]) for r in rows]
    return ReservationList(incident_id=incident_id, settled=all(a.open == 0 for a in allocs), reservations=answers)


async def replay_mismatches(db: Database) -> list[tuple[int, int, int]]:
    """Stock lines whose ledger does not replay to their balance (none, always)."""
    async with db.engine.connect() as conn:
        return await store.ledger_mismatches(conn)


async def totals(db: Database, item: str) -> tuple[int, int]:
    """City-wide (on hand, reserved) of an item, base units."""
    t = store.stock_lines
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.coalesce(func.sum(t.c.on_hand), 0), func.coalesce(func.sum(t.c.reserved), 0)).where(
                    t.c.item == item
                )
            )
        ).one()
    return int(row[0]), int(row[1])


def _reservation(r: Any, allocs: list[Allocation]) -> ReservationAnswer:
    return ReservationAnswer(
        id=r.id,
        incident_id=r.incident_id,
        item=r.item,
        requested=r.requested,
        reserved=r.requested - r.missing,
        missing=r.missing,
        source=r.source,
        exercise=r.exercise,
        version=r.version,
        created_at=r.created_at,
        allocations=[
            AllocationAnswer(
                depot_id=a.depot_id,
                line_id=a.line_id,
                travel_s=round(a.travel_s, 1),
                held=a.held,
                out=a.out,
                returned=a.returned,
                consumed=a.consumed,
                released=a.released,
            )
            for a in allocs
        ],
    )


async def depot_is_exercise(db: Database, depot_id: str) -> bool:
    """Whether the depot is an exercise depot; NotFound for a depot that does not exist."""
    async with db.engine.connect() as conn:
        depot = await store.get_depot(conn, depot_id)
    if depot is None:
        raise NotFound(f"depot {depot_id} not found", depot_id=depot_id)
    return depot.exercise


async def exercise_data(db: Database) -> ExerciseData:
    """How many exercise incidents, reservations, depots, stock lines and documents there are,
    and what exercise reservations still hold."""
    i, r, a, d = store.incidents, store.reservations, store.allocations, store.depots

    async def count(conn: Any, q: Any) -> int:
        return int((await conn.execute(q)).scalar() or 0)

    async with db.engine.connect() as conn:
        return ExerciseData(
            incidents=await count(conn, select(func.count()).select_from(i).where(i.c.exercise.is_(True))),
            reservations=await count(conn, select(func.count()).select_from(r).where(r.c.exercise.is_(True))),
            held=await count(
                conn,
                select(func.coalesce(func.sum(a.c.held), 0))
                .select_from(a.join(r, r.c.id == a.c.reservation_id))
                .where(r.c.exercise.is_(True)),
            ),
            depots=await count(conn, select(func.count()).select_from(d).where(d.c.exercise.is_(True))),
            stock_lines=await count(
                conn, select(func.count()).where(store.stock_lines.c.id.in_(store.exercise_line_ids()))
            ),
            documents=await count(
                conn, select(func.count()).where(store.documents.c.id.in_(store.exercise_document_ids()))
            ),
        )


async def minimums(db: Database, min_shelf_life_days: int, depot_id: str | None = None) -> MinimumList:
    """Every minimum (of one depot), by depot and item, with what each could reserve now."""
    m = store.stock_minimums.c
    q = select(store.stock_minimums).where(m.minimum > 0).order_by(m.depot_id, m.item)
    if depot_id is not None:
        q = q.where(m.depot_id == depot_id)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
        pairs = [(r.depot_id, r.item) for r in rows]
        levels = await store.available_levels(conn, pairs, _not_before(min_shelf_life_days))
        catalogue = await store.get_items(conn, {r.item for r in rows})
    return MinimumList(minimums=[_minimum(r, levels[(r.depot_id, r.item)], catalogue[r.item]) for r in rows])


async def minimum(db: Database, min_shelf_life_days: int, depot_id: str, item: str) -> MinimumAnswer:
    """One minimum; NotFound if there is none."""
    async with db.engine.connect() as conn:
        row = await store.get_minimum(conn, depot_id, item)
        if row is None:
            raise NotFound(f"no minimum of {item} at depot {depot_id}", depot_id=depot_id, item=item)
        levels = await store.available_levels(conn, [(depot_id, item)], _not_before(min_shelf_life_days))
        catalogue = await store.get_items(conn, [item])
    return _minimum(row, levels[(depot_id, item)], catalogue[item])


def _minimum(r: Any, available: int, item: Item) -> MinimumAnswer:
    return MinimumAnswer(
        depot_id=r.depot_id,
        item=r.item,
        minimum=r.minimum,
        minimum_in_packs=in_packs(item, r.minimum),
        available=available,
        below=is_below(available, r.minimum),
        version=r.version,
    )


def _not_before(min_shelf_life_days: int) -> date:
    return datetime.now(UTC).date() + timedelta(days=min_shelf_life_days)


async def low_stock_alerts(
    db: Database,
    min_shelf_life_days: int,
    state: str = "open",
    depot_id: str | None = None,
    item: str | None = None,
    exercise: bool | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> LowStockPage:
    """Low-stock alerts, newest first: open ones (``state``), cleared ones, or all."""
    a = store.low_stock_alerts.c
    q = select(store.low_stock_alerts)
    if state == "open":
        q = q.where(a.cleared_at.is_(None))
    elif state == "cleared":
        q = q.where(a.cleared_at.is_not(None))
    if depot_id is not None:
        q = q.where(a.depot_id == depot_id)
    if item is not None:
        q = q.where(a.item == item)
    if exercise is not None:
        q = q.where(a.exercise.is_(exercise))
    if cursor is not None:
        q = q.where(a.id < cursor)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(a.id.desc()).limit(limit + 1))).all()
        levels = await store.available_levels(
            conn, {(r.depot_id, r.item) for r in rows[:limit]}, _not_before(min_shelf_life_days)
        )
    alerts = [
        LowStockAlert(
            id=r.id,
            depot_id=r.depot_id,
            item=r.item,
            minimum=r.minimum,
            available_when_raised=r.available,
            available_now=levels[(r.depot_id, r.item)],
            exercise=r.exercise,
            raised_at=r.raised_at,
            cleared_at=r.cleared_at,
        )
        for r in rows[:limit]
    ]
    return LowStockPage(alerts=alerts, next_cursor=alerts[-1].id if len(rows) > limit else None)


async def expiry_warnings(
    db: Database,
    depot_id: str | None = None,
    item: str | None = None,
    exercise: bool | None = None,
    cursor: int | None = None,
    limit: int = 100,
) -> ExpiryPage:
    """Expiry warnings, newest first, each with what is on hand of its lot now."""
    w, t = store.expiry_warnings.c, store.stock_lines.c
    on_hand_now = (
        select(func.coalesce(func.sum(t.on_hand), 0))
        .where(t.depot_id == w.depot_id, t.item == w.item, t.lot == w.lot)
        .scalar_subquery()
    )
    q = select(store.expiry_warnings, on_hand_now.label("on_hand_now"))
    if depot_id is not None:
        q = q.where(w.depot_id == depot_id)
    if item is not None:
        q = q.where(w.item == item)
    if exercise is not None:
        q = q.where(w.exercise.is_(exercise))
    if cursor is not None:
        q = q.where(w.id < cursor)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(w.id.desc()).limit(limit + 1))).all()
    today = datetime.now(UTC).date()
    warnings = [
        ExpiryWarning(
            id=r.id,
            depot_id=r.depot_id,
            item=r.item,
            lot=r.lot,
            expiry=r.expiry,
            days_left=(r.expiry - today).days,
            on_hand_when_warned=r.on_hand,
            on_hand_now=int(r.on_hand_now),
            exercise=r.exercise,
            warned_at=r.warned_at,
        )
        for r in rows[:limit]
    ]
    return ExpiryPage(warnings=warnings, next_cursor=warnings[-1].id if len(rows) > limit else None)


async def edxl_document(
    db: Database,
    incident_id: str,
    message: str,
    reservation_ids: list[int] | None,
    sender: str,
    sender_urn: str,
) -> bytes:
    """The incident's reservations (or these of them) as an EDXL-RM 1.0 ``message``: the request,
    what was committed (reserved), or what was released, one ResourceInformation per reservation,
    threaded: every message names the request as OriginatingMessageID (the neighbour's, for an
    imported one), the commit follows the request, the release the commit. NotFound for an unknown
    incident or reservation, or none; Conflict for a release of nothing released."""
    r = store.reservations.c
    async with db.engine.connect() as conn:
        incident = await store.get_incident(conn, incident_id)
        if incident is None:
            raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
        q = select(store.reservations).where(r.incident_id == incident_id).order_by(r.id)
        if reservation_ids:
            q = q.where(r.id.in_(reservation_ids))
        rows = (await conn.execute(q)).all()
        allocs = await store.incident_allocations(conn, incident_id)
        catalogue = await store.get_items(conn, {row.item for row in rows})
    if reservation_ids:
        unknown = sorted(set(reservation_ids) - {row.id for row in rows})
        if unknown:
            raise NotFound(f"no reservation {unknown[0]} of incident {incident_id}", reservation_id=unknown[0])
    if not rows:
        raise NotFound(f"incident {incident_id} has no reservations", incident_id=incident_id)
    by_reservation: dict[int, list[Allocation]] = {}
    for a in allocs:
        by_reservation.setdefault(a.reservation_id, []).append(a)
    released = {row.id: sum(a.released for a in by_reservation.get(row.id, [])) for row in rows}
    threads = {row.edxl_message_id for row in rows}
    request_id = (
        next(iter(threads))
        if len(threads) == 1 and None not in threads
        else edxl_rm.message_id(sender_urn, incident_id, "RequestResource", [(x.id, x.item, x.requested) for x in rows])
    )
    commit_id = edxl_rm.message_id(
        sender_urn, incident_id, "CommitResource", [(x.id, x.requested - x.missing) for x in rows]
    )
    ids = {
        "RequestResource": request_id,
        "CommitResource": commit_id,
        "ReleaseResource": edxl_rm.message_id(
            sender_urn, incident_id, "ReleaseResource", [(x.id, released[x.id]) for x in rows]
        ),
    }
    preceding = {"RequestResource": None, "CommitResource": request_id, "ReleaseResource": commit_id}
    if message == "ReleaseResource":
        rows = [x for x in rows if released[x.id] > 0]
        if not rows:
            raise Conflict(f"nothing of incident {incident_id}'s reservations was released", incident_id=incident_id)
    exercise = "EXERCISE. " if incident.exercise else ""
    header = edxl_rm.Header(
        message_id=ids[message],
        sent=datetime.now(UTC).replace(microsecond=0),
        originating_id=request_id,
        preceding_id=preceding[message],
        incident_id=incident_id,
        incident_description=f"{exercise}{incident.category}, level {incident.level}",
        sender=sender,
        description=f"{exercise}supplies for incident {incident_id}: {message}",
    )
    lines = []
    for x in rows:
        item = catalogue[x.item]
        quantity = {
            "RequestResource": x.requested,
            "CommitResource": x.requested - x.missing,
            "ReleaseResource": released[x.id],
        }[message]
        own_id = str(x.id)
        lines.append(
            edxl_rm.Line(
                element_id=(x.edxl_element_id or own_id) if message == "RequestResource" else own_id,
                item=x.item,
                name=f"{item.name_en} / {item.name_zh}",
                base_unit=item.base_unit,
                quantity=quantity,
                gb_code=item.gb_code,
                requested=x.requested,
                missing=x.missing,
                preceding_element_id=x.edxl_element_id or own_id,
                near=(x.lat, x.lon),
                depots=tuple(dict.fromkeys(a.depot_id for a in by_reservation.get(x.id, []))),
            )
        )
    return edxl_rm.document(message, header, lines)
