"""NATS identities (ecs.identities) on a real nats-server: each service publishes only on its own
subjects, each gateway only its own alarms, nobody without credentials; and a fact whose source
is not its subject's owner is refused by the consumer."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import subprocess
from pathlib import Path

import nats
import pytest

from ecs import identities, streams
from ecs.bus import Bus, decode_envelope
from ecs.envelope import make_event
from ecs.errors import Poison
from ecs.testing import NatsServer, eventually, identity_password


async def _connect(url: str, inbox_of: str | None = None) -> tuple[nats.NATS, list[str]]:
    """A connection and the errors the server sends it; ``inbox_of``: with that identity's
    inboxes (ecs.identities.inbox_prefix), as ecs.bus.Bus connects."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    inbox = {"inbox_prefix": identities.inbox_prefix(inbox_of)} if inbox_of else {}
    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=5, **inbox)
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
    nc, errors = await _connect(nats_private.url_as("incident-intake"), inbox_of="incident-intake")
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


# --- each service's JetStream permissions are exactly what it declares (ecs.streams.USES) ---

SERVICE_CONSUMERS = {
    "incident-intake": "incident_intake.consumers",
    "dispatch": "dispatch.consumers",
    "resource-stockpile": "resource_stockpile.consumers",
    "shelter-registry": "shelter_registry.consumers",
    "public-notification": "public_notification.consumers",
}


def _service_bus(server: NatsServer, service: str) -> Bus:
    return Bus(server.bare_url, service, user=service, password=identity_password(service))


async def _refused(errors: list[str], what: str, attempt) -> None:  # type: ignore[no-untyped-def]
    """``attempt()`` is refused by the broker: a permissions violation naming ``what`` arrives (the
    client's own call then times out or fails; either is fine)."""
    before = len(errors)
    with contextlib.suppress(Exception):  # the refusal itself is checked below
        await asyncio.wait_for(attempt(), 2)

    async def violation():
        return any("permissions violation" in e.lower() and what.lower() in e.lower() for e in errors[before:])

    await eventually(violation, f"the broker's permissions violation for {what} (got {errors[before:]})", within_s=5)


def test_every_service_declares_exactly_the_streams_and_consumers_its_identity_allows():
    import importlib

    for service, module in SERVICE_CONSUMERS.items():
        consumers = importlib.import_module(module)
        uses = streams.USES[service]
        assert set(consumers.STREAMS) == set(uses.streams), service
        declared = {(c.stream, c.durable) for c in consumers.CONSUMERS}
        feeds = {(f.stream, f.durable) for f in vars(consumers).values() if type(f).__name__ == "FeedSpec"}
        assert declared | feeds == {(c.stream.name, c.name) for c in uses.consumers}, service
        assert feeds == {(c.stream.name, c.name) for c in uses.consumers if c.push}, service


async def test_each_service_declares_its_streams_pulls_acks_and_dead_letters_as_itself(
    nats_private: NatsServer, admin: Bus
):
    """Every service, started in any order, declares its streams and consumers with its own
    identity (the real declarations), pulls what lands on a stream it reads, acks it and
    dead-letters it: each step the broker must allow."""
    import importlib

    buses = []
    try:
        for service, module in SERVICE_CONSUMERS.items():
            consumers = importlib.import_module(module)
            bus = _service_bus(nats_private, service)
            await bus.connect()
            buses.append(bus)
            await bus.declare(consumers.STREAMS, consumers.CONSUMERS)
            await bus.declare(consumers.STREAMS, consumers.CONSUMERS)  # again: a second replica's start
            for spec in consumers.CONSUMERS:
                subject = spec.filter_subjects[0].replace("*", "gw-test")
                source = identities.owner_of(subject) or "gateway"
                event = make_event(subject, {}, source=source)
                await admin.publish_event(event)
                sub = await bus.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
                (msg,) = await sub.fetch(1, timeout=5)
                assert msg.subject == subject
                await bus.dead_letter(msg, "a test", spec.durable)
                await msg.ack_sync(timeout=5)
                info = await admin.js.consumer_info(spec.stream, spec.durable)
                assert info.num_ack_pending == 0 and info.delivered.stream_seq >= 1, (service, spec.durable)
                await sub.unsubscribe()
    finally:
        for bus in buses:
            await bus.close()
    dead = await admin.js.stream_info("DEADLETTER")
    assert dead.state.messages == sum(len(importlib.import_module(m).CONSUMERS) for m in SERVICE_CONSUMERS.values())


async def test_the_location_feed_is_pushed_to_dispatch_and_to_nobody_else(nats_private: NatsServer, admin: Bus):
    from dispatch.consumers import LOCATION_FEED, STREAMS
    from ecs.feed import FeedConsumer

    got: list[str] = []

    async def handle(msgs):  # type: ignore[no-untyped-def]
        got.extend(m.subject for m in msgs)
        return {}

    bus = _service_bus(nats_private, "dispatch")
    await bus.connect()
    spy, errors = await _connect(nats_private.url_as("resource-stockpile"), inbox_of="resource-stockpile")
    try:
        await bus.declare(STREAMS)
        feed = FeedConsumer(bus, LOCATION_FEED, handle)
        await feed.start()
        await admin.publish("vehicle.location.u-1", b"{}")
        await eventually(lambda: asyncio.sleep(0, got), "dispatch to get the position")
        await feed.stop()
        await _refused(errors, LOCATION_FEED.deliver_subject, lambda: _subscribe(spy, LOCATION_FEED.deliver_subject))
        await _refused(errors, "_INBOX_dispatch.>", lambda: _subscribe(spy, "_INBOX_dispatch.>"))
        await _refused(errors, "_INBOX.>", lambda: _subscribe(spy, "_INBOX.>"))
    finally:
        await spy.close()
        await bus.close()
    assert got == ["vehicle.location.u-1"]


