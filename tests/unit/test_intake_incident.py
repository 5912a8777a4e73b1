"""The Incident aggregate without a database: what it knows (guard facts, next steps) and what each
operator command decides in every stage: the change to save, or the refusal an operator sees."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ecs import errors
from ecs.contracts import (
    FactRecorded,
    IncidentCreated,
    IncidentMerged,
    IncidentSplit,
    IncidentVerified,
    LevelChanged,
    PerimeterSet,
    StageChanged,
)
from incident_intake.domain import (
    OPEN_STAGES,
    TERMINAL_STAGES,
    TRANSITIONS,
    AlarmFacts,
    Category,
    Counts,
    Incident,
    Level,
    Participant,
    Perimeter,
    Stage,
    absorb,
    refuse_self_merge,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
BUND = (31.2400, 121.4900)
CORDON = Perimeter.circle(*BUND, 300)
EVERYONE = list(Participant)
EVERY_FACT_MET = {
    "perimeter_units_on_scene": True,
    "hazard_under_control": True,
    "statement_published": True,
    "after_action_report": True,
    "settled": {p.value: True for p in Participant},
}


def incident(stage: Stage = Stage.reported, **changes: object) -> Incident:
    base = Incident(
        id="inc-1",
        category=Category.fire,
        lat=BUND[0],
        lon=BUND[1],
        first_alarm_at=T0,
        last_alarm_at=T0,
        alarm_count=2,
        caller_count=2,
        casualties=1,
        level=Level.IV,
        exercise=False,
        stage=stage,
        version=5,
    )
    return replace(base, **changes)


def ready(stage: Stage) -> Incident:
    """An incident whose every guard is met."""
    return incident(stage, verified=True, perimeter=CORDON, facts=dict(EVERY_FACT_MET))


# --- what the incident knows ------------------------------------------------------------------


def test_guard_facts_come_from_the_stored_facts():
    inc = incident(
        verified=True,
        perimeter=CORDON,
        facts={
            "perimeter_units_on_scene": True,
            "hazard_under_control": False,
            "after_action_report": True,
            "after_action_report_note": "filed",
            "settled": {"dispatch": True, "public-notification": False, "retired-service": True},
        },
    )
    facts = inc.guard_facts()
    assert facts.verified and facts.perimeter == CORDON
    assert (facts.perimeter_units_on_scene, facts.hazard_under_control, facts.statement_published) == (
        True,
        False,
        False,
    )
    assert facts.after_action_report
    # Either spelling of a participant counts; one this version does not know guards nothing.
    assert facts.settled == {Participant.dispatch: True, Participant.notification: False}


def test_an_incident_with_no_facts_has_nothing_met():
    facts = incident().guard_facts()
    assert not (facts.verified or facts.perimeter or facts.perimeter_units_on_scene or facts.settled)


@pytest.mark.parametrize("stage", sorted(Stage))
def test_next_steps_are_the_lifecycles_steps_from_the_stage(stage):
    steps = ready(stage).next_steps(EVERYONE)
    assert [s.stage for s in steps] == [target for (source, _), target in TRANSITIONS.items() if source == stage]
    assert all(s.allowed and s.missing == [] for s in steps)
    assert (steps == []) is (stage in TERMINAL_STAGES)


def test_next_steps_name_what_is_missing():
    steps = {s.stage: s for s in incident().next_steps([Participant.dispatch])}
    assert steps[Stage.isolation].missing == ["incident not verified by a dispatcher", "no perimeter set"]
    assert steps[Stage.cancelled].allowed
    (handle,) = incident(Stage.isolation).next_steps([Participant.dispatch])[:1]
    assert handle.missing == ["perimeter units not on scene (dispatch)"]
    (handle,) = incident(Stage.isolation).next_steps([])[:1]
    assert handle.allowed  # nobody will report units on scene: waiting would deadlock


def test_expect_refuses_a_merged_away_or_changed_incident():
    inc = incident()
    inc.expect(5)
    inc.expect(None)
    with pytest.raises(errors.StaleVersion) as stale:
        inc.expect(4)
    assert stale.value.extra["current_version"] == 5 and stale.value.status == 409
    with pytest.raises(errors.Conflict, match="merged into inc-9") as merged:
        incident(merged_into="inc-9").expect(None)
    assert merged.value.extra["merged_into"] == "inc-9"


# --- commands in every stage --------------------------------------------------------------------

OPEN = sorted(OPEN_STAGES)
FINISHED = sorted(TERMINAL_STAGES)


@pytest.mark.parametrize("stage", OPEN)
def test_verify_in_an_open_stage(stage):
    change = incident(stage, exercise=True).verify("dispatcher-7")
    assert (change.incident_id, change.values, change.versioned) == ("inc-1", {"verified": True}, True)
    assert (change.entry.actor, change.entry.kind, change.entry.detail) == (
        "dispatcher-7",
        "verified",
        {"automatic": False},
    )
    assert change.event is not None and change.event.exercise is True
    assert change.event.data == IncidentVerified(incident_id="inc-1", actor="dispatcher-7", automatic=False, version=6)


@pytest.mark.parametrize("stage", FINISHED)
def test_a_finished_incident_refuses_every_change_an_operator_makes(stage):
    inc = incident(stage)
    for attempt in (
        lambda: inc.verify("a"),
        lambda: inc.set_perimeter(CORDON, "a"),
        lambda: inc.change_level(Level.II, "a", "why"),
        lambda: inc.record_fact("hazard_under_control", "a"),
        lambda: inc.plan_split([("gw", "1"), ("gw", "2")], [("gw", "1")]),
    ):
        with pytest.raises(errors.Conflict, match=f"is {stage}") as refused:
            attempt()
        assert refused.value.extra["stage"] == str(stage)


def test_verify_twice_is_refused():
    with pytest.raises(errors.Conflict, match="already verified"):
        incident(verified=True).verify("a")


@pytest.mark.parametrize("stage", OPEN)
def test_set_perimeter_in_an_open_stage(stage):
    polygon = Perimeter.polygon([(31.0, 121.0), (31.0, 121.01), (31.01, 121.01), (31.0, 121.0)])
    change = incident(stage).set_perimeter(polygon, "alice")
    shape = {"kind": "polygon", "points": [[31.0, 121.0], [31.0, 121.01], [31.01, 121.01]]}
    assert change.values == {"perimeter": shape} and change.entry.detail == {"perimeter": shape}
    assert change.event.data == PerimeterSet(incident_id="inc-1", perimeter=shape, actor="alice", version=6)


@pytest.mark.parametrize(("stage", "level"), list(itertools.product(OPEN, [Level.I, Level.III])))
def test_change_level_in_an_open_stage(stage, level):
    change = incident(stage, level=Level.II).change_level(level, "cmdr", "school nearby")
    assert change.values["level"] == int(level)
    decided = change.values["facts"]["operator_level"]  # what was known when the operator decided
    assert (decided["level"], decided["actor"], decided["estimate"]) == (int(level), "cmdr", 2)
    assert change.entry.detail == {"from": 2, "to": int(level), "reason": "school nearby"}
    assert change.event.data == LevelChanged(
        incident_id="inc-1", from_level=Level.II, to_level=level, reason="school nearby", actor="cmdr", version=6
    )


def test_the_same_level_again_is_refused():
    with pytest.raises(errors.Conflict, match="already level II"):
        incident(level=Level.II).change_level(Level.II, "cmdr", "no change")


@pytest.mark.parametrize("stage", OPEN)
def test_record_fact_keeps_the_other_facts_and_the_note(stage):
    inc = incident(stage, facts={"perimeter_units_on_scene": True})
    change = inc.record_fact("after_action_report", "cmdr", "filed at 18:00")
    assert change.values == {
        "facts": {
            "perimeter_units_on_scene": True,
            "after_action_report": True,
            "after_action_report_note": "filed at 18:00",
        }
    }
    assert inc.facts == {"perimeter_units_on_scene": True}  # the decision does not change the incident
    assert (change.entry.kind, change.entry.detail) == ("fact.after_action_report", {"note": "filed at 18:00"})
    assert change.event.data == FactRecorded(incident_id="inc-1", fact="after_action_report", actor="cmdr", version=6)
    assert "hazard_under_control_note" not in incident(stage).record_fact("hazard_under_control", "c").values["facts"]


# --- the lifecycle through the Incident --------------------------------------------------------


@pytest.mark.parametrize(("stage", "target"), list(itertools.product(sorted(Stage), sorted(Stage))))
def test_change_stage_for_every_pair(stage, target):
    inc = ready(stage)
    steps = {t for (source, _), t in TRANSITIONS.items() if source == stage}
    if target == Stage.reported:
        with pytest.raises(errors.InvalidInput, match="no transition leads to stage reported"):
            inc.change_stage(target, "cmdr", None, EVERYONE)
    elif target not in steps:
        with pytest.raises(errors.IllegalTransition) as refused:
            inc.change_stage(target, "cmdr", None, EVERYONE)
        assert refused.value.status == 409 and "allowed" in refused.value.extra
    else:
        change = inc.change_stage(target, "cmdr", "on plan", EVERYONE)
        assert change.values == {"stage": target.value}
        assert change.entry.detail == {"from": str(stage), "to": str(target), "reason": "on plan"}
        event = change.event.data
        assert isinstance(event, StageChanged)
        assert (event.from_stage, event.to_stage, event.version, event.reason) == (stage, target, 6, "on plan")
        assert (event.category, event.level, event.perimeter) == (Category.fire, Level.IV, CORDON.to_dict())


def test_a_blocked_step_names_what_is_missing():
    with pytest.raises(errors.IllegalTransition) as refused:
        incident(Stage.aftermath, facts={"settled": {"dispatch": False}}).change_stage(
            Stage.closed, "cmdr", None, [Participant.dispatch, Participant.shelter]
        )
    assert refused.value.extra["missing"] == [
        "participant 'dispatch' not settled",
        "participant 'shelter-registry' has not reported",
        "after-action report missing",
    ]
    assert refused.value.extra["stage"] == "aftermath"
    assert "cannot move incident inc-1 from aftermath to closed" in refused.value.detail


def test_a_statement_is_needed_only_when_notification_takes_part():
    inc = incident(Stage.opinion_control)
    with pytest.raises(errors.IllegalTransition, match="no official statement"):
        inc.change_stage(Stage.aftermath, "cmdr", None, [Participant.notification])
    assert inc.change_stage(Stage.aftermath, "cmdr", None, [Participant.dispatch]).values == {"stage": "aftermath"}


# --- facts from other services ------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(Stage))
def test_a_fact_from_another_service_applies_in_any_stage_without_a_new_version(stage):
    inc = incident(stage, facts={"settled": {"dispatch": True}})
    change = inc.apply_fact("settled", False, "public-notification", "msg-1", Participant.notification)
    assert change.values == {"facts": {"settled": {"dispatch": True, "notification": False}}}
    assert change.versioned is False and change.event is None
    assert (change.entry.actor, change.entry.kind) == ("public-notification", "fact.settled")
    assert change.entry.detail == {
        "fact": "settled",
        "value": False,
        "participant": "notification",
        "message_id": "msg-1",
    }
    on_scene = inc.apply_fact("perimeter_units_on_scene", True, "dispatch", "msg-2")
    assert on_scene.values["facts"]["perimeter_units_on_scene"] is True
    assert on_scene.entry.detail["participant"] is None


# --- merge --------------------------------------------------------------------------------------

COUNTS = Counts(alarm_count=3, first_alarm_at=T0, last_alarm_at=T0 + timedelta(minutes=9), casualties=4, caller_count=2)


def test_merge_takes_the_worse_level_and_either_verification():
    target = incident(level=Level.III, verified=False)
    source = incident(id="inc-2", level=Level.II, verified=True, version=2)
    gone, merged = target.merge(source, "alice", moved=1, counts=COUNTS)
    assert gone.incident_id == "inc-2" and gone.event is None and gone.versioned
    assert gone.values == {"merged_into": "inc-1", "alarm_count": 0, "caller_count": 0}
    assert (gone.entry.kind, gone.entry.detail) == ("merged.into", {"incident_id": "inc-1", "alarms_moved": 1})
    assert merged.values == {
        **COUNTS.values(),
        "level": 2,
        "verified": True,
        "stage": "reported",
        "perimeter": None,
        "facts": {},
    }
    kept = {"stage": "inc-1", "perimeter": None, "level": "inc-2", "verified": "inc-2"}
    assert (merged.entry.kind, merged.entry.detail) == (
        "merged",
        {"merged_incident_id": "inc-2", "alarms_moved": 1, "kept_from": kept},
    )
    assert merged.event.data == IncidentMerged(
        incident_id="inc-1", merged_incident_id="inc-2", alarms_moved=1, actor="alice"
    )


@pytest.mark.parametrize(
    ("source", "error", "words"),
    [
        (incident(), errors.InvalidInput, "into itself"),
        (incident(id="inc-2", exercise=True), errors.Conflict, "exercise incident and a live incident"),
        (incident(id="inc-2", merged_into="inc-3"), errors.Conflict, "already merged into inc-3"),
        (incident(Stage.closed, id="inc-2"), errors.Conflict, "incident inc-2 is closed"),
    ],
    ids=["itself", "drill-and-live", "already-merged", "finished-source"],
)
def test_merge_refuses_what_makes_no_sense(source, error, words):
    with pytest.raises(error, match=words):
        incident().check_merge(source)
    with pytest.raises(error, match=words):
        incident().merge(source, "alice", 1, COUNTS)


@pytest.mark.parametrize("stage", FINISHED)
def test_a_finished_incident_takes_no_merge(stage):
    with pytest.raises(errors.Conflict, match="cannot merge"):
        incident(stage).check_merge(incident(id="inc-2"))


def test_self_merge_is_refused_by_id_before_anything_is_read():
    with pytest.raises(errors.InvalidInput) as refused:
        refuse_self_merge("inc-1", "inc-1")
    assert refused.value.extra["field"] == "source_incident_id"
    refuse_self_merge("inc-1", "inc-2")


# --- split --------------------------------------------------------------------------------------

ALARMS = [("gw", "a-1"), ("gw", "a-2"), ("gw-b", "a-1")]


def test_plan_split_keeps_the_incidents_order():
    assert incident().plan_split(ALARMS, {("gw-b", "a-1"), ("gw", "a-1")}) == [("gw", "a-1"), ("gw-b", "a-1")]


@pytest.mark.parametrize(
    ("wanted", "error", "words"),
    [
        (set(), errors.InvalidInput, "at least one alarm"),
        ({("gw", "a-9"), ("gw", "a-1")}, errors.InvalidInput, "alarm gw:a-9 does not belong to incident inc-1"),
        (set(ALARMS), errors.Conflict, "leave the incident empty"),
    ],
    ids=["none", "unknown", "every-alarm"],
)
def test_plan_split_refuses_what_makes_no_sense(wanted, error, words):
    with pytest.raises(error, match=words):
        incident().plan_split(ALARMS, wanted)


def test_split_opens_a_new_incident_for_the_alarms_that_left():
    inc = incident(Stage.isolation, level=Level.II, exercise=True, verified=True)
    first = AlarmFacts(Category.crowd_crush, 31.3, 121.5, T0 + timedelta(minutes=3), exercise=True)
    new_counts = Counts(2, T0 + timedelta(minutes=3), T0 + timedelta(minutes=4), casualties=0, caller_count=1)
    split = inc.split("inc-2", first, [("gw", "a-2"), ("gw-b", "a-1")], new_counts, COUNTS, "alice")
    new = split.new
    assert (new.id, new.split_from, new.stage, new.verified, new.version) == (
        "inc-2",
        "inc-1",
        Stage.reported,
        False,
        1,
    )
    assert (new.category, new.lat, new.lon, new.exercise) == (Category.crowd_crush, 31.3, 121.5, True)
    assert (new.alarm_count, new.caller_count, new.casualties, new.last_alarm_at) == (2, 1, 0, new_counts.last_alarm_at)
    assert new.level == Level.III  # a crowd crush is at least level III, whatever the old incident was
    assert (split.entry.incident_id, split.entry.kind, split.entry.detail) == (
        "inc-2",
        "split.from",
        {"incident_id": "inc-1", "alarms": 2, "state_of": None},
    )
    assert split.created.exercise is True
    assert split.created.data == IncidentCreated(
        incident_id="inc-2",
        category=Category.crowd_crush,
        level=Level.III,
        lat=31.3,
        lon=121.5,
        first_alarm_at=new_counts.first_alarm_at,
        alarm_id="a-2",
        gateway_id="gw",
        exercise=True,
    )
    left = split.left
    assert left.incident_id == "inc-1" and left.values == COUNTS.values() and left.versioned
    assert left.entry.detail == {"new_incident_id": "inc-2", "alarms": ["gw:a-2", "gw-b:a-1"]}
    assert left.event.data == IncidentSplit(
        incident_id="inc-1", new_incident_id="inc-2", alarm_ids=["gw:a-2", "gw-b:a-1"], actor="alice"
    )


# --- what each decision records, in full ---------------------------------------------------------


def test_a_stale_version_says_which_version_the_incident_is_at():
    with pytest.raises(errors.StaleVersion) as stale:
        incident().expect_version(4)
    assert stale.value.detail == "incident inc-1 is at version 5, not 4: reload and decide again"


@pytest.mark.parametrize("stage", FINISHED)
def test_a_finished_incident_says_what_it_refused(stage):
    with pytest.raises(errors.Conflict) as refused:
        incident(stage).record_fact("hazard_under_control", "a")
    assert refused.value.detail == f"cannot record hazard_under_control: incident inc-1 is {stage}"
    with pytest.raises(errors.Conflict) as refused:
        incident(stage).plan_split(ALARMS, {("gw", "a-1")})
    assert refused.value.detail == f"cannot split: incident inc-1 is {stage}"


def test_a_settled_report_is_kept_as_reported_on_the_incidents_own_timeline():
    change = incident(Stage.aftermath).apply_fact("settled", True, "dispatch", "msg-3", Participant.dispatch)
    assert change.values == {"facts": {"settled": {"dispatch": True}}}
    assert change.incident_id == "inc-1" and change.entry.incident_id == "inc-1"


def test_a_carried_stage_is_announced_with_the_incidents_place_perimeter_and_reason():
    inc = incident(Stage.handling, perimeter=CORDON, exercise=True, version=7, level=Level.II)
    carried = inc.carried_stage(Stage.isolation, "alice", "merged with inc-2")
    assert carried.exercise is True
    assert carried.data == StageChanged(
        incident_id="inc-1",
        from_stage=Stage.isolation,
        to_stage=Stage.handling,
        actor="alice",
        version=7,
        category=Category.fire,
        level=Level.II,
        lat=BUND[0],
        lon=BUND[1],
        perimeter=CORDON.to_dict(),
        reason="merged with inc-2",
    )
    without = incident(Stage.handling).carried_stage(Stage.reported, "alice", "split")
    assert without.exercise is False and without.data.perimeter is None
    assert incident(Stage.handling).carried_stage(Stage.handling, "alice", "split") is None


@pytest.mark.parametrize(
    ("wanted", "error", "detail"),
    [
        (set(), errors.InvalidInput, "name at least one alarm to split out"),
        ({("gw", "a-9")}, errors.InvalidInput, "alarm gw:a-9 does not belong to incident inc-1"),
        (
            set(ALARMS),
            errors.Conflict,
            "splitting out every alarm would leave the incident empty: cancel or merge instead",
        ),
    ],
    ids=["none", "unknown", "every-alarm"],
)
def test_a_split_refusal_names_the_alarms_field_and_why(wanted, error, detail):
    with pytest.raises(error) as refused:
        incident().plan_split(ALARMS, wanted)
    assert refused.value.detail == detail
    if error is errors.InvalidInput:
        assert refused.value.extra == {"field": "alarms"}


def test_a_split_level_is_estimated_from_the_alarms_that_left_and_the_timeline_names_who_split():
    inc = incident(level=Level.III)
    first = AlarmFacts(Category.fire, 31.3, 121.5, T0 + timedelta(minutes=3))  # no casualties of its own
    new_counts = Counts(2, first.received_at, first.received_at, casualties=12, caller_count=0)
    split = inc.split("inc-2", first, [("gw", "a-2")], new_counts, COUNTS, "alice")
    assert split.new.level == Level.II  # 12 casualties among the alarms that left
    assert split.entry.actor == "alice"
    assert (split.left.entry.actor, split.left.entry.kind) == ("alice", "split")
    assert split.left.event.data.state_of is None


def test_a_split_giving_back_a_merged_incident_restores_its_state():
    inc = incident(Stage.handling, level=Level.II, verified=True, perimeter=CORDON)
    origin = incident(
        Stage.isolation,
        id="inc-0",
        category=Category.gas_leak,
        lat=31.25,
        lon=121.45,
        verified=True,
        perimeter=Perimeter.circle(31.25, 121.45, 200),
        facts={"hazard_under_control": True},
        level=Level.I,
    )
    first = AlarmFacts(Category.fire, 31.3, 121.5, T0 + timedelta(minutes=3))
    split = inc.split("inc-2", first, [("gw", "a-2")], COUNTS, COUNTS, "alice", origin)
    new = split.new
    assert (new.category, new.lat, new.lon, new.stage, new.verified, new.level) == (
        Category.gas_leak,
        31.25,
        121.45,
        Stage.isolation,
        True,
        Level.I,  # the origin's, not the estimate from the alarms (level III)
    )
    assert new.perimeter == origin.perimeter and new.facts == {"hazard_under_control": True}
    assert new.split_from == "inc-1"
    assert split.entry.detail == {"incident_id": "inc-1", "alarms": 1, "state_of": "inc-0"}
    assert split.left.event.data == IncidentSplit(
        incident_id="inc-1", new_incident_id="inc-2", alarm_ids=["gw:a-2"], actor="alice", state_of="inc-0"
    )


def test_a_point_exactly_on_the_circle_is_inside_the_cordon():
    from ecs.geo import haversine_m

    edge = (BUND[0] + 0.002, BUND[1] + 0.001)
    cordon = Perimeter.circle(*BUND, haversine_m(*BUND, *edge))
    assert cordon.contains(*edge)


@pytest.mark.parametrize("stage", FINISHED)
def test_each_refusal_of_a_finished_incident_names_the_command(stage):
    for attempt, words in (
        (lambda: incident(stage).verify("a"), "verify"),
        (lambda: incident(stage).set_perimeter(CORDON, "a"), "set a perimeter"),
        (lambda: incident().check_merge(incident(stage, id="inc-2")), "merge"),
    ):
        with pytest.raises(errors.Conflict) as refused:
            attempt()
        assert refused.value.detail.startswith(f"cannot {words}: incident inc-")


def test_a_participant_this_version_does_not_know_is_skipped_and_the_rest_still_read():
    inc = incident(facts={"settled": {"ambulance-service": True, "dispatch": True, "shelter": False}})
    assert inc.guard_facts().settled == {Participant.dispatch: True, Participant.shelter: False}


def test_the_perimeter_and_fact_entries_name_who_decided():
    change = incident().set_perimeter(CORDON, "cmdr-zhou")
    assert (change.entry.actor, change.entry.kind) == ("cmdr-zhou", "perimeter.set")
    assert incident().record_fact("after_action_report", "cmdr-zhou").entry.actor == "cmdr-zhou"


def test_a_drill_and_a_live_incident_refusal_and_a_self_merge_refusal_say_so():
    with pytest.raises(errors.Conflict) as refused:
        incident().check_merge(incident(id="inc-2", exercise=True))
    assert refused.value.detail == "an exercise incident and a live incident cannot be merged"
    with pytest.raises(errors.InvalidInput) as refused:
        refuse_self_merge("inc-1", "inc-1")
    assert refused.value.detail == "an incident cannot be merged into itself"


def test_a_merge_says_which_incident_each_kept_state_came_from_and_who_merged():
    target = incident(level=Level.II, verified=True, perimeter=CORDON)
    source = incident(id="inc-2", level=Level.II, verified=True, perimeter=Perimeter.circle(*BUND, 900))
    gone, merged = target.merge(source, "alice", moved=1, counts=COUNTS)
    assert (gone.incident_id, gone.entry.incident_id, gone.entry.actor) == ("inc-2", "inc-2", "alice")
    assert merged.entry.actor == "alice"
    assert merged.entry.detail["kept_from"] == {
        "stage": "inc-1",
        "perimeter": "inc-1",
        "level": "inc-1",  # equal levels: the incident merged into keeps its own
        "verified": "inc-1",
    }
    _, neither = incident().merge(incident(id="inc-2"), "alice", moved=1, counts=COUNTS)
    assert neither.entry.detail["kept_from"]["verified"] is None


def test_a_finished_incident_or_a_drill_alarm_at_a_live_one_says_why_it_takes_no_alarm():
    with pytest.raises(ValueError, match="^incident inc-1 is closed; it takes no more alarms$"):
        absorb(incident(Stage.closed), AlarmFacts(Category.fire, *BUND, T0), new_caller=True)
    with pytest.raises(ValueError, match="^exercise and live alarms never share an incident$"):
        absorb(incident(), AlarmFacts(Category.fire, *BUND, T0, exercise=True), new_caller=True)


def test_the_incidents_own_category_floor_counts_when_an_alarm_without_one_joins():
    inc = incident(category=Category.crowd_crush, level=Level.IV, casualties=0)
    change = absorb(inc, AlarmFacts(Category.medical, *BUND, T0), new_caller=False)
    assert change is not None and (change.from_level, change.to_level) == (Level.IV, Level.III)


@pytest.mark.parametrize("stage", FINISHED)
def test_a_level_change_refused_in_a_finished_incident_says_so(stage):
    with pytest.raises(errors.Conflict) as refused:
        incident(stage).change_level(Level.II, "a", "why")
    assert refused.value.detail == f"cannot change the level: incident inc-1 is {stage}"


def test_an_alarm_time_without_an_offset_is_refused_saying_so():
    with pytest.raises(ValueError, match="^received_at must carry a timezone offset$"):
        AlarmFacts(Category.fire, *BUND, T0.replace(tzinfo=None))


def test_a_level_change_records_who_on_the_incidents_timeline_and_the_categorys_floor_as_known():
    inc = incident(category=Category.crowd_crush, level=Level.IV, casualties=0, caller_count=0)
    change = inc.change_level(Level.II, "cmdr-zhou", "crowd growing")
    assert (change.entry.incident_id, change.entry.actor, change.entry.kind) == ("inc-1", "cmdr-zhou", "level.changed")
    assert change.values["facts"]["operator_level"]["estimate"] == int(Level.III)  # a crowd crush is at least III


def test_a_circle_needs_a_centre_and_a_radius_and_stores_the_centre_as_numbers():
    with pytest.raises(ValueError, match="^circle perimeter needs a center and a radius_m$"):
        Perimeter("circle", center=BUND)
    with pytest.raises(ValueError, match="^circle perimeter needs a center and a radius_m$"):
        Perimeter("circle", radius_m=300)
    cordon = Perimeter("circle", center=[31, 121], radius_m=300)
    assert cordon.center == (31.0, 121.0) and isinstance(cordon.center, tuple)
    with pytest.raises(ValueError, match=r"^center lat must be in \[-90, 90\], got 91$"):
        Perimeter.circle(91, 121, 300)


def test_polygon_points_that_are_not_a_list_are_refused_saying_what_is_wanted():
    with pytest.raises(ValueError, match=r"^polygon points must be a list of \[lat, lon\] pairs$"):
        Perimeter.polygon(None)


def test_a_radius_below_a_metre_is_allowed_and_stored_as_a_float():
    assert Perimeter.circle(*BUND, 0.5).radius_m == 0.5
    assert type(Perimeter.circle(*BUND, 300).radius_m) is float


@pytest.mark.parametrize(("lat", "lon"), [(-90, -180), (90, 180), (-90, 180), (90, -180)])
def test_a_centre_on_the_edges_of_wgs84_is_allowed(lat, lon):
    assert Perimeter.circle(lat, lon, 300).center == (lat, lon)


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        (-90.5, 0, r"^center lat must be in \[-90, 90\], got -90.5$"),
        (0, 180.5, r"^center lon must be in \[-180, 180\], got 180.5$"),
        (0, -180.5, r"^center lon must be in \[-180, 180\], got -180.5$"),
    ],
)
def test_a_centre_just_outside_wgs84_is_refused(lat, lon, message):
    with pytest.raises(ValueError, match=message):
        Perimeter.circle(lat, lon, 300)


@pytest.mark.parametrize(
    ("points", "count"),
    [([(31.0, 121.0)], 1), ([(31.0, 121.0), (31.0, 121.0)], 1)],
)
def test_a_ring_of_one_point_closed_or_not_counts_one_point(points, count):
    with pytest.raises(ValueError, match=f"3 to 500 distinct points, got {count}$"):
        Perimeter.polygon(points)


def test_a_ring_of_500_points_is_the_largest_allowed():
    ring = [
        (31.0 + 0.01 * math.cos(2 * math.pi * i / 500), 121.0 + 0.01 * math.sin(2 * math.pi * i / 500))
        for i in range(500)
    ]
    assert len(Perimeter.polygon(ring).ring) == 500


def test_a_bow_tie_perimeter_is_refused_as_crossing_itself_not_as_flat():
    """A bow-tie's shoelace area is zero, so it was refused as "points on one line", which they
    are not: the refusal says what is wrong and which edges meet."""
    bow_tie = [(31.0, 121.0), (31.1, 121.1), (31.0, 121.1), (31.1, 121.0)]
    with pytest.raises(ValueError) as caught:
        Perimeter.polygon(bow_tie)
    assert str(caught.value) == (
        "polygon crosses itself: its edge from point 0 and its edge from point 2 meet; "
        "give the points in order around the area"
    )
    assert Perimeter.polygon([bow_tie[0], bow_tie[2], bow_tie[1], bow_tie[3]]).contains(31.05, 121.05)


def test_a_flat_ring_or_an_unknown_kind_is_refused_saying_so():
    with pytest.raises(ValueError, match=r"^polygon has no area: its points are on one line$"):
        Perimeter.polygon([(31.0, 121.0), (31.1, 121.0), (31.2, 121.0)])
    with pytest.raises(ValueError, match="^perimeter kind must be 'circle' or 'polygon', got 'square'$"):
        Perimeter("square")  # type: ignore[arg-type]


def test_a_blocked_step_lists_everything_missing_in_one_sentence():
    with pytest.raises(errors.IllegalTransition) as refused:
        incident().change_stage(Stage.isolation, "alice", None, EVERYONE)
    assert refused.value.detail == (
        "cannot move incident inc-1 from reported to isolation: incident not verified by a dispatcher; no perimeter set"
    )


def test_a_stage_change_records_who_moved_it():
    change = ready(Stage.reported).change_stage(Stage.isolation, "alice", "cordon up", EVERYONE)
    assert (change.entry.actor, change.entry.kind) == ("alice", "stage.changed")
    assert change.entry.detail == {"from": "reported", "to": "isolation", "reason": "cordon up"}
