"""Reservations: "N of item X near P" taken nearest depot first until N is met (FEFO within a
depot), and what happens to them afterwards — issue, return, consume, release — each a conditional
UPDATE on the allocation and on the stock line, so no count is ever decided in Python.

A stale read costs a round, never an oversell: a line another request emptied meanwhile refuses the
conditional UPDATE (store.reserve_from_line) and the next nearest is tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
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
    Candidate,
    Condition,
    DocumentKind,
    Item,
    Take,
    allocate,
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
    """What a reservation got: its id, and the base units reserved and missing."""

    reservation_id: int
    reserved: int
    missing: int
    parts: list[Take]


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
        incident = await store.get_incident(tx.conn, cmd.incident_id)
        if incident is None:
            raise NotFound(f"incident {cmd.incident_id} not found", incident_id=cmd.incident_id)
        if Stage(incident.stage) in FINISHED_STAGES:
            raise Conflict(f"incident {cmd.incident_id} is {incident.stage}", incident_id=cmd.incident_id)
        catalogue = await store.get_items(tx.conn, [line.item for line in cmd.lines])
        quantities = []
        for i, line in enumerate(cmd.lines):
            if line.item not in catalogue:
                raise NotFound(f"item {line.item} not found", item=line.item)
            where = f"{prefix}{i}.quantity" if prefix else "quantity"
            quantities.append(to_base(catalogue[line.item], line.quantity, line.unit, where))
        lat = cmd.lat if cmd.lat is not None else incident.lat
        lon = cmd.lon if cmd.lon is not None else incident.lon
        got = [
            await reserve_for(
                ctx,
                tx,
                incident,
                line.item,
                q,
                lat,
                lon,
                source or cmd.source,
                cmd.request_key,
                (cmd.edxl_message_id, line.edxl_element_id or "") if cmd.edxl_message_id else None,
            )
            for line, q in zip(cmd.lines, quantities, strict=True)
        ]
        await publish_settlement(tx, incident)
        await tx.commit()
        return got

    return await transaction(ctx, work, cmd.actor)


async def reserve_for(
    ctx: Context,
    tx: Tx,
    incident: Any,
    item: str,
    quantity: int,
    lat: float,
    lon: float,
    source: str,
    request_key: str | None = None,
    edxl: tuple[str, str] | None = None,
) -> Reserved:
    """Reserve ``quantity`` base units of ``item`` near (lat, lon) for ``incident`` (a row of
    store.incidents) in ``tx``: rounds of read candidates → allocate (domain) → conditional
    UPDATE per line, until met, nothing is left, or the rounds run out. Emits ReservationMade."""
    now = utcnow()
    settings = ctx.settings
    reservation_id = await store.insert_reservation(
        tx.conn, incident.id, item, quantity, lat, lon, source, incident.exercise, tx.actor, now, request_key, edxl
    )
    not_before = now.date() + timedelta(days=settings.min_shelf_life_days)
    left = quantity
    taken: list[Take] = []
    for _ in range(settings.reserve_rounds):
        found = await store.candidates(tx.conn, item, incident.exercise, not_before)
        pool = [
            Candidate(line, travel_s(depot, lat, lon, settings.road_factor, settings.truck_speed_kmh))
            for line, depot in found
        ]
        takes, _ = allocate(pool, left)
        if not takes:
            break
        lines = {c.line.id: c.line for c in pool}
        for take in takes:
            if await store.reserve_from_line(tx.conn, take.line_id, take.quantity):
                await store.add_allocation(
                    tx.conn, reservation_id, incident.id, lines[take.line_id], take.quantity, take.travel_s
                )
                taken.append(take)
                tx.touch(take.depot_id, item)
                left -= take.quantity
        if left == 0:
            break
    await store.set_missing(tx.conn, reservation_id, left)
    RESERVED.inc(quantity - left)
    MISSING.inc(left)
    parts: dict[str, ReservedPart] = {}
    for t in taken:
        p = parts.get(t.depot_id)
        q = t.quantity + (p.quantity if p else 0)
        parts[t.depot_id] = ReservedPart(depot_id=t.depot_id, quantity=q, travel_s=round(t.travel_s, 1))
    tx.emit(
        ReservationMade(
            incident_id=incident.id,
            reservation_id=reservation_id,
            item=item,
            requested=quantity,
            reserved=quantity - left,
            missing=left,
            parts=list(parts.values()),
            actor=tx.actor,
        ),
        incident.id,
        incident.exercise,
    )
    return Reserved(reservation_id, quantity - left, left, taken)


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


async def publish_settlement(tx: Tx, incident: Any) -> None:
    """Tell the lifecycle whether the incident still holds supplies, when that changed since it
    was last told (``stockpile.incident.settled``)."""
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
    "act_on_reservation",
    "apply_action",
    "publish_settlement",
    "reserve",
    "reserve_for",
    "reserve_many",
]
