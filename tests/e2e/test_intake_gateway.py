"""The 110 gateway contract v1 (DESIGN §7) against incident-intake running as a real process.

Every bad input gets the right status and a problem+json body naming the field, and changes
nothing; good input is stored once, whichever way (HTTP or NATS) and however often it arrives.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
import nats.js.errors
import orjson
import pytest

from ecs.envelope import Envelope
from ecs.gateway_client import GatewayClient, signed_headers
from ecs.geo import gcj02_to_wgs84, haversine_m, wgs84_to_gcj02
from ecs.testing import NatsServer, ServiceProcess, eventually
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET, start_intake

PROBLEM = "application/problem+json"

# Each test reports from its own spot, 0.05° (5.5 km) apart: further than any correlation
# window, so alarms of different tests never join each other's incidents on the shared intake.
_spots = itertools.count(1)


def new_spot() -> tuple[float, float]:
    n = next(_spots)
    return round(30.0 + 0.05 * (n % 40), 6), round(120.0 + 0.05 * (n // 40), 6)


_ids = itertools.count(1)


def new_alarm_id(prefix: str = "gw") -> str:
    return f"{prefix}-{time.time_ns() % 10**12}-{next(_ids)}"


def alarm(spot: tuple[float, float], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "alarm_id": new_alarm_id(),
        "received_at": datetime.now(UTC).isoformat(),
        "category": "fire",
        "location": {"lat": spot[0], "lon": spot[1]},
        "caller": {"number": "13900000001"},
        "description": "smoke from the third floor",
    }
    body.update(overrides)
    return body


@pytest.fixture(scope="module")
def intake_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, NatsServer]]:
    """One intake for the module: the bad-input cases compare what it holds before and after."""
    root = tmp_path_factory.mktemp("intake-gateway")
    server = NatsServer(root / "nats-store").start()
    proc = start_intake(root, server.url)
    yield proc, server
    proc.stop()
    server.stop()


@pytest.fixture
async def ops(intake: ServiceProcess, operator_headers: Callable[..., dict[str, str]]) -> Any:
    async with httpx.AsyncClient(base_url=intake.url, headers=operator_headers("dispatcher"), timeout=30) as c:
        yield c


@pytest.fixture
async def js(intake_nats: NatsServer) -> Any:
    nc = await nats.connect(intake_nats.url)
    yield nc.jetstream()
    await nc.close()


async def holdings(ops: httpx.AsyncClient) -> list[tuple[Any, ...]]:
    """Everything a user could see change: each incident (live, drill, merged) and its counts."""
    rows: list[tuple[Any, ...]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500, "include_merged": "true"}
        if cursor:
            params["cursor"] = cursor
        page = (await ops.get("/v1/incidents", params=params)).json()
        rows += [
            (i["id"], i["alarm_count"], i["caller_count"], i["casualties"], i["level"], i["version"])
            for i in page["items"]
        ]
        cursor = page["next_cursor"]
        if not cursor:
            return sorted(rows)


async def post_raw(
    intake: ServiceProcess,
    body: bytes,
    *,
    path: str = "/v1/alarms",
    gateway_id: str = GATEWAY_ID,
    secret: str = GATEWAY_SECRET,
    now: float | None = None,
    **header_changes: str | bytes | None,
) -> httpx.Response:
    headers = signed_headers(gateway_id, secret, body, now)
    for name, value in header_changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    async with httpx.AsyncClient(base_url=intake.url, timeout=30) as c:
        return await c.post(path, content=body, headers=headers)


def assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    problem = resp.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"]
    if field is not None:
        named = {e["field"] for e in problem.get("errors", [])} | {problem.get("field")}
        assert field in named, problem
        assert field.rsplit(".", 1)[-1] in problem["detail"] or problem.get("field") == field, problem
    return problem


async def incident(ops: httpx.AsyncClient, incident_id: str) -> dict[str, Any]:
    resp = await ops.get(f"/v1/incidents/{incident_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()


async def stream_messages(js: Any, stream: str, subject: str) -> list[Any]:
    """Every message still on ``stream`` matching ``subject`` (wildcards allowed), oldest first."""
    found, seq = [], 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return found
        found.append(msg)
        seq = msg.seq + 1


async def alarms_consumed(js: Any) -> bool:
    info = await js.consumer_info("ALARMS", "intake-alarms")
    return info.num_pending == 0 and info.num_ack_pending == 0


# --- bad input, one alarm -------------------------------------------------------------------


def _without(key: str) -> Callable[[dict[str, Any]], bytes]:
    def make(a: dict[str, Any]) -> bytes:
        a.pop(key)
        return orjson.dumps(a)

    return make


def _with(**changes: Any) -> Callable[[dict[str, Any]], bytes]:
    def make(a: dict[str, Any]) -> bytes:
        a.update(changes)
        return orjson.dumps(a)

    return make


def _location(**changes: Any) -> Callable[[dict[str, Any]], bytes]:
    def make(a: dict[str, Any]) -> bytes:
        a["location"].update(changes)
        return orjson.dumps(a)

    return make


def _raw_location(lat: str, lon: str) -> Callable[[dict[str, Any]], bytes]:
    """JSON text with a bare NaN/Infinity in it, as a careless gateway would write it."""

    def make(a: dict[str, Any]) -> bytes:
        a["location"] = {"lat": "@LAT@", "lon": "@LON@"}
        return orjson.dumps(a).replace(b'"@LAT@"', lat.encode()).replace(b'"@LON@"', lon.encode())

    return make


BAD_ALARMS = {
    "missing category": (_without("category"), "category"),
    "missing alarm_id": (_without("alarm_id"), "alarm_id"),
    "missing received_at": (_without("received_at"), "received_at"),
    "missing location": (_without("location"), "location"),
    "missing description": (_without("description"), "description"),
    "unknown field": (_with(priority="high"), "priority"),
    "unknown field in location": (_location(altitude=12.0), "location.altitude"),
    "unknown category": (_with(category="tsunami"), "category"),
    "latitude above 90": (_location(lat=90.5), "location.lat"),
    "latitude below -90": (_location(lat=-91), "location.lat"),
    "longitude above 180": (_location(lon=180.01), "location.lon"),
    "longitude below -180": (_location(lon=-200), "location.lon"),
    "latitude as a string": (_location(lat="31.23"), "location.lat"),
    "unknown crs": (_location(crs="bd09"), "location.crs"),
    "latitude NaN": (_raw_location("NaN", "121.47"), "location.lat"),
    "longitude Infinity": (_raw_location("31.23", "Infinity"), "location.lon"),
    "latitude -Infinity": (_raw_location("-Infinity", "121.47"), "location.lat"),
    "alarm_id with a slash": (_with(alarm_id="a/1"), "alarm_id"),
    "alarm_id with a space": (_with(alarm_id="a 1"), "alarm_id"),
    "alarm_id empty": (_with(alarm_id=""), "alarm_id"),
    "alarm_id of 65 characters": (_with(alarm_id="a" * 65), "alarm_id"),
    "description of 2001 characters": (_with(description="x" * 2001), "description"),
    "casualties negative": (_with(casualties=-1), "casualties"),
    "casualties a fraction": (_with(casualties=2.5), "casualties"),
    "casualties as a string": (_with(casualties="3"), "casualties"),
    "exercise as a string": (_with(exercise="true"), "exercise"),
    "exercise as a number": (_with(exercise=1), "exercise"),
    "received_at without an offset": (_with(received_at="2025-01-01T08:00:00"), "received_at"),
    "received_at not a time": (_with(received_at="yesterday"), "received_at"),
    "caller without a number": (_with(caller={"name": "Li"}), "caller.number"),
}


@pytest.mark.parametrize("case", BAD_ALARMS, ids=list(BAD_ALARMS))
async def test_bad_alarm_is_refused_naming_the_field_and_changes_nothing(intake, ops, case):
    make, field = BAD_ALARMS[case]
    before = await holdings(ops)
    resp = await post_raw(intake, make(alarm(new_spot())))
    assert_problem(resp, 422, field)
    assert await holdings(ops) == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"alarm_id": "a-1", "category": ',
        b"not json at all",
        b"",
        b'{"alarm_id": "a-1"} trailing',
        b'{"alarm_id": "a-1", "description": "\\ud800x"}',
    ],
    ids=["truncated", "not json", "empty", "trailing text", "lone surrogate"],
)
async def test_invalid_json_is_400_naming_the_body_and_changes_nothing(intake, ops, body):
    before = await holdings(ops)
    problem = assert_problem(await post_raw(intake, body), 400, "body")
    assert "json" in (problem["title"] + problem["detail"]).lower()
    assert await holdings(ops) == before


async def test_json_that_is_not_an_object_is_refused(intake, ops):
    before = await holdings(ops)
    resp = await post_raw(intake, b'["fire", 31.2, 121.4]')
    assert 400 <= resp.status_code < 500
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert await holdings(ops) == before


async def test_body_over_64_kib_is_413_and_changes_nothing(intake, ops):
    before = await holdings(ops)
    a = alarm(new_spot(), description="x" * 1000)
    a["location"]["address"] = "y" * 400
    body = orjson.dumps(a)
    # Pad with JSON whitespace: still a well-formed alarm, only too big.
    body = body[:-1] + b" " * (64 * 1024 + 1 - len(body)) + b"}"
    assert len(body) == 64 * 1024 + 1
    problem = assert_problem(await post_raw(intake, body), 413)
    assert "65536" in problem["detail"]
    assert await holdings(ops) == before


async def test_body_of_exactly_64_kib_is_accepted(intake, ops):
    a = alarm(new_spot())
    body = orjson.dumps(a)
    body = body[:-1] + b" " * (64 * 1024 - len(body)) + b"}"
    resp = await post_raw(intake, body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["alarm_id"] == a["alarm_id"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", None], ids=["text", "form", "none"]
)
async def test_wrong_content_type_is_415_and_changes_nothing(intake, ops, content_type):
    before = await holdings(ops)
    resp = await post_raw(intake, orjson.dumps(alarm(new_spot())), Content_Type=content_type)
    assert_problem(resp, 415, "Content-Type")
    assert await holdings(ops) == before


async def test_json_content_type_with_charset_is_accepted(intake):
    resp = await post_raw(intake, orjson.dumps(alarm(new_spot())), Content_Type="application/json; charset=utf-8")
    assert resp.status_code == 202, resp.text


async def test_a_body_said_to_be_in_another_charset_is_415_and_changes_nothing(intake, ops):
    """It was read as UTF-8 whatever the charset said (JSON is UTF-8: RFC 8259 §8.1)."""
    before = await holdings(ops)
    for ctype in ("application/json; charset=utf-16", 'application/json; charset="latin1"'):
        assert_problem(await post_raw(intake, orjson.dumps(alarm(new_spot())), Content_Type=ctype), 415, "Content-Type")
    assert await holdings(ops) == before


def _tampered_signature(body: bytes) -> dict[str, Any]:
    ts = str(int(time.time()))
    good = hmac.new(GATEWAY_SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    flipped = ("0" if good[0] != "0" else "1") + good[1:]
    return {"X_Timestamp": ts, "X_Signature": "sha256=" + flipped}


SIGNATURE_CASES: dict[str, tuple[Callable[[bytes], dict[str, Any]], str]] = {
    "missing signature": (lambda body: {"X_Signature": None}, "X-Signature"),
    "empty signature": (lambda body: {"X_Signature": ""}, "X-Signature"),
    "signature of another body": (
        lambda body: {"X_Signature": signed_headers(GATEWAY_ID, GATEWAY_SECRET, body + b" ")["X-Signature"]},
        "X-Signature",
    ),
    "signature with another secret": (
        lambda body: {"X_Signature": signed_headers(GATEWAY_ID, "another-secret-0123456789", body)["X-Signature"]},
        "X-Signature",
    ),
    "one hex digit wrong": (_tampered_signature, "X-Signature"),
    "bare hex without sha256=": (
        lambda body: {"X_Signature": signed_headers(GATEWAY_ID, GATEWAY_SECRET, body)["X-Signature"][7:]},
        "X-Signature",
    ),
    # A header is Latin-1 on the wire: this was a 500 (hmac.compare_digest refuses non-ASCII text).
    "signature with a non-ASCII character": (lambda body: {"X_Signature": "sha256=é".encode()}, "X-Signature"),
    "missing timestamp": (lambda body: {"X_Timestamp": None}, "X-Timestamp"),
    "timestamp not unix seconds": (lambda body: {"X_Timestamp": "2025-01-01T00:00:00Z"}, "X-Timestamp"),
    "missing gateway id": (lambda body: {"X_Gateway_Id": None}, "X-Gateway-Id"),
}


@pytest.mark.parametrize("case", SIGNATURE_CASES, ids=list(SIGNATURE_CASES))
async def test_bad_signature_is_401_and_changes_nothing(intake, ops, case):
    change, field = SIGNATURE_CASES[case]
    body = orjson.dumps(alarm(new_spot()))
    before = await holdings(ops)
    assert_problem(await post_raw(intake, body, **change(body)), 401, field)
    assert await holdings(ops) == before


# The header holds whole seconds: "301 s ahead" truncated and read a moment later can be 300 s.
@pytest.mark.parametrize("skew_s", [-301, 302, -3600, 86400], ids=["301s ago", "302s ahead", "1h ago", "1d ahead"])
async def test_timestamp_outside_300s_is_401_and_changes_nothing(intake, ops, skew_s):
    body = orjson.dumps(alarm(new_spot()))
    before = await holdings(ops)
    resp = await post_raw(intake, body, now=time.time() + skew_s)
    problem = assert_problem(resp, 401, "X-Timestamp")
    assert "300" in problem["detail"]
    assert await holdings(ops) == before


@pytest.mark.parametrize("skew_s", [-290, 290], ids=["290s ago", "290s ahead"])
async def test_timestamp_inside_the_window_is_accepted(intake, skew_s):
    resp = await post_raw(intake, orjson.dumps(alarm(new_spot())), now=time.time() + skew_s)
    assert resp.status_code == 202, resp.text


async def test_unknown_gateway_is_401_even_with_a_well_formed_signature(intake, ops):
    body = orjson.dumps(alarm(new_spot()))
    before = await holdings(ops)
    resp = await post_raw(intake, body, gateway_id="gw-stranger", secret="stranger-secret-0123456789")
    problem = assert_problem(resp, 401, "X-Gateway-Id")
    assert "gw-stranger" in problem["detail"]
    assert await holdings(ops) == before


# --- good input -----------------------------------------------------------------------------


async def test_accepted_alarm_answers_202_with_its_receipt_and_is_stored(gw, ops):
    spot = new_spot()
    a = alarm(
        spot,
        casualties=2,
        caller={"number": "13900000077", "name": "Wang"},
        location={"lat": spot[0], "lon": spot[1], "accuracy_m": 35.5, "address": "88 Nanjing Rd"},
    )
    resp = await gw.send(a)
    assert resp.status_code == 202, resp.text
    receipt = resp.json()
    assert set(receipt) == {"alarm_id", "incident_id", "duplicate", "correlated"}
    assert receipt["alarm_id"] == a["alarm_id"]
    assert receipt["duplicate"] is False and receipt["correlated"] is False
    inc = await incident(ops, receipt["incident_id"])
    assert inc["stage"] == "reported" and inc["category"] == "fire" and inc["exercise"] is False
    assert inc["alarm_count"] == 1 and inc["caller_count"] == 1 and inc["casualties"] == 2
    (stored,) = inc["alarms"]
    assert stored["alarm_id"] == a["alarm_id"] and stored["gateway_id"] == GATEWAY_ID
    assert stored["location"]["address"] == "88 Nanjing Rd" and stored["location"]["accuracy_m"] == 35.5
    assert stored["description"] == a["description"] and stored["via"] == "http"


async def test_repeated_alarm_id_answers_the_same_incident_as_duplicate_and_changes_nothing(gw, ops):
    a = alarm(new_spot(), casualties=1)
    first = (await gw.send(a)).json()
    before = await holdings(ops)
    # The same alarm, written otherwise (keys in another order); a different one is a 409
    # (tests/e2e/test_intake_traffic.py).
    again = await gw.send(dict(reversed(list(a.items()))))
    assert again.status_code == 202, again.text
    assert again.json() == {**first, "duplicate": True, "correlated": False}
    assert await holdings(ops) == before
    inc = await incident(ops, first["incident_id"])
    assert inc["alarm_count"] == 1 and inc["casualties"] == 1 and inc["level"] == 4
    assert [x["description"] for x in inc["alarms"]] == [a["description"]]


async def test_gcj02_location_is_stored_as_wgs84(gw, ops):
    true_lat, true_lon = 31.2304, 121.4737  # People's Square, WGS-84
    gcj_lat, gcj_lon = wgs84_to_gcj02(true_lat, true_lon)
    assert haversine_m(true_lat, true_lon, gcj_lat, gcj_lon) > 100  # the datum shift is real
    a = alarm((gcj_lat, gcj_lon))
    a["location"]["crs"] = "gcj02"
    receipt = (await gw.send(a)).json()
    inc = await incident(ops, receipt["incident_id"])
    want_lat, want_lon = gcj02_to_wgs84(gcj_lat, gcj_lon)
    assert inc["location"]["lat"] == pytest.approx(want_lat, abs=1e-9)
    assert inc["location"]["lon"] == pytest.approx(want_lon, abs=1e-9)
    assert haversine_m(inc["location"]["lat"], inc["location"]["lon"], true_lat, true_lon) < 0.5
    (stored,) = inc["alarms"]
    assert stored["location"]["crs"] == "gcj02"
    assert (stored["location"]["reported_lat"], stored["location"]["reported_lon"]) == (gcj_lat, gcj_lon)
    assert (stored["location"]["lat"], stored["location"]["lon"]) == (inc["location"]["lat"], inc["location"]["lon"])


async def test_wgs84_and_cgcs2000_locations_are_stored_as_given(gw, ops):
    for crs in ("wgs84", "cgcs2000"):
        spot = new_spot()
        a = alarm(spot)
        a["location"]["crs"] = crs
        inc = await incident(ops, (await gw.send(a)).json()["incident_id"])
        assert (inc["location"]["lat"], inc["location"]["lon"]) == spot


async def test_exercise_alarm_opens_an_exercise_incident(gw, ops):
    receipt = (await gw.send(alarm(new_spot(), exercise=True))).json()
    assert (await incident(ops, receipt["incident_id"]))["exercise"] is True


# --- batches --------------------------------------------------------------------------------


async def test_batch_answers_item_by_item_and_stores_only_the_valid_ones(gw, ops):
    spot = new_spot()
    good1, good2 = alarm(spot), alarm(spot, caller={"number": "13900000002"})
    bad_category = alarm(spot, category="volcano")
    bad_lat = alarm(spot)
    bad_lat["location"]["lat"] = 123.0
    resp = await gw.send_batch([good1, bad_category, good2, bad_lat, "not an alarm"])
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 3)
    results = answer["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r["status"] for r in results] == [202, 422, 202, 422, 422]
    assert results[0]["receipt"]["alarm_id"] == good1["alarm_id"]
    assert results[2]["receipt"]["incident_id"] == results[0]["receipt"]["incident_id"]
    assert results[2]["receipt"]["correlated"] is True
    assert results[1]["error"]["alarm_id"] == bad_category["alarm_id"]
    assert {e["field"] for e in results[1]["error"]["errors"]} == {"alarms.1.category"}
    assert {e["field"] for e in results[3]["error"]["errors"]} == {"alarms.3.location.lat"}
    assert results[4]["error"]["status"] == 422
    inc = await incident(ops, results[0]["receipt"]["incident_id"])
    assert inc["alarm_count"] == 2 and inc["caller_count"] == 2
    assert {x["alarm_id"] for x in inc["alarms"]} == {good1["alarm_id"], good2["alarm_id"]}


async def test_batch_of_500_is_accepted_and_501_is_refused_whole(gw, ops):
    spot = new_spot()
    before = await holdings(ops)
    too_many = await gw.send_batch([alarm(spot) for _ in range(501)])
    problem = assert_problem(too_many, 422, "alarms")
    assert "501" in problem["detail"]
    assert await holdings(ops) == before

    full = await gw.send_batch([alarm(spot) for _ in range(500)])
    assert full.status_code == 200, full.text
    assert full.json()["accepted"] == 500
    (incident_id,) = {r["receipt"]["incident_id"] for r in full.json()["results"]}
    assert (await incident(ops, incident_id))["alarm_count"] == 500


@pytest.mark.parametrize(
    "body",
    [{"alarms": []}, {"alarms": {}}, {"items": []}, {"alarms": [], "extra": 1}, []],
    ids=["empty", "not a list", "wrong key", "extra key", "bare list"],
)
async def test_malformed_batch_is_refused_and_changes_nothing(intake, ops, body):
    before = await holdings(ops)
    assert_problem(await post_raw(intake, orjson.dumps(body), path="/v1/alarms:batch"), 422, "alarms")
    assert await holdings(ops) == before


async def test_batch_with_invalid_json_is_400(intake, ops):
    before = await holdings(ops)
    assert_problem(await post_raw(intake, b'{"alarms": [', path="/v1/alarms:batch"), 400, "body")
    assert await holdings(ops) == before


async def test_a_batch_item_nested_too_deeply_is_refused_alone(intake, ops):
    """An item nested past 255 levels (what orjson writes) made the whole batch a 500."""
    good = alarm(new_spot())
    deep = b"[" * 300 + b"]" * 300
    body = b'{"alarms": [' + orjson.dumps(good) + b', {"alarm_id": "deep-1", "x": ' + deep + b"}]}"
    resp = await post_raw(intake, body, path="/v1/alarms:batch")
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert [r["status"] for r in results] == [202, 422]
    assert results[1]["error"]["errors"] == [{"field": "alarms.1", "message": "nested too deeply to be an alarm"}]


async def test_batch_needs_the_signature_too(intake, ops):
    body = orjson.dumps({"alarms": [alarm(new_spot())]})
    before = await holdings(ops)
    assert_problem(await post_raw(intake, body, path="/v1/alarms:batch", X_Signature=None), 401, "X-Signature")
    assert await holdings(ops) == before


async def test_batch_item_over_64_kib_is_refused_alone(gw, ops):
    spot = new_spot()
    big = alarm(spot, padding="x" * (64 * 1024))
    good = alarm(spot)
    answer = (await gw.send_batch([big, good])).json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert [r["status"] for r in answer["results"]] == [413, 202]
    inc = await incident(ops, answer["results"][1]["receipt"]["incident_id"])
    assert [x["alarm_id"] for x in inc["alarms"]] == [good["alarm_id"]]


async def test_same_alarm_twice_in_one_batch_is_one_link(gw, ops):
    a = alarm(new_spot())
    answer = (await gw.send_batch([a, dict(a)])).json()
    first, second = (r["receipt"] for r in answer["results"])
    assert first["duplicate"] is False and second["duplicate"] is True
    assert first["incident_id"] == second["incident_id"]
    inc = await incident(ops, first["incident_id"])
    assert inc["alarm_count"] == 1
    assert [x["alarm_id"] for x in inc["alarms"]] == [a["alarm_id"]]


async def test_batch_repeating_an_earlier_alarm_marks_it_duplicate(gw, ops):
    spot = new_spot()
    old = alarm(spot)
    first = (await gw.send(old)).json()
    answer = (await gw.send_batch([old, alarm(spot)])).json()
    assert answer["results"][0]["receipt"] == {**first, "duplicate": True, "correlated": False}
    assert (await incident(ops, first["incident_id"]))["alarm_count"] == 2


# --- the NATS path --------------------------------------------------------------------------


async def test_alarm_published_on_nats_becomes_an_incident(gw, ops, js):
    a = alarm(new_spot(), caller={"number": "13900000005"})
    ack = await gw.publish(js, a)
    assert ack.stream == "ALARMS" and not ack.duplicate

    async def linked() -> list[Any]:
        return [
            m
            for m in await stream_messages(js, "INCIDENTS", "incident.alarm.linked")
            if a["alarm_id"].encode() in m.data
        ]

    (msg,) = await eventually(linked, "the NATS alarm to be linked")
    event = Envelope.from_bytes(msg.data)
    inc = await incident(ops, event.incident_id)
    (stored,) = inc["alarms"]
    assert stored["alarm_id"] == a["alarm_id"] and stored["via"] == "nats"
    assert inc["alarm_count"] == 1 and inc["caller_count"] == 1


def msg_id_mismatches(metrics: str) -> float:
    found = re.findall(rf'^intake_gateway_msg_id_mismatches_total{{gateway="{GATEWAY_ID}"}} (\S+)$', metrics, re.M)
    return float(found[0]) if found else 0.0


async def test_a_nats_alarm_whose_msg_id_breaks_the_contract_is_linked_and_counted(gw, ops, js):
    """Nats-Msg-Id must be <gateway_id>:<alarm_id>: JetStream drops a different alarm sent under an
    id it has seen. An alarm that arrived under another id is still an alarm (linked, never
    refused), and the fault shows per gateway in /metrics and the log before it costs one."""
    before = msg_id_mismatches((await ops.get("/metrics")).text)
    good = alarm(new_spot())
    await gw.publish(js, good)
    odd = alarm(new_spot())
    await js.publish(f"alarm.in.{GATEWAY_ID}", orjson.dumps(odd), headers={"Nats-Msg-Id": f"counter-{uuid.uuid4()}"})

    async def linked() -> bool | None:
        data = [m.data for m in await stream_messages(js, "INCIDENTS", "incident.alarm.linked")]
        return True if all(any(a["alarm_id"].encode() in d for d in data) for a in (good, odd)) else None

    await eventually(linked, "both NATS alarms linked")
    assert msg_id_mismatches((await ops.get("/metrics")).text) == before + 1


async def _dead_letter(js: Any, subject: str, alarm_id: str) -> Any:
    async def find() -> list[Any]:
        return [
            m for m in await stream_messages(js, "DEADLETTER", f"deadletter.{subject}") if alarm_id.encode() in m.data
        ]

    (msg,) = await eventually(find, f"a dead letter for {alarm_id}")
    return msg


@pytest.mark.parametrize(
    ("case", "field"),
    [("unknown category", "category"), ("latitude out of range", "location.lat"), ("unknown field", "priority")],
)
async def test_malformed_nats_alarm_is_dead_lettered_with_the_reason(gw, ops, js, case, field):
    a = alarm(new_spot())
    if case == "unknown category":
        a["category"] = "meteor"
    elif case == "latitude out of range":
        a["location"]["lat"] = -95.0
    else:
        a["priority"] = "high"
    before = await holdings(ops)
    await gw.publish(js, a)
    msg = await _dead_letter(js, f"alarm.in.{GATEWAY_ID}", a["alarm_id"])
    assert field in msg.headers["Ecs-Reason"]
    assert msg.headers["Ecs-Original-Subject"] == f"alarm.in.{GATEWAY_ID}"
    assert orjson.loads(msg.data) == a  # the alarm as sent, for whoever fixes the gateway
    await eventually(lambda: alarms_consumed(js), "the alarm consumer to settle")
    assert await holdings(ops) == before


async def test_nats_alarm_that_is_not_json_is_dead_lettered(ops, js):
    before = await holdings(ops)
    marker = new_alarm_id("garbage")
    await js.publish(f"alarm.in.{GATEWAY_ID}", f"{marker} {{not json".encode(), headers={"Nats-Msg-Id": marker})
    msg = await _dead_letter(js, f"alarm.in.{GATEWAY_ID}", marker)
    assert "json" in msg.headers["Ecs-Reason"].lower()
    await eventually(lambda: alarms_consumed(js), "the alarm consumer to settle")
    assert await holdings(ops) == before


async def test_unknown_gateways_nats_alarm_is_dead_lettered_with_the_reason(ops, js):
    a = alarm(new_spot())
    before = await holdings(ops)
    stranger = GatewayClient("http://unused", "gw-stranger", "stranger-secret-0123456789")
    await stranger.publish(js, a)
    await stranger.aclose()
    msg = await _dead_letter(js, "alarm.in.gw-stranger", a["alarm_id"])
    assert "unknown gateway" in msg.headers["Ecs-Reason"] and "gw-stranger" in msg.headers["Ecs-Reason"]
    await eventually(lambda: alarms_consumed(js), "the alarm consumer to settle")
    assert await holdings(ops) == before


async def test_valid_alarms_next_to_a_poison_one_on_nats_still_go_through(gw, ops, js):
    spot = new_spot()
    good1, good2 = alarm(spot), alarm(spot, caller={"number": "13900000009"})
    bad = alarm(spot, casualties=-3)
    for a in (good1, bad, good2):
        await gw.publish(js, a)
    await _dead_letter(js, f"alarm.in.{GATEWAY_ID}", bad["alarm_id"])
    await eventually(lambda: alarms_consumed(js), "the alarm consumer to settle")
    receipt = (await gw.send(good1)).json()  # a repeat over HTTP tells us where it went
    assert receipt["duplicate"] is True
    inc = await incident(ops, receipt["incident_id"])
    assert {x["alarm_id"] for x in inc["alarms"]} == {good1["alarm_id"], good2["alarm_id"]}


async def test_same_alarm_over_http_and_nats_three_times_is_one_link(gw, ops, js):
    a = alarm(new_spot())
    first = (await gw.send(a)).json()
    assert first["duplicate"] is False
    ack = await gw.publish(js, a)  # the gateway retries on its other path
    assert not ack.duplicate  # JetStream has not seen it, so intake must spot it
    await eventually(lambda: alarms_consumed(js), "the NATS copy to be handled")
    again = (await gw.send(a)).json()
    assert again == {**first, "duplicate": True}
    assert (await gw.publish(js, a)).duplicate  # and JetStream drops a second NATS copy itself

    inc = await incident(ops, first["incident_id"])
    assert inc["alarm_count"] == 1
    assert [(x["alarm_id"], x["via"]) for x in inc["alarms"]] == [(a["alarm_id"], "http")]

    async def linked() -> list[Any]:
        return [
            m
            for m in await stream_messages(js, "INCIDENTS", "incident.alarm.linked")
            if a["alarm_id"].encode() in m.data
        ]

    assert len(await eventually(linked, "the link event on JetStream")) == 1


async def test_nats_first_then_http_answers_the_nats_incident(gw, ops, js):
    a = alarm(new_spot())
    await gw.publish(js, a)
    await eventually(lambda: alarms_consumed(js), "the NATS alarm to be handled")
    receipt = (await gw.send(a)).json()
    assert receipt["duplicate"] is True
    inc = await incident(ops, receipt["incident_id"])
    assert inc["alarm_count"] == 1 and inc["alarms"][0]["via"] == "nats"


def test_gateway_contract_helpers_agree_with_the_documented_signature():
    """The client the tests sign with must produce DESIGN §7's signature, or every test above lies."""
    body = b'{"alarm_id":"x"}'
    headers = signed_headers("gw-x", "secret-secret-secret", body, now=1_700_000_000)
    want = hmac.new(b"secret-secret-secret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-Timestamp"] == "1700000000"
    assert headers["X-Signature"] == "sha256=" + want
    assert headers["X-Gateway-Id"] == "gw-x"
