"""What an incident event does: dispatch keeps its copy of the incident, and follows the plan —
a stage change sends the units the stage wants and releases the rest, a level change tops up or
gives back, a merge moves the absorbed incident's units over. Each event exactly once (inbox).

Events may arrive out of order (redeliveries, two replicas): the stage and the level each carry
the incident's version, and an older one never undoes a newer one (store.set_stage, set_level).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import structlog

from ecs.contracts import CategoryChanged, IncidentCreated, IncidentMerged, IncidentSplit, LevelChanged, StageChanged
from ecs.envelope import Envelope, utcnow
from ecs.errors import Transient
from ecs.vocabulary import Level, Stage

from .. import store
from ..context import Context
from ..domain import AssignmentSource, Incident, merge_reason, reconcile, split_reason, takes_over
from .assignments import claim_recommended, hand_over, publish_facts, release_held
from .tx import AUTOMATION, Tx, incident_lock, transaction

log = structlog.get_logger("dispatch")


async def remember_incident(ctx: Context, env: Envelope, data: IncidentCreated, consumer: str) -> None:
    """``incident.created``: dispatch learns of the incident (reported: nothing to send yet)."""

    async def record(tx: Tx) -> None:  # nothing to follow yet: the plan's units go out on isolation
        await store.remember_incident(tx.conn, _incident(data, Stage.reported, data.level, env), None, 1, utcnow())

    await _follow(ctx, env, consumer, (), record)


async def follow_stage(ctx: Context, env: Envelope, data: StageChanged, consumer: str) -> None:
    """``incident.stage.changed``: the units the new stage wants go out, the others come back."""

    async def record(tx: Tx) -> Incident | None:
        now = utcnow()
        incident = _incident(data, data.to_stage, data.level, env)
        await store.remember_incident(tx.conn, incident, data.perimeter, data.version, now)
        await store.set_stage(
            tx.conn, data.incident_id, data.version, data.to_stage, data.perimeter, now, data.category
        )
        await store.set_level(tx.conn, data.incident_id, data.version, data.level, now)
        return await store.get_incident(tx.conn, data.incident_id)

    await _follow(ctx, env, consumer, (data.incident_id,), record)


async def follow_category(ctx: Context, env: Envelope, data: CategoryChanged, consumer: str) -> None:
    """``incident.category.changed``: a medical call became its scene, whose plan rules from now
    on: past reported, the units that plan wants at the incident's stage go out at once (and
    automatic ones it does not want come back)."""

    async def record(tx: Tx) -> Incident | None:
        await store.set_category(tx.conn, data.incident_id, data.to_category, utcnow())
        return await store.get_incident(tx.conn, data.incident_id)  # None: never heard of, nothing to do

    await _follow(ctx, env, consumer, (data.incident_id,), record)


async def follow_level(ctx: Context, env: Envelope, data: LevelChanged, consumer: str) -> None:
    """``incident.level.changed``: top up to the plan's part for the new level, or give back."""

    async def record(tx: Tx) -> Incident | None:
        await store.set_level(tx.conn, data.incident_id, data.version, data.to_level, utcnow())
        return await store.get_incident(tx.conn, data.incident_id)  # None: never heard of, nothing to do

    await _follow(ctx, env, consumer, (data.incident_id,), record)


async def take_over_merged(ctx: Context, env: Envelope, data: IncidentMerged, consumer: str) -> None:
    """``incident.merged``: the absorbed incident's units move to the one that absorbed it (or are
    released if that one is closed); then the plan decides what it keeps."""

    async def record(tx: Tx) -> Incident | None:
        target = await store.get_incident(tx.conn, data.incident_id)
        if target is not None:
            await _merge(ctx, tx, target, data.merged_incident_id)
        return target

    await _follow(ctx, env, consumer, (data.incident_id, data.merged_incident_id), record)


