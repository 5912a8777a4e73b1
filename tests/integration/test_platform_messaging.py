"""The messaging platform in libs/ on a real nats-server (and both stores where a database is
involved): the transactional outbox and its relay, the inbox, and the consumer runner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats.js.errors
import pytest
from nats.aio.msg import Msg
from sqlalchemy import select, text

from ecs.bus import Bus, ConsumerRunner, ConsumerSpec, StreamSpec
from ecs.db import OUTBOX, Database, lock_key, new_metadata
from ecs.envelope import Envelope, make_event
from ecs.errors import Poison, Transient
from ecs.outbox import OutboxRelay

THINGS = StreamSpec("THINGS", ("thing.>",), duplicate_window_s=120)


async def eventually(probe: Callable[[], Any], what: str, within_s: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"gave up after {within_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def stream_messages(bus: Bus, stream: str, subject: str = ">") -> list[Any]:
    found, seq = [], 1
    while True:
        try:
            msg = await bus.js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return found
        found.append(msg)
        seq = msg.seq + 1


@pytest.fixture
async def bus(nats_private) -> AsyncIterator[Bus]:
    b = Bus(nats_private.url, "platform-test")
    await b.connect()
    await b.declare([THINGS])
    yield b
    await b.close()


@pytest.fixture
async def db(db_url) -> AsyncIterator[Database]:
    database = Database(db_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(new_metadata().create_all)
    yield database
    await database.dispose()


def thing(n: int, **kw: Any) -> Envelope:
    return make_event(f"thing.{'odd' if n % 2 else 'even'}.happened", {"n": n}, source="platform-test", **kw)


# --- outbox ---------------------------------------------------------------------------------


async def test_outbox_rows_are_relayed_in_commit_order_then_deleted(db, bus):
    sent: list[Envelope] = []
    for start in (0, 10, 20):  # three transactions of ten events
        async with db.uow() as uow:
            batch = [thing(n, incident_id=f"inc-{n % 3}", exercise=n % 5 == 0) for n in range(start, start + 10)]
            uow.emit(*batch)
            await uow.commit()
        sent += batch
    assert await OutboxRelay(db, bus).pending() == 30

    relay = OutboxRelay(db, bus, batch=7)  # batches that straddle the transactions
    rounds = []
    while n := await relay.relay_once():
        rounds.append(n)
    assert rounds == [7, 7, 7, 7, 2]
    assert await relay.pending() == 0

    on_stream = await stream_messages(bus, "THINGS")
    assert [Envelope.from_bytes(m.data).data["n"] for m in on_stream] == list(range(30))
    for msg, env in zip(on_stream, sent, strict=True):
        got = Envelope.from_bytes(msg.data)
        assert msg.subject == env.type
        assert msg.headers["Nats-Msg-Id"] == env.id == got.id
        assert (got.incident_id, got.exercise, got.source) == (env.incident_id, env.exercise, "platform-test")


async def test_a_relay_that_dies_between_publish_and_delete_does_not_double_anything(db, bus):
    async with db.uow() as uow:
        uow.emit(*(thing(n) for n in range(5)))
        await uow.commit()
    async with db.engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(select(OUTBOX).order_by(OUTBOX.c.seq))).all()]

    assert await OutboxRelay(db, bus).relay_once() == 5
    # The crash: the rows were published but the delete never committed, so they are all still there.
    async with db.engine.begin() as conn:
        await conn.execute(OUTBOX.insert(), rows)
    async with db.uow() as uow:
        uow.emit(thing(5))
        await uow.commit()

    restarted = OutboxRelay(db, bus)
    assert await restarted.relay_once() == 6
    assert await restarted.pending() == 0
    on_stream = await stream_messages(bus, "THINGS")
    assert [Envelope.from_bytes(m.data).data["n"] for m in on_stream] == [0, 1, 2, 3, 4, 5]


async def test_the_running_relay_publishes_what_commits_and_nothing_that_rolled_back(db, bus):
    relay = OutboxRelay(db, bus, batch=50)
    await relay.start()
    try:
        async with db.uow() as uow:
            uow.emit(thing(1))
            await uow.commit()
        async with db.uow() as uow:
            uow.emit(thing(2))
            await uow.flush_events()  # written to the outbox table, then the transaction is abandoned
        async with db.uow() as uow:
            uow.emit(thing(3))
            await uow.commit()

        async def both() -> list[Any]:
            msgs = await stream_messages(bus, "THINGS")
            return msgs if len(msgs) >= 2 else []

        msgs = await eventually(both, "the committed events on the stream")
        assert [Envelope.from_bytes(m.data).data["n"] for m in msgs] == [1, 3]
        await eventually(lambda: _empty(relay), "the outbox to empty")
    finally:
        await relay.stop()


async def _empty(relay: OutboxRelay) -> bool:
    return await relay.pending() == 0


# --- inbox ----------------------------------------------------------------------------------


async def test_inbox_says_first_time_once_per_consumer_and_message(db):
    async with db.uow() as uow:
        assert await uow.first_time("billing", "m-1") is True
        assert await uow.first_time("billing", "m-1") is False  # within the same transaction too
        assert await uow.first_time("audit", "m-1") is True  # another consumer has its own memory
        await uow.commit()
    async with db.uow() as uow:
        assert await uow.first_time("billing", "m-1") is False
        assert await uow.first_time("billing", "m-2") is True
        await uow.commit()


async def test_inbox_forgets_a_message_whose_transaction_rolled_back(db):
    with pytest.raises(RuntimeError):
        async with db.uow() as uow:
            assert await uow.first_time("billing", "m-9") is True
            raise RuntimeError("the effect failed")
    async with db.uow() as uow:
        assert await uow.first_time("billing", "m-9") is True  # so the redelivery is processed
        await uow.commit()


# --- the consumer runner --------------------------------------------------------------------


def spec(durable: str = "things-worker", ack_wait_s: float = 30) -> ConsumerSpec:
    return ConsumerSpec("THINGS", durable, ("thing.>",), ack_wait_s=ack_wait_s)


async def runner_for(bus: Bus, handle: Any, **kw: Any) -> ConsumerRunner:
    s = kw.pop("spec", None) or spec()
    await bus.declare([THINGS], [s])
    runner = ConsumerRunner(bus, s, handle, fetch_timeout_s=0.2, **kw)
    await runner.start()
    return runner


async def publish(bus: Bus, *payloads: bytes, subject: str = "thing.odd.happened") -> list[str]:
    ids = []
    for i, payload in enumerate(payloads):
        msg_id = f"msg-{i}-{payload[:20].hex()}"
        await bus.publish(subject, payload, {"Nats-Msg-Id": msg_id})
        ids.append(msg_id)
    return ids


async def settled(bus: Bus, durable: str = "things-worker") -> bool:
    info = await bus.js.consumer_info("THINGS", durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_runner_acks_only_after_the_handler_returned(bus):
    entered, release = asyncio.Event(), asyncio.Event()
    handled: list[bytes] = []

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        entered.set()
        await release.wait()  # the "database commit" is still in progress
        handled.extend(m.data for m in msgs)
        return {}

    runner = await runner_for(bus, handle)
    try:
        await publish(bus, b"one")
        await asyncio.wait_for(entered.wait(), 10)
        info = await bus.js.consumer_info("THINGS", "things-worker")
        assert (info.num_ack_pending, info.num_pending) == (1, 0)  # delivered, not acked
        release.set()
        await eventually(lambda: settled(bus), "the ack after the handler returned")
        assert handled == [b"one"]
    finally:
        await runner.stop()


async def test_runner_dead_letters_what_the_handler_refused_with_the_reason_and_keeps_going(bus):
    handled: list[bytes] = []

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        refused = {i: f"bad payload {m.data.decode()!r}" for i, m in enumerate(msgs) if m.data.startswith(b"bad")}
        handled.extend(m.data for i, m in enumerate(msgs) if i not in refused)
        return refused

    await publish(bus, b"good-1", b"bad-1", b"good-2", b"bad-2", b"good-3")
    runner = await runner_for(bus, handle)
    try:
        await eventually(lambda: settled(bus), "the consumer to settle")
        assert sorted(handled) == [b"good-1", b"good-2", b"good-3"]
        dead = await stream_messages(bus, "DEADLETTER", "deadletter.thing.>")
        assert [(m.subject, m.data) for m in dead] == [
            ("deadletter.thing.odd.happened", b"bad-1"),
            ("deadletter.thing.odd.happened", b"bad-2"),
        ]
        assert [m.headers["Ecs-Reason"] for m in dead] == ["bad payload 'bad-1'", "bad payload 'bad-2'"]
        assert {m.headers["Ecs-Consumer"] for m in dead} == {"things-worker"}
        assert {m.headers["Ecs-Original-Subject"] for m in dead} == {"thing.odd.happened"}
        # Consumed for good: nothing comes back after the ack wait either.
        await publish(bus, b"good-4")
        await eventually(lambda: settled(bus), "the next message")
        assert handled[-1] == b"good-4" and handled.count(b"good-1") == 1
    finally:
        await runner.stop()


async def test_runner_dead_letters_a_raised_poison_at_once_with_its_reason(bus):
    attempts: list[int] = []

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        attempts.append(len(msgs))
        raise Poison("unknown schema version 7")

    await publish(bus, b"from-the-future")
    runner = await runner_for(bus, handle)
    try:

        async def dead() -> list[Any]:
            return await stream_messages(bus, "DEADLETTER", "deadletter.thing.>")

        (msg,) = await eventually(dead, "the dead letter", within_s=3)
        assert msg.headers["Ecs-Reason"] == "unknown schema version 7"
        assert attempts == [1]
    finally:
        await runner.stop()


async def test_runner_retries_a_transient_failure_later(bus):
    deliveries: list[tuple[bytes, int]] = []
    done: list[bytes] = []

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        deliveries.extend((m.data, m.metadata.num_delivered) for m in msgs)
        if len(deliveries) == 1:
            raise Transient("database restarting")
        done.extend(m.data for m in msgs)
        return {}

    await publish(bus, b"one")
    runner = await runner_for(bus, handle)
    try:
        await eventually(lambda: _has(done), "the retry to succeed")
        await eventually(lambda: settled(bus), "the ack")
        assert deliveries == [(b"one", 1), (b"one", 2)]  # redelivered by JetStream, not replayed in memory
        assert done == [b"one"]
        assert await stream_messages(bus, "DEADLETTER", "deadletter.>") == []
    finally:
        await runner.stop()


async def _has(items: list[Any]) -> bool:
    return bool(items)


async def test_runner_isolates_a_poison_message_inside_a_batch(bus):
    """A handler that trips over one message fails the whole batch; the others must still go through."""
    committed: list[bytes] = []
    attempts: dict[bytes, int] = {}

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        for m in msgs:
            attempts[m.data] = attempts.get(m.data, 0) + 1
        for m in msgs:
            if m.data == b"boom":
                raise ValueError("cannot parse 'boom'")
        committed.extend(m.data for m in msgs)  # all or nothing, like a transaction
        return {}

    await publish(bus, b"a", b"b", b"boom", b"c", b"d")
    runner = await runner_for(bus, handle, max_deliver=2)
    try:

        async def dead() -> list[Any]:
            return await stream_messages(bus, "DEADLETTER", "deadletter.thing.>")

        (msg,) = await eventually(dead, "the poison message on the dead-letter stream")
        await eventually(lambda: settled(bus), "the consumer to settle")
        assert sorted(committed) == [b"a", b"b", b"c", b"d"]  # each exactly once
        assert msg.data == b"boom"
        assert "failed 2 times" in msg.headers["Ecs-Reason"] and "cannot parse 'boom'" in msg.headers["Ecs-Reason"]
        assert attempts[b"boom"] == 3  # in the batch, then alone, then alone again: max_deliver=2
    finally:
        await runner.stop()


async def test_a_message_the_database_refuses_is_dead_lettered_at_once_not_retried(bus, pg_url):
    """What a column cannot hold (here text that is no number; a 120-character incident id in
    resource-stockpile) is refused on every delivery: it was retried max_deliver times, a minute
    and more, before it reached the dead-letter subject."""
    db = Database(pg_url)
    attempts: dict[bytes, int] = {}

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        async with db.uow() as uow:
            for m in msgs:
                attempts[m.data] = attempts.get(m.data, 0) + 1
                await uow.conn.execute(text("SELECT CAST(CAST(:v AS text) AS int)"), {"v": m.data.decode()})
            await uow.commit()
        return {}

    await publish(bus, b"1", b"x", b"2")
    runner = await runner_for(bus, handle, max_deliver=8)
    try:

        async def dead() -> list[Any]:
            return await stream_messages(bus, "DEADLETTER", "deadletter.thing.>")

        (msg,) = await eventually(dead, "the refused message on the dead-letter stream")
        await eventually(lambda: settled(bus), "the consumer to settle")
        assert msg.data == b"x" and msg.headers["Ecs-Reason"].startswith("the database refused it: ")
        assert attempts[b"x"] == 2  # in the batch, then alone once: never redelivered
        assert (attempts[b"1"], attempts[b"2"]) == (2, 1)  # the batch stopped at "x"; then each alone
    finally:
        await runner.stop()
        await db.dispose()


async def test_two_runners_on_one_durable_share_the_work_without_doubling_it(bus):
    handled: list[bytes] = []

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        handled.extend(m.data for m in msgs)
        await asyncio.sleep(0)
        return {}

    payloads = [f"m{i}".encode() for i in range(200)]
    first = await runner_for(bus, handle, batch=10)
    second = await runner_for(bus, handle, batch=10)
    try:
        await publish(bus, *payloads)
        await eventually(lambda: settled(bus), "both runners to drain the stream")
        assert sorted(handled) == sorted(payloads)
    finally:
        await first.stop()
        await second.stop()


async def test_closing_the_bus_after_an_idle_runner_is_prompt(nats_private):
    """A runner polling an empty stream leaves stale pull requests behind; shutting down must not wait
    out nats-py's 30 s drain timeout for them (intake would be killed instead of stopping)."""
    bus = Bus(nats_private.url, "platform-test")
    await bus.connect()
    await bus.declare([THINGS], [spec()])
    fetches = 0

    async def handle(msgs: list[Msg]) -> dict[int, str]:
        return {}

    runner = ConsumerRunner(bus, spec(), handle, fetch_timeout_s=0.1)
    original = runner._subscribe

    async def counted() -> Any:
        sub = await original()
        fetch = sub.fetch

        async def fetch_and_count(*args: Any, **kw: Any) -> Any:
            nonlocal fetches
            fetches += 1
            return await fetch(*args, **kw)

        sub.fetch = fetch_and_count
        return sub

    runner._subscribe = counted  # type: ignore[method-assign]
    await runner.start()
    await eventually(lambda: _at_least(lambda: fetches, 8), "the runner to poll an empty stream a few times")
    await runner.stop()
    closing = asyncio.create_task(bus.close())
    # Nothing is in flight, so there is nothing to wait for; 10 s is far below the 30 s drain timeout.
    done, _ = await asyncio.wait({closing}, timeout=10)
    if not done:
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        await bus.nc.close()
    assert closing in done, "Bus.close() was still draining after 10 s"


