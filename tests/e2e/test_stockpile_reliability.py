"""resource-stockpile as a real process on PostgreSQL, under 1,000 concurrent reservations, issues
and returns: killed with SIGKILL mid-run and restarted, or with every database connection cut
mid-run (what a PostgreSQL restart does to it). Then counted: no balance negative, what is
reserved on every stock line is what the reservations hold, the ledger replays to every balance,
every answered reservation is there, and no request took effect twice."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from ecs.bus import Bus
from ecs.contracts import IncidentCreated
from ecs.envelope import make_event
from ecs.testing import ServiceProcess, eventually
from tests.integration.test_stockpile_service import CENTRE, ITEMS, depot

WORKERS = 20
ROUNDS = 20  # each a reservation, and for most an issue and a return: about 1,000 requests
DEPOTS = 10
PER_DEPOT = 40
TERMINATE = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"


@dataclass
class Tally:
    """What the clients saw."""

    done: int = 0
    reserved_ids: set[int] = field(default_factory=set)
    reserve_keys: int = 0
    unknown: int = 0  # the service died holding the request: it took effect once or not at all


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def post(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response | None:
    """POST with an Idempotency-Key, again and again through a restart or a lost database, until
    the service answers; None when it died holding the request (the key stays "in progress")."""
    key = {"Idempotency-Key": uuid.uuid4().hex}
    while True:
        try:
            r = await client.post(path, json=body, headers={**headers, **key})
        except httpx.TransportError:
            await asyncio.sleep(0.05)  # the service is restarting
            continue
        if r.status_code in (500, 502, 503):
            await asyncio.sleep(0.05)
            continue
        if r.status_code == 409 and r.json().get("type", "").endswith(":idempotency_in_progress"):
            return None
        return r


async def workload(client: httpx.AsyncClient, incidents: list[str], headers: dict[str, str], tally: Tally) -> None:
    rng = random.Random(11)

    async def worker(n: int) -> None:
        for _ in range(ROUNDS):
            incident = incidents[rng.randrange(len(incidents))]
            want = {"item": "stretcher", "quantity": rng.randint(1, 4)}
            tally.reserve_keys += 1
            r = await post(client, f"/v1/incidents/{incident}/reservations", want, headers)
            tally.done += 1
            if r is None:
                tally.unknown += 1
                continue
            assert r.status_code == 201, r.text
            body = r.json()
            tally.reserved_ids.add(body["id"])
            if body["reserved"] and rng.random() < 0.75:
                for action in ("issue", "return"):
                    r = await post(client, f"/v1/reservations/{body['id']}/{action}", {"quantity": 1}, headers)
                    tally.done += 1
                    if r is None:
                        tally.unknown += 1
                        break
                    assert r.status_code in (200, 409), r.text  # 409: nothing out to return after an unknown issue

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))


async def prepare(proc: ServiceProcess, bus: Bus, headers: dict[str, str]) -> list[str]:
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
        assert (await client.post("/v1/items", json={"items": ITEMS}, headers=headers)).status_code == 201
        depots = [depot(f"D{i:02d}", 0.5 + i * 0.8) for i in range(DEPOTS)]
        assert (await client.post("/v1/depots", json={"depots": depots}, headers=headers)).status_code == 201
        for d in depots:
            body = {"depot_id": d["id"], "lines": [{"item": "stretcher", "lot": f"{d['id']}-1", "quantity": PER_DEPOT}]}
            assert (await client.post("/v1/documents/receipts", json=body, headers=headers)).status_code == 201
        return await announce(proc, bus, headers)


async def announce(proc: ServiceProcess, bus: Bus, headers: dict[str, str], count: int = 20) -> list[str]:
    """``count`` live incidents, as incident-intake announces them; returns their ids once the
    service knows them all."""
    async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
        incidents = []
        for _ in range(count):
            incident_id = "R" + uuid.uuid4().hex[:12]
            data = IncidentCreated(
                incident_id=incident_id,
                category="crowd_crush",
                level=3,
                lat=CENTRE[0],
                lon=CENTRE[1],
                first_alarm_at=datetime.now(UTC),
                alarm_id=f"a-{incident_id}",
                gateway_id="gw",
                exercise=False,
            )
            await bus.publish_event(
                make_event("incident.created", data, source="incident-intake", incident_id=incident_id)
            )
            incidents.append(incident_id)

        async def all_known() -> bool:
            for incident_id in incidents:
                r = await client.get(f"/v1/incidents/{incident_id}/reservations", headers=headers)
                if r.status_code != 200:
                    return False
            return True

        await eventually(all_known, what="the incidents known to resource-stockpile")
        return incidents


async def check_the_books(url: str, tally: Tally) -> None:
    conn = await asyncpg.connect(dsn(url))
    try:
        assert (
            await conn.fetch("SELECT id FROM stock_lines WHERE on_hand < 0 OR reserved < 0 OR reserved > on_hand") == []
        )
        mismatched = await conn.fetch(
            "SELECT s.id FROM stock_lines s LEFT JOIN (SELECT line_id, SUM(held) h FROM allocations GROUP BY line_id) a"
            " ON a.line_id = s.id WHERE s.reserved <> COALESCE(a.h, 0)"
        )
        assert mismatched == [], "a stock line's reserved differs from what the reservations hold"
        unreplayed = await conn.fetch(
            "SELECT s.id FROM stock_lines s LEFT JOIN (SELECT line_id, SUM(delta) d FROM ledger GROUP BY line_id) l"
            " ON l.line_id = s.id WHERE s.on_hand <> COALESCE(l.d, 0)"
        )
        assert unreplayed == [], "the ledger does not replay to the balance"
        on_hand = await conn.fetchval("SELECT SUM(on_hand) FROM stock_lines")
        out, consumed = await conn.fetchrow("SELECT COALESCE(SUM(out), 0), COALESCE(SUM(consumed), 0) FROM allocations")
        assert on_hand == DEPOTS * PER_DEPOT - out - consumed, "stock left the depots without an issue"
        wrong = await conn.fetch(
            "SELECT r.id FROM reservations r JOIN allocations a ON a.reservation_id = r.id GROUP BY r.id, r.requested,"
            " r.missing HAVING SUM(a.held + a.out + a.returned + a.consumed + a.released) <> r.requested - r.missing"
        )
        assert wrong == [], "a reservation's parts do not add up to what it got"
        stored = {r["id"] for r in await conn.fetch("SELECT id FROM reservations")}
        assert tally.reserved_ids <= stored, "an answered reservation was lost"
        assert len(tally.reserved_ids) <= len(stored) <= len(tally.reserved_ids) + tally.unknown, (
            "a reservation request took effect twice"
        )
    finally:
        await conn.close()


async def run_with(
    service_factory: Any,
    nats_url: str,
    pg_url: str,
    operator_headers: Callable[..., dict[str, str]],
    disrupt: Callable[[ServiceProcess, Tally], Awaitable[None]],
) -> Tally:
    proc = service_factory("resource-stockpile", "STOCKPILE_", pg_url)
    headers = operator_headers("supply_officer")
    bus = Bus(nats_url, "test-intake")
    await bus.connect()
    tally = Tally()
    try:
        incidents = await prepare(proc, bus, headers)
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            running = asyncio.create_task(workload(client, incidents, headers, tally))
            await disrupt(proc, tally)
            await running
    finally:
        await bus.close()
    await check_the_books(pg_url, tally)
    return tally


@pytest.mark.slow
async def test_killed_mid_run_and_restarted_nothing_is_oversold_lost_or_doubled(
    service_factory, nats_private, pg_url, operator_headers
):
    async def kill_and_restart(proc: ServiceProcess, tally: Tally) -> None:
        await eventually(lambda: _at_least(tally, 250), what="the run under way", within_s=120)
        await asyncio.to_thread(proc.kill, 9)
        killed_at = tally.done
        await asyncio.to_thread(proc.start)
        assert killed_at < WORKERS * ROUNDS, "the run finished before the kill: nothing was tested"

    tally = await run_with(service_factory, nats_private.url, pg_url, operator_headers, kill_and_restart)
    assert tally.done >= WORKERS * ROUNDS


@pytest.mark.slow
async def test_database_connections_cut_mid_run_nothing_is_oversold_lost_or_doubled(
    service_factory, nats_private, pg_url, operator_headers
):
    async def cut_connections(proc: ServiceProcess, tally: Tally) -> None:
        admin = await asyncpg.connect(dsn(pg_url))
        database = pg_url.rsplit("/", 1)[1]
        cuts = 0
        try:
            await eventually(lambda: _at_least(tally, 150), what="the run under way", within_s=120)
            for _ in range(8):
                dropped = await admin.fetch(TERMINATE, database)
                cuts += bool(dropped) and tally.done < WORKERS * ROUNDS
                await asyncio.sleep(0.2)  # spacing the cuts through the run, not waiting for a result
        finally:
            await admin.close()
        assert cuts >= 3, "the connections were not cut while the run was under way"

    await run_with(service_factory, nats_private.url, pg_url, operator_headers, cut_connections)


async def _at_least(tally: Tally, n: int) -> bool:
    return tally.done >= n
