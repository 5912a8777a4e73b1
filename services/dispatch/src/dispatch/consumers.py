"""NATS in: incident-intake's events (the automation) and the vehicle location feed; and the
plan request/reply. Each message goes to its handlers (handlers.EVENTS, handlers.COMMANDS); the
runner acks only after they committed."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import orjson
from nats.aio.msg import Msg
from prometheus_client import Histogram
from pydantic import BaseModel

from ecs import streams
from ecs.bus import decode_envelope
from ecs.contracts import (
    CATEGORIES,
    CategoryChanged,
    IncidentCreated,
    IncidentMerged,
    IncidentSplit,
    LevelChanged,
    StageChanged,
    VehicleLocation,
)
from ecs.envelope import Envelope, parse_payload, utcnow
from ecs.errors import AppError, Poison, Transient

from . import commands, views
from .context import Context
from .domain import Position, fix_ahead_of_clock
from .handlers import EVENTS, handle

INCIDENT_EVENTS: dict[str, type[BaseModel]] = {
    "incident.created": IncidentCreated,
    "incident.stage.changed": StageChanged,
    "incident.level.changed": LevelChanged,
    "incident.category.changed": CategoryChanged,
    "incident.merged": IncidentMerged,
    "incident.split": IncidentSplit,
}
"""The payload model of each incident event dispatch handles (its handlers: handlers.EVENTS)."""
# Each event is one short transaction and a batch is small, so a batch a killed replica held
# comes back after seconds, not minutes; a redelivery of finished work is a no-op (inbox).
INCIDENT_CONSUMER = streams.DISPATCH_INCIDENTS.pull(tuple(INCIDENT_EVENTS), ack_wait_s=10)
# Thousands of position reports a second: pushed and batched (ecs.feed), not fetched one by one.
LOCATION_FEED = streams.DISPATCH_LOCATIONS.feed("vehicle.location.*", ack_wait_s=30)
LOCATION_PREFIX = "vehicle.location."
MAX_POSITION_BYTES = 4096
# Requests live outside every stream: a subject a stream captures would be answered by JetStream.
PLAN_REQUEST = "rpc.dispatch.plan.get"

STREAMS = streams.USES["dispatch"].streams
CONSUMERS = (INCIDENT_CONSUMER,)

AUTOMATION_SECONDS = Histogram(
    "dispatch_automation_seconds",
    "One incident event, from the lock to the commit",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5),
)

_Item = tuple[int, str, Envelope, BaseModel]  # index in the batch, subject, envelope, payload


def incidents_handler(ctx: Context, concurrency: int) -> Any:
    """Events of different incidents are worked on side by side; one incident's in order."""
    consumer = INCIDENT_CONSUMER.durable

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        lanes: dict[str, list[_Item]] = defaultdict(list)
        for i, msg in enumerate(msgs):
            try:
                env, data = _incident_event(msg)
            except Poison as exc:
                rejected[i] = exc.reason
                continue
            lanes[env.incident_id or ""].append((i, msg.subject, env, data))

        gate = asyncio.Semaphore(concurrency)
        failures: list[BaseException] = []

        async def lane(items: list[_Item]) -> None:
            async with gate:
                for i, subject, env, data in items:
                    started = time.perf_counter()
                    try:
                        for n, handler in enumerate(EVENTS[subject]):
                            # The first handler keeps the consumer's inbox name; any other, its own.
                            inbox = consumer if n == 0 else f"{consumer}:{handler.__name__}"
                            await handler(ctx, env, data, inbox)
                    except AppError as exc:  # e.g. an incident of a category without a plan
                        rejected[i] = f"{exc.title}: {exc.detail}"
                        continue
                    except Exception as exc:
                        failures.append(exc)
                        return  # the rest of this incident's events wait for the redelivery
                    AUTOMATION_SECONDS.observe(time.perf_counter() - started)

        await asyncio.gather(*(lane(items) for items in lanes.values()))
        if failures:
            transient = [f for f in failures if isinstance(f, Transient)]
            raise transient[0] if transient else failures[0]
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


def locations_handler(ctx: Context) -> Any:
    """A batch of position reports written at once; a report of an unknown unit is refused."""

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        reports: list[Position] = []
        where: dict[str, list[int]] = defaultdict(list)
        for i, msg in enumerate(msgs):
            try:
                report = _position(msg, ctx.settings.max_clock_skew_s)
            except Poison as exc:
                rejected[i] = exc.reason
                continue
            reports.append(report)
            where[report[0]].append(i)
        if reports:
            unknown = await handle(ctx, commands.RecordPositions(reports))  # Transient: the batch is retried
            for unit_id in unknown:
                for i in where[unit_id]:
                    rejected[i] = f"unknown unit {unit_id!r}"
        return rejected

    return handle_batch


def _position(msg: Msg, max_ahead_s: float) -> Position:
    """The report on ``msg``. Raises Poison with the reason: a subject that names no one unit, an
    oversized or malformed report, or a fix more than ``max_ahead_s`` ahead of the clock."""
    unit_id = msg.subject.removeprefix(LOCATION_PREFIX)
    if not unit_id or "." in unit_id:
        raise Poison(f"subject {msg.subject} does not name one unit")
    if len(msg.data) > MAX_POSITION_BYTES:
        raise Poison(f"position report is {len(msg.data)} bytes; at most {MAX_POSITION_BYTES} are accepted")
    report = parse_payload(VehicleLocation, msg.data, "position report", prefix="")
    ahead = fix_ahead_of_clock(report.at, utcnow(), max_ahead_s)
    if ahead is not None:
        raise Poison(f"at: {ahead}")
    return unit_id, report.lat, report.lon, report.at


def plan_responder(ctx: Context) -> Any:
    """``rpc.dispatch.plan.get`` with ``{"category": "fire"}`` (optionally ``"version": n``)."""

    async def answer(request: dict[str, Any]) -> dict[str, Any]:
        category = request.get("category")
        if category not in CATEGORIES:
            return {"error": f"unknown category {category!r}; one of {', '.join(CATEGORIES)}"}
        version = request.get("version")
        if version is not None and not isinstance(version, int):
            return {"error": "version must be an integer"}
        try:
            plan = await views.plan(ctx.db, category, version)
        except AppError as exc:
            return {"error": exc.detail}
        return orjson.loads(orjson.dumps(plan.model_dump()))

    return answer
