"""Intake's correlation under real traffic on the real stores: a batch the database refuses fails
only the alarm it refuses (PostgreSQL refuses U+0000; SQLite does not, which hid it), a storm a
medical call started is one incident, a late alarm joins its incident's span, and an operator's
level survives routine alarms."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from ecs.contracts import GatewayAlarm
from ecs.db import Database
from ecs.errors import InvalidInput
from ecs.migrations import upgrade
from incident_intake import store
from incident_intake.commands import ChangeLevel
from incident_intake.correlation import IngestResult, to_incoming
from incident_intake.domain import Category, Level
from incident_intake.handlers import Context, handle
from incident_intake.handlers.alarms import Correlator
from incident_intake.main import MIGRATIONS, VERSION_TABLE
from incident_intake.settings import IntakeSettings
from tests.integration.test_intake_correlation import BUND, near

PEPPER = "test-pepper"
_n = iter(range(1, 10**6))


def incoming(spot=BUND, **changes: Any):
    body: dict[str, Any] = {
        "alarm_id": f"t-{next(_n)}",
        "received_at": datetime.now(UTC).isoformat(),
        "category": "fire",
        "location": {"lat": spot[0], "lon": spot[1]},
        "description": "test alarm",
    }
    body.update(changes)
    # to_incoming, not admit: these alarms reach correlation as if the edge had missed them
    return to_incoming("gw-a", GatewayAlarm.model_validate(body), "nats", PEPPER)


@pytest.fixture
async def db(db_url) -> AsyncIterator[Database]:
    await upgrade(db_url, MIGRATIONS, VERSION_TABLE)
    database = Database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
def settings(db_url: str) -> IntakeSettings:
    return IntakeSettings(database_url=db_url, caller_pepper=PEPPER)


@pytest.fixture
def correlator(db: Database, settings: IntakeSettings) -> Correlator:
    return Correlator(db, settings)


async def rows(db: Database, table: Any) -> list[Any]:
    async with db.engine.connect() as conn:
        return (await conn.execute(select(table))).all()


async def test_a_batch_the_database_refuses_fails_only_the_alarm_it_refuses(pg_url):
    await upgrade(pg_url, MIGRATIONS, VERSION_TABLE)
    db = Database(pg_url)
    try:
        correlator = Correlator(db, IntakeSettings(database_url=pg_url, caller_pepper=PEPPER))
        good1, bad, good2 = incoming(), incoming(description="smoke\x00"), incoming(near(BUND, 30, 0))
        results = await correlator.ingest([good1, bad, good2])
        assert isinstance(results[0], IngestResult) and isinstance(results[2], IngestResult)
        assert isinstance(results[1], InvalidInput)
        assert {r.alarm_id for r in await rows(db, store.alarms)} == {good1.alarm.alarm_id, good2.alarm.alarm_id}
        (refusal,) = await rows(db, store.alarm_refusals)
        assert refusal.alarm_id == bad.alarm.alarm_id and "refused" in refusal.reason
        # the correlator goes on with the next batch
        (after,) = await correlator.ingest([incoming(near(BUND, 40, 90))])
        assert after.incident_id == results[0].incident_id
    finally:
        await db.dispose()


async def test_a_crowd_crush_first_reported_as_medical_is_one_incident_in_the_store(db, correlator):
    now = datetime.now(UTC) - timedelta(minutes=6)
    first = await correlator.ingest([incoming(category="medical", caller={"number": "13900000001"})])
    crush = [
        incoming(
            near(BUND, 80 * (i % 5) / 4, 37 * i),
            category="crowd_crush",
            caller={"number": f"1390000{100 + i:04d}"},
            received_at=(now + timedelta(seconds=7 * i)).isoformat(),
        )
        for i in range(40)
    ]
    results = [r for chunk in (crush[:1], crush[1:20], crush[20:]) for r in await correlator.ingest(chunk)]
    results += await correlator.ingest([incoming(near(BUND, 20, 180), category="medical") for _ in range(15)])
    far = await correlator.ingest([incoming(near(BUND, 1300, 90), category="medical")])
    assert {r.incident_id for r in results} == {first[0].incident_id}
    assert far[0].incident_id != first[0].incident_id
    inc = next(r for r in await rows(db, store.incidents) if r.id == first[0].incident_id)
    assert (inc.category, inc.alarm_count, inc.verified) == ("crowd_crush", 56, True)
    assert inc.level <= int(Level.III)
    kinds = [e.kind for e in await rows(db, store.timeline) if e.incident_id == inc.id]
    assert "category.changed" in kinds


async def test_a_late_alarm_inside_the_span_joins_the_incident_in_the_store(db, correlator):
    now = datetime.now(UTC)
    hourly = []
    for h in (3, 2, 1, 0):
        hourly += await correlator.ingest([incoming(received_at=(now - timedelta(hours=h)).isoformat())])
    assert len({r.incident_id for r in hourly}) == 1
    fresh = Correlator(correlator.db, correlator.settings)  # another replica, loading from the store
    (late,) = await fresh.ingest([incoming(near(BUND, 33, 45), received_at=(now - timedelta(hours=2.5)).isoformat())])
    assert late.incident_id == hourly[0].incident_id and late.correlated


async def test_an_operators_lower_level_survives_routine_alarms(db, correlator, settings):
    (first,) = await correlator.ingest([incoming(casualties=12)])
    ctx = Context(db, settings, None)  # type: ignore[arg-type]  # no alarms go through this context
    row = await handle(ChangeLevel(first.incident_id, 1, Level.III, "cmdr", "double-counted casualties"), ctx)
    assert row.level == int(Level.III)
    await correlator.ingest([incoming(near(BUND, 20, 0))])  # no casualty figure
    await correlator.ingest([incoming(near(BUND, 20, 90), casualties=12)])  # nothing new
    (inc,) = await rows(db, store.incidents)
    assert inc.level == int(Level.III) and inc.category == Category.fire
    await correlator.ingest([incoming(near(BUND, 20, 180), casualties=30)])  # more than was known
    (inc,) = await rows(db, store.incidents)
    assert inc.level == int(Level.I)
    raised = [e for e in await rows(db, store.timeline) if e.kind == "level.changed" and e.actor == "correlation"]
    assert "new since cmdr" in raised[-1].detail["reason"]


async def test_merge_then_split_keeps_the_scene_and_tells_dispatch(db, correlator, settings):
    from ecs.db import OUTBOX
    from incident_intake.commands import ChangeStage, MergeIncident, SetPerimeter, SplitAlarms, Verify
    from incident_intake.domain import Perimeter, Stage

    xs = await correlator.ingest([incoming(casualties=4), incoming(near(BUND, 30, 0))])
    (y,) = await correlator.ingest([incoming(near(BUND, 2200, 90), category="medical")])
    x_id = xs[0].incident_id
    ctx = Context(db, settings, None)  # type: ignore[arg-type]
    row = await handle(Verify(x_id, 1, "alice"), ctx)
    row = await handle(SetPerimeter(x_id, row.version, Perimeter.circle(*BUND, 100), "alice"), ctx)
    row = await handle(ChangeStage(x_id, row.version, Stage.isolation, "alice"), ctx)
    merged = await handle(MergeIncident(y.incident_id, 1, x_id, row.version, "bob"), ctx)
    assert (merged.stage, merged.verified, merged.perimeter["radius_m"]) == ("isolation", True, 100)
    split_from_y, new = await handle(
        SplitAlarms(y.incident_id, merged.version, [("gw-a", r.alarm_id) for r in xs], "bob"), ctx
    )
    assert (new.stage, new.verified, new.perimeter["radius_m"], new.split_from) == (
        "isolation",
        True,
        100,
        y.incident_id,
    )
    async with db.engine.connect() as conn:
        stage_events = [
            r.payload for r in (await conn.execute(select(OUTBOX).where(OUTBOX.c.subject == "incident.stage.changed")))
        ]
    carried = [e for e in stage_events if b"merged with" in e or b"split from" in e]
    assert len(carried) == 2  # y reached isolation by the merge, the new incident by the split
    # The split names the incident whose state it gives back, and comes after the new incident
    # and before its stage, so dispatch moves x's units back while the new one is still reported.
    async with db.engine.connect() as conn:
        told = [(r.subject, orjson.loads(r.payload)) for r in await conn.execute(select(OUTBOX).order_by(OUTBOX.c.seq))]
    about_new = [
        (subject, env["data"])
        for subject, env in told
        if new.id in (env.get("incident_id"), env["data"].get("new_incident_id"))
    ]
    assert [subject for subject, _ in about_new] == ["incident.created", "incident.split", "incident.stage.changed"]
    assert about_new[1][1]["state_of"] == x_id and about_new[2][1]["to_stage"] == "isolation"
    kinds = [e.kind for e in await rows(db, store.timeline) if e.incident_id == new.id]
    assert "split.from" in kinds
