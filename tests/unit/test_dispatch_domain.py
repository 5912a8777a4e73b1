import itertools
import math
import random

import pytest

from dispatch.domain import (
    STATUS_TRANSITIONS,
    Agency,
    IllegalStatusChange,
    InvalidLocation,
    PlanError,
    StraightLineEstimator,
    UnitIndex,
    UnitStatus,
    UnitType,
    UnitView,
    check_status_change,
    parse_plan,
    recommend,
    units_to_add,
    units_to_release,
)
from dispatch.plans import load_shipped_plans
from ecs.vocabulary import Category, Stage

S = UnitStatus
T = UnitType

# --------------------------------------------------------------------------------------------
# Unit status

# Written out again here, not read from the code, so that a change to the table is a decision.
LEGAL = {
    (S.AVAILABLE, S.ASSIGNED),
    (S.AVAILABLE, S.OUT_OF_SERVICE),
    (S.ASSIGNED, S.EN_ROUTE),
    (S.ASSIGNED, S.AVAILABLE),
    (S.ASSIGNED, S.OUT_OF_SERVICE),
    (S.EN_ROUTE, S.ON_SCENE),
    (S.EN_ROUTE, S.RETURNING),
    (S.EN_ROUTE, S.OUT_OF_SERVICE),
    (S.ON_SCENE, S.RETURNING),
    (S.ON_SCENE, S.OUT_OF_SERVICE),
    (S.RETURNING, S.AVAILABLE),
    (S.RETURNING, S.OUT_OF_SERVICE),
    (S.OUT_OF_SERVICE, S.AVAILABLE),
}


def test_transition_table_is_the_agreed_one():
    assert STATUS_TRANSITIONS == LEGAL


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(UnitStatus, UnitStatus)))
def test_status_change(frm, to):
    if (frm, to) in LEGAL:
        check_status_change(frm, to)
        return
    with pytest.raises(IllegalStatusChange) as caught:
        check_status_change(frm, to)
    message = str(caught.value)
    assert f"from {frm} to {to}" in message
    for legal_next in (b for a, b in LEGAL if a == frm):
        assert legal_next in message
    assert caught.value.status == 409


def test_status_change_accepts_plain_strings():
    check_status_change("available", "assigned")
    with pytest.raises(IllegalStatusChange):
        check_status_change("on_scene", "available")


def test_unit_types_know_their_agency_and_speed():
    assert T.FIRE_ENGINE.agency is Agency.FIRE
    assert T.AMBULANCE.agency is Agency.MEDICAL
    assert T.PATROL_CAR.agency is Agency.POLICE
    assert all(t.speed_kmh > 0 for t in UnitType)


# --------------------------------------------------------------------------------------------
# Response plans


def test_every_category_has_a_shipped_plan_that_loads():
    plans = load_shipped_plans()
    assert set(plans) == set(Category)
    for category, plan in plans.items():
        assert plan.category == category
        for level in (1, 2, 3, 4):
            level_plan = plan.for_level(level)
            assert level_plan.isolation_units, f"{category} level {level} sends no one"
        # A more severe level never asks for fewer units than the least severe one.
        most = sum(plan.for_level(1).units_for(Stage.handling).values())
        least = sum(plan.for_level(4).units_for(Stage.handling).values())
        assert most > least


def test_shipped_plans_read_as_expected():
    plans = load_shipped_plans()
    fire_i = plans[Category.fire].for_level(1)
    assert fire_i.evacuate and fire_i.evacuation_radius_m >= fire_i.isolation_radius_m
    assert fire_i.units_for(Stage.handling)[T.FIRE_ENGINE] >= 10
    assert T.LADDER_TRUCK in fire_i.handling_units
    assert fire_i.isolation_units[T.PATROL_CAR] >= 4
    medical_iv = plans[Category.medical].for_level(4)
    assert medical_iv.units_for(Stage.handling) == {T.AMBULANCE: 1}


def test_handling_units_come_on_top_of_isolation_units():
    plan = parse_plan(PLAN, "p.yaml").for_level(1)
    assert plan.units_for(Stage.isolation) == {T.PATROL_CAR: 4, T.FIRE_ENGINE: 2}
    assert plan.units_for(Stage.handling) == {T.PATROL_CAR: 4, T.FIRE_ENGINE: 8, T.LADDER_TRUCK: 2}


