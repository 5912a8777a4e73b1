"""intake's rule tables at their edges: correlation windows from settings, a window that is not
positive, and the lifecycle's refusal of a step it does not have, naming the allowed ones."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from ecs.geo import haversine_m
from incident_intake.domain import (
    DEFAULT_WINDOWS,
    AlarmFacts,
    Category,
    CorrelationWindow,
    IllegalTransition,
    Incident,
    Level,
    Stage,
    Trigger,
    find_incident,
    gap_to_span,
    merged_facts,
    open_incident,
    windows_from,
)


def test_windows_from_settings_replace_only_the_categories_named():
    windows = windows_from({Category.fire.value: {"distance_m": 800, "window_s": 3600}})
    assert windows[Category.fire] == CorrelationWindow(800.0, 3600.0)
    assert {c: w for c, w in windows.items() if c != Category.fire} == {
        c: w for c, w in DEFAULT_WINDOWS.items() if c != Category.fire
    }
    assert windows_from({}) == DEFAULT_WINDOWS and windows_from({}) is not DEFAULT_WINDOWS


def test_windows_from_settings_refuse_an_unknown_category_or_a_window_that_is_not_positive():
    with pytest.raises(ValueError, match=r"^correlation_windows: unknown category 'volcano'$"):
        windows_from({"volcano": {"distance_m": 1, "window_s": 1}})
    with pytest.raises(ValueError, match="^correlation window distance and time must be positive$"):
        windows_from({Category.fire.value: {"distance_m": 0, "window_s": 60}})


@pytest.mark.parametrize(("distance_m", "window_s"), [(0, 1), (1, 0), (-1, 1), (1, -1)])
def test_a_window_must_be_positive_in_distance_and_time(distance_m, window_s):
    with pytest.raises(ValueError, match="^correlation window distance and time must be positive$"):
        CorrelationWindow(distance_m, window_s)


def test_the_smallest_positive_window_is_taken():
    assert CorrelationWindow(0.001, 0.001).distance_m == 0.001


def test_a_step_the_lifecycle_does_not_have_names_the_allowed_ones():
    error = IllegalTransition(Stage.reported, Trigger.close)
    assert error.detail == "cannot 'close' an incident in stage 'reported'; allowed triggers: isolate, cancel"
    assert error.extra == {"stage": "reported", "trigger": "close", "allowed": ["isolate", "cancel"]}
    assert (error.stage, error.trigger, error.allowed) == (
        Stage.reported,
        Trigger.close,
        [Trigger.isolate, Trigger.cancel],
    )
    finished = IllegalTransition(Stage.closed, Trigger.isolate)
    assert (
        finished.detail
        == "cannot 'isolate' an incident in stage 'closed'; allowed triggers: none, the incident is finished"
    )
    assert finished.extra["allowed"] == [] and finished.status == 409


@pytest.mark.parametrize(
    ("a", "b", "merged"),
    [
        ({}, {}, {}),
        ({"hazard_under_control": True}, {}, {"hazard_under_control": True}),
        ({}, {"hazard_under_control": True}, {"hazard_under_control": True}),
        ({"hazard_under_control": False}, {"hazard_under_control": True}, {"hazard_under_control": True}),
        ({"hazard_under_control": True}, {"hazard_under_control": False}, {"hazard_under_control": True}),
        ({"hazard_under_control": False}, {"hazard_under_control": False}, {"hazard_under_control": False}),
        ({"note": "a's"}, {"note": "b's"}, {"note": "a's"}),  # not a truth value: the target's stays
        ({}, {"note": "b's"}, {"note": "b's"}),
        ({"settled": {"dispatch": True}}, {}, {"settled": {"dispatch": True}}),
        ({}, {"settled": {"shelter": False}}, {"settled": {"shelter": False}}),
        (
            {"settled": {"dispatch": True, "shelter": True}},
            {"settled": {"dispatch": False}},
            {"settled": {"dispatch": False, "shelter": True}},
        ),
        ({"settled": {"dispatch": True}}, {"settled": {"dispatch": True}}, {"settled": {"dispatch": True}}),
        (
            {"settled": {"dispatch": False}},
            {"settled": {"dispatch": True, "shelter": True}},
            {"settled": {"dispatch": False, "shelter": True}},
        ),
        ({"statement_published": None}, {"statement_published": True}, {"statement_published": True}),
    ],
)
def test_merged_facts_a_fact_true_for_either_and_settled_only_if_settled_for_both(a, b, merged):
    before = copy.deepcopy((a, b))
    assert merged_facts(a, b) == merged
    assert (a, b) == before  # neither input is changed


T0 = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
SPOT = (31.24, 121.49)


def facts(at: tuple[float, float] = SPOT, when: datetime = T0, category: Category = Category.fire, **kw) -> AlarmFacts:
    return AlarmFacts(category=category, lat=at[0], lon=at[1], received_at=when, **kw)


def incident(incident_id: str, at: tuple[float, float] = SPOT, when: datetime = T0, **kw) -> Incident:
    return open_incident(incident_id, facts(at, when, **kw))


def north(metres: float) -> tuple[float, float]:
    return SPOT[0] + metres / 111_195.0, SPOT[1]


def test_find_incident_looks_past_every_candidate_that_cannot_take_the_alarm():
    window = DEFAULT_WINDOWS[Category.fire]
    cancelled = incident("a-cancelled")
    cancelled.stage = Stage.cancelled
    unfit = [
        cancelled,
        incident("b-drill", exercise=True),
        incident("c-other-kind", category=Category.flood),
        incident("d-too-old", when=T0 - timedelta(seconds=window.window_s + 60)),
        incident("e-too-far", at=north(window.distance_m * 2)),
    ]
    fitting = incident("z-fits", at=north(10))
    assert find_incident(facts(), [*unfit, fitting]) is fitting
    assert find_incident(facts(), unfit) is None


def test_find_incident_takes_the_nearest_then_the_oldest_then_the_smallest_id():
    near, nearer = incident("n1", at=north(80)), incident("n2", at=north(20))
    assert find_incident(facts(), [near, nearer]) is nearer
    assert find_incident(facts(), [nearer, near]) is nearer
    older, newer = incident("o2", when=T0 - timedelta(minutes=5)), incident("o1", when=T0)
    assert find_incident(facts(), [newer, older]) is older
    same_a, same_b = incident("s-a"), incident("s-b")
    assert find_incident(facts(), [same_b, same_a]) is same_a
    assert find_incident(facts(), [same_a, same_b]) is same_a


def test_find_incident_joins_at_the_edge_of_the_time_window_and_uses_the_windows_given():
    window = DEFAULT_WINDOWS[Category.fire]
    edge = incident("edge", when=T0 - timedelta(seconds=window.window_s))
    assert find_incident(facts(), [edge]) is edge
    past = incident("past", when=T0 - timedelta(seconds=window.window_s + 1))
    assert find_incident(facts(), [past]) is None
    wide = {Category.fire: CorrelationWindow(distance_m=5000, window_s=window.window_s)}
    far = incident("far", at=north(2000))
    assert find_incident(facts(), [far]) is None
    assert find_incident(facts(), [far], wide) is far
    # A category the windows given leave out is judged by its default window.
    flood = incident("flood", category=Category.flood)
    assert find_incident(facts(category=Category.flood), [flood], wide) is flood


def test_a_medical_call_is_judged_by_the_window_of_the_scene_it_joins():
    crush = incident("crush", at=north(DEFAULT_WINDOWS[Category.medical].distance_m * 2), category=Category.crowd_crush)
    assert DEFAULT_WINDOWS[Category.crowd_crush].distance_m > DEFAULT_WINDOWS[Category.medical].distance_m * 2
    assert find_incident(facts(category=Category.medical), [crush]) is crush


def test_find_incident_joins_at_exactly_the_window_distance():
    far = incident("far", at=north(150))
    exact = {Category.fire: CorrelationWindow(haversine_m(*SPOT, *north(150)), 3600)}
    assert find_incident(facts(), [far], exact) is far


def test_a_medical_only_incident_is_judged_by_the_window_of_the_scene_an_alarm_reports():
    medical = incident("medical", category=Category.medical)
    crush = facts(at=north(300), category=Category.crowd_crush)  # medical's 100 m, a crowd crush's 400 m
    assert find_incident(crush, [medical]) is medical


def test_an_alarm_inside_the_span_is_no_time_away():
    assert gap_to_span(T0 + timedelta(minutes=1), T0, T0 + timedelta(minutes=2)) == 0.0
    assert gap_to_span(T0 - timedelta(seconds=5), T0, T0 + timedelta(minutes=2)) == 5.0
    assert gap_to_span(T0 + timedelta(minutes=3), T0, T0 + timedelta(minutes=2)) == 60.0


def test_a_new_incident_without_reported_casualties_has_none_and_its_categorys_floor():
    inc = open_incident("inc-1", facts(category=Category.crowd_crush))
    assert (inc.casualties, inc.caller_count, inc.level) == (0, 0, Level.III)
    assert open_incident("inc-2", facts()).level is Level.IV
