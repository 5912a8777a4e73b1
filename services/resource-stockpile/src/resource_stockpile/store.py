"""resource-stockpile's tables and every write (and every read a handler decides on), SQLAlchemy Core.

The database guards every count: a stock line's ``on_hand`` and ``reserved`` are changed only by
conditional UPDATEs (``... WHERE on_hand - reserved >= :q``) under CHECK constraints
(``reserved >= 0``, ``reserved <= on_hand``), and a reservation's buckets likewise
(``... WHERE held >= :q``), so two requests racing for the last item never both get it, whatever
replica they run on. Every change of ``on_hand`` writes a ledger entry in the same transaction:
replaying a line's entries gives its balance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import date, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import BigId, UTCDateTime, new_metadata, on_driver, scene_of, take_scene
from ecs.errors import Conflict
from ecs.geo import EARTH_RADIUS_M
from ecs.vocabulary import Category, Level, Stage

from .domain import Allocation, Bucket, Condition, Depot, Item, StockLine

metadata = new_metadata()

items = Table(
    "items",
    metadata,
    Column("code", String(64), primary_key=True),
    Column("gb_code", String(7), nullable=True),
    Column("name_en", String(255), nullable=False),
    Column("name_zh", String(255), nullable=False),
    Column("base_unit", String(32), nullable=False),
    Column("packs", JSON, nullable=False),
    Column("shelf_life_days", Integer, nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # A kit's parts (item code -> base units in one kit); NULL: not a kit.
    Column("kit_of", JSON, nullable=True),
)

depots = Table(
    "depots",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("district", String(64), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("hours", String(255), nullable=False),
    Column("contact", String(255), nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

stock_lines = Table(
    "stock_lines",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("depot_id", String(64), ForeignKey("depots.id"), nullable=False),
    Column("item", String(64), ForeignKey("items.code"), nullable=False),
    Column("lot", String(64), nullable=False),
    Column("expiry", Date, nullable=True),
    Column("condition", String(16), nullable=False),
    Column("on_hand", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("exercise", Boolean, nullable=False),
    # The database refuses a negative balance or more reserved than on hand, whoever writes.
    CheckConstraint("on_hand >= 0", name="on_hand_not_negative"),
    CheckConstraint("reserved >= 0", name="reserved_not_negative"),
    CheckConstraint("reserved <= on_hand", name="available_not_negative"),
    CheckConstraint("condition = 'good' OR reserved = 0", name="only_good_reserved"),
    Index("uq_stock_lines_key", "depot_id", "item", "lot", "condition", unique=True),
    Index("ix_stock_lines_item", "item", "condition"),
)

documents = Table(
    "documents",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("reason", String(32), nullable=True),
    Column("incident_id", String(32), nullable=True),
    Column("reservation_id", BigInteger, nullable=True),
    Column("note", Text, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("effective_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("document_id", BigInteger, ForeignKey("documents.id"), nullable=False),
    Column("line_id", BigInteger, ForeignKey("stock_lines.id"), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("effective_at", UTCDateTime, nullable=False),
    CheckConstraint("delta <> 0", name="delta_not_zero"),
    Index("ix_ledger_line", "line_id", "effective_at"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("incident_id", String(32), nullable=False),
    Column("item", String(64), ForeignKey("items.code"), nullable=False),
    Column("requested", BigInteger, nullable=False),
    Column("missing", BigInteger, nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("source", String(16), nullable=False),  # operator | automatic | edxl
    Column("exercise", Boolean, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # "<principal>:<Idempotency-Key>" of the request that made it: a repeat finds it, never makes another.
    Column("request_key", String(300), nullable=True),
    # An imported EDXL-RM RequestResource: its MessageID and the ResourceInfoElementID of this item,
    # so what is exported about the reservation is threaded to the neighbour's request.
    Column("edxl_message_id", String(255), nullable=True),
    Column("edxl_element_id", String(255), nullable=True),
    CheckConstraint("requested > 0", name="requested_positive"),
    CheckConstraint("missing >= 0 AND missing <= requested", name="missing_in_range"),
    Index("ix_reservations_incident", "incident_id", "id"),
    Index("ix_reservations_request_key", "request_key"),
)

allocations = Table(
    "allocations",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("reservation_id", BigInteger, ForeignKey("reservations.id"), nullable=False),
    Column("incident_id", String(32), nullable=False),
    Column("line_id", BigInteger, ForeignKey("stock_lines.id"), nullable=False),
    Column("depot_id", String(64), nullable=False),
    Column("item", String(64), nullable=False),
    Column("travel_s", Float, nullable=False),
    Column("held", BigInteger, nullable=False),
    Column("out", BigInteger, nullable=False),
    Column("returned", BigInteger, nullable=False),
    Column("consumed", BigInteger, nullable=False),
    Column("released", BigInteger, nullable=False),
    CheckConstraint(
        "held >= 0 AND out >= 0 AND returned >= 0 AND consumed >= 0 AND released >= 0", name="buckets_not_negative"
    ),
    Index("ix_allocations_reservation", "reservation_id"),
    Index("ix_allocations_incident", "incident_id"),
)

# resource-stockpile's copy of the incident facts it acts on, kept from incident-intake's events.
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
    # The incident version of the event that last set the stage / the level: an older event
    # (redelivered, or handled by another replica) must not undo a newer one.
    Column("stage_version", Integer, nullable=False),
    Column("level_version", Integer, nullable=False),
    Column("settled", Boolean, nullable=True),  # what was last published (NULL: nothing yet)
    Column("updated_at", UTCDateTime, nullable=False),
)


# The minimum a depot should keep of an item (base units); below it, one low-stock alert is open.
stock_minimums = Table(
    "stock_minimums",
    metadata,
    Column("depot_id", String(64), ForeignKey("depots.id"), primary_key=True),
    Column("item", String(64), ForeignKey("items.code"), primary_key=True),
    Column("minimum", BigInteger, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("minimum >= 0", name="minimum_not_negative"),
)

# A (depot, item) below its minimum: open while ``cleared_at`` is NULL. The partial unique index
# lets the database keep one open alert per (depot, item), whoever races to raise it.
low_stock_alerts = Table(
    "low_stock_alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("depot_id", String(64), ForeignKey("depots.id"), nullable=False),
    Column("item", String(64), ForeignKey("items.code"), nullable=False),
    Column("minimum", BigInteger, nullable=False),
    Column("available", BigInteger, nullable=False),  # when raised
    Column("exercise", Boolean, nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    Column("cleared_at", UTCDateTime, nullable=True),
    Column("cleared_available", BigInteger, nullable=True),
    Index(
        "uq_low_stock_alerts_open",
        "depot_id",
        "item",
        unique=True,
        sqlite_where=text("cleared_at IS NULL"),
        postgresql_where=text("cleared_at IS NULL"),
    ),
    Index("ix_low_stock_alerts_open", "cleared_at", "id"),
)

# One warning per lot (depot, item, lot) expiring within the warning horizon: the unique index
# makes a second sweep, or a second replica's, warn nothing.
expiry_warnings = Table(
    "expiry_warnings",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("depot_id", String(64), ForeignKey("depots.id"), nullable=False),
    Column("item", String(64), ForeignKey("items.code"), nullable=False),
    Column("lot", String(64), nullable=False),
    Column("expiry", Date, nullable=False),
    Column("on_hand", BigInteger, nullable=False),  # when warned
    Column("exercise", Boolean, nullable=False),
    Column("warned_at", UTCDateTime, nullable=False),
    Index("uq_expiry_warnings_lot", "depot_id", "item", "lot", unique=True),
)


# --- the catalogue and depots ------------------------------------------------------------------


def to_item(row: Any) -> Item:
    """A row of ``items`` as the domain's Item."""
    return Item(
        code=row.code,
        gb_code=row.gb_code,
        name_en=row.name_en,
        name_zh=row.name_zh,
        base_unit=row.base_unit,
        packs=dict(row.packs or {}),
        shelf_life_days=row.shelf_life_days,
        version=row.version,
        kit_of=dict(row.kit_of or {}),
    )