PLAN = """\
category: fire
version: 3
levels:
  I:
    isolation_radius_m: 400
    evacuate: true
    evacuation_radius_m: 600
    isolation_units: {patrol_car: 4, fire_engine: 2}
    handling_units:
      fire_engine: 6
      ladder_truck: 2
    supplies:
      - {item: blanket, quantity: 200}
    notification_templates:
      sms_broadcast: "Fire at {address}; leave within {evacuation_radius_m} m."
    approval_required: [evacuation]
  II:
    isolation_radius_m: 200
    evacuate: false
    isolation_units: {fire_engine: 2}
  III:
    isolation_radius_m: 100
    evacuate: false
    isolation_units: {fire_engine: 1}
  IV:
    isolation_radius_m: 30
    evacuate: false
    isolation_units: {fire_engine: 1}
"""


def line_of(text: str, fragment: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if fragment in line)


def test_a_good_plan_parses():
    plan = parse_plan(PLAN, "p.yaml")
    assert plan.version == 3
    assert plan.for_level(1).supplies[0].quantity == 200
    assert plan.for_level(2).evacuation_radius_m == 0


@pytest.mark.parametrize(
    ("old", "new", "path", "anchor"),
    [
        # wrong type
        ("isolation_radius_m: 200", "isolation_radius_m: far", "levels.II.isolation_radius_m", "far"),
        (
            "evacuate: false\n    isolation_units: {fire_engine: 2}",
            'evacuate: "no"\n    isolation_units: {fire_engine: 2}',
            "levels.II.evacuate",
            '"no"',
        ),
        # negative count
        ("ladder_truck: 2", "ladder_truck: -2", "levels.I.handling_units.ladder_truck", "ladder_truck: -2"),
        # unknown unit type
        ("ladder_truck: 2", "ladder_lorry: 2", "levels.I.handling_units.ladder_lorry", "ladder_lorry"),
        (
            "{item: blanket, quantity: 200}",
            "{item: blanket, quantity: 0}",
            "levels.I.supplies[0].quantity",
            "quantity: 0",
        ),
        (
            "approval_required: [evacuation]",
            "approval_required: [evacuate]",
            "levels.I.approval_required[0]",
            "approval_required",
        ),
        ("{evacuation_radius_m} m", "{radius} m", "levels.I.notification_templates.sms_broadcast", "{radius}"),
        (
            "evacuation_radius_m: 600",
            "evacuation_radius_m: 0",
            "levels.I.evacuation_radius_m",
            "evacuation_radius_m: 0",
        ),
        ("category: fire", "category: blaze", "category", "blaze"),
        ("version: 3", "version: 3\nowner: someone", "owner", "owner"),
        # missing field: named, with the line of the mapping that lacks it
        ("    isolation_radius_m: 100\n", "", "levels.III.isolation_radius_m", "III:"),
    ],
)
def test_a_malformed_plan_names_the_field_and_line(old, new, path, anchor):
    assert old in PLAN
    text = PLAN.replace(old, new, 1)
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "plans/fire.yaml")
    message = str(caught.value)
    expected_line = line_of(text, anchor)
    assert message.startswith("plans/fire.yaml: ")
    assert f"line {expected_line}: {path}: " in message
    assert caught.value.problems[0].path == path
    assert caught.value.problems[0].line == expected_line
    assert caught.value.status == 422


def test_a_missing_level_is_named():
    text = PLAN[: PLAN.index("  IV:")]
    with pytest.raises(PlanError, match=r"levels\.IV: Field required"):
        parse_plan(text, "p.yaml")


def test_broken_yaml_names_the_line():
    text = PLAN.replace("{patrol_car: 4, fire_engine: 2}", "{patrol_car: 4, fire_engine: 2")
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "p.yaml")
    assert "not valid YAML" in str(caught.value)
    assert f"started at line {line_of(text, 'patrol_car: 4')}" in str(caught.value)


def test_a_key_given_twice_is_refused_with_its_line():
    text = PLAN.replace("      ladder_truck: 2\n", "      ladder_truck: 2\n      fire_engine: 9\n", 1)
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "p.yaml")
    assert str(caught.value) == (
        f"p.yaml: line {line_of(text, 'fire_engine: 9')}: levels.I.handling_units.fire_engine: key appears twice"
    )


def test_an_empty_plan_is_refused():
    with pytest.raises(PlanError, match="empty"):
        parse_plan("", "p.yaml")


