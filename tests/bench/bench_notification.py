"""public-notification as a real process on PostgreSQL: approval to delivery on every channel of
the embedded default, and webhook fan-out, beside a local webhook receiver's own ceiling.

Run: python tests/bench/bench_notification.py [--quick]      (make bench runs it)

Targets (issue 12): which of 100,000 cells a 100-vertex polygon (a district-sized area, about
10 km across) covers, answered by the service's index in at most 50 ms (the ceiling beside it:
testing every cell, in this process); from approval to delivered on every channel of the embedded default (a
webhook, SMS, cell broadcast and a post), p99 at most 1 s for 100 alerts approved and published
over 10 s; webhook fan-out at least 1,000 deliveries a second to a local receiver; the service's
resident memory under 250 MB. The raw ceilings, measured in the same run: the requests a second
the receiver (a separate process) answers to a bare keep-alive client sending as fast as it can
over the same number of connections the service uses (100), and what the service's HTTP client
library (aiohttp) alone gets from it the same way.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import orjson  # noqa: E402

from ecs.auth import TokenVerifier  # noqa: E402
from ecs.bus import Bus  # noqa: E402
from ecs.contracts import IncidentCreated  # noqa: E402
from ecs.envelope import make_event  # noqa: E402
from ecs.testing import NatsServer, ServiceProcess, console_script, create_database, drop_database, free_port  # noqa: E402
from public_notification.domain import inside_polygon  # noqa: E402
from tests.bench._common import (  # noqa: E402
    AUTH_SECRET,
    RSS_TARGET_MB,
    RssSampler,
    heading,
    main,
    percentile,
    pg_server_url,
    row,
    verdict,
)

CENTRE = (31.2304, 121.4737)
SECRET = "bench-receiver-secret-0123456789"
ALERTS = 100
OVER_S = 10.0
P99_TARGET_S = 1.0
FANOUT_TARGET = 1000.0
FANOUT_CHANNELS = 50
CELLS = 100_000
TARGETING_MS = 50.0
AREA = {"description": "黄浦区", "circle": {"lat": CENTRE[0], "lon": CENTRE[1], "radius_m": 800}}


def _serve(port: int, counter: Any) -> None:  # the receiver, in a process of its own
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        with counter.get_lock():
            counter.value += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


async def receiver_ceiling(port: int, n: int, connections: int = 100) -> float:
    """Requests a second the receiver answers: ``connections`` kept-alive connections, each sending
    a POST as soon as the last one's answer came. A client of a few lines over asyncio streams, so
    that the figure is the receiver's (an HTTP library's own cost per request, tens to hundreds
    of microseconds of CPU, is not in it)."""
    body = b"<alert/>"
    request = (
        f"POST /ceiling HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/cap+xml\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    left = n

    async def connection(count: bool) -> None:
        nonlocal left
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not count or left > 0:
                left -= count
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")  # the receiver answers no body
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"the receiver answered {head[:40]!r}")
                if not count:
                    return
        finally:
            writer.close()

    await asyncio.gather(*(connection(False) for _ in range(connections)))
    started = time.perf_counter()
    await asyncio.gather(*(connection(True) for _ in range(connections)))
    return n / (time.perf_counter() - started)


async def client_ceiling(url: str, n: int, connections: int = 100) -> float:
    """Requests a second the service's HTTP client library (aiohttp, as the webhook adapter uses it:
    one session, ``connections`` connections) gets from the receiver, alone, in this process."""
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one() -> None:
            async with session.post(url, data=b"<alert/>", headers={"Content-Type": "application/cap+xml"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"the receiver answered {r.status}")

        await asyncio.gather(*(one() for _ in range(connections)))
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return n / (time.perf_counter() - started)


async def run(quick: bool) -> None:
    heading("public-notification: approval to delivery, webhook fan-out, on PostgreSQL", quick)
    workdir = Path(tempfile.mkdtemp(prefix="notification-bench-"))
    server = pg_server_url()
    database_url = await create_database(server, prefix="ecs_bench")
    broker = NatsServer(workdir / "nats-store").start()
    rx_port = free_port()
    counter = multiprocessing.Value("l", 0)
    rx = multiprocessing.Process(target=_serve, args=(rx_port, counter), daemon=True)
    rx.start()
    port = free_port()
    env = {
        "NOTIFICATION_DATABASE_URL": database_url,
        "NOTIFICATION_NATS_URL": broker.url,
        "NOTIFICATION_HTTP_PORT": str(port),
        "NOTIFICATION_AUTH_SECRET": AUTH_SECRET,
        "NOTIFICATION_LOG_LEVEL": "WARNING",
        "NOTIFICATION_CHANNEL_OUTBOX": str(workdir / "outbox"),
        "NOTIFICATION_DELIVERY_POLL_S": "0.2",
    }
    proc = ServiceProcess([console_script("public-notification")], env, port, workdir / "notification.log")
    await asyncio.to_thread(proc.start)
    assert proc.proc is not None
    rss = RssSampler(proc.proc.pid).start()
    tokens = TokenVerifier(AUTH_SECRET)
    officer = {"Authorization": f"Bearer {tokens.issue('officer-li', ['information_officer'])}"}
    commander = {"Authorization": f"Bearer {tokens.issue('commander-wang', ['commander'])}"}
    rx_url = f"http://127.0.0.1:{rx_port}"
    bus = Bus(broker.url, "bench-intake")
    await bus.connect()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as http:
            await _wait_up(rx_url)
            for kind in ("sms", "cell_broadcast", "social"):
                body = {"kind": kind, "name": kind, "exercise": False}
                assert (await http.post("/v1/channels", json=body, headers=commander)).status_code == 201
            body = {"kind": "webhook", "name": "hook", "exercise": False, "url": f"{rx_url}/hook", "secret": SECRET}
            assert (await http.post("/v1/channels", json=body, headers=commander)).status_code == 201
            created = IncidentCreated(
                incident_id="bench-1",
                category="fire",
                level=2,
                lat=CENTRE[0],
                lon=CENTRE[1],
                first_alarm_at=datetime.now(UTC),
                alarm_id="a",
                gateway_id="gw",
                exercise=False,
            )
            await bus.publish_event(
                make_event("incident.created", created, source="incident-intake", incident_id="bench-1")
            )
            while (await http.get("/v1/incidents/bench-1", headers=officer)).status_code != 200:  # noqa: ASYNC110
                await asyncio.sleep(0.1)  # the service learns of the incident over NATS

            await targeting(http, officer, commander, quick)

            # 1. Approval to delivery: alerts waiting for approval, approved and published at 10 a second.
            n = 20 if quick else ALERTS
            pending = [await _pending(http, officer) for _ in range(n)]
            approved_at: dict[str, float] = {}

            async def approve_and_publish(alert: dict[str, Any]) -> None:
                approved_at[alert["id"]] = time.time()
                r = await http.post(
                    f"/v1/alerts/{alert['id']}:approve", json={"version": alert["version"]}, headers=commander
                )
                assert r.status_code == 200, r.text
                a = r.json()
                r = await http.post(f"/v1/alerts/{a['id']}:publish", json={"version": a["version"]}, headers=officer)
                assert r.status_code == 200, r.text

            t0 = time.perf_counter()
            tasks = []
            for i, alert in enumerate(pending):
                await asyncio.sleep(max(0.0, t0 + i * OVER_S / ALERTS - time.perf_counter()))
                tasks.append(asyncio.create_task(approve_and_publish(alert)))
            await asyncio.gather(*tasks)
            lags = await _delivery_lags(http, officer, approved_at, channels=4)
            lags.sort()
            p50, p99 = percentile(lags, 50), percentile(lags, 99)
            print(f"  approval to delivery: {n} alerts over {n * OVER_S / ALERTS:g} s, 4 channels each")
            row("approval to last channel delivered, p50", f"{p50:,.3f} s")
            row(
                "approval to last channel delivered, p99",
                f"{p99:,.3f} s",
                f"target <= {P99_TARGET_S:g} s: " + verdict(p99 <= P99_TARGET_S, quick, "approval to delivery p99"),
            )

            # 2. Webhook fan-out: more webhook channels, alerts published at once, the receiver counts.
            for i in range(FANOUT_CHANNELS - 1):
                body = {
                    "kind": "webhook",
                    "name": f"hook-{i}",
                    "exercise": False,
                    "url": f"{rx_url}/hook-{i}",
                    "secret": SECRET,
                }
                assert (await http.post("/v1/channels", json=body, headers=commander)).status_code == 201
            fan_alerts = 10 if quick else 60
            ready = []
            for _ in range(fan_alerts):
                alert = await _pending(http, officer)
                r = await http.post(
                    f"/v1/alerts/{alert['id']}:approve", json={"version": alert["version"]}, headers=commander
                )
                ready.append(r.json())
            expected_hooks = fan_alerts * FANOUT_CHANNELS
            start_count = counter.value
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    http.post(f"/v1/alerts/{a['id']}:publish", json={"version": a["version"]}, headers=officer)
                    for a in ready
                )
            )
            deadline = time.perf_counter() + 120
            while counter.value - start_count < expected_hooks and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # the counter lives in the receiver's process
            fan_s = time.perf_counter() - started
            got = counter.value - start_count
            rate = got / fan_s
            ceiling = await receiver_ceiling(rx_port, 2000 if quick else 10000)
            client = await client_ceiling(f"{rx_url}/client", 2000 if quick else 10000)
            print(f"  fan-out: {fan_alerts} alerts x {FANOUT_CHANNELS} webhook channels = {expected_hooks:,} posts")
            row(
                "webhook deliveries a second",
                f"{rate:,.0f} /s",
                f"target >= {FANOUT_TARGET:,.0f}/s: "
                + verdict(rate >= FANOUT_TARGET and got >= expected_hooks, quick, "webhook fan-out"),
            )
            row("ceiling: the receiver's own rate", f"{ceiling:,.0f} req/s", f"fan-out at {rate / ceiling:.0%} of it")
            row(
                "ceiling: the service's HTTP client alone",
                f"{client:,.0f} req/s",
                f"aiohttp, 100 connections; fan-out at {rate / client:.0%} of it",
            )
        peak, hwm = rss.stop()
        row(
            "public-notification max RSS (sampled every 100 ms)",
            f"{peak:,.0f} MB",
            f"target < {RSS_TARGET_MB} MB: {verdict(max(peak, hwm) < RSS_TARGET_MB, quick, 'resident memory')}",
        )
        row("public-notification RSS high-water mark (VmHWM)", f"{hwm:,.0f} MB")
    finally:
        await bus.close()
        proc.kill(9)
        rx.kill()
        broker.stop()
        await drop_database(server, database_url)
        shutil.rmtree(workdir, ignore_errors=True)


async def targeting(http: httpx.AsyncClient, officer: dict[str, str], commander: dict[str, str], quick: bool) -> None:
    """Register the city's cells, then ask which a 100-vertex polygon reaches."""
    rng = random.Random(2016)
    n = 10_000 if quick else CELLS
    cells = [
        {
            "id": f"cell-{i:06d}",
            "kind": "cell",
            "lat": CENTRE[0] + rng.uniform(-0.3, 0.3),
            "lon": CENTRE[1] + rng.uniform(-0.35, 0.35),
        }
        for i in range(n)
    ]
    for start in range(0, n, 10_000):
        r = await http.post("/v1/targets:batch", json={"targets": cells[start : start + 10_000]}, headers=commander)
        assert r.status_code == 201, r.text
    ring = []
    for k in range(99):
        a = 2 * math.pi * k / 99
        radius = 0.05 * rng.uniform(0.6, 1.0)
        ring.append([CENTRE[0] + radius * math.sin(a), CENTRE[1] + radius * math.cos(a)])
    ring.append(ring[0])
    body = {"description_zh": "z", "description_en": "e", "area": {"polygon": ring}}
    alert = (await http.post("/v1/incidents/bench-1/alerts", json=body, headers=officer)).json()
    times, total = [], 0
    for _ in range(20):
        r = await http.get(f"/v1/alerts/{alert['id']}/targets", params={"limit": 0}, headers=officer)
        times.append(r.json()["seconds"] * 1000)
        total = r.json()["total"]
    times.sort()
    started = time.perf_counter()
    brute = sum(inside_polygon(c["lat"], c["lon"], [(p[0], p[1]) for p in ring]) for c in cells)
    brute_ms = (time.perf_counter() - started) * 1000
    print(f"  area targeting: a 100-vertex polygon over {n:,} cells, {total:,} inside (every cell tested: {brute:,})")
    p50, p99 = percentile(times, 50), percentile(times, 99)
    row("targeting in the service's index, p50 / p99", f"{p50:,.1f} / {p99:,.1f} ms")
    row(
        "targeting in the service's index, max of 20",
        f"{times[-1]:,.1f} ms",
        f"target <= {TARGETING_MS:g} ms: " + verdict(times[-1] <= TARGETING_MS and total == brute, quick, "targeting"),
    )
    row("ceiling: testing every cell (no index)", f"{brute_ms:,.1f} ms")


