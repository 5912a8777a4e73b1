"""Recommendation among 10,000 units in 50 districts, in-process.

Run: PYTHONPATH=libs/src:services/dispatch/src python tests/bench/bench_recommend.py

Prints p50/p99/max of one recommendation next to the raw ceiling measured in the same run:
one brute-force pass computing the haversine distance to every unit. Target (issue 3): p99 <= 5 ms.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT, ROOT / "libs" / "src", ROOT / "services" / "dispatch" / "src"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from dispatch.domain import UnitIndex, UnitStatus, UnitType, UnitView  # noqa: E402
from ecs.geo import haversine_m  # noqa: E402
from tests.bench._common import exit_on_unmet, verdict  # noqa: E402

UNITS = 10_000
DISTRICTS = 50
RUNS = 2_000
CENTRE = (31.2304, 121.4737)
CITY_KM = 50.0  # a square city, 10 x 5 districts of 5 km x 10 km
REQUIREMENT = {UnitType.FIRE_ENGINE: 4, UnitType.LADDER_TRUCK: 2, UnitType.AMBULANCE: 3, UnitType.PATROL_CAR: 4}
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
KM_LAT = 1 / 111.195
KM_LON = KM_LAT / math.cos(math.radians(CENTRE[0]))


def point(rng: random.Random, x_km: float, y_km: float) -> tuple[float, float]:
    return CENTRE[0] + (y_km - CITY_KM / 2) * KM_LAT, CENTRE[1] + (x_km - CITY_KM / 2) * KM_LON


def build_units(rng: random.Random) -> list[UnitView]:
    types = list(MIX)
    weights = [MIX[t] for t in types]
    units = []
    for i in range(UNITS):
        d = rng.randrange(DISTRICTS)
        col, row = d % 10, d // 10
        # Units sit near their district's stations, so they cluster rather than spread evenly.
        station_x = (col + rng.choice((0.25, 0.5, 0.75))) * 5.0
        station_y = (row + rng.choice((0.25, 0.5, 0.75))) * 10.0
        lat, lon = point(rng, station_x + rng.gauss(0, 1.0), station_y + rng.gauss(0, 1.5))
        unit_type = rng.choices(types, weights)[0]
        status = UnitStatus.AVAILABLE if rng.random() < 0.8 else rng.choice(list(UnitStatus))
        units.append(
            UnitView(
                id=f"unit-{i:05d}",
                agency=unit_type.agency,
                unit_type=unit_type,
                capabilities=frozenset(),
                district=f"district-{d:02d}",
                lat=lat,
                lon=lon,
                status=status,
                exercise=rng.random() < 0.05,
            )
        )
    return units


def percentile(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, math.ceil(p / 100 * len(sorted_ms)) - 1)]


def main() -> None:
    rng = random.Random(20141231)
    units = build_units(rng)

    t0 = time.perf_counter_ns()
    index = UnitIndex()
    for u in units:
        index.upsert(u)
    build_ms = (time.perf_counter_ns() - t0) / 1e6

    incidents = []
    for _ in range(RUNS):
        lat, lon = point(rng, rng.uniform(0, CITY_KM), rng.uniform(0, CITY_KM))
        level = rng.choices([1, 2, 3, 4], [1, 3, 6, 10])[0]
        incidents.append((lat, lon, level, rng.random() < 0.05))

    for lat, lon, level, exercise in incidents[:100]:  # warm up
        index.recommend(REQUIREMENT, lat, lon, level, exercise, min_cover=1)

    samples = []
    shortfalls = 0
    for lat, lon, level, exercise in incidents:
        t = time.perf_counter_ns()
        result = index.recommend(REQUIREMENT, lat, lon, level, exercise, min_cover=1)
        samples.append((time.perf_counter_ns() - t) / 1e6)
        shortfalls += not result.complete
    samples.sort()

    # The raw ceiling: one pass of haversine over every unit, what a brute-force ranking costs
    # before it even sorts or applies a rule.
    ceiling = []
    coords = [(u.lat, u.lon) for u in units]
    for lat, lon, _, _ in incidents[:200]:
        t = time.perf_counter_ns()
        for ulat, ulon in coords:
            haversine_m(ulat, ulon, lat, lon)
        ceiling.append((time.perf_counter_ns() - t) / 1e6)
    ceiling_ms = statistics.median(ceiling)

    # Location feed: moving an available unit re-files it in the index.
    moves = [
        UnitView(
            u.id, u.agency, u.unit_type, u.capabilities, u.district, u.lat + 0.001, u.lon - 0.001, u.status, u.exercise
        )
        for u in units
    ]
    t = time.perf_counter_ns()
    for u in moves:
        index.upsert(u)
    upsert_s = (time.perf_counter_ns() - t) / 1e9

    p50, p99, worst = percentile(samples, 50), percentile(samples, 99), samples[-1]
    requirement = ", ".join(f"{n} {t}" for t, n in REQUIREMENT.items())
    print(f"recommendation among {UNITS:,} units in {DISTRICTS} districts ({RUNS:,} runs; {requirement})")
    print(f"  index build            {build_ms:8.1f} ms")
    print(f"  recommend p50          {p50:8.3f} ms")
    print(f"  recommend p99          {p99:8.3f} ms   target <= 5 ms: {verdict(p99 <= 5.0, what='recommend p99')}")
    print(f"  recommend max          {worst:8.3f} ms")
    print(f"  ceiling: haversine x {UNITS:,} (one pass, median of 200) {ceiling_ms:8.3f} ms")
    print(f"  p99 / ceiling          {p99 / ceiling_ms:8.3f}")
    print(f"  incomplete (shortfall) {shortfalls} of {RUNS}")
    print(f"  location updates       {len(moves) / upsert_s:10,.0f} /s into the index")


if __name__ == "__main__":
    main()
    exit_on_unmet()
