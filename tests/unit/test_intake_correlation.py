"""Correlation without a database: the open-incident index (cells, put, drop, candidates, evict)
and the decision for one batch (``correlate``): where each alarm goes, and what is saved and
published because of it."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from ecs.contracts import AlarmLinked, GatewayAlarm, IncidentCreated, IncidentVerified, LevelChanged
from ecs.geo import wgs84_to_gcj02
from incident_intake.correlation import (
    IncomingAlarm,
    OpenIncidentIndex,
    caller_key,
    correlate,
    max_window,
    to_incoming,
)
from incident_intake.domain import DEFAULT_WINDOWS, AlarmFacts, Category, Level, Stage, open_incident

T0 = datetime(2024, 12, 31, 23, 30, tzinfo=UTC)
BUND = (31.2400, 121.4900)
PEPPER = "unit-pepper"
METRES_PER_DEG_LAT = 111_195.0


def north_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return point[0] + metres / METRES_PER_DEG_LAT, point[1]


def east_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
    return point[0], point[1] + metres / (METRES_PER_DEG_LAT * math.cos(math.radians(point[0])))


_ids = itertools.count(1)


def incoming(
    at: tuple[float, float] = BUND,
    *,
    category: str = "fire",
    number: str | None = None,
    casualties: int | None = None,
    exercise: bool = False,
    when: datetime = T0,
    alarm_id: str | None = None,
    gateway_id: str = "gw-a",
    crs: str = "wgs84",
) -> IncomingAlarm:
    alarm = GatewayAlarm.model_validate(
        {
            "alarm_id": alarm_id or f"a-{next(_ids)}",
            "received_at": when.isoformat(),
            "category": category,
            "location": {"lat": at[0], "lon": at[1], "crs": crs},
            "caller": {"number": number} if number else None,
            "description": "unit alarm",
            "casualties": casualties,
            "exercise": exercise,
        }
    )
    return to_incoming(gateway_id, alarm, "nats", PEPPER)


def ids() -> object:
    counter = itertools.count(1)
    return lambda: f"inc-{next(counter)}"


def decide(items, index=None, taken=None, callers=(), threshold=3, new_id=None):
    index = index if index is not None else OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    return correlate(items, index, taken or {}, callers, DEFAULT_WINDOWS, threshold, new_id or ids())


def fire_at(point: tuple[float, float], id: str = "inc-1", **changes: object):
    incident = open_incident(id, AlarmFacts(Category.fire, point[0], point[1], T0, caller_key="k1"))
    for name, value in changes.items():
        setattr(incident, name, value)
    return incident


# --- alarms in ------------------------------------------------------------------------------


def test_one_caller_however_the_number_is_written():
    keys = {caller_key(PEPPER, n) for n in ("13912345678", "+86 139 1234 5678", "139-1234-5678", "+8613912345678")}
    assert len(keys) == 1
    assert caller_key(PEPPER, "13912345678") != caller_key("another-pepper", "13912345678")
    assert caller_key(PEPPER, "13912345678") != caller_key(PEPPER, "13912345679")


def test_incoming_alarm_is_in_wgs84_and_utc_with_the_caller_hashed():
    gcj = wgs84_to_gcj02(*BUND)
    east8 = datetime(2025, 1, 1, 7, 30, tzinfo=UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    item = incoming(gcj, crs="gcj02", number="13912345678", when=east8, alarm_id="x-1")
    assert math.isclose(item.lat, BUND[0], abs_tol=1e-6) and math.isclose(item.lon, BUND[1], abs_tol=1e-6)
    assert (item.facts.lat, item.facts.lon) == (item.lat, item.lon)
    assert item.facts.received_at.utcoffset() == timedelta(0) and item.facts.received_at == east8
    assert item.facts.caller_key == caller_key(PEPPER, "13912345678")
    assert "13912345678" not in item.facts.caller_key
    assert (item.key, item.ref) == (("gw-a", "x-1"), "gw-a:x-1")


# --- the index ------------------------------------------------------------------------------


def test_cells_are_at_least_as_wide_as_the_widest_window():
    index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    widest = max(w.distance_m for w in DEFAULT_WINDOWS.values())
    assert index.cell_deg * METRES_PER_DEG_LAT * 0.5 >= widest * 0.99
    assert OpenIncidentIndex.for_windows({Category.fire: DEFAULT_WINDOWS[Category.medical]}).cell_deg == 0.01
    with pytest.raises(ValueError):
        OpenIncidentIndex(0)


def test_candidates_are_the_incidents_of_the_cell_and_its_neighbours():
    index = OpenIncidentIndex(0.01)
    near = fire_at(BUND, "near")
    next_cell = fire_at(north_of(BUND, 1500), "next-cell")
    far = fire_at(north_of(BUND, 5000), "far")
    index.put_all([near, next_cell, far])
    assert {i.id for i in index.candidates(*BUND)} == {"near", "next-cell"}
    assert {i.id for i in index.candidates(*north_of(BUND, 5000))} == {"far"}
    assert len(index) == 3 and "far" in index


def test_put_replaces_and_drops_what_no_alarm_can_join():
    index = OpenIncidentIndex(0.01)
    index.put(fire_at(BUND, "a"))
    moved = fire_at(north_of(BUND, 5000), "a", alarm_count=7)
    index.put(moved)
    assert index.candidates(*BUND) == [] and index.candidates(*north_of(BUND, 5000)) == [moved]
    for stage in (Stage.closed, Stage.cancelled):
        index.put(fire_at(BUND, "a", stage=stage))
        assert "a" not in index and index.candidates(*BUND) == []
    index.put(fire_at(BUND, "b"))
    index.put(fire_at(BUND, "b", merged_into="a"))
    assert "b" not in index
    index.drop("never-held")


@pytest.mark.parametrize("stage", sorted(Stage))
def test_the_index_holds_an_incident_in_every_open_stage_only(stage):
    index = OpenIncidentIndex(0.01)
    index.put(fire_at(BUND, stage=stage))
    assert ("inc-1" in index) is stage.is_open


def test_evict_forgets_incidents_quiet_since_before_the_horizon_and_raises_the_floor():
    index = OpenIncidentIndex(0.01)
    old = fire_at(BUND, "old", last_alarm_at=T0 - timedelta(hours=5))
    fresh = fire_at(BUND, "fresh", last_alarm_at=T0)
    index.put_all([old, fresh])
    assert index.evict(T0 - timedelta(hours=1)) == 1
    assert [i.id for i in index.candidates(*BUND)] == ["fresh"] and index.floor == T0 - timedelta(hours=1)
    index.put(old)
    assert index.evict(T0 - timedelta(hours=2)) == 0  # below the floor: nothing to do
    assert "old" in index


def test_clear_forgets_incidents_and_what_the_index_covers_but_not_the_epoch():
    index = OpenIncidentIndex(0.01)
    index.put(fire_at(BUND))
    index.rev, index.floor, index.epoch = 41, T0, 3
    index.clear()
    assert (len(index), index.rev, index.floor, index.epoch) == (0, None, None, 3)
    assert index.candidates(*BUND) == []


def test_max_window_is_the_longest_time_window():
    assert max_window(DEFAULT_WINDOWS) == timedelta(hours=6)


# --- the decision ---------------------------------------------------------------------------


def test_a_first_alarm_opens_an_incident_with_its_events_and_timeline():
    item = incoming(number="13900000001", casualties=4, alarm_id="first")
    index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    out = decide([item], index)
    (incident,) = out.opened
    assert (incident.id, incident.level, incident.version, incident.verified) == ("inc-1", Level.III, 1, False)
    assert index.candidates(*BUND) == [incident]
    assert out.changed == [] and out.linked == [(item, "inc-1")]
    assert out.callers == [("inc-1", item.facts.caller_key)]
    assert [(r.incident_id, r.duplicate, r.correlated) for r in out.results] == [("inc-1", False, False)]
    assert [e.kind for e in out.timeline] == ["created"]
    assert out.timeline[0].detail == {"alarm_id": "first", "gateway_id": "gw-a", "level": 3}
    created, linked = out.events
    assert isinstance(created.data, IncidentCreated) and created.cause == "gw-a:first" and created.id is None
    assert (created.data.level, created.data.alarm_id, created.data.first_alarm_at) == (Level.III, "first", T0)
    assert isinstance(linked.data, AlarmLinked) and linked.id == "linked:gw-a:first" and linked.cause == "gw-a:first"
    assert (linked.data.alarm_count, linked.data.new_incident) == (1, True)


def test_alarms_about_one_scene_join_its_incident_and_count_each_caller_once():
    items = [
        incoming(number="13900000001"),
        incoming(north_of(BUND, 100), number="13900000002", category="explosion"),
        incoming(east_of(BUND, 200), number="139 0000 0001", category="medical", casualties=2),
    ]
    out = decide(items)
    (incident,) = out.opened
    assert out.changed == []  # opened in this batch: inserted as it ends up, not updated
    assert [r.correlated for r in out.results] == [False, True, True]
    assert (incident.alarm_count, incident.caller_count, incident.casualties) == (3, 2, 2)
    assert [d.data.alarm_count for d in out.events if isinstance(d.data, AlarmLinked)] == [1, 2, 3]
    assert len(out.callers) == 2


def test_a_raised_level_bumps_the_version_and_says_why():
    known = fire_at(BUND, "known")
    index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    index.put(known)
    out = decide([incoming(north_of(BUND, 50), casualties=12)], index)
    assert out.changed == [known] and known.level == Level.II and known.version == 2
    (changed,) = [e for e in out.events if isinstance(e.data, LevelChanged)]
    assert (changed.data.from_level, changed.data.to_level, changed.data.version) == (Level.IV, Level.II, 2)
    assert changed.data.actor == "correlation" and changed.data.reason.startswith("auto: 12 casualties")
    (entry,) = [e for e in out.timeline if e.kind == "level.changed"]
    assert entry.detail == {"from": 4, "to": 2, "reason": "12 casualties reported, 1 callers, category fire"}


def test_enough_independent_callers_verify_an_incident_once():
    out = decide([incoming(north_of(BUND, 10 * i), number=f"1390000000{i}") for i in range(5)])
    (incident,) = out.opened
    assert incident.verified and incident.version == 2
    (verified,) = [e for e in out.events if isinstance(e.data, IncidentVerified)]
    assert (verified.data.automatic, verified.data.version) == (True, 2)
    assert [e.kind for e in out.timeline].count("verified") == 1


def test_a_threshold_of_one_verifies_a_new_incident_at_once():
    (incident,) = decide([incoming(number="13900000001")], threshold=1).opened
    assert (incident.verified, incident.version) == (True, 2)


def test_a_caller_known_to_the_database_is_not_counted_again():
    known = fire_at(BUND, "known")
    index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    index.put(known)
    item = incoming(number="13900000001")
    out = decide([item], index, callers={("known", item.facts.caller_key)})
    assert known.caller_count == 1 and out.callers == []


def test_duplicates_of_stored_or_earlier_alarms_change_nothing():
    stored = incoming(alarm_id="seen")
    again = incoming(alarm_id="twice")
    out = decide([stored, again, again], taken={("gw-a", "seen"): "old-incident"})
    assert [(r.incident_id, r.duplicate) for r in out.results] == [
        ("old-incident", True),
        ("inc-1", False),
        ("inc-1", True),
    ]
    assert len(out.linked) == 1 and out.opened[0].alarm_count == 1
    other_gateway = decide([incoming(alarm_id="seen", gateway_id="gw-b")], taken={("gw-a", "seen"): "x"})
    assert other_gateway.results[0].duplicate is False


def test_drill_and_live_alarms_at_one_place_open_separate_incidents():
    out = decide([incoming(exercise=i % 2 == 1, number=f"1390000000{i}") for i in range(4)])
    assert sorted(i.exercise for i in out.opened) == [False, True]
    for event in out.events:
        assert event.exercise == next(i.exercise for i in out.opened if i.id == event.data.incident_id)


def test_far_or_unrelated_alarms_open_their_own_incidents():
    out = decide([incoming(), incoming(north_of(BUND, 800)), incoming(category="flood"), incoming(category="other")])
    assert len(out.opened) == 4 and not any(r.correlated for r in out.results)
