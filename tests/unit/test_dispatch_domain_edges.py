"""dispatch's domain at its edges: the exact words and fields of each refusal, the bounds of what
is accepted (locations, road factors, cell sizes), the ordinals and figures a recommendation's
reason gives, the cover a district keeps by policy, and an index whose cells were laid at another
latitude than the incident's still finding the nearest unit."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dispatch.domain import (
    Agency,
    AssignmentSource,
    CoverPolicy,
    IllegalStatusChange,
    InvalidLocation,
    NoPlan,
    PlanError,
    Recommendation,
    StaleUnit,
    StraightLineEstimator,
    UnitIndex,
    UnitSpec,
    UnitStatus,
    UnitType,
    UnitView,
    assigned_event,
    check_next_version,
    check_not_registered,
    check_release,
    check_status_change,
    check_version,
    choose_units,
    drill_may_drive,
    incident_facts,
    new_assignment,
    new_unit,
    parse_plan,
    plan_catalogue,
    plan_document,
    read_new_plan,
    recommend,
    report_status,
    roster_entry,
    surplus,
    top_up,
)
from dispatch.domain.incidents import UnknownAssignment, UnknownIncident
from dispatch.domain.roster import UnknownUnit
from dispatch.plans import shipped_files
from ecs.errors import Conflict, InvalidInput, NotFound
from ecs.geo import haversine_m
from ecs.vocabulary import Category, Stage
from tests.unit.test_dispatch_domain import KM_LAT, PLAN, SITE
from tests.unit.test_dispatch_domain import unit as view
from tests.unit.test_dispatch_rules import FIRE_IV, NOW, held, incident, unit

S = UnitStatus
T = UnitType
M_PER_DEG = 111_195.0  # metres per degree of latitude, as the index lays its cells


def ids(result):
    return [r.unit_id for r in result.recommendations]


class FixedEta:
    """Every unit arrives in ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def eta_s(self, *_: object) -> float:
        return self.seconds


# --------------------------------------------------------------------------------------------
# Errors, word for word


def test_unknown_units_incidents_and_assignments_are_404_naming_the_id():
    for error, detail, extra in (
        (UnknownUnit("fe-9"), "unit fe-9 not found", {"unit_id": "fe-9"}),
        (
            UnknownIncident("inc-4"),
            "incident inc-4 is unknown to dispatch (no event about it has arrived)",
            {"incident_id": "inc-4"},
        ),
        (UnknownAssignment(12), "assignment 12 not found", {"assignment_id": 12}),
    ):
        assert isinstance(error, NotFound) and error.status == 404
        assert (error.detail, str(error), error.extra) == (detail, detail, extra)


def test_no_plan_names_the_category():
    error = NoPlan(Category.fire)
    assert (error.detail, error.extra) == ("no response plan for category 'fire'", {"category": "fire"})
    assert type(error.extra["category"]) is str


def test_an_illegal_status_change_names_both_statuses_and_the_legal_ones():
    with pytest.raises(IllegalStatusChange) as caught:
        check_status_change(S.ON_SCENE, S.AVAILABLE)
    error = caught.value
    assert error.detail == (
        "a unit cannot go from on_scene to available; legal next statuses from on_scene: out_of_service, returning"
    )
    assert error.extra == {
        "from_status": "on_scene",
        "to_status": "available",
        "allowed": ["out_of_service", "returning"],
    }
    assert (error.from_status, error.to_status) == (S.ON_SCENE, S.AVAILABLE)
    assert error.allowed == {S.OUT_OF_SERVICE, S.RETURNING}


def test_a_stale_unit_names_both_versions():
    check_version(unit(version=3), None)
    check_version(unit(version=3), 3)
    with pytest.raises(StaleUnit) as caught:
        check_version(unit(version=3), 2)
    assert caught.value.detail == "unit fe-1 is at version 3, not 2: reload it and decide again"
    assert caught.value.extra == {"current_version": 3}


def test_a_second_registration_names_the_first_unit_on_the_roster():
    with pytest.raises(Conflict) as caught:
        check_not_registered({"z", "y"})
    assert caught.value.detail == "unit y is already registered"