async def get_items(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, Item]:
    """The items of these codes that exist, by code."""
    wanted = list(dict.fromkeys(codes))
    if not wanted:
        return {}
    rows = (await conn.execute(select(items).where(items.c.code.in_(wanted)))).all()
    return {r.code: to_item(r) for r in rows}


_INCIDENT = "SELECT * FROM incidents WHERE id = $1"
_ITEMS = "SELECT * FROM items WHERE code = ANY($1::text[])"


async def incident_and_items(
    conn: AsyncConnection, incident_id: str, codes: Iterable[str]
) -> tuple[Any, dict[str, Item]]:
    """The incident's row (None if unknown; its columns as attributes) and the items of these
    codes that exist, by code: what a reservation request reads first. On PostgreSQL two
    statements on the driver (``ecs.db.on_driver``), past SQLAlchemy: this is every request's
    path."""
    if conn.dialect.name != "postgresql":
        return await get_incident(conn, incident_id), await get_items(conn, codes)
    async with on_driver(conn) as driver:
        incident = await driver.fetchrow(_INCIDENT, incident_id)
        rows = await driver.fetch(_ITEMS, list(dict.fromkeys(codes)))
    found = {r["code"]: to_item(SimpleNamespace(**dict(r.items()))) for r in rows}
    return (SimpleNamespace(**dict(incident.items())) if incident is not None else None), found


async def insert_items(conn: AsyncConnection, new: Sequence[Item], now: datetime) -> set[str]:
    """Add items; returns the codes of those that already existed (nothing is written then)."""
    existing = set(await get_items(conn, [i.code for i in new]))
    if existing:
        return existing
    await conn.execute(
        insert(items),
        [
            {
                "code": i.code,
                "gb_code": i.gb_code,
                "name_en": i.name_en,
                "name_zh": i.name_zh,
                "base_unit": i.base_unit,
                "packs": dict(i.packs),
                "shelf_life_days": i.shelf_life_days,
                "version": 1,
                "created_at": now,
                "kit_of": dict(i.kit_of) or None,
            }
            for i in new
        ],
    )
    return set()


def to_depot(row: Any) -> Depot:
    """A row of ``depots`` as the domain's Depot."""
    return Depot(
        id=row.id,
        name=row.name,
        district=row.district,
        lat=row.lat,
        lon=row.lon,
        exercise=row.exercise,
        hours=row.hours,
        contact=row.contact,
        version=row.version,
    )


async def get_depot(conn: AsyncConnection, depot_id: str) -> Depot | None:
    """The depot of this id, or None."""
    row = (await conn.execute(select(depots).where(depots.c.id == depot_id))).first()
    return to_depot(row) if row is not None else None


async def insert_depots(conn: AsyncConnection, new: Sequence[Depot], now: datetime) -> set[str]:
    """Add depots; returns the ids of those that already existed (nothing is written then)."""
    ids = [d.id for d in new]
    existing = set((await conn.execute(select(depots.c.id).where(depots.c.id.in_(ids)))).scalars())
    if existing:
        return existing
    await conn.execute(
        insert(depots),
        [
            {
                "id": d.id,
                "name": d.name,
                "district": d.district,
                "lat": d.lat,
                "lon": d.lon,
                "hours": d.hours,
                "contact": d.contact,
                "exercise": d.exercise,
                "version": 1,
                "created_at": now,
            }
            for d in new
        ],
    )
    return set()


# --- stock lines and the ledger ------------------------------------------------------------------


def to_line(row: Any) -> StockLine:
    """A row of ``stock_lines`` as the domain's StockLine."""
    return StockLine(
        id=row.id,
        depot_id=row.depot_id,
        item=row.item,
        lot=row.lot,
        expiry=row.expiry,
        condition=Condition(row.condition),
        on_hand=row.on_hand,
        reserved=row.reserved,
    )


async def get_line(conn: AsyncConnection, line_id: int) -> StockLine | None:
    """The stock line of this id, or None."""
    row = (await conn.execute(select(stock_lines).where(stock_lines.c.id == line_id))).first()
    return to_line(row) if row is not None else None


