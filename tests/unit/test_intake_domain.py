import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest

from ecs import errors
from incident_intake.domain import (
    DEFAULT_WINDOWS,
    OPEN_STAGES,
    TERMINAL_STAGES,
    TRANSITIONS,
    TRIGGER_FOR_TARGET,
    AlarmFacts,
    Category,
    GuardFacts,
    IllegalTransition,
    Level,
    LevelChange,
    Participant,
    Perimeter,
    Stage,
    Trigger,
    absorb,
    auto_verified,
    can_join,
    check_guard,
    estimate_level,
    find_incident,
    joined_category,
    next_stage,
    open_incident,
    trigger_for,
)

T0 = datetime(2024, 12, 31, 23, 30, tzinfo=UTC)
BUND = (31.2400, 121.4900)  # Chen Yi Square on the Bund
METRES_PER_DEG_LAT = 111_195.0


def north_of(point, metres):
    return point[0] + metres / METRES_PER_DEG_LAT, point[1]


def alarm(
    category=Category.fire,
    at=BUND,
    when=T0,
    caller="c1",
    casualties=None,
    exercise=False,
):
    return AlarmFacts(
        category=category,
        lat=at[0],
        lon=at[1],
        received_at=when,
        caller_key=caller,
        casualties=casualties,
        exercise=exercise,
    )


# --- Lifecycle table ------------------------------------------------------------------

EXPECTED_TRANSITIONS = {
    (Stage.reported, Trigger.isolate): Stage.isolation,
    (Stage.isolation, Trigger.handle): Stage.handling,
    (Stage.handling, Trigger.control_opinion): Stage.opinion_control,
    (Stage.opinion_control, Trigger.begin_aftermath): Stage.aftermath,
    (Stage.aftermath, Trigger.close): Stage.closed,
    (Stage.reported, Trigger.cancel): Stage.cancelled,
    (Stage.isolation, Trigger.cancel): Stage.cancelled,
}


@pytest.mark.parametrize(("stage", "trigger"), list(itertools.product(Stage, Trigger)))
def test_every_stage_and_trigger_pair(stage, trigger):
    expected = EXPECTED_TRANSITIONS.get((stage, trigger))
    assert TRANSITIONS.get((stage, trigger)) == expected
    if expected is not None:
        assert next_stage(stage, trigger) == expected
    else:
        with pytest.raises(IllegalTransition) as refused:
            next_stage(stage, trigger)
        assert refused.value.stage == stage
        assert refused.value.trigger == trigger
        assert f"'{stage}'" in str(refused.value)
        assert f"'{trigger}'" in str(refused.value)


def test_illegal_transition_names_the_allowed_triggers_and_is_a_409():
    with pytest.raises(IllegalTransition) as refused:
        next_stage(Stage.reported, Trigger.close)
    assert "isolate" in str(refused.value)
    assert "cancel" in str(refused.value)
    assert refused.value.allowed == [Trigger.isolate, Trigger.cancel]
    assert isinstance(refused.value, errors.IllegalTransition)
    assert refused.value.status == 409


def test_terminal_stage_says_nothing_is_allowed():
    with pytest.raises(IllegalTransition, match="finished"):
        next_stage(Stage.closed, Trigger.cancel)


def test_open_and_terminal_stages_partition_the_stages():
    assert {Stage.closed, Stage.cancelled} == TERMINAL_STAGES
    assert set(Stage) == OPEN_STAGES | TERMINAL_STAGES
    assert not OPEN_STAGES & TERMINAL_STAGES


def test_trigger_for_target_leads_to_that_target():
    assert set(TRIGGER_FOR_TARGET) == set(Stage) - {Stage.reported}
    for target, trigger in TRIGGER_FOR_TARGET.items():
        assert any(TRANSITIONS[key] == target for key in TRANSITIONS if key[1] == trigger)


# --- Guards ---------------------------------------------------------------------------

ALL_PARTICIPANTS = list(Participant)
CORDON = Perimeter.circle(*BUND, 300)


def guard(stage, trigger, facts, participants=ALL_PARTICIPANTS, dispatch=True):
    return check_guard(stage, trigger, facts, participants, dispatch)


def test_isolation_needs_verification_and_a_perimeter():
    assert guard(Stage.reported, Trigger.isolate, GuardFacts()) == [
        "incident not verified by a dispatcher",
        "no perimeter set",
    ]
    assert guard(Stage.reported, Trigger.isolate, GuardFacts(verified=True)) == ["no perimeter set"]
    facts = GuardFacts(verified=True, perimeter=CORDON)
    assert guard(Stage.reported, Trigger.isolate, facts) == []


