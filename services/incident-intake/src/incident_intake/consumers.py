"""NATS in: gateway alarms on ``alarm.in.<gateway_id>``, and other services' facts about incidents.
Each consumer filters exactly the subjects it has handlers for (``handlers.EVENTS``); the runner
acks only after the handler committed, and dead-letters what can never succeed."""

from __future__ import annotations

import structlog
from nats.aio.msg import Msg
from prometheus_client import Counter

from ecs import streams
from ecs.bus import BatchHandler, decode_envelope
from ecs.contracts import MAX_ALARM_BYTES, GatewayAlarm
from ecs.envelope import parse_payload
from ecs.errors import AppError, Poison

from .commands import ReportAlarms
from .gateways import GatewayRegistry
from .handlers import EVENTS, Context, handle

# A batch commits in well under a second; an alarm a crashed replica held is redelivered after 15 s.
ALARM_CONSUMER = streams.INTAKE_ALARMS.pull(("alarm.in.*",), ack_wait_s=15)

# The facts other services publish about incidents, one durable consumer per participant's
# stream, filtering the subjects there is a handler for.
FACT_CONSUMERS = tuple(
    durable.pull(tuple(subject for subject in EVENTS if subject.startswith(f"{participant}.")))
    for participant, durable in streams.INTAKE_FACTS.items()
)

STREAMS = streams.USES["incident-intake"].streams

MSG_ID_MISMATCHES = Counter(
    "intake_gateway_msg_id_mismatches_total",
    "Gateway alarm messages over NATS (each delivery) whose Nats-Msg-Id is not <gateway_id>:<alarm_id> (DESIGN §7)",
    ["gateway"],
)

log = structlog.get_logger()
CONSUMERS = (ALARM_CONSUMER, *FACT_CONSUMERS)


def alarms_handler(ctx: Context, gateways: GatewayRegistry) -> BatchHandler:
    """Gateway alarms: each checked and parsed (poison on its own), the rest correlated as one
    command; an alarm correlation refuses (a reused alarm_id, input that cannot be taken) goes to
    dead letter with the reason, alone. Transient from correlation fails the whole batch, to be
    redelivered later."""

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        valid: list[tuple[str, GatewayAlarm]] = []
        positions: list[int] = []
        for i, msg in enumerate(msgs):
            try:
                valid.append(_alarm(msg, gateways))
                positions.append(i)
            except Poison as exc:
                rejected[i] = exc.reason
        if valid:
            outcomes = await handle(ReportAlarms(valid, "nats"), ctx)
            for i, outcome in zip(positions, outcomes, strict=True):
                if isinstance(outcome, AppError):
                    field = outcome.extra.get("field")
                    rejected[i] = f"{field}: {outcome.detail}" if field else outcome.detail
        return rejected

    return handle_batch


def _alarm(msg: Msg, gateways: GatewayRegistry) -> tuple[str, GatewayAlarm]:
    gateway_id = msg.subject.rsplit(".", 1)[-1]
    if gateway_id not in gateways:
        raise Poison(f"unknown gateway {gateway_id!r}")
    if len(msg.data) > MAX_ALARM_BYTES:
        raise Poison(f"alarm is {len(msg.data)} bytes; at most {MAX_ALARM_BYTES} are accepted")
    alarm = parse_payload(GatewayAlarm, msg.data, "alarm", prefix="")
    _check_msg_id(msg, gateway_id, alarm.alarm_id)
    return gateway_id, alarm


def _check_msg_id(msg: Msg, gateway_id: str, alarm_id: str) -> None:
    """The contract's ``Nats-Msg-Id: <gateway_id>:<alarm_id>`` is what lets JetStream drop a
    repeat. Another id is no reason to refuse an alarm that arrived (it would be lost), but it is a
    gateway fault to see before it costs one: JetStream drops a different alarm sent under an id
    it saw in its duplicate window. Logged and counted per gateway
    (``intake_gateway_msg_id_mismatches_total``)."""
    expected = f"{gateway_id}:{alarm_id}"
    seen = (msg.headers or {}).get("Nats-Msg-Id")
    if seen != expected:
        MSG_ID_MISMATCHES.labels(gateway_id).inc()
        log.warning("intake.gateway_msg_id_mismatch", gateway=gateway_id, expected=expected, seen=(seen or "")[:200])


def facts_handler(ctx: Context, consumer: str) -> BatchHandler:
    """Facts about incidents, one message at a time, each to its subject's handlers."""

    async def handle_batch(msgs: list[Msg]) -> dict[int, str]:
        rejected: dict[int, str] = {}
        for i, msg in enumerate(msgs):
            try:
                env = decode_envelope(msg)
                if not env.incident_id:
                    raise Poison("the envelope names no incident_id")
                handlers = EVENTS.get(msg.subject)
                if not handlers:  # the consumer's filter keeps these out; a stray one never succeeds
                    raise Poison(f"no handler for subject {msg.subject}")
                for handler in handlers:
                    await handler(env, ctx, consumer)
            except Poison as exc:
                rejected[i] = exc.reason
        return rejected

    return handle_batch
