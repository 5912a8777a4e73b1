"""Operator commands on incidents. Each is one transaction of one shape: load the incident (under
the correlation clock) → let the ``Incident`` decide → save the change → emit its event → commit;
the answer is the incident as committed."""

from __future__ import annotations

from typing import Any

from ecs.envelope import new_id, utcnow
from ecs.errors import NotFound

from .. import store
from ..commands import (
    ChangeLevel,
    ChangeStage,
    MergeIncident,
    PurgeExercise,
    RecordFact,
    SetPerimeter,
    SplitAlarms,
    Verify,
)
from ..domain import Stage, refuse_self_merge, trigger_for
from .context import Context, commit, envelope, load, save


async def verify(command: Verify, ctx: Context) -> Any:
    """A dispatcher's verification (``Incident.verify``)."""
    async with ctx.db.uow() as uow:
        incident, rev = await load(uow, command.incident_id, command.version)
        await save(uow, incident.verify(command.actor), incident.version, rev)
        return await commit(uow, incident.id)


async def set_perimeter(command: SetPerimeter, ctx: Context) -> Any:
    """Set the cordon (``Incident.set_perimeter``)."""
    async with ctx.db.uow() as uow:
        incident, rev = await load(uow, command.incident_id, command.version)
        await save(uow, incident.set_perimeter(command.perimeter, command.actor), incident.version, rev)
        return await commit(uow, incident.id)


async def change_stage(command: ChangeStage, ctx: Context) -> Any:
    """A guarded step of the lifecycle (``Incident.change_stage``), with the settings' participants."""
    trigger_for(command.stage)  # a stage no step leads to is refused before anything is read
    async with ctx.db.uow() as uow:
        incident, rev = await load(uow, command.incident_id, command.version)
        change = incident.change_stage(command.stage, command.actor, command.reason, ctx.settings.required_participants)
        await save(uow, change, incident.version, rev)
        return await commit(uow, incident.id)


async def change_level(command: ChangeLevel, ctx: Context) -> Any:
    """A commander's level (``Incident.change_level``)."""
    async with ctx.db.uow() as uow:
        incident, rev = await load(uow, command.incident_id, command.version)
        await save(uow, incident.change_level(command.level, command.actor, command.reason), incident.version, rev)
        return await commit(uow, incident.id)


async def record_fact(command: RecordFact, ctx: Context) -> Any:
    """A commander's fact (``Incident.record_fact``)."""
    async with ctx.db.uow() as uow:
        incident, rev = await load(uow, command.incident_id, command.version)
        change = incident.record_fact(command.fact, command.actor, command.note)
        await save(uow, change, incident.version, rev)
        return await commit(uow, incident.id)


async def merge(command: MergeIncident, ctx: Context) -> Any:
    """Merge one incident into another (``Incident.merge``). The alarms move first, so the merged
    counts are the database's own; a refusal rolls the move back with everything else."""
    refuse_self_merge(command.incident_id, command.source_id)
    async with ctx.db.uow() as uow:
        conn = uow.conn
        target, rev = await load(uow, command.incident_id, command.version)
        source = await store.load_incident(conn, command.source_id)
        if source is None:
            raise NotFound(f"incident {command.source_id} not found", incident_id=command.source_id)
        source.expect_version(command.source_version)
        target.check_merge(source)
        moved = await store.move_incident_alarms(conn, source.id, target.id)
        await store.rebuild_callers(conn, [target.id, source.id])
        gone, merged = target.merge(source, command.actor, moved, await store.recount(conn, target.id))
        await save(uow, gone, source.version, rev)
        await save(uow, merged, target.version, rev)
        after = await store.load_incident(conn, target.id)
        carried = after.carried_stage(target.stage, command.actor, f"merged with {source.id}") if after else None
        if carried is not None:
            uow.emit(envelope(carried))
        return await commit(uow, target.id)


async def split(command: SplitAlarms, ctx: Context) -> tuple[Any, Any]:
    """Split alarms out into a new incident (``Incident.plan_split``, ``Incident.split``);
    returns the incident they left and the new one."""
    async with ctx.db.uow() as uow:
        conn = uow.conn
        incident, rev = await load(uow, command.incident_id, command.version)
        alarms = await store.incident_alarms(conn, incident.id)
        moving = set(incident.plan_split([a.key for a in alarms], command.alarms))
        leaving = [a for a in alarms if a.key in moving]
        origin = await _origin(conn, incident.id, alarms, leaving)
        new_incident_id = new_id()
        await store.move_alarms(conn, [a.seq for a in leaving], new_incident_id)
        await store.rebuild_callers(conn, [incident.id, new_incident_id])
        decided = incident.split(
            new_incident_id,
            leaving[0].facts,
            [a.key for a in leaving],
            await store.recount(conn, new_incident_id),
            await store.recount(conn, incident.id),
            command.actor,
            origin,
        )
        now = utcnow()
        await store.insert_incident(conn, decided.new, rev, now)
        await store.add_timeline(conn, [decided.entry], now)
        # In this order on the stream: the new incident, the split (dispatch moves back the units
        # that came with a merge while the new incident is still reported), then its stage.
        uow.emit(envelope(decided.created))
        await save(uow, decided.left, incident.version, rev)
        carried = decided.new.carried_stage(Stage.reported, command.actor, f"split from {incident.id}")
        if carried is not None:
            uow.emit(envelope(carried))
        new = await store.get_incident(conn, new_incident_id)
        return await commit(uow, incident.id), new


async def _origin(conn: Any, incident_id: str, alarms: list[Any], leaving: list[Any]) -> Any:
    """The incident merged into ``incident_id`` whose alarms are exactly those ``leaving``, if
    one is: a split of them gives back its state."""
    origins = {a.original_incident_id for a in leaving}
    if len(origins) != 1:
        return None
    (origin_id,) = origins
    if origin_id == incident_id or sum(1 for a in alarms if a.original_incident_id == origin_id) != len(leaving):
        return None
    origin = await store.load_incident(conn, origin_id)
    return origin if origin is not None and origin.merged_into == incident_id else None


async def purge_exercise(command: PurgeExercise, ctx: Context) -> tuple[int, int]:
    """Delete the drills' incidents and alarms; returns (incidents, alarms) purged."""
    async with ctx.db.uow() as uow:
        await store.tick(uow.conn, new_epoch=True)  # every replica drops its index of open incidents
        purged = await store.purge_exercise(uow.conn)
        await uow.commit()
    return purged