def test_level_changes_top_up_or_release():
    assigned = {T.FIRE_ENGINE: 4, T.AMBULANCE: 2, T.PATROL_CAR: 1}
    required = {T.FIRE_ENGINE: 6, T.AMBULANCE: 2, T.LADDER_TRUCK: 1}
    assert units_to_add(assigned, required) == {T.FIRE_ENGINE: 2, T.LADDER_TRUCK: 1}
    assert units_to_release(assigned, required) == {T.PATROL_CAR: 1}
    assert units_to_release(required, assigned) == {T.FIRE_ENGINE: 2, T.LADDER_TRUCK: 1}
    assert units_to_add(required, required) == {} == units_to_release(required, required)


# --------------------------------------------------------------------------------------------
# Recommendation

SITE = (31.2304, 121.4737)  # People's Square, Shanghai
KM_LAT = 1 / 111.195  # degrees of latitude per km


def unit(uid, unit_type, district, km_north, km_east=0.0, status=S.AVAILABLE, exercise=False, borrowed_for=None):
    lat = SITE[0] + km_north * KM_LAT
    lon = SITE[1] + km_east * KM_LAT / math.cos(math.radians(SITE[0]))
    return UnitView(uid, unit_type.agency, unit_type, frozenset(), district, lat, lon, status, exercise, borrowed_for)


def ids(result):
    return [r.unit_id for r in result.recommendations]


def test_straight_line_estimate():
    est = StraightLineEstimator(road_factor=1.4)
    eta = est.eta_s(SITE[0] + KM_LAT, SITE[1], SITE[0], SITE[1], T.FIRE_ENGINE)
    assert eta == pytest.approx(1400 / (40 / 3.6), rel=1e-3)


def test_nearest_first_with_reasons():
    units = [
        unit("far", T.FIRE_ENGINE, "Xuhui", 5),
        unit("near", T.FIRE_ENGINE, "Huangpu", 1),
        unit("mid", T.FIRE_ENGINE, "Jingan", -3),
    ]
    result = recommend({T.FIRE_ENGINE: 2}, *SITE, 3, False, units)
    assert ids(result) == ["near", "mid"]
    first, second = result.recommendations
    assert first.eta_s < second.eta_s
    assert first.distance_m == pytest.approx(1000, rel=1e-3)
    assert first.reason == f"nearest available fire_engine, ETA {first.eta_s / 60:.1f} min, district Huangpu keeps 0"
    assert second.reason.startswith("2nd nearest available fire_engine")
    assert result.complete


def test_only_available_units_are_taken():
    units = [unit(f"u-{s}", T.AMBULANCE, "Huangpu", 1, status=s) for s in UnitStatus if s != S.AVAILABLE]
    units.append(unit("free", T.AMBULANCE, "Huangpu", 9))
    assert ids(recommend({T.AMBULANCE: 3}, *SITE, 2, False, units)) == ["free"]


def test_district_cover_is_kept():
    units = [
        unit("hp-1", T.FIRE_ENGINE, "Huangpu", 1),
        unit("hp-2", T.FIRE_ENGINE, "Huangpu", 1.5),
        unit("xh-1", T.FIRE_ENGINE, "Xuhui", 6),
        unit("xh-2", T.FIRE_ENGINE, "Xuhui", 7),
    ]
    result = recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False, units, min_cover=1)
    assert ids(result) == ["hp-1", "xh-1"]
    assert "district Huangpu keeps 1 of its minimum 1" in result.recommendations[0].reason
    assert not any(r.strips_cover for r in result.recommendations)


def test_cover_per_district_and_type():
    units = [
        unit("hp-1", T.FIRE_ENGINE, "Huangpu", 1),
        unit("hp-2", T.FIRE_ENGINE, "Huangpu", 1.5),
        unit("xh-1", T.FIRE_ENGINE, "Xuhui", 6),
    ]
    cover = {"Huangpu": {T.FIRE_ENGINE: 0}, "Xuhui": {T.FIRE_ENGINE: 1}}
    result = recommend({T.FIRE_ENGINE: 3}, *SITE, 2, False, units, min_cover=cover)
    assert ids(result) == ["hp-1", "hp-2"]
    assert [s.message for s in result.shortfalls] == [
        "need 3 fire_engine, only 2 available without stripping district Xuhui below cover"
    ]