def test_handling_waits_for_perimeter_units_only_when_dispatch_takes_part():
    assert guard(Stage.isolation, Trigger.handle, GuardFacts()) == ["perimeter units not on scene (dispatch)"]
    assert guard(Stage.isolation, Trigger.handle, GuardFacts(), dispatch=False) == []
    facts = GuardFacts(perimeter_units_on_scene=True)
    assert guard(Stage.isolation, Trigger.handle, facts) == []


def test_opinion_control_needs_the_hazard_under_control():
    assert guard(Stage.handling, Trigger.control_opinion, GuardFacts()) == ["hazard not declared under control"]
    facts = GuardFacts(hazard_under_control=True)
    assert guard(Stage.handling, Trigger.control_opinion, facts) == []


def test_aftermath_needs_a_statement_only_when_public_notification_takes_part():
    assert guard(Stage.opinion_control, Trigger.begin_aftermath, GuardFacts()) == ["no official statement published"]
    without_notification = [Participant.dispatch, Participant.shelter]
    facts = GuardFacts()
    assert guard(Stage.opinion_control, Trigger.begin_aftermath, facts, without_notification) == []
    facts = GuardFacts(statement_published=True)
    assert guard(Stage.opinion_control, Trigger.begin_aftermath, facts) == []


def test_closing_names_silent_and_unsettled_participants_and_the_report():
    facts = GuardFacts(settled={Participant.dispatch: True, Participant.stockpile: False})
    assert guard(Stage.aftermath, Trigger.close, facts) == [
        "participant 'resource-stockpile' not settled",
        "participant 'shelter-registry' has not reported",
        "participant 'public-notification' has not reported",
        "after-action report missing",
    ]


def test_closing_ignores_participants_the_plan_does_not_require():
    facts = GuardFacts(settled={Participant.dispatch: True, Participant.shelter: False}, after_action_report=True)
    assert guard(Stage.aftermath, Trigger.close, facts, [Participant.dispatch]) == []


@pytest.mark.parametrize("stage", [Stage.reported, Stage.isolation])
def test_a_false_alarm_can_always_be_cancelled(stage):
    assert guard(stage, Trigger.cancel, GuardFacts()) == []


def test_guard_refuses_a_step_the_lifecycle_does_not_have():
    fully_met = GuardFacts(
        verified=True,
        perimeter=CORDON,
        perimeter_units_on_scene=True,
        hazard_under_control=True,
        statement_published=True,
        after_action_report=True,
        settled={p: True for p in ALL_PARTICIPANTS},
    )
    with pytest.raises(IllegalTransition):
        guard(Stage.handling, Trigger.cancel, fully_met)


@pytest.mark.parametrize(
    ("callers", "sensor", "verified"),
    [
        (0, False, False),
        (2, False, False),
        (3, False, True),
        (0, True, True),
        (10, True, True),
    ],
)
def test_auto_verification_by_callers_or_sensor(callers, sensor, verified):
    assert auto_verified(callers, sensor) is verified


def test_auto_verification_threshold_is_configurable():
    assert auto_verified(4, False, threshold=5) is False
    assert auto_verified(5, False, threshold=5) is True


# --- Categories -----------------------------------------------------------------------


def test_category_values_are_the_gateway_contract():
    assert {c.value for c in Category} == {
        "fire", "explosion", "hazmat", "building_collapse", "crowd_crush", "traffic_accident",
        "flood", "gas_leak", "public_security", "medical", "other",
    }  # fmt: skip


@pytest.mark.parametrize("category", list(Category))
def test_same_category_always_joins(category):
    assert can_join(category, category)


@pytest.mark.parametrize(
    ("incident", "alarm_category", "joins"),
    [
        (Category.fire, Category.explosion, True),
        (Category.explosion, Category.gas_leak, True),
        (Category.gas_leak, Category.hazmat, True),
        (Category.hazmat, Category.fire, True),
        (Category.fire, Category.medical, True),
        (Category.crowd_crush, Category.medical, True),
        (Category.traffic_accident, Category.medical, True),
        (Category.building_collapse, Category.medical, True),
        (Category.medical, Category.fire, True),  # a medical-only incident becomes the scene
        (Category.medical, Category.crowd_crush, True),
        (Category.medical, Category.flood, False),
        (Category.medical, Category.public_security, False),
        (Category.flood, Category.building_collapse, False),
        (Category.building_collapse, Category.flood, False),
        (Category.flood, Category.medical, False),
        (Category.public_security, Category.crowd_crush, False),
        (Category.traffic_accident, Category.fire, False),
        (Category.other, Category.fire, False),
    ],
)
def test_compatibility_table(incident, alarm_category, joins):
    assert can_join(incident, alarm_category) is joins


