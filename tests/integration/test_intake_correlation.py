"""Correlation of alarms into incidents with the real Correlator on both stores: one event is one
incident, even with two replicas correlating at once; counts, level and callers stay exact."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from ecs.contracts import GatewayAlarm
from ecs.db import OUTBOX, Database
from ecs.errors import Conflict
from ecs.migrations import upgrade
from incident_intake import store
from incident_intake.correlation import IncomingAlarm, to_incoming
from incident_intake.domain import Stage
from incident_intake.handlers.alarms import Correlator
from incident_intake.main import MIGRATIONS, VERSION_TABLE
from incident_intake.settings import IntakeSettings

PEPPER = "test-pepper"
BUND = (31.2400, 121.4900)
GW = "gw-a"
_ids = itertools.count(1)


def settings(db_url: str) -> IntakeSettings:
    return IntakeSettings(database_url=db_url, caller_pepper=PEPPER, gateways={GW: "s" * 16})


def near(point: tuple[float, float], metres: float, bearing_deg: float) -> tuple[float, float]:
    lat, lon = point
    d_lat = metres * math.cos(math.radians(bearing_deg)) / 111_195.0
    d_lon = metres * math.sin(math.radians(bearing_deg)) / (111_195.0 * math.cos(math.radians(lat)))
    return lat + d_lat, lon + d_lon


def incoming(
    spot: tuple[float, float] = BUND,
    *,
    category: str = "fire",
    number: str | None = None,
    casualties: int | None = None,
    exercise: bool = False,
    received_at: datetime | None = None,
    alarm_id: str | None = None,
    gateway_id: str = GW,
) -> IncomingAlarm:
    alarm = GatewayAlarm.model_validate(
        {
            "alarm_id": alarm_id or f"a-{next(_ids)}",
            "received_at": (received_at or datetime.now(UTC)).isoformat(),
            "category": category,
            "location": {"lat": spot[0], "lon": spot[1]},
            "caller": {"number": number} if number else None,
            "description": "test alarm",
            "casualties": casualties,
            "exercise": exercise,
        }
    )
    return to_incoming(gateway_id, alarm, "nats", PEPPER)


@pytest.fixture
async def db(db_url) -> AsyncIterator[Database]:
    await upgrade(db_url, MIGRATIONS, VERSION_TABLE)
    database = Database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
def correlator(db: Database, db_url: str) -> Correlator:
    return Correlator(db, settings(db_url))


async def incidents(db: Database) -> list[Any]:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(store.incidents).order_by(store.incidents.c.created_at))).all()


async def alarm_rows(db: Database) -> list[Any]:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(store.alarms).order_by(store.alarms.c.seq))).all()


async def outbox(db: Database, subject: str | None = None) -> list[dict[str, Any]]:
    async with db.engine.connect() as conn:
        q = select(OUTBOX).order_by(OUTBOX.c.seq)
        if subject:
            q = q.where(OUTBOX.c.subject == subject)
        return [orjson.loads(r.payload) for r in (await conn.execute(q)).all()]


# --- one event, one incident ----------------------------------------------------------------


async def test_alarms_about_one_event_become_one_incident(db, correlator):
    spots = [near(BUND, 20 * i, 37 * i) for i in range(20)]  # up to 380 m from the first call
    categories = ["fire", "gas_leak", "explosion", "medical"]
    items = [
        incoming(spot, category=categories[i % 4], number=f"1390000{i:04d}", casualties=i % 3)
        for i, spot in enumerate(spots)
    ]
    results = [r for chunk in (items[:1], items[1:8], items[8:]) for r in await correlator.ingest(chunk)]
    (inc,) = await incidents(db)
    assert {r.incident_id for r in results} == {inc.id}
    assert [r.correlated for r in results] == [False] + [True] * 19
    assert (inc.alarm_count, inc.caller_count, inc.casualties) == (20, 20, 2)
    assert inc.category == "fire" and (inc.lat, inc.lon) == spots[0]
    assert inc.first_alarm_at == items[0].facts.received_at and inc.last_alarm_at == items[-1].facts.received_at
    assert inc.level == 3  # an explosion call at a fire: at least level III
    assert len(await alarm_rows(db)) == 20
    linked = await outbox(db, "incident.alarm.linked")
    assert [e["data"]["alarm_count"] for e in linked] == list(range(1, 21))
    assert len(await outbox(db, "incident.created")) == 1


async def test_a_far_or_unrelated_alarm_opens_its_own_incident(db, correlator):
    base = (await correlator.ingest([incoming(BUND)]))[0]
    far = (await correlator.ingest([incoming(near(BUND, 800, 90))]))[0]
    flood = (await correlator.ingest([incoming(BUND, category="flood")]))[0]
    crime = (await correlator.ingest([incoming(BUND, category="public_security")]))[0]
    assert len({base.incident_id, far.incident_id, flood.incident_id, crime.incident_id}) == 4
    assert len(await incidents(db)) == 4


async def test_the_same_alarm_again_is_a_duplicate_whatever_the_batch(db, correlator):
    a = incoming(alarm_id="repeat-1", number="13900000001")
    first = await correlator.ingest([a])
    again = await correlator.ingest([a, a, incoming(alarm_id="repeat-1", casualties=50)])
    assert [r.duplicate for r in again[:2]] == [True, True]
    assert {r.incident_id for r in again[:2]} == {first[0].incident_id}
    assert isinstance(again[2], Conflict) and again[2].extra["field"] == "alarm_id"  # says something else
    (inc,) = await incidents(db)
    assert (inc.alarm_count, inc.casualties, inc.level) == (1, 0, 4)
    # The same alarm_id from another gateway is another alarm.
    other = await correlator.ingest([incoming(alarm_id="repeat-1", gateway_id="gw-b")])
    assert other[0].duplicate is False
    assert len(await alarm_rows(db)) == 2


# --- two replicas ---------------------------------------------------------------------------


async def _replica_feed(correlator: Correlator, batches: list[list[IncomingAlarm]]) -> list[Any]:
    results = []
    for batch in batches:
        results += await correlator.ingest(batch)
        await asyncio.sleep(0)
    return results


async def test_two_replicas_correlating_at_once_still_make_one_incident_per_event(db_url, db):
    """Two Correlators, each with its own engine like two intake processes, fed interleaved batches."""
    other_db = Database(db_url)
    replicas = [Correlator(db, settings(db_url)), Correlator(other_db, settings(db_url))]
    rng = random.Random(7)
    # Every call within half the correlation distance of the scene (crowd crush 400 m, fire 500 m),
    # so whichever call happens to be correlated first, all the others are within reach of it.
    stampede, fire = BUND, near(BUND, 5000, 180)
    alarms = [
        incoming(
            near(stampede, rng.uniform(0, 190), rng.uniform(0, 360)),
            category="crowd_crush",
            number=f"1380000{i % 40:04d}",
        )
        for i in range(160)
    ] + [incoming(near(fire, rng.uniform(0, 240), rng.uniform(0, 360)), number=f"1370000{i:04d}") for i in range(80)]
    rng.shuffle(alarms)
    # Gateways retry: 30 alarms arrive a second time, at the other replica.
    repeats = rng.sample(alarms, 30)
    batches = [alarms[i : i + 7] for i in range(0, len(alarms), 7)]
    feeds: list[list[list[IncomingAlarm]]] = [batches[0::2], batches[1::2]]
    feeds[0] += [repeats[:15]]
    feeds[1] += [repeats[15:]]
    try:
        results = await asyncio.gather(*(_replica_feed(r, f) for r, f in zip(replicas, feeds, strict=True)))
    finally:
        await other_db.dispose()

    flat = [r for rs in results for r in rs]
    assert sum(r.duplicate for r in flat) == 30
    rows = await incidents(db)
    assert len(rows) == 2
    by_category = {r.category: r for r in rows}
    crush, blaze = by_category["crowd_crush"], by_category["fire"]
    assert (crush.alarm_count, crush.caller_count) == (160, 40)
    assert (blaze.alarm_count, blaze.caller_count) == (80, 80)
    assert crush.verified and blaze.verified  # enough independent callers
    stored = await alarm_rows(db)
    assert len(stored) == 240
    assert {a.incident_id for a in stored if a.category == "crowd_crush"} == {crush.id}
    async with db.engine.connect() as conn:
        callers = (await conn.execute(select(store.incident_callers))).all()
    assert len(callers) == 120
    assert len(await outbox(db, "incident.created")) == 2
    assert len(await outbox(db, "incident.alarm.linked")) == 240
    assert len(await outbox(db, "incident.verified")) == 2


async def test_a_replica_sees_incidents_another_replica_changed_meanwhile(db_url, db):
    other_db = Database(db_url)
    try:
        one, two = Correlator(db, settings(db_url)), Correlator(other_db, settings(db_url))
        first = (await one.ingest([incoming(number="13900000001")]))[0]
        (await two.ingest([incoming(near(BUND, 50, 0), number="13900000002")]))
        third = (await one.ingest([incoming(near(BUND, 80, 90), number="13900000002", casualties=11)]))[0]
        assert third.incident_id == first.incident_id
        (inc,) = await incidents(db)
        # The second replica's caller counts once, though the first replica never saw it in memory.
        assert (inc.alarm_count, inc.caller_count, inc.level) == (3, 2, 2)
    finally:
        await other_db.dispose()


# --- level, callers, drills, late alarms ----------------------------------------------------


async def test_casualties_raise_the_level_and_emit_incident_level_changed(db, correlator):
    first = (await correlator.ingest([incoming(casualties=0)]))[0]
    await correlator.ingest([incoming(near(BUND, 30, 0), casualties=4)])
    await correlator.ingest([incoming(near(BUND, 60, 0), casualties=2)])  # fewer: nothing changes
    await correlator.ingest([incoming(near(BUND, 90, 0), casualties=35)])
    (inc,) = await incidents(db)
    assert (inc.casualties, inc.level, inc.alarm_count) == (35, 1, 4)
    changes = await outbox(db, "incident.level.changed")
    assert [(e["data"]["from_level"], e["data"]["to_level"]) for e in changes] == [(4, 3), (3, 1)]
    for e in changes:
        assert e["incident_id"] == first.incident_id and e["data"]["incident_id"] == first.incident_id
        assert e["data"]["actor"] == "correlation" and "casualties" in e["data"]["reason"]
    assert [e["data"]["version"] for e in changes] == [2, 3]
    assert inc.version == 3
    timeline_kinds = await _timeline_kinds(db, first.incident_id)
    assert timeline_kinds.count("level.changed") == 2


async def test_a_raised_level_is_not_lowered_by_calmer_alarms(db, correlator):
    await correlator.ingest([incoming(casualties=12)])
    for i in range(5):
        await correlator.ingest([incoming(near(BUND, 10 * i, 0), casualties=0)])
    (inc,) = await incidents(db)
    assert inc.level == 2 and await outbox(db, "incident.level.changed") == []


async def _timeline_kinds(db: Database, incident_id: str) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            select(store.timeline.c.kind)
            .where(store.timeline.c.incident_id == incident_id)
            .order_by(store.timeline.c.seq)
        )
        return [r.kind for r in rows]


async def test_a_caller_is_counted_once_however_the_number_is_written(db, correlator):
    same_person = ["13912345678", "+86 139 1234 5678", "139-1234-5678", "+8613912345678"]
    await correlator.ingest([incoming(near(BUND, 10 * i, 0), number=n) for i, n in enumerate(same_person[:2])])
    await correlator.ingest([incoming(near(BUND, 10 * i, 90), number=n) for i, n in enumerate(same_person[2:])])
    (inc,) = await incidents(db)
    assert (inc.alarm_count, inc.caller_count, inc.verified) == (4, 1, False)  # one caller does not verify
    await correlator.ingest([incoming(number="13800000001"), incoming()])  # a second caller and an anonymous one
    await correlator.ingest([incoming(number="13700000001")])
    (inc,) = await incidents(db)
    assert (inc.alarm_count, inc.caller_count, inc.verified) == (7, 3, True)  # three callers verify it
    assert [e["data"]["automatic"] for e in await outbox(db, "incident.verified")] == [True]


async def test_the_same_caller_at_two_incidents_counts_at_each(db, correlator):
    await correlator.ingest([incoming(number="13912345678")])
    await correlator.ingest([incoming(near(BUND, 5000, 0), number="13912345678")])
    assert sorted(i.caller_count for i in await incidents(db)) == [1, 1]


async def test_exercise_and_live_alarms_never_share_an_incident(db, correlator):
    mixed = [incoming(near(BUND, 5 * i, 0), exercise=i % 2 == 1, number=f"1390000{i:04d}") for i in range(10)]
    results = await correlator.ingest(mixed)
    rows = await incidents(db)
    assert sorted(r.exercise for r in rows) == [False, True]
    by_flag = {r.exercise: r for r in rows}
    assert by_flag[True].alarm_count == 5 and by_flag[False].alarm_count == 5
    for item, result in zip(mixed, results, strict=True):
        assert result.incident_id == by_flag[item.alarm.exercise].id
    for a in await alarm_rows(db):
        assert a.exercise is by_flag[a.exercise].exercise
    for e in await outbox(db):
        assert e["exercise"] == (e["incident_id"] == by_flag[True].id)


async def test_a_late_alarm_still_finds_its_old_open_incident(db_url, db):
    now = datetime.now(UTC)
    collapse_at = now - timedelta(hours=9)
    first_replica = Correlator(db, settings(db_url))
    old = (await first_replica.ingest([incoming(category="building_collapse", received_at=collapse_at)]))[0]

    # A freshly started replica: its first batch is current, so it only holds recent incidents.
    restarted = Correlator(db, settings(db_url))
    await restarted.ingest([incoming(near(BUND, 9000, 0), received_at=now)])
    # A gateway that was offline delivers a call made 8 h ago, one hour after the collapse.
    late = (
        await restarted.ingest(
            [incoming(near(BUND, 100, 45), category="building_collapse", received_at=now - timedelta(hours=8))]
        )
    )[0]
    assert late.incident_id == old.incident_id and late.correlated
    inc = next(i for i in await incidents(db) if i.id == old.incident_id)
    assert inc.alarm_count == 2
    assert inc.first_alarm_at == collapse_at and inc.last_alarm_at == now - timedelta(hours=8)


async def test_a_late_alarm_outside_the_window_opens_a_new_incident(db, correlator):
    now = datetime.now(UTC)
    old = (await correlator.ingest([incoming(category="traffic_accident", received_at=now - timedelta(hours=3))]))[0]
    later = (await correlator.ingest([incoming(category="traffic_accident", received_at=now)]))[0]
    assert later.incident_id != old.incident_id


async def test_a_closed_or_cancelled_incident_takes_no_more_alarms(db, correlator):
    first = (await correlator.ingest([incoming()]))[0]
    async with db.uow() as uow:
        rev = await store.tick(uow.conn)
        assert await store.update_incident(uow.conn, first.incident_id, 1, stage=Stage.cancelled.value, rev=rev)
        await uow.commit()
    again = (await correlator.ingest([incoming(near(BUND, 20, 0))]))[0]
    assert again.incident_id != first.incident_id and not again.correlated
