"""What the service does by itself: it keeps its copy of each incident from incident-intake's
events (exactly once each: inbox) and the response plans from dispatch's; an incident at level II
or I starts the release clocks; entering aftermath asks whether the service is settled; a sweep
warns of clocks due soon and records those missed.

Events may arrive out of order: the stage and the level carry the incident's version, and an
older one never undoes a newer one (store.follow_incident)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from ecs.contracts import CategoryChanged, IncidentCreated, LevelChanged, PlanPublished, StageChanged
from ecs.contracts_notification import ClockEvent
from ecs.envelope import Envelope, utcnow
from ecs.vocabulary import Level, Stage

from .. import store
from ..commands import SweepClocks
from ..context import Context
from ..domain import Clock, ClockKind, clock_due, starts_clocks
from .facts import publish_settlement
from .tx import AUTOMATION, CLOCK_SUBJECT, Tx, incident_lock, transaction


async def remember_incident(ctx: Context, env: Envelope, data: IncidentCreated, consumer: str) -> None:
    """``incident.created``: the service learns of the incident (and starts the clocks if major)."""

    async def record(tx: Tx) -> None:
        await store.remember_incident(tx.conn, _incident(data, Stage.reported, data.level, env, 0), ctx.db)

    await _follow(ctx, env, consumer, data.incident_id, record)


async def follow_stage(ctx: Context, env: Envelope, data: StageChanged, consumer: str) -> None:
    """``incident.stage.changed``: the new stage (and its level and perimeter)."""

    async def record(tx: Tx) -> None:
        await store.remember_incident(tx.conn, _incident(data, data.to_stage, data.level, env, data.version), ctx.db)
        await store.follow_incident(
            tx.conn,
            data.incident_id,
            data.version,
            utcnow(),
            stage=data.to_stage.value,
            category=data.category.value,  # a medical call may have become the scene it reported
            level=int(data.level),
            perimeter=data.perimeter,
        )

    await _follow(ctx, env, consumer, data.incident_id, record)


async def follow_category(ctx: Context, env: Envelope, data: CategoryChanged, consumer: str) -> None:
    """``incident.category.changed``: a medical call became its scene (its templates and headline
    from now on)."""

    async def record(tx: Tx) -> None:
        await store.follow_category(tx.conn, data.incident_id, data.version, utcnow(), data.to_category.value)

    await _follow(ctx, env, consumer, data.incident_id, record)


async def follow_level(ctx: Context, env: Envelope, data: LevelChanged, consumer: str) -> None:
    """``incident.level.changed``: the new level (an incident never heard of is left alone)."""

    async def record(tx: Tx) -> None:
        await store.follow_incident(tx.conn, data.incident_id, data.version, utcnow(), level=int(data.to_level))

    await _follow(ctx, env, consumer, data.incident_id, record)


async def take_plan(ctx: Context, env: Envelope, data: PlanPublished, consumer: str) -> None:
    """``dispatch.plan.published``: keep the newest version of the category's plan (its templates)."""

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        levels = {name: level.model_dump(mode="json") for name, level in data.levels.items()}
        await store.save_plan(tx.conn, data.category.value, data.version, levels, ctx.db)
        await tx.uow.commit()

    await transaction(ctx, work, AUTOMATION, env)


async def sweep_clocks(ctx: Context, cmd: SweepClocks) -> tuple[list[Clock], list[Clock]]:
    """Warn of unmet clocks due within the warning time and record those past due, each once
    (the database decides, whatever replica sweeps); returns (warned, missed)."""

    async def work(tx: Tx) -> tuple[list[Clock], list[Clock]]:
        warned = await store.warn_clocks(tx.conn, cmd.now + timedelta(seconds=ctx.settings.clock_warning_s), cmd.now)
        missed = await store.miss_clocks(tx.conn, cmd.now)
        for name, found in (("due_soon", warned), ("missed", missed)):
            for clock in found:
                await _emit_clock(tx, clock, name)
        await tx.uow.commit()
        return warned, missed

    return await transaction(ctx, work, AUTOMATION)


async def _emit_clock(tx: Tx, clock: Clock, name: str) -> None:
    exercise = await store.clock_exercise(tx.conn, clock.incident_id)
    event = ClockEvent(
        incident_id=clock.incident_id, kind=clock.kind.value, started_at=clock.started_at, due_at=clock.due_at
    )
    tx.emit(event, clock.incident_id, exercise, CLOCK_SUBJECT.format(name))


async def _follow(
    ctx: Context, env: Envelope, consumer: str, incident_id: str, record: Callable[[Tx], Awaitable[None]]
) -> None:
    """One incident event in one transaction, once per consumer: lock the incident, ``record``
    it, start the clocks if it is now major, and publish settlement if that changed."""

    async def work(tx: Tx) -> None:
        if not await tx.uow.first_time(consumer, env.id):
            return
        await tx.uow.lock(incident_lock(incident_id))
        await record(tx)
        incident = await store.get_incident(tx.conn, incident_id)
        if incident is None:
            await tx.uow.commit()
            return
        if starts_clocks(Level(incident.level)) and Stage(incident.stage).is_open:
            started_at = env.occurred_at
            rows = [
                {
                    "incident_id": incident_id,
                    "kind": kind.value,
                    "started_at": started_at,
                    "due_at": clock_due(
                        kind, started_at, ctx.settings.first_information_s, ctx.settings.press_conference_s
                    ),
                    "exercise": incident.exercise,
                }
                for kind in ClockKind
            ]
            for clock in await store.start_clocks(tx.conn, rows, ctx.db):
                await _emit_clock(tx, clock, "started")
        await publish_settlement(tx, incident_id)
        await tx.uow.commit()

    await transaction(ctx, work, AUTOMATION, env)


def _incident(
    data: IncidentCreated | StageChanged, stage: Stage, level: Level, env: Envelope, version: int
) -> dict[str, Any]:
    reported_at = data.first_alarm_at if isinstance(data, IncidentCreated) else env.occurred_at
    return {
        "id": data.incident_id,
        "category": data.category.value,
        "level": int(level),
        "stage": stage.value,
        "lat": data.lat,
        "lon": data.lon,
        "exercise": env.exercise,
        "version": version,
        "perimeter": getattr(data, "perimeter", None),
        "reported_at": reported_at,
        "updated_at": utcnow(),
    }
