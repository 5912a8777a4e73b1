"""The HTTP path of incident-intake: signed ``POST /v1/alarms`` answered 202 (the alarm stored,
correlated and its events in the outbox, all committed before the answer).

Run: python tests/bench/bench_intake_http.py [--quick]      (make bench runs it)

Figures, each beside the raw ceiling measured in the same run:
- maximum throughput: many keep-alive connections each sending signed alarms back to back
  (closed loop); ceiling: the same client against ``/healthz`` (the HTTP stack doing nothing), and
  the PostgreSQL insert rate (asyncpg executemany into a copy of the alarms table);
- time to the 202 at an offered 500 alarms/s, open loop: each alarm is due at its slot whether or
  not earlier answers came back, and its time runs from the slot, so a stall is not hidden.

The client is a small raw HTTP/1.1 client on asyncio (uvloop), in one Python process that shares
the machine's cores with intake, nats-server and PostgreSQL: on a 2-core machine it takes CPU
from what it measures, so the throughput figure is a floor. Target (issue 2): at least 2,000
alarms/s; p99 at most 25 ms at 500 alarms/s; intake's RSS under 250 MB.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import orjson  # noqa: E402

from ecs.gateway_client import signature  # noqa: E402
from tests.bench._common import (  # noqa: E402
    GATEWAY_ID,
    GATEWAY_SECRET,
    AlarmMaker,
    Connection,
    CpuMeter,
    alarm_rows_like,
    city_scenes,
    heading,
    lag_rows,
    main,
    percentile,
    postgres_insert_ceiling,
    print_pipeline,
    row,
    start_stack,
    verdict,
)

TARGET_RATE = 2_000
OFFERED = 500
TARGET_P99_MS = 25.0
CONNECTIONS = 256
SCENES = 200
FULL = {"ceiling_s": 15, "max_s": 30, "paced_s": 30, "batch_s": 10, "pg_rows": 100_000}
QUICK = {"ceiling_s": 3, "max_s": 5, "paced_s": 5, "batch_s": 3, "pg_rows": 10_000}


def signed_post(port: int, path: str, body: bytes) -> bytes:
    ts = str(int(time.time()))
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Gateway-Id: {GATEWAY_ID}\r\nX-Timestamp: {ts}\r\nX-Signature: {signature(GATEWAY_SECRET, ts, body)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def healthz(port: int) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def closed_loop(
    port: int,
    make: Callable[[], bytes],
    connections: int,
    seconds: float,
    tally: Callable[[int, bytes], None] | None = None,
) -> tuple[dict, float]:
    """Every connection sends its next request as soon as the previous one is answered."""
    statuses: collections.Counter[int] = collections.Counter()
    end = time.perf_counter() + seconds

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            while time.perf_counter() < end:
                status, body = await conn.call(make())
                statuses[status] += 1
                if tally is not None:
                    tally(status, body)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses, time.perf_counter() - started


async def open_loop(port: int, make: Callable[[], bytes], rate: float, seconds: float) -> tuple[list[float], dict]:
    """Requests due at fixed slots; each one's time runs from its slot to its answer."""
    # uvicorn closes a keep-alive connection idle for 5 s: an idle one older than that is replaced.
    idle: collections.deque[tuple[Connection, float]] = collections.deque()
    statuses: collections.Counter[int] = collections.Counter()
    times: list[float] = []

    async def one(due: float) -> None:
        conn = None
        while idle:
            candidate, used = idle.pop()
            if time.perf_counter() - used < 3.0:
                conn = candidate
                break
            candidate.close()
        if conn is None:
            conn = await Connection.open(port)
        status, _ = await conn.call(make())
        # A refusal (401, 503, ...) is a failed alarm, not a fast one: it counts as never answered.
        times.append((time.perf_counter() - due) * 1000 if status == 202 else math.inf)
        statuses[status] += 1
        idle.append((conn, time.perf_counter()))

    for _ in range(16):
        idle.append((await Connection.open(port), time.perf_counter()))
    tasks = []
    start = time.perf_counter() + 0.05
    for i in range(int(rate * seconds)):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for conn, _ in idle:
        conn.close()
    return sorted(times), statuses


