"""The NATS path of incident-intake: gateway publish to alarm persisted, correlated and its
``incident.alarm.linked`` event on the INCIDENTS stream.

Run: python tests/bench/bench_intake_nats.py [--quick]      (make bench runs it)

A gateway publishes alarms to ``alarm.in.<gateway_id>`` at a fixed offered rate (open loop: the
schedule does not wait for intake) about ~200 separate events around Shanghai in several
categories. The figure is the rate at which linked events are stored on the INCIDENTS stream while
the gateway publishes, and the time from each alarm's received_at to its linked event's storage
time on the stream. The raw ceiling, measured on the same broker in the same run, is how fast
nats-py's JetStream publish alone stores the same messages. Target (issue 2): at least 5,000
alarms/s sustained for 60 s; intake's RSS under 250 MB.

Offered exactly 5,000/s, intake can at best keep pace, so that run cannot show headroom. The
capacity run does: a backlog of 300,000 alarms (30,000 with --quick) is published to the ALARMS
stream while intake is stopped (that publish is the run's raw JetStream rate), then intake starts
and drains it; the figure is the sustained linked rate, from the first linked event to the last.
Target (issue 9): at least 8,000 alarms/s on a 2-core machine, and at least 0.16 of the raw
publish rate of the same run.
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

from tests.bench._common import (  # noqa: E402
    GATEWAY_ID,
    AlarmMaker,
    CpuMeter,
    backlog,
    city_scenes,
    connect,
    heading,
    jetstream_publish_ceiling,
    lag_rows,
    main,
    print_pipeline,
    read_linked,
    row,
    start_stack,
    subject_count,
    verdict,
)

TARGET_RATE = 5_000
CAPACITY_TARGET, CAPACITY_RATIO = 8_000, 0.16
BACKLOG_N, QUICK_BACKLOG_N = 300_000, 30_000
FULL_SECONDS, QUICK_SECONDS = 60, 5
CEILING_N, QUICK_CEILING_N = 100_000, 20_000
SCENES = 200
WARM_UP_S = 5  # left out of the steady-state rate: the first batches also fill intake's caches
TICK_S = 0.005


async def run(quick: bool) -> None:
    await offered(quick)
    await capacity(quick)


async def capacity(quick: bool) -> None:
    """Drain a pre-published backlog: the sustained linked rate beside the raw publish rate."""
    n = QUICK_BACKLOG_N if quick else BACKLOG_N
    heading(f"incident-intake, NATS capacity: a backlog of {n:,} alarms drained, PostgreSQL", quick)
    stack = await start_stack()
    nc, js = await connect(stack.nats.url)
    try:
        await asyncio.to_thread(stack.service.stop)  # the ALARMS stream and its consumer stay
        maker = AlarmMaker(city_scenes(SCENES, random.Random(20_250_102)), seed=3, prefix="backlog")
        subject = f"alarm.in.{GATEWAY_ID}"
        start = time.perf_counter()
        for _ in range(n):
            alarm_id, body = maker.next()
            await js.publish_async(subject, body, headers={"Nats-Msg-Id": f"{GATEWAY_ID}:{alarm_id}"})
        await js.publish_async_completed()
        raw_rate = n / (time.perf_counter() - start)

        await asyncio.to_thread(stack.service.start)
        meter = CpuMeter(stack)  # the restarted process
        first_t = first_count = None
        linked = 0
        deadline = time.perf_counter() + max(120.0, n / 1_000)
        while time.perf_counter() < deadline:
            linked = await subject_count(js, "INCIDENTS", "incident.alarm.linked")
            now = time.perf_counter()
            if first_t is None and linked > 0:
                first_t, first_count = now, linked
            if linked >= n:
                break
            await asyncio.sleep(0.1)
        last_t = time.perf_counter()
        await meter.stop(stack)
        drained = first_t is not None and linked >= n
        rate = (linked - (first_count or 0)) / (last_t - first_t) if first_t is not None and last_t > first_t else 0.0
        row("raw ceiling: nats-py JetStream publish of the backlog", f"{raw_rate:,.0f} /s", f"{n:,} alarms")
        row(
            "capacity: linked rate draining the backlog",
            f"{rate:,.0f} /s",
            f"target >= {CAPACITY_TARGET:,}/s: {verdict(drained and rate >= CAPACITY_TARGET, quick, 'NATS capacity')}",
        )
        ratio_met = drained and rate / raw_rate >= CAPACITY_RATIO
        row(
            "capacity / raw JetStream publish rate",
            f"{rate / raw_rate:.3f}",
            f"target >= {CAPACITY_RATIO}: {verdict(ratio_met, quick, 'capacity ratio')}",
        )
        row("backlog linked", f"{linked:,} of {n:,}", "" if drained else "(time-out)")
        meter.print()
        await print_pipeline(stack)
    finally:
        await nc.close()
        await stack.close()


async def offered(quick: bool) -> None:
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    total = TARGET_RATE * seconds
    heading(
        f"incident-intake, NATS path: {TARGET_RATE:,} alarms/s offered for {seconds} s "
        f"({total:,} alarms, {SCENES} events around Shanghai), PostgreSQL",
        quick,
    )
    stack = await start_stack()
    nc, js = await connect(stack.nats.url)
    try:
        rng = random.Random(20_250_101)
        scenes = city_scenes(SCENES, rng)
        samples = AlarmMaker(scenes, seed=1, prefix="ceiling")
        payloads = [samples.next()[1] for _ in range(1000)]
        ceiling = await jetstream_publish_ceiling(js, payloads, QUICK_CEILING_N if quick else CEILING_N)

        maker = AlarmMaker(scenes, seed=2, prefix="nats")
        subject = f"alarm.in.{GATEWAY_ID}"
        acked = failed = 0

        def on_ack(fut: asyncio.Future) -> None:
            nonlocal acked, failed
            if fut.cancelled() or fut.exception() is not None:
                failed += 1
            else:
                acked += 1

        progress: list[tuple[float, int, int, int]] = []
        published = 0
        start_wall = time.time()
        start = time.perf_counter()

        async def watch() -> None:
            while True:
                await asyncio.sleep(5)
                linked = await subject_count(js, "INCIDENTS", "incident.alarm.linked")
                pending, unacked = await backlog(js)
                progress.append((time.perf_counter() - start, published, linked, pending + unacked))

        watcher = asyncio.create_task(watch())
        meter = CpuMeter(stack)
        while published < total:
            due = min(total, int(TARGET_RATE * (time.perf_counter() - start)) + 1)
            while published < due:
                alarm_id, body = maker.next()
                fut = await js.publish_async(subject, body, headers={"Nats-Msg-Id": f"{GATEWAY_ID}:{alarm_id}"})
                fut.add_done_callback(on_ack)
                published += 1
            await asyncio.sleep(max(0.0, start + published / TARGET_RATE - time.perf_counter(), TICK_S / 5))
        publish_s = time.perf_counter() - start
        end_wall = start_wall + publish_s
        await js.publish_async_completed()

        # Let intake finish what is queued, bounded: as long again as the run, at least 60 s.
        deadline = time.perf_counter() + max(60, seconds)
        linked_count = 0
        while time.perf_counter() < deadline:
            linked_count = await subject_count(js, "INCIDENTS", "incident.alarm.linked")
            if linked_count >= total:
                break
            await asyncio.sleep(0.25)
        drained_s = time.perf_counter() - start
        watcher.cancel()
        await meter.stop(stack)

        linked = await read_linked(js, linked_count)
        stored = sorted(x.stored_at for x in linked)
        steady_from = start_wall + (WARM_UP_S if not quick else 1)
        in_window = sum(1 for t in stored if steady_from <= t <= end_wall)
        steady_rate = in_window / (end_wall - steady_from)
        windows = []
        t = steady_from
        while t + 5 <= end_wall + 1e-6:
            windows.append(sum(1 for s in stored if t <= s < t + 5) / 5)
            t += 5
        lags = sorted(x.lag_s * 1000 for x in linked)
        incidents = len({x.incident_id for x in linked})

        print("  progress (s, published, linked, backlog at intake):")
        for p in progress:
            print(f"    {p[0]:6.1f} s {p[1]:>9,} {p[2]:>9,} {p[3]:>9,}")
        row(
            "raw ceiling: nats-py JetStream publish", f"{ceiling:,.0f} /s", "scratch stream, same payloads, same broker"
        )
        row("gateway publish rate achieved", f"{published / publish_s:,.0f} /s", f"{acked:,} acked, {failed} failed")
        # Offered exactly the target, intake can at best keep pace: 2% is left for the window's edges.
        row(
            f"linked rate, steady (after {WARM_UP_S if not quick else 1} s)",
            f"{steady_rate:,.0f} /s",
            f"target >= {TARGET_RATE:,}/s: {verdict(steady_rate >= 0.98 * TARGET_RATE, quick, 'NATS rate')}",
        )
        if windows:
            row("linked rate, slowest 5 s window", f"{min(windows):,.0f} /s")
        row("linked rate / raw JetStream publish rate", f"{steady_rate / ceiling:.3f}")
        row(
            "all linked after",
            f"{drained_s:,.1f} s",
            f"{linked_count:,} of {total:,} linked" + ("" if linked_count >= total else " (time-out)"),
        )
        row("overall: alarms linked / s until the last", f"{len(stored) / (stored[-1] - start_wall):,.0f} /s")
        lag_rows("received_at -> linked on stream", lags)
        row("incidents the alarms formed", f"{incidents:,}")
        meter.print()
        await print_pipeline(stack)
        stack.print_memory()
    finally:
        await nc.close()
        await stack.close()


if __name__ == "__main__":
    main(run, __doc__)
