"""The events intake publishes, as other services receive them: every envelope carries its model's
subject, its incident, the drill flag, and a payload that validates back into the same model."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ecs.contracts import MESSAGES, GatewayAlarm
from ecs.envelope import Envelope
from incident_intake.correlation import OpenIncidentIndex, correlate, to_incoming
from incident_intake.domain import (
    DEFAULT_WINDOWS,
    AlarmFacts,
    Category,
    Counts,
    Event,
    Incident,
    Level,
    Perimeter,
    Stage,
)
from incident_intake.handlers.context import SOURCE, SUBJECTS, envelope

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
CORDON = Perimeter.polygon([(31.0, 121.0), (31.0, 121.01), (31.01, 121.01)])
COUNTS = Counts(3, T0, T0 + timedelta(minutes=5), 4, 2)


def incident(**changes: object) -> Incident:
    base = Incident("inc-1", Category.hazmat, 31.0, 121.0, T0, T0, 2, 2, 1, Level.III, True, version=3)
    return replace(base, **changes)


def every_kind_of_event() -> list[Event]:
    # Four fire alarms, then a medical call and the traffic accident it turns out to be, elsewhere.
    kinds = ["fire"] * 4 + ["medical", "traffic_accident"]
    alarms = [
        to_incoming(
            "gw-a",
            GatewayAlarm.model_validate(
                {
                    "alarm_id": f"a-{i}",
                    "received_at": (T0 + timedelta(seconds=i)).isoformat(),
                    "category": kind,
                    "location": {"lat": 31.2, "lon": 121.4} if i < 4 else {"lat": 31.25, "lon": 121.45},
                    "caller": {"number": f"1390000000{i}"},
                    "description": "smoke",
                    "casualties": 12 if i == 3 else None,
                }
            ),
            "http",
            "pepper",
        )
        for i, kind in enumerate(kinds)
    ]
    index = OpenIncidentIndex.for_windows(DEFAULT_WINDOWS)
    events = correlate(alarms, index, {}, (), DEFAULT_WINDOWS, 3, lambda: "inc-9").events
    live = incident()
    events += [
        live.verify("a").event,
        live.set_perimeter(CORDON, "a").event,
        replace(live, verified=True, perimeter=CORDON).change_stage(Stage.isolation, "a", "go", []).event,
        live.change_level(Level.I, "a", "worse").event,
        live.record_fact("hazard_under_control", "a").event,
        live.merge(incident(id="inc-2"), "a", 2, COUNTS)[1].event,
    ]
    first = AlarmFacts(Category.hazmat, 31.1, 121.1, T0, exercise=True)
    split = live.split("inc-3", first, [("gw-a", "a-1")], COUNTS, COUNTS, "a")
    events += [split.created, split.left.event]
    return [e for e in events if e is not None]


def test_every_model_intake_publishes_has_a_subject():
    ours = {m.model for m in MESSAGES if m.publisher == SOURCE}
    assert set(SUBJECTS) == ours
    assert {type(e.data) for e in every_kind_of_event()} == ours


@pytest.mark.parametrize("event", every_kind_of_event(), ids=lambda e: type(e.data).__name__)
def test_an_envelope_carries_its_event_whole(event):
    env = Envelope.from_bytes(envelope(event).to_bytes())
    assert env.type == SUBJECTS[type(event.data)] and env.source == "incident-intake"
    assert env.incident_id == env.correlation_id == event.data.incident_id
    assert env.exercise is event.exercise and env.causation_id == event.cause
    if event.id is not None:
        assert env.id == event.id
    assert type(event.data).model_validate(env.data) == event.data
    assert orjson.loads(orjson.dumps(env.data)) == env.data
