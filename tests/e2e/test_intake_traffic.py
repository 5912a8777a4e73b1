"""incident-intake under real gateway traffic, as a real process on PostgreSQL (which, unlike
SQLite, refuses U+0000): what the database or the arithmetic would refuse is refused at the edge
as a 422 naming the field, over HTTP and NATS, and never holds good alarms hostage; a reused
alarm_id is a 409 an operator can find; one caller however written is one caller; 503 only means
"unavailable"; large numbers and odd digits are 4xx, never 500."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from ecs.testing import NatsServer, ServiceProcess, create_database, drop_database, eventually
from tests.conftest import GATEWAY_ID, start_intake
from tests.e2e.test_intake_gateway import (
    _dead_letter,
    alarm,
    alarms_consumed,
    assert_problem,
    holdings,
    incident,
    new_spot,
    post_raw,
)


@pytest.fixture(scope="module")
def intake_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_server_url: str
) -> Iterator[tuple[ServiceProcess, NatsServer]]:
    root = tmp_path_factory.mktemp("intake-traffic")
    url = asyncio.run(create_database(pg_server_url))
    server = NatsServer(root / "nats-store").start()
    proc = start_intake(root, server.url, url)
    yield proc, server
    proc.stop()
    server.stop()
    asyncio.run(drop_database(pg_server_url, url))


@pytest.fixture
async def ops(intake: ServiceProcess, operator_headers: Callable[..., dict[str, str]]) -> Any:
    async with httpx.AsyncClient(base_url=intake.url, headers=operator_headers("dispatcher"), timeout=30) as c:
        yield c


@pytest.fixture
async def js(intake_nats: NatsServer) -> Any:
    import nats

    nc = await nats.connect(intake_nats.url)
    yield nc.jetstream()
    await nc.close()


# --- 2. input the database or the arithmetic would refuse --------------------------------------

EDGE_CASES = {
    "U+0000 in the description": ({"description": "smoke\x00on the 3rd floor"}, "description"),
    "U+0000 in the caller's name": ({"caller": {"number": "13900000001", "name": "Li\x00"}}, "caller.name"),
    "received_at at the end of time": ({"received_at": "9999-12-31T23:59:59+00:00"}, "received_at"),
    "received_at at the start of time": ({"received_at": "0001-01-01T00:00:00+14:00"}, "received_at"),
    "Beijing wall clock written as UTC": (
        {"received_at": (datetime.now(UTC) + timedelta(hours=8)).isoformat()},
        "received_at",
    ),
    "received_at implausibly old": ({"received_at": "2001-01-01T00:00:00+08:00"}, "received_at"),
    "a number that is no phone number": ({"caller": {"number": "not-a-number"}}, "caller.number"),
    "outside the service area, across the antimeridian": ({"location": {"lat": 64.0, "lon": 179.9999}}, "location"),
    "outside the service area, near a pole": ({"location": {"lat": 89.9999, "lon": 10.0}}, "location"),
}


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=list(EDGE_CASES))
async def test_input_the_store_would_refuse_is_422_naming_the_field(intake, ops, case):
    changes, field = EDGE_CASES[case]
    before = await holdings(ops)
    resp = await post_raw(intake, orjson.dumps(alarm(new_spot(), **changes)))
    assert_problem(resp, 422, field)
    assert await holdings(ops) == before


async def test_a_batch_with_one_bad_item_is_answered_item_by_item(gw, ops):
    spot = new_spot()
    good1, good2 = alarm(spot), alarm(spot, caller={"number": "13900000002"})
    bad = alarm(spot, description="smoke\x00")
    resp = await gw.send_batch([good1, bad, good2])
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 1)
    assert [r["status"] for r in answer["results"]] == [202, 422, 202]
    assert answer["results"][1]["error"]["errors"][0]["field"] == "alarms.1.description"
    inc = await incident(ops, answer["results"][0]["receipt"]["incident_id"])
    assert {a["alarm_id"] for a in inc["alarms"]} == {good1["alarm_id"], good2["alarm_id"]}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"description": "smoke\x00"}, "description"),
        ({"received_at": "9999-12-31T23:00:00Z"}, "received_at"),
        ({"location": {"lat": 64.0, "lon": -179.9999}}, "location"),
    ],
)
async def test_a_nats_alarm_that_can_never_succeed_is_dead_lettered_and_good_ones_go_through(
    gw, ops, js, changes, field
):
    spot = new_spot()
    good1, good2 = alarm(spot), alarm(spot, caller={"number": "13900000009"})
    bad = alarm(spot, **changes)
    for a in (good1, bad, good2):
        await gw.publish(js, a)
    msg = await _dead_letter(js, f"alarm.in.{GATEWAY_ID}", bad["alarm_id"])
    assert field in msg.headers["Ecs-Reason"]
    await eventually(lambda: alarms_consumed(js), "the alarm consumer to settle")
    receipt = (await gw.send(good1)).json()  # a repeat over HTTP tells where it went
    assert receipt["duplicate"] is True
    inc = await incident(ops, receipt["incident_id"])
    assert {x["alarm_id"] for x in inc["alarms"]} == {good1["alarm_id"], good2["alarm_id"]}


# --- 4. one caller is one caller ----------------------------------------------------------------


async def test_one_number_written_three_ways_is_one_caller_and_verifies_nothing(gw, ops):
    spot = new_spot()
    ids = []
    for number in ("13900000031", "008613900000031", "+86 139-0000-0031"):
        resp = await gw.send(alarm(spot, caller={"number": number}))
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["incident_id"])
    assert len(set(ids)) == 1
    inc = await incident(ops, ids[0])
    assert inc["caller_count"] == 1 and inc["verified"] is False


# --- 5. a reused alarm_id ------------------------------------------------------------------------


async def test_a_different_alarm_under_a_used_alarm_id_is_409_and_an_operator_can_find_it(intake, gw, ops):
    fire = alarm(new_spot())
    first = await gw.send(fire)
    assert first.status_code == 202
    before = await holdings(ops)
    lat, lon = fire["location"]["lat"], fire["location"]["lon"]
    crush = alarm(
        (lat - 0.5, lon), alarm_id=fire["alarm_id"], category="crowd_crush", casualties=12, description="stampede"
    )
    resp = await gw.send(crush)
    problem = assert_problem(resp, 409, "alarm_id")
    assert fire["alarm_id"] in problem["detail"]
    assert await holdings(ops) == before
    refusals = (await ops.get("/v1/alarm-refusals")).json()["items"]
    assert any(r["alarm_id"] == fire["alarm_id"] and r["gateway_id"] == GATEWAY_ID for r in refusals)
    # the same alarm again, keys in another order: still a duplicate
    again = await post_raw(intake, orjson.dumps(dict(reversed(list(fire.items())))))
    assert again.status_code == 202 and again.json()["duplicate"] is True


# --- 8. odd digits and large numbers are 4xx ----------------------------------------------------


# Header bytes arrive as Latin-1: 0xB2 0xB3 is "²³", which str.isdigit() takes and int() refuses.
@pytest.mark.parametrize("timestamp", ["١٧٠٠٠٠٠٠٠٠".encode(), b"\xb2\xb3", b"9" * 30, b"-1", b"1e9"])
async def test_an_odd_x_timestamp_is_401_not_500(intake, timestamp):
    resp = await post_raw(intake, orjson.dumps(alarm(new_spot())), X_Timestamp=timestamp)
    assert_problem(resp, 401, "X-Timestamp")


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/v1/incidents/%00", {}, (404, 422)),  # not found, or refused before routing
        ("/v1/incidents/%00/alarms", {}, (404, 422)),
        (
            "/v1/incidents",
            {"cursor": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00","\\u0000"]').decode()},
            422,
        ),
        ("/v1/incidents", {"until": "9999-12-31T23:59:59-23:59"}, 422),
        ("/v1/incidents", {"since": "0001-01-01T00:00:00+23:59"}, 422),
        ("/v1/incidents", {"limit": "9223372036854775808"}, 422),
        ("/v1/alarm-refusals", {"cursor": base64.urlsafe_b64encode(b"[9223372036854775808]").decode()}, 422),
    ],
)
async def test_large_numbers_and_odd_text_in_the_operator_api_are_4xx(ops, path, params, status):
    resp = await ops.get(path, params=params)
    statuses = status if isinstance(status, tuple) else (status,)
    assert_problem(resp, resp.status_code if resp.status_code in statuses else statuses[0])


async def test_an_incidents_alarm_cursor_past_64_bits_is_422(gw, ops):
    receipt = (await gw.send(alarm(new_spot()))).json()
    cursor = base64.urlsafe_b64encode(b"[9223372036854775808]").decode()
    resp = await ops.get(f"/v1/incidents/{receipt['incident_id']}/alarms", params={"cursor": cursor})
    assert_problem(resp, 422, "cursor")


async def test_an_operators_text_with_u0000_is_422_naming_the_field(gw, intake, operator_headers):
    receipt = (await gw.send(alarm(new_spot()))).json()
    async with httpx.AsyncClient(base_url=intake.url, headers=operator_headers("commander"), timeout=30) as c:
        r = await c.post(
            f"/v1/incidents/{receipt['incident_id']}/level", json={"version": 1, "level": 2, "reason": "x\x00"}
        )
    assert r.status_code == 422 and "reason" in r.text, r.text
