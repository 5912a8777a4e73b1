"""The operator API of incident-intake (DESIGN §3, §6, §8) against the service as a real process:
roles, lists, the guarded lifecycle, level, merge and split, drills, idempotency, and the events
other services see."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import nats
import nats.errors
import nats.js.errors
import pytest

from ecs.envelope import Envelope, make_event
from ecs.gateway_client import GatewayClient
from ecs.testing import NatsServer, ServiceProcess, eventually
from tests import conftest
from tests.conftest import AUTH_SECRET, GATEWAY_ID, GATEWAY_SECRET

PROBLEM = "application/problem+json"

_spots = itertools.count(1)
_ids = itertools.count(1)


def new_spot() -> tuple[float, float]:
    """Spots 0.05° (5.5 km) apart: no two tests' alarms ever correlate on the shared intake."""
    n = next(_spots)
    return round(25.0 + 0.05 * (n % 40), 6), round(110.0 + 0.05 * (n // 40), 6)


def alarm(spot: tuple[float, float], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "alarm_id": f"op-{time.time_ns() % 10**12}-{next(_ids)}",
        "received_at": datetime.now(UTC).isoformat(),
        "category": "fire",
        "location": {"lat": spot[0], "lon": spot[1]},
        "caller": {"number": f"1390000{next(_ids):04d}"},
        "description": "smoke from the third floor",
    }
    body.update(overrides)
    return body


def start_intake(root: Any, **extra_env: str) -> tuple[ServiceProcess, NatsServer]:
    server = NatsServer(root / "nats-store").start()
    return conftest.start_intake(root, server.url, **extra_env), server


@pytest.fixture(scope="module")
def intake_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, NatsServer]]:
    """One intake shared by the tests that each work on incidents of their own."""
    proc, server = start_intake(tmp_path_factory.mktemp("intake-operator"))
    yield proc, server
    proc.stop()
    server.stop()


