"""From ``incident.stage.changed`` (to isolation) to dispatch's assignment events published: 200
incidents verified within 10 s, 10,000 units in 50 districts, dispatch as a real process on
PostgreSQL.

Run: python tests/bench/bench_dispatch_automation.py [--quick]      (make bench runs it)

The bench plays incident-intake: it publishes one ``incident.stage.changed`` per incident (a city's
category mix, levels I-IV, minimum cover 1 per district) evenly over 10 s, and listens to what
dispatch publishes. An incident's latency runs from just before its event was published to the
arrival of the last of its ``dispatch.unit.assigned`` events and of its ``dispatch.incident.settled``
(which leaves in the same transaction, after the assignments). The raw ceilings, measured on the
same broker and database in the same run: JetStream publish-to-ack at the same rate, and one
PostgreSQL transaction (insert + commit) round trip. Target (issue 3): p99 at most 200 ms;
dispatch's RSS under 250 MB throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402

from dispatch.domain import UnitType  # noqa: E402
from ecs.auth import TokenVerifier  # noqa: E402
from ecs.bus import msg_id_headers  # noqa: E402
from ecs.contracts import StageChanged  # noqa: E402
from ecs.envelope import make_event  # noqa: E402
from tests.bench._common import (  # noqa: E402
    AUTH_SECRET,
    CATEGORY_MIX,
    Stack,
    connect,
    heading,
    jetstream_latency_ceiling,
    lag_rows,
    main,
    percentile,
    row,
    scrape,
    start_stack,
    verdict,
)

UNITS, DISTRICTS = 10_000, 50
CENTRE = (31.2304, 121.4737)
CITY_KM = 50.0  # 10 x 5 districts of 5 km x 10 km
KM_LAT = 1 / 111.195
KM_LON = KM_LAT / math.cos(math.radians(CENTRE[0]))
MIX = {
    UnitType.PATROL_CAR: 30,
    UnitType.AMBULANCE: 18,
    UnitType.FIRE_ENGINE: 15,
    UnitType.TRAFFIC_POLICE_CAR: 10,
    UnitType.LADDER_TRUCK: 4,
    UnitType.WATER_TANKER: 4,
    UnitType.RESCUE_TEAM: 4,
    UnitType.UTILITY_CREW: 4,
    UnitType.SPECIAL_POLICE_TEAM: 3,
    UnitType.COMMAND_VEHICLE: 2.5,
    UnitType.HAZMAT_TEAM: 1.5,
    UnitType.HEAVY_RESCUE_TEAM: 1.5,
    UnitType.WATER_RESCUE_TEAM: 1.5,
    UnitType.DECONTAMINATION_UNIT: 1,
}
INCIDENTS, QUICK_INCIDENTS = 200, 40
WINDOW_S = 10.0
TARGET_P99_MS = 200.0


def city_units(rng: random.Random, n: int = UNITS) -> list[dict[str, Any]]:
    """Units clustered around their district's stations, the type mix of a big city."""
    types, weights = list(MIX), list(MIX.values())
    units = []
    for i in range(n):
        d = rng.randrange(DISTRICTS)
        col, line = d % 10, d // 10
        x = (col + rng.choice((0.25, 0.5, 0.75))) * 5.0 + rng.gauss(0, 1.0)
        y = (line + rng.choice((0.25, 0.5, 0.75))) * 10.0 + rng.gauss(0, 1.5)
        lat, lon = city_point(x, y)
        units.append(
            {
                "id": f"u{i:05d}",
                "unit_type": rng.choices(types, weights)[0].value,
                "home_station": f"station-{d:02d}-{rng.randrange(3)}",
                "district": f"district-{d:02d}",
                "location": {"lat": round(lat, 6), "lon": round(lon, 6)},
            }
        )
    return units


def city_point(x_km: float, y_km: float) -> tuple[float, float]:
    x_km, y_km = min(max(x_km, 0.0), CITY_KM), min(max(y_km, 0.0), CITY_KM)
    return CENTRE[0] + (y_km - CITY_KM / 2) * KM_LAT, CENTRE[1] + (x_km - CITY_KM / 2) * KM_LON


def operator_token() -> dict[str, str]:
    token = TokenVerifier(AUTH_SECRET).issue("bench", ["dispatcher", "commander"])
    return {"Authorization": f"Bearer {token}"}


async def register(stack: Stack, units: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=stack.service.url, headers=operator_token(), timeout=120) as api:
        for i in range(0, len(units), 1000):
            r = await api.post("/v1/units:batch", json={"units": units[i : i + 1000]})
            r.raise_for_status()
        # Every replica's index holds them once the refresh has run.
        await asyncio.sleep(1.0)
    return time.perf_counter() - started


