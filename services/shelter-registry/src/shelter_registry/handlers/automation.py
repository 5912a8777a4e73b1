"""Following the incident lifecycle: keep the incident's facts; on an evacuation order (the
response plan's ``evacuate`` and ``evacuation_radius_m`` at the incident's level) open the nearest
standby shelters of the incident's world until the expected evacuees fit, again when a level change
makes the plan evacuate farther (never closing any on a lowering); in aftermath tell the lifecycle
when the incident's evacuees are all out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ecs.contracts import CategoryChanged, IncidentMerged, LevelChanged, StageChanged
from ecs.envelope import Envelope, utcnow
from ecs.errors import NotFound
from ecs.vocabulary import Stage

from .. import commands, store
from ..context import Context
from ..domain import ShelterAction, ShelterStatus, expected_evacuees, next_status, shelters_to_open
from .settlement import settle_if_done
from .shelters import emit_status
from .tx import AUTOMATION, Tx, incident_lock, transaction

log = structlog.get_logger("shelter.automation")

EVACUATING: frozenset[Stage] = frozenset({Stage.isolation, Stage.handling})
"""Stages in which an evacuation order opens shelters."""


async def follow_stage(
    ctx: Context, env: Envelope, data: StageChanged, consumer: str, radius_m: int | None = None
) -> None:
    """Keep the stage, category and level; with ``radius_m`` (the plan's evacuation radius at the
    level, 0 when it does not evacuate; None when the consumer did not ask) open shelters for the
    evacuees; settle in aftermath."""

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        await tx.uow.lock(incident_lock(data.incident_id))
        row = {
            "id": data.incident_id,
            "stage": Stage(data.to_stage).value,
            "exercise": env.exercise,
            "lat": data.lat,
            "lon": data.lon,
            "expected_evacuees": None,
            "settled": None,
            "version": data.version,
            "closed_at": utcnow() if Stage(data.to_stage) in (Stage.closed, Stage.cancelled) else None,
            "category": str(data.category),
            "level": int(data.level),
            "evacuation_radius_m": radius_m,
        }
        if await store.upsert_incident(tx.conn, row):
            if radius_m and ctx.settings.automatic and Stage(data.to_stage) in EVACUATING:
                await _open_for(tx, ctx, data.incident_id)
            await settle_if_done(tx, data.incident_id)
        await tx.uow.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def follow_level(
    ctx: Context, env: Envelope, data: LevelChanged, consumer: str, radius_m: int | None = None
) -> None:
    """Keep the new level and the plan's evacuation radius at it (``radius_m``, None when the
    consumer did not ask: the incident is not evacuating or unknown); while the incident is
    evacuating, open more standby shelters when the new estimate no longer fits. A lowering keeps
    every open shelter open."""

    async def change(tx: Tx) -> bool:
        return await store.follow_level(tx.conn, data.incident_id, int(data.to_level), data.version, radius_m)

    await _follow_plan(ctx, env, consumer, data.incident_id, radius_m, change)


async def follow_category(
    ctx: Context, env: Envelope, data: CategoryChanged, consumer: str, radius_m: int | None = None
) -> None:
    """A medical call became its scene: keep the scene and its plan's evacuation radius at the
    incident's level (``radius_m``, None when the consumer did not ask: the incident is not
    evacuating or unknown); while the incident is evacuating, open the standby shelters the
    scene's evacuation needs."""

    async def change(tx: Tx) -> bool:
        return await store.follow_category(tx.conn, data.incident_id, str(data.to_category), data.version, radius_m)

    await _follow_plan(ctx, env, consumer, data.incident_id, radius_m, change)


async def follow_merge(
    ctx: Context, env: Envelope, data: IncidentMerged, consumer: str, radius_m: int | None = None
) -> None:
    """``incident.merged``: the absorbed incident's households, where they are, are the absorbing
    incident's from now on (its dashboard counts them, its settlement waits for them), except one
    the absorbing incident already has under the same household reference, which stays (logged);
    both incidents' settlements are told. ``radius_m`` is not used: a merge moves no evacuation
    radius (the absorbing incident's own stage and level events do)."""

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        for incident_id in sorted({data.incident_id, data.merged_incident_id}):  # one order: no deadlock
            await tx.uow.lock(incident_lock(incident_id))
        moved, stayed = await store.move_incident_registrations(
            tx.conn, data.merged_incident_id, data.incident_id, utcnow()
        )
        if moved or stayed:
            log.info(
                "shelter.registrations_moved",
                incident_id=data.incident_id,
                merged=data.merged_incident_id,
                moved=moved,
                stayed_same_household_ref=stayed,
            )
        for incident_id in (data.merged_incident_id, data.incident_id):
            await settle_if_done(tx, incident_id)
        await tx.uow.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def _follow_plan(
    ctx: Context,
    env: Envelope,
    consumer: str,
    incident_id: str,
    radius_m: int | None,
    change: Callable[[Tx], Awaitable[bool]],
) -> None:
    """One event that may move the plan's evacuation radius (a level or a category change), once
    per consumer: ``change`` the known incident (True when it changed), then, while the incident
    is evacuating, open the standby shelters the new radius needs."""

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        await tx.uow.lock(incident_lock(incident_id))
        incident = await store.incident(tx.conn, incident_id)
        changed = incident is not None and await change(tx)  # the change runs whatever the radius
        if changed and radius_m and ctx.settings.automatic and Stage(incident.stage) in EVACUATING:
            await _open_for(tx, ctx, incident_id)
        await tx.uow.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def _open_for(tx: Tx, ctx: Context, incident_id: str) -> list[str]:
    """Open the nearest standby shelters of the incident's world until its expected evacuees fit
    in the places open now plus those its evacuees already hold."""
    incident = await store.incident(tx.conn, incident_id)
    if incident is None:
        return []
    settings = ctx.settings
    expected = expected_evacuees(
        incident.expected_evacuees,
        incident.evacuation_radius_m,
        settings.evacuation_density_per_km2,
        settings.default_expected_evacuees,
    )
    exercise = bool(incident.exercise)
    room = sum(r.free for r in await store.open_rooms(tx.conn, exercise)) + await store.holding(tx.conn, incident_id)
    standby = await store.standby_rooms(tx.conn, exercise)
    opened = []
    for shelter_id in shelters_to_open(standby, incident.lat, incident.lon, expected, room):
        before = await store.shelter(tx.conn, shelter_id)
        target = next_status(before.status, ShelterAction.open)
        after = await store.set_status(tx.conn, shelter_id, ShelterStatus.standby, target, None, utcnow(), incident_id)
        emit_status(tx, before, after)
        opened.append(shelter_id)
    return opened


async def set_expected(ctx: Context, cmd: commands.SetExpectedEvacuees) -> dict[str, Any]:
    """The operator's estimate of an incident's evacuees; opens more standby shelters when the
    incident is evacuating and they do not fit. Raises NotFound for an unknown incident."""

    async def work(tx: Tx) -> dict[str, Any]:
        await tx.uow.lock(incident_lock(cmd.incident_id))
        incident = await store.incident(tx.conn, cmd.incident_id)
        if incident is None:
            raise NotFound(f"no incident {cmd.incident_id!r} known to shelter-registry", field="incident_id")
        await store.set_expected(tx.conn, cmd.incident_id, cmd.expected)
        opened = []
        if Stage(incident.stage) in EVACUATING:
            opened = await _open_for(tx, ctx, cmd.incident_id)
        await tx.uow.commit()
        return {"incident_id": cmd.incident_id, "expected_evacuees": cmd.expected, "opened": opened}

    return await transaction(ctx, work, cmd.actor)
