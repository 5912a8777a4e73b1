"""The Bund drill at speed 20 against all five services as real processes on the embedded default
(SQLite files, a nats-server of its own): the time from start to the written after-action report,
and the runner's own overhead beside the system's work.

Run: python tests/bench/bench_drill.py [--quick]      (make bench runs it)

Target (issue 13): the Bund scenario at speed 20 completes, scored and reported, in under 3 minutes.
The raw ceiling, from the same run: the scenario clock's own floor, the last inject's scenario time
divided by the speed (no runner and no system can finish sooner). Overhead: the CPU seconds the
runner used (this process) against the CPU seconds of the five services, and the events a second
the runner took in against the events the services produced (the messages their streams gained).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import nats  # noqa: E402

from ecs.auth import TokenVerifier  # noqa: E402
from ecs.drill.runner import Credentials, DrillRunner, Endpoints  # noqa: E402
from ecs.drill.scenario import read_scenario  # noqa: E402
from ecs.testing import TEST_GATEWAYS, NatsServer, ServiceProcess, console_script, free_port, nats_identity  # noqa: E402
from resource_stockpile.seed import catalogue  # noqa: E402
from tests.bench._common import AUTH_SECRET, heading, main, row, verdict  # noqa: E402

TARGET_S = 180.0
SPEED = 20.0
SERVICES = (
    ("incident-intake", "INTAKE_"),
    ("dispatch", "DISPATCH_"),
    ("resource-stockpile", "STOCKPILE_"),
    ("shelter-registry", "SHELTER_"),
    ("public-notification", "NOTIFICATION_"),
)
GATEWAY_ID = TEST_GATEWAYS[0]
GATEWAY_SECRET = "gw-bench-drill-secret-0123456789"
PARTICIPANTS = '["dispatch", "resource-stockpile", "shelter-registry", "public-notification"]'


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def stream_messages(url: str) -> int:
    """Messages the JetStream streams hold (every event the services produced so far)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return sum(s.state.messages for s in await js.streams_info())
    finally:
        await nc.close()


async def run(quick: bool) -> None:
    speed = 200.0 if quick else SPEED
    heading(f"Bund drill at speed {speed:g} against five services (SQLite, processes)", quick)
    workdir = Path(tempfile.mkdtemp(prefix="ecs-bench-drill-"))
    server = NatsServer(workdir / "nats").start()
    procs: list[ServiceProcess] = []
    try:
        gateways = workdir / "gateways.json"
        gateways.write_text(json.dumps({"gateways": {GATEWAY_ID: {"secret": GATEWAY_SECRET}}}))
        for script, prefix in SERVICES:
            port = free_port()
            env = {
                f"{prefix}DATABASE_URL": f"sqlite:///{workdir / (script + '.db')}",
                f"{prefix}NATS_URL": server.bare_url,
                f"{prefix}HTTP_PORT": str(port),
                f"{prefix}AUTH_SECRET": AUTH_SECRET,
                f"{prefix}LOG_LEVEL": "WARNING",
                **nats_identity(prefix, script),
            }
            if script == "incident-intake":
                env |= {f"{prefix}GATEWAYS_FILE": str(gateways), f"{prefix}REQUIRED_PARTICIPANTS": PARTICIPANTS}
            if script == "public-notification":
                env[f"{prefix}CHANNEL_OUTBOX"] = str(workdir / "channel-outbox")
            procs.append(ServiceProcess([console_script(script)], env, port, workdir / f"{script}.log"))
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        endpoints = Endpoints(*(p.url for p in procs))
        officer = TokenVerifier(AUTH_SECRET).issue("bench", ["supply_officer"])
        async with httpx.AsyncClient(timeout=60) as http:
            r = await http.post(
                f"{endpoints.stockpile}/v1/items",
                json={"items": catalogue()},
                headers={"Authorization": f"Bearer {officer}"},
            )
            assert r.status_code == 201, r.text
        scenario, path = read_scenario("bund")
        creds = Credentials.signed(AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET, server.observer_url)
        floor_s = max(i.at for i in scenario.msel) / speed
        services_cpu0 = sum(cpu_s(p.proc.pid) for p in procs if p.proc)
        events0 = await stream_messages(server.url)
        cpu0, t0 = time.process_time(), time.monotonic()
        result = await DrillRunner(scenario, str(path), endpoints, creds, speed, workdir / "report").run()
        elapsed = time.monotonic() - t0
        runner_cpu = time.process_time() - cpu0
        services_cpu = sum(cpu_s(p.proc.pid) for p in procs if p.proc) - services_cpu0
        produced = await stream_messages(server.url) - events0
        received = result["counts"]["events_received"]
        ok = result["status"] == "completed" and elapsed < TARGET_S
        row("drill status", result["status"], result.get("reason") or "")
        row("injects done", f"{result['counts']['injects_done']}/{len(scenario.msel)}")
        row(
            "start to written report",
            f"{elapsed:.1f} s",
            f"target < {TARGET_S:.0f} s: {verdict(ok, quick, 'Bund drill time')}",
        )
        row("raw ceiling: last inject / speed", f"{floor_s:.1f} s", "the scenario clock's own floor")
        row("runner CPU", f"{runner_cpu:.1f} s", f"{100 * runner_cpu / max(elapsed, 1e-9):.1f}% of one core")
        row(
            "five services' CPU", f"{services_cpu:.1f} s", f"runner/system = {runner_cpu / max(services_cpu, 1e-9):.2f}"
        )
        row("events produced (stream messages)", f"{produced}", f"{produced / elapsed:.1f}/s")
        row("events taken in by the runner", f"{received}", f"{received / elapsed:.1f}/s")
        ratings = " ".join(f"{o['id']}={o['rating']}" for o in result["objectives"])
        row("objective ratings", ratings)
        print_objectives(workdir / "report")
    finally:
        for p in procs:
            p.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def print_objectives(folder: Path) -> None:
    """The after-action report's objective table (targets, measurements, ratings), as written."""
    found = sorted(folder.rglob("report.md"))
    if not found:
        print("  (no report.md written)")
        return
    lines = found[0].read_text().splitlines()
    start = next((n for n, line in enumerate(lines) if line.startswith("#") and "Objectives" in line), None)
    if start is None:
        return
    end = next((n for n in range(start + 1, len(lines)) if lines[n].startswith("#")), len(lines))
    print("\n".join(lines[start:end]).rstrip())


if __name__ == "__main__":
    main(run, __doc__)