# --- Correlation ----------------------------------------------------------------------


def incident(id="inc-1", at=BUND, when=T0, category=Category.fire, exercise=False, **changes):
    state = open_incident(id, alarm(category=category, at=at, when=when, exercise=exercise))
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def test_alarm_within_distance_and_time_joins():
    fire = incident()
    found = find_incident(alarm(at=north_of(BUND, 450), when=T0 + timedelta(minutes=90)), [fire])
    assert found is fire


def test_alarm_beyond_the_distance_opens_a_new_incident():
    fire = incident()
    assert find_incident(alarm(at=north_of(BUND, 550)), [fire]) is None


def test_alarm_beyond_the_time_window_opens_a_new_incident():
    fire = incident()
    assert find_incident(alarm(when=T0 + timedelta(hours=2, seconds=1)), [fire]) is None


def test_time_window_counts_from_the_latest_alarm_and_either_side():
    fire = incident(last_alarm_at=T0 + timedelta(hours=3))
    assert find_incident(alarm(when=T0 + timedelta(hours=4, minutes=59)), [fire]) is fire
    # A late-delivered alarm that was received before the latest one still belongs.
    assert find_incident(alarm(when=T0 + timedelta(hours=1, minutes=1)), [fire]) is fire


def test_incompatible_category_opens_a_new_incident():
    crush = incident(category=Category.crowd_crush)
    assert find_incident(alarm(category=Category.fire), [crush]) is None


def test_window_is_the_incident_categorys():
    # 400 m is outside a medical call's own 100 m but inside the fire's 500 m.
    fire = incident()
    medical = alarm(category=Category.medical, at=north_of(BUND, 400))
    assert find_incident(medical, [fire]) is fire


@pytest.mark.parametrize("incident_is_exercise", [True, False])
def test_exercise_and_live_never_mix(incident_is_exercise):
    scene = incident(exercise=incident_is_exercise)
    assert find_incident(alarm(exercise=not incident_is_exercise), [scene]) is None
    assert find_incident(alarm(exercise=incident_is_exercise), [scene]) is scene


def test_closed_and_cancelled_incidents_take_no_alarms():
    closed = incident(id="a", stage=Stage.closed)
    cancelled = incident(id="b", stage=Stage.cancelled)
    assert find_incident(alarm(), [closed, cancelled]) is None


def test_nearest_incident_wins():
    far = incident(id="far", at=north_of(BUND, 300))
    near = incident(id="near", at=north_of(BUND, 100))
    assert find_incident(alarm(), [far, near]).id == "near"


def test_equal_distance_goes_to_the_oldest():
    newer = incident(id="newer", when=T0 + timedelta(minutes=10))
    older = incident(id="older", when=T0)
    found = find_incident(alarm(when=T0 + timedelta(minutes=20)), [newer, older])
    assert found.id == "older"


def test_custom_windows_override_the_defaults():
    fire = incident()
    tight = {
        **DEFAULT_WINDOWS,
        Category.fire: DEFAULT_WINDOWS[Category.traffic_accident],
    }
    assert find_incident(alarm(at=north_of(BUND, 300)), [fire], tight) is None


# --- Absorbing alarms -----------------------------------------------------------------


def test_open_incident_takes_the_alarms_facts():
    first = alarm(category=Category.crowd_crush, casualties=4, exercise=True)
    state = open_incident("inc-9", first)
    assert state.id == "inc-9"
    assert (state.category, state.stage) == (Category.crowd_crush, Stage.reported)
    assert (state.lat, state.lon) == BUND
    assert state.first_alarm_at == state.last_alarm_at == T0
    assert (state.alarm_count, state.caller_count, state.casualties) == (1, 1, 4)
    assert state.level == Level.III
    assert state.exercise is True


def test_anonymous_alarm_does_not_count_as_a_caller():
    assert open_incident("inc-1", alarm(caller=None)).caller_count == 0


def test_absorb_updates_counts_times_and_casualties_but_keeps_the_anchor():
    fire = incident()
    later = alarm(
        at=north_of(BUND, 200),
        when=T0 + timedelta(minutes=5),
        caller="c2",
        casualties=2,
    )
    earlier = alarm(when=T0 - timedelta(minutes=3), caller="c1", casualties=1)

    absorb(fire, later, new_caller=True)
    absorb(fire, earlier, new_caller=False)

    assert (fire.alarm_count, fire.caller_count, fire.casualties) == (3, 2, 2)
    assert fire.first_alarm_at == T0 - timedelta(minutes=3)
    assert fire.last_alarm_at == T0 + timedelta(minutes=5)
    assert (fire.lat, fire.lon) == BUND


