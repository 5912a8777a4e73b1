"""ecs.bus at its edges, against a stand-in broker: what each refusal says, the headers and
subjects a dead letter carries, the connection's configuration, how streams and consumers are
declared, and how the consumer runner settles, retries and dead-letters a batch."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
import pytest
from nats.js import api
from prometheus_client import REGISTRY
from pydantic import BaseModel, ValidationError
from structlog.testing import capture_logs

from ecs.bus import (
    DEAD_LETTERS,
    MIN_SERVER_VERSION,
    Bus,
    ConsumerRunner,
    ConsumerSpec,
    StreamSpec,
    _envelope_errors,
    _first_line,
    decode_envelope,
    msg_id_headers,
    servers_of,
)
from ecs.envelope import make_event
from ecs.errors import Poison, Transient
from ecs.identities import inbox_prefix
from ecs.streams import USES


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class FakeMsg:
    """A pulled message: acks, naks and responses are recorded."""

    def __init__(
        self,
        data: bytes = b"{}",
        subject: str = "thing.happened",
        headers: dict[str, str] | None = None,
        delivered: int | None = 1,
        ack_error: Exception | None = None,
    ) -> None:
        self.data, self.subject, self.headers = data, subject, headers
        self._delivered = delivered
        self.acks = 0
        self.naks: list[float] = []
        self.responses: list[bytes] = []
        self.ack_error = ack_error

    @property
    def metadata(self) -> Any:
        if self._delivered is None:
            raise ValueError("not a JetStream message")
        return SimpleNamespace(num_delivered=self._delivered)

    async def ack(self) -> None:
        if self.ack_error is not None:
            raise self.ack_error
        self.acks += 1

    async def nak(self, delay: float | None = None) -> None:
        self.naks.append(delay)

    async def respond(self, data: bytes) -> None:
        self.responses.append(data)


class FakeJetStream:
    """Streams by name; every call recorded."""

    def __init__(self, streams: dict[str, Any] | None = None) -> None:
        self.streams = dict(streams or {})
        self.calls: list[tuple[str, Any]] = []
        self.published: list[tuple[str, bytes, dict[str, str] | None]] = []
        self.add_refusal: nats.js.errors.BadRequestError | None = None
        self.created_meanwhile: set[str] = set()
        self.applied: dict[str, tuple[list[str] | None, str | None]] = {}
        self.futures: list[asyncio.Future[Any]] = []
        self.async_kwargs: list[dict[str, Any]] = []
        self.publish_error: Exception | None = None
        self.outcomes: list[Any] = []  # per publish_async: "ack", "never" or the exception it is refused with

    async def stream_info(self, name: str) -> Any:
        self.calls.append(("stream_info", name))
        if name not in self.streams:
            raise nats.js.errors.NotFoundError()
        return self.streams[name]

    async def add_stream(self, config: api.StreamConfig) -> None:
        self.calls.append(("add_stream", config))
        if self.add_refusal is not None:
            if config.name in self.created_meanwhile:
                self.streams[config.name] = config
            raise self.add_refusal
        self.streams[config.name] = config

    async def update_stream(self, config: api.StreamConfig) -> None:
        self.calls.append(("update_stream", config))

    async def add_consumer(self, stream: str, config: api.ConsumerConfig) -> Any:
        self.calls.append(("add_consumer", (stream, config)))
        subjects, subject = self.applied.get(config.durable_name, (config.filter_subjects, config.filter_subject))
        return SimpleNamespace(config=SimpleNamespace(filter_subjects=subjects, filter_subject=subject))

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.published.append((subject, payload, headers))

    async def publish_async(self, subject: str, payload: bytes, **kwargs: Any) -> asyncio.Future[Any]:
        if self.publish_error is not None and len(self.futures) == 1:
            raise self.publish_error
        self.published.append((subject, payload, kwargs.get("headers")))
        self.async_kwargs.append(kwargs)
        future = asyncio.get_running_loop().create_future()
        outcome = self.outcomes[len(self.futures)] if len(self.futures) < len(self.outcomes) else "ack"
        if outcome == "ack":
            future.set_result(None)
        elif outcome != "never":
            future.set_exception(outcome)
        self.futures.append(future)
        return future


def bus_with(js: FakeJetStream | None = None, service: str = "test-svc", **kw: Any) -> Bus:
    bus = Bus("nats://127.0.0.1:4222", service, **kw)
    bus.js = js or FakeJetStream()
    return bus


# --- envelopes on the wire ------------------------------------------------------------------


def test_a_valid_envelope_is_decoded_from_a_message():
    env = make_event("thing.happened", {"n": 1}, source="test")
    decoded = decode_envelope(FakeMsg(env.to_bytes(), subject="thing.happened"))
    assert decoded == env


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[1", "not a valid envelope: envelope: Invalid JSON: EOF while parsing a list at line 1 column 2"),
        (
            b"{}",
            "not a valid envelope: id: Field required; type: Field required; occurred_at: Field required; "
            "source: Field required",
        ),
    ],
)
def test_an_invalid_envelope_is_poison_naming_what_is_wrong_field_by_field(data, reason):
    with pytest.raises(Poison) as refused:
        decode_envelope(FakeMsg(data))
    assert refused.value.reason == reason


def test_an_envelope_s_errors_name_at_most_five_fields_in_at_most_300_characters():
    bad = {"id": 1, "type": 2, "schema_version": 0, "occurred_at": "x", "source": 3, "exercise": "maybe", "data": 5}
    with pytest.raises(Poison) as refused:
        decode_envelope(FakeMsg(orjson.dumps(bad)))
    assert refused.value.reason.removeprefix("not a valid envelope: ").count("; ") == 4
    assert refused.value.reason.startswith("not a valid envelope: id: Input should be a valid string; type: ")
    valid = orjson.loads(make_event("thing.happened", {}, source="test").to_bytes())
    long = {**valid, **{f"extra_{'x' * 80}_{i}": i for i in range(6)}}
    with pytest.raises(Poison) as refused:
        decode_envelope(FakeMsg(orjson.dumps(long)))
    assert len(refused.value.reason) == len("not a valid envelope: ") + 300


def test_a_nested_field_is_named_by_its_path_and_other_errors_by_their_first_line():
    class Inner(BaseModel):
        n: int

    class Outer(BaseModel):
        inner: Inner

    with pytest.raises(ValidationError) as invalid:
        Outer.model_validate({"inner": {"n": "x"}})
    assert _envelope_errors(invalid.value) == (
        "inner.n: Input should be a valid integer, unable to parse string as an integer"
    )
    assert _envelope_errors(ValueError("first line\nsecond line")) == "first line"


def test_an_event_claiming_another_owner_than_its_subject_s_is_poison():
    forged = make_event("incident.created", {}, source="dispatch")
    with pytest.raises(Poison) as refused:
        decode_envelope(FakeMsg(forged.to_bytes(), subject="incident.created"))
    assert refused.value.reason == "an event on incident.created must come from incident-intake, not 'dispatch'"


def test_an_error_s_first_line_stands_for_it_and_its_type_when_it_says_nothing():
    assert _first_line(RuntimeError("\n  broker gone\nmore detail ")) == "broker gone"
    assert _first_line(RuntimeError("x" * 400)) == "x" * 300
    assert _first_line(TimeoutError()) == "TimeoutError"
    assert _first_line(OSError("  \n ")) == "OSError"


def test_a_trace_id_that_is_not_already_lower_hex_is_hashed():
    headers = msg_id_headers("m-1", "X" * 32)
    trace = headers["traceparent"].split("-")[1]
    assert trace != "X" * 32 and len(trace) == 32 and int(trace, 16) >= 0


# --- the connection ---------------------------------------------------------------------------


def test_the_nats_url_may_name_several_servers_and_must_name_one():
    assert servers_of(" nats://a:4222, nats://b:4222,,") == ["nats://a:4222", "nats://b:4222"]
    assert servers_of("nats://a:4222") == ["nats://a:4222"]
    for empty in ("", " , "):
        with pytest.raises(ValueError, match="^the NATS URL names no server$"):
            servers_of(empty)


class FakeConnection:
    def __init__(self, version: tuple[int, int, int] = (2, 12, 8)) -> None:
        major, minor, patch = version
        self.connected_server_version = SimpleNamespace(major=major, minor=minor, patch=patch)
        self.jetstream_kwargs: dict[str, Any] = {}
        self.is_closed = False
        self.is_connected = True
        self.drained = 0
        self.closed = 0
        self.drain_closes = True
        self.requests: list[tuple[str, bytes, float]] = []
        self.subscriptions: list[tuple[str, str, Any]] = []

    def jetstream(self, **kwargs: Any) -> FakeJetStream:
        self.jetstream_kwargs = kwargs
        return FakeJetStream()

    async def drain(self) -> None:
        self.drained += 1
        self.is_closed = self.drain_closes

    async def close(self) -> None:
        self.closed += 1
        self.is_closed = True

    async def request(self, subject: str, payload: bytes, **options: float) -> Any:
        self.requests.append((subject, payload, options["timeout"]))
        return SimpleNamespace(data=orjson.dumps({"echo": orjson.loads(payload)}))

    async def subscribe(self, subject: str, queue: str, cb: Any) -> None:
        self.subscriptions.append((subject, queue, cb))


@pytest.fixture
def connects(monkeypatch) -> list[tuple[Any, dict[str, Any], FakeConnection]]:
    """nats.connect replaced: each call's servers and options, and the connection it answered."""

    class Calls(list):
        version = {"v": (2, 12, 8)}

    calls = Calls()
    version = calls.version

    async def connect(servers: Any, **options: Any) -> FakeConnection:
        nc = FakeConnection(version["v"])
        calls.append((servers, options, nc))
        return nc

    monkeypatch.setattr(nats, "connect", connect)
    return calls


