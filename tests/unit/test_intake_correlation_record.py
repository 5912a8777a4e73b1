"""What correlation records for each alarm of a batch, as the gateway, the timeline and the event
stream see it: receipts for new, joined and repeated alarms, a refusal that names the incident,
the batch going on after either, the timeline's entries, and the events' drill flag."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from ecs.contracts import GatewayAlarm, IncidentVerified, LevelChanged
from ecs.errors import Conflict
from incident_intake.correlation import (
    ACTOR,
    IngestResult,
    OpenIncidentIndex,
    correlate,
    to_incoming,
)
from incident_intake.domain import DEFAULT_WINDOWS, Category, CorrelationWindow, Entry

T0 = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
SPOT = (31.2400, 121.4900)
PEPPER = "unit-pepper"
_ids = itertools.count(1)


def incoming(
    at: tuple[float, float] = SPOT,
    *,
    alarm_id: str | None = None,
    category: Category = Category.fire,
    number: str | None = None,
    exercise: bool = False,
    description: str = "smoke",
    casualties: int | None = None,
) -> Any:
    alarm = GatewayAlarm.model_validate(
        {
            "alarm_id": alarm_id or f"rec-{next(_ids)}",
            "received_at": T0.isoformat(),
            "category": category.value,
            "location": {"lat": at[0], "lon": at[1]},
            "caller": {"number": number} if number else None,
            "description": description,
            "casualties": casualties,
            "exercise": exercise,
        }
    )
    return to_incoming("gw-a", alarm, "http", PEPPER)


def decide(items, index=None, windows=DEFAULT_WINDOWS, threshold=3):
    counter = itertools.count(1)
    index = index if index is not None else OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    return correlate(items, index, {}, (), windows, threshold, lambda: f"inc-{next(counter)}")


def test_receipts_for_a_new_a_joined_and_a_repeated_alarm():
    first, joined = incoming(alarm_id="a-1"), incoming(alarm_id="a-2")
    out = decide([first, joined, first])
    assert out.results == [
        IngestResult("a-1", "inc-1", duplicate=False, correlated=False),
        IngestResult("a-2", "inc-1", duplicate=False, correlated=True),
        IngestResult("a-1", "inc-1", duplicate=True, correlated=False),
    ]
    assert [e.kind for e in out.timeline] == ["created"]
    (created,) = out.timeline
    assert created == Entry("inc-1", ACTOR, "created", {"alarm_id": "a-1", "gateway_id": "gw-a", "level": 4})


def test_an_alarm_id_reused_for_another_alarm_is_refused_naming_the_incident_and_the_batch_goes_on():
    first = incoming(alarm_id="a-1")
    other = incoming(alarm_id="a-1", description="a different story")
    after = incoming((SPOT[0] + 0.5, SPOT[1]), alarm_id="a-3")
    out = decide([first, other, after])
    refusal = out.results[1]
    assert isinstance(refusal, Conflict)
    reason = "alarm_id a-1 of gateway gw-a was already used for a different alarm: give each alarm its own alarm_id"
    assert refusal.detail == reason and refusal.extra == {"field": "alarm_id", "incident_id": "inc-1"}
    assert out.refused == [(other, reason)]
    assert out.results[2] == IngestResult("a-3", "inc-2", duplicate=False, correlated=False)
    duplicate_then_more = decide([first, first, after])
    assert duplicate_then_more.results[2] == IngestResult("a-3", "inc-2", duplicate=False, correlated=False)


def test_the_windows_given_decide_what_joins():
    near = (SPOT[0] + 50 / 111_195.0, SPOT[1])  # 50 m north
    tight = {**DEFAULT_WINDOWS, Category.fire: CorrelationWindow(distance_m=10, window_s=600)}
    assert len(decide([incoming(), incoming(near)]).opened) == 1
    assert len(decide([incoming(), incoming(near)], windows=tight).opened) == 2


def test_automatic_verification_is_on_the_timeline_and_keeps_the_drill_flag():
    items = [
        incoming(number="13800138000", exercise=True),
        incoming(number="13800138001", exercise=True, casualties=12),
    ]
    out = decide(items, threshold=2)
    (raised,) = [e for e in out.events if isinstance(e.data, LevelChanged)]
    assert raised.exercise is True
    (incident,) = out.opened
    assert incident.verified and incident.caller_count == 2
    assert out.callers == [("inc-1", items[0].facts.caller_key), ("inc-1", items[1].facts.caller_key)]
    (verified,) = [e for e in out.events if isinstance(e.data, IncidentVerified)]
    assert verified.exercise is True and verified.data.automatic is True
    assert verified.data.version == incident.version
    assert out.timeline[-1] == Entry("inc-1", ACTOR, "verified", {"automatic": True, "callers": 2})


def test_one_new_caller_twice_in_a_batch_counts_once():
    first = incoming(number="13800138001")
    again = incoming(number="13800138002"), incoming(number="13800138002")
    out = decide([first, *again], threshold=10)
    (incident,) = out.opened
    assert incident.caller_count == 2
    assert out.callers == [("inc-1", first.facts.caller_key), ("inc-1", again[0].facts.caller_key)]


def test_a_scene_alarm_near_a_medical_call_changes_its_category_and_level_on_the_timeline():
    medical = incoming(category=Category.medical, alarm_id="m-1")
    out = decide([medical])
    (incident,) = out.opened
    index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    index.put(incident)
    version = incident.version
    scene = incoming(category=Category.crowd_crush, alarm_id="c-1", casualties=12)
    out = decide([scene], index=index)
    kinds = [(e.incident_id, e.actor, e.kind) for e in out.timeline]
    assert kinds == [(incident.id, ACTOR, "category.changed"), (incident.id, ACTOR, "level.changed")]
    changed = out.timeline[0].detail
    assert changed["category"] == Category.crowd_crush.value and changed["alarm_id"] == "c-1" and changed["reason"]
    assert incident.version == version + 2  # one for the category, one for the level