def test_absorb_raises_the_level_and_says_so():
    fire = incident()
    assert fire.level == Level.IV
    raised = absorb(fire, alarm(casualties=12), new_caller=True)
    assert fire.level == Level.II
    assert raised == LevelChange(Level.IV, Level.II, "12 casualties reported, 2 callers, category fire")


def test_absorb_never_lowers_a_level_an_operator_set():
    fire = incident(level=Level.I)
    assert absorb(fire, alarm(casualties=0), new_caller=True) is None
    assert fire.level == Level.I


def test_absorb_without_a_level_change_emits_nothing():
    fire = incident()
    assert absorb(fire, alarm(casualties=1), new_caller=True) is None


def test_an_explosion_reported_at_a_fire_lifts_it_to_at_least_level_iii():
    fire = incident()
    raised = absorb(fire, alarm(category=Category.explosion), new_caller=True)
    assert fire.level == Level.III
    assert raised is not None and raised.to_level == Level.III


def test_many_callers_raise_the_level():
    crush = incident(category=Category.crowd_crush, caller_count=99)
    absorb(crush, alarm(category=Category.crowd_crush, caller="c100"), new_caller=True)
    assert crush.level == Level.II


def test_absorb_refuses_to_mix_exercise_and_live():
    drill = incident(exercise=True)
    with pytest.raises(ValueError, match="exercise"):
        absorb(drill, alarm(exercise=False), new_caller=True)


def test_alarm_times_must_carry_an_offset():
    with pytest.raises(ValueError, match="offset"):
        alarm(when=datetime(2024, 12, 31, 23, 30))


# --- Level ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "casualties", "callers", "expected"),
    [
        (Category.fire, 0, 1, Level.IV),
        (Category.fire, 2, 1, Level.IV),
        (Category.fire, 3, 1, Level.III),
        (Category.fire, 9, 1, Level.III),
        (Category.fire, 10, 1, Level.II),
        (Category.fire, 29, 1, Level.II),
        (Category.fire, 30, 1, Level.I),
        (Category.explosion, 0, 1, Level.III),
        (Category.building_collapse, 0, 1, Level.III),
        (Category.crowd_crush, 0, 1, Level.III),
        (Category.hazmat, 0, 1, Level.III),
        (Category.crowd_crush, 35, 1, Level.I),
        (Category.medical, 0, 19, Level.IV),
        (Category.medical, 0, 20, Level.III),
        (Category.medical, 0, 99, Level.III),
        (Category.medical, 0, 100, Level.II),
        (Category.fire, 30, 100, Level.I),
    ],
)
def test_estimate_level(category, casualties, callers, expected):
    assert estimate_level(category, casualties, callers) == expected


def test_lower_level_number_is_more_severe_and_has_the_national_colour():
    assert Level.I < Level.IV
    assert [lvl.colour for lvl in Level] == ["red", "orange", "yellow", "blue"]


def test_negative_casualties_are_refused():
    with pytest.raises(ValueError):
        estimate_level(Category.fire, -1, 0)


# --- Perimeter ------------------------------------------------------------------------

PEOPLES_SQUARE_BLOCK = [
    (31.228, 121.470),
    (31.228, 121.478),
    (31.234, 121.478),
    (31.234, 121.470),
]


def test_circle_contains_points_within_its_radius():
    cordon = Perimeter.circle(*BUND, 300)
    assert cordon.contains(*north_of(BUND, 290))
    assert not cordon.contains(*north_of(BUND, 310))


def test_polygon_contains_points_inside_its_ring():
    block = Perimeter.polygon(PEOPLES_SQUARE_BLOCK)
    assert block.contains(31.231, 121.474)
    assert not block.contains(31.240, 121.474)


@pytest.mark.parametrize(
    "perimeter",
    [Perimeter.circle(*BUND, 300), Perimeter.polygon(PEOPLES_SQUARE_BLOCK)],
    ids=["circle", "polygon"],
)
def test_perimeter_survives_a_dict_round_trip(perimeter):
    assert Perimeter.from_dict(perimeter.to_dict()) == perimeter


def test_closed_ring_is_stored_open():
    closed = Perimeter.polygon(PEOPLES_SQUARE_BLOCK + PEOPLES_SQUARE_BLOCK[:1])
    assert closed == Perimeter.polygon(PEOPLES_SQUARE_BLOCK)


