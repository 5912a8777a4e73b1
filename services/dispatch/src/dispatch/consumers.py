"""NATS in: incident-intake's events (the automation) and the vehicle location feed; and the
plan request/reply. Each message goes to a handler; the runner acks only after it committed."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import orjson
from nats.aio.msg import Msg
from pydantic import BaseModel, ValidationError

from ecs import streams
from ecs.bus import ConsumerSpec, decode_envelope
from ecs.contracts import CATEGORIES, IncidentCreated, IncidentMerged, LevelChanged, StageChanged, VehicleLocation
from ecs.envelope import Envelope
from ecs.errors import AppError, Poison, Transient
from ecs.feed import FeedSpec
from ecs.web import field_path

from .handlers import Dispatcher
from .plans import PlanBook

INCIDENT_EVENTS: dict[str, type[BaseModel]] = {
    "incident.created": IncidentCreated,
    "incident.stage.changed": StageChanged,
    "incident.level.changed": LevelChanged,
    "incident.merged": IncidentMerged,
}
# Each event is one short transaction and a batch is small, so a batch a killed replica held
# comes back after seconds, not minutes; a redelivery of finished work is a no-op (inbox).
INCIDENT_CONSUMER = ConsumerSpec("INCIDENTS", "dispatch-incidents", tuple(INCIDENT_EVENTS), ack_wait_s=10)
# Thousands of position reports a second: pushed and batched (ecs.feed), not fetched one by one.
LOCATION_FEED = FeedSpec("VEHICLES", "dispatch-locations", "vehicle.location.*", ack_wait_s=30)
LOCATION_PREFIX = "vehicle.location."
# Requests live outside every stream: a subject a stream captures would be answered by JetStream.
PLAN_REQUEST = "rpc.dispatch.plan.get"

STREAMS = (streams.INCIDENTS, streams.DISPATCH, streams.VEHICLES)
CONSUMERS = (INCIDENT_CONSUMER,)


def incidents_handler(dispatcher: Dispatcher, concurrency: int) -> Any:
    """Events of different incidents are worked on side by side; one incident's in order."""
    consumer = INCIDENT_CONSUMER.durable

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        lanes: dict[str, list[tuple[int, Envelope, BaseModel]]] = defaultdict(list)
        for i, msg in enumerate(msgs):
            try:
                env, data = _incident_event(msg)
            except Poison as exc:
                rejected[i] = exc.reason
                continue
            lanes[env.incident_id or ""].append((i, env, data))

        gate = asyncio.Semaphore(concurrency)
        failures: list[BaseException] = []

        async def lane(items: list[tuple[int, Envelope, BaseModel]]) -> None:
            async with gate:
                for i, env, data in items:
                    try:
                        await dispatcher.on_incident_event(env, data, consumer)
                    except AppError as exc:  # e.g. an incident of a category without a plan
                        rejected[i] = f"{exc.title}: {exc.detail}"
                    except Exception as exc:
                        failures.append(exc)
                        return  # the rest of this incident's events wait for the redelivery

        await asyncio.gather(*(lane(items) for items in lanes.values()))
        if failures:
            transient = [f for f in failures if isinstance(f, Transient)]
            raise transient[0] if transient else failures[0]
        return rejected

    return handle


def _incident_event(msg: Msg) -> tuple[Envelope, BaseModel]:
    env = decode_envelope(msg)
    model = INCIDENT_EVENTS.get(msg.subject)
    if model is None:
        raise Poison(f"no handler for subject {msg.subject}")
    try:
        data = model.model_validate(env.data)
    except ValidationError as exc:
        reasons = "; ".join(f"data.{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise Poison(f"invalid {msg.subject}: {reasons}") from None
    incident_id = getattr(data, "incident_id", None)
    if env.incident_id and incident_id != env.incident_id:
        raise Poison(f"the envelope names incident {env.incident_id}, the data {incident_id}")
    env.incident_id = incident_id
    return env, data


def locations_handler(dispatcher: Dispatcher) -> Any:
    async def handle(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        reports: list[tuple[str, float, float, Any]] = []
        where: dict[str, list[int]] = defaultdict(list)
        for i, msg in enumerate(msgs):
            try:
                report = _position(msg)
            except Poison as exc:
                rejected[i] = exc.reason
                continue
            reports.append(report)
            where[report[0]].append(i)
        if reports:
            unknown = await dispatcher.absorb_positions(reports)  # Transient: the batch is retried
            for unit_id in unknown:
                for i in where[unit_id]:
                    rejected[i] = f"unknown unit {unit_id!r}"
        return rejected

    return handle


def _position(msg: Msg) -> tuple[str, float, float, Any]:
    unit_id = msg.subject.removeprefix(LOCATION_PREFIX)
    if not unit_id or "." in unit_id:
        raise Poison(f"subject {msg.subject} does not name one unit")
    if len(msg.data) > 4096:
        raise Poison(f"position report is {len(msg.data)} bytes; at most 4096 are accepted")
    try:
        report = VehicleLocation.model_validate_json(msg.data)
    except ValidationError as exc:
        reasons = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise Poison(f"invalid position report: {reasons}") from None
    return unit_id, report.lat, report.lon, report.at


def plan_responder(plans: PlanBook) -> Any:
    """``rpc.dispatch.plan.get`` with ``{"category": "fire"}`` (optionally ``"version": n``)."""

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        category = request.get("category")
        if category not in CATEGORIES:
            return {"error": f"unknown category {category!r}; one of {', '.join(CATEGORIES)}"}
        version = request.get("version")
        if version is not None and not isinstance(version, int):
            return {"error": "version must be an integer"}
        try:
            return orjson.loads(orjson.dumps(await plans.document(category, version)))
        except AppError as exc:
            return {"error": exc.detail}

    return answer