RECONNECTING = {
    "max_reconnect_attempts": -1,  # a broker restart is waited out, never given up on
    "reconnect_time_wait": 0.5,
    "connect_timeout": 5,
    "allow_reconnect": True,
    "pending_size": 64 * 1024 * 1024,
}


async def test_a_bus_connects_to_every_seed_server_under_the_service_s_name_and_reconnects_for_ever(connects):
    bus = Bus("nats://a:4222, nats://b:4222", "svc")
    assert (bus.connected, bus.server_version) == (False, "")
    await bus.close()  # never connected: nothing to close
    await bus.connect()
    servers, options, nc = connects[0]
    assert servers == ["nats://a:4222", "nats://b:4222"]
    assert {k: v for k, v in options.items() if not k.endswith("_cb")} == {"name": "svc", **RECONNECTING}
    assert nc.jetstream_kwargs == {"timeout": 10, "publish_async_max_pending": 20_000}
    assert bus.connected and bus.server_version == "2.12.8"
    with capture_logs() as logs:
        await options["error_cb"](RuntimeError("slow consumer\ndetail"))
        await options["disconnected_cb"]()
        await options["reconnected_cb"]()
    assert [(e["event"], e["log_level"], e.get("error")) for e in logs] == [
        ("nats.error", "warning", "slow consumer"),
        ("nats.disconnected", "warning", None),
        ("nats.reconnected", "info", None),
    ]


