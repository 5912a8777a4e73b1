"""``/readyz`` tells the truth, for every service as a real process: take its database or its NATS
away and it answers 503 naming what is down; bring it back and it answers 200 again, by itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from ecs.testing import NatsServer, ServiceProcess, eventually
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET

# (console script, settings prefix) of every service that serves /readyz.
SERVICES = {
    "incident-intake": ("incident-intake", "INTAKE_"),
    "dispatch": ("dispatch", "DISPATCH_"),
}


def _admin_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)


async def _set_connections(url: str, allowed: bool) -> None:
    """Allow or refuse new connections to the database of ``url``; refusing also ends the open ones."""
    name = make_url(url).database
    conn = await asyncpg.connect(_admin_dsn(url))
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await conn.close()


async def _readiness(url: str, status: int) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        resp = await http.get("/readyz")
    return resp.json() if resp.status_code == status else None


@pytest.mark.parametrize("down", ["database", "nats"])
@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_readyz_is_503_naming_what_is_down_and_200_after_recovery(
    service: str,
    down: str,
    pg_url: str,
    nats_private: NatsServer,
    service_factory: Callable[..., ServiceProcess],
    tmp_path: Path,
):
    script, prefix = SERVICES[service]
    extra: dict[str, str] = {}
    if service == "incident-intake":
        gateways = tmp_path / "gateways.json"
        gateways.write_text(json.dumps({"gateways": {GATEWAY_ID: {"secret": GATEWAY_SECRET}}}))
        extra["gateways_file"] = str(gateways)
    proc = service_factory(script, prefix, pg_url, **extra)
    ready = await eventually(lambda: _readiness(proc.url, 200), f"{service} ready")
    assert ready == {"status": "ready", "checks": {"nats": True, "database": True}}

    if down == "database":
        await _set_connections(pg_url, allowed=False)
    else:
        nats_private.stop()
    try:
        answer = await eventually(lambda: _readiness(proc.url, 503), f"{service} not ready without {down}")
        assert answer["status"] == "not ready"
        assert answer["checks"][down] is False
        assert all(ok for check, ok in answer["checks"].items() if check != down), answer
    finally:
        if down == "database":
            await _set_connections(pg_url, allowed=True)
        else:
            nats_private.start()

    again = await eventually(lambda: _readiness(proc.url, 200), f"{service} ready again after {down} came back")
    assert again["checks"] == {"nats": True, "database": True}
    assert proc.proc is not None and proc.proc.poll() is None  # recovered by itself, no restart
