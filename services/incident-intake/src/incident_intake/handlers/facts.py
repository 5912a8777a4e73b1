"""Facts other services publish about incidents (the lifecycle guards' inputs), each applied
exactly once per consumer through the inbox: load → ``Incident.apply_fact`` → save → commit."""

from __future__ import annotations

from typing import Any

from ecs.contracts import ParticipantSettled, PerimeterSecured, StatementPublished
from ecs.envelope import Envelope, parse_payload
from ecs.errors import Poison

from .. import store
from ..domain import Participant
from .context import Context, save


async def participant_settled(env: Envelope, ctx: Context, consumer: str) -> None:
    """``<participant>.incident.settled``: the participant holds (or no longer holds) anything."""
    data = parse_payload(ParticipantSettled, env.data, env.type)
    await _apply(env, ctx, consumer, "settled", data.settled, data.participant)


async def perimeter_secured(env: Envelope, ctx: Context, consumer: str) -> None:
    """``dispatch.incident.perimeter_secured``: the isolation units are (or are no longer) on scene."""
    data = parse_payload(PerimeterSecured, env.data, env.type)
    await _apply(env, ctx, consumer, "perimeter_units_on_scene", data.on_scene)


async def statement_published(env: Envelope, ctx: Context, consumer: str) -> None:
    """``notification.statement.published``: an official statement is out."""
    parse_payload(StatementPublished, env.data, env.type)
    await _apply(env, ctx, consumer, "statement_published", True)


async def _apply(
    env: Envelope, ctx: Context, consumer: str, fact: str, value: Any, participant: Participant | None = None
) -> None:
    """Raises Poison for an incident this intake does not know: it never will."""
    async with ctx.db.uow() as uow:
        if not await uow.first_time(consumer, env.id):
            return
        rev = await store.tick(uow.conn)
        incident = await store.load_incident(uow.conn, env.incident_id or "")
        if incident is None:
            raise Poison(f"unknown incident {env.incident_id}")
        await save(uow, incident.apply_fact(fact, value, env.source, env.id, participant), incident.version, rev)
        await uow.commit()