async def test_a_user_in_the_url_gets_its_own_inboxes(connects):
    await Bus("nats://al%40ice:pw@a:4222,nats://b:4222", "svc").connect()
    servers, options, _ = connects[0]
    assert servers == ["nats://al%40ice:pw@a:4222", "nats://b:4222"]
    assert options["inbox_prefix"] == inbox_prefix("al@ice")
    assert "user" not in options and "password" not in options


async def test_the_identity_given_wins_over_the_one_in_the_url(connects):
    await Bus("nats://old:pw@a:4222,nats://b:4222", "svc", user="dispatch", password="s3cret").connect()
    await Bus("nats://a:4222", "svc", user="dispatch").connect()
    (servers, options, _), (_, without_password, _) = connects
    assert servers == ["nats://a:4222", "nats://b:4222"]
    assert (options["user"], options["password"], options["inbox_prefix"]) == (
        "dispatch",
        "s3cret",
        inbox_prefix("dispatch"),
    )
    assert without_password["password"] == ""


async def test_a_server_older_than_the_minimum_is_refused_naming_both_versions(connects):
    connects.version["v"] = MIN_SERVER_VERSION  # type: ignore[attr-defined]
    await Bus("nats://a:4222", "svc").connect()  # the minimum itself will do
    connects.version["v"] = (2, 9, 22)  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError) as refused:
        await Bus("nats://a:4222", "svc").connect()
    assert str(refused.value) == (
        "nats-server 2.9.22 at nats://a:4222 is too old: svc needs 2.10.0 or later (consumers with several "
        "filter subjects); run the release the project pins (make setup)"
    )


async def test_closing_drains_the_connection_and_closes_it_only_if_the_drain_did_not():
    bus = bus_with()
    bus.nc = nc = FakeConnection()
    await bus.close()
    assert (nc.drained, nc.closed) == (1, 0)
    await bus.close()  # already closed: nothing more
    assert (nc.drained, nc.closed) == (1, 0)
    bus.nc = stuck = FakeConnection()
    stuck.drain_closes = False
    await bus.close()
    assert (stuck.drained, stuck.closed) == (1, 1)


# --- streams and consumers --------------------------------------------------------------------

THINGS = StreamSpec("THINGS", ("thing.>",), max_age_s=3600, duplicate_window_s=60, max_bytes=1 << 20)
OTHERS = StreamSpec("OTHERS", ("other.>", "more.>"))


