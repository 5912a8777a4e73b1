"""The vehicle location feed: position reports on ``vehicle.location.<unit_id>`` absorbed by
dispatch (written to PostgreSQL and its recommendation index) at 5,000 a second.

Run: python tests/bench/bench_dispatch_locations.py [--quick]      (make bench runs it)

10,000 units report their position, each every two seconds on average, at a fixed offered rate
(open loop: the schedule does not wait for dispatch) for 30 s. "Not falling behind" is read from the
durable consumer itself: its backlog (not yet delivered plus delivered but not yet acked) is sampled
every half second and must stay under one second of traffic, and be gone soon after the feed stops.
The raw ceilings, measured in the same run: nats-py's JetStream publish rate for the same messages
on the same broker, and PostgreSQL's rate for the same position UPDATEs (the statement dispatch
runs, straight through asyncpg, 2,000 reports a transaction) on a scratch copy of the units table.
Target (issue 3): at least 5,000 updates/s; dispatch's RSS under 250 MB throughout.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import orjson  # noqa: E402

from tests.bench._common import (  # noqa: E402
    connect,
    cpu_seconds,
    heading,
    jetstream_publish_ceiling,
    main,
    row,
    scrape,
    start_stack,
    verdict,
)
from tests.bench.bench_dispatch_automation import (  # noqa: E402
    UNITS,
    city_units,
    metrics,
    register,
)

TARGET_RATE = 5_000
FULL_SECONDS, QUICK_SECONDS = 30, 5
CEILING_N, QUICK_CEILING_N = 60_000, 15_000
TICK_S = 0.005


class Feed:
    """Position reports as the vehicles send them: each unit drifts a few metres per report."""

    def __init__(self, units: list[dict[str, Any]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.ids = [u["id"] for u in units]
        self.pos = {u["id"]: [u["location"]["lat"], u["location"]["lon"]] for u in units}
        self.last: dict[str, tuple[float, float, str]] = {}

    def next(self) -> tuple[str, bytes]:
        uid = self.ids[self.rng.randrange(len(self.ids))]
        p = self.pos[uid]
        p[0] += self.rng.uniform(-0.0003, 0.0003)
        p[1] += self.rng.uniform(-0.0003, 0.0003)
        at = datetime.now(UTC).isoformat()
        self.last[uid] = (p[0], p[1], at)
        body = {
            "lat": round(p[0], 7),
            "lon": round(p[1], 7),
            "at": at,
            "speed_kmh": round(self.rng.uniform(0, 60), 1),
            "heading_deg": round(self.rng.uniform(0, 359), 1),
        }
        return f"vehicle.location.{uid}", orjson.dumps(body)


async def postgres_update_ceiling(dsn: str, feed: Feed, n: int, batch: int = 2000) -> float:
    """Position UPDATEs per second into a scratch copy of the units table (same indexes)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_units (LIKE units INCLUDING ALL)")
        await conn.execute("INSERT INTO bench_units SELECT * FROM units")
        # The statement dispatch itself runs on PostgreSQL, straight through asyncpg.
        sql = (
            "UPDATE bench_units AS u SET lat = v.lat, lon = v.lon, location_at = v.at"
            " FROM unnest($1::text[], $2::float8[], $3::float8[], $4::timestamptz[]) AS v(id, lat, lon, at)"
            " WHERE u.id = v.id AND u.location_at < v.at"
        )
        rows = []
        for _ in range(n):
            subject, body = feed.next()
            b = orjson.loads(body)
            rows.append((subject.rsplit(".", 1)[1], b["lat"], b["lon"], datetime.fromisoformat(b["at"])))
        started = time.perf_counter()
        for i in range(0, n, batch):
            chunk = sorted({r[0]: r for r in rows[i : i + batch]}.values())
            async with conn.transaction():
                await conn.execute(sql, *([r[k] for r in chunk] for k in range(4)))
        rate = n / (time.perf_counter() - started)
        await conn.execute("DROP TABLE bench_units")
        return rate
    finally:
        await conn.close()


async def backlog(js: Any) -> tuple[int, int]:
    """(reports not yet absorbed, the stream sequence up to which every report is absorbed)."""
    info = await js.consumer_info("VEHICLES", "dispatch-locations")
    return int(info.num_pending + info.num_ack_pending), int(info.ack_floor.stream_seq)


async def drain(js: Any, within_s: float = 60.0) -> None:
    deadline = time.perf_counter() + within_s
    while time.perf_counter() < deadline:
        if not (await backlog(js))[0]:
            return
        await asyncio.sleep(0.05)


async def burst(js: Any, feed: Feed, n: int) -> tuple[float, float]:
    """n reports published as fast as the client can: (publish rate, absorbed rate until drained)."""
    start = time.perf_counter()
    window = []
    for _ in range(n):
        subject, body = feed.next()
        window.append(await js.publish_async(subject, body))
        if len(window) >= 5000:
            await asyncio.gather(*window)
            window.clear()
    await asyncio.gather(*window)
    published = time.perf_counter() - start
    await drain(js)
    return n / published, n / (time.perf_counter() - start)


