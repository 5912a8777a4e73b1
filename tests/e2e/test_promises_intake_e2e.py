"""incident-intake's refusals, one parametrised test per promise over every command it covers,
against the service as a real process:

- every command made on a version the operator saw answers 409 ``stale_version`` when the
  incident moved on, and changes nothing (the same request on the current version goes through);
- every operator POST with an ``Idempotency-Key`` gets its STORED answer on a repeat, accepted or
  refused, marked ``Idempotent-Replay: true``, even though the state changed meanwhile so that a
  re-run would answer differently.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ecs.gateway_client import GatewayClient
from ecs.testing import NatsServer, ServiceProcess
from ecs.vocabulary import Category, Level, Stage
from tests import conftest
from tests.conftest import GATEWAY_ID

PROBLEM = "application/problem+json"
_spots = itertools.count(1)
_ids = itertools.count(1)


def new_spot() -> tuple[float, float]:
    """Spots 0.05° (5.5 km) apart: no two incidents of these tests ever correlate."""
    n = next(_spots)
    return round(35.0 + 0.05 * (n % 40), 6), round(100.0 + 0.05 * (n // 40), 6)


@pytest.fixture(scope="module")
def intake_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, NatsServer]]:
    root = tmp_path_factory.mktemp("intake-promises")
    server = NatsServer(root / "nats-store").start()
    proc = conftest.start_intake(root, server.url)
    yield proc, server
    proc.stop()
    server.stop()


class Ops:
    """An operator (dispatcher and commander) speaking HTTP to the intake."""

    def __init__(self, intake: ServiceProcess, gw: GatewayClient, headers: Callable[..., dict[str, str]]) -> None:
        self.http = httpx.AsyncClient(base_url=intake.url, timeout=30)
        self.gw = gw
        self.headers = headers("dispatcher", "commander")

    async def incident(self, incident_id: str) -> dict[str, Any]:
        resp = await self.http.get(f"/v1/incidents/{incident_id}", headers=self.headers)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def report(self, spot: tuple[float, float] | None = None) -> dict[str, Any]:
        """A gateway reports an alarm; the incident it landed in."""
        spot = spot or new_spot()
        body = {
            "alarm_id": f"pr-{time.time_ns() % 10**12}-{next(_ids)}",
            "received_at": datetime.now(UTC).isoformat(),
            "category": Category.fire.value,
            "location": {"lat": spot[0], "lon": spot[1]},
            "caller": {"number": f"1370000{next(_ids):04d}"},
            "description": "smoke from a warehouse",
        }
        resp = await self.gw.send(body)
        assert resp.status_code == 202, resp.text
        return await self.incident(resp.json()["incident_id"])

    async def send(self, method: str, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.http.request(method, path, json=body, headers=headers)

    async def raise_level(self, inc: dict[str, Any]) -> dict[str, Any]:
        """Another operator's change: the incident moves on to a new version."""
        body = {"version": inc["version"], "level": Level.III.value, "reason": "more callers"}
        resp = await self.send("POST", f"/v1/incidents/{inc['id']}/level", body)
        assert resp.status_code == 200, resp.text
        return await self.incident(inc["id"])


@pytest.fixture
async def ops(intake: ServiceProcess, gw: GatewayClient, operator_headers) -> Any:
    client = Ops(intake, gw, operator_headers)
    yield client
    await client.http.aclose()


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    problem = resp.json()
    assert problem["type"] == f"urn:ecs:problem:{code}", problem
    return problem


# --- the commands that take the version the operator saw ----------------------------------------

Incidents = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Command:
    """One versioned command: how to set up the incidents it acts on and the request it makes.

    ``request(incidents, target_version, source_version)`` gives (method, path, body); ``moved``
    names the incident another operator changes first ("target", or "source" for a merge)."""

    name: str
    setup: Callable[[Ops], Awaitable[Incidents]]
    request: Callable[[Incidents, int, int], tuple[str, str, dict[str, Any]]]
    success: int = 200
    moved: str = "target"


async def reported(ops: Ops) -> Incidents:
    return {"target": await ops.report()}


async def ready_for_isolation(ops: Ops) -> Incidents:
    inc = await ops.report()
    resp = await ops.send("POST", f"/v1/incidents/{inc['id']}/verify", {"version": inc["version"]})
    assert resp.status_code == 200, resp.text
    inc = resp.json()
    resp = await ops.send("PUT", f"/v1/incidents/{inc['id']}/perimeter", circle(inc, inc["version"]))
    assert resp.status_code == 200, resp.text
    return {"target": resp.json()}


async def two_alarms(ops: Ops) -> Incidents:
    spot = new_spot()
    first = await ops.report(spot)
    second = await ops.report(spot)
    assert first["id"] == second["id"] and second["alarm_count"] == 2
    return {"target": second}


async def two_incidents(ops: Ops) -> Incidents:
    return {"target": await ops.report(), "source": await ops.report()}


def circle(inc: dict[str, Any], version: int) -> dict[str, Any]:
    lat, lon = inc["location"]["lat"], inc["location"]["lon"]
    return {"version": version, "perimeter": {"kind": "circle", "lat": lat, "lon": lon, "radius_m": 250}}