async def _subscribe(nc: nats.NATS, subject: str) -> None:
    await nc.subscribe(subject)
    await nc.flush()


async def test_a_service_cannot_touch_the_streams_and_consumers_of_another(nats_private: NatsServer, admin: Bus):
    """dispatch, as itself, may not create a consumer on a stream it does not read, nor one of
    another name on a stream it does read, pull from or delete another's consumer, change another's
    stream, or read the stream's messages directly."""
    from nats.js import api

    from resource_stockpile.consumers import CONSUMERS as STOCKPILE_CONSUMERS
    from resource_stockpile.consumers import STREAMS as STOCKPILE_STREAMS

    await admin.declare([*STOCKPILE_STREAMS, streams.STOCKPILE], STOCKPILE_CONSUMERS)
    await admin.publish_event(make_event("incident.created", {}, source="incident-intake"))
    nc, errors = await _connect(nats_private.url_as("dispatch"), inbox_of="dispatch")
    js = nc.jetstream(timeout=1)
    try:
        spy = api.ConsumerConfig(name="spy", durable_name="spy", ack_policy=api.AckPolicy.EXPLICIT)
        await _refused(errors, "CONSUMER.CREATE.STOCKPILE.spy", lambda: js.add_consumer("STOCKPILE", spy))
        await _refused(errors, "CONSUMER.CREATE.INCIDENTS.spy", lambda: js.add_consumer("INCIDENTS", spy))
        ephemeral = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE)
        await _refused(errors, "CONSUMER.CREATE.INCIDENTS", lambda: js.add_consumer("INCIDENTS", ephemeral))
        theirs = "stockpile-incidents"
        await _refused(errors, f"CONSUMER.DELETE.INCIDENTS.{theirs}", lambda: js.delete_consumer("INCIDENTS", theirs))
        await _refused(errors, f"CONSUMER.MSG.NEXT.INCIDENTS.{theirs}", lambda: _pull(js, "INCIDENTS", theirs))
        changed = api.StreamConfig(name="INCIDENTS", subjects=["incident.>"], max_age=60)
        await _refused(errors, "STREAM.UPDATE.INCIDENTS", lambda: js.update_stream(changed))
        await _refused(errors, "STREAM.MSG.GET.INCIDENTS", lambda: js.get_msg("INCIDENTS", 1))
        await _refused(errors, "STREAM.LIST", lambda: js.streams_info())
        await _refused(errors, "deadletter.stockpile.x", lambda: _publish(nc, "deadletter.stockpile.x"))
    finally:
        await nc.close()
    assert (await admin.js.consumer_info("INCIDENTS", "stockpile-incidents")).num_pending == 1
    assert [c.name for c in await admin.js.consumers_info("INCIDENTS")] == ["stockpile-incidents"]
    assert (await admin.js.stream_info("INCIDENTS")).config.max_age == streams.INCIDENTS.max_age_s


async def _pull(js, stream: str, durable: str) -> None:  # type: ignore[no-untyped-def]
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    await sub.fetch(1, timeout=1)


async def _publish(nc: nats.NATS, subject: str) -> None:
    await nc.publish(subject, b"{}")
    await nc.flush()


def _compose_broker(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, dict[str, str]]:
    """deploy/compose/nats.conf on the pinned nats-server with the environment compose-env writes
    (compose strips the single quotes): the server, its port and compose-env's values."""
    from ecs.testing import free_port, nats_binary, wait_for_port

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        identities.main(["compose-env"])
    values = {k: v.strip("'") for k, v in (line.split("=", 1) for line in out.getvalue().splitlines())}
    conf = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "nats.conf"
    assert not any(values[k] in conf.read_text() for k in values)
    port = free_port()
    env = {**os.environ, **{k: v for k, v in values.items() if k.startswith("NATS_BCRYPT_")}}
    with open(tmp_path / "nats.log", "wb") as sink:
        proc = subprocess.Popen(
            [nats_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port)], env=env, stdout=sink, stderr=sink
        )
    wait_for_port(port)
    return proc, port, values


async def test_the_compose_broker_admits_each_identity_by_the_hash_compose_env_made(tmp_path):
    """Each identity connects with its clear password, a wrong password is refused, and the
    configuration holds neither password nor hash."""
    proc, port, values = _compose_broker(tmp_path)
    url = f"nats://127.0.0.1:{port}"
    try:
        for user in ("dispatch", "observer", "gateway-demo-gw", "admin"):
            password = values[identities.password_variable(user)]
            nc = await nats.connect(url, user=user, password=password, allow_reconnect=False)
            await nc.close()
        with pytest.raises(Exception, match="(?i)authorization"):
            await nats.connect(url, user="dispatch", password=values["NATS_PASSWORD_ADMIN"], allow_reconnect=False)
    finally:
        proc.terminate()
        proc.wait(10)
