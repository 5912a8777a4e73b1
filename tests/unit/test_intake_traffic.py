"""Intake under real gateway traffic, without a database: storms that a medical call started stay
one incident, late alarms join their incident's span, one caller however written is one caller, a
reused alarm_id is refused, an operator's level sticks, and what the database or the arithmetic
would refuse is refused at the edge naming the field."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecs import errors
from ecs.contracts import GatewayAlarm
from incident_intake.correlation import (
    AlarmPolicy,
    IngestResult,
    OpenIncidentIndex,
    admit,
    caller_key,
    correlate,
    normalise_number,
)
from incident_intake.domain import DEFAULT_WINDOWS, Category, Level

NOW = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
BUND = (31.2397, 121.4903)
PEPPER = "unit-pepper"
POLICY = AlarmPolicy()
_ids = itertools.count(1)


def moved(point: tuple[float, float], metres: float, bearing_deg: float = 0.0) -> tuple[float, float]:
    lat, lon = point
    d_lat = metres * math.cos(math.radians(bearing_deg)) / 111_195.0
    d_lon = metres * math.sin(math.radians(bearing_deg)) / (111_195.0 * math.cos(math.radians(lat)))
    return lat + d_lat, lon + d_lon


def body(at: tuple[float, float] = BUND, **changes: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "alarm_id": f"a-{next(_ids)}",
        "received_at": NOW.isoformat(),
        "category": "fire",
        "location": {"lat": at[0], "lon": at[1]},
        "description": "unit alarm",
    }
    b.update(changes)
    return b


def item(at: tuple[float, float] = BUND, gateway_id: str = "gw-a", number: str | None = None, **changes: Any):
    if number is not None:
        changes["caller"] = {"number": number}
    return admit(gateway_id, GatewayAlarm.model_validate(body(at, **changes)), "nats", PEPPER, POLICY, NOW)


class Replica:
    """One replica's correlation without a database: an index and what was stored."""

    def __init__(self) -> None:
        self.index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
        self.taken: dict[Any, str] = {}
        self.said: dict[Any, str | None] = {}
        self.callers: set[tuple[str, str]] = set()
        self.timeline: list[Any] = []
        self.events: list[Any] = []
        self._n = itertools.count(1)

    def ingest(self, *items: Any) -> list[Any]:
        decision = correlate(
            items, self.index, self.taken, self.callers, DEFAULT_WINDOWS, 3, lambda: f"inc-{next(self._n)}", self.said
        )
        for linked, incident_id in decision.linked:
            self.taken[linked.key] = incident_id
            self.said[linked.key] = linked.fingerprint
        self.callers.update(decision.callers)
        self.timeline += decision.timeline
        self.events += decision.events
        return decision.results


# --- 1. a storm whose first call was a medical call ------------------------------------------


def test_a_crowd_crush_first_reported_as_medical_stays_one_incident():
    r = Replica()
    (first,) = r.ingest(item(category="medical", number="13900000001"))
    crush = [
        item(
            moved(BUND, 80 * (i % 5) / 4, 37 * i),
            category="crowd_crush",
            number=f"1390000{100 + i:04d}",
            received_at=(NOW + timedelta(seconds=7 * i)).isoformat(),
        )
        for i in range(40)
    ]
    later = [
        item(moved(BUND, 30, 90 * i), category="medical", received_at=(NOW + timedelta(minutes=5)).isoformat())
        for i in range(15)
    ]
    results = [res for it in crush + later for res in r.ingest(it)]
    assert {res.incident_id for res in results} == {first.incident_id}
    (incident,) = r.index.incidents.values()
    assert incident.category == Category.crowd_crush and incident.alarm_count == 56
    assert incident.level <= Level.III  # the crowd crush's floor, not a medical call's IV
    (why,) = [e for e in r.timeline if e.kind == "category.changed"]
    assert why.detail["category"] == "crowd_crush" and "medical" in why.detail["reason"]


@pytest.mark.parametrize("scene", ["traffic_accident", "fire"])
def test_a_scene_reported_after_a_medical_call_takes_over_its_incident(scene):
    r = Replica()
    (medical,) = r.ingest(item(category="medical"))
    (alarm,) = r.ingest(item(moved(BUND, 60), category=scene))
    assert alarm.incident_id == medical.incident_id and alarm.correlated
    assert r.index.incidents[medical.incident_id].category == Category(scene)


def test_a_medical_call_far_from_a_crowd_crush_stays_its_own_incident():
    r = Replica()
    (crush,) = r.ingest(item(category="crowd_crush"))
    (far,) = r.ingest(item(moved(BUND, 1300, 90), category="medical"))
    assert far.incident_id != crush.incident_id


def test_a_scene_alarm_far_from_a_medical_incident_opens_its_own():
    r = Replica()
    (medical,) = r.ingest(item(category="medical"))
    (crush,) = r.ingest(item(moved(BUND, 1300, 90), category="crowd_crush"))
    assert crush.incident_id != medical.incident_id
    assert r.index.incidents[medical.incident_id].category == Category.medical


# --- 3. time is not trusted blindly ------------------------------------------------------------


