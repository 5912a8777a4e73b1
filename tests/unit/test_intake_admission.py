"""What intake admits, at the exact edges its rules name: the clock's skew and age, the service
area and its bounds, text the database can store, callers' numbers in their region, and the open
incidents' index (every neighbouring cell, eviction by the horizon)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ecs.contracts import GatewayAlarm
from ecs.errors import InvalidInput
from incident_intake.correlation import (
    MAX_AREA_LAT,
    AlarmPolicy,
    OpenIncidentIndex,
    admit,
    caller_key,
    check_service_area,
    to_incoming,
)
from incident_intake.domain import AlarmFacts, Category, open_incident

NOW = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
PEPPER = "unit-pepper"
AREA = (31.0, 121.0, 31.5, 121.8)
POLICY = AlarmPolicy(area=AREA)
_ids = itertools.count(1)


def alarm(lat: float = 31.2, lon: float = 121.5, **changes: Any) -> GatewayAlarm:
    body: dict[str, Any] = {
        "alarm_id": f"adm-{next(_ids)}",
        "received_at": NOW.isoformat(),
        "category": Category.fire.value,
        "location": {"lat": lat, "lon": lon},
        "description": "smoke",
    }
    body.update(changes)
    return GatewayAlarm.model_validate(body)


def refused(a: GatewayAlarm, policy: AlarmPolicy = POLICY) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        admit("gw-a", a, "http", PEPPER, policy, NOW)
    return caught.value


def test_received_at_at_the_edges_of_skew_and_age():
    skew, age = POLICY.max_skew, POLICY.max_age
    for at in (NOW + skew, NOW - age):
        assert admit("gw-a", alarm(received_at=at.isoformat()), "http", PEPPER, POLICY, NOW).facts.received_at == at
    ahead = refused(alarm(received_at=(NOW + skew + timedelta(seconds=1)).isoformat()))
    assert ahead.extra["field"] == "received_at"
    assert ahead.detail == (
        "received_at is 301 s ahead of the intake clock; at most 300 s are accepted (is the offset right?)"
    )
    old = refused(alarm(received_at=(NOW - age - timedelta(seconds=1)).isoformat()))
    assert (old.extra["field"], old.detail) == ("received_at", "received_at is older than 86400 s")


def test_the_service_area_includes_its_edges():
    min_lat, min_lon, max_lat, max_lon = AREA
    for lat, lon in ((min_lat, 121.5), (max_lat, 121.5), (31.2, min_lon), (31.2, max_lon)):
        incoming = admit("gw-a", alarm(lat, lon), "http", PEPPER, POLICY, NOW)
        assert (incoming.lat, incoming.lon) == (lat, lon)
    outside = refused(alarm(max_lat + 0.000001, 121.5))
    assert outside.extra["field"] == "location"
    assert outside.detail == "location 31.500001,121.500000 is outside the service area 31,121 .. 31.5,121.8"


@pytest.mark.parametrize(
    "area",
    [
        (-MAX_AREA_LAT, 73.4, 53.6, 135.1),
        (3.8, -179.99, 53.6, 179.99),
        (3.8, 73.4, MAX_AREA_LAT, 135.1),
    ],
)
def test_a_service_area_up_to_its_bounds_is_taken(area):
    check_service_area(area)
    assert AlarmPolicy(area=area).area == area


@pytest.mark.parametrize(
    "area",
    [
        (-MAX_AREA_LAT - 0.01, 73.4, 53.6, 135.1),
        (3.8, -180.0, 53.6, 135.1),
        (3.8, 73.4, 53.6, 180.0),
        (10.0, 73.4, 10.0, 135.1),  # no height
        (3.8, 100.0, 53.6, 100.0),  # no width
        (3.8, 73.4, MAX_AREA_LAT + 0.01, 135.1),
    ],
)
def test_a_service_area_past_its_bounds_or_empty_is_refused(area):
    with pytest.raises(ValueError, match="service area must be"):
        check_service_area(area)


@pytest.mark.parametrize("field", ["description", "caller.name", "caller.number", "location.address"])
@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"], ids=["nul", "lone-surrogate"])
def test_text_the_database_cannot_store_is_refused_naming_the_field(field, bad):
    # The contract's own parsing refuses a lone surrogate in JSON; admit guards whatever reaches it.
    a = alarm(caller={"number": "13800138000", "name": "Li"}, location={"lat": 31.2, "lon": 121.5, "address": "x"})
    part, _, name = field.rpartition(".")
    if part:
        a = a.model_copy(update={part: getattr(a, part).model_copy(update={name: bad})})
    else:
        a = a.model_copy(update={name: bad})
    error = refused(a)
    assert error.extra["field"] == field
    assert error.detail == f"{field} holds a character that cannot be stored (U+0000 or a lone surrogate)"


def test_the_caller_is_hashed_in_the_policys_region_and_the_alarm_keeps_its_path():
    local = "020 1234 5678"  # a number as dialled inside its region
    cn = admit("gw-a", alarm(caller={"number": local}), "nats", PEPPER, AlarmPolicy(area=AREA), NOW)
    gb = admit("gw-a", alarm(caller={"number": local}), "nats", PEPPER, AlarmPolicy(area=AREA, region="GB"), NOW)
    assert cn.facts.caller_key == caller_key(PEPPER, local, "CN")
    assert gb.facts.caller_key == caller_key(PEPPER, local, "GB") != cn.facts.caller_key
    assert len(cn.facts.caller_key) == 32
    assert cn.via == "nats" and to_incoming("gw-a", alarm(), "http", PEPPER).via == "http"
    offset = to_incoming("gw-a", alarm(received_at="2026-11-30T22:00:00+08:00"), "http", PEPPER)
    assert offset.facts.received_at == NOW and offset.facts.received_at.tzinfo == UTC


def fire(incident_id: str, lat: float, lon: float, last: datetime = NOW) -> Any:
    facts = AlarmFacts(category=Category.fire, lat=lat, lon=lon, received_at=last)
    return open_incident(incident_id, facts)


def test_every_neighbouring_cell_is_searched_and_no_further():
    index = OpenIncidentIndex(0.01)
    centre = (31.235, 121.455)  # the middle of its cell
    around = {
        f"{dy},{dx}": fire(f"{dy},{dx}", centre[0] + 0.01 * dy, centre[1] + 0.01 * dx)
        for dy in (-2, -1, 0, 1, 2)
        for dx in (-2, -1, 0, 1, 2)
    }
    index.put_all(list(around.values()))
    found = {i.id for i in index.candidates(*centre)}
    assert found == {f"{dy},{dx}" for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_the_index_cell_must_be_positive():
    with pytest.raises(ValueError, match="^cell_deg must be positive$"):
        OpenIncidentIndex(0)
    index = OpenIncidentIndex(0.01)
    assert (index.rev, index.epoch) == (None, -1)


def test_eviction_keeps_an_incident_whose_last_alarm_is_at_the_horizon():
    index = OpenIncidentIndex(0.01)
    horizon = NOW - timedelta(hours=2)
    index.put_all([fire("at", 31.2, 121.5, horizon), fire("before", 31.2, 121.5, horizon - timedelta(seconds=1))])
    assert index.evict(horizon) == 1
    assert "at" in index and "before" not in index
    # Evicting again at the same horizon does nothing, even to an old incident put back since.
    index.put(fire("late", 31.2, 121.5, horizon - timedelta(hours=1)))
    assert index.evict(horizon) == 0 and "late" in index