async def postgres_commit_latency(dsn: str, n: int = 200) -> list[float]:
    """One small transaction, as the automation runs per incident: insert one row, commit (ms)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_commit (id bigserial PRIMARY KEY, incident text, at timestamptz)")
        out = []
        for i in range(n):
            t = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_commit (incident, at) VALUES ($1, now())", f"i{i}")
            out.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.005)
        await conn.execute("DROP TABLE bench_commit")
        return sorted(out)
    finally:
        await conn.close()


async def metrics(stack: Stack) -> str:
    async with httpx.AsyncClient(base_url=stack.service.url, timeout=10) as client:
        return (await client.get("/metrics")).text


# --- the run ----------------------------------------------------------------------------------


def stage_changed(incident_id: str, rng: random.Random) -> Any:
    names, weights = list(CATEGORY_MIX), list(CATEGORY_MIX.values())
    lat, lon = city_point(rng.uniform(0, CITY_KM), rng.uniform(0, CITY_KM))
    data = StageChanged(
        incident_id=incident_id,
        from_stage="reported",
        to_stage="isolation",
        actor="dispatcher-1",
        version=3,
        category=rng.choices(names, weights)[0],
        level=rng.choices([1, 2, 3, 4], [1, 3, 6, 10])[0],
        lat=lat,
        lon=lon,
    )
    return make_event("incident.stage.changed", data, source="incident-intake", incident_id=incident_id)


async def run(quick: bool) -> None:
    n = QUICK_INCIDENTS if quick else INCIDENTS
    heading(
        f"dispatch, stage-driven automation: {n} incidents to isolation within {WINDOW_S:.0f} s, "
        f"{UNITS:,} units in {DISTRICTS} districts, PostgreSQL",
        quick,
    )
    stack = await start_stack("dispatch")
    nc, js = await connect(stack.nats.url)
    try:
        rng = random.Random(20_141_231)
        took = await register(stack, city_units(rng))
        row("units registered through the API", f"{UNITS:,}", f"{took:,.1f} s ({UNITS / took:,.0f} /s)")

        payload = [stage_changed("ceiling", rng).to_bytes()]
        js_lat = await jetstream_latency_ceiling(js, payload, n / WINDOW_S, min(WINDOW_S, 5.0))
        pg_lat = await postgres_commit_latency(stack.dsn)

        sent: dict[str, float] = {}
        last_assigned: dict[str, float] = {}
        settled: dict[str, float] = {}
        assigned: Counter[str] = Counter()
        all_settled = asyncio.Event()

        async def on_event(msg: Any) -> None:
            now = time.perf_counter()
            env = orjson.loads(msg.data)
            incident = env["incident_id"]
            if msg.subject == "dispatch.unit.assigned":
                last_assigned[incident] = now
                assigned[incident] += 1
            elif msg.subject == "dispatch.incident.settled":
                settled.setdefault(incident, now)
                if len(settled) >= n:
                    all_settled.set()

        await nc.subscribe("dispatch.unit.assigned", cb=on_event)
        await nc.subscribe("dispatch.incident.settled", cb=on_event)
        before = await metrics(stack)

        events = [stage_changed(f"bench{i:05d}", rng) for i in range(n)]
        start = time.perf_counter()
        for i, env in enumerate(events):
            delay = start + i * WINDOW_S / n - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[env.incident_id] = time.perf_counter()
            await js.publish(env.type, env.to_bytes(), headers=msg_id_headers(env.id))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_settled.wait(), timeout=60)
        await asyncio.sleep(0.5)
        after = await metrics(stack)

        # Every incident is a sample: one that never settled within the wait counts as infinitely
        # late, so losing half of them cannot leave a fast p99 behind.
        lags = sorted(
            (max(settled[i], last_assigned.get(i, 0.0)) - sent[i]) * 1000 if i in settled else math.inf for i in sent
        )
        units = sum(assigned.values())
        row("raw ceiling: JetStream publish -> ack p50", f"{percentile(js_lat, 50):,.1f} ms", "same broker, same rate")
        row("raw ceiling: JetStream publish -> ack p99", f"{percentile(js_lat, 99):,.1f} ms")
        row("raw ceiling: PostgreSQL insert + commit p50", f"{percentile(pg_lat, 50):,.1f} ms", "one row, asyncpg")
        row("raw ceiling: PostgreSQL insert + commit p99", f"{percentile(pg_lat, 99):,.1f} ms")
        row(
            "incidents dispatched",
            f"{len(settled):,} of {n:,}",
            f"{units:,} units assigned; all of them: {verdict(len(settled) == n, quick, 'every incident dispatched')}",
        )
        lag_rows("stage.changed -> assignments published", lags, None if quick else TARGET_P99_MS)
        if lags:
            row(
                "p99 / (JetStream p99 + PostgreSQL p99)",
                f"{percentile(lags, 99) / (percentile(js_lat, 99) + percentile(pg_lat, 99)):.1f}",
            )
        count = scrape(after, "dispatch_automation_seconds_count") - scrape(before, "dispatch_automation_seconds_count")
        if count:
            mean = scrape(after, "dispatch_automation_seconds_sum") - scrape(before, "dispatch_automation_seconds_sum")
            row(
                "automation transaction (lock to commit), mean",
                f"{mean / count * 1000:,.1f} ms",
                f"{count:,.0f} events",
            )
        short = scrape(after, "dispatch_shortfalls_total") - scrape(before, "dispatch_shortfalls_total")
        row("requirements short of units (cover kept)", f"{short:,.0f}")
        stack.print_memory()
    finally:
        await nc.close()
        await stack.close()


if __name__ == "__main__":
    main(run, __doc__)
