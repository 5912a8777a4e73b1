"""NATS in: incident-intake's lifecycle events (the automation). Each message goes to its handlers
(handlers.EVENTS); the runner acks only after they committed. On a stage that may evacuate, the
response plan (``rpc.dispatch.plan.get``) says whether the incident's level evacuates."""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from pydantic import BaseModel

from ecs import streams
from ecs.bus import Bus, ConsumerSpec, decode_envelope
from ecs.contracts import LevelChanged, StageChanged
from ecs.envelope import Envelope, parse_payload
from ecs.errors import AppError, Poison, Transient
from ecs.vocabulary import Level, Stage

from .context import Context
from .handlers import EVENTS
from .handlers.automation import EVACUATING

INCIDENT_EVENTS: dict[str, type[BaseModel]] = {
    "incident.stage.changed": StageChanged,
    "incident.level.changed": LevelChanged,
}
"""The payload model of each incident event shelter-registry handles (its handlers: handlers.EVENTS)."""
INCIDENT_CONSUMER = ConsumerSpec("INCIDENTS", "shelter-incidents", tuple(INCIDENT_EVENTS), ack_wait_s=10)
PLAN_REQUEST = "rpc.dispatch.plan.get"

log = structlog.get_logger("shelter.consumers")

STREAMS = (streams.INCIDENTS, streams.SHELTER)
CONSUMERS = (INCIDENT_CONSUMER,)


def incident_event(msg: Msg) -> tuple[Envelope, BaseModel]:
    """The envelope and payload of an incident event. Raises Poison with the reason."""
    env = decode_envelope(msg)
    model = INCIDENT_EVENTS.get(msg.subject)
    if model is None:
        raise Poison(f"no handler for subject {msg.subject}")
    data = parse_payload(model, env.data, msg.subject)
    incident_id = getattr(data, "incident_id", None)
    if env.incident_id and incident_id != env.incident_id:
        raise Poison(f"the envelope names incident {env.incident_id}, the data {incident_id}")
    env.incident_id = incident_id
    return env, data


async def evacuates(bus: Bus, data: StageChanged) -> bool:
    """Whether the response plan of the incident's category evacuates at its level (False when no
    dispatch serves plans). Raises Transient when dispatch does not answer in time (the event is
    retried later)."""
    try:
        answer = await bus.request(PLAN_REQUEST, {"category": str(data.category)})
    except NoRespondersError:
        # No dispatch in this deployment: no plan orders an evacuation (operators open shelters).
        log.warning("shelter.no_plan_service", incident_id=data.incident_id)
        return False
    except Exception as exc:
        raise Transient(f"no response plan from dispatch: {exc!r}") from exc
    if "error" in answer:  # no plan for this category: nothing orders an evacuation
        return False
    # The answer is dispatch's plan view: PlanPublished's fields and more of its own. Read only
    # the level's ``evacuate``; a plan without the level is dispatch's to fix, so retry later.
    name = Level(data.level).name
    levels = answer.get("levels")
    level = levels.get(name) if isinstance(levels, dict) else None
    if not isinstance(level, dict) or not isinstance(level.get("evacuate"), bool):
        raise Transient(f"dispatch's {data.category} plan says nothing of evacuation at level {name}")
    return level["evacuate"]


def incidents_handler(ctx: Context, bus: Bus) -> Any:
    """A batch of incident events, one after the other (each its own transaction)."""
    consumer = INCIDENT_CONSUMER.durable

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                env, data = incident_event(msg)
            except Poison as exc:
                rejected[i] = exc.reason
                continue
            try:
                for n, handler in enumerate(EVENTS[msg.subject]):
                    inbox = consumer if n == 0 else f"{consumer}:{handler.__name__}"
                    if isinstance(data, StageChanged):
                        evacuate = (
                            ctx.settings.automatic and Stage(data.to_stage) in EVACUATING and await evacuates(bus, data)
                        )
                        await handler(ctx, env, data, inbox, evacuate)
                    else:
                        await handler(ctx, env, data, inbox)
            except AppError as exc:
                rejected[i] = f"{exc.title}: {exc.detail}"
        return rejected

    return handle_batch