async def test_missing_streams_are_created_as_declared_and_existing_ones_brought_to_it():
    js = FakeJetStream({"OTHERS": object()})
    await bus_with(js, stream_replicas=3).declare([THINGS, OTHERS])
    assert [(name, getattr(arg, "name", arg)) for name, arg in js.calls] == [
        ("stream_info", "DEADLETTER"),
        ("add_stream", "DEADLETTER"),
        ("stream_info", "THINGS"),
        ("add_stream", "THINGS"),
        ("stream_info", "OTHERS"),
        ("update_stream", "OTHERS"),
    ]
    things = js.calls[3][1]
    assert (
        things.subjects,
        things.retention,
        things.storage,
        things.max_age,
        things.max_bytes,
        things.duplicate_window,
        things.num_replicas,
    ) == (["thing.>"], api.RetentionPolicy.LIMITS, api.StorageType.FILE, 3600, 1 << 20, 60, 3)
    dead = js.calls[1][1]
    assert (dead.subjects, dead.max_age, dead.num_replicas) == (["deadletter.>"], DEAD_LETTERS.max_age_s, 3)
    assert js.calls[5][1].subjects == ["other.>", "more.>"]
    single = FakeJetStream()
    await bus_with(single).declare([THINGS])
    assert single.calls[1][1].num_replicas == 1  # one replica unless told


async def test_a_stream_another_replica_created_meanwhile_is_taken_and_any_other_refusal_named():
    js = FakeJetStream()
    js.add_refusal = nats.js.errors.BadRequestError(code=400, description="stream name already in use")
    js.created_meanwhile = {"DEADLETTER", "THINGS"}
    await bus_with(js).declare([THINGS])
    assert [(name, getattr(arg, "name", arg)) for name, arg in js.calls] == [
        ("stream_info", "DEADLETTER"),
        ("add_stream", "DEADLETTER"),
        ("stream_info", "DEADLETTER"),  # there after all: taken as it is
        ("stream_info", "THINGS"),
        ("add_stream", "THINGS"),
        ("stream_info", "THINGS"),
    ]
    js = FakeJetStream()
    js.add_refusal = nats.js.errors.BadRequestError(code=400, description="subjects overlap with an existing stream")
    js.created_meanwhile = {"DEADLETTER"}
    with pytest.raises(RuntimeError) as refused:
        await bus_with(js).declare([THINGS, OTHERS])
    assert str(refused.value) == "cannot create stream THINGS: subjects overlap with an existing stream"


async def test_a_service_brings_only_the_streams_it_owns_to_the_declared_settings():
    uses = USES["dispatch"]
    js = FakeJetStream({s.name: object() for s in (*uses.owns, *uses.reads, DEAD_LETTERS)})
    await bus_with(js, service="dispatch").declare([*uses.owns, *uses.reads])
    assert sorted(c.name for name, c in js.calls if name == "update_stream") == sorted(s.name for s in uses.owns)


async def test_a_consumer_not_declared_for_the_service_is_refused_before_the_broker_would():
    uses = USES["dispatch"]
    declared = uses.consumers[0]
    js = FakeJetStream({s.name: object() for s in (*uses.owns, *uses.reads, DEAD_LETTERS)})
    ok = ConsumerSpec(declared.stream.name, declared.name, ("incident.>",))
    await bus_with(js, service="dispatch").declare([], [ok])
    assert [arg for name, arg in js.calls if name == "add_consumer"][0][0] == declared.stream.name
    stranger = ConsumerSpec("INCIDENTS", "someone-else", ("incident.>",))
    with pytest.raises(RuntimeError) as refused:
        await bus_with(FakeJetStream(), service="dispatch").declare([], [stranger])
    assert str(refused.value) == (
        "consumer someone-else on INCIDENTS is not declared for dispatch in ecs.streams.USES: "
        "its NATS identity may not create it"
    )


def test_a_consumer_filters_one_subject_alone_and_several_as_a_list():
    one = Bus.consumer_config(ConsumerSpec("THINGS", "worker", ("thing.a",), ack_wait_s=12, max_ack_pending=7))
    assert (one.name, one.durable_name, one.ack_policy, one.deliver_policy, one.ack_wait, one.max_ack_pending) == (
        "worker",
        "worker",
        api.AckPolicy.EXPLICIT,
        api.DeliverPolicy.ALL,
        12,
        7,
    )
    assert (one.filter_subject, one.filter_subjects) == ("thing.a", None)
    two = Bus.consumer_config(ConsumerSpec("THINGS", "worker", ("thing.a", "thing.b")))
    assert (two.filter_subject, two.filter_subjects) == (None, ["thing.a", "thing.b"])
    assert (two.ack_wait, two.max_ack_pending) == (30, 20_000)


@pytest.mark.parametrize(
    ("applied", "says"),
    [
        ((None, None), "filters nothing, not ['thing.a', 'thing.b']"),
        ((None, "thing.a"), "filters ['thing.a'], not ['thing.a', 'thing.b']"),
        ((["thing.a"], None), "filters ['thing.a'], not ['thing.a', 'thing.b']"),
    ],
)
async def test_a_consumer_whose_filters_the_server_did_not_take_is_refused(applied, says):
    js = FakeJetStream()
    js.applied["worker"] = applied
    with pytest.raises(RuntimeError) as refused:
        await bus_with(js).declare([], [ConsumerSpec("THINGS", "worker", ("thing.a", "thing.b"))])
    assert str(refused.value) == (f"consumer worker on THINGS {says}: the server does not apply the declared subjects")


