"""Reservations: "N of item X near P" taken nearest depot first until N is met (FEFO within a
depot), and what happens to them afterwards — issue, return, consume, release — each a conditional
UPDATE on the allocation and on the stock line, so no count is ever decided in Python.

A stale read costs a round, never an oversell: a line another request emptied meanwhile refuses the
conditional UPDATE (store.reserve_from_lines) and the next nearest is tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from prometheus_client import Counter as Metric

from ecs.contracts import ParticipantSettled
from ecs.contracts_stockpile import ReservationChanged, ReservationMade, ReservedPart
from ecs.envelope import utcnow
from ecs.errors import Conflict, NotFound, StaleVersion
from ecs.vocabulary import Participant, Stage

from .. import store
from ..commands import ActOnReservation, RequestLine, Reserve, ReserveMany
from ..context import Context
from ..domain import (
    FINISHED_STAGES,
    SOURCE_OF,
    Action,
    Allocation,
    Candidate,
    Condition,
    DocumentKind,
    Item,
    Take,
    allocate_many,
    move,
    settled,
    settled_detail,
    spread,
    to_base,
    travel_s,
)
from .tx import Tx, incident_lock, transaction

REQUESTS = "http-requests"
"""The inbox name under which operator requests with an Idempotency-Key are recorded, in the same
transaction as their effect: a repeat whose first answer was lost (a cut connection, a killed
process) finds it there and changes nothing."""

RESERVED = Metric("stockpile_reserved_base_units_total", "Base units reserved for incidents")
MISSING = Metric("stockpile_missing_base_units_total", "Base units asked for that no depot could give")


@dataclass(frozen=True, slots=True)
class Reserved:
    """What a reservation got: its id, the base units reserved and missing, the takes that
    reserved them, and (when it was just made, not found again for a repeated request) the
    reservation's columns as written, for the answer."""

    reservation_id: int
    reserved: int
    missing: int
    parts: list[Take]
    row: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Want:
    """``quantity`` base units of ``item`` wanted for an incident; ``edxl``: the (MessageID,
    ResourceInfoElementID) of the EDXL-RM request it came from."""

    item: str
    quantity: int
    edxl: tuple[str, str] | None = None


async def reserve(ctx: Context, cmd: Reserve) -> Reserved:
    """Reserve for an incident, nearest first, split across depots; a partial reservation says what
    is missing. Raises NotFound (incident, item), InvalidInput (quantity, unit) or Conflict (the
    incident is finished)."""
    line = RequestLine(cmd.item, cmd.quantity, cmd.unit)
    many = ReserveMany(cmd.incident_id, [line], cmd.actor, cmd.lat, cmd.lon, request_key=cmd.request_key)
    [got] = await reserve_many(ctx, many, cmd.source, "")
    return got


async def reserve_many(
    ctx: Context, cmd: ReserveMany, source: str | None = None, prefix: str = "lines."
) -> list[Reserved]:
    """Reserve several items for an incident in one transaction, all or none (a bad line refuses
    the whole request, naming ``lines.<i>.quantity`` or ``.unit``); each a reservation of its own,
    nearest first. Raises as ``reserve``."""

    async def work(tx: Tx) -> list[Reserved]:
        await tx.uow.lock(incident_lock(cmd.incident_id))
        if cmd.request_key is not None and not await tx.uow.first_time(REQUESTS, cmd.request_key):
            # The same request again (its answer was lost): what it made, never a second time.
            rows = await store.reservations_of_request(tx.conn, cmd.request_key)
            return [Reserved(r.id, r.requested - r.missing, r.missing, []) for r in rows]
        incident, catalogue = await store.incident_and_items(
            tx.conn, cmd.incident_id, [line.item for line in cmd.lines]
        )
        if incident is None:
            raise NotFound(f"incident {cmd.incident_id} not found", incident_id=cmd.incident_id)
        if Stage(incident.stage) in FINISHED_STAGES:
            raise Conflict(f"incident {cmd.incident_id} is {incident.stage}", incident_id=cmd.incident_id)
        wants = []
        for i, line in enumerate(cmd.lines):
            if line.item not in catalogue:
                raise NotFound(f"item {line.item} not found", item=line.item)
            where = f"{prefix}{i}.quantity" if prefix else "quantity"
            edxl = (cmd.edxl_message_id, line.edxl_element_id or "") if cmd.edxl_message_id else None
            wants.append(Want(line.item, to_base(catalogue[line.item], line.quantity, line.unit, where), edxl))
        lat = cmd.lat if cmd.lat is not None else incident.lat
        lon = cmd.lon if cmd.lon is not None else incident.lon
        got = await reserve_lines(ctx, tx, incident, wants, lat, lon, source or cmd.source, cmd.request_key)
        await publish_settlement(tx, incident, got)
        await tx.commit()
        return got

    return await transaction(ctx, work, cmd.actor)