def test_status_report_refusals_word_for_word():
    with pytest.raises(Conflict) as caught:
        report_status(unit(), S.ASSIGNED, "op")
    assert caught.value.detail == (
        "a unit is assigned through POST /v1/incidents/{incident_id}/assignments, not by status"
    )
    with pytest.raises(Conflict) as caught:
        report_status(unit(status=S.ASSIGNED, incident_id="inc-1"), S.AVAILABLE, "op")
    assert caught.value.detail == "unit fe-1 serves incident inc-1: release its assignment instead"
    assert caught.value.extra == {"incident_id": "inc-1"}


def test_a_status_report_says_where_the_unit_came_from():
    report = report_status(unit(status=S.EN_ROUTE, incident_id="inc-1"), S.ON_SCENE, "op")
    assert (report.from_status, report.to_status) == (S.EN_ROUTE, S.ON_SCENE)
    assert (report.event.from_status, report.event.to_status) == ("en_route", "on_scene")


def test_release_override_and_announcement_refusals_word_for_word():
    a = new_assignment(incident(), unit(), Stage.isolation, AssignmentSource.AUTOMATIC, "op", "r", FixedEta(60), NOW)
    stored = dataclasses.replace(a, id=8, released_at=NOW)
    with pytest.raises(Conflict) as caught:
        check_release(stored, None)
    assert caught.value.detail == f"assignment 8 was already released at {NOW}"
    assert caught.value.extra == {"assignment_id": 8}
    with pytest.raises(ValueError, match="^an assignment is announced once stored$"):
        assigned_event(a)
    rec = Recommendation("fe-0", T.FIRE_ENGINE, 60.0, 500.0, "huangpu", "nearest available fire_engine")
    with pytest.raises(InvalidInput) as caught:
        choose_units(["fe-0", "fe-2", "fe-3"], {"fe-0": rec}, None)
    assert caught.value.detail == "unit fe-2 is not among the recommended units: give a reason to override"
    assert caught.value.extra == {"field": "reason", "not_recommended": ["fe-2", "fe-3"]}


# --------------------------------------------------------------------------------------------
# The roster


def test_a_new_unit_is_where_its_registration_says_from_now():
    u = new_unit(UnitSpec("amb-1", T.AMBULANCE, "jingan", "s-2", 31.2, 121.4), NOW)
    assert (u.lat, u.lon, u.location_at, u.incident_id, u.lent_to_drill) == (31.2, 121.4, NOW, None, None)


def test_the_roster_event_says_which_drill_a_unit_is_lent_to():
    assert roster_entry(unit(lent_to_drill="drill-3"), "op").lent_to_drill == "drill-3"
    assert roster_entry(unit(), "op").lent_to_drill is None


# (exercise unit, lent to a drill, serves a live incident) -> a drill runner may drive it
DRILL_MAY_DRIVE = {
    (True, False, False): True,
    (True, False, True): True,  # an exercise unit is the drill's whatever it does
    (False, True, False): True,  # a lent live unit, free of live work
    (False, True, True): False,  # a lent live unit serving a live incident: never
    (False, False, False): False,  # a live unit not lent
    (False, False, True): False,
}


@pytest.mark.parametrize(("exercise", "lent", "serves_live"), list(DRILL_MAY_DRIVE))
def test_a_drill_runner_drives_its_own_units_and_lent_ones_free_of_live_work(exercise, lent, serves_live):
    u = unit(exercise=exercise, lent_to_drill="drill-1" if lent else None)
    assert drill_may_drive(u, serves_live) is DRILL_MAY_DRIVE[(exercise, lent, serves_live)]


# --------------------------------------------------------------------------------------------
# Assignments and what an incident holds