@pytest.mark.parametrize(
    ("radius", "message"),
    [
        (0, "radius_m must be > 0"),
        (-5, "radius_m must be > 0"),
        (50_001, "radius_m must be > 0 and <= 50000"),
        (math.nan, "radius_m must be finite"),
        (math.inf, "radius_m must be finite"),
        ("300", "radius_m must be a number"),
    ],
)
def test_bad_radius_is_refused(radius, message):
    with pytest.raises(ValueError, match=message):
        Perimeter.circle(*BUND, radius)


def test_largest_allowed_radius_is_50_km():
    assert Perimeter.circle(*BUND, 50_000).radius_m == 50_000


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        (91.0, 121.0, r"lat must be in \[-90, 90\]"),
        (31.0, -181.0, r"lon must be in \[-180, 180\]"),
        (math.nan, 121.0, "lat must be finite"),
        (31.0, math.inf, "lon must be finite"),
    ],
)
def test_bad_centre_is_refused(lat, lon, message):
    with pytest.raises(ValueError, match=message):
        Perimeter.circle(lat, lon, 300)


@pytest.mark.parametrize(
    ("points", "message"),
    [
        ([(31.0, 121.0), (31.1, 121.0)], "3 to 500 distinct points, got 2"),
        (
            [(31.0, 121.0), (31.1, 121.0), (31.0, 121.0)],
            "3 to 500 distinct points, got 2",
        ),
        ([(31.0 + i * 1e-4, 121.0 + (i % 2) * 1e-4) for i in range(501)], "got 501"),
        ([(31.0, 121.0), (31.1, 121.0), (31.2, 121.0)], "no area"),
        (
            [(31.0, 121.0), (31.1, 121.0), (95.0, 121.1)],
            r"point 2 lat must be in \[-90, 90\]",
        ),
        (
            [(31.0, 121.0), (31.1, 190.0), (31.1, 121.1)],
            r"point 1 lon must be in \[-180, 180\]",
        ),
        (
            [(31.0, 121.0), (math.nan, 121.0), (31.1, 121.1)],
            "point 1 lat must be finite",
        ),
        ([(31.0, 121.0), (31.1,), (31.1, 121.1)], "point 1 must be a"),
        (None, "list of"),
    ],
)
def test_bad_polygon_is_refused(points, message):
    with pytest.raises(ValueError, match=message):
        Perimeter.polygon(points)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kind": "square"}, "kind must be 'circle' or 'polygon'"),
        ({"kind": "circle", "lat": 31.0, "lon": 121.0}, "missing 'radius_m'"),
        ({"kind": "polygon"}, "missing 'points'"),
    ],
)
def test_bad_perimeter_dict_is_refused(data, message):
    with pytest.raises(ValueError, match=message):
        Perimeter.from_dict(data)


# --- edges --------------------------------------------------------------------------------------


def test_a_threshold_of_one_caller_is_allowed_and_below_one_is_refused_saying_so():
    assert auto_verified(1, False, threshold=1) is True
    assert auto_verified(0, False, threshold=1) is False
    with pytest.raises(ValueError, match="^auto-verification threshold must be at least 1$"):
        auto_verified(5, False, threshold=0)


@pytest.mark.parametrize(
    ("incident_category", "alarm_category", "joined"),
    [
        (Category.medical, Category.crowd_crush, Category.crowd_crush),  # the casualties are the scene's
        (Category.fire, Category.explosion, Category.fire),  # a scene keeps its own category
        (Category.fire, Category.medical, Category.fire),
        (Category.medical, Category.medical, Category.medical),
    ],
)
def test_only_a_medical_only_incident_takes_the_category_of_a_scene(incident_category, alarm_category, joined):
    assert joined_category(incident_category, alarm_category) is joined


def test_a_raise_after_an_operators_lowering_says_what_is_new_since():
    inc = open_incident("inc-1", alarm(casualties=3))  # level III
    decided = inc.change_level(Level.IV, "alice", "only smoke")
    inc.level, inc.facts = Level.IV, decided.values["facts"]
    change = absorb(inc, alarm(caller="c2", casualties=12), new_caller=True)
    assert change == LevelChange(
        Level.IV,
        Level.II,
        "12 casualties reported, 2 callers, category fire; new since alice set level IV: "
        "casualties 3 -> 12, callers 1 -> 2",
    )


def test_a_negative_count_is_refused_saying_so():
    with pytest.raises(ValueError, match="^casualties and callers cannot be negative$"):
        estimate_level(Category.fire, 0, -1)


def test_no_step_leads_back_to_reported_and_the_refusal_names_the_stage_field():
    with pytest.raises(errors.InvalidInput) as refused:
        trigger_for(Stage.reported)
    assert refused.value.detail == "no transition leads to stage reported"
    assert refused.value.extra == {"field": "stage"}