async def reserve_lines(
    ctx: Context,
    tx: Tx,
    incident: Any,
    wants: Sequence[Want],
    lat: float,
    lon: float,
    source: str,
    request_key: str | None = None,
) -> list[Reserved]:
    """Reserve each of ``wants`` near (lat, lon) for ``incident`` (a row of store.incidents) in
    ``tx``, a reservation each, in order. Rounds of: read every wanted item's candidates (one
    query; depots over ``max_travel_s`` away left out) → allocate them nearest first, FEFO within
    a depot (domain.allocate_many) → take them
    with one conditional UPDATE (store.reserve_from_lines); a line another request emptied
    meanwhile gives nothing, and only its items are read again next round, until every want is
    met, nothing is left, or the rounds run out. Then the reservations and their allocations
    are written (store.record_reservations). Emits ReservationMade per want."""
    now = utcnow()
    settings = ctx.settings
    not_before = now.date() + timedelta(days=settings.min_shelf_life_days)
    left = [w.quantity for w in wants]
    taken: list[list[Take]] = [[] for _ in wants]
    items = {w.item for w in wants}
    if tx.conn.dialect.name == "postgresql" and len(items) == len(wants):
        await _reserve_in_one(ctx, tx, incident, wants, lat, lon, left, taken, not_before)
        items = set()  # all done: the rounds below are for SQLite, or an item asked for twice
    for _ in range(settings.reserve_rounds if items else 0):
        found = await store.candidates_of(tx.conn, items, incident.exercise, not_before)
        road, speed = settings.road_factor, settings.truck_speed_kmh
        pools = {
            item: [
                c
                for c in (Candidate(line, travel_s(depot, lat, lon, road, speed)) for line, depot in rows)
                if c.travel_s <= settings.max_travel_s
            ]
            for item, rows in found.items()
        }
        todo = [i for i, w in enumerate(wants) if left[i] > 0 and w.item in items]
        plans = allocate_many(pools, [(wants[i].item, left[i]) for i in todo])
        asked: dict[int, int] = {}
        for plan in plans:
            for take in plan:
                asked[take.line_id] = asked.get(take.line_id, 0) + take.quantity
        if not asked:
            break
        given = await store.reserve_from_lines(tx.conn, asked)
        refused: set[str] = set()
        for i, plan in zip(todo, plans, strict=True):
            for take in plan:
                if take.line_id in given:
                    taken[i].append(take)
                    left[i] -= take.quantity
                    tx.touch(take.depot_id, wants[i].item)
                else:
                    refused.add(wants[i].item)
        # Only an item a line was refused for may find more on a second look.
        items = {wants[i].item for i in todo if left[i] > 0} & refused
        if not items:
            break
    rows = [
        {
            "incident_id": incident.id,
            "item": w.item,
            "requested": w.quantity,
            "missing": left[i],
            "lat": lat,
            "lon": lon,
            "source": source,
            "exercise": incident.exercise,
            "actor": tx.actor,
            "version": 1,
            "created_at": now,
            "request_key": request_key,
            "edxl_message_id": w.edxl[0] if w.edxl else None,
            "edxl_element_id": w.edxl[1] if w.edxl else None,
        }
        for i, w in enumerate(wants)
    ]
    ids = await store.record_reservations(
        tx.conn,
        rows,
        [
            [Allocation(0, 0, t.line_id, t.depot_id, w.item, t.travel_s, t.quantity, 0) for t in taken[i]]
            for i, w in enumerate(wants)
        ],
        incident.id,
    )
    got = []
    for i, w in enumerate(wants):
        reserved = w.quantity - left[i]
        RESERVED.inc(reserved)
        MISSING.inc(left[i])
        parts: dict[str, ReservedPart] = {}
        for t in taken[i]:
            p = parts.get(t.depot_id)
            q = t.quantity + (p.quantity if p else 0)
            parts[t.depot_id] = ReservedPart(depot_id=t.depot_id, quantity=q, travel_s=round(t.travel_s, 1))
        tx.emit(
            ReservationMade(
                incident_id=incident.id,
                reservation_id=ids[i],
                item=w.item,
                requested=w.quantity,
                reserved=reserved,
                missing=left[i],
                parts=list(parts.values()),
                actor=tx.actor,
            ),
            incident.id,
            incident.exercise,
        )
        got.append(Reserved(ids[i], reserved, left[i], taken[i], {"id": ids[i], **rows[i]}))
    return got


