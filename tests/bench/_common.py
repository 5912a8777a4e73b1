"""What the benchmarks share: the stack they run against, the alarms they send,
the raw ceilings they measure in the same run, and how they print figures.

The stack is a nats-server of its own (temporary store, free port), a throwaway PostgreSQL
database (on the server in DATABASE_URL, else 127.0.0.1:5432) and incident-intake as a real
process started from its console script, as it runs in production. Intake's resident memory is sampled from
/proc/<pid>/status while the benchmark runs. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
import orjson
from nats.js import api
from sqlalchemy.engine import make_url

from ecs.testing import NatsServer, ServiceProcess, console_script, create_database, drop_database, free_port
from incident_intake.domain import DEFAULT_WINDOWS, Category

GATEWAY_ID = "gw-bench"
GATEWAY_SECRET = "gw-bench-secret-0123456789abcdef"
LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
RSS_TARGET_MB = 250
AUTH_SECRET = "bench-auth-secret-0123456789abcdef"

SHANGHAI = (31.2304, 121.4737)
M_LAT = 1 / 111_195
M_LON = M_LAT / math.cos(math.radians(SHANGHAI[0]))

# What a city's 110 lines hear about, roughly: many traffic accidents and medical calls,
# fewer fires, rare explosions and floods.
CATEGORY_MIX = {
    "traffic_accident": 24,
    "medical": 18,
    "fire": 14,
    "public_security": 14,
    "other": 8,
    "crowd_crush": 5,
    "gas_leak": 5,
    "building_collapse": 4,
    "hazmat": 3,
    "explosion": 3,
    "flood": 2,
}
FIRE_FAMILY = ("fire", "fire", "fire", "explosion", "gas_leak", "hazmat")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short smoke run instead of the full sizes")
    return parser.parse_args()


def heading(title: str, quick: bool) -> None:
    print(f"{title}{'  (--quick: smoke sizes, not the target figures)' if quick else ''}")
    load = os.getloadavg()
    print(f"  machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")


def row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<44} {value:>16}   {note}".rstrip())


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))]


UNMET: list[str] = []
"""Every target this run did not meet; ``main`` exits non-zero when it is not empty."""


def verdict(ok: bool, quick: bool = False, what: str = "") -> str:
    """ "met" or "NOT MET" (recorded, so that the script and ``make bench`` fail); a smoke run
    (``--quick``) is not judged."""
    if quick:
        return "not judged on a smoke run"
    if not ok:
        UNMET.append(what or "a target")
    return "met" if ok else "NOT MET"


def exit_on_unmet() -> None:
    """End the script with exit status 1 when any target was not met, naming them."""
    if UNMET:
        print(f"\nNOT MET: {len(UNMET)} target(s): " + "; ".join(UNMET))
        raise SystemExit(1)


# --- HTTP load ---------------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection: a request out, the status and body back. A load client
    this light leaves the machine's cores to the service measured (an httpx request costs a few
    milliseconds of the client's CPU)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def call(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"content-length:")
        length = int(lower[at + 15 : lower.find(b"\r\n", at)]) if at >= 0 else 0
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


# --- alarms ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    lat: float
    lon: float
    category: str


def city_scenes(count: int, rng: random.Random, radius_km: float = 25.0) -> list[Scene]:
    """Separate events spread over the city around People's Square."""
    names, weights = list(CATEGORY_MIX), list(CATEGORY_MIX.values())
    out = []
    for _ in range(count):
        r = radius_km * 1000 * math.sqrt(rng.random())
        a = rng.uniform(0, 2 * math.pi)
        out.append(
            Scene(
                SHANGHAI[0] + r * math.sin(a) * M_LAT,
                SHANGHAI[1] + r * math.cos(a) * M_LON,
                rng.choices(names, weights)[0],
            )
        )
    return out


class AlarmMaker:
    """Gateway alarms as raw JSON, cheap enough to make at the rate they are sent.

    Events are not equally busy: a few draw most of the calls (a Zipf-like weighting). Callers
    stand within a third of their category's correlation distance of the scene, so each event is
    one incident. ``received_at`` is the moment the alarm is made, so the time from it to the
    linked event is the latency a caller's alarm sees.
    """

    def __init__(self, scenes: Sequence[Scene], seed: int, prefix: str, jitter_m: float = 120.0) -> None:
        self.rng = random.Random(seed)
        self.scenes = list(scenes)
        self.cum = list(_cumulative([1 / (i + 1) ** 0.8 for i in range(len(self.scenes))]))
        self.prefix = prefix
        self.jitter = jitter_m
        self.n = 0

    def next(self, category: str | None = None) -> tuple[str, bytes]:
        rng = self.rng
        scene = self.scenes[_pick(self.cum, rng.random())]
        jitter = min(self.jitter, DEFAULT_WINDOWS[Category(scene.category)].distance_m / 3)
        self.n += 1
        alarm_id = f"{self.prefix}-{self.n:08d}"
        body = {
            "alarm_id": alarm_id,
            "received_at": datetime.now(UTC).isoformat(),
            "category": category or scene.category,
            "location": {
                "lat": round(scene.lat + rng.uniform(-jitter, jitter) * M_LAT, 6),
                "lon": round(scene.lon + rng.uniform(-jitter, jitter) * M_LON, 6),
            },
            "caller": {"number": f"13{rng.randrange(10**9):09d}"},
            "description": "caller reports smoke and people trapped on the upper floor",
        }
        return alarm_id, orjson.dumps(body)


