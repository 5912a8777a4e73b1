"""NATS in: incident-intake's events (the incident copy, the release clocks, settlement) and
dispatch's published response plans (the templates). Each message goes to its handlers
(handlers.EVENTS), one after the other in the order fetched; the runner acks only after they
committed. A message that can never succeed is refused with its reason (dead letter)."""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg
from pydantic import BaseModel

from ecs import streams
from ecs.bus import ConsumerSpec, decode_envelope
from ecs.contracts import CategoryChanged, IncidentCreated, LevelChanged, PlanPublished, StageChanged
from ecs.envelope import Envelope, parse_payload
from ecs.errors import AppError, Poison

from .context import Context
from .handlers import EVENTS

INCIDENT_EVENTS: dict[str, type[BaseModel]] = {
    "incident.created": IncidentCreated,
    "incident.stage.changed": StageChanged,
    "incident.level.changed": LevelChanged,
    "incident.category.changed": CategoryChanged,
}
PLAN_EVENTS: dict[str, type[BaseModel]] = {"dispatch.plan.published": PlanPublished}

INCIDENT_CONSUMER = streams.NOTIFICATION_INCIDENTS.pull(tuple(INCIDENT_EVENTS), ack_wait_s=10)
PLAN_CONSUMER = streams.NOTIFICATION_PLANS.pull(tuple(PLAN_EVENTS), ack_wait_s=30)

STREAMS = streams.USES["public-notification"].streams
CONSUMERS = (INCIDENT_CONSUMER, PLAN_CONSUMER)


def events_handler(ctx: Context, spec: ConsumerSpec, models: dict[str, type[BaseModel]]) -> Any:
    """A batch handler for ``spec``: each message parsed into its model and handled in order."""
    consumer = spec.durable

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                env, data = _event(msg, models)
            except Poison as exc:
                rejected[i] = exc.reason
                continue
            try:
                for n, handler in enumerate(EVENTS[msg.subject]):
                    inbox = consumer if n == 0 else f"{consumer}:{handler.__name__}"
                    await handler(ctx, env, data, inbox)
            except AppError as exc:
                rejected[i] = f"{exc.title}: {exc.detail}"
        return rejected

    return handle_batch


def _event(msg: Msg, models: dict[str, type[BaseModel]]) -> tuple[Envelope, BaseModel]:
    env = decode_envelope(msg)
    model = models.get(msg.subject)
    if model is None:
        raise Poison(f"no handler for subject {msg.subject}")
    data = parse_payload(model, env.data, msg.subject)
    incident_id = getattr(data, "incident_id", None)
    if env.incident_id and incident_id is not None and incident_id != env.incident_id:
        raise Poison(f"the envelope names incident {env.incident_id}, the data {incident_id}")
    return env, data
