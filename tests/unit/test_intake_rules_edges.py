"""intake's rule tables at their edges: correlation windows from settings, a window that is not
positive, and the lifecycle's refusal of a step it does not have, naming the allowed ones."""

from __future__ import annotations

import copy

import pytest

from incident_intake.domain import (
    DEFAULT_WINDOWS,
    Category,
    CorrelationWindow,
    IllegalTransition,
    Stage,
    Trigger,
    merged_facts,
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
    ],
)
def test_merged_facts_a_fact_true_for_either_and_settled_only_if_settled_for_both(a, b, merged):
    before = copy.deepcopy((a, b))
    assert merged_facts(a, b) == merged
    assert (a, b) == before  # neither input is changed