async def give_back_split(ctx: Context, env: Envelope, data: IncidentSplit, consumer: str) -> None:
    """``incident.split`` that gives back an incident merged in earlier (``state_of``): the units
    that came over with that merge and still serve go with the split-off incident; then each of
    the two follows its plan (the one left tops up what it lost, the new one keeps what it got
    back and adds only what is missing). A split of other alarms moves no unit. Raises Transient
    while the split-off incident's ``incident.created`` has not been worked on yet (it comes
    again)."""

    async def record(tx: Tx) -> Incident | None:
        left = await store.get_incident(tx.conn, data.incident_id)
        if left is None or data.state_of is None:
            return left
        new = await store.get_incident(tx.conn, data.new_incident_id)
        if new is None:
            raise Transient(f"incident {data.new_incident_id} split from {left.id} is not known here yet")
        came = await store.units_ended_by(tx.conn, data.state_of, merge_reason(left))
        moving = [a for a in await store.active_assignments(tx.conn, left.id) if a.unit_id in came]
        if moving and takes_over(new):
            await hand_over(ctx, tx, left, new, moving, split_reason(left, new))
            if ctx.settings.automatic:
                await reconcile_units(ctx, tx, new)
        return left

    await _follow(ctx, env, consumer, (data.incident_id, data.new_incident_id), record)


async def reconcile_units(ctx: Context, tx: Tx, incident: Incident, retry_contended: bool = True) -> None:
    """Bring the units the incident holds to what its plan wants at its stage and level
    (domain.reconcile), record what could not be found, and tell the lifecycle. Units found but
    taken by other transactions meanwhile raise Transient when ``retry_contended`` (a consumer
    then tries the event again later); an operator's request records them as missing instead."""
    current = await store.get_incident(tx.conn, incident.id)
    held = await store.active_assignments(tx.conn, incident.id)
    level_plan = ctx.plans.find(current.category, current.level)
    decision = reconcile(current, held, level_plan, ctx.settings.release_on_aftermath)
    if decision.release:
        await release_held(tx, current, decision.release, decision.release_reason)
    shortfalls: list[str] = []
    if decision.add:
        _, shortfalls = await claim_recommended(
            ctx, tx, current, decision.add, decision.stage, AssignmentSource.AUTOMATIC, retry_contended
        )
        if shortfalls:
            log.warning("dispatch.shortfall", incident_id=current.id, shortfalls=shortfalls)
    if shortfalls != list(current.shortfalls):
        await store.update_incident(tx.conn, current.id, shortfalls=shortfalls, updated_at=utcnow())
    await publish_facts(ctx, tx, current)


async def _follow(
    ctx: Context,
    env: Envelope,
    consumer: str,
    incident_ids: Sequence[str],
    record: Callable[[Tx], Awaitable[Incident | None]],
) -> None:
    """One incident event in one transaction, once per consumer: lock the incidents it names (in
    one order, so two events never deadlock), ``record`` it in dispatch's copy, then follow the
    plan for the incident it returns (if the automation is on)."""

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        for incident_id in sorted(incident_ids):
            await tx.uow.lock(incident_lock(incident_id))
        incident = await record(tx)
        if incident is not None and ctx.settings.automatic:
            await reconcile_units(ctx, tx, incident)
        await tx.uow.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def _merge(ctx: Context, tx: Tx, target: Incident, source_id: str) -> None:
    source = await store.get_incident(tx.conn, source_id)
    if source is None:
        return
    await store.update_incident(tx.conn, source_id, merged_into=target.id, updated_at=utcnow())
    held = await store.active_assignments(tx.conn, source_id)
    if held and takes_over(target):
        await hand_over(ctx, tx, source, target, held, merge_reason(target))
    elif held:
        await release_held(tx, source, held, merge_reason(target))
    await publish_facts(ctx, tx, source)


def _incident(data: IncidentCreated | StageChanged, stage: Stage, level: Level, env: Envelope) -> Incident:
    return Incident(
        id=data.incident_id,
        category=data.category,
        level=level,
        stage=stage,
        lat=data.lat,
        lon=data.lon,
        exercise=env.exercise,
    )
