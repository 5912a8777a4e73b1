"""NATS in: incident-intake's lifecycle events (the automation). Each message goes to its handlers
(handlers.EVENTS); the runner acks only after they committed. On a stage that may evacuate, and on
a level change while the incident is in one, the response plan (``rpc.dispatch.plan.get``) says
how far the incident's level evacuates (``evacuate`` and ``evacuation_radius_m``)."""

from __future__ import annotations

from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from pydantic import BaseModel

from ecs import streams
from ecs.bus import Bus, decode_envelope
from ecs.contracts import CategoryChanged, IncidentMerged, LevelChanged, StageChanged
from ecs.envelope import Envelope, parse_payload
from ecs.errors import AppError, Poison, Transient
from ecs.vocabulary import Level, Stage, scene_of

from . import views
from .context import Context
from .handlers import EVENTS
from .handlers.automation import EVACUATING

INCIDENT_EVENTS: dict[str, type[BaseModel]] = {
    "incident.stage.changed": StageChanged,
    "incident.level.changed": LevelChanged,
    "incident.category.changed": CategoryChanged,
    "incident.merged": IncidentMerged,
}
"""The payload model of each incident event shelter-registry handles (its handlers: handlers.EVENTS)."""
INCIDENT_CONSUMER = streams.SHELTER_INCIDENTS.pull(tuple(INCIDENT_EVENTS), ack_wait_s=10)
PLAN_REQUEST = "rpc.dispatch.plan.get"

log = structlog.get_logger("shelter.consumers")

STREAMS = streams.USES["shelter-registry"].streams
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


async def evacuation_radius(bus: Bus, incident_id: str, category: str, level: Level) -> int:
    """The response plan's evacuation radius in metres for the category at ``level``: 0 when it
    does not evacuate (or no dispatch serves plans, or no plan exists for the category). Raises
    Transient when dispatch does not answer in time (the event is retried later)."""
    try:
        answer = await bus.request(PLAN_REQUEST, {"category": category})
    except NoRespondersError:
        # No dispatch in this deployment: no plan orders an evacuation (operators open shelters).
        log.warning("shelter.no_plan_service", incident_id=incident_id)
        return 0
    except Exception as exc:
        raise Transient(f"no response plan from dispatch: {exc!r}") from exc
    if "error" in answer:  # no plan for this category: nothing orders an evacuation
        return 0
    # The answer is dispatch's plan view: PlanPublished's fields and more of its own. Read only
    # the level's ``evacuate`` and radius; a plan without them is dispatch's to fix, so retry later.
    name = Level(level).name
    levels = answer.get("levels")
    part = levels.get(name) if isinstance(levels, dict) else None
    if not isinstance(part, dict) or not isinstance(part.get("evacuate"), bool):
        raise Transient(f"dispatch's {category} plan says nothing of evacuation at level {name}")
    if not part["evacuate"]:
        return 0
    radius = part.get("evacuation_radius_m")
    if not isinstance(radius, int) or isinstance(radius, bool) or radius <= 0:
        raise Transient(f"dispatch's {category} plan evacuates at level {name} without a radius")
    return radius


async def radius_for(ctx: Context, bus: Bus, data: BaseModel) -> int | None:
    """What the handler needs of the plan for this event: the evacuation radius at the level the
    event carries, or None when nothing can evacuate now (automation off, a stage that does not
    evacuate, a level change of an incident not known or not evacuating)."""
    if not ctx.settings.automatic:
        return None
    if isinstance(data, StageChanged):
        if Stage(data.to_stage) not in EVACUATING:
            return None
        return await evacuation_radius(bus, data.incident_id, str(data.category), Level(data.level))
    if isinstance(data, LevelChanged):
        known = await views.incident_plan_facts(ctx.db, data.incident_id)
        if known is None or known.category is None or Stage(known.stage) not in EVACUATING:
            return None
        return await evacuation_radius(bus, data.incident_id, known.category, Level(data.to_level))
    if isinstance(data, CategoryChanged):
        known = await views.incident_plan_facts(ctx.db, data.incident_id)
        if known is None or Stage(known.stage) not in EVACUATING:
            return None
        level = Level(known.level) if known.level is not None else Level(data.level)
        return await evacuation_radius(
            bus, data.incident_id, scene_of(known.category or data.to_category, data.to_category), level
        )
    return None


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
                radius_m = await radius_for(ctx, bus, data)
                for n, handler in enumerate(EVENTS[msg.subject]):
                    inbox = consumer if n == 0 else f"{consumer}:{handler.__name__}"
                    await handler(ctx, env, data, inbox, radius_m)
            except AppError as exc:
                rejected[i] = f"{exc.title}: {exc.detail}"
        return rejected

    return handle_batch
