"""An alarm storm: 10,000 alarms about one event within 10 s must become exactly one incident
holding all 10,000, each linked within a second.

Run: python tests/bench/bench_intake_storm.py [--quick]      (make bench runs it)

A chemical warehouse fire: callers all around it within 150 m report fire, explosion, gas leak and
hazmat, paced evenly over 10 s and published by their gateway to ``alarm.in.<gateway_id>``. The
latency of an alarm runs from its received_at (the moment it was published) to the moment its
``incident.alarm.linked`` event was stored on the INCIDENTS stream. The raw ceiling, on the same
broker in the same run: JetStream's own publish-to-ack time at the same pace, and nats-py's
JetStream publish rate. Target (issue 2): one incident holding all 10,000; p99 at most 1 s; intake's
RSS under 250 MB.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from tests.bench._common import (  # noqa: E402
    FIRE_FAMILY,
    GATEWAY_ID,
    SHANGHAI,
    AlarmMaker,
    CpuMeter,
    Scene,
    connect,
    heading,
    jetstream_latency_ceiling,
    jetstream_publish_ceiling,
    lag_rows,
    main,
    percentile,
    print_pipeline,
    read_linked,
    row,
    start_stack,
    verdict,
    wait_linked,
)

FULL = (10_000, 10.0)
QUICK = (2_000, 2.0)
TARGET_P99_MS = 1000.0


async def run(quick: bool) -> None:
    total, seconds = QUICK if quick else FULL
    rate = total / seconds
    heading(
        f"incident-intake, alarm storm: {total:,} alarms about one event within {seconds:.0f} s "
        f"({rate:,.0f}/s over NATS), PostgreSQL",
        quick,
    )
    stack = await start_stack()
    nc, js = await connect(stack.nats.url)
    try:
        warehouse = Scene(SHANGHAI[0] + 0.012, SHANGHAI[1] - 0.018, "fire")
        maker = AlarmMaker([warehouse], seed=5, prefix="storm", jitter_m=150)
        rng = random.Random(6)
        payloads = [AlarmMaker([warehouse], seed=7, prefix="c").next()[1] for _ in range(500)]
        ceiling_rate = await jetstream_publish_ceiling(js, payloads, 20_000)
        ceiling_lat = await jetstream_latency_ceiling(js, payloads, rate, min(seconds, 5.0))

        meter = CpuMeter(stack)
        subject = f"alarm.in.{GATEWAY_ID}"
        acks = []
        start = time.perf_counter()
        for i in range(total):
            wait = start + i / rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            alarm_id, body = maker.next(rng.choice(FIRE_FAMILY))
            acks.append(await js.publish_async(subject, body, headers={"Nats-Msg-Id": f"{GATEWAY_ID}:{alarm_id}"}))
        published_s = time.perf_counter() - start
        failed = sum(isinstance(r, BaseException) for r in await asyncio.gather(*acks, return_exceptions=True))
        seen = await wait_linked(js, total, 60)
        await meter.stop(stack)

        linked = await read_linked(js, seen)
        lags = sorted(x.lag_s * 1000 for x in linked)
        conn = await asyncpg.connect(stack.dsn)
        try:
            incidents = await conn.fetch(
                "SELECT id, alarm_count, caller_count, level FROM incidents WHERE merged_into IS NULL"
            )
            alarms = await conn.fetchval("SELECT count(*) FROM alarms")
        finally:
            await conn.close()
        holding = max((r["alarm_count"] for r in incidents), default=0)
        one = len(incidents) == 1 and holding == total

        row("raw ceiling: nats-py JetStream publish", f"{ceiling_rate:,.0f} /s", "scratch stream, same broker")
        lag_rows(f"raw ceiling: JetStream publish->ack at {rate:,.0f}/s", ceiling_lat)
        row("alarms published", f"{total:,}", f"in {published_s:.2f} s, {failed} not acknowledged")
        row("alarms stored / linked events", f"{alarms:,} / {len(linked):,}")
        row(
            "incidents formed",
            f"{len(incidents):,}",
            f"the largest holds {holding:,} alarms; one incident with all {total:,}: {verdict(one, what='storm')}",
        )
        if len(incidents) == 1:
            r = incidents[0]
            row("  its callers / level", f"{r['caller_count']:,} / {r['level']}")
        lag_rows("received_at -> linked on stream", lags, TARGET_P99_MS, quick)
        row("p99 / raw JetStream p99", f"{percentile(lags, 99) / max(percentile(ceiling_lat, 99), 1e-9):,.1f}")
        meter.print()
        await print_pipeline(stack)
        stack.print_memory()
    finally:
        await nc.close()
        await stack.close()


if __name__ == "__main__":
    main(run, __doc__)