async def test_filters_the_server_took_in_another_order_or_as_one_subject_are_accepted():
    js = FakeJetStream()
    js.applied["many"] = (["thing.b", "thing.a"], None)
    js.applied["one"] = (None, "thing.a")
    await bus_with(js).declare(
        [], [ConsumerSpec("THINGS", "many", ("thing.a", "thing.b")), ConsumerSpec("THINGS", "one", ("thing.a",))]
    )
    consumers = [arg for name, arg in js.calls if name == "add_consumer"]
    assert [(stream, config.durable_name) for stream, config in consumers] == [("THINGS", "many"), ("THINGS", "one")]


# --- publishing -------------------------------------------------------------------------------


async def test_an_event_is_published_on_its_type_or_the_subject_given_with_its_headers():
    js = FakeJetStream()
    bus = bus_with(js, service="pub-event")
    env = make_event("thing.happened", {"n": 1}, source="test", correlation_id="c" * 32)
    before = sample("ecs_messages_published_total", service="pub-event")
    await bus.publish_event(env)
    await bus.publish_event(env, subject="thing.elsewhere")
    assert js.published == [
        ("thing.happened", env.to_bytes(), msg_id_headers(env.id, "c" * 32)),
        ("thing.elsewhere", env.to_bytes(), msg_id_headers(env.id, "c" * 32)),
    ]
    assert "traceparent" in js.published[0][2]
    assert sample("ecs_messages_published_total", service="pub-event") == before + 2


async def test_a_batch_is_published_in_order_and_counted_once_every_ack_came():
    js = FakeJetStream()
    bus = bus_with(js, service="pub-batch")
    before = sample("ecs_messages_published_total", service="pub-batch")
    items = [("a.1", b"1", {"Nats-Msg-Id": "1"}), ("a.2", b"2", {"Nats-Msg-Id": "2"})]
    await bus.publish_batch(items, ack_timeout_s=30)
    assert js.published == items
    # No bound per publish (nats-py's starts a task for each): the batch's own bounds the sends.
    assert [kw.get("wait_stall") for kw in js.async_kwargs] == [None, None]
    assert sample("ecs_messages_published_total", service="pub-batch") == before + 2
    await bus.publish_batch([])  # nothing to publish, nothing to wait for
    assert sample("ecs_messages_published_total", service="pub-batch") == before + 2


async def test_a_batch_whose_sends_stall_fails_whole_after_its_timeout_and_gives_up_what_it_sent():
    """A publisher stalled behind too many unacknowledged publishes (nats-py holds the send until
    a place frees) must not hold the relay forever: the batch fails as Transient after the ack
    timeout (ten seconds unless told), and what it sent already is given up."""
    assert inspect.signature(Bus.publish_batch).parameters["ack_timeout_s"].default == 10.0
    js = FakeJetStream()
    never = asyncio.Event()
    send = js.publish_async

    async def stalls_on_the_second(subject: str, payload: bytes, **kwargs: Any) -> asyncio.Future[Any]:
        if js.futures:
            await never.wait()  # no place frees
        return await send(subject, payload, **kwargs)

    js.publish_async = stalls_on_the_second  # type: ignore[method-assign]
    js.outcomes = ["never"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Transient, match=r"^publishing stalled: 1 of 2 sent within 0\.05 s$"):
        await bus_with(js).publish_batch([("a.1", b"1", {}), ("a.2", b"2", {})], 0.05)
    assert loop.time() - started >= 0.05
    assert js.futures[0].cancelled()


async def test_a_batch_with_an_unacknowledged_publish_fails_whole_and_frees_its_place():
    js = FakeJetStream()
    js.outcomes = ["ack", "never"]
    with pytest.raises(Transient, match=r"^1 of 2 publishes not acknowledged within 0\.05 s$"):
        await bus_with(js).publish_batch([("a.1", b"1", {}), ("a.2", b"2", {})], 0.05)
    assert js.futures[1].cancelled()


async def test_a_batch_with_a_refused_publish_fails_naming_the_refusal():
    js = FakeJetStream()
    js.outcomes = ["ack", nats.js.errors.APIError(description="maximum messages exceeded")]
    with pytest.raises(Transient) as failed:
        await bus_with(js).publish_batch([("a.1", b"1", {}), ("a.2", b"2", {})], 30)
    assert str(failed.value).startswith("1 of 2 publishes refused: ")
    assert "maximum messages exceeded" in str(failed.value)


