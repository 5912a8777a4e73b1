"""NATS in: gateway alarms on alarm.in.<gateway_id>, and other services' facts about incidents.
Each message goes to a handler; the runner acks only after the handler committed."""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg
from pydantic import ValidationError

from ecs import streams
from ecs.bus import ConsumerSpec, decode_envelope
from ecs.contracts import MAX_ALARM_BYTES, GatewayAlarm, ParticipantSettled, PerimeterSecured, StatementPublished
from ecs.errors import Poison, Transient
from ecs.web import field_path

from .handlers import AlarmIngestor, IncidentCommands, to_incoming

# A batch commits in well under a second; an alarm a crashed replica held is redelivered after 15 s.
ALARM_CONSUMER = ConsumerSpec("ALARMS", "intake-alarms", ("alarm.in.*",), ack_wait_s=15)


def _fact_subjects(prefix: str) -> tuple[str, ...]:
    extra = {
        "dispatch": ("dispatch.incident.perimeter_secured",),
        "notification": ("notification.statement.published",),
    }
    return (f"{prefix}.incident.settled", *extra.get(prefix, ()))


# The facts other services publish about incidents, one durable consumer per participant's stream.
FACT_CONSUMERS = tuple(
    ConsumerSpec(stream.name, f"intake-facts-{prefix}", _fact_subjects(prefix))
    for prefix, stream in streams.PARTICIPANT_STREAMS.items()
)

STREAMS = (streams.ALARMS, streams.INCIDENTS, *streams.PARTICIPANT_STREAMS.values())
CONSUMERS = (ALARM_CONSUMER, *FACT_CONSUMERS)


def alarms_handler(ingestor: AlarmIngestor, gateways: Any, pepper: str) -> Any:
    async def handle(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        valid = []
        for i, msg in enumerate(msgs):
            try:
                valid.append(_incoming(msg, gateways, pepper))
            except Poison as exc:
                rejected[i] = exc.reason
        if valid:
            await ingestor.submit_many(valid)  # raises Transient: the whole batch is retried later
        return rejected

    return handle


def _incoming(msg: Msg, gateways: Any, pepper: str) -> Any:
    gateway_id = msg.subject.rsplit(".", 1)[-1]
    if gateway_id not in gateways:
        raise Poison(f"unknown gateway {gateway_id!r}")
    if len(msg.data) > MAX_ALARM_BYTES:
        raise Poison(f"alarm is {len(msg.data)} bytes; at most {MAX_ALARM_BYTES} are accepted")
    try:
        alarm = GatewayAlarm.model_validate_json(msg.data)
    except ValidationError as exc:
        reasons = "; ".join(f"{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise Poison(f"invalid alarm: {reasons}") from None
    return to_incoming(gateway_id, alarm, "nats", pepper)


def facts_handler(commands: IncidentCommands, consumer: str) -> Any:
    async def handle(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                await _apply(commands, consumer, msg)
            except Poison as exc:
                rejected[i] = exc.reason
            except Transient:
                raise
        return rejected

    return handle


async def _apply(commands: IncidentCommands, consumer: str, msg: Msg) -> None:
    env = decode_envelope(msg)
    if not env.incident_id:
        raise Poison("the envelope names no incident_id")
    try:
        if msg.subject.endswith(".incident.settled"):
            data = ParticipantSettled.model_validate(env.data)
            known = await commands.apply_fact(env, consumer, "settled", data.settled, participant=data.participant)
        elif msg.subject == "dispatch.incident.perimeter_secured":
            secured = PerimeterSecured.model_validate(env.data)
            known = await commands.apply_fact(env, consumer, "perimeter_units_on_scene", secured.on_scene)
        elif msg.subject == "notification.statement.published":
            StatementPublished.model_validate(env.data)
            known = await commands.apply_fact(env, consumer, "statement_published", True)
        else:
            raise Poison(f"no handler for subject {msg.subject}")
    except ValidationError as exc:
        reasons = "; ".join(f"data.{field_path(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise Poison(f"invalid {msg.subject}: {reasons}") from None
    if not known:
        raise Poison(f"unknown incident {env.incident_id}")
