"""NATS in: incident-intake's events (the automation), each to its handlers (handlers.EVENTS); the
runner acks only after they committed. And the response plans' supplies, asked of dispatch."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from ecs import streams
from ecs.bus import Bus, decode_envelope
from ecs.contracts import CategoryChanged, IncidentCreated, IncidentMerged, LevelChanged, PlanLevel, StageChanged
from ecs.envelope import Envelope, parse_payload
from ecs.errors import AppError, Poison, Transient

from .context import Context
from .handlers import EVENTS

INCIDENT_EVENTS: dict[str, type[BaseModel]] = {
    "incident.created": IncidentCreated,
    "incident.stage.changed": StageChanged,
    "incident.level.changed": LevelChanged,
    "incident.category.changed": CategoryChanged,
    "incident.merged": IncidentMerged,
}
"""The payload model of each incident event resource-stockpile handles."""
INCIDENT_CONSUMER = streams.STOCKPILE_INCIDENTS.pull(tuple(INCIDENT_EVENTS), ack_wait_s=10)
PLAN_REQUEST = "rpc.dispatch.plan.get"
PLAN_CACHE_S = 60.0
"""A plan's supplies are asked again after this long, so a newly published version is followed."""

STREAMS = streams.USES["resource-stockpile"].streams
CONSUMERS = (INCIDENT_CONSUMER,)


def incidents_handler(ctx: Context) -> Any:
    """Each event in its own transaction, in order (a batch is small)."""
    consumer = INCIDENT_CONSUMER.durable

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                env, data = _incident_event(msg)
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


def _incident_event(msg: Msg) -> tuple[Envelope, BaseModel]:
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


def plan_source(bus: Bus, timeout_s: float) -> Callable[[str], Awaitable[dict[str, dict[str, int]]]]:
    """``await source("fire")``: the active plan's supplies by level name, {item: quantity}, asked
    of dispatch (``rpc.dispatch.plan.get``) and kept PLAN_CACHE_S seconds. Raises Transient when
    dispatch does not answer (the incident event is retried later)."""
    cache: dict[str, tuple[float, dict[str, dict[str, int]]]] = {}

    async def supplies(category: str) -> dict[str, dict[str, int]]:
        hit = cache.get(category)
        if hit is not None and time.monotonic() - hit[0] < PLAN_CACHE_S:
            return hit[1]
        try:
            answer = await bus.request(PLAN_REQUEST, {"category": category}, timeout_s)
        except Exception as exc:
            raise Transient(f"no answer from dispatch on {PLAN_REQUEST}: {exc!r}") from exc
        found: dict[str, dict[str, int]] = {}
        if "error" not in answer:  # a category without a plan wants no supplies
            try:  # the answer is the plan as dispatch stores it; only its levels' supplies matter here
                levels = {str(name): PlanLevel.model_validate(part) for name, part in answer["levels"].items()}
            except (KeyError, AttributeError, ValidationError) as exc:
                raise Transient(f"dispatch's plan for {category} has no readable levels: {exc!r}"[:300]) from exc
            found = {name: {s.item: s.quantity for s in part.supplies} for name, part in levels.items()}
        cache[category] = (time.monotonic(), found)
        return found

    return supplies