@pytest.mark.parametrize(
    "error",
    [nats.errors.ConnectionClosedError(), OSError("network down\ndetail"), nats.js.errors.TooManyStalledMsgsError()],
)
async def test_a_batch_the_connection_fails_is_transient_and_its_sent_publishes_given_up(error):
    js = FakeJetStream()
    js.publish_error = error
    js.outcomes = ["never"]
    with pytest.raises(Transient) as failed:
        await bus_with(js).publish_batch([("a.1", b"1", {}), ("a.2", b"2", {})], 30)
    assert str(failed.value) == f"publishing failed: {_first_line(error)}"
    assert js.futures[0].cancelled()


async def test_a_dead_letter_keeps_the_message_and_says_why_where_from_and_who_refused_it():
    js = FakeJetStream()
    bus = bus_with(js, service="dl-svc")
    before = sample("ecs_messages_dead_lettered_total", consumer="dl-worker")
    msg = FakeMsg(b"payload", subject="thing.happened", headers={"Nats-Msg-Id": "m-1"})
    with capture_logs() as logs:
        await bus.dead_letter(msg, "r" * 1200, "dl-worker")
        await bus.dead_letter(FakeMsg(b"other", subject="thing.other", headers=None), "bad", "dl-worker")
    first, second = js.published
    assert first == (
        "deadletter.thing.happened",
        b"payload",
        {
            "Ecs-Reason": "r" * 1000,
            "Ecs-Original-Subject": "thing.happened",
            "Ecs-Consumer": "dl-worker",
            "Ecs-Service": "dl-svc",
            "Nats-Msg-Id": "dl:dl-worker:m-1",
        },
    )
    assert second[0] == "deadletter.thing.other" and "Nats-Msg-Id" not in second[2]
    assert sample("ecs_messages_dead_lettered_total", consumer="dl-worker") == before + 2
    assert [(e["event"], e["log_level"], e["subject"], e["reason"], e["consumer"], e["message_id"]) for e in logs] == [
        ("message.dead_lettered", "warning", "thing.happened", "r" * 1200, "dl-worker", "m-1"),
        ("message.dead_lettered", "warning", "thing.other", "bad", "dl-worker", None),
    ]


async def test_a_request_sends_json_and_waits_two_seconds_unless_told():
    bus = bus_with()
    bus.nc = nc = FakeConnection()
    assert await bus.request("q.units", {"n": 1}) == {"echo": {"n": 1}}
    await bus.request("q.units", {"n": 2}, timeout_s=0.5)
    assert nc.requests == [("q.units", b'{"n":1}', 2.0), ("q.units", b'{"n":2}', 0.5)]


async def test_requests_are_served_in_the_service_s_queue_group_and_a_failure_answered_with_its_reason():
    bus = bus_with(service="svc")
    bus.nc = nc = FakeConnection()

    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("fail"):
            raise ValueError("no such unit\ndetail")
        return {"got": body}

    await bus.serve("q.units", handler)
    [(subject, queue, callback)] = nc.subscriptions
    assert (subject, queue) == ("q.units", "svc.q.units")
    ok, failing = FakeMsg(b'{"n":1}'), FakeMsg(b'{"fail":true}')
    await callback(ok)
    await callback(failing)
    assert [orjson.loads(r) for r in ok.responses + failing.responses] == [{"got": {"n": 1}}, {"error": "no such unit"}]


# --- the consumer runner ----------------------------------------------------------------------

SPEC = ConsumerSpec("THINGS", "edge-worker", ("thing.>",))


def runner_with(handle: Any, js: FakeJetStream | None = None, **kw: Any) -> ConsumerRunner:
    return ConsumerRunner(bus_with(js or FakeJetStream(), service="runner-svc"), SPEC, handle, **kw)


def dead_lettered(js: FakeJetStream) -> list[tuple[bytes, str]]:
    return [(payload, headers["Ecs-Reason"]) for _, payload, headers in js.published]


async def test_a_batch_is_acked_whole_and_what_the_handler_refused_dead_lettered_first():
    js = FakeJetStream()
    msgs = [FakeMsg(b"0"), FakeMsg(b"1"), FakeMsg(b"2")]

    async def handle(batch: list[Any]) -> dict[int, str]:
        return {1: "not for us"}

    before = sample("ecs_messages_processed_total", consumer="edge-worker")
    await runner_with(handle, js).process(msgs)
    assert dead_lettered(js) == [(b"1", "not for us")]
    assert [m.acks for m in msgs] == [1, 1, 1]
    assert sample("ecs_messages_processed_total", consumer="edge-worker") == before + 2


async def test_an_ack_that_fails_after_the_commit_is_logged_and_the_batch_still_counts():
    msgs = [FakeMsg(b"0", ack_error=nats.errors.TimeoutError()), FakeMsg(b"1")]

    async def handle(batch: list[Any]) -> dict[int, str]:
        return {}

    with capture_logs() as logs:
        await runner_with(handle).process(msgs)
    assert [(e["event"], e["consumer"], e["error"]) for e in logs] == [
        ("consumer.ack_failed", "edge-worker", _first_line(nats.errors.TimeoutError()))
    ]
    assert msgs[1].acks == 1