async def _reserve_in_one(
    ctx: Context,
    tx: Tx,
    incident: Any,
    wants: Sequence[Want],
    lat: float,
    lon: float,
    left: list[int],
    taken: list[list[Take]],
    not_before: date,
) -> None:
    """``reserve_lines``' rounds on PostgreSQL, for wants of distinct items: each round one
    statement picks and reserves every want's lines (store.reserve_nearest); only the wants a
    line was refused for (another request emptied it meanwhile) go to the next round. Fills
    ``left`` and ``taken`` in place."""
    settings = ctx.settings
    seconds_per_m = settings.road_factor / (settings.truck_speed_kmh / 3.6)
    todo = list(range(len(wants)))
    for _ in range(settings.reserve_rounds):
        found = await store.reserve_nearest(
            tx.conn,
            [(wants[i].item, left[i]) for i in todo],
            lat,
            lon,
            incident.exercise,
            not_before,
            seconds_per_m,
            settings.max_travel_s,
        )
        refused: set[int] = set()
        for n, line_id, depot_id, q, travel, given in found:
            i = todo[n]
            if given:
                taken[i].append(Take(line_id, depot_id, q, travel))
                left[i] -= q
                tx.touch(depot_id, wants[i].item)
            else:
                refused.add(i)
        todo = [i for i in todo if i in refused and left[i] > 0]
        if not todo:
            return


async def act_on_reservation(ctx: Context, cmd: ActOnReservation) -> int:
    """Issue, return, consume or release part of a reservation; returns the reservation id.
    Raises NotFound, InvalidInput (quantity, unit), StaleVersion (409) or Conflict (more than
    there is in the bucket the action takes from)."""

    async def work(tx: Tx) -> int:
        row = await store.get_reservation(tx.conn, cmd.reservation_id)
        if row is None:
            raise NotFound(f"reservation {cmd.reservation_id} not found", reservation_id=cmd.reservation_id)
        await tx.uow.lock(incident_lock(row.incident_id))
        if cmd.request_key is not None and not await tx.uow.first_time(REQUESTS, cmd.request_key):
            return int(row.id)  # the same request again (its answer was lost): done once already
        if not await store.bump_reservation(tx.conn, row.id, cmd.version):
            raise StaleVersion(f"reservation {row.id} changed since version {cmd.version}", version=row.version)
        item = await _item(tx, row.item)
        quantity = to_base(item, cmd.quantity, cmd.unit) if cmd.quantity is not None else None
        await apply_action(tx, row, item, cmd.action, quantity, cmd.condition.value)
        incident = await store.get_incident(tx.conn, row.incident_id)
        if incident is not None:
            await publish_settlement(tx, incident)
        await tx.commit()
        return int(row.id)

    return await transaction(ctx, work, cmd.actor)


