"""dispatch killed with SIGKILL while 500 incidents are being dispatched automatically, then
restarted, and the same events replayed: every incident ends with exactly its plan's units, no unit
is assigned twice, nothing is lost. Counted in PostgreSQL and on the DISPATCH stream."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import httpx
import pytest
from sqlalchemy import func, select

from dispatch import store
from dispatch.consumers import INCIDENT_CONSUMER
from ecs.bus import Bus, msg_id_headers
from ecs.contracts import StageChanged
from ecs.db import Database
from ecs.envelope import make_event
from ecs.testing import eventually
from tests.integration.test_dispatch_concurrency import assert_never_twice, dispatch_events, outbox_empty

INCIDENTS = 500
CENTRE = (31.2304, 121.4737)


def roster(rng: random.Random) -> list[dict]:
    """One fire engine and one patrol car per incident (fire IV isolation), scattered over 20 km."""
    units = []
    for kind in ("fire_engine", "patrol_car"):
        for i in range(INCIDENTS):
            units.append(
                {
                    "id": f"{kind}-{i:03d}",
                    "unit_type": kind,
                    "home_station": f"station-{i % 25}",
                    "district": f"district-{i % 25}",
                    "location": {
                        "lat": CENTRE[0] + rng.uniform(-0.1, 0.1),
                        "lon": CENTRE[1] + rng.uniform(-0.1, 0.1),
                    },
                }
            )
    return units


def isolation_event(incident_id: str, rng: random.Random):
    data = StageChanged(
        incident_id=incident_id,
        from_stage="reported",
        to_stage="isolation",
        actor="dispatcher-1",
        version=3,
        category="fire",
        level=4,
        lat=CENTRE[0] + rng.uniform(-0.08, 0.08),
        lon=CENTRE[1] + rng.uniform(-0.08, 0.08),
    )
    return make_event("incident.stage.changed", data, source="incident-intake", incident_id=incident_id)


async def counts(db: Database) -> tuple[int, int]:
    a = store.assignments.c
    async with db.engine.connect() as conn:
        active = await conn.scalar(select(func.count()).select_from(store.assignments).where(a.released_at.is_(None)))
        incidents = await conn.scalar(select(func.count(a.incident_id.distinct())))
    return int(active or 0), int(incidents or 0)


async def consumer_done(bus: Bus) -> bool:
    info = await bus.js.consumer_info(INCIDENT_CONSUMER.stream, INCIDENT_CONSUMER.durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


@pytest.mark.slow
async def test_dispatch_killed_mid_run_ends_with_exactly_the_plan_units(
    dispatch_factory, nats_private, pg_url, operator_headers
):
    rng = random.Random(11)
    dispatch = dispatch_factory(pg_url, min_cover="0")
    async with httpx.AsyncClient(base_url=dispatch.url, headers=operator_headers("dispatcher"), timeout=60) as api:
        r = await api.post("/v1/units:batch", json={"units": roster(rng)})
        assert r.status_code == 201, r.text[:500]

    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    db = Database(pg_url)
    incidents = [f"inc{n:04d}" for n in range(INCIDENTS)]
    events = [isolation_event(i, rng) for i in incidents]
    try:
        await bus.publish_batch([(e.type, e.to_bytes(), msg_id_headers(e.id)) for e in events])

        # Kill it mid-run, when part of the incidents hold units.
        async def dispatching():
            return (await counts(db))[0] >= 2 * INCIDENTS // 4

        await eventually(dispatching, "dispatch dispatching a quarter of the incidents", within_s=60)
        dispatch.kill(9)
        killed_at = (await counts(db))[0]
        assert killed_at < 2 * INCIDENTS, "the run finished before the kill: nothing was tested"
        dispatch.start()

        # The same events once more, as a broker redelivering after a lost ack would (new stream
        # messages, same envelope ids): the inbox makes them no-ops.
        replay = rng.sample(events, 100)
        await bus.publish_batch([(e.type, e.to_bytes(), {"Nats-Msg-Id": f"replay:{e.id}"}) for e in replay])

        async def every_plan_met():
            return await counts(db) == (2 * INCIDENTS, INCIDENTS)

        await eventually(every_plan_met, "every incident holding its plan's units", within_s=120)
        # Nothing is in flight any more: every incident event (the replays too) was handled and
        # acked after its commit, and the outbox relayed every event those commits wrote.
        await eventually(lambda: consumer_done(bus), "dispatch acked every incident event", within_s=60)
        await eventually(lambda: outbox_empty(pg_url), "the outbox relayed the last events", within_s=60)

        a, u = store.assignments.c, store.units.c
        async with db.engine.connect() as conn:
            rows = (await conn.execute(select(a.incident_id, a.unit_id, a.unit_type, a.released_at))).all()
            busy = dict((await conn.execute(select(u.id, u.incident_id).where(u.incident_id.is_not(None)))).all())
        stream = await dispatch_events(bus)
    finally:
        await bus.close()
        await db.dispose()

    assert all(r.released_at is None for r in rows), "nothing was released: no assignment was undone and redone"
    per_incident = defaultdict(Counter)
    for r in rows:
        per_incident[r.incident_id][r.unit_type] += 1
    assert set(per_incident) == set(incidents)
    assert all(kinds == {"fire_engine": 1, "patrol_car": 1} for kinds in per_incident.values())
    assert Counter(r.unit_id for r in rows).most_common(1)[0][1] == 1
    assert busy == {r.unit_id: r.incident_id for r in rows}
    final = assert_never_twice(stream)
    assert final == busy
    assigned = [e for e in stream if e["subject"] == "dispatch.unit.assigned"]
    assert len(assigned) == 2 * INCIDENTS  # one event per assignment: none lost, none doubled
    assert all(e["incident_id"] == e["data"]["incident_id"] and e["exercise"] is False for e in assigned)