def test_level_one_strips_cover_and_says_so():
    units = [
        unit("hp-1", T.FIRE_ENGINE, "Huangpu", 1),
        unit("hp-2", T.FIRE_ENGINE, "Huangpu", 1.5),
        unit("xh-1", T.FIRE_ENGINE, "Xuhui", 6),
        unit("xh-2", T.FIRE_ENGINE, "Xuhui", 7),
    ]
    result = recommend({T.FIRE_ENGINE: 2}, *SITE, 1, False, units, min_cover=1)
    assert ids(result) == ["hp-1", "hp-2"]
    first, second = result.recommendations
    assert not first.strips_cover
    assert second.strips_cover
    assert "district Huangpu left with 0 of its minimum 1: cover stripped for a level I incident" in second.reason


def test_shortfall_when_cover_holds_units_back():
    units = [
        unit("a-1", T.LADDER_TRUCK, "Huangpu", 1),
        unit("a-2", T.LADDER_TRUCK, "Huangpu", 2),
        unit("b-1", T.LADDER_TRUCK, "Xuhui", 3),
    ]
    result = recommend({T.LADDER_TRUCK: 3, T.AMBULANCE: 1}, *SITE, 2, False, units, min_cover=1)
    assert ids(result) == ["a-1"]
    assert [str(s) for s in result.shortfalls] == [
        "need 3 ladder_truck, only 1 available without stripping districts Huangpu, Xuhui below cover",
        "need 1 ambulance, only 0 available",
    ]
    ladder = result.shortfalls[0]
    assert (ladder.needed, ladder.found, ladder.held_by_cover) == (3, 1, ("Huangpu", "Xuhui"))
    assert not result.complete


def test_live_incident_never_takes_exercise_units():
    units = [unit("drill", T.AMBULANCE, "Huangpu", 0.5, exercise=True), unit("live", T.AMBULANCE, "Huangpu", 8)]
    assert ids(recommend({T.AMBULANCE: 2}, *SITE, 1, False, units, borrowed_ids=["drill"])) == ["live"]


def test_exercise_incident_takes_only_exercise_units():
    units = [unit("live", T.AMBULANCE, "Huangpu", 0.5), unit("drill", T.AMBULANCE, "Huangpu", 8, exercise=True)]
    result = recommend({T.AMBULANCE: 2}, *SITE, 1, True, units)
    assert ids(result) == ["drill"]
    assert result.shortfalls[0].message == (
        "need 2 ambulance, only 1 available among exercise units and borrowed live units"
    )


def test_exercise_incident_takes_live_units_it_borrows():
    units = [
        unit("live-1", T.AMBULANCE, "Huangpu", 0.5, borrowed_for="drill-7"),
        unit("live-2", T.AMBULANCE, "Huangpu", 0.6),
        unit("drill", T.AMBULANCE, "Xuhui", 8, exercise=True),
    ]
    result = recommend({T.AMBULANCE: 3}, *SITE, 3, True, units, borrowed_ids=["live-1"])
    assert ids(result) == ["live-1", "drill"]
    lent = result.recommendations[0]
    assert lent.borrowed
    assert "live unit lent to the exercise drill-7" in lent.reason
    assert not result.recommendations[1].borrowed


def test_a_borrowed_live_unit_never_strips_live_cover():
    units = [
        unit("live-1", T.AMBULANCE, "Huangpu", 0.5),
        unit("drill-1", T.AMBULANCE, "Xuhui", 5, exercise=True),
        unit("drill-2", T.AMBULANCE, "Xuhui", 6, exercise=True),
    ]
    result = recommend({T.AMBULANCE: 2}, *SITE, 1, True, units, min_cover=1, borrowed_ids=["live-1"])
    # Level I may strip the exercise pool's cover, but not the city's live cover.
    assert ids(result) == ["drill-1", "drill-2"]
    assert result.recommendations[1].strips_cover


def test_bad_location_is_refused():
    with pytest.raises(InvalidLocation):
        UnitView("x", Agency.MEDICAL, T.AMBULANCE, frozenset(), "Huangpu", 91.0, 0.0, S.AVAILABLE)
    with pytest.raises(InvalidLocation):
        recommend({T.AMBULANCE: 1}, 0.0, 181.0, 2, False, [])