async def run(quick: bool) -> None:
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    total = TARGET_RATE * seconds
    heading(
        f"dispatch, vehicle location feed: {TARGET_RATE:,} position reports/s offered for {seconds} s "
        f"({total:,} reports from {UNITS:,} units), PostgreSQL",
        quick,
    )
    stack = await start_stack("dispatch")
    nc, js = await connect(stack.nats.url)
    try:
        rng = random.Random(7)
        units = city_units(rng)
        await register(stack, units)
        sample = Feed(units, seed=1)
        payloads = [sample.next()[1] for _ in range(1000)]
        js_ceiling = await jetstream_publish_ceiling(js, payloads, QUICK_CEILING_N if quick else CEILING_N)
        pg_ceiling = await postgres_update_ceiling(stack.dsn, Feed(units, seed=2), 20_000 if quick else 60_000)
        before = await metrics(stack)

        feed = Feed(units, seed=3)
        acked = failed = 0

        def on_ack(fut: asyncio.Future) -> None:
            nonlocal acked, failed
            if fut.cancelled() or fut.exception() is not None:
                failed += 1
            else:
                acked += 1

        samples: list[tuple[float, int, int]] = []
        published = 0
        pid = stack.service.proc.pid if stack.service.proc else 0
        cpu_before = cpu_seconds(pid)
        start = time.perf_counter()

        async def watch() -> None:
            while True:
                await asyncio.sleep(0.5)
                samples.append((time.perf_counter() - start, *await backlog(js)))

        watcher = asyncio.create_task(watch())
        while published < total:
            due = min(total, int(TARGET_RATE * (time.perf_counter() - start)) + 1)
            while published < due:
                subject, body = feed.next()
                fut = await js.publish_async(subject, body)
                fut.add_done_callback(on_ack)
                published += 1
            await asyncio.sleep(max(0.0, start + published / TARGET_RATE - time.perf_counter(), TICK_S / 5))
        publish_s = time.perf_counter() - start
        await js.publish_async_completed()
        await drain(js)
        drained_s = time.perf_counter() - start
        cpu_used = cpu_seconds(pid) - cpu_before
        watcher.cancel()
        after = await metrics(stack)
        burst_n = 20_000 if quick else 60_000
        burst_feed, burst_absorbed = await burst(js, feed, burst_n)

        written = scrape(after, "dispatch_positions_total") - scrape(before, "dispatch_positions_total")
        dead = scrape(after, "ecs_messages_dead_lettered_total") - scrape(before, "ecs_messages_dead_lettered_total")
        batches = scrape(after, "ecs_consumer_batch_seconds_count", consumer="dispatch-locations") - scrape(
            before, "ecs_consumer_batch_seconds_count", consumer="dispatch-locations"
        )
        batch_s = scrape(after, "ecs_consumer_batch_seconds_sum", consumer="dispatch-locations") - scrape(
            before, "ecs_consumer_batch_seconds_sum", consumer="dispatch-locations"
        )
        steady = [(t, b, seq) for t, b, seq in samples if 1.0 <= t <= publish_s]
        worst = max((b for _, b, _ in steady), default=0)
        absorbed = (steady[-1][2] - steady[0][2]) / (steady[-1][0] - steady[0][0]) if len(steady) > 1 else 0.0

        # Spot-check the database: every unit holds the newest position it reported.
        conn = await asyncpg.connect(stack.dsn)
        try:
            stored = {r["id"]: (r["lat"], r["lon"]) for r in await conn.fetch("SELECT id, lat, lon FROM units")}
        finally:
            await conn.close()
        wrong = sum(
            1
            for uid, (lat, lon, _) in feed.last.items()
            if abs(stored[uid][0] - lat) + abs(stored[uid][1] - lon) > 1e-6
        )

        row("raw ceiling: nats-py JetStream publish", f"{js_ceiling:,.0f} /s", "scratch stream, same payloads")
        row("raw ceiling: PostgreSQL position UPDATEs", f"{pg_ceiling:,.0f} /s", "asyncpg, 2,000 a statement")
        row("feed rate achieved", f"{published / publish_s:,.0f} /s", f"{acked:,} acked, {failed} failed")
        row(
            "absorbed while feeding (consumer's ack floor)",
            f"{absorbed:,.0f} /s",
            f"target >= {TARGET_RATE:,}/s: {verdict(absorbed >= 0.98 * TARGET_RATE, quick, 'positions/s')}",
        )
        row(
            "largest backlog while feeding",
            f"{worst:,}",
            f"{worst / TARGET_RATE:.2f} s of traffic; under 1 s: {verdict(worst < TARGET_RATE, quick, 'backlog')}",
        )
        row("backlog gone after the feed stopped", f"{drained_s - publish_s:,.2f} s")
        row(
            f"capacity: a burst of {burst_n:,} absorbed at",
            f"{burst_absorbed:,.0f} /s",
            f"published as fast as the client could ({burst_feed:,.0f} /s), until drained",
        )
        row("capacity / raw JetStream publish rate", f"{burst_absorbed / js_ceiling:.3f}")
        row("capacity / raw PostgreSQL UPDATE rate", f"{burst_absorbed / pg_ceiling:.3f}")
        if batches:
            row(
                "consumer batches (parse, write, ack)",
                f"{batches:,.0f}",
                f"mean {total / batches:,.0f} reports, {batch_s / batches * 1000:,.1f} ms",
            )
        row(
            "dispatch CPU per report",
            f"{cpu_used / total * 1e6:,.0f} us",
            f"{cpu_used / drained_s:.2f} cores busy while feeding: one core would absorb {total / cpu_used:,.0f} /s",
        )
        row("rows written (newest per unit per batch)", f"{written:,.0f}", f"dead-lettered {dead:,.0f}")
        row("units whose stored position is not their last report", f"{wrong:,}", f"of {len(feed.last):,}")
        stack.print_memory()
    finally:
        await nc.close()
        await stack.close()


if __name__ == "__main__":
    main(run, __doc__)