def _cumulative(weights: Sequence[float]) -> list[float]:
    total, acc, out = sum(weights), 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    return out


def _pick(cum: Sequence[float], x: float) -> int:
    lo, hi = 0, len(cum) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --- the stack: nats-server, a throwaway PostgreSQL database, the service------------------------


class RssSampler:
    """The resident memory of a process, sampled every 100 ms on a thread of its own."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid = pid
        self.every_s = every_s
        self.max_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _read(self) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = self._read().get("VmRSS", 0)
            self.max_kb = max(self.max_kb, rss)
            self.samples += 1
            self._stop.wait(self.every_s)

    def stop(self) -> tuple[float, float]:
        """(max sampled RSS, the kernel's high-water mark), in MB."""
        hwm = self._read().get("VmHWM", 0)
        self._stop.set()
        self._thread.join(2)
        return self.max_kb / 1024, hwm / 1024


@dataclass
class Stack:
    """One service under measurement: its own nats-server, a throwaway PostgreSQL database."""

    name: str
    nats: NatsServer
    service: ServiceProcess
    database_url: str
    server_url: str
    workdir: Path
    rss: RssSampler

    @property
    def dsn(self) -> str:
        return make_url(self.database_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def print_memory(self) -> None:
        peak, hwm = self.rss.stop()
        row(
            f"{self.name} max RSS (sampled every 100 ms)",
            f"{peak:,.0f} MB",
            f"target < {RSS_TARGET_MB} MB: {verdict(max(peak, hwm) < RSS_TARGET_MB, what='resident memory')}",
        )
        row(f"{self.name} RSS high-water mark (VmHWM)", f"{hwm:,.0f} MB")

    async def close(self) -> None:
        self.service.kill(9)  # the figures are taken; a graceful stop is not what is measured
        self.nats.stop()
        with contextlib.suppress(Exception):
            await drop_database(self.server_url, self.database_url)
        shutil.rmtree(self.workdir, ignore_errors=True)


def pg_server_url() -> str:
    given = os.environ.get("DATABASE_URL", "")
    if given and make_url(given).drivername.startswith("postgres"):
        return given
    return LOCAL_PG


SERVICES = {"incident-intake": ("intake", "INTAKE_"), "dispatch": ("dispatch", "DISPATCH_")}


async def start_stack(service: str = "incident-intake", **env: str) -> Stack:
    """Start the service as a real process; extra settings are given without their prefix."""
    name, prefix = SERVICES[service]
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-bench-"))
    server = pg_server_url()
    try:
        database_url = await create_database(server, prefix="ecs_bench")
    except Exception as exc:
        raise SystemExit(f"no PostgreSQL at {make_url(server).render_as_string()}: {exc}") from exc
    broker = NatsServer(workdir / "nats-store").start()
    port = free_port()
    settings = {
        "DATABASE_URL": database_url,
        "NATS_URL": broker.url,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "AUTH_SECRET": AUTH_SECRET,
        "LOG_LEVEL": "WARNING",
    }
    if service == "incident-intake":
        gateways = workdir / "gateways.json"
        gateways.write_text(json.dumps({"gateways": {GATEWAY_ID: {"secret": GATEWAY_SECRET}}}))
        settings["GATEWAYS_FILE"] = str(gateways)
    settings.update({k.upper(): v for k, v in env.items()})
    proc = ServiceProcess(
        [console_script(service)], {prefix + k: v for k, v in settings.items()}, port, workdir / f"{name}.log"
    )
    try:
        await asyncio.to_thread(proc.start)
    except Exception:
        broker.stop()
        await drop_database(server, database_url)
        raise
    assert proc.proc is not None
    return Stack(name, broker, proc, database_url, server, workdir, RssSampler(proc.proc.pid).start())


async def connect(url: str) -> tuple[Any, Any]:
    nc = await nats.connect(url, name="bench", max_reconnect_attempts=-1, pending_size=256 * 1024 * 1024)
    return nc, nc.jetstream(timeout=30, publish_async_max_pending=50_000)


# --- the raw ceilings ------------------------------------------------------------------------


async def jetstream_publish_ceiling(js: Any, payloads: Sequence[bytes], n: int) -> float:
    """Messages per second nats-py's JetStream publish reaches on this broker: n messages (the
    alarms' own bytes, with a Nats-Msg-Id each) to a scratch stream, as fast as acks come back."""
    await js.add_stream(
        api.StreamConfig(name="BENCH_CEILING", subjects=["bench.ceiling"], storage=api.StorageType.FILE)
    )
    try:
        started = time.perf_counter()
        window: list[Any] = []
        for i in range(n):
            window.append(
                await js.publish_async("bench.ceiling", payloads[i % len(payloads)], headers={"Nats-Msg-Id": f"c-{i}"})
            )
            if len(window) >= 20_000:
                await asyncio.gather(*window)
                window.clear()
        await asyncio.gather(*window)
        return n / (time.perf_counter() - started)
    finally:
        await js.delete_stream("BENCH_CEILING")


async def jetstream_latency_ceiling(js: Any, payloads: Sequence[bytes], rate: float, seconds: float) -> list[float]:
    """Publish-to-ack times (ms) of JetStream alone, paced at `rate`: the floor under any
    alarm-to-linked latency."""
    await js.add_stream(api.StreamConfig(name="BENCH_LATENCY", subjects=["bench.latency"]))
    lat: list[float] = []
    try:

        async def one(i: int, at: float) -> None:
            fut = await js.publish_async(
                "bench.latency", payloads[i % len(payloads)], headers={"Nats-Msg-Id": f"l-{i}"}
            )
            await fut
            lat.append((time.perf_counter() - at) * 1000)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            at = start + i / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, at)))
        await asyncio.gather(*tasks)
    finally:
        await js.delete_stream("BENCH_LATENCY")
    return sorted(lat)


