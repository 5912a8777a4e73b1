"""Signed random gateway bodies against incident-intake as a real process on PostgreSQL: whatever a
gateway sends, the answer is never a 5xx (a 5xx is a defect; 503 means only "unavailable", and
the service is up). Bounded in examples, so it stays fast in ``make test``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecs.gateway_client import signed_headers
from ecs.testing import NatsServer, ServiceProcess, create_database, drop_database
from tests.conftest import GATEWAY_ID, GATEWAY_SECRET, start_intake

NOW = datetime.now(UTC)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value the contract takes, sometimes anything at all."""
    return st.one_of(valid, valid, json_values)


times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()).map(
    lambda d: d.isoformat()
) | st.sampled_from(
    [(NOW - timedelta(minutes=1)).isoformat(), (NOW + timedelta(hours=8)).isoformat(), "9999-12-31T23:59:59Z"]
)
texts = st.text(max_size=60) | st.sampled_from(["\x00", "smoke\x00", "\ud7ff", "\U0010ffff"])
numbers = st.text(alphabet="0123456789+- ()", max_size=25) | st.sampled_from(["13900000031", "008613900000031"])
categories = st.sampled_from(["fire", "medical", "crowd_crush", "flood", "meteor", ""])
coords = st.floats(min_value=-200, max_value=200, allow_nan=False) | st.sampled_from([31.23, 121.47, 0.0, 90.0, 180.0])

alarms = st.fixed_dictionaries(
    {
        "alarm_id": _field(st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z")),
        "received_at": _field(times),
        "category": _field(categories),
        "location": _field(
            st.fixed_dictionaries(
                {"lat": coords, "lon": coords},
                optional={
                    "crs": st.sampled_from(["wgs84", "gcj02", "cgcs2000", "utm"]),
                    "accuracy_m": _field(st.floats(min_value=0, max_value=1e6)),
                    "address": texts,
                },
            )
        ),
        "description": _field(texts),
    },
    optional={
        "caller": _field(st.fixed_dictionaries({"number": _field(numbers)}, optional={"name": texts})),
        "casualties": _field(st.integers(min_value=-5, max_value=2**64)),
        "exercise": _field(st.booleans()),
    },
)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("intake-fuzz")
    url = asyncio.run(create_database(pg_server_url))
    server = NatsServer(root / "nats-store").start()
    proc = start_intake(root, server.url, url)
    yield proc
    proc.stop()
    server.stop()
    asyncio.run(drop_database(pg_server_url, url))


def _post(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers=signed_headers(GATEWAY_ID, GATEWAY_SECRET, body))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(alarm=alarms)
def test_a_signed_random_alarm_is_never_answered_with_a_5xx(intake, alarm):
    with httpx.Client(base_url=intake.url, timeout=30) as client:
        r = _post(client, "/v1/alarms", json.dumps(alarm).encode())
    assert r.status_code < 500, (alarm, r.text)
    assert r.status_code in (202, 400, 409, 413, 422), (alarm, r.text)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(alarms, min_size=1, max_size=8) | json_values)
def test_a_signed_random_batch_is_never_answered_with_a_5xx(intake, batch):
    body = {"alarms": batch} if isinstance(batch, list) else batch
    with httpx.Client(base_url=intake.url, timeout=30) as client:
        r = _post(client, "/v1/alarms:batch", json.dumps(body).encode())
    assert r.status_code < 500, (body, r.text)
    if r.status_code == 200:
        assert all(item["status"] < 500 for item in r.json()["results"]), r.text


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_signed_random_bytes_are_never_answered_with_a_5xx(intake, raw):
    with httpx.Client(base_url=intake.url, timeout=30) as client:
        r = _post(client, "/v1/alarms", raw)
    assert r.status_code in (400, 422), r.text