async def find_line(
    conn: AsyncConnection, depot_id: str, item: str, lot: str, condition: Condition
) -> StockLine | None:
    """The stock line of this depot, item, lot and condition, or None."""
    row = (
        await conn.execute(
            select(stock_lines).where(
                stock_lines.c.depot_id == depot_id,
                stock_lines.c.item == item,
                stock_lines.c.lot == lot,
                stock_lines.c.condition == condition.value,
            )
        )
    ).first()
    return to_line(row) if row is not None else None


async def lot_expiries(conn: AsyncConnection, depot_id: str, item: str, lot: str) -> set[date | None]:
    """The expiry dates the lines of this depot, item and lot carry (one per condition; a lot has
    one expiry, so at most one date unless older data disagreed); empty for a lot not yet held."""
    c = stock_lines.c
    rows = await conn.execute(select(c.expiry).where(c.depot_id == depot_id, c.item == item, c.lot == lot).distinct())
    return {r.expiry for r in rows}


async def ensure_line(
    conn: AsyncConnection,
    depot: Depot,
    item: str,
    lot: str,
    expiry: date | None,
    condition: Condition,
) -> StockLine:
    """The stock line of this depot, item, lot and condition, created empty if there is none.
    Two writers creating the same line meet at the unique index: the second inserts nothing."""
    found = await find_line(conn, depot.id, item, lot, condition)
    if found is not None:
        return found
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(
        dialect_insert(stock_lines)
        .values(
            depot_id=depot.id,
            item=item,
            lot=lot,
            expiry=expiry,
            condition=condition.value,
            on_hand=0,
            reserved=0,
            exercise=depot.exercise,
        )
        .on_conflict_do_nothing()
    )
    line = await find_line(conn, depot.id, item, lot, condition)
    assert line is not None
    return line


async def new_document(
    conn: AsyncConnection,
    kind: str,
    actor: str,
    effective_at: datetime,
    now: datetime,
    reason: str | None = None,
    incident_id: str | None = None,
    reservation_id: int | None = None,
    note: str = "",
) -> int:
    """Record a ledger document; returns its id."""
    res = await conn.execute(
        insert(documents)
        .values(
            kind=kind,
            reason=reason,
            incident_id=incident_id,
            reservation_id=reservation_id,
            note=note,
            actor=actor,
            effective_at=effective_at,
            created_at=now,
        )
        .returning(documents.c.id)
    )
    return int(res.scalar_one())


async def line_history(conn: AsyncConnection, line_id: int) -> list[tuple[datetime, int]]:
    """A stock line's ledger entries as (effective at, change), in order."""
    rows = await conn.execute(
        select(ledger.c.effective_at, ledger.c.delta).where(ledger.c.line_id == line_id).order_by(ledger.c.effective_at)
    )
    return [(r.effective_at, r.delta) for r in rows]