async def _at_least(count: Callable[[], int], n: int) -> bool:
    return count() >= n


async def test_republishing_with_the_same_msg_id_is_dropped_by_the_stream(bus):
    env = thing(1)
    await bus.publish_event(env)
    await bus.publish_event(env)
    await bus.publish_batch([(env.type, env.to_bytes(), {"Nats-Msg-Id": env.id})])
    (msg,) = await stream_messages(bus, "THINGS")
    assert msg.headers["Nats-Msg-Id"] == env.id


async def test_declaring_streams_again_is_harmless(bus):
    await bus.publish_event(thing(1))
    await bus.declare([THINGS], [spec()])
    await bus.declare([THINGS], [spec()])
    assert len(await stream_messages(bus, "THINGS")) == 1
    info = await bus.js.stream_info("THINGS")
    assert info.config.subjects == ["thing.>"]


async def test_request_reply_answers_and_reports_a_handler_error(bus):
    async def answer(req: dict[str, Any]) -> dict[str, Any]:
        if req.get("n") is None:
            raise ValueError("n is required")
        return {"double": req["n"] * 2}

    await bus.serve("things.double", answer)
    assert await bus.request("things.double", {"n": 21}) == {"double": 42}
    assert await bus.request("things.double", {}) == {"error": "n is required"}