class Operator:
    """An HTTP client speaking for one person with some roles."""

    def __init__(self, base_url: str, headers: Callable[..., dict[str, str]]) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)
        self.headers = headers

    def as_(self, *roles: str, subject: str = "alice") -> dict[str, str]:
        return self.headers(*roles, subject=subject)

    async def get(self, path: str, roles: tuple[str, ...] = ("dispatcher",), **params: Any) -> httpx.Response:
        return await self.http.get(path, params=params, headers=self.as_(*roles))

    async def incident(self, incident_id: str) -> dict[str, Any]:
        resp = await self.get(f"/v1/incidents/{incident_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        roles: tuple[str, ...] = ("dispatcher",),
        subject: str = "alice",
        **headers: str,
    ) -> httpx.Response:
        return await self.http.post(path, json=body, headers={**self.as_(*roles, subject=subject), **headers})

    async def put(self, path: str, body: dict[str, Any], roles: tuple[str, ...] = ("dispatcher",)) -> httpx.Response:
        return await self.http.put(path, json=body, headers=self.as_(*roles))

    async def verify(self, inc: dict[str, Any], roles: tuple[str, ...] = ("dispatcher",)) -> httpx.Response:
        return await self.post(f"/v1/incidents/{inc['id']}/verify", {"version": inc["version"]}, roles)

    async def circle(
        self, inc: dict[str, Any], radius_m: float = 300, roles: tuple[str, ...] = ("dispatcher",)
    ) -> httpx.Response:
        lat, lon = inc["location"]["lat"], inc["location"]["lon"]
        body = {
            "version": inc["version"],
            "perimeter": {"kind": "circle", "lat": lat, "lon": lon, "radius_m": radius_m},
        }
        return await self.put(f"/v1/incidents/{inc['id']}/perimeter", body, roles)

    async def stage(
        self, inc: dict[str, Any], stage: str, roles: tuple[str, ...] = ("commander",), **extra: Any
    ) -> httpx.Response:
        return await self.post(
            f"/v1/incidents/{inc['id']}/stage", {"version": inc["version"], "stage": stage, **extra}, roles
        )

    async def fact(self, inc: dict[str, Any], fact: str) -> httpx.Response:
        return await self.post(
            f"/v1/incidents/{inc['id']}/facts", {"version": inc["version"], "fact": fact}, ("commander",)
        )

    async def aclose(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def ops(intake: ServiceProcess, operator_headers: Callable[..., dict[str, str]]) -> Any:
    client = Operator(intake.url, operator_headers)
    yield client
    await client.aclose()


def ok(resp: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    return resp.json()


def assert_problem(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    problem = resp.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    if code is not None:
        assert problem["type"] == f"urn:ecs:problem:{code}", problem
    return problem


async def report(
    gw: GatewayClient, ops: Operator, spot: tuple[float, float] | None = None, **fields: Any
) -> dict[str, Any]:
    """A gateway reports an alarm; the incident it landed in, as an operator sees it."""
    resp = await gw.send(alarm(spot or new_spot(), **fields))
    assert resp.status_code == 202, resp.text
    return await ops.incident(resp.json()["incident_id"])


async def isolated(gw: GatewayClient, ops: Operator, **fields: Any) -> dict[str, Any]:
    inc = await report(gw, ops, **fields)
    inc = ok(await ops.verify(inc))
    inc = ok(await ops.circle(inc))
    return ok(await ops.stage(inc, "isolation", ("dispatcher",)))


def step(inc: dict[str, Any], stage: str) -> dict[str, Any]:
    (found,) = [n for n in inc["next"] if n["stage"] == stage]
    return found


# --- who may do what ------------------------------------------------------------------------


async def test_no_token_or_a_bad_token_is_401(gw, ops, intake):
    inc = await report(gw, ops)
    expired = jwt.encode({"sub": "alice", "roles": ["dispatcher"], "exp": int(time.time()) - 60}, AUTH_SECRET)
    forged = jwt.encode({"sub": "alice", "roles": ["commander"], "exp": int(time.time()) + 600}, "x" * 32)
    for auth in (None, "Bearer", "Bearer not-a-token", f"Basic {expired}", f"Bearer {expired}", f"Bearer {forged}"):
        headers = {"Authorization": auth} if auth else {}
        async with httpx.AsyncClient(base_url=intake.url, headers=headers) as anon:
            assert_problem(await anon.get("/v1/incidents"), 401, "unauthorized")
            assert_problem(await anon.get(f"/v1/incidents/{inc['id']}"), 401, "unauthorized")
            resp = await anon.post(f"/v1/incidents/{inc['id']}/verify", json={"version": inc["version"]})
            assert_problem(resp, 401, "unauthorized")
    after = await ops.incident(inc["id"])
    assert after["verified"] is False and after["version"] == inc["version"]


async def test_a_role_that_may_not_act_is_403_naming_the_roles(gw, ops):
    inc = await report(gw, ops)
    ok(await ops.get(f"/v1/incidents/{inc['id']}", ("auditor",)))  # auditors read
    problem = assert_problem(await ops.verify(inc, ("auditor",)), 403, "forbidden")
    assert "dispatcher" in problem["detail"]
    for roles in (("dispatcher",), ("supply_officer",), ("information_officer",)):
        body = {"version": inc["version"], "level": 2, "reason": "more callers"}
        problem = assert_problem(await ops.post(f"/v1/incidents/{inc['id']}/level", body, roles), 403, "forbidden")
        assert "commander" in problem["detail"]
    assert_problem(await ops.circle(inc, roles=("shelter_manager",)), 403, "forbidden")
    after = await ops.incident(inc["id"])
    assert (after["version"], after["level"], after["verified"], after["perimeter"]) == (inc["version"], 4, False, None)


async def test_a_token_without_any_role_cannot_even_read(ops):
    assert_problem(await ops.get("/v1/incidents", ("",)), 403, "forbidden")


async def test_unknown_incident_is_404(ops):
    missing = "0" * 32
    assert_problem(await ops.get(f"/v1/incidents/{missing}"), 404, "not_found")
    assert_problem(await ops.get(f"/v1/incidents/{missing}/alarms"), 404, "not_found")
    inc = {"id": missing, "version": 1, "location": {"lat": 25.0, "lon": 110.0}}
    assert_problem(await ops.verify(inc), 404, "not_found")
    assert_problem(await ops.circle(inc), 404, "not_found")
    assert_problem(await ops.stage(inc, "isolation"), 404, "not_found")
    assert_problem(await ops.verify(inc, ("drill_runner",)), 404, "not_found")
    body = {"version": 1, "level": 2, "reason": "x"}
    assert_problem(await ops.post(f"/v1/incidents/{missing}/level", body, ("commander",)), 404, "not_found")


# --- verify, perimeter, stale versions ------------------------------------------------------


async def test_verify_records_who_and_bumps_the_version(gw, ops):
    inc = await report(gw, ops)
    assert step(inc, "isolation")["missing"] == ["incident not verified by a dispatcher", "no perimeter set"]
    verified = ok(
        await ops.post(f"/v1/incidents/{inc['id']}/verify", {"version": inc["version"]}, subject="dispatcher-7")
    )
    assert verified["verified"] is True and verified["version"] == inc["version"] + 1
    assert step(verified, "isolation")["missing"] == ["no perimeter set"]
    timeline = (await ops.incident(inc["id"]))["timeline"]
    assert [(e["kind"], e["actor"]) for e in timeline][-1] == ("verified", "dispatcher-7")
    assert_problem(await ops.verify(verified), 409, "conflict")  # already verified


async def test_stale_version_is_409_and_changes_nothing(gw, ops):
    inc = await report(gw, ops)
    moved = ok(await ops.circle(inc))
    problem = assert_problem(await ops.verify(inc), 409, "stale_version")  # still the version before
    assert problem["current_version"] == moved["version"]
    after = await ops.incident(inc["id"])
    assert after["verified"] is False and after["version"] == moved["version"]
    # Two operators racing on the same version: exactly one wins.
    results = await asyncio.gather(ops.verify(moved), ops.circle(moved, radius_m=900))
    assert sorted(r.status_code for r in results) == [200, 409]


async def test_perimeter_circle_and_polygon(gw, ops):
    inc = await report(gw, ops)
    lat, lon = inc["location"]["lat"], inc["location"]["lon"]
    circled = ok(await ops.circle(inc, radius_m=450))
    assert circled["perimeter"] == {"kind": "circle", "lat": lat, "lon": lon, "radius_m": 450}
    ring = [[lat, lon], [lat + 0.01, lon], [lat + 0.01, lon + 0.01], [lat, lon + 0.01], [lat, lon]]
    body = {"version": circled["version"], "perimeter": {"kind": "polygon", "points": ring}}
    polygon = ok(await ops.put(f"/v1/incidents/{inc['id']}/perimeter", body))
    assert polygon["perimeter"] == {"kind": "polygon", "points": ring[:-1]}  # closed ring stored open
    assert polygon["version"] == circled["version"] + 1
    assert step(polygon, "isolation")["missing"] == ["incident not verified by a dispatcher"]


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param({"kind": "polygon", "points": [[25.0, 110.0], [25.01, 110.01], [25.02, 110.02]]}),
        {"kind": "polygon", "points": [[25.0, 110.0], [25.01, 110.0], [25.02, 110.0]]},  # due north
        {"kind": "polygon", "points": [[25.0, 110.0], [25.01, 110.0]]},  # two points
        {"kind": "polygon", "points": [[25.0, 110.0], [25.0, 110.0], [25.0, 110.0], [25.0, 110.0]]},
        {"kind": "polygon", "points": [[95.0, 110.0], [25.01, 110.0], [25.0, 110.01]]},  # lat > 90
        {"kind": "circle", "lat": 25.0, "lon": 110.0, "radius_m": 0},
        {"kind": "circle", "lat": 25.0, "lon": 110.0, "radius_m": 60_000},
        {"kind": "circle", "lat": 91.0, "lon": 110.0, "radius_m": 100},
        {"kind": "triangle", "points": []},
    ],
    ids=[
        "diagonal line",
        "north line",
        "two points",
        "one point",
        "lat out of range",
        "radius 0",
        "radius 60 km",
        "lat 91",
        "kind",
    ],
)
async def test_bad_perimeter_is_422_naming_it_and_changes_nothing(gw, ops, shape):
    inc = await report(gw, ops)
    resp = await ops.put(f"/v1/incidents/{inc['id']}/perimeter", {"version": inc["version"], "perimeter": shape})
    problem = assert_problem(resp, 422)
    named = {e["field"] for e in problem.get("errors", [])} | {problem.get("field")}
    assert any(f and f.startswith("perimeter") for f in named), problem
    after = await ops.incident(inc["id"])
    assert after["perimeter"] is None and after["version"] == inc["version"]


# --- the lifecycle --------------------------------------------------------------------------


async def test_stage_guards_name_what_is_missing_and_then_let_the_incident_through(gw, ops):
    inc = await report(gw, ops)
    problem = assert_problem(await ops.stage(inc, "isolation", ("dispatcher",)), 409, "illegal_transition")
    assert problem["missing"] == ["incident not verified by a dispatcher", "no perimeter set"]
    assert "not verified" in problem["detail"] and "no perimeter" in problem["detail"]
    assert (await ops.incident(inc["id"]))["stage"] == "reported"

    inc = ok(await ops.verify(inc))
    inc = ok(await ops.circle(inc))
    inc = ok(await ops.stage(inc, "isolation", ("dispatcher",)))
    assert inc["stage"] == "isolation"
    # Only commanders take it further.
    assert_problem(await ops.stage(inc, "handling", ("dispatcher",)), 403, "forbidden")
    inc = ok(await ops.stage(inc, "handling"))  # no dispatch in this deployment: nothing to wait for
    problem = assert_problem(await ops.stage(inc, "opinion_control"), 409, "illegal_transition")
    assert problem["missing"] == ["hazard not declared under control"]
    inc = ok(await ops.fact(inc, "hazard_under_control"))
    inc = ok(await ops.stage(inc, "opinion_control"))
    inc = ok(await ops.stage(inc, "aftermath"))
    problem = assert_problem(await ops.stage(inc, "closed"), 409, "illegal_transition")
    assert problem["missing"] == ["after-action report missing"]
    inc = ok(await ops.fact(inc, "after_action_report"))
    closed = ok(await ops.stage(inc, "closed", reason="all clear"))
    assert closed["stage"] == "closed" and closed["next"] == []

    timeline = (await ops.incident(inc["id"]))["timeline"]
    moves = [(e["detail"]["from"], e["detail"]["to"]) for e in timeline if e["kind"] == "stage.changed"]
    assert moves == [
        ("reported", "isolation"),
        ("isolation", "handling"),
        ("handling", "opinion_control"),
        ("opinion_control", "aftermath"),
        ("aftermath", "closed"),
    ]
    assert all(e["actor"] == "alice" and e["at"] for e in timeline if e["kind"] == "stage.changed")
    # Finished is finished.
    for stage in ("isolation", "cancelled", "handling"):
        assert_problem(await ops.stage(closed, stage, ("commander",)), 409, "illegal_transition")


async def test_a_step_the_lifecycle_does_not_have_is_409_listing_the_allowed_ones(gw, ops):
    inc = await report(gw, ops)
    problem = assert_problem(await ops.stage(inc, "handling"), 409, "illegal_transition")
    assert problem["allowed"] == ["isolate", "cancel"]
    assert_problem(await ops.stage(inc, "reported"), 422)  # no step leads back to reported
    assert_problem(await ops.stage(inc, "underway"), 422)  # not a stage at all
    after = await ops.incident(inc["id"])
    assert (after["stage"], after["version"]) == ("reported", inc["version"])


async def test_cancel_only_from_reported_or_isolation(gw, ops):
    reported = await report(gw, ops)
    body = {"version": reported["version"], "reason": "prank call"}
    cancelled = ok(await ops.post(f"/v1/incidents/{reported['id']}/cancel", body))
    assert cancelled["stage"] == "cancelled"
    again = {"version": cancelled["version"], "reason": "again"}
    assert_problem(await ops.post(f"/v1/incidents/{reported['id']}/cancel", again), 409, "illegal_transition")

    in_isolation = await isolated(gw, ops)
    body = {"version": in_isolation["version"], "reason": "smoke machine at a concert"}
    assert ok(await ops.post(f"/v1/incidents/{in_isolation['id']}/cancel", body))["stage"] == "cancelled"

    handling = ok(await ops.stage(await isolated(gw, ops), "handling"))
    body = {"version": handling["version"], "reason": "too late for that"}
    problem = assert_problem(await ops.post(f"/v1/incidents/{handling['id']}/cancel", body), 409, "illegal_transition")
    assert problem["allowed"] == ["control_opinion"]
    assert (await ops.incident(handling["id"]))["stage"] == "handling"
    assert_problem(await ops.post(f"/v1/incidents/{handling['id']}/cancel", {"version": handling["version"]}), 422)


async def test_a_cancelled_incident_takes_no_more_alarms(gw, ops):
    spot = new_spot()
    inc = await report(gw, ops, spot)
    ok(await ops.post(f"/v1/incidents/{inc['id']}/cancel", {"version": inc["version"], "reason": "false alarm"}))
    receipt = (await gw.send(alarm(spot))).json()
    assert receipt["incident_id"] != inc["id"] and receipt["correlated"] is False
    assert (await ops.incident(inc["id"]))["alarm_count"] == 1


# --- level ----------------------------------------------------------------------------------


async def incident_events(js: Any, incident_id: str, since_seq: int = 1) -> list[tuple[Any, Envelope]]:
    found, seq = [], since_seq
    while True:
        try:
            msg = await js.get_msg("INCIDENTS", seq=seq, subject="incident.>", next=True)
        except nats.js.errors.NotFoundError:
            return found
        seq = msg.seq + 1
        env = Envelope.from_bytes(msg.data)
        if env.incident_id == incident_id:
            found.append((msg, env))


@pytest.fixture
async def js(intake_nats: NatsServer) -> Any:
    nc = await nats.connect(intake_nats.url)
    yield nc.jetstream()
    await nc.close()


async def test_level_raise_and_lower_each_emit_incident_level_changed(gw, ops, js):
    inc = await report(gw, ops)
    assert (inc["level"], inc["level_name"], inc["level_colour"]) == (4, "IV", "blue")
    body = {"version": inc["version"], "level": 2, "reason": "school nearby"}
    raised = ok(await ops.post(f"/v1/incidents/{inc['id']}/level", body, ("commander",)))
    assert (raised["level"], raised["level_name"], raised["level_colour"]) == (2, "II", "orange")
    body = {"version": raised["version"], "level": 3, "reason": "school evacuated"}
    lowered = ok(await ops.post(f"/v1/incidents/{inc['id']}/level", body, ("commander",)))
    assert lowered["level"] == 3 and lowered["version"] == inc["version"] + 2
    same = {"version": lowered["version"], "level": 3, "reason": "no change"}
    assert_problem(await ops.post(f"/v1/incidents/{inc['id']}/level", same, ("commander",)), 409)
    for bad in (
        {"version": lowered["version"], "level": 5, "reason": "x"},
        {"version": lowered["version"], "level": 1},
        {"version": lowered["version"], "level": True, "reason": "a client's slip: not level I"},
    ):
        assert_problem(await ops.post(f"/v1/incidents/{inc['id']}/level", bad, ("commander",)), 422)

    async def changes() -> list[dict[str, Any]]:
        found = [env.data for _, env in await incident_events(js, inc["id"]) if env.type == "incident.level.changed"]
        return found if len(found) == 2 else []

    first, second = await eventually(changes, "two incident.level.changed events")
    assert (first["from_level"], first["to_level"], first["reason"], first["actor"]) == (4, 2, "school nearby", "alice")
    assert (second["from_level"], second["to_level"], second["version"]) == (2, 3, lowered["version"])


async def test_casualties_reported_later_raise_the_level_by_themselves(gw, ops, js):
    spot = new_spot()
    inc = await report(gw, ops, spot)
    assert inc["level"] == 4
    raised = await report(gw, ops, spot, casualties=12)
    assert raised["id"] == inc["id"] and raised["level"] == 2 and raised["casualties"] == 12

    async def change() -> list[dict[str, Any]]:
        return [env.data for _, env in await incident_events(js, inc["id"]) if env.type == "incident.level.changed"]

    (event,) = await eventually(change, "the automatic incident.level.changed")
    assert (event["from_level"], event["to_level"], event["actor"]) == (4, 2, "correlation")


# --- merge and split ------------------------------------------------------------------------


async def test_merge_and_split_keep_provenance_and_counts(gw, ops, js):
    a_spot, b_spot = new_spot(), new_spot()
    a = await report(gw, ops, a_spot, caller={"number": "13911110001"})
    a = await report(gw, ops, a_spot, caller={"number": "13911110002"})
    b = await report(gw, ops, b_spot, caller={"number": "13911110001"}, casualties=4)  # same caller as a's first
    assert a["id"] != b["id"] and a["alarm_count"] == 2 and b["alarm_count"] == 1
    b_alarm = b["alarms"][0]

    body = {"version": a["version"], "source_incident_id": b["id"], "source_version": b["version"]}
    merged = ok(await ops.post(f"/v1/incidents/{a['id']}/merge", body))
    assert merged["alarm_count"] == 3
    assert merged["caller_count"] == 2  # the shared number counts once
    assert merged["casualties"] == 4 and merged["level"] == 3  # the worse of the two
    gone = await ops.incident(b["id"])
    assert gone["merged_into"] == a["id"] and gone["alarm_count"] == 0 and gone["alarms"] == []
    listed = ok(await ops.get("/v1/incidents", limit=500))["items"]
    assert b["id"] not in {i["id"] for i in listed} and a["id"] in {i["id"] for i in listed}
    with_merged = ok(await ops.get("/v1/incidents", limit=500, include_merged="true"))["items"]
    assert b["id"] in {i["id"] for i in with_merged}
    moved = [x for x in (await ops.incident(a["id"]))["alarms"] if x["alarm_id"] == b_alarm["alarm_id"]]
    assert moved[0]["incident_id"] == a["id"] and moved[0]["original_incident_id"] == b["id"]
    # A merged incident cannot be acted on any more.
    assert_problem(await ops.verify(gone), 409, "conflict")

    body = {"version": merged["version"], "alarms": [{"gateway_id": GATEWAY_ID, "alarm_id": b_alarm["alarm_id"]}]}
    split = ok(await ops.post(f"/v1/incidents/{a['id']}/split", body), 201)
    old, new = split["incident"], split["new_incident"]
    assert old["id"] == a["id"] and new["split_from"] == a["id"]
    assert (old["alarm_count"], old["caller_count"], old["casualties"]) == (2, 2, 0)
    assert (new["alarm_count"], new["caller_count"], new["casualties"], new["level"]) == (1, 1, 4, 3)
    assert (new["location"]["lat"], new["location"]["lon"]) == b_spot
    (split_alarm,) = (await ops.incident(new["id"]))["alarms"]
    assert split_alarm["alarm_id"] == b_alarm["alarm_id"]
    assert split_alarm["original_incident_id"] == b["id"]  # provenance survives both moves
    kinds = [e["kind"] for e in (await ops.incident(a["id"]))["timeline"]]
    assert "merged" in kinds and "split" in kinds
    assert [e["kind"] for e in (await ops.incident(b["id"]))["timeline"]][-1] == "merged.into"

    async def told() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None:
        on_a = {env.type: env.data for _, env in await incident_events(js, a["id"])}
        on_new = {env.type: env.data for _, env in await incident_events(js, new["id"])}
        if "incident.split" in on_a and "incident.created" in on_new:
            return on_a["incident.merged"], on_a["incident.split"], on_new["incident.created"]
        return None

    merged_event, split_event, created_event = await eventually(told, "the merge and split events")
    assert (merged_event["merged_incident_id"], merged_event["alarms_moved"]) == (b["id"], 1)
    assert (split_event["new_incident_id"], split_event["alarm_ids"]) == (
        new["id"],
        [f"{GATEWAY_ID}:{b_alarm['alarm_id']}"],
    )
    assert (created_event["alarm_id"], created_event["level"]) == (b_alarm["alarm_id"], 3)
    assert split_event["state_of"] == b["id"]  # exactly b's alarms: the new incident is b's state again


async def test_merge_and_split_refuse_what_makes_no_sense(gw, ops):
    live, drill = await report(gw, ops), await report(gw, ops, exercise=True)
    body = {"version": live["version"], "source_incident_id": live["id"], "source_version": live["version"]}
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/merge", body), 422)
    body = {"version": live["version"], "source_incident_id": drill["id"], "source_version": drill["version"]}
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/merge", body), 409)
    body = {"version": live["version"], "source_incident_id": "f" * 32, "source_version": 1}
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/merge", body), 404)
    other = await report(gw, ops)
    body = {"version": live["version"], "source_incident_id": other["id"], "source_version": other["version"] + 1}
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/merge", body), 409, "stale_version")

    only = live["alarms"][0]
    body = {"version": live["version"], "alarms": [{"gateway_id": GATEWAY_ID, "alarm_id": only["alarm_id"]}]}
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/split", body), 409)  # would leave it empty
    body = {
        "version": live["version"],
        "alarms": [{"gateway_id": GATEWAY_ID, "alarm_id": other["alarms"][0]["alarm_id"]}],
    }
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/split", body), 422)  # not its alarm
    for inc in (live, drill, other):
        after = await ops.incident(inc["id"])
        assert (after["alarm_count"], after["version"], after["merged_into"]) == (1, inc["version"], None)


# --- drills ---------------------------------------------------------------------------------


async def test_a_drill_runner_acts_on_exercise_incidents_only(gw, ops):
    drill, live = await report(gw, ops, exercise=True), await report(gw, ops)
    runner = ("drill_runner",)
    drill = ok(await ops.verify(drill, runner))
    drill = ok(await ops.circle(drill, roles=runner))
    drill = ok(await ops.stage(drill, "isolation", runner))
    drill = ok(await ops.stage(drill, "handling", runner))  # a commander's step, in a drill
    body = {"version": drill["version"], "level": 1, "reason": "drill escalation"}
    assert ok(await ops.post(f"/v1/incidents/{drill['id']}/level", body, runner))["level"] == 1

    problem = assert_problem(await ops.verify(live, runner), 403, "forbidden")
    assert "exercise" in problem["detail"]
    assert_problem(await ops.stage(live, "cancelled", runner, reason="drill"), 403, "forbidden")
    body = {"version": live["version"], "level": 1, "reason": "drill escalation"}
    assert_problem(await ops.post(f"/v1/incidents/{live['id']}/level", body, runner), 403, "forbidden")
    after = await ops.incident(live["id"])
    assert (after["version"], after["verified"], after["level"], after["stage"]) == (
        live["version"],
        False,
        4,
        "reported",
    )
    ok(await ops.get(f"/v1/incidents/{live['id']}", runner))  # reading is fine


async def test_exercise_and_live_alarms_at_one_place_stay_apart(gw, ops):
    spot = new_spot()
    live = await report(gw, ops, spot)
    drill = await report(gw, ops, spot, exercise=True)
    assert drill["id"] != live["id"] and drill["exercise"] is True and live["exercise"] is False
    assert (await ops.incident(live["id"]))["alarm_count"] == 1


async def test_purge_removes_exercise_data_only(tmp_path, operator_headers):
    intake, server = start_intake(tmp_path)
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    ops = Operator(intake.url, operator_headers)
    try:
        spot = new_spot()
        live = await report(gw, ops, spot)
        live = await report(gw, ops, spot)
        drills = [await report(gw, ops, exercise=True) for _ in range(2)]
        drills[0] = await report(gw, ops, (drills[0]["location"]["lat"], drills[0]["location"]["lon"]), exercise=True)
        assert_problem(await ops.http.delete("/v1/exercise/incidents", headers=ops.as_("commander")), 403)

        resp = await ops.http.delete("/v1/exercise/incidents", headers=ops.as_("drill_runner"))
        assert ok(resp) == {"incidents_purged": 2, "alarms_purged": 3}
        for d in drills:
            assert_problem(await ops.get(f"/v1/incidents/{d['id']}"), 404)
        after = await ops.incident(live["id"])
        assert (after["alarm_count"], after["version"], len(after["alarms"])) == (2, live["version"], 2)
        assert [i["id"] for i in ok(await ops.get("/v1/incidents"))["items"]] == [live["id"]]
        # The drill can run again after a purge, from a clean slate.
        again = await report(gw, ops, exercise=True)
        assert again["alarm_count"] == 1
        assert ok(await ops.http.delete("/v1/exercise/incidents", headers=ops.as_("drill_runner"))) == {
            "incidents_purged": 1,
            "alarms_purged": 1,
        }
    finally:
        await gw.aclose()
        await ops.aclose()
        intake.stop()
        server.stop()


# --- idempotency ----------------------------------------------------------------------------


async def replay(ops: Operator, path: str, body: dict[str, Any], roles: tuple[str, ...], key: str) -> httpx.Response:
    """The same request again: the first answer was stored before it was sent."""
    return await ops.post(path, body, roles, **{"Idempotency-Key": key})


async def test_idempotency_key_replays_the_stored_answer(gw, ops):
    inc = await report(gw, ops)
    body = {"version": inc["version"], "level": 2, "reason": "many callers"}
    path = f"/v1/incidents/{inc['id']}/level"
    first = await ops.post(path, body, ("commander",), **{"Idempotency-Key": "raise-1"})
    answer = ok(first)
    replay_ = await replay(ops, path, body, ("commander",), "raise-1")
    assert replay_.status_code == 200 and replay_.headers.get("Idempotent-Replay") == "true"
    assert replay_.json() == answer
    after = await ops.incident(inc["id"])
    assert after["version"] == answer["version"]  # applied once
    assert [e["kind"] for e in after["timeline"]].count("level.changed") == 1

    other = {"version": answer["version"], "level": 3, "reason": "second thoughts"}
    reused = await ops.post(path, other, ("commander",), **{"Idempotency-Key": "raise-1"})
    assert_problem(reused, 422, "idempotency_key_reused")
    assert (await ops.incident(inc["id"]))["level"] == 2

    # Keys belong to their holder: someone else's "raise-1" is a fresh request.
    mine = await ops.post(path, other, ("commander",), subject="bob", **{"Idempotency-Key": "raise-1"})
    assert ok(mine)["level"] == 3


async def test_idempotency_key_replays_a_refusal_too(gw, ops):
    inc = await report(gw, ops)
    path = f"/v1/incidents/{inc['id']}/stage"
    body = {"version": inc["version"], "stage": "isolation"}
    first = assert_problem(await ops.post(path, body, **{"Idempotency-Key": "iso-1"}), 409)
    again = await replay(ops, path, body, ("dispatcher",), "iso-1")
    assert again.status_code == 409 and again.json() == first


# --- events ---------------------------------------------------------------------------------


async def test_incident_events_arrive_on_jetstream_with_their_envelope(gw, ops, js):
    spot = new_spot()
    sub = await js.subscribe("incident.>", stream="INCIDENTS", ordered_consumer=True)
    try:
        await report(gw, ops, spot, exercise=True)
        drill = await report(gw, ops, spot, exercise=True)
        alarm_ids = {a["alarm_id"] for a in drill["alarms"]}
        drill = ok(await ops.verify(drill, ("drill_runner",)))
        drill = ok(await ops.circle(drill))
        drill = ok(await ops.stage(drill, "isolation", ("drill_runner",)))

        wanted = {"incident.created": 1, "incident.alarm.linked": 2, "incident.stage.changed": 1}
        seen: dict[str, list[tuple[Any, Envelope]]] = {}

        async def all_seen() -> bool:
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    msg = await sub.next_msg(timeout=0.2)
                    env = Envelope.from_bytes(msg.data)
                    if env.incident_id == drill["id"]:
                        assert msg.subject == env.type
                        seen.setdefault(env.type, []).append((msg, env))
            return all(len(seen.get(t, [])) >= n for t, n in wanted.items())

        await eventually(all_seen, "the drill's created, linked and stage events")
    finally:
        await sub.unsubscribe()

    for msgs in seen.values():
        for msg, env in msgs:
            assert msg.headers["Nats-Msg-Id"] == env.id
            assert env.exercise is True
            assert env.source == "incident-intake" and env.schema_version == 1
            assert env.occurred_at.tzinfo is not None
            assert env.data["incident_id"] == drill["id"]
    ((_, created),) = seen["incident.created"]
    assert created.data["exercise"] is True and created.data["category"] == "fire"
    linked = [env.data for _, env in seen["incident.alarm.linked"]]
    assert [(d["alarm_count"], d["new_incident"]) for d in linked] == [(1, True), (2, False)]
    assert {d["alarm_id"] for d in linked} == alarm_ids
    ((_, moved),) = seen["incident.stage.changed"]
    assert (moved.data["from_stage"], moved.data["to_stage"]) == ("reported", "isolation")
    assert moved.data["perimeter"]["kind"] == "circle" and moved.data["version"] == drill["version"]
    every_id = [env.id for msgs in seen.values() for _, env in msgs]
    assert len(every_id) == len(set(every_id))


# --- lists ----------------------------------------------------------------------------------


async def test_list_filters_and_cursor_pagination(db_url, intake_factory, nats_private, operator_headers):
    intake = intake_factory(db_url)
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    ops = Operator(intake.url, operator_headers)
    try:
        now = datetime.now(UTC)
        shanghai, beijing = (31.2304, 121.4737), (39.9042, 116.4074)
        fire = await report(gw, ops, shanghai)
        crush = await report(gw, ops, (31.2400, 121.4900), category="crowd_crush")
        flood = await report(gw, ops, beijing, category="flood", exercise=True)
        old = await report(
            gw, ops, (39.95, 116.45), category="traffic_accident", received_at=(now - timedelta(hours=5)).isoformat()
        )
        hurt = await report(gw, ops, (31.30, 121.50), category="medical", casualties=12)
        cancelled = ok(
            await ops.post(f"/v1/incidents/{hurt['id']}/cancel", {"version": hurt["version"], "reason": "x"})
        )
        assert (crush["level"], hurt["level"]) == (3, 2)

        async def ids(**params: Any) -> set[str]:
            return {i["id"] for i in ok(await ops.get("/v1/incidents", limit=500, **params))["items"]}

        everything = {fire["id"], crush["id"], flood["id"], old["id"], hurt["id"]}
        assert await ids() == everything
        assert await ids(stage="cancelled") == {cancelled["id"]}
        assert await ids(stage=["reported", "cancelled"]) == everything
        assert await ids(category="flood") == {flood["id"]}
        assert await ids(category=["fire", "crowd_crush"]) == {fire["id"], crush["id"]}
        assert await ids(exercise="true") == {flood["id"]}
        assert await ids(exercise="false") == everything - {flood["id"]}
        assert await ids(bbox="31.0,121.0,31.5,122.0") == {fire["id"], crush["id"], hurt["id"]}
        assert await ids(bbox="39.0,116.0,40.5,117.0", exercise="false") == {old["id"]}
        hour_ago = (now - timedelta(hours=1)).isoformat()
        assert await ids(since=hour_ago) == everything - {old["id"]}
        assert await ids(until=hour_ago) == {old["id"]}
        assert await ids(since=(now - timedelta(hours=6)).isoformat(), until=hour_ago, category="traffic_accident") == {
            old["id"]
        }
        for bad in (
            {"bbox": "1,2,3"},
            {"bbox": "40,116,39,117"},
            {"since": "2025-01-01T00:00:00"},
            {"stage": "underway"},
            {"level": 5},
            {"limit": 501},
            {"cursor": "not-a-cursor"},
            {"limit": 0},
        ):
            assert_problem(await ops.get("/v1/incidents", **bad), 422)

        # Twelve more from one batch share a creation time: the cursor must still page exactly.
        batch = [alarm((20.0 + 0.1 * i, 100.0)) for i in range(12)]
        answer = (await gw.send_batch(batch)).json()
        assert answer["accepted"] == 12
        everything |= {r["receipt"]["incident_id"] for r in answer["results"]}
        pages, cursor = [], None
        while True:
            params: dict[str, Any] = {"limit": 5}
            if cursor:
                params["cursor"] = cursor
            page = ok(await ops.get("/v1/incidents", **params))
            pages.append([i["id"] for i in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [len(p) for p in pages] == [5, 5, 5, 2]
        flat = [i for p in pages for i in p]
        assert len(flat) == len(set(flat)) and set(flat) == everything
        whole = [i["id"] for i in ok(await ops.get("/v1/incidents", limit=500))["items"]]
        assert flat == whole  # newest first, the same order page by page
        assert whole.index(fire["id"]) > whole.index(hurt["id"])
    finally:
        await gw.aclose()
        await ops.aclose()


async def test_an_incidents_alarms_page_oldest_first(gw, ops):
    spot = new_spot()
    sent = [alarm(spot) for _ in range(7)]
    answer = (await gw.send_batch(sent)).json()
    incident_id = answer["results"][0]["receipt"]["incident_id"]
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = ok(await ops.get(f"/v1/incidents/{incident_id}/alarms", **params))
        seen.append([a["alarm_id"] for a in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [[a["alarm_id"] for a in sent[i : i + 3]] for i in (0, 3, 6)]


# --- facts from other services --------------------------------------------------------------


async def publish_fact(js: Any, subject: str, incident_id: str, data: dict[str, Any], source: str = "dispatch") -> str:
    env = make_event(subject, data, source=source, incident_id=incident_id)
    await js.publish(subject, env.to_bytes(), headers={"Nats-Msg-Id": env.id})
    return env.id


async def test_other_services_facts_unblock_handling_and_closing(tmp_path, operator_headers):
    intake, server = start_intake(tmp_path, INTAKE_REQUIRED_PARTICIPANTS='["dispatch"]')
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    ops = Operator(intake.url, operator_headers)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        inc = await isolated(gw, ops)
        problem = assert_problem(await ops.stage(inc, "handling"), 409, "illegal_transition")
        assert problem["missing"] == ["perimeter units not on scene (dispatch)"]

        await publish_fact(
            js, "dispatch.incident.perimeter_secured", inc["id"], {"incident_id": inc["id"], "on_scene": True}
        )

        async def unblocked(stage: str) -> dict[str, Any] | None:
            current = await ops.incident(inc["id"])
            return current if step(current, stage)["allowed"] else None

        inc = await eventually(lambda: unblocked("handling"), "units on scene to unblock handling")
        inc = ok(await ops.stage(inc, "handling"))
        inc = ok(await ops.fact(inc, "hazard_under_control"))
        inc = ok(await ops.stage(inc, "opinion_control"))
        inc = ok(await ops.stage(inc, "aftermath"))
        inc = ok(await ops.fact(inc, "after_action_report"))
        problem = assert_problem(await ops.stage(inc, "closed"), 409, "illegal_transition")
        assert problem["missing"] == ["participant 'dispatch' has not reported"]  # silence is not consent

        await publish_fact(
            js,
            "dispatch.incident.settled",
            inc["id"],
            {"incident_id": inc["id"], "participant": "dispatch", "settled": False, "detail": "2 units out"},
        )

        async def says_not_settled() -> dict[str, Any] | None:
            current = await ops.incident(inc["id"])
            return current if step(current, "closed")["missing"] == ["participant 'dispatch' not settled"] else None

        inc = await eventually(says_not_settled, "dispatch to report it still holds units")
        assert_problem(await ops.stage(inc, "closed"), 409, "illegal_transition")

        await publish_fact(
            js,
            "dispatch.incident.settled",
            inc["id"],
            {"incident_id": inc["id"], "participant": "dispatch", "settled": True},
        )
        inc = await eventually(lambda: unblocked("closed"), "dispatch settling to unblock closing")
        closed = ok(await ops.stage(inc, "closed"))
        assert closed["stage"] == "closed"
        facts = [e for e in (await ops.incident(inc["id"]))["timeline"] if e["kind"].startswith("fact.")]
        assert [(e["kind"], e["actor"]) for e in facts if e["actor"] == "dispatch"] == [
            ("fact.perimeter_units_on_scene", "dispatch"),
            ("fact.settled", "dispatch"),
            ("fact.settled", "dispatch"),
        ]
    finally:
        await nc.close()
        await gw.aclose()
        await ops.aclose()
        intake.stop()
        server.stop()


async def test_a_fact_delivered_twice_is_applied_once_and_bad_facts_are_dead_lettered(tmp_path, operator_headers):
    intake, server = start_intake(tmp_path, INTAKE_REQUIRED_PARTICIPANTS='["dispatch"]')
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    ops = Operator(intake.url, operator_headers)
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    try:
        inc = await isolated(gw, ops)
        env = make_event(
            "dispatch.incident.perimeter_secured",
            {"incident_id": inc["id"], "on_scene": True},
            source="dispatch",
            incident_id=inc["id"],
        )
        # The same fact twice, past JetStream's dedupe (as after its window): the inbox drops the copy.
        await js.publish(env.type, env.to_bytes(), headers={"Nats-Msg-Id": env.id})
        await js.publish(env.type, env.to_bytes(), headers={"Nats-Msg-Id": env.id + "-again"})
        unknown = await publish_fact(
            js, "dispatch.incident.perimeter_secured", "9" * 32, {"incident_id": "9" * 32, "on_scene": True}
        )
        bad = await publish_fact(js, "dispatch.incident.perimeter_secured", inc["id"], {"incident_id": inc["id"]})
        await js.publish("dispatch.incident.settled", b"{not an envelope", headers={"Nats-Msg-Id": "garbage-1"})

        async def dead_letters() -> dict[str, str] | None:
            found = {}
            seq = 1
            while True:
                try:
                    msg = await js.get_msg("DEADLETTER", seq=seq, subject="deadletter.dispatch.>", next=True)
                except nats.js.errors.NotFoundError:
                    break
                seq = msg.seq + 1
                found[msg.headers["Nats-Msg-Id"]] = msg.headers["Ecs-Reason"]
            return found if len(found) == 3 else None

        reasons = await eventually(dead_letters, "three dead letters")
        assert "unknown incident" in reasons[f"dl:intake-facts-dispatch:{unknown}"]
        assert "on_scene" in reasons[f"dl:intake-facts-dispatch:{bad}"]
        assert "envelope" in reasons["dl:intake-facts-dispatch:garbage-1"]

        async def applied() -> list[Any] | None:
            timeline = (await ops.incident(inc["id"]))["timeline"]
            return [e for e in timeline if e["kind"] == "fact.perimeter_units_on_scene"] or None

        await eventually(applied, "the fact to be applied")
        info = await js.consumer_info("DISPATCH", "intake-facts-dispatch")
        assert info.num_pending == 0 and info.num_ack_pending == 0
        assert len(await applied() or []) == 1
        assert step(await ops.incident(inc["id"]), "handling")["allowed"] is True
    finally:
        await nc.close()
        await gw.aclose()
        await ops.aclose()
        intake.stop()
        server.stop()


async def test_list_filter_by_level(gw, ops):
    spot = new_spot()
    crush = await report(gw, ops, spot, category="crowd_crush")
    hurt = await report(gw, ops, new_spot(), category="medical", casualties=12)
    assert (crush["level"], hurt["level"]) == (3, 2)
    around = f"{spot[0] - 1},{spot[1] - 1},{spot[0] + 1},{spot[1] + 1}"

    async def ids(**params: Any) -> set[str]:
        return {i["id"] for i in ok(await ops.get("/v1/incidents", limit=500, bbox=around, **params))["items"]}

    assert crush["id"] in await ids(level=3)
    assert hurt["id"] in await ids(level=[2, 3]) and crush["id"] in await ids(level=[2, 3])
    assert crush["id"] not in await ids(level=2)


async def test_after_a_purge_a_drill_alarm_at_the_same_place_opens_a_new_incident(tmp_path, operator_headers):
    intake, server = start_intake(tmp_path)
    gw = GatewayClient(intake.url, GATEWAY_ID, GATEWAY_SECRET)
    ops = Operator(intake.url, operator_headers)
    try:
        spot = new_spot()
        purged = await report(gw, ops, spot, exercise=True)
        ok(await ops.http.delete("/v1/exercise/incidents", headers=ops.as_("drill_runner")))
        receipt = (await gw.send(alarm(spot, exercise=True))).json()
        assert receipt["incident_id"] != purged["id"]
        assert (await ops.incident(receipt["incident_id"]))["alarm_count"] == 1
    finally:
        await gw.aclose()
        await ops.aclose()
        intake.stop()
        server.stop()


async def test_a_replayed_refusal_keeps_its_problem_content_type(gw, ops):
    inc = await report(gw, ops)
    path = f"/v1/incidents/{inc['id']}/stage"
    body = {"version": inc["version"], "stage": "isolation"}
    assert_problem(await ops.post(path, body, **{"Idempotency-Key": "iso-2"}), 409)
    assert_problem(await replay(ops, path, body, ("dispatcher",), "iso-2"), 409)


async def test_a_replay_right_after_the_answer_gets_the_stored_answer(gw, ops):
    refused = 0
    for n in range(40):
        inc = await report(gw, ops)
        body = {"version": inc["version"], "level": 2, "reason": "many callers"}
        path = f"/v1/incidents/{inc['id']}/level"
        key = f"quick-{inc['id']}-{n}"
        answer = ok(await ops.post(path, body, ("commander",), **{"Idempotency-Key": key}))
        again = await ops.post(path, body, ("commander",), **{"Idempotency-Key": key})
        if again.status_code == 409:
            refused += 1
        else:
            assert again.json() == answer
    assert refused == 0, f"{refused} of 40 immediate replays were refused as in progress"


def _cursor(parts: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [_cursor([1, 2]), _cursor(["2025-01-01T00:00:00+00:00"]), _cursor(["not a time", "x"]), _cursor({"a": 1})],
    ids=["numbers", "one part", "not a time", "object"],
)
async def test_a_tampered_cursor_is_422(gw, ops, cursor):
    inc = await report(gw, ops)
    assert_problem(await ops.get("/v1/incidents", cursor=cursor), 422)
    assert_problem(await ops.get(f"/v1/incidents/{inc['id']}/alarms", cursor=cursor), 422)