def test_index_follows_status_and_location_changes():
    index = UnitIndex()
    index.upsert(unit("a", T.FIRE_ENGINE, "Huangpu", 1))
    index.upsert(unit("b", T.FIRE_ENGINE, "Huangpu", 4))
    assert index.available_count(T.FIRE_ENGINE, "Huangpu") == 2
    assert ids(index.recommend({T.FIRE_ENGINE: 1}, *SITE, 2, False)) == ["a"]

    index.upsert(unit("a", T.FIRE_ENGINE, "Huangpu", 1, status=S.ASSIGNED))
    assert index.available_count(T.FIRE_ENGINE, "Huangpu") == 1
    assert ids(index.recommend({T.FIRE_ENGINE: 1}, *SITE, 2, False)) == ["b"]

    index.upsert(unit("a", T.FIRE_ENGINE, "Huangpu", 9))  # back, further away
    index.upsert(unit("b", T.FIRE_ENGINE, "Xuhui", 20, 20))  # moved and rehomed
    assert ids(index.recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False)) == ["a", "b"]
    assert index.available_count(T.FIRE_ENGINE, "Huangpu") == 1

    assert index.remove("a") is not None
    assert index.remove("a") is None
    assert ids(index.recommend({T.FIRE_ENGINE: 2}, *SITE, 2, False)) == ["b"]
    assert len(index) == 1


def brute_force(requirement, lat, lon, level, exercise, units, cover, borrowed=()):
    """The rules applied literally over every unit, to check the index against."""
    est = StraightLineEstimator()
    picked = {}
    for unit_type, needed in requirement.items():
        pool = [
            u
            for u in units
            if u.unit_type is unit_type
            and u.status is S.AVAILABLE
            and (u.exercise == exercise or (exercise and u.id in borrowed))
        ]
        available = {}
        for u in units:
            if u.unit_type is unit_type and u.status is S.AVAILABLE:
                available[(u.exercise, u.district)] = available.get((u.exercise, u.district), 0) + 1
        ranked = sorted(pool, key=lambda u: (est.eta_s(u.lat, u.lon, lat, lon, unit_type), u.id))
        taken, chosen = {}, []
        for u in ranked:
            k = (u.exercise, u.district)
            left = available[k] - taken.get(k, 0) - 1
            if left < cover and not (level == 1 and u.exercise == exercise):
                continue
            taken[k] = taken.get(k, 0) + 1
            chosen.append(u.id)
            if len(chosen) == needed:
                break
        picked[unit_type] = chosen
    return picked


@pytest.mark.parametrize("seed", range(6))
def test_index_agrees_with_the_rules_applied_to_every_unit(seed):
    rng = random.Random(seed)
    districts = [f"D{i}" for i in range(12)]
    weights = {T.FIRE_ENGINE: 30, T.AMBULANCE: 30, T.PATROL_CAR: 40, T.LADDER_TRUCK: 6, T.HAZMAT_TEAM: 1}
    kinds = list(weights)
    units = []
    for i in range(1500):
        unit_type = rng.choices(kinds, weights=[weights[k] for k in kinds])[0]
        status = S.AVAILABLE if rng.random() < 0.8 else rng.choice(list(UnitStatus))
        units.append(
            unit(
                f"u{i:04d}",
                unit_type,
                rng.choice(districts),
                rng.uniform(-25, 25),
                rng.uniform(-25, 25),
                status=status,
                exercise=rng.random() < 0.2,
            )
        )
    index = UnitIndex(cell_m=rng.choice([500.0, 2000.0, 5000.0]))
    for u in units:
        index.upsert(u)
    requirement = {T.FIRE_ENGINE: 4, T.LADDER_TRUCK: 2, T.AMBULANCE: 3, T.PATROL_CAR: 4, T.HAZMAT_TEAM: 2}
    borrowed = [u.id for u in rng.sample(units, 200) if not u.exercise]
    for _ in range(25):
        # Mostly inside the city, sometimes far outside it.
        reach = 30 if rng.random() < 0.8 else 400
        lat = SITE[0] + rng.uniform(-reach, reach) * KM_LAT
        lon = SITE[1] + rng.uniform(-reach, reach) * KM_LAT
        level = rng.choice([1, 2, 3, 4])
        exercise = rng.random() < 0.3
        cover = rng.choice([0, 1, 2])
        expected = brute_force(requirement, lat, lon, level, exercise, units, cover, borrowed if exercise else ())
        got = index.recommend(requirement, lat, lon, level, exercise, min_cover=cover, borrowed_ids=borrowed)
        by_type = {t: [r.unit_id for r in got.recommendations if r.unit_type is t] for t in requirement}
        assert by_type == expected
        for s in got.shortfalls:
            assert s.found == len(expected[s.unit_type]) < requirement[s.unit_type]