async def apply_action(
    tx: Tx, reservation: Any, item: Item, action: Action, quantity: int | None, condition: str = "good"
) -> int:
    """``action`` on ``quantity`` base units of ``reservation`` (None: all there is), nearest
    allocations first; returns the quantity moved. Emits ReservationChanged."""
    allocs = await store.reservation_allocations(tx.conn, reservation.id)
    moves = spread(allocs, action, quantity)
    now = utcnow()
    doc = None
    if action in (Action.issue, Action.return_):
        kind = DocumentKind.issue if action is Action.issue else DocumentKind.return_
        doc = await store.new_document(
            tx.conn, kind, tx.actor, now, now, incident_id=reservation.incident_id, reservation_id=reservation.id
        )
    source = SOURCE_OF[action]
    target = move(source, action)
    moved = 0
    for alloc, q in moves:
        if not await store.move_bucket(tx.conn, alloc.id, source, target, q):
            raise Conflict(f"reservation {reservation.id} changed meanwhile; try again")
        if action is Action.release and not await store.unreserve(tx.conn, alloc.line_id, q, issued=False):
            raise Conflict(f"stock line {alloc.line_id} holds less reserved than the reservation")
        if action is Action.issue:
            if not await store.unreserve(tx.conn, alloc.line_id, q, issued=True):
                raise Conflict(f"stock line {alloc.line_id} holds less reserved than the reservation")
            await store.add_entry(tx.conn, doc, alloc.line_id, -q, now)
        if action is Action.return_:
            line = await store.get_line(tx.conn, alloc.line_id)
            depot = await store.get_depot(tx.conn, alloc.depot_id)
            back = await store.ensure_line(tx.conn, depot, item.code, line.lot, line.expiry, Condition(condition))
            await store.change_on_hand(tx.conn, doc, back.id, q, now)
        tx.touch(alloc.depot_id, item.code)
        moved += q
    tx.emit(
        ReservationChanged(
            incident_id=reservation.incident_id,
            reservation_id=reservation.id,
            item=item.code,
            action=action.value,
            quantity=moved,
            condition=condition if action is Action.return_ else None,
            actor=tx.actor,
        ),
        reservation.incident_id,
        reservation.exercise,
    )
    return moved


async def publish_settlement(tx: Tx, incident: Any, made: Sequence[Reserved] | None = None) -> None:
    """Tell the lifecycle whether the incident still holds supplies, when that changed since it
    was last told (``stockpile.incident.settled``). ``made``: the reservations this transaction
    made, when that is all it changed of the incident (under its lock): then nothing needs
    reading once the incident was told anything — reserving nothing changes nothing, reserving
    something unsettles it, and what it holds is then exactly what was just reserved."""
    if made is not None and incident.settled is not None:
        if not incident.settled or not any(r.reserved for r in made):
            return
        allocs = [
            Allocation(0, r.reservation_id, t.line_id, t.depot_id, str(r.row["item"]), t.travel_s, t.quantity, 0)
            for r in made
            if r.row is not None
            for t in r.parts
        ]
    else:
        allocs = await store.incident_allocations(tx.conn, incident.id)
    now_settled = settled(allocs)
    if incident.settled is not None and bool(incident.settled) == now_settled:
        return
    await store.set_settled(tx.conn, incident.id, now_settled)
    tx.emit(
        ParticipantSettled(
            incident_id=incident.id,
            participant=Participant.stockpile,
            settled=now_settled,
            detail=settled_detail(allocs),
        ),
        incident.id,
        incident.exercise,
    )


async def _item(tx: Tx, code: str) -> Item:
    found = await store.get_items(tx.conn, [code])
    if code not in found:
        raise NotFound(f"item {code} not found", item=code)
    return found[code]


__all__ = [
    "Reserved",
    "Want",
    "act_on_reservation",
    "apply_action",
    "publish_settlement",
    "reserve",
    "reserve_lines",
    "reserve_many",
]