@pytest.mark.parametrize(("delivered", "delay"), [(None, 0.25), (1, 0.25), (2, 0.5), (4, 2.0), (8, 30.0), (20, 30.0)])
async def test_a_transient_failure_naks_the_batch_with_a_backoff_from_its_most_delivered_message(delivered, delay):
    msgs = [FakeMsg(b"0", delivered=1), FakeMsg(b"1", delivered=delivered)]

    async def handle(batch: list[Any]) -> dict[int, str]:
        raise Transient("database busy\ndetail")

    before = sample("ecs_messages_retried_total", consumer="edge-worker")
    with capture_logs() as logs:
        await runner_with(handle).process(msgs)
    assert [m.naks for m in msgs] == [[delay], [delay]]
    assert [m.acks for m in msgs] == [0, 0]
    assert sample("ecs_messages_retried_total", consumer="edge-worker") == before + 2
    assert [(e["event"], e["log_level"], e["consumer"], e["size"], e["delay_s"], e["error"]) for e in logs] == [
        ("consumer.retry_later", "warning", "edge-worker", 2, delay, "database busy")
    ]


async def test_a_poison_message_is_found_in_its_batch_and_dead_lettered_alone_with_its_reason():
    js = FakeJetStream()
    msgs = [FakeMsg(b"0"), FakeMsg(b"bad"), FakeMsg(b"2")]
    seen: list[list[bytes]] = []

    async def handle(batch: list[Any]) -> dict[int, str]:
        seen.append([m.data for m in batch])
        if any(m.data == b"bad" for m in batch):
            raise Poison("cannot be read")
        return {}

    await runner_with(handle, js).process(msgs)
    assert seen == [[b"0", b"bad", b"2"], [b"0"], [b"bad"], [b"2"]]
    assert dead_lettered(js) == [(b"bad", "cannot be read")]
    assert [m.acks for m in msgs] == [1, 1, 1]


async def test_an_unexpected_failure_is_isolated_message_by_message_and_retried_until_the_last_delivery():
    js = FakeJetStream()
    msgs = [FakeMsg(b"0", delivered=3), FakeMsg(b"bad", delivered=2), FakeMsg(b"last", delivered=5)]

    async def handle(batch: list[Any]) -> dict[int, str]:
        if len(batch) > 1 or batch[0].data != b"0":
            raise KeyError("boom")
        return {}

    with capture_logs() as logs:
        await runner_with(handle, js, max_deliver=5).process(msgs)
    isolating = [e for e in logs if e["event"] == "consumer.batch_failed_isolating"]
    assert [(e["consumer"], e["size"], e["error"]) for e in isolating] == [("edge-worker", 3, "'boom'")]
    assert [(e["consumer"], e["subject"]) for e in logs if e["event"] == "consumer.message_failed"] == [
        ("edge-worker", "thing.happened")
    ]
    assert (msgs[0].acks, msgs[0].naks) == (1, [])
    assert (msgs[1].acks, msgs[1].naks) == (0, [0.5])  # delivered twice: retried later
    assert dead_lettered(js) == [(b"last", "failed 5 times: 'boom'")]  # the last delivery allowed
    assert js.published[0][2]["Ecs-Consumer"] == "edge-worker"
    assert (msgs[2].acks, msgs[2].naks) == (1, [])


async def test_a_runner_starts_its_fetchers_by_name_and_stops_them():
    class Sub:
        def __init__(self) -> None:
            self.unsubscribed = 0

        async def fetch(self, batch: int, **options: float) -> list[Any]:
            await asyncio.Event().wait()  # nothing comes until the runner stops
            return []

        async def unsubscribe(self) -> None:
            self.unsubscribed += 1

    subs: list[Sub] = []
    both_bound = asyncio.Event()

    class Js(FakeJetStream):
        async def pull_subscribe_bind(self, durable: str, stream: str) -> Sub:
            self.calls.append(("bind", (durable, stream)))
            subs.append(Sub())
            if len(subs) == 2:
                both_bound.set()
            return subs[-1]

    async def handle(batch: list[Any]) -> dict[int, str]:
        return {}

    js = Js()
    runner = runner_with(handle, js, fetchers=2)
    await runner.start()
    assert [t.get_name() for t in runner._tasks] == ["consumer:edge-worker:0", "consumer:edge-worker:1"]
    await both_bound.wait()
    await runner.stop()
    assert [arg for name, arg in js.calls if name == "bind"] == [("edge-worker", "THINGS")] * 2
    assert [s.unsubscribed for s in subs] == [1, 1] and runner._subs == []
    assert all(t.done() for t in runner._tasks)


