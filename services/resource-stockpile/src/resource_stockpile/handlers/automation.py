"""What an incident event does: resource-stockpile keeps its copy of the incident and follows the
response plan's supplies — on handling it reserves them for the incident's level, on a level change
it tops up or releases, on aftermath it releases what is still held and asks for what is out back;
and it tells the lifecycle whenever the incident's settlement changes. Each event exactly once
(inbox).

The plan's supplies are asked of dispatch (``rpc.dispatch.plan.get``) before the transaction, so no
database connection waits on the network.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from ecs.contracts import CategoryChanged, IncidentCreated, IncidentMerged, LevelChanged, StageChanged
from ecs.contracts_stockpile import ReturnsRequested
from ecs.envelope import Envelope, utcnow
from ecs.vocabulary import Level, Stage, scene_of

from .. import store
from ..context import Context
from ..domain import RESERVING_STAGES, RETURNING_STAGES, Action, reconcile
from .reservations import Want, apply_action, publish_settlement, reserve_lines
from .tx import AUTOMATION, Tx, incident_lock, transaction

log = structlog.get_logger("resource-stockpile")


async def remember_incident(ctx: Context, env: Envelope, data: IncidentCreated, consumer: str) -> None:
    """``incident.created``: the incident is known (nothing held: settled)."""

    async def record(tx: Tx) -> Any:
        await store.remember_incident(
            tx.conn,
            data.incident_id,
            data.category,
            data.level,
            Stage.reported,
            data.lat,
            data.lon,
            env.exercise,
            1,
            utcnow(),
        )
        return await store.get_incident(tx.conn, data.incident_id)

    await _follow(ctx, env, consumer, data.incident_id, record, {})


async def follow_stage(ctx: Context, env: Envelope, data: StageChanged, consumer: str) -> None:
    """``incident.stage.changed``: reserve the plan's supplies on handling, release and ask back on
    aftermath."""
    wanted: dict[str, int] = {}
    if Stage(data.to_stage) in RESERVING_STAGES:
        async with ctx.db.uow() as uow:
            known = await store.get_incident(uow.conn, data.incident_id)
        # A category change taken before this older stage change stays (ecs.vocabulary.scene_of).
        category = scene_of(known.category, data.category) if known is not None else data.category
        wanted = await _wanted(ctx, category, data.level)

    async def record(tx: Tx) -> Any:
        now = utcnow()
        await store.remember_incident(
            tx.conn,
            data.incident_id,
            data.category,
            data.level,
            data.to_stage,
            data.lat,
            data.lon,
            env.exercise,
            data.version,
            now,
        )
        await store.set_stage(tx.conn, data.incident_id, data.version, data.to_stage, now, data.category)
        await store.set_level(tx.conn, data.incident_id, data.version, data.level, now)
        return await store.get_incident(tx.conn, data.incident_id)

    await _follow(ctx, env, consumer, data.incident_id, record, wanted)


async def follow_level(ctx: Context, env: Envelope, data: LevelChanged, consumer: str) -> None:
    """``incident.level.changed``: top up to the plan's supplies for the new level, or release."""
    async with ctx.db.uow() as uow:
        known = await store.get_incident(uow.conn, data.incident_id)
    wanted = await _wanted(ctx, known.category, data.to_level) if known is not None else {}

    async def record(tx: Tx) -> Any:
        await store.set_level(tx.conn, data.incident_id, data.version, data.to_level, utcnow())
        return await store.get_incident(tx.conn, data.incident_id)

    await _follow(ctx, env, consumer, data.incident_id, record, wanted)


async def follow_category(ctx: Context, env: Envelope, data: CategoryChanged, consumer: str) -> None:
    """``incident.category.changed``: a medical call became its scene, whose plan's supplies rule
    from now on: in handling, top up to them and release what only the medical plan wanted."""
    async with ctx.db.uow() as uow:
        known = await store.get_incident(uow.conn, data.incident_id)
    category = scene_of(known.category, data.to_category) if known is not None else data.to_category
    wanted = await _wanted(ctx, category, Level(known.level)) if known is not None else {}

    async def record(tx: Tx) -> Any:
        await store.set_category(tx.conn, data.incident_id, data.to_category, utcnow())
        return await store.get_incident(tx.conn, data.incident_id)

    await _follow(ctx, env, consumer, data.incident_id, record, wanted)


