"""The rules that move units, tested without a database or a broker: which units each stage
holds, reconciliation on a stage or level change, when the perimeter is secured, when dispatch is
settled, who may serve whom, status reports, lending, an operator's choice."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from dispatch.domain import (
    AssignmentSource,
    Held,
    IllegalStatusChange,
    Incident,
    NoPlan,
    PlanError,
    Recommendation,
    Shortfall,
    StaleUnit,
    Unit,
    UnitSpec,
    UnitStatus,
    UnitType,
    assigned_event,
    assignment_stage,
    busy,
    check_assignable,
    check_eligible,
    check_lendable,
    check_next_version,
    check_not_registered,
    check_open,
    check_other_incident,
    check_reassignable,
    check_release,
    check_unique_units,
    check_unit_list,
    choose_units,
    incident_facts,
    is_settled,
    latest_positions,
    may_serve,
    new_assignment,
    new_unit,
    perimeter_secured,
    plan_catalogue,
    plan_published,
    plan_stage,
    read_new_plan,
    reclaim_releases,
    reconcile,
    release_event,
    released_status,
    report_status,
    required_units,
    roster_entry,
    shortfall_messages,
    surplus,
    takes_over,
    unit_changes,
)
from dispatch.plans import load_shipped_plans, shipped_files
from ecs.errors import Conflict, InvalidInput, NotFound, StaleVersion
from ecs.vocabulary import TERMINAL_STAGES, Category, Level, Participant, Stage

S = UnitStatus
T = UnitType
NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
PLANS = load_shipped_plans()
FIRE_IV = PLANS[Category.fire].for_level(Level.IV)  # isolation: 1 patrol car, 1 fire engine
FIRE_III = PLANS[Category.fire].for_level(Level.III)


def incident(stage: Stage = Stage.isolation, **kw) -> Incident:
    fields = {"id": "inc-1", "category": Category.fire, "level": Level.IV, "lat": 31.23, "lon": 121.47}
    return Incident(**{**fields, "stage": stage, "exercise": False, **kw})


def unit(uid: str = "fe-1", unit_type: UnitType = T.FIRE_ENGINE, **kw) -> Unit:
    fields = {
        "id": uid,
        "callsign": uid,
        "agency": T(unit_type).agency,
        "unit_type": T(unit_type),
        "capabilities": (),
        "home_station": "s-1",
        "district": "huangpu",
        "lat": 31.24,
        "lon": 121.47,
        "location_at": NOW,
        "status": S.AVAILABLE,
        "incident_id": None,
        "exercise": False,
        "lent_to_drill": None,
        "version": 1,
    }
    return Unit(**{**fields, **kw})


def held(aid: int, unit_type: UnitType = T.FIRE_ENGINE, stage: Stage = Stage.isolation, **kw) -> Held:
    fields = {"incident_id": "inc-1", "unit_id": f"u-{aid}", "source": AssignmentSource.AUTOMATIC}
    return Held(**{"id": aid, "unit_type": unit_type, "stage": stage, "status": S.ASSIGNED, **fields, **kw})


# --------------------------------------------------------------------------------------------
# Which units each stage holds (written out, not derived from the code)

ASSIGNMENT_STAGE = {
    Stage.reported: Stage.isolation,
    Stage.isolation: Stage.isolation,
    Stage.handling: Stage.handling,
    Stage.opinion_control: Stage.handling,
    Stage.aftermath: Stage.handling,
    Stage.closed: Stage.handling,
    Stage.cancelled: Stage.handling,
}

# (stage, release_on_aftermath) -> whose units the plan wants held
PLAN_STAGE = {
    (Stage.reported, True): Stage.isolation,
    (Stage.isolation, True): Stage.isolation,
    (Stage.handling, True): Stage.handling,
    (Stage.opinion_control, True): Stage.handling,
    (Stage.aftermath, True): None,
    (Stage.closed, True): None,
    (Stage.cancelled, True): None,
    (Stage.reported, False): Stage.isolation,
    (Stage.isolation, False): Stage.isolation,
    (Stage.handling, False): Stage.handling,
    (Stage.opinion_control, False): Stage.handling,
    (Stage.aftermath, False): Stage.handling,
    (Stage.closed, False): None,
    (Stage.cancelled, False): None,
}


def test_the_tables_cover_every_stage():
    assert set(ASSIGNMENT_STAGE) == set(Stage)
    assert set(PLAN_STAGE) == set(itertools.product(Stage, (True, False)))


@pytest.mark.parametrize("stage", list(Stage))
def test_assignment_stage(stage):
    assert assignment_stage(stage) is ASSIGNMENT_STAGE[stage]


@pytest.mark.parametrize(("stage", "release_on_aftermath"), list(PLAN_STAGE))
def test_units_each_stage_holds(stage, release_on_aftermath):
    wanted = PLAN_STAGE[(stage, release_on_aftermath)]
    assert plan_stage(stage, release_on_aftermath) is wanted
    required = required_units(FIRE_III, stage, release_on_aftermath)
    assert required == (FIRE_III.units_for(wanted) if wanted else {})


def test_handling_holds_the_perimeter_units_too():
    isolation = required_units(FIRE_III, Stage.isolation, True)
    handling = required_units(FIRE_III, Stage.handling, True)
    assert all(handling[t] >= n for t, n in isolation.items())
    assert sum(handling.values()) > sum(isolation.values())


def test_every_level_of_every_plan_is_reachable_by_level():
    for plan in PLANS.values():
        assert set(plan.by_level) == set(Level)
        assert all(plan.for_level(level) is plan.by_level[level] for level in Level)


# --------------------------------------------------------------------------------------------
# Reconciliation on a stage or level change, over every stage


@pytest.mark.parametrize(("stage", "release_on_aftermath"), list(PLAN_STAGE))
def test_reconcile_over_every_stage(stage, release_on_aftermath):
    holding = [held(1, T.FIRE_ENGINE), held(2, T.PATROL_CAR)]
    decision = reconcile(incident(stage, level=Level.III), holding, FIRE_III, release_on_aftermath)
    wanted = PLAN_STAGE[(stage, release_on_aftermath)]
    if wanted is None:
        assert decision.release == tuple(holding) and not decision.add
        assert decision.release_reason == f"incident {stage}"
    elif stage is Stage.reported:
        assert decision.release == () and decision.add == {}  # the plan's units go out on isolation
    else:
        required = FIRE_III.units_for(wanted)
        assert decision.release == ()
        assert decision.add == {t: n - 1 if t in (T.FIRE_ENGINE, T.PATROL_CAR) else n for t, n in required.items()}
        assert decision.stage is assignment_stage(stage)


def test_a_merged_incident_releases_everything():
    holding = [held(1), held(2, T.PATROL_CAR)]
    decision = reconcile(incident(merged_into="inc-2"), holding, FIRE_IV, True)
    assert decision.release == tuple(holding) and decision.release_reason == "incident merged into inc-2"


def test_a_lowered_level_gives_back_automatic_units_not_yet_on_scene_latest_first():
    holding = [
        held(1, T.FIRE_ENGINE, status=S.ON_SCENE),
        held(2, T.FIRE_ENGINE, status=S.EN_ROUTE),
        held(3, T.FIRE_ENGINE, status=S.ASSIGNED, source=AssignmentSource.OVERRIDE),  # an operator's: stays
        held(4, T.FIRE_ENGINE, status=S.EN_ROUTE),
        held(5, T.PATROL_CAR),
    ]
    decision = reconcile(incident(level=Level.III), holding, FIRE_III, True)  # III wants 2 fire engines
    assert [a.id for a in decision.release] == [4, 2]
    assert decision.release_reason == "incident lowered to level 3: more units than the plan wants"
    assert decision.add == {T.PATROL_CAR: 1}


def test_surplus_takes_only_what_is_in_excess():
    holding = [held(1), held(2), held(3, status=S.ON_SCENE)]
    assert [a.id for a in surplus(holding, {T.FIRE_ENGINE: 1})] == [2]
    assert [a.id for a in surplus(holding, {T.FIRE_ENGINE: 3})] == [2, 1, 3]
    assert surplus(holding, {}) == []


def test_a_raised_level_tops_up():
    decision = reconcile(incident(level=Level.III), [held(1, T.FIRE_ENGINE), held(2, T.PATROL_CAR)], FIRE_III, True)
    assert decision.add == {T.FIRE_ENGINE: 1, T.PATROL_CAR: 1} and decision.release == ()


def test_no_plan_is_refused_only_when_the_plan_is_needed():
    with pytest.raises(NoPlan) as caught:
        reconcile(incident(Stage.handling), [], None, True)
    assert caught.value.status == 404 and "'fire'" in caught.value.detail
    assert reconcile(incident(Stage.reported), [], None, True).add == {}
    assert reconcile(incident(Stage.closed), [held(1)], None, True).release == (held(1),)


# --------------------------------------------------------------------------------------------
# When the perimeter is secured, when dispatch is settled


@pytest.mark.parametrize(
    ("statuses", "plan_wants", "secured"),
    [
        ((), 0, True),  # the plan wants no perimeter units: nothing to wait for
        ((), 2, False),
        ((S.ON_SCENE,), 2, True),  # every perimeter unit it holds is on scene
        ((S.ON_SCENE, S.EN_ROUTE), 2, False),
        ((S.ASSIGNED,), 1, False),
        ((S.ON_SCENE, S.ON_SCENE), 2, True),
    ],
)
def test_perimeter_secured(statuses, plan_wants, secured):
    holding = [held(i, status=s) for i, s in enumerate(statuses)]
    assert perimeter_secured(holding, plan_wants) is secured


def test_handling_units_do_not_count_for_the_perimeter():
    holding = [held(1, status=S.ON_SCENE), held(2, stage=Stage.handling, status=S.EN_ROUTE)]
    assert perimeter_secured(holding, 1) is True


def test_settled_when_nothing_is_held():
    assert is_settled([]) and not is_settled([held(1)])


def test_facts_are_published_when_they_change():
    first = incident_facts(incident(), [held(1)], FIRE_IV)
    assert first.values() == {"settled": False}  # perimeter_secured stays False: no event
    (settled,) = first.events
    assert settled.participant is Participant.dispatch and settled.settled is False
    assert settled.detail == "1 units held"

    on_scene = [held(1, status=S.ON_SCENE), held(2, T.PATROL_CAR, status=S.ON_SCENE)]
    secured = incident_facts(incident(settled=False), on_scene, FIRE_IV)
    assert secured.values() == {"perimeter_secured": True}
    assert secured.events[0].on_scene is True and secured.events[0].detail == "2 of 2 perimeter units on scene"

    unchanged = incident_facts(incident(settled=False, perimeter_secured=True), on_scene, FIRE_IV)
    assert unchanged.events == () and unchanged.values() == {}


def test_facts_name_what_the_plan_still_wants():
    facts = incident_facts(incident(perimeter_secured=True, settled=False), [held(1)], FIRE_III)
    assert facts.events[0].on_scene is False
    assert facts.events[0].detail == "0 of 1 perimeter units on scene (the plan wants 4)"


def test_released_everything_settles_and_the_perimeter_is_no_longer_held():
    facts = incident_facts(incident(Stage.closed, settled=False, perimeter_secured=True), [], FIRE_IV)
    assert facts.values() == {"perimeter_secured": False, "settled": True}
    assert [e.detail for e in facts.events] == ["0 of 0 perimeter units on scene (the plan wants 2)", "no units held"]


# --------------------------------------------------------------------------------------------
# Who may serve whom (DESIGN §8)

# (incident is an exercise, unit is an exercise unit, unit lent to a drill) -> may serve
ELIGIBLE = {
    (False, False, False): True,
    (False, False, True): True,  # a lent live unit still serves live incidents
    (False, True, False): False,
    (True, False, False): False,  # a drill never takes a live unit it did not borrow
    (True, False, True): True,
    (True, True, False): True,
}


@pytest.mark.parametrize(("drill", "exercise_unit", "lent"), list(ELIGIBLE))
def test_eligibility(drill, exercise_unit, lent):
    u = unit(exercise=exercise_unit, lent_to_drill="d-1" if lent else None)
    i = incident(exercise=drill)
    assert may_serve(u, i) is ELIGIBLE[(drill, exercise_unit, lent)]
    if ELIGIBLE[(drill, exercise_unit, lent)]:
        check_eligible(u, i)
    else:
        with pytest.raises(Conflict) as caught:
            check_eligible(u, i)
        assert "cannot take it" in caught.value.detail and caught.value.extra["unit_id"] == u.id


@pytest.mark.parametrize("status", list(UnitStatus))
def test_only_an_available_unit_is_assigned(status):
    u = unit(status=status, incident_id="inc-9" if status in (S.ASSIGNED, S.EN_ROUTE, S.ON_SCENE) else None)
    if status is S.AVAILABLE:
        check_assignable(u, incident())
        return
    with pytest.raises(Conflict) as caught:
        check_assignable(u, incident())
    if u.incident_id:
        assert caught.value.detail == f"unit fe-1 is already assigned to incident inc-9 ({status})"
        assert caught.value.extra["incident_id"] == "inc-9"
    else:
        assert caught.value.detail == f"unit fe-1 is {status}"


@pytest.mark.parametrize("stage", list(Stage))
def test_units_are_sent_to_open_incidents_only(stage):
    if stage in TERMINAL_STAGES:
        with pytest.raises(Conflict, match=f"is {stage}"):
            check_open(incident(stage))
    else:
        check_open(incident(stage))
    with pytest.raises(Conflict, match="merged into inc-2"):
        check_open(incident(stage, merged_into="inc-2"))


@pytest.mark.parametrize("stage", list(Stage))
def test_a_merge_hands_the_units_over_to_an_open_incident_only(stage):
    assert takes_over(incident(stage)) is (stage not in TERMINAL_STAGES)


# --------------------------------------------------------------------------------------------
# Lending live units to drills


def test_only_live_units_are_lent():
    check_lendable(unit())
    with pytest.raises(Conflict, match="only live units are lent"):
        check_lendable(unit(exercise=True))


def test_taking_a_unit_back_releases_it_from_an_exercise_only():
    assert reclaim_releases(incident(exercise=True)) is True
    assert reclaim_releases(incident(exercise=False)) is False
    assert reclaim_releases(None) is False


# --------------------------------------------------------------------------------------------
# Status reports


@pytest.mark.parametrize("to", [S.RETURNING, S.OUT_OF_SERVICE])
def test_returning_or_out_of_service_ends_the_assignment(to):
    report = report_status(unit(status=S.ON_SCENE, incident_id="inc-1"), to, "op")
    assert report.leaves and report.incident_id is None and not report.arrives
    assert report.release_reason == f"unit reported {to}"
    assert report.event.incident_id == "inc-1" and report.event.from_status == "on_scene"


def test_on_scene_records_the_arrival_and_keeps_the_incident():
    report = report_status(unit(status=S.EN_ROUTE, incident_id="inc-1"), S.ON_SCENE, "op")
    assert report.arrives and not report.leaves and report.incident_id == "inc-1"


def test_status_refusals():
    with pytest.raises(IllegalStatusChange):
        report_status(unit(), S.ON_SCENE, "op")
    with pytest.raises(Conflict, match="assignments, not by status"):
        report_status(unit(), S.ASSIGNED, "op")
    with pytest.raises(Conflict, match="release its assignment instead"):
        report_status(unit(status=S.ASSIGNED, incident_id="inc-1"), S.AVAILABLE, "op")
    with pytest.raises(StaleUnit) as caught:
        report_status(unit(version=3), S.OUT_OF_SERVICE, "op", seen_version=2)
    assert caught.value.extra["current_version"] == 3
    assert report_status(unit(version=3), S.OUT_OF_SERVICE, "op", seen_version=3).to_status is S.OUT_OF_SERVICE


# --------------------------------------------------------------------------------------------
# The roster


def test_a_new_unit():
    spec = UnitSpec("amb-1", T.AMBULANCE, "jingan", "s-2", 31.2, 121.4, capabilities=("b", "a", "b"))
    u = new_unit(spec, NOW)
    assert (u.callsign, u.agency, u.capabilities, u.version, u.status) == (
        "amb-1",
        "medical",
        ("a", "b"),
        1,
        S.AVAILABLE,
    )
    entry = roster_entry(u, "op")
    assert entry.unit_id == "amb-1" and entry.capabilities == ["a", "b"] and entry.actor == "op"


def test_registration_refusals():
    check_unique_units(["a", "b"])
    with pytest.raises(InvalidInput, match="unit b is listed twice"):
        check_unique_units(["a", "b", "b", "c", "c"])
    check_not_registered(set())
    with pytest.raises(Conflict) as caught:
        check_not_registered({"z", "y"})
    assert caught.value.extra == {"unit_id": "y", "existing": ["y", "z"]}


def test_only_roster_fields_change():
    assert unit_changes({"district": "d", "status": "available", "capabilities": ["b", "a", "a"]}) == {
        "district": "d",
        "capabilities": ["a", "b"],
    }


def test_the_newest_position_of_each_unit_wins():
    old, new = NOW, NOW + timedelta(seconds=5)
    latest = latest_positions([("a", 1.0, 1.0, new), ("a", 2.0, 2.0, old), ("b", 3.0, 3.0, old)])
    assert latest == {"a": ("a", 1.0, 1.0, new), "b": ("b", 3.0, 3.0, old)}


# --------------------------------------------------------------------------------------------
# An operator's choice, assignments and releases


def test_an_operator_choice_names_each_unit_once():
    with pytest.raises(InvalidInput, match="at least one"):
        check_unit_list([])
    with pytest.raises(InvalidInput, match="listed twice"):
        check_unit_list(["a", "a"])


def test_a_unit_not_recommended_needs_a_reason():
    rec = Recommendation("fe-0", T.FIRE_ENGINE, 60.0, 500.0, "huangpu", "nearest available fire_engine")
    assert choose_units(["fe-0"], {"fe-0": rec}, None) == [
        ("fe-0", AssignmentSource.RECOMMENDED, "nearest available fire_engine")
    ]
    with pytest.raises(InvalidInput) as caught:
        choose_units(["fe-0", "fe-2"], {"fe-0": rec}, "  ")
    assert caught.value.extra == {"field": "reason", "not_recommended": ["fe-2"]}
    assert choose_units(["fe-0", "fe-2"], {"fe-0": rec}, "crew") == [
        ("fe-0", AssignmentSource.RECOMMENDED, "nearest available fire_engine (crew)"),
        ("fe-2", AssignmentSource.OVERRIDE, "override: crew"),
    ]


class Fixed:
    def eta_s(self, *_: object) -> float:
        return 123.456


def test_a_new_assignment_and_its_event():
    a = new_assignment(incident(), unit(), Stage.isolation, AssignmentSource.AUTOMATIC, "automation", "r", Fixed(), NOW)
    assert a.eta_s == 123.5 and 1100 < a.distance_m < 1120 and a.id is None and a.exercise is False
    with pytest.raises(ValueError):
        assigned_event(a)
    event = assigned_event(dataclasses.replace(a, id=7))
    assert (event.assignment_id, event.stage, event.source) == (7, "isolation", "automatic")


@pytest.mark.parametrize("status", [S.ASSIGNED, S.EN_ROUTE, S.ON_SCENE])
def test_a_released_unit_goes_back_or_returns(status):
    to = released_status(status)
    assert to is (S.AVAILABLE if status is S.ASSIGNED else S.RETURNING)
    event = release_event(held(4, status=status), to, "op", "done")
    assert (event.assignment_id, event.status, event.reason) == (4, to, "done")


def test_release_and_reassignment_refusals():
    a = new_assignment(incident(), unit(), Stage.isolation, AssignmentSource.RECOMMENDED, "op", "r", Fixed(), NOW)
    assert check_release(a, held(1)) == held(1)
    with pytest.raises(Conflict, match="already released at"):
        check_release(a, None)
    with pytest.raises(Conflict, match="already serves incident inc-1"):
        check_other_incident(a, "inc-1")
    check_other_incident(a, "inc-2")
    with pytest.raises(Conflict, match="was already released"):
        check_reassignable(a, None)
    with pytest.raises(Conflict, match="on_scene at incident inc-1: release it first"):
        check_reassignable(a, held(1, status=S.ON_SCENE))
    assert check_reassignable(a, held(1, status=S.EN_ROUTE)).id == 1


def test_shortfalls_say_why_units_are_missing():
    found = [Shortfall(T.FIRE_ENGINE, 3, 1, ("jingan",), "need 3 fire_engine, only 1 available")]
    assert shortfall_messages(found, {T.FIRE_ENGINE: 2, T.AMBULANCE: 1}) == [
        "need 3 fire_engine, only 1 available",
        "need 1 more ambulance: the units found were taken meanwhile",
    ]
    assert shortfall_messages(found, {}) == []


def test_busy_names_the_incident():
    assert busy(unit(status=S.EN_ROUTE, incident_id="inc-3")).extra["incident_id"] == "inc-3"


# --------------------------------------------------------------------------------------------
# Plans from operators


def test_the_shipped_folder_is_read_whole():
    files = shipped_files()
    assert set(plan_catalogue(files)) == set(Category)
    with pytest.raises(PlanError, match="no plan for fire"):
        plan_catalogue({k: v for k, v in files.items() if k != "fire.yaml"})
    with pytest.raises(PlanError, match="is fire, but the file is named flood.yaml"):
        plan_catalogue({**files, "flood.yaml": files["fire.yaml"]})


def test_a_new_plan_version():
    body = shipped_files()["fire.yaml"]
    plan = read_new_plan("fire", body)
    with pytest.raises(NotFound, match="no incident category 'volcano'"):
        read_new_plan("volcano", body)
    with pytest.raises(PlanError) as caught:
        read_new_plan("flood", body)
    (problem,) = caught.value.problems
    assert problem.path == "category" and body.splitlines()[problem.line - 1].startswith("category:")
    check_next_version(plan, None)
    with pytest.raises(StaleVersion, match="must say version: 2"):
        check_next_version(plan, 1)
    event = plan_published(plan, "commander-1", NOW)
    assert event.category == "fire" and set(event.levels) == {"I", "II", "III", "IV"}


def test_a_fix_more_than_the_skew_ahead_of_the_clock_is_refused_with_both_times():
    from datetime import UTC, datetime, timedelta

    from dispatch.domain import fix_ahead_of_clock

    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert fix_ahead_of_clock(now, now, 300) is None
    assert fix_ahead_of_clock(now + timedelta(seconds=300), now, 300) is None  # at the bound: taken
    assert fix_ahead_of_clock(now - timedelta(days=400), now, 300) is None  # old fixes are only older
    why = fix_ahead_of_clock(now + timedelta(seconds=301), now, 300)
    assert why == (
        "the position is fixed at 2026-12-01T10:05:01+00:00, 301 s ahead of dispatch's clock "
        "(2026-12-01T10:00:00+00:00); at most 300 s ahead is accepted"
    )
    assert fix_ahead_of_clock(now + timedelta(seconds=1), now, 0) is not None