async def postgres_insert_ceiling(dsn: str, rows: Sequence[tuple[Any, ...]], batch: int = 500) -> float:
    """Rows per second asyncpg's executemany writes into a scratch copy of the alarms table
    (same columns, indexes and unique key), committed batch by batch as intake commits."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE bench_insert (LIKE alarms INCLUDING ALL)")
        params = ", ".join(f"${i + 1}" for i in range(len(ALARM_COLUMNS)))
        sql = f"INSERT INTO bench_insert ({', '.join(ALARM_COLUMNS)}) VALUES ({params})"
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.executemany(sql, rows[i : i + batch])
        rate = len(rows) / (time.perf_counter() - started)
        await conn.execute("DROP TABLE bench_insert")
        return rate
    finally:
        await conn.close()


ALARM_COLUMNS = (
    "gateway_id",
    "alarm_id",
    "incident_id",
    "original_incident_id",
    "category",
    "lat",
    "lon",
    "crs",
    "reported_lat",
    "reported_lon",
    "received_at",
    "ingested_at",
    "caller_key",
    "caller_number",
    "description",
    "exercise",
    "via",
)


def alarm_rows_like(maker: AlarmMaker, n: int) -> list[tuple[Any, ...]]:
    rows = []
    now = datetime.now(UTC)
    for i in range(n):
        _, raw = maker.next()
        a = orjson.loads(raw)
        rows.append(
            (
                GATEWAY_ID,
                f"pg-{i:08d}",
                "0123456789abcdef0123456789abcdef",
                "0123456789abcdef0123456789abcdef",
                a["category"],
                a["location"]["lat"],
                a["location"]["lon"],
                "wgs84",
                a["location"]["lat"],
                a["location"]["lon"],
                now,
                now,
                "f" * 32,
                a["caller"]["number"],
                a["description"],
                False,
                "http",
            )
        )
    return rows


# --- reading what intake published -----------------------------------------------------------


async def subject_count(js: Any, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def backlog(js: Any) -> tuple[int, int]:
    """(alarms not yet delivered to intake, delivered but not yet acked)."""
    info = await js.consumer_info("ALARMS", "intake-alarms")
    return info.num_pending, info.num_ack_pending


@dataclass(frozen=True)
class Linked:
    stored_at: float  # unix seconds the linked event was stored on the INCIDENTS stream
    lag_s: float  # from the alarm's received_at to stored_at
    incident_id: str


async def read_linked(js: Any, expected: int, timeout_s: float = 120.0) -> list[Linked]:
    """Every incident.alarm.linked event on the INCIDENTS stream, with when it was stored."""
    sub = await js.pull_subscribe(
        "incident.alarm.linked",
        stream="INCIDENTS",
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=60,
            max_ack_pending=-1,
        ),
    )
    out: list[Linked] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expected and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(5000, timeout=2)
        except (TimeoutError, nats.errors.TimeoutError):
            continue
        for m in msgs:
            stored = m.metadata.timestamp.timestamp()
            data = orjson.loads(m.data)["data"]
            received = datetime.fromisoformat(data["received_at"]).timestamp()
            out.append(Linked(stored, stored - received, data["incident_id"]))
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
    return out


async def wait_linked(js: Any, expected: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        seen = await subject_count(js, "INCIDENTS", "incident.alarm.linked")
        if seen >= expected:
            break
        await asyncio.sleep(0.25)
    return seen


def lag_rows(label: str, lags_ms: Sequence[float], target_p99_ms: float | None = None, quick: bool = False) -> None:
    """p50, p99 and max of sorted lags (a failed sample is ``math.inf``), judged on the p99."""
    p99 = percentile(lags_ms, 99)
    judged = verdict(p99 <= target_p99_ms, quick, f"{label} p99") if target_p99_ms else ""
    note = f"target <= {target_p99_ms:,.0f} ms: {judged}" if target_p99_ms else ""
    row(f"{label} p50", f"{percentile(lags_ms, 50):,.1f} ms")
    row(f"{label} p99", f"{p99:,.1f} ms", note)
    row(f"{label} max", f"{(lags_ms[-1] if lags_ms else math.nan):,.1f} ms")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How many cores intake, nats-server and this client each kept busy between start and stop."""

    def __init__(self, stack: Stack) -> None:
        assert stack.service.proc is not None and stack.nats.proc is not None
        self.pids = {
            stack.name: stack.service.proc.pid,
            "nats-server": stack.nats.proc.pid,
            "bench client": os.getpid(),
        }
        self.begin = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.t0 = time.perf_counter()
        self.used: dict[str, float] = {}

    async def stop(self, stack: Stack) -> None:
        wall = time.perf_counter() - self.t0
        self.used = {k: (cpu_seconds(p) - self.begin[k]) / wall for k, p in self.pids.items()}
        # PostgreSQL backends serving intake's database, counted since they connected (at or
        # after intake started), which over a long run is close to the run itself.
        with contextlib.suppress(Exception):
            conn = await asyncpg.connect(stack.dsn)
            try:
                pids = [
                    r[0]
                    for r in await conn.fetch(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ]
            finally:
                await conn.close()
            self.used["postgres (intake's backends)"] = sum(cpu_seconds(p) for p in pids) / wall

    def print(self) -> None:
        row(f"cores kept busy (of {os.cpu_count()})", "", ", ".join(f"{k} {v:.2f}" for k, v in self.used.items()))


def scrape(text: str, name: str, **labels: str) -> float:
    """The sum of one Prometheus series (all label sets matching ``labels``) in /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


async def print_pipeline(stack: Stack) -> None:
    """Where intake's time went, from its own /metrics: correlation batches and consumer batches."""
    import httpx

    async with httpx.AsyncClient(base_url=stack.service.url, timeout=10) as client:
        text = (await client.get("/metrics")).text
    batches = scrape(text, "intake_ingest_batch_seconds_count")
    if batches:
        size = scrape(text, "intake_ingest_batch_size_sum") / batches
        ms = scrape(text, "intake_ingest_batch_seconds_sum") / batches * 1000
        row("correlation batches (one transaction each)", f"{batches:,.0f}", f"mean {size:,.0f} alarms, {ms:,.1f} ms")
    fetched = scrape(text, "ecs_consumer_batch_seconds_count", consumer="intake-alarms")
    if fetched:
        ms = scrape(text, "ecs_consumer_batch_seconds_sum", consumer="intake-alarms") / fetched * 1000
        msgs = scrape(text, "ecs_messages_processed_total", consumer="intake-alarms")
        row(
            "NATS batches handled (handler + acks)",
            f"{fetched:,.0f}",
            f"mean {msgs / fetched:,.0f} alarms, {ms:,.1f} ms",
        )
    retried = scrape(text, "ecs_messages_retried_total")
    dead = scrape(text, "ecs_messages_dead_lettered_total")
    if retried or dead:
        row("messages retried / dead-lettered", f"{retried:,.0f} / {dead:,.0f}")


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(run: Callable[[bool], Awaitable[None]], doc: str | None) -> None:
    """The command line of every bench: ``python tests/bench/bench_x.py [--quick]``."""
    args = parse_args((doc or "").splitlines()[0])
    use_uvloop()
    asyncio.run(run(args.quick))
    exit_on_unmet()