async def follow_merge(ctx: Context, env: Envelope, data: IncidentMerged, consumer: str) -> None:
    """``incident.merged``: what the merged incident held or had out is the absorbing incident's
    from now on (its returns are asked for, and its settlement waited for, there); then the
    absorbing incident's plan rules as on a level change (in handling, what it holds beyond the
    plan is released), and both incidents' settlements are told. Raises nothing for an incident
    not known here: the reservations move all the same."""
    async with ctx.db.uow() as uow:
        known = await store.get_incident(uow.conn, data.incident_id)
    wanted = await _wanted(ctx, known.category, Level(known.level)) if known is not None else {}

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        for incident_id in sorted({data.incident_id, data.merged_incident_id}):  # one order: no deadlock
            await tx.uow.lock(incident_lock(incident_id))
        moved = await store.move_incident_reservations(tx.conn, data.merged_incident_id, data.incident_id)
        target = await store.get_incident(tx.conn, data.incident_id)
        if target is not None and moved and ctx.settings.automatic:
            await reconcile_supplies(ctx, tx, target, wanted)
        for incident_id in (data.merged_incident_id, data.incident_id):
            row = await store.get_incident(tx.conn, incident_id)
            if row is not None:
                await publish_settlement(tx, row)
        if moved:
            log.info(
                "stockpile.reservations_moved", incident_id=data.incident_id, merged=data.merged_incident_id, n=moved
            )
        await tx.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def _wanted(ctx: Context, category: str, level: Level) -> dict[str, int]:
    plan = await ctx.plan_supplies(str(category))
    return dict(plan.get(Level(level).name, {}))


async def _follow(
    ctx: Context,
    env: Envelope,
    consumer: str,
    incident_id: str,
    record: Callable[[Tx], Awaitable[Any]],
    wanted: Mapping[str, int],
) -> None:
    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        await tx.uow.lock(incident_lock(incident_id))
        incident = await record(tx)
        if incident is not None:
            if ctx.settings.automatic:
                await reconcile_supplies(ctx, tx, incident, wanted)
            await publish_settlement(tx, await store.get_incident(tx.conn, incident_id))
        await tx.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def reconcile_supplies(ctx: Context, tx: Tx, incident: Any, wanted: Mapping[str, int]) -> None:
    """Bring what the incident holds to what its plan wants at its stage and level
    (domain.reconcile); on aftermath, ask for what is out."""
    stage = Stage(incident.stage)
    allocs = await store.incident_allocations(tx.conn, incident.id)
    holding: dict[str, tuple[int, int]] = {}
    for a in allocs:
        # What left a depot for the incident counts towards its plan whether it is still out,
        # used up or back: consumed stretchers were the plan's, and topping up after them (or
        # after the officer sent the unused ones back) would give the incident more than it asks.
        held, given = holding.get(a.item, (0, 0))
        holding[a.item] = (held + a.held, given + a.out + a.consumed + a.returned)
    if stage not in RESERVING_STAGES:
        wanted = {}
    toppings = reconcile(stage, wanted, holding, await store.automatic_missing(tx.conn, incident.id))
    known = await store.get_items(tx.conn, [t.item for t in toppings])
    by_item = await store.incident_reservation_ids(tx.conn, incident.id)
    for t in toppings:
        if t.item not in known:
            log.warning("stockpile.unknown_plan_item", incident_id=incident.id, item=t.item)
    adds = [Want(t.item, t.add) for t in toppings if t.add and t.item in known]
    if adds:  # every item the plan adds, in one round of reads and one conditional UPDATE
        got = await reserve_lines(ctx, tx, incident, adds, incident.lat, incident.lon, "automatic")
        for want, made in zip(adds, got, strict=True):
            if made.missing:
                log.warning("stockpile.shortfall", incident_id=incident.id, item=want.item, missing=made.missing)
    for t in toppings:
        if t.item not in known:
            continue
        left = t.release
        for reservation_id in reversed(by_item.get(t.item, [])):  # newest first
            if left <= 0:
                break
            held = sum(a.held for a in allocs if a.reservation_id == reservation_id)
            if held:
                q = min(held, left)
                row = await store.get_reservation(tx.conn, reservation_id)
                await apply_action(tx, row, known[t.item], Action.release, q)
                await store.bump_reservation(tx.conn, reservation_id, None)
                left -= q
    if stage in RETURNING_STAGES:
        out = {item: o for item, (_, o) in holding.items() if o > 0}
        if out:
            tx.emit(ReturnsRequested(incident_id=incident.id, items=out), incident.id, incident.exercise)
