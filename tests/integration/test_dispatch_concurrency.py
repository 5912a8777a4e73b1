"""A unit is never assigned to two incidents, whoever races for it: dispatchers against each other,
a dispatcher against the automatic path, two dispatch replicas. Against PostgreSQL, where the
transactions really run side by side."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import httpx
import orjson
from sqlalchemy import func, select

from dispatch import store
from ecs.bus import Bus
from ecs.contracts import IncidentCreated
from ecs.db import OUTBOX, Database
from ecs.envelope import make_event, utcnow
from ecs.testing import eventually
from tests.integration.test_dispatch_service import CENTRE, Intake, new_incident, unit


async def announce(bus: Bus, incident_id: str) -> None:
    """incident.created: dispatch knows the incident (stage reported, nothing automatic yet)."""
    data = IncidentCreated(
        incident_id=incident_id,
        category="fire",
        level=4,
        lat=CENTRE[0],
        lon=CENTRE[1],
        first_alarm_at=utcnow(),
        alarm_id=f"a-{incident_id}",
        gateway_id="gw",
        exercise=False,
    )
    await bus.publish_event(make_event("incident.created", data, source="incident-intake", incident_id=incident_id))


async def dispatch_events(bus: Bus) -> list[dict]:
    """Every dispatch.unit.* event on the DISPATCH stream, in stream order."""
    sub = await bus.js.pull_subscribe("dispatch.unit.>", durable=None, stream="DISPATCH")
    events = []
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=1)
        except Exception:
            break
        for m in msgs:
            events.append({"subject": m.subject, **orjson.loads(m.data)})
            await m.ack()
    await sub.unsubscribe()
    return events


def assert_never_twice(events: list[dict]) -> dict[str, str]:
    """Per unit, assigned and released alternate; returns where each unit is at the end."""
    where: dict[str, str] = {}
    for e in events:
        uid, incident = e["data"].get("unit_id"), e["data"].get("incident_id")
        if e["subject"] == "dispatch.unit.assigned":
            assert uid not in where, f"unit {uid} assigned to {incident} while still serving {where.get(uid)}"
            where[uid] = incident
        elif e["subject"] == "dispatch.unit.released":
            assert where.get(uid) == incident, f"unit {uid} released from {incident} it did not serve"
            del where[uid]
    return where


async def active_per_unit(database_url: str) -> tuple[Counter, dict[str, str]]:
    db = Database(database_url)
    a, u = store.assignments.c, store.units.c
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(a.unit_id, a.incident_id).where(a.released_at.is_(None)))).all()
        busy = dict((await conn.execute(select(u.id, u.incident_id).where(u.incident_id.is_not(None)))).all())
        assert await conn.scalar(select(func.count()).select_from(store.units)) > 0
    await db.dispose()
    return Counter(r.unit_id for r in rows), busy


async def outbox_empty(database_url: str) -> bool:
    """Every event committed so far is on the stream: the relay deletes what it published."""
    db = Database(database_url)
    try:
        async with db.engine.connect() as conn:
            return await conn.scalar(select(func.count()).select_from(OUTBOX)) == 0
    finally:
        await db.dispose()


async def test_dispatchers_racing_for_one_unit_one_wins_and_the_rest_learn_where_it_went(
    dispatch_app, pg_url, nats_private, operator_headers
):
    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    headers = operator_headers("dispatcher")
    async with dispatch_app(pg_url, min_cover=0, automatic=False) as (_, api):
        await api.post("/v1/units", json=unit("fe-contested", "fire_engine"), headers=headers)
        incidents = [new_incident() for _ in range(20)]
        for incident in incidents:
            await announce(bus, incident)

        async def all_known():
            r = await api.get("/v1/incidents", params={"limit": 100}, headers=headers)
            return len(r.json()["items"]) == len(incidents)

        await eventually(all_known)
        answers = await asyncio.gather(
            *(
                api.post(
                    f"/v1/incidents/{incident}/assignments",
                    json={"unit_ids": ["fe-contested"], "reason": "closest I know"},
                    headers=headers,
                )
                for incident in incidents
            )
        )
    await bus.close()
    won = [i for i, r in zip(incidents, answers, strict=True) if r.status_code == 201]
    lost = [r for r in answers if r.status_code != 201]
    assert len(won) == 1, [r.text for r in answers]
    assert {r.status_code for r in lost} == {409}
    assert all(r.json()["incident_id"] == won[0] and won[0] in r.json()["detail"] for r in lost)
    counts, busy = await active_per_unit(pg_url)
    assert counts == Counter({"fe-contested": 1}) and busy == {"fe-contested": won[0]}


async def test_two_replicas_automation_and_dispatchers_never_assign_a_unit_twice(
    dispatch_factory, pg_url, nats_private, operator_headers
):
    """50 incidents want a fire engine and a patrol car each from 30 of each, while dispatchers
    on both replicas grab random units for 20 other incidents: every unit ends up serving at most
    one incident, in the database and in the event stream."""
    # One replica also re-reads every unit each second, so the full reload runs under the race too.
    replicas = [dispatch_factory(pg_url, min_cover="0"), dispatch_factory(pg_url, min_cover="0", full_reload_s="1")]
    headers = operator_headers("dispatcher")
    roster = [unit(f"fe-{i:02d}", "fire_engine", km_east=0.2 * i) for i in range(30)]
    roster += [unit(f"pc-{i:02d}", "patrol_car", km_east=0.2 * i) for i in range(30)]
    bus = Bus(nats_private.url, "test-intake")
    await bus.connect()
    intake = Intake(bus)
    apis = [httpx.AsyncClient(base_url=r.url, headers=headers, timeout=30) for r in replicas]
    try:
        assert (await apis[0].post("/v1/units:batch", json={"units": roster})).status_code == 201
        manual = [new_incident() for _ in range(20)]
        for incident in manual:
            await announce(bus, incident)

        async def known_everywhere():
            for api in apis:
                for incident in manual:
                    if (await api.get(f"/v1/incidents/{incident}")).status_code != 200:
                        return False
            return True

        await eventually(known_everywhere)

        async def indexed_everywhere():
            # Each replica recommends from its own index: both must hold the whole roster.
            for api in apis:
                for kind in ("fire_engine", "patrol_car"):
                    params = {"unit_type": kind, "count": 30}
                    r = await api.get(f"/v1/incidents/{manual[0]}/recommendations", params=params)
                    if len(r.json()["recommendations"]) != 30:
                        return False
            return True

        await eventually(indexed_everywhere)

        rng = random.Random(7)
        outcomes: Counter = Counter()

        async def dispatcher(n: int) -> None:
            api = apis[n % 2]
            for _ in range(15):
                picks = rng.sample([u["id"] for u in roster], 2)
                r = await api.post(
                    f"/v1/incidents/{rng.choice(manual)}/assignments",
                    json={"unit_ids": picks, "reason": "dispatcher's choice"},
                )
                outcomes[r.status_code] += 1
                assert r.status_code in (201, 409), r.text

        automatic = [new_incident() for _ in range(50)]
        await asyncio.gather(
            *(dispatcher(n) for n in range(6)),
            *(intake.stage_to(incident, "isolation", level=4) for incident in automatic),
        )

        async def quiet():
            # Every automatic incident has been worked on: it reported whether it is settled.
            for incident in automatic:
                if (await apis[0].get(f"/v1/incidents/{incident}")).json().get("settled") is None:
                    return False
            return True

        await eventually(quiet, within_s=60)
        await eventually(lambda: outbox_empty(pg_url), "the outbox relayed the last events")
        counts, busy = await active_per_unit(pg_url)
        events = await dispatch_events(bus)
    finally:
        for api in apis:
            await api.aclose()
        await bus.close()

    assert outcomes[201] > 0 and outcomes[409] > 0  # the dispatchers really raced
    assert max(counts.values()) == 1
    assert set(counts) == set(busy)
    assert len(busy) == 60  # demand exceeds supply: every unit ended up busy, each once
    final = assert_never_twice(events)
    assert final == busy
    per_incident = defaultdict(list)
    for uid, incident in busy.items():
        per_incident[incident].append(uid)
    for incident in automatic:  # an automatic incident never holds more than its plan
        kinds = Counter(uid.split("-")[0] for uid in per_incident.get(incident, []))
        assert all(n <= 1 for n in kinds.values()), (incident, kinds)
