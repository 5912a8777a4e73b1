"""The roster: registering, editing and removing units, their reported status and position, and
lending live units to drills."""

from __future__ import annotations

from prometheus_client import Counter as Metric

from ecs.envelope import utcnow
from ecs.errors import Conflict, InvalidInput, StaleVersion
from ecs.retry import retrying

from .. import store
from ..commands import (
    LendUnit,
    MoveUnit,
    ReclaimUnit,
    RecordPositions,
    RegisterUnits,
    RemoveUnit,
    ReportStatus,
    UpdateUnit,
)
from ..context import Context
from ..domain import (
    REMOVABLE,
    StaleUnit,
    Unit,
    UnknownUnit,
    busy,
    check_lendable,
    check_not_registered,
    check_unique_units,
    fix_ahead_of_clock,
    latest_positions,
    new_unit,
    reclaim_releases,
    release_event,
    report_status,
    unit_changes,
)
from .assignments import RELEASED, publish_facts, release_held
from .automation import reconcile_units
from .tx import UNIT_REGISTERED, UNIT_REMOVED, UNIT_UPDATED, Tx, incident_lock, transaction

POSITIONS = Metric("dispatch_positions_total", "Vehicle position reports written")
STATUS_ROUNDS = 5
"""Times a status report is tried again when the unit changed between reading and writing it."""


async def register_units(ctx: Context, cmd: RegisterUnits) -> list[Unit]:
    """Put units on the roster, all or none; returns them in the order given. Raises InvalidInput
    for an id listed twice and Conflict for one already registered."""
    ids = [spec.id for spec in cmd.units]
    check_unique_units(ids)

    async def work(tx: Tx) -> list[Unit]:
        check_not_registered(await store.existing_unit_ids(tx.conn, ids))
        now = utcnow()
        new = [new_unit(spec, now) for spec in cmd.units]
        if not await store.insert_units(tx.conn, new, now):
            raise Conflict("a unit with one of these ids was registered meanwhile")
        for unit in new:
            tx.emit_roster(UNIT_REGISTERED, unit)
        stored = await store.get_units(tx.conn, ids)
        await tx.uow.commit()
        return [stored[i] for i in ids]

    units = await transaction(ctx, work, cmd.actor)
    ctx.directory.apply(units)
    return units


async def update_unit(ctx: Context, cmd: UpdateUnit) -> Unit:
    """Change roster fields of a unit still at ``cmd.version`` (StaleUnit otherwise)."""
    values = unit_changes(cmd.changes)

    async def work(tx: Tx) -> Unit:
        unit = await _unit(tx, cmd.unit_id)
        changed = await store.update_unit(tx.conn, unit.id, cmd.version, values, utcnow())
        if changed is None:
            raise StaleUnit(unit.id, unit.version, cmd.version)
        tx.emit_roster(UNIT_UPDATED, changed)
        await tx.uow.commit()
        return changed

    unit = await transaction(ctx, work, cmd.actor)
    ctx.directory.apply([unit])
    return unit


async def remove_unit(ctx: Context, cmd: RemoveUnit) -> None:
    """Take a unit that serves no incident off the roster; Conflict naming what it serves if busy."""

    async def work(tx: Tx) -> None:
        unit = await _unit(tx, cmd.unit_id)
        if not await store.delete_unit(tx.conn, unit.id, REMOVABLE):
            raise busy(unit)
        tx.emit_roster(UNIT_REMOVED, unit)
        await tx.uow.commit()

    await transaction(ctx, work, cmd.actor)
    ctx.directory.forget(cmd.unit_id)


class _Changed(Exception):
    """The unit changed between reading and writing it: read it again."""