def test_beijing_wall_clock_written_as_utc_is_refused_naming_received_at():
    eight_hours_ahead = (NOW + timedelta(hours=8)).isoformat()
    with pytest.raises(errors.InvalidInput) as refused:
        item(received_at=eight_hours_ahead)
    assert refused.value.extra["field"] == "received_at"


@pytest.mark.parametrize("received_at", ["9999-12-31T23:00:00Z", "0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00Z"])
def test_a_received_at_at_the_edges_of_time_is_refused_naming_the_field(received_at):
    with pytest.raises(errors.InvalidInput) as refused:
        item(received_at=received_at)
    assert refused.value.extra["field"] == "received_at"


def test_a_received_at_within_the_skew_is_taken():
    assert item(received_at=(NOW + timedelta(minutes=4)).isoformat()).facts.received_at > NOW


def test_a_late_alarm_inside_the_incidents_time_span_joins_it():
    r = Replica()
    hours = [r.ingest(item(received_at=(NOW - timedelta(hours=h)).isoformat()))[0] for h in (3, 2, 1, 0)]
    assert len({res.incident_id for res in hours}) == 1
    (late,) = r.ingest(item(moved(BUND, 33, 45), received_at=(NOW - timedelta(hours=2, minutes=30)).isoformat()))
    assert late.incident_id == hours[0].incident_id and late.correlated


def test_an_alarm_earlier_than_the_span_by_more_than_the_window_opens_its_own():
    r = Replica()
    (now,) = r.ingest(item())
    (early,) = r.ingest(item(received_at=(NOW - timedelta(hours=2, minutes=1)).isoformat()))
    assert early.incident_id != now.incident_id


# --- 4. one caller is one caller -------------------------------------------------------------


@pytest.mark.parametrize(
    "written", ["13900000031", "008613900000031", "+86 139 0000 0031", "86-139-0000-0031", "+8613900000031"]
)
def test_one_number_however_written_is_one_caller(written):
    assert normalise_number(written) == "+8613900000031"
    assert caller_key(PEPPER, written) == caller_key(PEPPER, "13900000031")


def test_three_spellings_of_one_number_do_not_verify_an_incident():
    r = Replica()
    for number in ("13900000031", "008613900000031", "+86 139-0000-0031"):
        r.ingest(item(number=number))
    (incident,) = r.index.incidents.values()
    assert incident.caller_count == 1 and not incident.verified


@pytest.mark.parametrize("number", ["abc", "12", "+", "0000000000000000000", "110110110110110110110110"])
def test_what_is_not_a_phone_number_is_refused_naming_caller_number(number):
    with pytest.raises(errors.InvalidInput) as refused:
        item(caller={"number": number})
    assert refused.value.extra["field"] == "caller.number"


# --- 5. a reused alarm_id ------------------------------------------------------------------


def test_a_different_alarm_under_a_used_alarm_id_is_refused_naming_alarm_id():
    r = Replica()
    (fire,) = r.ingest(item(alarm_id="X"))
    far = moved(BUND, 60_000, 200)
    (crush,) = r.ingest(item(far, alarm_id="X", category="crowd_crush", casualties=12))
    assert isinstance(crush, errors.Conflict) and crush.extra["field"] == "alarm_id"
    assert len(r.index) == 1  # the crowd crush opened nothing


def test_the_same_alarm_again_however_written_is_a_duplicate():
    r = Replica()
    first = body(alarm_id="Y", caller={"number": "13900000031"})
    (a,) = r.ingest(admit("gw-a", GatewayAlarm.model_validate(first), "nats", PEPPER, POLICY, NOW))
    again = dict(reversed(list(first.items())))  # another key order
    again["received_at"] = NOW.astimezone(UTC).replace(tzinfo=None).isoformat() + "+00:00"
    again["caller"] = {"number": "+86 139 0000 0031"}
    (b,) = r.ingest(admit("gw-a", GatewayAlarm.model_validate(again), "nats", PEPPER, POLICY, NOW))
    assert isinstance(b, IngestResult) and b.duplicate and b.incident_id == a.incident_id


def test_a_different_alarm_under_one_id_within_one_batch_is_refused():
    r = Replica()
    first, second = r.ingest(item(alarm_id="Z"), item(alarm_id="Z", category="flood"))
    assert isinstance(first, IngestResult) and isinstance(second, errors.Conflict)


# --- 6. an operator's level sticks ---------------------------------------------------------------


def test_an_operators_lowering_is_not_undone_by_a_routine_alarm():
    r = Replica()
    (first,) = r.ingest(item(casualties=12))
    incident = r.index.incidents[first.incident_id]
    assert incident.level == Level.II
    change = incident.change_level(Level.III, "cmdr", "casualties were double-counted")
    incident.level, incident.facts, incident.version = Level.III, change.values["facts"], incident.version + 1
    r.ingest(item())  # routine: no new casualty figure
    r.ingest(item(casualties=12))  # the same figure again
    assert incident.level == Level.III
    (raised,) = r.ingest(item(casualties=31))  # more than was known: level I
    assert incident.level == Level.I
    (entry,) = [e for e in r.timeline if e.kind == "level.changed" and e.detail["to"] == 1]
    assert "new since cmdr" in entry.detail["reason"] and "12 -> 31" in entry.detail["reason"]


