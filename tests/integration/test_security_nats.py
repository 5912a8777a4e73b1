"""NATS identities (ecs.identities) on a real nats-server: each service publishes only on its own
subjects, each gateway only its own alarms, nobody without credentials; and a fact whose source
is not its subject's owner is refused by the consumer."""

from __future__ import annotations

import asyncio

import nats
import pytest

from ecs import identities, streams
from ecs.bus import Bus, decode_envelope
from ecs.envelope import make_event
from ecs.errors import Poison
from ecs.testing import NatsServer, eventually, identity_password


async def _connect(url: str) -> tuple[nats.NATS, list[str]]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=5)
    return nc, errors


async def _count(admin: Bus, stream: str) -> int:
    return (await admin.js.stream_info(stream)).state.messages


@pytest.fixture
async def admin(nats_private: NatsServer):
    bus = Bus(nats_private.url, "test-admin")
    await bus.connect()
    await bus.declare([streams.ALARMS, streams.INCIDENTS, streams.DISPATCH])
    yield bus
    await bus.close()


async def test_a_forged_dispatch_fact_is_refused_by_the_broker(nats_private: NatsServer, admin: Bus):
    forged = make_event("dispatch.incident.settled", {"incident_id": "i-1"}, source="dispatch")
    nc, errors = await _connect(nats_private.url_as("incident-intake"))
    try:
        await nc.publish(forged.type, forged.to_bytes())
        await nc.flush()

        async def refused():
            return any("permissions violation" in e.lower() for e in errors)

        await eventually(refused, "the broker's permissions violation")
        # incident-intake publishes its own events.
        ack = await nc.jetstream().publish(
            "incident.created", make_event("incident.created", {}, source="x").to_bytes()
        )
        assert ack.stream == "INCIDENTS"
    finally:
        await nc.close()
    assert await _count(admin, "DISPATCH") == 0


async def test_a_gateway_posts_only_its_own_alarms(nats_private: NatsServer, admin: Bus):
    nc, errors = await _connect(nats_private.url_as("gateway-gw-test"))
    try:
        await nc.publish("alarm.in.gw-other", b"{}")
        await nc.publish("incident.created", b"{}")
        await nc.flush()

        async def refused():
            return sum("permissions violation" in e.lower() for e in errors) == 2

        await eventually(refused, "two permissions violations")
        ack = await nc.jetstream().publish("alarm.in.gw-test", b"{}")
        assert ack.stream == "ALARMS"
    finally:
        await nc.close()
    assert await _count(admin, "ALARMS") == 1
    assert await _count(admin, "INCIDENTS") == 0


async def test_no_credentials_no_connection(nats_private: NatsServer):
    with pytest.raises(Exception, match="(?i)authorization"):
        await asyncio.wait_for(nats.connect(nats_private.bare_url, allow_reconnect=False, connect_timeout=5), 10)


async def test_a_service_cannot_delete_or_purge_another_services_stream(nats_private: NatsServer, admin: Bus):
    bus = Bus(nats_private.bare_url, "dispatch", user="dispatch", password=identity_password("dispatch"))
    await bus.connect()
    try:
        with pytest.raises(Exception):  # noqa: B017 - the client reports the refusal as a timeout
            await asyncio.wait_for(bus.js.delete_stream("INCIDENTS"), 5)
    finally:
        await bus.close()
    assert (await admin.js.stream_info("INCIDENTS")).config.name == "INCIDENTS"


class _Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data = subject, data


def test_a_fact_whose_source_is_not_the_owner_of_its_subject_is_poison():
    forged = make_event("dispatch.incident.settled", {"incident_id": "i-1"}, source="incident-intake")
    with pytest.raises(Poison, match="must come from dispatch"):
        decode_envelope(_Msg(forged.type, forged.to_bytes()))  # type: ignore[arg-type]
    real = make_event("dispatch.incident.settled", {"incident_id": "i-1"}, source="dispatch")
    assert decode_envelope(_Msg(real.type, real.to_bytes())).source == "dispatch"  # type: ignore[arg-type]
    # Subjects nobody owns carry no such check.
    assert decode_envelope(_Msg("thing.happened", make_event("thing.happened", {}, source="t").to_bytes()))  # type: ignore[arg-type]


def test_every_participant_and_domain_has_an_identity():
    for domain, owner in identities.OWNERS.items():
        assert f"{domain}.>" in identities.SERVICES[owner].publish
    for stream in (streams.INCIDENTS, streams.DISPATCH, streams.STOCKPILE, streams.SHELTER, streams.NOTIFICATION):
        (subject,) = stream.subjects
        assert identities.owner_of(subject.replace(">", "x")) is not None


async def test_the_observer_sees_every_domain_and_can_publish_nothing(nats_private: NatsServer, admin: Bus):
    nc, errors = await _connect(nats_private.observer_url)
    seen: list[str] = []

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        seen.append(msg.subject)

    try:
        for domain in identities.OWNERS:
            await nc.subscribe(f"{domain}.>", cb=collect)
        await nc.flush()
        for subject in (
            "incident.created",
            "dispatch.unit.assigned",
            "alarm.in.gw-test",
            "deadletter.x",
            "$JS.API.INFO",
        ):
            await nc.publish(subject, b"{}")
        await nc.flush()

        async def refused():
            return sum("permissions violation" in e.lower() for e in errors) == 5

        await eventually(refused, "five permissions violations")
        await admin.publish_event(make_event("incident.created", {}, source="incident-intake"))

        async def delivered():
            return seen == ["incident.created"]

        await eventually(delivered, "the observer to see the event")
    finally:
        await nc.close()
    assert await _count(admin, "INCIDENTS") == 1  # its own publish never reached the stream
    assert await _count(admin, "ALARMS") == 0