async def change_status(ctx: Context, cmd: ReportStatus) -> Unit:
    """A unit's reported status (domain.report_status); returning or out of service ends its
    assignment and, with the automation on, the incident's plan is met again at once (another unit
    comes); the lifecycle hears whether the perimeter is secured and dispatch settled."""

    async def work(tx: Tx) -> Unit:
        unit = await _unit(tx, cmd.unit_id)
        report = report_status(unit, cmd.status, tx.actor, cmd.version)
        incident = None
        if unit.incident_id is not None:
            await tx.uow.lock(incident_lock(unit.incident_id))
            incident = await store.get_incident(tx.conn, unit.incident_id)
        now = utcnow()
        changed = await store.set_unit_status(
            tx.conn, unit.id, report.from_status, report.to_status, report.incident_id, now, unit.version
        )
        if changed is None:
            raise _Changed
        replace = False
        if report.leaves:
            held = await store.active_assignment_of(tx.conn, unit.id)
            if held is not None:
                await store.close_assignments(tx.conn, [held.id], now, tx.actor, report.release_reason)
                tx.emit(release_event(held, report.to_status, tx.actor, report.release_reason), incident)
                RELEASED.inc()
                replace = incident is not None and ctx.settings.automatic
        if report.arrives:
            await store.mark_arrived(tx.conn, unit.id, now)
        tx.emit(report.event, incident, exercise=unit.exercise)
        if replace:
            # A unit that left the scene (out of service, sent back) is replaced at once from the
            # plan, as a stage or level change would: the incident does not wait for the next one.
            await reconcile_units(ctx, tx, incident, retry_contended=False)
        elif incident is not None:
            await publish_facts(ctx, tx, incident)
        await tx.uow.commit()
        return changed

    for _ in range(STATUS_ROUNDS):
        try:
            unit = await transaction(ctx, work, cmd.actor)
            break
        except _Changed:
            if cmd.version is not None:
                raise StaleVersion(f"unit {cmd.unit_id} changed meanwhile: reload it and decide again") from None
    else:
        raise Conflict(f"unit {cmd.unit_id} keeps changing: try again")
    ctx.directory.apply([unit])
    return unit


async def move_unit(ctx: Context, cmd: MoveUnit) -> Unit:
    """Set a unit's position unless a newer one is known. Raises InvalidInput (``at``) for a fix
    more than ``max_clock_skew_s`` ahead of the clock."""
    now = utcnow()
    at = cmd.at or now
    ahead = fix_ahead_of_clock(at, now, ctx.settings.max_clock_skew_s)
    if ahead is not None:
        raise InvalidInput(ahead, field="at")

    async def work(tx: Tx) -> Unit:
        await store.move_units(tx.conn, [(cmd.unit_id, cmd.lat, cmd.lon, at)])
        unit = await _unit(tx, cmd.unit_id)
        await tx.uow.commit()
        return unit

    unit = await transaction(ctx, work)
    ctx.directory.move([(unit.id, unit.lat, unit.lon, unit.location_at)])
    return unit


async def record_positions(ctx: Context, cmd: RecordPositions) -> set[str]:
    """Write a batch of position reports, the newest per unit, in one statement; returns the ids
    of units not on the roster (their reports are refused)."""
    latest = latest_positions(cmd.reports)
    unknown = {uid for uid in latest if uid not in ctx.directory}
    if unknown:
        async with ctx.db.engine.connect() as conn:
            unknown -= await store.existing_unit_ids(conn, unknown)
    known = [p for uid, p in latest.items() if uid not in unknown]
    if known:

        async def work() -> None:
            async with ctx.db.uow() as uow:
                await store.move_units(uow.conn, known)
                await uow.commit()

        await retrying(work)
        POSITIONS.inc(len(known))
        ctx.directory.move(known)
    return unknown


async def lend_unit(ctx: Context, cmd: LendUnit) -> Unit:
    """Lend a live unit to a drill: the drill's incidents may take it while it is available."""
    return await _set_lent(ctx, cmd.unit_id, cmd.drill, cmd.actor)


async def reclaim_unit(ctx: Context, cmd: ReclaimUnit) -> Unit:
    """Take a lent unit back; if it serves an exercise incident, that assignment ends at once."""
    return await _set_lent(ctx, cmd.unit_id, None, cmd.actor)


async def _set_lent(ctx: Context, unit_id: str, drill: str | None, actor: str) -> Unit:
    async def work(tx: Tx) -> Unit:
        unit = await _unit(tx, unit_id)
        check_lendable(unit, lending=drill is not None)
        if drill is None and unit.lent_to_drill is None:
            return unit  # not lent: taking it back changes nothing
        if drill is None and unit.incident_id is not None:
            await tx.uow.lock(incident_lock(unit.incident_id))
            incident = await store.get_incident(tx.conn, unit.incident_id)
            if incident is not None and reclaim_releases(incident):
                held = [a for a in await store.active_assignments(tx.conn, incident.id) if a.unit_id == unit_id]
                await release_held(tx, incident, held, "taken back")
                await publish_facts(ctx, tx, incident)
        changed = await store.set_lent(tx.conn, unit_id, drill, utcnow())
        if changed is None:
            raise Conflict(f"unit {unit_id} changed meanwhile: a drill borrows only an available live unit")
        tx.emit_roster(UNIT_UPDATED, changed)
        await tx.uow.commit()
        return changed

    unit = await transaction(ctx, work, actor)
    ctx.directory.apply([unit])
    return unit


async def _unit(tx: Tx, unit_id: str) -> Unit:
    unit = await store.get_unit(tx.conn, unit_id)
    if unit is None:
        raise UnknownUnit(unit_id)
    return unit