# --- 2 and 10. input the database or the arithmetic would refuse --------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"description": "smoke\x00"}, "description"),
        ({"caller": {"number": "13900000031", "name": "Li\x00"}}, "caller.name"),
        ({"location": {"lat": 31.2, "lon": 121.4, "address": "\x00"}}, "location.address"),
    ],
)
def test_text_the_database_cannot_store_is_refused_naming_the_field(changes, field):
    with pytest.raises(errors.InvalidInput) as refused:
        item(**changes)
    assert refused.value.extra["field"] == field


@pytest.mark.parametrize(
    "where",
    [(64.0, 179.9999), (64.0, -179.9999), (89.9999, 0.0), (-89.9999, 120.0), (0.0, 0.0), (31.2, 140.0)],
)
def test_a_location_outside_the_service_area_is_refused_naming_location(where):
    with pytest.raises(errors.InvalidInput) as refused:
        item(where)
    assert refused.value.extra["field"] == "location"


def test_the_service_area_is_the_deployments():
    europe = AlarmPolicy(area=(35.0, -10.0, 60.0, 30.0))
    alarm = GatewayAlarm.model_validate(body((48.8566, 2.3522)))
    assert admit("gw-a", alarm, "nats", PEPPER, europe, NOW).lat == 48.8566


@pytest.mark.parametrize(
    "area", [(-90.0, -180.0, 90.0, 180.0), (50.0, 170.0, 70.0, 179.0), (10.0, 100.0, 20.0, 180.0), (30, 120, 20, 130)]
)
def test_a_service_area_where_correlation_would_split_a_scene_is_refused(area):
    with pytest.raises(ValueError, match="service area"):
        AlarmPolicy(area=area)


@settings(max_examples=300, deadline=None)
@given(digits=st.from_regex(r"\A1[0-9]{10}\Z") | st.from_regex(r"\A[0-9+ ()-]{3,20}\Z"))
def test_the_canonical_number_is_the_phone_libraries_whatever_the_path(digits):
    try:
        parsed = phonenumbers.parse(digits, "CN")
        expected = (
            phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
            if phonenumbers.is_possible_number(parsed)
            else None
        )
    except phonenumbers.NumberParseException:
        expected = None
    try:
        ours = normalise_number(digits)
    except errors.InvalidInput:
        ours = None
    assert ours == expected


# --- 7. merge then split keeps the scene ------------------------------------------------------


def _scene(**changes: Any):
    from incident_intake.domain import Perimeter, Stage

    r = Replica()
    (first,) = r.ingest(item(**changes))
    incident = r.index.incidents[first.incident_id]
    incident.stage, incident.verified = Stage.isolation, True
    incident.perimeter = Perimeter.circle(incident.lat, incident.lon, 100)
    incident.facts = {"perimeter_units_on_scene": True}
    return incident


def test_a_merge_keeps_the_most_advanced_state_of_the_two():
    from incident_intake.domain import Counts, Stage

    x = _scene(casualties=4)
    fresh = Replica()
    fresh._n = itertools.count(100)  # ids apart from x's replica
    (y_id,) = fresh.ingest(item(moved(BUND, 2200, 90)))
    y = fresh.index.incidents[y_id.incident_id]
    counts = Counts(2, NOW, NOW, 4, 0)
    gone, merged = y.merge(x, "alice", 1, counts)
    assert merged.values["stage"] == Stage.isolation and merged.values["verified"] is True
    assert merged.values["perimeter"] == x.perimeter.to_dict()
    assert merged.values["facts"]["perimeter_units_on_scene"] is True
    assert merged.values["level"] == int(min(x.level, y.level))
    assert merged.entry.detail["kept_from"] == {"stage": x.id, "perimeter": x.id, "level": x.id, "verified": x.id}
    assert gone.values == {"merged_into": y.id, "alarm_count": 0, "caller_count": 0}  # x's own state stays


def test_splitting_a_merged_incidents_alarms_back_out_gives_them_its_state():
    from incident_intake.domain import AlarmFacts, Counts, Stage

    x = _scene(casualties=4)
    fresh = Replica()
    fresh._n = itertools.count(100)  # ids apart from x's replica
    (y_id,) = fresh.ingest(item(moved(BUND, 2200, 90)))
    y = fresh.index.incidents[y_id.incident_id]
    x.merged_into = y.id
    first = AlarmFacts(Category.fire, x.lat, x.lon, NOW)
    split = y.split("inc-new", first, [("gw-a", "a-1")], Counts(1, NOW, NOW, 4, 0), Counts(1, NOW, NOW, 0, 0), "al", x)
    new = split.new
    assert (new.stage, new.verified, new.perimeter, new.level) == (Stage.isolation, True, x.perimeter, x.level)
    assert new.facts["perimeter_units_on_scene"] is True and new.split_from == y.id
    assert split.entry.detail["state_of"] == x.id
    moved_stage = new.carried_stage(Stage.reported, "al", "split")
    assert moved_stage is not None and moved_stage.data.to_stage == Stage.isolation
