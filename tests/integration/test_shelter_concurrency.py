"""No shelter ever holds more people than its capacity, whoever races for the last places: shelter
managers against each other, batches against single households, two replicas as processes. Against
PostgreSQL, where the transactions really run side by side; the database's CHECK is the last word."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ecs.db import Database
from shelter_registry import store
from shelter_registry.domain import HOLDS_PLACE
from tests.integration import test_shelter_service as service
from tests.integration.test_shelter_service import CENTRE, Registry, auth, shelter

shelter_app = service.shelter_app

HOLDING = sorted(s.value for s in HOLDS_PLACE)


def one(name: str) -> dict[str, Any]:
    return {"near": {"lat": CENTRE[0], "lon": CENTRE[1]}, "household": {"persons": [{"name": name}]}}


async def left_over(database_url: str) -> list[tuple[int, int, int]]:
    """What each shelter can still take: (people, accessible places, pet places)."""
    db = Database(database_url)
    s = store.shelters.c
    try:
        async with db.engine.connect() as conn:
            q = select(s.capacity - s.occupied, s.accessible_places - s.accessible_used, s.pet_places - s.pets_used)
            return [tuple(r) for r in (await conn.execute(q)).all()]  # type: ignore[misc]
    finally:
        await db.dispose()


def assert_nobody_refused_while_room_was_left(refused: list[tuple[int, int, int]], room: list[tuple[int, int, int]]):
    for people, wheelchairs, pets in refused:
        fits = [r for r in room if r[0] >= people and r[1] >= wheelchairs and r[2] >= pets]
        assert not fits, f"a household of {people} ({wheelchairs} wheelchairs, {pets} pets) was refused; room: {fits}"


async def audit(database_url: str) -> dict[str, tuple[int, int, int]]:
    """Per shelter: (capacity, occupied counter, people its registrations hold): the counter must
    equal what the registrations hold and never exceed the capacity."""
    db = Database(database_url)
    s, r = store.shelters.c, store.registrations.c
    try:
        async with db.engine.connect() as conn:
            held = dict(
                (
                    await conn.execute(
                        select(r.shelter_id, func.sum(r.people)).where(r.status.in_(HOLDING)).group_by(r.shelter_id)
                    )
                ).all()
            )
            rows = (await conn.execute(select(s.id, s.capacity, s.occupied))).all()
    finally:
        await db.dispose()
    return {sid: (cap, occ, int(held.get(sid, 0))) for sid, cap, occ in rows}


def assert_never_over(found: dict[str, tuple[int, int, int]]) -> int:
    for sid, (capacity, occupied, held) in found.items():
        assert occupied == held, f"{sid}: counter {occupied}, registrations hold {held}"
        assert occupied <= capacity, f"{sid}: {occupied} people in {capacity} places"
    return sum(occ for _, occ, _ in found.values())


async def test_managers_racing_for_the_last_places_never_overfill_a_shelter(shelter_app, pg_url):
    async with shelter_app(pg_url) as (_, client, bus):
        registry = Registry(client, bus)
        await registry.open(shelter("S1", 1, area_m2=15, accessible_places=0, pet_places=0))  # 10 places
        answers = await asyncio.gather(
            *(registry.post("/v1/allocations", one(f"p{i}"), subject=f"manager-{i % 5}") for i in range(40))
        )
        codes = sorted(a.status_code for a in answers)
        assert codes.count(201) == 10 and codes.count(409) == 30, codes
        assert all(a.json()["largest_household"] == 0 for a in answers if a.status_code == 409)
    assert assert_never_over(await audit(pg_url)) == 10


async def test_batches_and_households_racing_across_shelters_stay_within_capacity_and_whole(shelter_app, pg_url):
    async with shelter_app(pg_url) as (_, client, bus):
        registry = Registry(client, bus)
        await registry.open(
            *(shelter(f"S{i}", 0.3 * i, area_m2=30, accessible_places=4, pet_places=2) for i in range(5))
        )
        near = {"lat": CENTRE[0], "lon": CENTRE[1]}

        def batch(tag: str) -> dict[str, Any]:
            households = [
                {"ref": f"{tag}-{i}", "people": 1 + i % 4, "wheelchairs": int(i % 3 == 0), "pets": int(i % 5 == 0)}
                for i in range(25)
            ]
            return {"near": near, "households": households}

        batches = [batch(f"b{n}") for n in range(4)]
        answers = await asyncio.gather(
            *(registry.post("/v1/allocations:batch", b, subject=f"m{n}") for n, b in enumerate(batches)),
            *(registry.post("/v1/allocations", one(f"single-{i}")) for i in range(20)),
        )
        assert all(a.status_code in (201, 409) for a in answers), [a.text for a in answers if a.status_code >= 500]
    refused = [
        (h["people"], int(h["wheelchairs"]), int(h["pets"]))
        for b, a in zip(batches, answers, strict=False)
        for h, where in zip(b["households"], a.json()["placed"], strict=True)
        if where is None
    ]
    refused += [(1, 0, 0) for a in answers[len(batches) :] if a.status_code == 409]
    assert_never_over(await audit(pg_url))
    assert_nobody_refused_while_room_was_left(refused, await left_over(pg_url))


async def test_checking_out_twice_at_once_gives_the_places_back_once(shelter_app, pg_url):
    async with shelter_app(pg_url) as (_, client, bus):
        registry = Registry(client, bus)
        await registry.open(shelter("S1", 1))
        reg = await registry.ok("/v1/allocations", one("p"))
        await registry.ok(f"/v1/registrations/{reg['id']}/check-in", {}, 200)
        answers = await asyncio.gather(
            *(registry.post(f"/v1/registrations/{reg['id']}/check-out", {}) for _ in range(6))
        )
        assert sorted(a.status_code for a in answers) == [200] + [409] * 5
        assert (await registry.shelter("S1"))["occupied"] == 0
    assert_never_over(await audit(pg_url))


async def test_the_database_itself_refuses_an_over_claim(shelter_app, pg_url):
    async with shelter_app(pg_url) as (_, client, bus):
        await Registry(client, bus).open(shelter("S1", 1, area_m2=15, accessible_places=0, pet_places=0))
    db = Database(pg_url)
    try:
        for values in ({"occupied": 11}, {"occupied": -1}, {"pets_used": 1}, {"status": "closed", "occupied": 1}):
            with pytest.raises(IntegrityError):
                async with db.engine.begin() as conn:
                    await conn.execute(update(store.shelters).where(store.shelters.c.id == "S1").values(**values))
    finally:
        await db.dispose()


async def test_two_replicas_placing_at_once_never_overfill_a_shelter(service_factory, pg_url):
    replicas = [service_factory("shelter-registry", "SHELTER_", pg_url) for _ in range(2)]
    async with (
        httpx.AsyncClient(base_url=replicas[0].url, timeout=60) as a,
        httpx.AsyncClient(base_url=replicas[1].url, timeout=60) as b,
    ):
        first = Registry(a, None)  # type: ignore[arg-type]
        await first.open(*(shelter(f"S{i}", 0.5 * i, area_m2=45, accessible_places=3, pet_places=3) for i in range(4)))
        near = {"lat": CENTRE[0], "lon": CENTRE[1]}

        async def place(client: httpx.AsyncClient, tag: str) -> httpx.Response:
            households = [{"ref": f"{tag}-{i}", "people": 1 + i % 3} for i in range(40)]
            body = {"near": near, "households": households}
            return await client.post("/v1/allocations:batch", json=body, headers=auth(subject=tag))

        answers = await asyncio.gather(
            *(place(a if n % 2 else b, f"r{n}") for n in range(6)),
            *((a if i % 2 else b).post("/v1/allocations", json=one(f"s{i}"), headers=auth()) for i in range(30)),
        )
        assert all(r.status_code in (201, 409) for r in answers), [r.text for r in answers if r.status_code >= 500]
    placed = assert_never_over(await audit(pg_url))
    assert placed == 120  # 4 × 30 places, every one taken once and none twice