async def test_a_relay_stopped_while_it_publishes_stops(db, bus):
    """nats-py turns a cancellation that reaches ``publish_async`` while it waits for a place
    among the pending publishes into TooManyStalledMsgsError (and Python 3.11's ``wait_for`` may
    swallow one outright): the relay saw a publishing failure, not its stop, and went on relaying,
    so the service's shutdown awaited it forever. Here every publish waits for an ack that never
    comes, with one place for pending publishes, and the relay is stopped while it waits."""
    silent = await bus.nc.subscribe("unacked.>")  # no stream: a responder that never acknowledges
    bus.js = bus.nc.jetstream(timeout=10, publish_async_max_pending=1)
    async with db.uow() as uow:
        uow.emit(*(make_event("unacked.thing", {"n": n}, source="platform-test") for n in range(2)))
        await uow.commit()
    relay = OutboxRelay(db, bus)
    await relay.start()
    try:
        await silent.next_msg(timeout=10)  # the first is out; the second waits for its place
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(relay.stop())
        done, _ = await asyncio.wait({stopping}, timeout=15)
        assert stopping in done, "the relay did not stop"
        stopping.result()
        assert relay._task is None or relay._task.done()
    finally:
        await silent.unsubscribe()
        if relay._task is not None and not relay._task.done():  # without the fix: end it for good
            async with db.engine.begin() as conn:
                await conn.execute(OUTBOX.delete())
            while not relay._task.done():
                relay._task.cancel()
                await asyncio.wait({relay._task}, timeout=0.5)


async def test_a_relay_that_gives_up_leading_frees_the_lock_for_any_session(pg_url, bus):
    """The relay's leadership is a session-level advisory lock: giving it up (after a failure, or
    at stop) ends that session. Handing the connection back to the pool kept the lock held by an
    idle pooled connection, so no other session — another replica, or this one on another
    pooled connection — could lead again."""
    db = Database(pg_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(new_metadata().create_all)
    relay = OutboxRelay(db, bus)
    try:
        assert await relay._lead()
        await relay._release_leadership()
        other = Database(pg_url)
        try:
            async with other.engine.connect() as conn:
                key = {"k": lock_key("outbox-relay")}
                assert await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), key), "the lock is still held"
                await conn.scalar(text("SELECT pg_advisory_unlock(:k)"), key)
        finally:
            await other.dispose()
        assert await relay._lead(), "the relay cannot lead again"
    finally:
        await relay.stop()
        await db.dispose()