async def lock_depot_lines(conn: AsyncConnection, depot_id: str, codes: Iterable[str]) -> list[StockLine]:
    """A depot's stock lines of these items with something on hand, each row held until the
    transaction ends (PostgreSQL, in id order, so two documents wait for each other instead of
    deadlocking; SQLite's writer lock already is one): what an assembly or disassembly plans
    from is what it then changes."""
    wanted = sorted(set(codes))
    if not wanted:
        return []
    t = stock_lines.c
    q = select(stock_lines).where(t.depot_id == depot_id, t.item.in_(wanted), t.on_hand > 0).order_by(t.id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return [to_line(r) for r in await conn.execute(q)]


async def lock_line(conn: AsyncConnection, line_id: int) -> None:
    """Hold the stock line's row until the transaction ends (PostgreSQL; SQLite's writer lock,
    taken at BEGIN, already is one): a back-dated document checks the history it changes."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(stock_lines.c.id).where(stock_lines.c.id == line_id).with_for_update())


async def change_on_hand(conn: AsyncConnection, document_id: int, line_id: int, delta: int, at: datetime) -> bool:
    """Add ``delta`` to a line's quantity on hand, only if what is not reserved covers a decrease
    (one conditional UPDATE), and write its ledger entry. False when refused."""
    cond = stock_lines.c.id == line_id
    if delta < 0:
        cond = and_(cond, stock_lines.c.on_hand - stock_lines.c.reserved >= -delta)
    res = await conn.execute(update(stock_lines).where(cond).values(on_hand=stock_lines.c.on_hand + delta))
    if res.rowcount != 1:
        return False
    await conn.execute(insert(ledger).values(document_id=document_id, line_id=line_id, delta=delta, effective_at=at))
    return True


async def candidates_of(
    conn: AsyncConnection, codes: Iterable[str], exercise: bool, not_expiring_before: date
) -> dict[str, list[tuple[StockLine, Depot]]]:
    """Every good stock line of these items with something available in a depot of the same kind
    (exercise or live), not expiring before ``not_expiring_before``, with its depot, in one
    query: by item code (an item with nothing reservable is absent)."""
    wanted = sorted(set(codes))
    if not wanted:
        return {}
    t = stock_lines.c
    q = (
        select(
            t.id,
            t.depot_id,
            t.item,
            t.lot,
            t.expiry,
            t.on_hand,
            t.reserved,
            depots.c.lat.label("d_lat"),
            depots.c.lon.label("d_lon"),
            depots.c.name.label("d_name"),
        )
        .join(depots, depots.c.id == t.depot_id)
        .where(
            t.item.in_(wanted),
            t.condition == Condition.good.value,
            t.on_hand > t.reserved,
            t.exercise == exercise,
            (t.expiry.is_(None)) | (t.expiry >= not_expiring_before),
        )
    )
    found: dict[str, list[tuple[StockLine, Depot]]] = {}
    for r in await conn.execute(q):
        line = StockLine(r.id, r.depot_id, r.item, r.lot, r.expiry, Condition.good, r.on_hand, r.reserved)
        depot = Depot(id=r.depot_id, name=r.d_name, district="", lat=r.d_lat, lon=r.d_lon, exercise=exercise)
        found.setdefault(r.item, []).append((line, depot))
    return found


_RESERVE_LINES = text(
    "WITH v AS (SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:qs AS bigint[])) AS v(id, q)),"
    " locked AS (SELECT s.id FROM stock_lines s WHERE s.id IN (SELECT id FROM v) ORDER BY s.id FOR UPDATE)"
    " UPDATE stock_lines AS s SET reserved = s.reserved + v.q FROM v JOIN locked ON locked.id = v.id"
    " WHERE s.id = v.id AND s.condition = 'good' AND s.on_hand - s.reserved >= v.q"
    " RETURNING s.id"
)


async def reserve_from_lines(conn: AsyncConnection, wanted: dict[int, int]) -> set[int]:
    """Reserve ``wanted[line_id]`` base units of each good line that still has that much
    available; returns the lines that gave it (the others, emptied meanwhile by another request,
    gave nothing). On PostgreSQL one conditional ``UPDATE ... FROM unnest(...) RETURNING`` for
    every line, the lines locked first in id order (two requests sharing lines never deadlock
    over them); on SQLite,
    whose writer lock already serialises writers, ``reserve_from_line`` for each."""
    ids = sorted(wanted)
    if not ids:
        return set()
    if conn.dialect.name == "postgresql":
        res = await conn.execute(_RESERVE_LINES, {"ids": ids, "qs": [wanted[i] for i in ids]})
        return {int(r[0]) for r in res}
    return {i for i in ids if await reserve_from_line(conn, i, wanted[i])}


_RESERVE_NEAREST = """
WITH want AS (
    SELECT w.item, w.q, w.n
    FROM unnest(CAST($1 AS text[]), CAST($2 AS bigint[])) WITH ORDINALITY AS w(item, q, n)
), cand AS (
    SELECT s.id, s.depot_id, s.expiry, s.on_hand - s.reserved AS avail, w.n, w.q,
        2 * CAST($3 AS float8) * asin(least(1.0, sqrt(
            power(sin((radians(CAST($4 AS float8)) - radians(d.lat)) / 2), 2)
            + cos(radians(d.lat)) * cos(radians(CAST($4 AS float8)))
            * power(sin(radians(CAST($5 AS float8) - d.lon) / 2), 2)
        ))) * CAST($6 AS float8) AS travel
    FROM want w
    JOIN stock_lines s ON s.item = w.item
    JOIN depots d ON d.id = s.depot_id
    WHERE s.condition = 'good' AND s.on_hand > s.reserved AND s.exercise = CAST($8 AS boolean)
        AND (s.expiry IS NULL OR s.expiry >= CAST($9 AS date))
), ranked AS (
    SELECT cand.*, row_number() OVER w AS k,
        COALESCE(sum(avail) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM cand WHERE travel <= CAST($7 AS float8)
    WINDOW w AS (PARTITION BY n ORDER BY round(CAST(travel AS numeric), 3), depot_id COLLATE "C",
                 expiry NULLS LAST, id)
), take AS (
    SELECT id, depot_id, n, k, travel, least(avail, q - before) AS q FROM ranked WHERE before < q
), locked AS (
    SELECT s.id FROM stock_lines s WHERE s.id IN (SELECT id FROM take) ORDER BY s.id FOR UPDATE
), given AS (
    UPDATE stock_lines s SET reserved = s.reserved + take.q
    FROM take JOIN locked ON locked.id = take.id
    WHERE s.id = take.id AND s.condition = 'good' AND s.on_hand - s.reserved >= take.q
    RETURNING s.id
)
SELECT take.n, take.id, take.depot_id, take.q, take.travel, take.id IN (SELECT id FROM given) AS given
FROM take ORDER BY take.n, take.k
"""


async def reserve_nearest(
    conn: AsyncConnection,
    wants: Sequence[tuple[str, int]],
    lat: float,
    lon: float,
    exercise: bool,
    not_expiring_before: date,
    seconds_per_m: float,
    max_travel_s: float,
) -> list[tuple[int, int, str, int, float, bool]]:
    """PostgreSQL only, for ``wants`` ((item, base units), no item twice): in one statement, pick
    each want's lines as the domain does (the good lines of depots of the same kind, not
    expiring before ``not_expiring_before``, in depots at most ``max_travel_s`` away; nearest
    depot first by great-circle distance times ``seconds_per_m``, then earliest expiry, until the
    quantity is met) and reserve them with a
    conditional UPDATE each, the lines locked first in id order (two requests sharing lines never
    deadlock over them). Returns the takes, each want's in order: (index into ``wants``, line
    id, depot id, base units, travel seconds, given), ``given`` False for a line another request
    emptied meanwhile (nothing was reserved from it). Sent on the driver (``ecs.db.on_driver``):
    this is every reservation's path."""
    async with on_driver(conn) as driver:
        res = await driver.fetch(
            _RESERVE_NEAREST,
            [w[0] for w in wants],
            [w[1] for w in wants],
            EARTH_RADIUS_M,
            lat,
            lon,
            seconds_per_m,
            max_travel_s,
            exercise,
            not_expiring_before,
        )
    return [(int(r[0]) - 1, int(r[1]), r[2], int(r[3]), float(r[4]), bool(r[5])) for r in res]


async def reserve_from_line(conn: AsyncConnection, line_id: int, quantity: int) -> bool:
    """Reserve ``quantity`` of a good line if that much is still available: one conditional UPDATE
    (the CHECK constraints back it). False when another request took it meanwhile."""
    res = await conn.execute(
        update(stock_lines)
        .where(
            stock_lines.c.id == line_id,
            stock_lines.c.condition == Condition.good.value,
            stock_lines.c.on_hand - stock_lines.c.reserved >= quantity,
        )
        .values(reserved=stock_lines.c.reserved + quantity)
    )
    return res.rowcount == 1


async def unreserve(conn: AsyncConnection, line_id: int, quantity: int, issued: bool) -> bool:
    """Give back ``quantity`` reserved on a line: to stock (a release), or out of the depot with
    it (an issue: on hand falls too). Conditional on that much being reserved."""
    values: dict[str, Any] = {"reserved": stock_lines.c.reserved - quantity}
    if issued:
        values["on_hand"] = stock_lines.c.on_hand - quantity
    res = await conn.execute(
        update(stock_lines).where(stock_lines.c.id == line_id, stock_lines.c.reserved >= quantity).values(**values)
    )
    return res.rowcount == 1