async def test_a_runner_waits_out_empty_and_failed_fetches_and_logs_a_batch_it_could_not_settle():
    js = FakeJetStream()
    handled: list[list[bytes]] = []
    script: list[Any] = [
        nats.errors.TimeoutError(),
        RuntimeError("consumer deleted\ndetail"),
        [],
        [FakeMsg(b"ok")],
        [FakeMsg(b"refused")],
    ]
    script_done = asyncio.Event()

    class Sub:
        def __init__(self) -> None:
            self.fetches: list[tuple[int, float]] = []

        async def fetch(self, batch: int, **options: float) -> list[Any]:
            self.fetches.append((batch, options["timeout"]))
            if not script:
                script_done.set()
                await asyncio.Event().wait()
            step = script.pop(0)
            if isinstance(step, BaseException):
                raise step
            return step

        async def unsubscribe(self) -> None:
            pass

    subs: list[Sub] = []

    class Js(FakeJetStream):
        async def pull_subscribe_bind(self, durable: str, stream: str) -> Sub:
            subs.append(Sub())
            return subs[-1]

        async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
            raise nats.errors.ConnectionClosedError()

    async def handle(batch: list[Any]) -> dict[int, str]:
        handled.append([m.data for m in batch])
        return {0: "refused"} if batch[0].data == b"refused" else {}

    js = Js()
    runner = runner_with(handle, js, batch=7, fetch_timeout_s=0.25)
    timed = sample("ecs_consumer_batch_seconds_count", consumer="edge-worker")
    with capture_logs() as logs:
        await runner.start()
        await script_done.wait()
        await runner.stop()
    assert len(subs) == 1  # bound once, kept through the failures
    assert subs[0].fetches == [(7, 0.25)] * 6
    assert handled == [[b"ok"], [b"refused"]]
    assert [(e["event"], e["consumer"], e["error"]) for e in logs if e["event"].startswith("consumer.")] == [
        ("consumer.fetch_failed", "edge-worker", "consumer deleted"),
        ("consumer.settle_failed", "edge-worker", _first_line(nats.errors.ConnectionClosedError())),
    ]
    assert sample("ecs_consumer_batch_seconds_count", consumer="edge-worker") == timed + 2  # per consumer


async def test_a_shutdown_step_that_fails_is_logged_by_name_and_the_connection_still_closed():
    class Failing(FakeConnection):
        async def drain(self) -> None:
            self.drained += 1
            raise nats.errors.ConnectionClosedError()

        async def close(self) -> None:
            self.closed += 1
            raise OSError("socket gone")

    bus = bus_with(service="svc")
    bus.nc = nc = Failing()
    with capture_logs() as logs:
        await bus.close()
    assert (nc.drained, nc.closed) == (1, 1)
    assert [(e["event"], e["step"]) for e in logs] == [
        ("stop.step_failed", "svc: drain the NATS connection"),
        ("stop.step_failed", "svc: close the NATS connection"),
    ]


class NakFails(FakeMsg):
    """A message whose connection broke: its nak raises."""

    async def nak(self, delay: float | None = None) -> None:
        raise nats.errors.ConnectionClosedError()


async def test_a_nak_that_fails_leaves_the_rest_of_the_batch_naked_and_the_runner_going():
    """The broker redelivers an un-naked message after its ack wait anyway: a failed nak is no
    reason to stop the others' or to end the fetch loop with an error."""
    msgs = [NakFails(b"0"), FakeMsg(b"1", delivered=2)]

    async def handle(batch: list[Any]) -> dict[int, str]:
        raise Transient("database busy")

    await runner_with(handle).process(msgs)
    assert msgs[1].naks == [0.5]


async def test_a_dead_letter_whose_ack_fails_still_ends_the_message_s_handling():
    js = FakeJetStream()
    msg = FakeMsg(b"last", delivered=5, ack_error=nats.errors.TimeoutError())

    async def handle(batch: list[Any]) -> dict[int, str]:
        raise KeyError("boom")

    await runner_with(handle, js, max_deliver=5).process([msg])
    assert dead_lettered(js) == [(b"last", "failed 5 times: 'boom'")]


async def test_a_message_that_failed_alone_is_retried_later_saying_why():
    msg = FakeMsg(b"bad", delivered=2)

    async def handle(batch: list[Any]) -> dict[int, str]:
        raise KeyError("boom")

    with capture_logs() as logs:
        await runner_with(handle, max_deliver=5).process([msg])
    assert [(e["event"], e["error"]) for e in logs if e["event"] == "consumer.retry_later"] == [
        ("consumer.retry_later", "'boom'")
    ]
    assert msg.naks == [0.5]
