"""`make demo`: a demo city on the running embedded default (`make up` first), then the Bund drill.

1. Every service must answer /readyz (else: run `make up`).
2. The exercise data of earlier drills is purged (live data untouched), so the demo can run again.
3. A demo city is loaded as exercise data through the operator API, as operators would enter it:
   exercise units in eight districts (dispatch), the catalogue and four district depots with stock
   (resource-stockpile-seed), ten shelters (shelter-registry-seed).
4. `ecs drill run bund --speed 20` runs the Bund crowd-crush drill with live progress and prints
   where its after-action report is (var/drills/).

    .venv/bin/python deploy/local/demo.py [--speed 20] [--scenario bund]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import httpx

from ecs.auth import TokenVerifier
from ecs.cli import config
from ecs.drill.runner import purge_exercise
from resource_stockpile import seed as stockpile_seed
from shelter_registry import seed as shelter_seed

ROOT = Path(__file__).resolve().parents[2]

# (district, lat, lon) in WGS-84: where the demo city's exercise units are based.
DISTRICTS = [
    ("huangpu", 31.2317, 121.4846),
    ("jingan", 31.2290, 121.4480),
    ("xuhui", 31.1885, 121.4365),
    ("changning", 31.2204, 121.4246),
    ("putuo", 31.2496, 121.3972),
    ("hongkou", 31.2646, 121.5056),
    ("yangpu", 31.2596, 121.5260),
    ("pudong", 31.2215, 121.5447),
]
UNIT_TYPES = ("patrol_car", "ambulance", "fire_engine", "traffic_police_car")


def demo_units() -> list[dict[str, object]]:
    """Two exercise units of each common type in each district, at its centre."""
    return [
        {
            "id": f"demo-{district}-{unit_type.replace('_', '-')}-{n}",
            "unit_type": unit_type,
            "home_station": f"demo-station-{district}",
            "district": district,
            "location": {"lat": lat + 0.002 * n, "lon": lon},
            "exercise": True,
        }
        for district, lat, lon in DISTRICTS
        for unit_type in UNIT_TYPES
        for n in (1, 2)
    ]


async def ready(urls: dict[str, str]) -> list[str]:
    """The services that do not answer /readyz."""
    down = []
    async with httpx.AsyncClient(timeout=5) as http:
        for name, url in urls.items():
            try:
                if (await http.get(f"{url}/readyz")).status_code != 200:
                    down.append(f"{name} ({url})")
            except httpx.HTTPError:
                down.append(f"{name} ({url})")
    return down


async def load_city(commander: str, drill_runner: str) -> None:
    from ecs.drill.cli import _endpoints

    endpoints = _endpoints()
    async with httpx.AsyncClient(timeout=60) as http:
        purged = await purge_exercise(http, endpoints, {"Authorization": f"Bearer {drill_runner}"})
        problems = {k: v["error"] for k, v in purged.items() if isinstance(v, dict) and "error" in v}
        if problems:
            raise RuntimeError(f"purging earlier drills failed: {problems}")
        print("  earlier exercise data purged (live data untouched)")
        r = await http.post(
            f"{endpoints.dispatch}/v1/units:batch",
            json={"units": demo_units()},
            headers={"Authorization": f"Bearer {commander}"},
        )
        if r.status_code != 201:
            raise RuntimeError(f"dispatch refused the demo units: {r.status_code} {r.text[:300]}")
        print(f"  {len(demo_units())} exercise units in {len(DISTRICTS)} districts")
    lines = await asyncio.to_thread(stockpile_seed.seed, endpoints.stockpile, commander)
    print(f"  resource-stockpile: {len(lines)} catalogue items, depots and receipts")
    lines = await asyncio.to_thread(shelter_seed.seed, endpoints.shelter, commander)
    print(f"  shelter-registry: {len(lines)} shelters")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--speed", type=float, default=20.0, help="scenario seconds per real second (default 20)")
    parser.add_argument("--scenario", default="bund", help="a shipped scenario or a file (default bund)")
    args = parser.parse_args()
    urls = {
        name: config.service_url(key)
        for key, name in (
            ("intake", "incident-intake"),
            ("dispatch", "dispatch"),
            ("stockpile", "resource-stockpile"),
            ("shelter", "shelter-registry"),
            ("notification", "public-notification"),
        )
    }
    down = asyncio.run(ready(urls))
    if down:
        print(f"not running: {', '.join(down)}. Start the system with 'make up' first.", file=sys.stderr)
        return 1
    secret = config.local_auth_secret()
    if not secret:
        print("var/auth_secret is missing: run 'make up' first", file=sys.stderr)
        return 1
    verifier = TokenVerifier(secret)
    commander = verifier.issue("demo-commander", ["commander"], 3600)
    drill_runner = verifier.issue("drill-runner-a", ["drill_runner"], 3600)
    print("loading the demo city (exercise data):")
    try:
        asyncio.run(load_city(commander, drill_runner))
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"the demo city could not be loaded: {exc}", file=sys.stderr)
        return 1
    ecs = Path(sys.executable).parent / "ecs"
    print(f"running the drill '{args.scenario}' at speed {args.speed:g} (Ctrl-C stops it and still writes the report):")
    return subprocess.call([str(ecs), "drill", "run", args.scenario, "--speed", str(args.speed)], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
