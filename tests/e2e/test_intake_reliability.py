"""Reliability of incident-intake, counted: real processes, real nats-server, real PostgreSQL.

Each test breaks something in the middle of a run (intake killed with SIGKILL, nats-server
restarted, PostgreSQL connections dropped, the same alarm sent three times, two replicas racing)
and then counts, once everything has settled: every alarm is stored exactly once, every incident's
alarm_count matches its alarms, and exactly one ``incident.alarm.linked`` event per alarm is on the
INCIDENTS stream. Nothing is timed; the polling loops only bound how long we wait for the counts.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import nats
import nats.errors
import orjson
import pytest
from nats.js import api
from sqlalchemy.engine import make_url

from ecs.gateway_client import GatewayClient
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET

ALARM_CONSUMER = ("ALARMS", "intake-alarms")
LINKED = "incident.alarm.linked"
SETTLE_S = 150.0  # a lost ack holds its alarm back until the consumer's ack wait has passed
SHANGHAI = (31.2304, 121.4737)
M_LAT = 1 / 111_195
M_LON = M_LAT / math.cos(math.radians(SHANGHAI[0]))

# Separate scenes 4 km apart on a grid around the centre, each with its kind of event; every
# category keeps to its own scene, so the expected incident count is a property of the data.
SCENE_CATEGORIES = ("fire", "traffic_accident", "crowd_crush", "public_security", "building_collapse", "hazmat")


@dataclass(frozen=True)
class Scene:
    lat: float
    lon: float
    category: str


def scenes(count: int) -> list[Scene]:
    side = math.ceil(math.sqrt(count))
    return [
        Scene(
            SHANGHAI[0] + (i // side - side / 2) * 4000 * M_LAT,
            SHANGHAI[1] + (i % side - side / 2) * 4000 * M_LON,
            SCENE_CATEGORIES[i % len(SCENE_CATEGORIES)],
        )
        for i in range(count)
    ]


def make_alarms(count: int, prefix: str, scene_count: int = 40, seed: int = 110) -> list[dict[str, Any]]:
    """Alarms spread over separate scenes, each within 80 m of its scene, received just now."""
    rng = random.Random(seed)
    places = scenes(scene_count)
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        scene = places[i % len(places)]
        out.append(
            {
                "alarm_id": f"{prefix}-{i:06d}",
                "received_at": (now - timedelta(milliseconds=count - i)).isoformat(),
                "category": scene.category,
                "location": {
                    "lat": scene.lat + rng.uniform(-80, 80) * M_LAT,
                    "lon": scene.lon + rng.uniform(-80, 80) * M_LON,
                },
                "caller": {"number": f"139{rng.randrange(10**8):08d}"},
                "description": f"caller reports a {scene.category.replace('_', ' ')}",
            }
        )
    return out


# --- NATS: the gateway's side and the counting side ----------------------------------------


async def connect(url: str) -> tuple[Any, Any]:
    async def expected_while_the_broker_restarts(_: Exception) -> None:
        pass

    nc = await nats.connect(
        url,
        name="reliability-test",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        connect_timeout=5,
        error_cb=expected_while_the_broker_restarts,
    )
    return nc, nc.jetstream(timeout=10, publish_async_max_pending=10_000)


async def publish_alarms(js: Any, alarms: Sequence[dict[str, Any]], chunk: int = 500, attempts: int = 60) -> None:
    """Publish as a gateway does: every alarm until JetStream acknowledged it (the receipt).

    An alarm whose ack did not come (a broker restart, a time-out) is sent again with the same
    Nats-Msg-Id, which JetStream deduplicates.
    """
    pending = list(alarms)
    for _ in range(attempts):
        if not pending:
            return
        unacked: list[dict[str, Any]] = []
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            futures: list[asyncio.Future[Any]] = []
            try:
                for alarm in part:
                    futures.append(
                        await js.publish_async(
                            f"alarm.in.{GATEWAY_ID}",
                            orjson.dumps(alarm),
                            headers={"Nats-Msg-Id": f"{GATEWAY_ID}:{alarm['alarm_id']}"},
                        )
                    )
            except Exception:
                pass  # those not handed over yet are resent below
            if futures:
                await asyncio.wait(futures, timeout=10)
            for alarm, fut in zip(part, futures + [None] * (len(part) - len(futures)), strict=True):
                if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
                    if fut is not None and not fut.done():
                        fut.cancel()
                    unacked.append(alarm)
        pending = unacked
        if pending:
            await asyncio.sleep(0.5)
    raise AssertionError(f"{len(pending)} alarms never acknowledged by JetStream")


async def subject_count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def read_subject(js: Any, stream: str, subject: str) -> list[Any]:
    """Every message on a subject of a stream, through an ephemeral consumer of our own."""
    expected = await subject_count(js, stream, subject)
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=30,
        ),
    )
    got: list[Any] = []
    deadline = time.monotonic() + 60
    while len(got) < expected and time.monotonic() < deadline:
        try:
            got.extend(await sub.fetch(1000, timeout=2))
        except nats.errors.TimeoutError:
            continue
    await sub.unsubscribe()
    return got


# --- PostgreSQL: what intake stored ----------------------------------------------------------


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Stored:
    alarms: int
    distinct_alarms: int
    incidents: int
    alarm_count_sum: int
    inconsistent_incidents: int  # alarm_count differs from the alarms actually linked to it
    outbox: int


async def stored(dsn: str) -> Stored:
    conn = await asyncpg.connect(dsn)
    try:
        rows, distinct = await conn.fetchrow("SELECT count(*), count(DISTINCT (gateway_id, alarm_id)) FROM alarms")
        incidents, count_sum = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(alarm_count), 0) FROM incidents WHERE merged_into IS NULL"
        )
        inconsistent = await conn.fetchval(
            """SELECT count(*) FROM incidents i
               WHERE i.alarm_count <> (SELECT count(*) FROM alarms a WHERE a.incident_id = i.id)"""
        )
        outbox = await conn.fetchval("SELECT count(*) FROM outbox")
    finally:
        await conn.close()
    return Stored(rows, distinct, incidents, int(count_sum), inconsistent, outbox)


async def alarm_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM alarms"))
    finally:
        await conn.close()


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], within_s: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not reached after {within_s:.0f} s\n--- intake log ---\n{logs()}")


async def settle(dsn: str, js: Any, expected: int, logs: Callable[[], str]) -> Stored:
    """Wait until intake has nothing left to do: the alarm consumer drained (nothing pending,
    nothing delivered and unacked) and the outbox relayed, with every alarm stored, or with
    nothing changing for 5 s (then the counts below say what is missing); return what is stored."""
    last: list[Any] = []
    quiet_since = [time.monotonic()]

    async def done() -> bool:
        try:
            s = await stored(dsn)
            consumer = await js.consumer_info(*ALARM_CONSUMER)
            linked = await subject_count(js, "INCIDENTS", LINKED)
        except Exception as exc:  # a broker or database that is still coming back
            last[:] = [repr(exc)]
            return False
        now = [s, consumer.num_pending, consumer.num_ack_pending, linked]
        if now != last:
            last[:] = now
            quiet_since[0] = time.monotonic()
        idle = consumer.num_pending == 0 and consumer.num_ack_pending == 0 and s.outbox == 0
        return idle and (s.alarms >= expected and linked >= expected or time.monotonic() - quiet_since[0] > 5)

    await wait_for("intake idle", done, SETTLE_S, lambda: f"last seen: {last}\n{logs()}")
    return await stored(dsn)


async def assert_linked_exactly_once(js: Any, alarms: Sequence[dict[str, Any]], s: Stored) -> None:
    n = len(alarms)
    assert s.alarms == n, f"{s.alarms} alarm rows for {n} alarms"
    assert s.distinct_alarms == n
    assert s.alarm_count_sum == n, f"incidents count {s.alarm_count_sum} alarms, {n} were sent"
    assert s.inconsistent_incidents == 0, f"{s.inconsistent_incidents} incidents miscount their alarms"
    assert s.outbox == 0
    linked = await read_subject(js, "INCIDENTS", LINKED)
    ids = [m.headers.get("Nats-Msg-Id") for m in linked]
    expected_ids = {f"linked:{GATEWAY_ID}:{a['alarm_id']}" for a in alarms}
    assert set(ids) == expected_ids, f"{len(expected_ids - set(ids))} alarms without a linked event"
    assert len(linked) == n, f"{len(linked)} linked events for {n} alarms"
    created = await read_subject(js, "INCIDENTS", "incident.created")
    opened = {orjson.loads(m.data)["incident_id"] for m in created}
    assert len(created) == len(opened) == s.incidents, (
        f"{len(created)} incident.created events for {len(opened)} incidents; {s.incidents} stored"
    )


def log_of(*procs: Any) -> Callable[[], str]:
    return lambda: "\n".join(p.log_tail(30) for p in procs)


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_intake_killed_mid_run_links_every_alarm_once(intake_factory, nats_private, pg_url):
    dsn = asyncpg_dsn(pg_url)
    intake = intake_factory(pg_url)
    alarms = make_alarms(5000, "kill")
    nc, js = await connect(nats_private.url)
    try:
        await publish_alarms(js, alarms[:3500])
        # Three kills, each a little later after a commit was seen, so that one of them lands
        # while a fetched batch is being correlated and written. While intake is down the
        # gateway keeps sending, and JetStream holds the alarms.
        for rows, pause_s, more in ((300, 0.0, alarms[3500:]), (1800, 0.04, []), (3300, 0.08, [])):
            await wait_for("intake working through the alarms", _rows_at_least(dsn, rows), 60, log_of(intake))
            await asyncio.sleep(pause_s)
            intake.kill(9)
            assert await alarm_rows(dsn) < len(alarms), "the kill came after the run: it proves nothing"
            await publish_alarms(js, more)
            intake.start()
        s = await settle(dsn, js, len(alarms), log_of(intake))
        await assert_linked_exactly_once(js, alarms, s)
    finally:
        await nc.close()


def restart_broker(server: Any, crash: bool) -> None:
    """Same port, same store: stopped cleanly (SIGTERM) or crashed (SIGKILL), then started."""
    if not crash:
        server.restart(1.0)
        return
    server.proc.kill()
    server.proc.wait()
    time.sleep(1.0)
    server.start()


@pytest.mark.slow
async def test_nats_restarted_mid_run_links_every_alarm_once(intake_factory, nats_private, pg_url):
    dsn = asyncpg_dsn(pg_url)
    intake = intake_factory(pg_url)
    alarms = make_alarms(5000, "natsrestart")
    nc, js = await connect(nats_private.url)
    try:
        await publish_alarms(js, alarms[:4000])
        # The broker goes away and comes back twice, stopped cleanly and then crashed, while
        # intake is consuming and relaying, and while the gateway publishes more.
        for rows, crash, more in ((1000, False, alarms[4000:4500]), (2500, True, alarms[4500:])):
            await wait_for("intake working through the alarms", _rows_at_least(dsn, rows), 60, log_of(intake))
            assert await alarm_rows(dsn) < len(alarms), "the restart came after the run: it proves nothing"
            restart = asyncio.create_task(asyncio.to_thread(restart_broker, nats_private, crash))
            await publish_alarms(js, more, chunk=100)
            await restart
        s = await settle(dsn, js, len(alarms), log_of(intake))
        await assert_linked_exactly_once(js, alarms, s)
    finally:
        await nc.close()


@pytest.mark.slow
async def test_postgres_connections_dropped_mid_run_link_every_alarm_once(intake_factory, nats_private, pg_url):
    dsn = asyncpg_dsn(pg_url)
    database = make_url(pg_url).database
    intake = intake_factory(pg_url)
    alarms = make_alarms(5000, "pgdrop")
    nc, js = await connect(nats_private.url)
    admin = await asyncpg.connect(dsn)
    drops_mid_run = 0

    async def drop_connections() -> None:
        nonlocal drops_mid_run
        before = await admin.fetchval("SELECT count(*) FROM alarms")
        dropped = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        drops_mid_run += bool(dropped) and before < len(alarms)

    try:
        await publish_alarms(js, alarms[:2500])
        await wait_for("intake working through the alarms", _rows_at_least(dsn, 300), 60, log_of(intake))
        publishing = asyncio.create_task(publish_alarms(js, alarms[2500:]))
        for _ in range(12):
            await drop_connections()
            await asyncio.sleep(0.15)
        await publishing
        assert drops_mid_run >= 3, f"only {drops_mid_run} drops hit intake while it was working"
        s = await settle(dsn, js, len(alarms), log_of(intake))
        await assert_linked_exactly_once(js, alarms, s)
    finally:
        await admin.close()
        await nc.close()


async def test_alarm_sent_three_times_over_http_and_nats_is_linked_once(intake_factory, nats_private, pg_url):
    dsn = asyncpg_dsn(pg_url)
    intake = intake_factory(pg_url)
    alarms = make_alarms(40, "thrice", scene_count=8)
    nc, js = await connect(nats_private.url)
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    try:
        sends: list[tuple[str, Awaitable[Any]]] = []
        for i, alarm in enumerate(alarms):
            ways = ("http", "nats", "http") if i % 2 == 0 else ("nats", "http", "nats")
            for way in ways:
                sends.append((alarm["alarm_id"], gw.send(alarm) if way == "http" else gw.publish(js, alarm)))
        answers = await asyncio.gather(*(s for _, s in sends))

        receipts: dict[str, list[dict[str, Any]]] = {}
        for (alarm_id, _), answer in zip(sends, answers, strict=True):
            if isinstance(answer, httpx.Response):
                assert answer.status_code == 202, answer.text
                receipts.setdefault(alarm_id, []).append(answer.json())
        for alarm_id, got in receipts.items():
            assert len({r["incident_id"] for r in got}) == 1, f"{alarm_id} answered with different incidents"
            assert sum(not r["duplicate"] for r in got) <= 1, f"{alarm_id} accepted as new more than once"

        s = await settle(dsn, js, len(alarms), log_of(intake))
        await assert_linked_exactly_once(js, alarms, s)
        conn = await asyncpg.connect(dsn)
        try:
            where = dict(await conn.fetch("SELECT alarm_id, incident_id FROM alarms"))
        finally:
            await conn.close()
        for alarm_id, got in receipts.items():
            assert got[0]["incident_id"] == where[alarm_id]
    finally:
        await gw.aclose()
        await nc.close()


@pytest.mark.slow
async def test_two_replicas_fed_a_storm_about_one_event_open_one_incident(intake_factory, nats_private, pg_url):
    dsn = asyncpg_dsn(pg_url)
    first = intake_factory(pg_url)
    second = intake_factory(pg_url)
    rng = random.Random(119)
    now = datetime.now(UTC)
    storm = [
        {
            "alarm_id": f"storm-{i:05d}",
            "received_at": (now - timedelta(milliseconds=3000 - i)).isoformat(),
            "category": rng.choice(("fire", "fire", "fire", "explosion", "gas_leak", "hazmat")),
            "location": {
                "lat": SHANGHAI[0] + rng.uniform(-150, 150) * M_LAT,
                "lon": SHANGHAI[1] + rng.uniform(-150, 150) * M_LON,
            },
            "caller": {"number": f"138{rng.randrange(10**8):08d}"},
            "description": "explosion and fire at a chemical warehouse",
        }
        for i in range(3000)
    ]
    over_nats, over_http = storm[::3] + storm[1::3], storm[2::3]
    nc, js = await connect(nats_private.url)
    gateways = [GatewayClient(p.url, GATEWAY_ID, GATEWAY_SECRET) for p in (first, second)]
    try:
        # NATS feeds both replicas through the shared durable consumer; HTTP batches go to each
        # replica directly, interleaved, so both correlate the same event at the same moment.
        batches = [over_http[i : i + 50] for i in range(0, len(over_http), 50)]
        http = [gateways[i % 2].send_batch(b) for i, b in enumerate(batches)]
        answers = await asyncio.gather(publish_alarms(js, over_nats, chunk=100), *http)
        for answer in answers[1:]:
            assert answer.status_code == 200, answer.text
            assert answer.json()["rejected"] == 0, answer.text

        s = await settle(dsn, js, len(storm), log_of(first, second))
        await assert_linked_exactly_once(js, storm, s)
        assert s.incidents == 1, f"one event became {s.incidents} incidents"
        # Both replicas really took part in consuming the shared durable consumer.
        for proc in (first, second):
            async with httpx.AsyncClient(base_url=proc.url) as client:
                metrics = (await client.get("/metrics")).text
            handled = sum(
                float(v) for v in re.findall(r'^intake_alarms_total\{[^}]*via="nats"[^}]*\} (\S+)$', metrics, re.M)
            )
            assert handled > 0, f"replica on port {proc.port} handled no NATS alarm"
    finally:
        for gw in gateways:
            await gw.aclose()
        await nc.close()


def _rows_at_least(dsn: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            return await alarm_rows(dsn) >= n
        except asyncpg.UndefinedTableError:
            return False

    return check