async def _wait_up(url: str) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(100):
            try:
                await client.post(f"{url}/ping", content=b"")
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise RuntimeError("the webhook receiver did not start")


async def _pending(http: httpx.AsyncClient, officer: dict[str, str]) -> dict[str, Any]:
    body = {"description_zh": "请立即撤离", "description_en": "Evacuate now", "area": AREA}
    r = await http.post("/v1/incidents/bench-1/alerts", json=body, headers=officer)
    assert r.status_code == 201, r.text
    alert = r.json()
    r = await http.post(f"/v1/alerts/{alert['id']}:submit", json={"version": alert["version"]}, headers=officer)
    assert r.status_code == 200, r.text
    return r.json()


async def _delivery_lags(
    http: httpx.AsyncClient, headers: dict[str, str], approved_at: dict[str, float], channels: int
) -> list[float]:
    """Seconds from each approval to its last channel delivered (an alert never delivered on
    every channel within a minute counts as infinitely late)."""
    deadline = time.monotonic() + 60
    lags: dict[str, float] = {}
    while len(lags) < len(approved_at) and time.monotonic() < deadline:
        for alert_id, t in approved_at.items():
            if alert_id in lags:
                continue
            d = orjson.loads((await http.get(f"/v1/alerts/{alert_id}/deliveries", headers=headers)).content)
            done = [x for x in d["deliveries"] if x["status"] == "delivered"]
            if len(done) == channels:
                last = max(datetime.fromisoformat(x["delivered_at"]).timestamp() for x in done)
                lags[alert_id] = last - t
        await asyncio.sleep(0.2)
    return [lags.get(a, float("inf")) for a in approved_at]


if __name__ == "__main__":
    main(run, __doc__)