def on(inc: Incidents, what: str) -> str:
    return f"/v1/incidents/{inc['target']['id']}/{what}"


COMMANDS = [
    Command("verify", reported, lambda i, v, _: ("POST", on(i, "verify"), {"version": v})),
    Command("perimeter", reported, lambda i, v, _: ("PUT", on(i, "perimeter"), circle(i["target"], v))),
    Command(
        "stage",
        ready_for_isolation,
        lambda i, v, _: ("POST", on(i, "stage"), {"version": v, "stage": Stage.isolation.value}),
    ),
    Command(
        "level",
        reported,
        lambda i, v, _: ("POST", on(i, "level"), {"version": v, "level": Level.II.value, "reason": "casualties"}),
    ),
    Command(
        "facts",
        reported,
        lambda i, v, _: ("POST", on(i, "facts"), {"version": v, "fact": "hazard_under_control"}),
    ),
    Command("cancel", reported, lambda i, v, _: ("POST", on(i, "cancel"), {"version": v, "reason": "false alarm"})),
    Command(
        "split",
        two_alarms,
        lambda i, v, _: (
            "POST",
            on(i, "split"),
            {"version": v, "alarms": [{"gateway_id": GATEWAY_ID, "alarm_id": i["target"]["alarms"][-1]["alarm_id"]}]},
        ),
        success=201,
    ),
    Command(
        "merge target",
        two_incidents,
        lambda i, v, sv: (
            "POST",
            on(i, "merge"),
            {"version": v, "source_incident_id": i["source"]["id"], "source_version": sv},
        ),
    ),
    Command(
        "merge source",
        two_incidents,
        lambda i, v, sv: (
            "POST",
            on(i, "merge"),
            {"version": v, "source_incident_id": i["source"]["id"], "source_version": sv},
        ),
        moved="source",
    ),
]


async def snapshot(ops: Ops, incidents: Incidents) -> dict[str, dict[str, Any]]:
    return {role: await ops.incident(inc["id"]) for role, inc in incidents.items()}


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
async def test_a_command_on_a_version_the_incident_left_is_409_stale_version_and_changes_nothing(ops, command):
    incidents = await command.setup(ops)
    seen = {role: inc["version"] for role, inc in incidents.items()}
    incidents[command.moved] = await ops.raise_level(incidents[command.moved])  # someone else acted first
    before = await snapshot(ops, incidents)

    method, path, body = command.request(incidents, seen["target"], seen.get("source", 1))
    problem = assert_problem(await ops.send(method, path, body), 409, "stale_version")
    assert problem["detail"]
    assert await snapshot(ops, incidents) == before

    # The same request on the versions the incidents have now goes through: only the version was wrong.
    current = {role: inc["version"] for role, inc in before.items()}
    method, path, body = command.request(incidents, current["target"], current.get("source", 1))
    resp = await ops.send(method, path, body)
    assert resp.status_code == command.success, resp.text


# --- Idempotency-Key on every operator POST -----------------------------------------------------

POSTS = [c for c in COMMANDS if c.name != "perimeter"]  # perimeter is a PUT


@pytest.mark.parametrize("command", POSTS, ids=[c.name for c in POSTS])
async def test_a_repeated_post_gets_the_stored_answer_accepted_or_refused(ops, command):
    incidents = await command.setup(ops)
    versions = {role: inc["version"] for role, inc in incidents.items()}

    # Refused: made on a version the incident does not have yet. Another operator's change then
    # brings the incident to that version, so a re-run would now go through; the repeat must not.
    ahead = {**versions, command.moved: versions[command.moved] + 1}
    method, path, body = command.request(incidents, ahead["target"], ahead.get("source", 1))
    key = f"refused-{command.name}-{time.time_ns()}"
    refused = assert_problem(await ops.send(method, path, body, key), 409, "stale_version")
    incidents[command.moved] = await ops.raise_level(incidents[command.moved])
    before = await snapshot(ops, incidents)
    again = await ops.send(method, path, body, key)
    assert again.status_code == 409 and again.headers.get("Idempotent-Replay") == "true"
    assert again.headers["content-type"].startswith(PROBLEM)
    assert again.json() == refused
    assert await snapshot(ops, incidents) == before

    # Accepted: the repeat answers what the first call answered, though a re-run would be stale now.
    current = {role: inc["version"] for role, inc in before.items()}
    method, path, body = command.request(incidents, current["target"], current.get("source", 1))
    key = f"accepted-{command.name}-{time.time_ns()}"
    first = await ops.send(method, path, body, key)
    assert first.status_code == command.success, first.text
    assert first.headers.get("Idempotent-Replay") is None
    after = await snapshot(ops, incidents)
    assert after != before
    repeat = await ops.send(method, path, body, key)
    assert repeat.status_code == command.success and repeat.headers.get("Idempotent-Replay") == "true"
    assert repeat.json() == first.json()
    assert await snapshot(ops, incidents) == after  # applied once