class Recorder:
    """An estimator that remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[object, ...]] = []

    def eta_s(self, *args: object) -> float:
        self.asked.append(args)
        return 61.26


def test_an_assignment_estimates_from_the_unit_to_the_incident_and_rounds_to_a_tenth():
    estimator = Recorder()
    u = unit(unit_type=T.LADDER_TRUCK, lat=31.2512, lon=121.4833)
    i = incident(lat=31.2304, lon=121.4737)
    a = new_assignment(i, u, Stage.handling, AssignmentSource.RECOMMENDED, "op", "why", estimator, NOW)
    assert estimator.asked == [(31.2512, 121.4833, 31.2304, 121.4737, T.LADDER_TRUCK)]
    metres = haversine_m(31.2512, 121.4833, 31.2304, 121.4737)
    assert metres != round(metres, 1)  # the rounding below is visible
    assert (a.eta_s, a.distance_m, a.assigned_at) == (61.3, round(metres, 1), NOW)
    event = assigned_event(dataclasses.replace(a, id=5))
    assert (event.eta_s, event.distance_m, event.reason) == (61.3, round(metres, 1), "why")


def test_top_up_counts_what_is_held_against_what_is_required():
    holding = [held(1, T.FIRE_ENGINE), held(2, T.FIRE_ENGINE), held(3, T.PATROL_CAR)]
    required = {T.FIRE_ENGINE: 3, T.PATROL_CAR: 1, T.AMBULANCE: 2}
    assert top_up(holding, required) == {T.FIRE_ENGINE: 1, T.AMBULANCE: 2}
    assert top_up([], required) == required
    assert top_up(holding, {}) == {}


def test_surplus_gives_back_units_in_any_other_status_after_those_on_scene():
    holding = [held(1, status=S.RETURNING), held(2, status=S.ON_SCENE), held(3, status=S.ASSIGNED)]
    assert [a.id for a in surplus(holding, {T.FIRE_ENGINE: 3})] == [3, 2, 1]
    assert [a.id for a in surplus(holding, {T.FIRE_ENGINE: 2})] == [3, 2]


def test_without_a_plan_the_perimeter_waits_for_no_one():
    facts = incident_facts(incident(settled=True), [], None)
    assert facts.values() == {"perimeter_secured": True}
    assert facts.events[0].on_scene is True and facts.events[0].detail == "0 of 0 perimeter units on scene"
    held_one = incident_facts(incident(perimeter_secured=True, settled=False), [held(1)], None)
    assert held_one.values() == {"perimeter_secured": False}
    assert held_one.events[0].detail == "0 of 1 perimeter units on scene"
    # A plan that wants perimeter units: none held is not secured.
    assert incident_facts(incident(settled=True), [], FIRE_IV).values() == {}


# --------------------------------------------------------------------------------------------
# Response plans


def test_an_empty_plan_file_says_so():
    with pytest.raises(PlanError) as caught:
        parse_plan("", "plans/fire.yaml")
    assert str(caught.value) == "plans/fire.yaml: line 1: (document): the plan file is empty"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Fire at {}.", "template has an empty placeholder {}"),
        (
            "Fire at {radius}.",
            "unknown placeholder {radius}; allowed: address, category, evacuation_radius_m, hotline, "
            "incident_id, isolation_radius_m, level, shelter, time",
        ),
    ],
)
def test_a_bad_template_placeholder_is_named(template, message):
    text = PLAN.replace('"Fire at {address}; leave within {evacuation_radius_m} m."', f'"{template}"')
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "plans/fire.yaml")
    (problem,) = caught.value.problems
    assert (problem.path, problem.message) == ("levels.I.notification_templates.sms_broadcast", message)


def test_a_template_that_is_not_well_formed_says_why():
    text = PLAN.replace("{evacuation_radius_m} m.", "{evacuation_radius_m m.")
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "plans/fire.yaml")
    (problem,) = caught.value.problems
    assert problem.message == "template is not well formed: expected '}' before end of string"


def test_the_catalogue_names_the_file_and_the_folder_it_refuses():
    files = shipped_files()
    with pytest.raises(PlanError) as caught:
        plan_catalogue({**files, "flood.yaml": files["fire.yaml"]})
    assert caught.value.source == "plans/flood.yaml"
    assert str(caught.value) == "plans/flood.yaml: line 1: category: is fire, but the file is named flood.yaml"
    without = {k: v for k, v in files.items() if k not in ("fire.yaml", "flood.yaml")}
    with pytest.raises(PlanError) as caught:
        plan_catalogue(without)
    assert str(caught.value) == "plans/: line 1: (folder): no plan for fire, flood"
    with pytest.raises(PlanError) as caught:
        plan_catalogue({**files, "gas_leak.yaml": "category: gas_leak\n"})
    assert caught.value.source == "plans/gas_leak.yaml"


def test_the_catalogue_reads_past_files_that_are_not_plans():
    files = {"README.md": "not a plan", **shipped_files(), "notes.txt": "nor this"}
    assert set(plan_catalogue(files)) == set(Category)


def test_a_new_plan_version_names_its_file_in_every_refusal():
    body = shipped_files()["fire.yaml"]
    with pytest.raises(NotFound) as caught:
        read_new_plan("volcano", body)
    assert caught.value.extra == {"category": "volcano"}
    with pytest.raises(PlanError) as caught:
        read_new_plan("flood", body)
    assert caught.value.source == "plans/flood.yaml"
    (problem,) = caught.value.problems
    assert (problem.line, problem.message) == (4, "is fire, but this is the plan of flood")
    with pytest.raises(PlanError) as caught:
        read_new_plan("fire", "category: fire\n")
    assert caught.value.source == "plans/fire.yaml"


def test_a_category_key_not_at_the_start_of_a_line_is_reported_at_line_1():
    body = shipped_files()["fire.yaml"].replace("category: fire", '"category": fire')
    with pytest.raises(PlanError) as caught:
        read_new_plan("flood", body)
    assert caught.value.problems[0].line == 1


def test_a_stale_plan_version_says_which_is_current():
    plan = read_new_plan("fire", shipped_files()["fire.yaml"])
    with pytest.raises(Conflict) as caught:
        check_next_version(plan, 4)
    assert caught.value.detail == "plan fire is at version 4: a new version must say version: 5"
    assert caught.value.extra == {"current_version": 4}


def test_a_plan_document_holds_plain_json_values():
    doc = plan_document(read_new_plan("fire", shipped_files()["fire.yaml"]))
    assert type(doc["category"]) is str
    level_i = doc["levels"]["I"]
    assert all(type(key) is str for key in level_i["isolation_units"])
    assert all(type(step) is str for step in level_i["approval_required"])


# --------------------------------------------------------------------------------------------
# Recommendation: bounds and inputs


@pytest.mark.parametrize(("lat", "lon"), [(90.0, 0.0), (-90.0, 0.0), (0.0, 180.0), (0.0, -180.0)])
def test_the_edges_of_the_map_are_locations(lat, lon):
    UnitView("x", "medical", "ambulance", frozenset(), "d", lat, lon, "available")
    recommend({T.AMBULANCE: 1}, lat, lon, 2, False, [])


@pytest.mark.parametrize(("lat", "lon"), [(90.01, 0.0), (-90.01, 0.0), (0.0, 180.01), (0.0, -180.01), (math.nan, 0.0)])
def test_past_the_edges_of_the_map_is_refused_with_the_ranges(lat, lon):
    with pytest.raises(InvalidLocation) as caught:
        recommend({T.AMBULANCE: 1}, lat, lon, 2, False, [])
    assert caught.value.detail == f"location ({lat}, {lon}) is out of range: lat -90..90, lon -180..180"
    assert caught.value.status == 422


def test_a_unit_view_reads_plain_names_as_the_vocabulary():
    v = UnitView("x", "fire", "fire_engine", frozenset(), "Huangpu", SITE[0], SITE[1], "available")
    assert v.agency is Agency.FIRE and v.unit_type is T.FIRE_ENGINE and v.status is S.AVAILABLE
    busy_view = UnitView("y", "police", "patrol_car", frozenset(), "Huangpu", SITE[0], SITE[1], "on_scene")
    assert busy_view.status is S.ON_SCENE and busy_view.unit_type is T.PATROL_CAR
    index = UnitIndex()
    index.upsert(v)
    assert ids(index.recommend({T.FIRE_ENGINE: 1}, *SITE, 2, False)) == ["x"]


def test_the_road_factor_is_1_4_unless_given_and_never_below_1():
    here, there = (SITE[0] + KM_LAT, SITE[1]), SITE
    default = StraightLineEstimator().eta_s(*here, *there, T.AMBULANCE)
    assert default == StraightLineEstimator(1.4).eta_s(*here, *there, T.AMBULANCE)
    straight = StraightLineEstimator(1.0).eta_s(*here, *there, T.AMBULANCE)
    assert straight == pytest.approx(1000 / (50 / 3.6), rel=1e-3)
    with pytest.raises(ValueError, match="^road_factor below 1 would make roads shorter than a straight line$"):
        StraightLineEstimator(0.99)


def test_an_index_cell_may_be_small_but_not_empty():
    for cell_m in (0, -5.0):
        with pytest.raises(ValueError, match="^cell_m must be positive$"):
            UnitIndex(cell_m=cell_m)
    index = UnitIndex(cell_m=0.5)
    index.upsert(view("a", T.AMBULANCE, "Huangpu", 0.01))
    index.upsert(view("b", T.AMBULANCE, "Huangpu", 0.002))
    assert ids(index.recommend({T.AMBULANCE: 2}, *SITE, 2, False)) == ["b", "a"]


def test_requirements_of_zero_are_skipped_and_negative_ones_refused():
    units = [view("amb", T.AMBULANCE, "Huangpu", 1), view("fe", T.FIRE_ENGINE, "Huangpu", 1)]
    result = recommend({T.LADDER_TRUCK: 0, T.AMBULANCE: 1}, *SITE, 2, False, units)
    assert ids(result) == ["amb"] and result.complete
    with pytest.raises(ValueError, match="^requirement for fire_engine is negative: -1$"):
        recommend({T.FIRE_ENGINE: -1}, *SITE, 2, False, units)


def test_recommend_uses_the_estimator_it_is_given():
    result = recommend({T.AMBULANCE: 1}, *SITE, 2, False, [view("amb", T.AMBULANCE, "Huangpu", 1)], 0, FixedEta(600))
    (rec,) = result.recommendations
    assert rec.eta_s == 600
    assert rec.reason == "nearest available ambulance, ETA 10.0 min, district Huangpu keeps 0"
    assert rec.district == "Huangpu"


# --------------------------------------------------------------------------------------------
# Recommendation: the reason's ordinals and the lent unit


# Written out, not derived: rank -> how the reason begins.
ORDINALS = {
    1: "nearest",
    2: "2nd nearest",
    3: "3rd nearest",
    4: "4th nearest",
    9: "9th nearest",
    10: "10th nearest",
    11: "11th nearest",
    12: "12th nearest",
    13: "13th nearest",
    20: "20th nearest",
    21: "21st nearest",
    22: "22nd nearest",
    23: "23rd nearest",
    24: "24th nearest",
    101: "101st nearest",
    102: "102nd nearest",
    110: "110th nearest",
    111: "111th nearest",
    112: "112th nearest",
    113: "113th nearest",
    121: "121st nearest",
    123: "123rd nearest",
}


def test_each_recommended_unit_says_how_near_it_ranks():
    units = [view(f"fe-{n:03d}", T.FIRE_ENGINE, "Huangpu", n * 0.05) for n in range(1, 126)]
    result = recommend({T.FIRE_ENGINE: 125}, *SITE, 2, False, units)
    assert ids(result) == [u.id for u in units]
    for rank, words in ORDINALS.items():
        assert result.recommendations[rank - 1].reason.startswith(f"{words} available fire_engine, ETA ")


def test_a_lent_unit_says_so_with_or_without_the_drill_name():
    units = [
        view("live-1", T.AMBULANCE, "Huangpu", 0.5, borrowed_for="drill-7"),
        view("live-2", T.AMBULANCE, "Huangpu", 0.7),
    ]
    result = recommend({T.AMBULANCE: 2}, *SITE, 3, True, units, 0, FixedEta(90), ["live-1", "live-2"])
    assert [r.reason for r in result.recommendations] == [
        "nearest available ambulance (live unit lent to the exercise drill-7), ETA 1.5 min, district Huangpu keeps 1",
        "2nd nearest available ambulance (live unit lent to the exercise), ETA 1.5 min, district Huangpu keeps 0",
    ]


# --------------------------------------------------------------------------------------------
# Recommendation: cover


def test_cover_by_district_and_type_counts_only_the_type_and_district_named():
    units = [
        view("hp-1", T.FIRE_ENGINE, "Huangpu", 1),
        view("hp-2", T.FIRE_ENGINE, "Huangpu", 1.5),
        view("xh-1", T.FIRE_ENGINE, "Xuhui", 6),
        view("jn-1", T.AMBULANCE, "Jingan", 2),
    ]
    cover = {"Huangpu": {T.FIRE_ENGINE: 1, T.AMBULANCE: 3}}  # Xuhui and Jingan: no minimum
    result = recommend({T.FIRE_ENGINE: 3, T.AMBULANCE: 1}, *SITE, 2, False, units, min_cover=cover)
    assert ids(result) == ["hp-1", "xh-1", "jn-1"]
    assert [r.reason.split(", ", 2)[2] for r in result.recommendations] == [
        "district Huangpu keeps 1 of its minimum 1",
        "district Xuhui keeps 0",
        "district Jingan keeps 0",
    ]
    assert [s.message for s in result.shortfalls] == [
        "need 3 fire_engine, only 2 available without stripping district Huangpu below cover"
    ]
    # A district named without the type keeps no minimum of it.
    only_ambulances = {"Huangpu": {T.AMBULANCE: 1}}
    assert ids(recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False, units, min_cover=only_ambulances)) == ["hp-1", "hp-2"]


def test_cover_keeps_back_every_unit_past_the_minimum_counted_one_by_one():
    units = [view(f"hp-{n}", T.FIRE_ENGINE, "Huangpu", n) for n in (1, 2, 3)]
    result = recommend({T.FIRE_ENGINE: 3}, *SITE, 2, False, units, min_cover=1)
    assert ids(result) == ["hp-1", "hp-2"]
    assert [r.reason.split(", ", 2)[2] for r in result.recommendations] == [
        "district Huangpu keeps 2 of its minimum 1",
        "district Huangpu keeps 1 of its minimum 1",
    ]


def test_a_cover_policy_has_a_default_and_overrides_per_district():
    policy = CoverPolicy(1, {"Xuhui": {"fire_engine": 0, "ambulance": 2}})
    assert list(policy) == ["Xuhui"] and len(policy) == 1
    assert policy["Xuhui"].get(T.FIRE_ENGINE) == 0
    assert policy["Xuhui"].get(T.AMBULANCE) == 2
    assert policy["Xuhui"].get(T.LADDER_TRUCK) == 1
    assert policy.get("Huangpu").get(T.FIRE_ENGINE) == 1
    assert policy["Huangpu"].get(T.AMBULANCE, 0) == 1  # the policy's default, not the caller's
    assert dict(policy["Xuhui"]) == {T.FIRE_ENGINE: 0, T.AMBULANCE: 2}


def test_a_cover_policy_drives_the_recommendation():
    units = [
        view("hp-1", T.FIRE_ENGINE, "Huangpu", 1),
        view("hp-2", T.FIRE_ENGINE, "Huangpu", 1.5),
        view("xh-1", T.FIRE_ENGINE, "Xuhui", 2),
        view("xh-2", T.FIRE_ENGINE, "Xuhui", 2.5),
    ]
    policy = CoverPolicy(1, {"Xuhui": {"fire_engine": 0}})
    result = recommend({T.FIRE_ENGINE: 3}, *SITE, 2, False, units, min_cover=policy)
    assert ids(result) == ["hp-1", "xh-1", "xh-2"]
    assert [r.reason.split(", ", 2)[2] for r in result.recommendations] == [
        "district Huangpu keeps 1 of its minimum 1",
        "district Xuhui keeps 1",
        "district Xuhui keeps 0",
    ]


# --------------------------------------------------------------------------------------------
# Recommendation: the index


class Motorway:
    """A road network on which the further north a unit is, the sooner it arrives."""

    def eta_s(self, unit_lat: float, *_: object) -> float:
        return 1000.0 - unit_lat * 10


def test_the_estimator_ranks_the_twice_needed_nearest_units_in_a_straight_line():
    units = [view(f"fe-{n}", T.FIRE_ENGINE, "Huangpu", n) for n in (1, 2, 3, 4)]
    assert ids(recommend({T.FIRE_ENGINE: 1}, *SITE, 2, False, units, 0, Motorway())) == ["fe-2"]
    assert ids(recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False, units, 0, Motorway())) == ["fe-4", "fe-3"]


def test_the_index_knows_each_unit_by_id():
    index = UnitIndex()
    a = view("a", T.FIRE_ENGINE, "Huangpu", 1)
    index.upsert(a)
    assert "a" in index and "b" not in index
    assert index.get("a") is a and index.get("b") is None
    assert index.available_count(T.FIRE_ENGINE, "Xuhui") == 0
    assert index.available_count(T.AMBULANCE, "Huangpu") == 0
    assert index.available_count(T.FIRE_ENGINE, "Huangpu", exercise=True) == 0


def test_a_unit_leaving_a_cell_leaves_its_neighbours_there():
    index = UnitIndex()
    for uid, km in (("a", 1.0), ("b", 1.01), ("c", 9.0)):  # a and b share a cell
        index.upsert(view(uid, T.FIRE_ENGINE, "Huangpu", km))
    index.upsert(view("a", T.FIRE_ENGINE, "Huangpu", 1.0, status=S.EN_ROUTE))
    assert index.available_count(T.FIRE_ENGINE, "Huangpu") == 2
    assert ids(index.recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False)) == ["b", "c"]
    index.remove("b")
    assert index.available_count(T.FIRE_ENGINE, "Huangpu") == 1
    assert ids(index.recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False)) == ["c"]


def _grid_site(reference_lat: float, lat: float, lon: float, cell_m: float = 2_000.0) -> tuple[float, float]:
    """The centre of the index cell nearest (lat, lon), for an index laid at ``reference_lat``."""
    dlat = cell_m / M_PER_DEG
    dlon = cell_m / (M_PER_DEG * math.cos(math.radians(reference_lat)))
    return (math.floor(lat / dlat) + 0.5) * dlat, (math.floor(lon / dlon) + 0.5) * dlon


def _at(site: tuple[float, float], north_m: float, east_m: float) -> tuple[float, float]:
    lat, lon = site
    return lat + north_m / M_PER_DEG, lon + east_m / (M_PER_DEG * math.cos(math.radians(lat)))


def _index_around(
    reference_lat: float, site: tuple[float, float], offsets: dict[str, tuple[float, float]], cell_m: float = 2_000.0
) -> UnitIndex:
    index = UnitIndex(cell_m=cell_m, reference_lat=reference_lat)
    for uid, (north_m, east_m) in offsets.items():
        lat, lon = _at(site, north_m, east_m)
        index.upsert(UnitView(uid, "fire", "fire_engine", frozenset(), "D", lat, lon, "available"))
    return index


@pytest.mark.parametrize(
    ("reference_lat", "site_lat", "offsets"),
    [
        # Cells laid at 60°N, incident near the equator: cells are 4 km wide east-west there, 2 km
        # north-south; the unit 3.1 km north is nearer than those 3.7-3.8 km east and west.
        (60.0, 0.5, {"east": (0.0, 3_700.0), "west": (0.0, -3_800.0), "north": (3_100.0, 0.0)}),
        # Cells laid at the equator, incident at 60°N: cells are 1 km wide east-west there; the
        # unit 1.7 km east (two cells away) is nearer than those 1.9-1.95 km north and south.
        (0.0, 60.0, {"north": (1_900.0, 0.0), "south": (-1_950.0, 0.0), "east": (0.0, 1_700.0)}),
        # Cells laid at 60°N, incident at 60°N: square 2 km cells.
        (60.0, 60.0, {"north": (1_900.0, 0.0), "south": (-1_950.0, 0.0), "east": (0.0, 1_700.0)}),
    ],
)
def test_the_nearest_unit_is_found_whatever_latitude_the_cells_were_laid_at(reference_lat, site_lat, offsets):
    site = _grid_site(reference_lat, site_lat, 10.0)
    index = _index_around(reference_lat, site, offsets)
    by_distance = sorted(offsets, key=lambda uid: math.hypot(*offsets[uid]))
    assert ids(index.recommend({T.FIRE_ENGINE: 1}, *site, 2, False)) == by_distance[:1]
    assert ids(index.recommend({T.FIRE_ENGINE: 3}, *site, 2, False)) == by_distance


@pytest.mark.parametrize(
    "offsets",
    [
        {"north": (150_000.0, 0.0), "east": (0.0, 160_000.0), "west": (0.0, -170_000.0)},
        {"east": (0.0, 150_000.0), "north": (160_000.0, 0.0), "south": (-170_000.0, 0.0)},
    ],
)
def test_cells_wider_than_a_degree_still_find_the_nearest_unit(offsets):
    # 200 km cells: every unit is in the ring next to the incident's cell; the nearest wins.
    site = _grid_site(30.0, 30.0, 10.0, cell_m=200_000.0)
    index = _index_around(30.0, site, offsets, cell_m=200_000.0)
    by_distance = sorted(offsets, key=lambda uid: math.hypot(*offsets[uid]))
    assert ids(index.recommend({T.FIRE_ENGINE: 1}, *site, 2, False)) == by_distance[:1]
    assert ids(index.recommend({T.FIRE_ENGINE: 3}, *site, 2, False)) == by_distance