# --- reservations ----------------------------------------------------------------------------------


async def insert_reservation(
    conn: AsyncConnection,
    incident_id: str,
    item: str,
    requested: int,
    lat: float,
    lon: float,
    source: str,
    exercise: bool,
    actor: str,
    now: datetime,
    request_key: str | None = None,
    edxl: tuple[str, str] | None = None,
) -> int:
    """Record a reservation request; returns its id (``missing`` starts at ``requested``);
    ``edxl``: (MessageID, ResourceInfoElementID) of the EDXL-RM request it came from."""
    res = await conn.execute(
        insert(reservations)
        .values(
            incident_id=incident_id,
            item=item,
            requested=requested,
            missing=requested,
            lat=lat,
            lon=lon,
            source=source,
            exercise=exercise,
            actor=actor,
            version=1,
            created_at=now,
            request_key=request_key,
            edxl_message_id=edxl[0] if edxl else None,
            edxl_element_id=edxl[1] if edxl else None,
        )
        .returning(reservations.c.id)
    )
    return int(res.scalar_one())


async def insert_reservations(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Record several reservations (each a dict of ``reservations``' columns but ``id``) in one
    statement; returns their ids in the order of ``rows``."""
    if not rows:
        return []
    res = await conn.execute(
        insert(reservations).returning(reservations.c.id, sort_by_parameter_order=True), list(rows)
    )
    return [int(r[0]) for r in res]


_RECORD = """
WITH ids AS (
    SELECT n, nextval((SELECT pg_get_serial_sequence('reservations', 'id'))) AS id
    FROM generate_series(1, cardinality($1::text[])) AS n
), made AS (
    INSERT INTO reservations (id, incident_id, item, requested, missing, lat, lon, source, exercise, actor,
                              version, created_at, request_key, edxl_message_id, edxl_element_id)
    SELECT ids.id, w.incident_id, w.item, w.requested, w.missing, w.lat, w.lon, w.source, w.exercise, w.actor,
           w.version, w.created_at, w.request_key, w.edxl_message_id, w.edxl_element_id
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::float8[], $6::float8[], $7::text[],
                $8::boolean[], $9::text[], $10::int[], $11::timestamptz[], $12::text[], $13::text[], $14::text[])
        WITH ORDINALITY AS w(incident_id, item, requested, missing, lat, lon, source, exercise, actor, version,
                             created_at, request_key, edxl_message_id, edxl_element_id, n)
    JOIN ids USING (n)
), held AS (
    INSERT INTO allocations (reservation_id, incident_id, line_id, depot_id, item, travel_s, held, out, returned,
                             consumed, released)
    SELECT ids.id, a.incident_id, a.line_id, a.depot_id, a.item, a.travel_s, a.held, 0, 0, 0, 0
    FROM unnest($15::bigint[], $16::text[], $17::bigint[], $18::text[], $19::text[], $20::float8[], $21::bigint[])
        AS a(n, incident_id, line_id, depot_id, item, travel_s, held)
    JOIN ids USING (n)
)
SELECT id FROM ids ORDER BY n
"""

_RESERVATION_COLUMNS = (
    "incident_id",
    "item",
    "requested",
    "missing",
    "lat",
    "lon",
    "source",
    "exercise",
    "actor",
    "version",
    "created_at",
    "request_key",
    "edxl_message_id",
    "edxl_element_id",
)


async def record_reservations(
    conn: AsyncConnection, rows: Sequence[dict[str, Any]], takes: Sequence[Sequence[Allocation]], incident_id: str
) -> list[int]:
    """Record reservations (each a dict of ``reservations``' columns but ``id``) and what each took
    (``takes[i]``: reservation ``i``'s allocations, their ``reservation_id`` not yet known);
    returns the reservations' ids in the order of ``rows``. On PostgreSQL one statement on the
    driver (``ecs.db.on_driver``), past SQLAlchemy: this is every reservation's path."""
    if not rows:
        return []
    if conn.dialect.name != "postgresql":
        ids = await insert_reservations(conn, rows)
        await add_allocations(
            conn, [replace(a, reservation_id=ids[i]) for i, made in enumerate(takes) for a in made], incident_id
        )
        return ids
    held = [(i + 1, a) for i, made in enumerate(takes) for a in made]
    async with on_driver(conn) as driver:
        res = await driver.fetch(
            _RECORD,
            *([r[c] for r in rows] for c in _RESERVATION_COLUMNS),
            [n for n, _ in held],
            [incident_id] * len(held),
            [a.line_id for _, a in held],
            [a.depot_id for _, a in held],
            [a.item for _, a in held],
            [a.travel_s for _, a in held],
            [a.held for _, a in held],
        )
    return [int(r[0]) for r in res]


async def reservations_of_request(conn: AsyncConnection, request_key: str) -> list[Any]:
    """The reservations an earlier request with this key made, in order."""
    rows = await conn.execute(
        select(reservations).where(reservations.c.request_key == request_key).order_by(reservations.c.id)
    )
    return list(rows)


async def bump_reservation(conn: AsyncConnection, reservation_id: int, version: int | None) -> bool:
    """Move the reservation to its next version, only if it is still at ``version`` (None: any)."""
    cond = reservations.c.id == reservation_id
    if version is not None:
        cond = and_(cond, reservations.c.version == version)
    res = await conn.execute(update(reservations).where(cond).values(version=reservations.c.version + 1))
    return res.rowcount == 1


async def add_allocations(conn: AsyncConnection, rows: Sequence[Allocation], incident_id: str) -> None:
    """Record what reservations took from stock lines (``held`` of each; ids are given by the
    database), in one statement."""
    if not rows:
        return
    await conn.execute(
        insert(allocations),
        [
            {
                "reservation_id": a.reservation_id,
                "incident_id": incident_id,
                "line_id": a.line_id,
                "depot_id": a.depot_id,
                "item": a.item,
                "travel_s": a.travel_s,
                "held": a.held,
                "out": 0,
                "returned": 0,
                "consumed": 0,
                "released": 0,
            }
            for a in rows
        ],
    )


def to_allocation(row: Any) -> Allocation:
    """A row of ``allocations`` as the domain's Allocation."""
    return Allocation(
        id=row.id,
        reservation_id=row.reservation_id,
        line_id=row.line_id,
        depot_id=row.depot_id,
        item=row.item,
        travel_s=row.travel_s,
        held=row.held,
        out=row.out,
        returned=row.returned,
        consumed=row.consumed,
        released=row.released,
    )


async def get_reservation(conn: AsyncConnection, reservation_id: int) -> Any:
    """The reservation's row, or None."""
    return (await conn.execute(select(reservations).where(reservations.c.id == reservation_id))).first()


async def reservation_allocations(conn: AsyncConnection, reservation_id: int) -> list[Allocation]:
    """A reservation's allocations."""
    rows = await conn.execute(
        select(allocations).where(allocations.c.reservation_id == reservation_id).order_by(allocations.c.id)
    )
    return [to_allocation(r) for r in rows]


async def incident_allocations(conn: AsyncConnection, incident_id: str) -> list[Allocation]:
    """Every allocation of an incident's reservations."""
    rows = await conn.execute(
        select(allocations).where(allocations.c.incident_id == incident_id).order_by(allocations.c.id)
    )
    return [to_allocation(r) for r in rows]


async def automatic_missing(conn: AsyncConnection, incident_id: str) -> dict[str, int]:
    """What the incident's automatic reservations asked for and could not get, by item."""
    r = reservations.c
    rows = await conn.execute(
        select(r.item, func.sum(r.missing))
        .where(r.incident_id == incident_id, r.source == "automatic", r.missing > 0)
        .group_by(r.item)
    )
    return {item: int(total) for item, total in rows}


async def incident_reservation_ids(conn: AsyncConnection, incident_id: str) -> dict[str, list[int]]:
    """The incident's reservation ids by item, oldest first."""
    rows = await conn.execute(
        select(reservations.c.id, reservations.c.item)
        .where(reservations.c.incident_id == incident_id)
        .order_by(reservations.c.id)
    )
    found: dict[str, list[int]] = {}
    for r in rows:
        found.setdefault(r.item, []).append(r.id)
    return found


async def move_incident_reservations(conn: AsyncConnection, from_incident: str, to_incident: str) -> int:
    """Every reservation of ``from_incident`` (and its allocations) belongs to ``to_incident`` from
    now on, as it stands (held, out, returned...); each moved reservation's version goes up.
    Returns how many reservations moved."""
    r, a = reservations.c, allocations.c
    moved = await conn.execute(
        update(reservations)
        .where(r.incident_id == from_incident)
        .values(incident_id=to_incident, version=r.version + 1)
    )
    await conn.execute(update(allocations).where(a.incident_id == from_incident).values(incident_id=to_incident))
    return int(moved.rowcount)


async def move_bucket(conn: AsyncConnection, allocation_id: int, source: Bucket, target: Bucket, quantity: int) -> bool:
    """Move ``quantity`` of an allocation from ``source`` to ``target``, only if that much is in
    ``source`` (one conditional UPDATE)."""
    src, dst = allocations.c[source.value], allocations.c[target.value]
    res = await conn.execute(
        update(allocations)
        .where(allocations.c.id == allocation_id, src >= quantity)
        .values({source.value: src - quantity, target.value: dst + quantity})
    )
    return res.rowcount == 1


# --- incidents ---------------------------------------------------------------------------------------


async def remember_incident(
    conn: AsyncConnection,
    incident_id: str,
    category: Category,
    level: Level,
    stage: Stage,
    lat: float,
    lon: float,
    exercise: bool,
    version: int,
    now: datetime,
) -> None:
    """Keep the incident (if not known yet) as of ``version``."""
    exists = (await conn.execute(select(incidents.c.id).where(incidents.c.id == incident_id))).first()
    if exists is not None:
        return
    await conn.execute(
        insert(incidents).values(
            id=incident_id,
            category=category.value,
            level=int(level),
            stage=stage.value,
            lat=lat,
            lon=lon,
            exercise=exercise,
            stage_version=version,
            level_version=version,
            settled=None,
            updated_at=now,
        )
    )


async def set_stage(
    conn: AsyncConnection, incident_id: str, version: int, stage: Stage, now: datetime, category: Category | None = None
) -> bool:
    """Record the incident's stage (and the category it carries: a medical call may have become
    the scene it reported) as of ``version``, unless a newer one is already recorded."""
    values: dict[str, Any] = {"stage": stage.value, "stage_version": version, "updated_at": now}
    if category is not None:
        values["category"] = scene_of(incidents.c.category, category)  # never back to medical
    res = await conn.execute(
        update(incidents).where(incidents.c.id == incident_id, incidents.c.stage_version < version).values(**values)
    )
    return res.rowcount == 1


async def set_category(conn: AsyncConnection, incident_id: str, category: Category, now: datetime) -> bool:
    """A medical-only incident becomes the scene reported near it (ecs.db.take_scene); False when
    it changed nothing (not known here, or already a scene)."""
    return await take_scene(conn, incidents, incident_id, category, updated_at=now)


async def set_level(conn: AsyncConnection, incident_id: str, version: int, level: Level, now: datetime) -> bool:
    """Record the incident's level as of ``version``, unless a newer one is already recorded."""
    res = await conn.execute(
        update(incidents)
        .where(incidents.c.id == incident_id, incidents.c.level_version < version)
        .values(level=int(level), level_version=version, updated_at=now)
    )
    return res.rowcount == 1


async def get_incident(conn: AsyncConnection, incident_id: str) -> Any:
    """The incident's row, or None."""
    return (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()


async def set_settled(conn: AsyncConnection, incident_id: str, settled: bool) -> None:
    """What was last published about the incident's settlement."""
    await conn.execute(update(incidents).where(incidents.c.id == incident_id).values(settled=settled))


async def ledger_mismatches(conn: AsyncConnection) -> list[tuple[int, int, int]]:
    """Stock lines whose ledger does not replay to their balance: (line, on hand, replayed)."""
    replay = select(ledger.c.line_id, func.sum(ledger.c.delta).label("total")).group_by(ledger.c.line_id).subquery()
    rows = await conn.execute(
        select(stock_lines.c.id, stock_lines.c.on_hand, func.coalesce(replay.c.total, 0)).outerjoin(
            replay, replay.c.line_id == stock_lines.c.id
        )
    )
    return [(r[0], r[1], int(r[2])) for r in rows if r[1] != int(r[2])]


async def add_entry(conn: AsyncConnection, document_id: int, line_id: int, delta: int, at: datetime) -> None:
    """A ledger entry for a change of on hand made by another statement (an issue)."""
    await conn.execute(insert(ledger).values(document_id=document_id, line_id=line_id, delta=delta, effective_at=at))


# --- low stock and expiry ------------------------------------------------------------------------


def _insert(conn: AsyncConnection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


async def get_minimum(conn: AsyncConnection, depot_id: str, item: str) -> Any:
    """The minimum's row, or None."""
    m = stock_minimums.c
    return (await conn.execute(select(stock_minimums).where(m.depot_id == depot_id, m.item == item))).first()


async def put_minimum(
    conn: AsyncConnection, depot_id: str, item: str, minimum: int, version: int | None, actor: str, now: datetime
) -> int | None:
    """Set the minimum of (depot, item); with ``version``, only if it is still at that version (0:
    only if there is none yet). Returns the new version, or None when refused."""
    m = stock_minimums.c
    if version != 0:
        cond = and_(m.depot_id == depot_id, m.item == item)
        if version is not None:
            cond = and_(cond, m.version == version)
        res = await conn.execute(
            update(stock_minimums)
            .where(cond)
            .values(minimum=minimum, actor=actor, version=m.version + 1, updated_at=now)
            .returning(m.version)
        )
        row = res.first()
        if row is not None:
            return int(row[0])
        if version is not None:
            return None
    res = await conn.execute(
        _insert(conn)(stock_minimums)
        .values(depot_id=depot_id, item=item, minimum=minimum, actor=actor, version=1, updated_at=now)
        .on_conflict_do_nothing()
        .returning(m.version)
    )
    row = res.first()
    return int(row[0]) if row is not None else None


async def lock_minimums(conn: AsyncConnection, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The minimums of these (depot, item) pairs that have one, each row held until the
    transaction ends (PostgreSQL; SQLite's writer lock already is one), in key order: whoever
    checks a pair's level next waits for this transaction and then sees what it committed."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    m = stock_minimums.c
    if conn.dialect.name == "postgresql":  # every stock change checks: on the driver, past SQLAlchemy
        async with on_driver(conn) as driver:
            rows = await driver.fetch(_LOCK_MINIMUMS, [d for d, _ in wanted], [i for _, i in wanted])
        return {(r[0], r[1]): int(r[2]) for r in rows}
    q = select(m.depot_id, m.item, m.minimum).where(tuple_(m.depot_id, m.item).in_(wanted))
    q = q.order_by(m.depot_id, m.item)
    return {(r.depot_id, r.item): int(r.minimum) for r in await conn.execute(q)}


_LOCK_MINIMUMS = """
SELECT m.depot_id, m.item, m.minimum FROM stock_minimums m
JOIN unnest($1::text[], $2::text[]) AS w(depot_id, item) ON m.depot_id = w.depot_id AND m.item = w.item
ORDER BY m.depot_id, m.item FOR UPDATE OF m
"""


async def minimum_pairs(conn: AsyncConnection) -> list[tuple[str, str]]:
    """Every (depot, item) with a minimum, or with an open alert."""
    m, a = stock_minimums.c, low_stock_alerts.c
    found = {(r.depot_id, r.item) for r in await conn.execute(select(m.depot_id, m.item))}
    found |= {
        (r.depot_id, r.item) for r in await conn.execute(select(a.depot_id, a.item).where(a.cleared_at.is_(None)))
    }
    return sorted(found)


async def available_levels(
    conn: AsyncConnection, pairs: Iterable[tuple[str, str]], not_expiring_before: date
) -> dict[tuple[str, str], int]:
    """What could be reserved of each (depot, item): good, not expiring before
    ``not_expiring_before``, on hand less reserved (0 where there is none)."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    t = stock_lines.c
    rows = await conn.execute(
        select(t.depot_id, t.item, func.coalesce(func.sum(t.on_hand - t.reserved), 0))
        .where(
            tuple_(t.depot_id, t.item).in_(wanted),
            t.condition == Condition.good.value,
            (t.expiry.is_(None)) | (t.expiry >= not_expiring_before),
        )
        .group_by(t.depot_id, t.item)
    )
    levels = {pair: 0 for pair in wanted}
    levels.update({(r[0], r[1]): int(r[2]) for r in rows})
    return levels


async def open_low_stock(
    conn: AsyncConnection, depot_id: str, item: str, minimum: int, available: int, exercise: bool, now: datetime
) -> int | None:
    """Open the (depot, item)'s low-stock alert unless one is open (the partial unique index
    decides); returns the new alert's id, or None when one was already open."""
    res = await conn.execute(
        _insert(conn)(low_stock_alerts)
        .values(
            depot_id=depot_id,
            item=item,
            minimum=minimum,
            available=available,
            exercise=exercise,
            raised_at=now,
        )
        .on_conflict_do_nothing()
        .returning(low_stock_alerts.c.id)
    )
    row = res.first()
    return int(row[0]) if row is not None else None


async def clear_low_stock(conn: AsyncConnection, depot_id: str, item: str, available: int, now: datetime) -> Any:
    """Clear the (depot, item)'s open alert, if there is one (one conditional UPDATE); returns
    its (id, raised_at), or None when none was open."""
    a = low_stock_alerts.c
    res = await conn.execute(
        update(low_stock_alerts)
        .where(a.depot_id == depot_id, a.item == item, a.cleared_at.is_(None))
        .values(cleared_at=now, cleared_available=available)
        .returning(a.id, a.raised_at)
    )
    return res.first()


async def depots_exercise(conn: AsyncConnection, depot_ids: Iterable[str]) -> dict[str, bool]:
    """Whether each of these depots is an exercise depot."""
    ids = sorted(set(depot_ids))
    if not ids:
        return {}
    rows = await conn.execute(select(depots.c.id, depots.c.exercise).where(depots.c.id.in_(ids)))
    return {r.id: bool(r.exercise) for r in rows}


async def expiring_lots(conn: AsyncConnection, horizon: date, limit: int) -> list[Any]:
    """Lots with stock on hand expiring on or before ``horizon`` that were not warned of yet:
    (depot_id, item, lot, expiry, on_hand, exercise)."""
    t, w = stock_lines.c, expiry_warnings.c
    warned = select(expiry_warnings.c.id).where(w.depot_id == t.depot_id, w.item == t.item, w.lot == t.lot).exists()
    rows = await conn.execute(
        select(
            t.depot_id,
            t.item,
            t.lot,
            func.min(t.expiry).label("expiry"),
            func.sum(t.on_hand).label("on_hand"),
            t.exercise,
        )
        .where(t.expiry.is_not(None), t.expiry <= horizon, t.on_hand > 0, ~warned)
        .group_by(t.depot_id, t.item, t.lot, t.exercise)
        .order_by(func.min(t.expiry), t.depot_id, t.item, t.lot)
        .limit(limit)
    )
    return list(rows)


async def warn_expiry(
    conn: AsyncConnection, depot_id: str, item: str, lot: str, expiry: date, on_hand: int, exercise: bool, now: datetime
) -> int | None:
    """Record the lot's expiry warning unless it was warned of (the unique index decides);
    returns the warning's id, or None."""
    res = await conn.execute(
        _insert(conn)(expiry_warnings)
        .values(
            depot_id=depot_id,
            item=item,
            lot=lot,
            expiry=expiry,
            on_hand=on_hand,
            exercise=exercise,
            warned_at=now,
        )
        .on_conflict_do_nothing()
        .returning(expiry_warnings.c.id)
    )
    row = res.first()
    return int(row[0]) if row is not None else None


# --- exercise data -----------------------------------------------------------------------------------


async def exercise_incident_ids(conn: AsyncConnection) -> list[str]:
    """The exercise incidents resource-stockpile knows, by id."""
    rows = await conn.execute(select(incidents.c.id).where(incidents.c.exercise.is_(True)).order_by(incidents.c.id))
    return list(rows.scalars())


async def release_exercise_holds(conn: AsyncConnection) -> int:
    """Give every quantity still held by an exercise reservation back to its stock line (reserved
    falls; on hand and the ledger do not change, as for any release); returns the base units.
    Each line is a conditional UPDATE: a line holding less reserved than its allocations say
    refuses, and the caller's transaction rolls back rather than leave a count wrong."""
    a = allocations.c
    rows = (
        await conn.execute(
            select(a.id, a.line_id, a.held)
            .join(reservations, reservations.c.id == a.reservation_id)
            .where(reservations.c.exercise.is_(True), a.held > 0)
            .order_by(a.id)
        )
    ).all()
    released = 0
    for r in rows:
        if not await unreserve(conn, r.line_id, r.held, issued=False):
            raise Conflict(f"stock line {r.line_id} holds less reserved than exercise allocation {r.id}; try again")
        await conn.execute(update(allocations).where(a.id == r.id).values(held=0, released=a.released + r.held))
        released += r.held
    return released


async def delete_exercise_reservations(conn: AsyncConnection) -> int:
    """Forget every exercise reservation and its allocations (release what they hold first:
    release_exercise_holds); returns how many reservations."""
    ids = select(reservations.c.id).where(reservations.c.exercise.is_(True))
    await conn.execute(delete(allocations).where(allocations.c.reservation_id.in_(ids)))
    return (await conn.execute(delete(reservations).where(reservations.c.exercise.is_(True)))).rowcount


async def delete_exercise_incidents(conn: AsyncConnection) -> int:
    """Forget resource-stockpile's copy of every exercise incident; returns how many."""
    return (await conn.execute(delete(incidents).where(incidents.c.exercise.is_(True)))).rowcount


def exercise_line_ids() -> Any:
    """The ids of exercise depots' stock lines, as a query (for ``IN``)."""
    exercise_depots = select(depots.c.id).where(depots.c.exercise.is_(True))
    return select(stock_lines.c.id).where(stock_lines.c.depot_id.in_(exercise_depots))


def exercise_document_ids() -> Any:
    """The documents of exercise depots (each with its entries on their lines; stock never moves
    between exercise and live depots, so a document is wholly one or the other), as a query."""
    return select(ledger.c.document_id).where(ledger.c.line_id.in_(exercise_line_ids())).distinct()


async def delete_exercise_depots(conn: AsyncConnection) -> tuple[int, int, int]:
    """Forget every exercise depot with its stock lines, their ledger and its documents (the
    exercise reservations must be gone: delete_exercise_reservations); returns (depots, stock
    lines, documents). A document that also holds an entry of a live line is kept."""
    doc_ids = list((await conn.execute(exercise_document_ids())).scalars())
    await conn.execute(delete(ledger).where(ledger.c.line_id.in_(exercise_line_ids())))
    documents_purged = 0
    for chunk in range(0, len(doc_ids), 500):
        ids = doc_ids[chunk : chunk + 500]
        still_live = select(ledger.c.id).where(ledger.c.document_id == documents.c.id).exists()
        res = await conn.execute(delete(documents).where(documents.c.id.in_(ids), ~still_live))
        documents_purged += res.rowcount
    exercise_depots = select(depots.c.id).where(depots.c.exercise.is_(True))
    for table in (low_stock_alerts, stock_minimums, expiry_warnings):
        await conn.execute(delete(table).where(table.c.depot_id.in_(exercise_depots)))
    lines = (await conn.execute(delete(stock_lines).where(stock_lines.c.id.in_(exercise_line_ids())))).rowcount
    purged = (await conn.execute(delete(depots).where(depots.c.exercise.is_(True)))).rowcount
    return purged, lines, documents_purged