def show(statuses: dict) -> str:
    return ", ".join(f"{n:,} x {s}" for s, n in sorted(statuses.items()))


async def run(quick: bool) -> None:
    size = QUICK if quick else FULL
    heading(
        f"incident-intake, HTTP path: signed POST /v1/alarms, {CONNECTIONS} connections closed loop, "
        f"and {OFFERED} alarms/s open loop ({SCENES} events around Shanghai), PostgreSQL",
        quick,
    )
    stack = await start_stack()
    port = stack.service.port
    try:
        scenes = city_scenes(SCENES, random.Random(20_250_102))
        maker = AlarmMaker(scenes, seed=3, prefix="http")

        def alarm() -> bytes:
            return signed_post(port, "/v1/alarms", maker.next()[1])

        def batch_of_100() -> bytes:
            items = b",".join(maker.next()[1] for _ in range(100))
            return signed_post(port, "/v1/alarms:batch", b'{"alarms":[' + items + b"]}")

        # Raw ceilings first, while intake is idle.
        health, health_s = await closed_loop(port, lambda: healthz(port), CONNECTIONS, size["ceiling_s"])
        health_rate = health[200] / health_s
        pg_rate = await postgres_insert_ceiling(
            stack.dsn, alarm_rows_like(AlarmMaker(scenes, 4, "pg"), size["pg_rows"])
        )

        paced, paced_statuses = await open_loop(port, alarm, OFFERED, size["paced_s"])
        await asyncio.sleep(2)
        meter = CpuMeter(stack)
        most, most_s = await closed_loop(port, alarm, CONNECTIONS, size["max_s"])
        most_rate = most[202] / most_s
        await meter.stop(stack)
        await asyncio.sleep(2)
        in_batches = 0

        def count_accepted(status: int, body: bytes) -> None:
            nonlocal in_batches
            if status == 200:
                in_batches += orjson.loads(body)["accepted"]

        batches, batches_s = await closed_loop(port, batch_of_100, 8, size["batch_s"], count_accepted)

        conn = await asyncpg.connect(stack.dsn)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM alarms")
        finally:
            await conn.close()
        accepted = paced_statuses.get(202, 0) + most.get(202, 0) + in_batches

        row("raw ceiling: same client, GET /healthz", f"{health_rate:,.0f} /s", show(health))
        row("raw ceiling: PostgreSQL insert (executemany)", f"{pg_rate:,.0f} rows/s", "copy of the alarms table")
        row(
            "max throughput: POST /v1/alarms -> 202",
            f"{most_rate:,.0f} /s",
            f"target >= {TARGET_RATE:,}/s: {verdict(most_rate >= TARGET_RATE, quick, 'HTTP alarms per second')}",
        )
        row("  answers", "", show(most))
        row("  / same client on /healthz", f"{most_rate / health_rate:.3f}")
        row("  / PostgreSQL insert rate", f"{most_rate / pg_rate:.3f}")
        meter.print()
        refused = sum(n for status, n in paced_statuses.items() if status != 202)
        row(
            f"offered {OFFERED}/s open loop for {size['paced_s']} s",
            "",
            f"{show(paced_statuses)}; all 202: {verdict(refused == 0, quick, 'every paced alarm accepted')}",
        )
        lag_rows("  time to the 202", paced, TARGET_P99_MS, quick)
        row("  p99.9", f"{percentile(paced, 99.9):,.1f} ms")
        row(
            "batch endpoint: 100 alarms a request, 8 conns",
            f"{in_batches / batches_s:,.0f} /s",
            f"alarms; {show(batches)} (for comparison, no target)",
        )
        row(
            "alarms stored",
            f"{stored:,}",
            f"{accepted:,} accepted (202s and accepted batch items); "
            f"stored = accepted: {verdict(stored == accepted, quick, 'every accepted alarm stored')}",
        )
        await print_pipeline(stack)
        stack.print_memory()
    finally:
        await stack.close()


if __name__ == "__main__":
    main(run, __doc__)
