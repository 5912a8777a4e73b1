"""shelter-registry's pure rules: the shelter and registration machines over every pair, capacity
from area (GB 21734-2008), placing households whole nearest first, opening standby shelters for an
evacuation, PRC ID numbers (GB 11643-1999) and phones, fingerprints and masks."""

from __future__ import annotations

import itertools

import pytest

from ecs.errors import Conflict, IllegalTransition, InvalidInput
from shelter_registry.domain import (
    CHECKS_IN,
    HOLDS_PLACE,
    REGISTRATION_TRANSITIONS,
    TRANSITIONS,
    Needs,
    RegistrationAction,
    RegistrationStatus,
    Room,
    ShelterAction,
    ShelterStatus,
    capacity_from_area,
    choose_shelter,
    effective_capacity,
    estimate_evacuees,
    expected_evacuees,
    id_check_character,
    mask_id_number,
    mask_name,
    mask_phone,
    nearest_first,
    next_registration_status,
    next_status,
    normalise_id_number,
    normalise_name,
    normalise_phone,
    place_households,
    protect,
    refuse_household,
    shelters_to_open,
    shown_status,
    split_household,
    walking_time_s,
)

S, A = ShelterStatus, ShelterAction
P = (31.2304, 121.4737)  # People's Square
KM = 1 / 111.2

# The machine as the issue states it, written out independently of TRANSITIONS.
EXPECTED = {
    (S.planned, A.make_ready): S.standby,
    (S.closed, A.make_ready): S.standby,
    (S.standby, A.open): S.open,
    (S.closing, A.open): S.open,
    (S.out_of_service, A.open): S.open,
    (S.open, A.begin_closing): S.closing,
    (S.full, A.begin_closing): S.closing,
    (S.out_of_service, A.begin_closing): S.closing,
    (S.closing, A.close): S.closed,
    (S.standby, A.take_out_of_service): S.out_of_service,
    (S.open, A.take_out_of_service): S.out_of_service,
    (S.full, A.take_out_of_service): S.out_of_service,
    (S.closing, A.take_out_of_service): S.out_of_service,
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(S, A)))
def test_every_status_and_action(status, action):
    if (status, action) in EXPECTED:
        assert next_status(status, action) is EXPECTED[(status, action)]
    else:
        with pytest.raises(IllegalTransition) as exc:
            next_status(status, action)
        allowed = sorted(a.value for (s, a) in EXPECTED if s is status)
        assert exc.value.extra["allowed"] == allowed
        assert status.value in exc.value.detail


def test_the_table_is_the_machine():
    assert TRANSITIONS == EXPECTED


def test_full_behaves_as_open_for_every_action():
    for action in A:
        assert TRANSITIONS.get((S.full, action)) == TRANSITIONS.get((S.open, action)) or action is A.open


@pytest.mark.parametrize("occupied", [1, 250])
def test_a_shelter_with_people_in_it_does_not_close_and_the_refusal_counts_them(occupied):
    with pytest.raises(IllegalTransition) as exc:
        next_status(S.closing, A.close, occupied)
    assert exc.value.extra["occupied"] == occupied
    assert f"{occupied} people" in exc.value.detail
    assert next_status(S.closing, A.close, 0) is S.closed


def test_only_an_open_or_closing_shelter_checks_people_in():
    assert {S.open, S.closing} == CHECKS_IN
    assert S.out_of_service not in CHECKS_IN and S.closed not in CHECKS_IN


def test_full_is_derived_from_the_occupancy():
    assert shown_status(S.open, 100, 100) is S.full
    assert shown_status(S.open, 99, 100) is S.open
    assert shown_status(S.closing, 100, 100) is S.closing


# --- capacity (GB 21734-2008 §5.4) ---------------------------------------------------------------


def test_capacity_is_the_area_over_one_and_a_half_square_metres_a_person_rounded_down():
    assert capacity_from_area(3000) == 2000
    assert capacity_from_area(3001) == 2000
    assert capacity_from_area(1.5) == 1
    assert capacity_from_area(1.4) == 0
    assert capacity_from_area(2000, 2.0) == 1000


def test_a_hand_set_capacity_may_be_lower_but_never_higher_than_the_area_allows():
    assert effective_capacity(3000, 1.5, None) == 2000
    assert effective_capacity(3000, 1.5, 1200) == 1200
    with pytest.raises(InvalidInput) as exc:
        effective_capacity(3000, 1.5, 2001)
    assert exc.value.extra["field"] == "capacity"
    assert "2000" in exc.value.detail


# --- placing households ------------------------------------------------------------------------


def room(sid: str, km_east: float, free: int, accessible: int = 0, pets: int = 0) -> Room:
    return Room(sid, P[0], P[1] + km_east * KM * 1.17, free, accessible, pets)


def test_walking_time_grows_with_distance():
    assert walking_time_s(*P, *P) == 0
    one = walking_time_s(P[0], P[1], P[0] + KM, P[1])
    assert 1000 < one < 1200  # 1 km × 1.3 at 1.2 m/s ≈ 1083 s


def test_a_household_goes_whole_to_the_nearest_shelter_that_takes_all_its_needs():
    rooms = nearest_first([room("far", 5, 100, 5, 5), room("near", 1, 100, 0, 0), room("mid", 2, 3, 5, 5)], *P)
    assert [r.shelter_id for r in rooms] == ["near", "mid", "far"]
    family = Needs(4, wheelchairs=1, pets=1)
    assert choose_shelter(rooms, family).shelter_id == "far"  # near: no accessible place; mid: 3 places
    assert choose_shelter(rooms, Needs(3)).shelter_id == "near"
    assert choose_shelter(rooms, Needs(101)) is None


def test_the_refusal_names_the_largest_household_one_shelter_could_take_with_the_same_needs():
    rooms = [room("a", 1, 40, 0, 0), room("b", 2, 12, 2, 1), room("c", 3, 30, 1, 0)]
    err = refuse_household(rooms, Needs(50, wheelchairs=1, pets=1))
    assert isinstance(err, Conflict)
    assert err.extra["largest_household"] == 12
    assert refuse_household(rooms, Needs(50)).extra["largest_household"] == 40
    assert refuse_household([], Needs(2)).extra["largest_household"] == 0


def test_a_batch_fills_the_nearest_first_keeps_households_whole_and_sums_per_shelter():
    rooms = [room("near", 1, 10, 1, 1), room("far", 3, 100, 10, 10)]
    households = [Needs(4), Needs(4), Needs(4), Needs(2, 1, 1), Needs(1)]
    plan = place_households(rooms, *P, households)
    assert plan.placed == ["near", "near", "far", "near", "far"]
    assert plan.taken == {"near": Needs(10, 1, 1), "far": Needs(5, 0, 0)}
    for r in rooms:  # no shelter is given more than it has
        t = plan.taken.get(r.shelter_id)
        assert t is None or (t.people <= r.free and t.wheelchairs <= r.accessible_free and t.pets <= r.pet_free)


def test_a_batch_leaves_out_a_household_nobody_takes_rather_than_split_it():
    plan = place_households([room("a", 1, 3), room("b", 2, 3)], *P, [Needs(5), Needs(3)])
    assert plan.placed == [None, "a"]


def test_a_split_keeps_everyone_and_every_need():
    parts = split_household(Needs(5, 2, 1), 2)
    assert sum(p.people for p in parts) == 5
    assert sum(p.wheelchairs for p in parts) == 2
    assert sum(p.pets for p in parts) == 1
    assert all(p.wheelchairs <= p.people for p in parts)
    assert split_household(Needs(1), 3) == [Needs(1)]


def test_needs_refuse_impossible_households():
    for bad in [(0, 0, 0), (2, 3, 0), (1, 0, -1)]:
        with pytest.raises(ValueError):
            Needs(*bad)


def test_standby_shelters_open_nearest_first_until_the_expected_evacuees_fit():
    standby = [room("s3", 3, 500), room("s1", 1, 300), room("s2", 2, 400)]
    assert shelters_to_open(standby, *P, expected=1000, free_now=0) == ["s1", "s2", "s3"]
    assert shelters_to_open(standby, *P, expected=600, free_now=0) == ["s1", "s2"]
    assert shelters_to_open(standby, *P, expected=600, free_now=300) == ["s1"]
    assert shelters_to_open(standby, *P, expected=100, free_now=300) == []


def test_the_estimate_is_the_plans_evacuation_circle_times_the_density_unless_an_operator_set_it():
    assert estimate_evacuees(1000, 1000) == 3142  # pi km² at 1,000 a km², rounded up
    assert estimate_evacuees(300, 500) == 142
    assert estimate_evacuees(0, 4000) == 0
    assert expected_evacuees(None, 300, 500, fallback=7) == 142
    assert expected_evacuees(150, 1000, 500, fallback=7) == 150  # the operator's figure wins
    assert expected_evacuees(0, 1000, 500, fallback=7) == 0  # even when it is 0
    assert expected_evacuees(None, None, 500, fallback=7) == 7  # no radius known yet
    with pytest.raises(ValueError):
        estimate_evacuees(-1, 10)


# --- registrations -----------------------------------------------------------------------------

R, RA = RegistrationStatus, RegistrationAction
EXPECTED_REG = {
    (R.planned, RA.check_in): R.checked_in,
    (R.planned, RA.cancel): R.cancelled,
    (R.planned, RA.move): R.moved,
    (R.checked_in, RA.check_out): R.checked_out,
    (R.checked_in, RA.move): R.moved,
}


@pytest.mark.parametrize(("status", "action"), list(itertools.product(R, RA)))
def test_every_registration_status_and_action(status, action):
    if (status, action) in EXPECTED_REG:
        assert next_registration_status(status, action) is EXPECTED_REG[(status, action)]
    else:
        with pytest.raises(IllegalTransition) as exc:
            next_registration_status(status, action)
        assert exc.value.extra["allowed"] == sorted(a.value for (s, a) in EXPECTED_REG if s is status)


def test_the_registration_table_is_the_machine_and_only_planned_and_checked_in_hold_a_place():
    assert REGISTRATION_TRANSITIONS == EXPECTED_REG
    assert {R.planned, R.checked_in} == HOLDS_PLACE


# --- personal data -----------------------------------------------------------------------------

# GB 11643-1999's own example and numbers built with the check digit of the standard.
VALID_IDS = ["11010519491231002X", "440524188001010014", "310101199003070019"]


@pytest.mark.parametrize("number", VALID_IDS)
def test_valid_resident_id_numbers_pass_with_their_check_character(number):
    assert normalise_id_number(number.lower()) == number
    assert id_check_character(number[:17]) == number[17]


@pytest.mark.parametrize(
    ("number", "why"),
    [
        ("110105194912310021", "check character"),  # the last character changed
        # Full-width digits (Python's \d takes them, and int() reads them): not an ID number as written.
        (
            "\uff11\uff11\uff10\uff11\uff10\uff15\uff11\uff19\uff14\uff19\uff11\uff12\uff13\uff11\uff10\uff10\uff12X",
            "17 digits",
        ),
        ("11010519491231002", "17 digits"),
        ("1101051949123100200", "17 digits"),
        ("11010519491331002X", "birth date"),  # month 13
        ("1101051949A231002X", "17 digits"),
    ],
)
def test_malformed_resident_id_numbers_are_refused_naming_the_field(number, why):
    with pytest.raises(InvalidInput) as exc:
        normalise_id_number(number, "household.persons.0.id_number")
    assert exc.value.extra["field"] == "household.persons.0.id_number"
    assert why in exc.value.detail


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [("13812345678", "13812345678"), ("+86 138-1234-5678", "13812345678"), ("021-63211234", "02163211234")],
)
def test_prc_mobile_and_landline_numbers_are_accepted(raw, normalised):
    assert normalise_phone(raw) == normalised


@pytest.mark.parametrize("raw", ["12812345678", "1381234567", "phone", "+1 415 555 0100", "63211234"])
def test_other_phone_numbers_are_refused_naming_the_field(raw):
    with pytest.raises(InvalidInput) as exc:
        normalise_phone(raw, "phone")
    assert exc.value.extra["field"] == "phone"


def test_fingerprints_are_keyed_and_kind_separated_and_masks_hide_the_middle():
    assert protect("13812345678", b"k1", "phone") == protect("13812345678", b"k1", "phone")
    assert protect("13812345678", b"k1", "phone") != protect("13812345678", b"k2", "phone")
    assert protect("x", b"k1", "name") != protect("x", b"k1", "phone")
    assert mask_phone("13812345678") == "138****5678"
    assert mask_id_number("11010519491231002X") == "110105********002X"
    assert mask_name("欧阳修") == "欧**"
    assert normalise_name("  Wang   Fang ") == normalise_name("wang fang")


# --- edges of each rule ---------------------------------------------------------------------------


def test_capacity_takes_no_negative_area_and_only_a_positive_area_a_person():
    assert capacity_from_area(0) == 0  # an empty plot is a shelter of nobody, not an error
    assert capacity_from_area(0.5) == 0
    assert capacity_from_area(10, 0.5) == 20  # less than 1 m² a person is a figure the caller may give
    for area, per_person in [(-1, 1.5), (10, 0), (10, -1)]:
        with pytest.raises(ValueError, match="^area must be ≥ 0 and the area a person > 0$"):
            capacity_from_area(area, per_person)


def test_a_hand_set_capacity_may_equal_the_area_and_uses_the_given_area_a_person():
    assert effective_capacity(3000, 1.5, 2000) == 2000
    assert effective_capacity(3000, 2.0, None) == 1500
    with pytest.raises(InvalidInput) as exc:
        effective_capacity(3000, 2.0, 1501)
    assert "exceeds the 1500 people" in exc.value.detail


def test_the_estimate_takes_a_density_of_zero_or_below_one_and_refuses_negatives_saying_so():
    assert estimate_evacuees(1000, 0) == 0
    assert estimate_evacuees(1000, 0.5) == 2  # pi × 0.5, rounded up
    for radius, density in [(-1, 10), (100, -0.1)]:
        with pytest.raises(ValueError, match="^radius and density must be ≥ 0$"):
            estimate_evacuees(radius, density)


def test_a_household_of_wheelchair_users_only_is_a_household_and_impossible_ones_are_named():
    assert Needs(2, wheelchairs=2).wheelchairs == 2
    with pytest.raises(ValueError, match="^a household has ≥ 1 person, 0..people wheelchair users and ≥ 0 pets$"):
        Needs(2, wheelchairs=3)


def test_a_room_with_exactly_the_places_needed_fits():
    r = Room("a", *P, free=4, accessible_free=1, pet_free=1)
    assert r.fits(Needs(4, 1, 1))
    assert not r.fits(Needs(5)) and not r.fits(Needs(2, 2)) and not r.fits(Needs(2, 0, 2))


def placed_at(sid: str, km_north: float, km_east: float) -> Room:
    return Room(sid, P[0] + km_north * KM, P[1] + km_east * KM * 1.17, 10, 0, 0)


def test_nearest_first_orders_by_walking_time_in_every_direction():
    rooms = [
        placed_at("north", 1.0, 0),
        placed_at("east", 0, 0.9),
        placed_at("west", 0, -1.05),
        placed_at("south", -1.2, 0),
        placed_at("south-west", -0.2, -0.3),
    ]
    ordered = [r.shelter_id for r in nearest_first(rooms, *P)]
    assert ordered == ["south-west", "east", "north", "west", "south"]
    by_time = sorted(rooms, key=lambda r: walking_time_s(*P, r.lat, r.lon))
    assert ordered == [r.shelter_id for r in by_time]


def test_a_refused_state_change_names_the_state_and_lists_what_is_allowed():
    with pytest.raises(IllegalTransition) as exc:
        next_status(S.open, A.close)
    assert exc.value.extra["shelter_status"] == "open"
    assert "a shelter that is open cannot close; allowed: begin_closing, take_out_of_service" in exc.value.detail


def test_a_refused_registration_step_names_the_state_and_what_is_allowed_or_nothing():
    with pytest.raises(IllegalTransition) as exc:
        next_registration_status(R.planned, RA.check_out)
    assert exc.value.extra["registration_status"] == "planned"
    assert exc.value.detail.endswith("a registration that is planned cannot check_out; allowed: cancel, check_in, move")
    with pytest.raises(IllegalTransition) as exc:
        next_registration_status(R.checked_out, RA.check_in)
    assert exc.value.extra == {"registration_status": "checked_out", "allowed": []}
    assert exc.value.detail.endswith("allowed: nothing")


def test_the_refusal_of_a_household_describes_it():
    err = refuse_household([room("a", 1, 3)], Needs(5, wheelchairs=1, pets=2))
    assert err.detail == (
        "no open shelter takes a household of 5 (1 wheelchair users, 2 pets);"
        " the largest such household one could take is 0"
    )


def test_a_batch_counts_down_accessible_and_pet_places_and_sums_them_per_shelter():
    rooms = [room("near", 1, 20, accessible=1, pets=1), room("far", 3, 20, accessible=5, pets=5)]
    households = [Needs(2, 1, 0), Needs(2, 1, 0), Needs(2, 0, 1), Needs(2, 0, 1), Needs(2, 1, 0)]
    plan = place_households(rooms, *P, households)
    assert plan.placed == ["near", "far", "near", "far", "far"]
    assert plan.taken == {"near": Needs(4, 1, 1), "far": Needs(6, 2, 1)}


def test_a_batch_does_not_take_pet_places_for_wheelchairs():
    rooms = [room("near", 1, 20, accessible=0, pets=3), room("far", 3, 20, accessible=3, pets=0)]
    plan = place_households(rooms, *P, [Needs(1, 1, 0), Needs(1, 0, 1), Needs(1, 0, 1), Needs(1, 0, 1)])
    assert plan.placed == ["far", "near", "near", "near"]
    assert plan.taken == {"far": Needs(1, 1, 0), "near": Needs(3, 0, 3)}


def test_a_shelter_that_took_a_single_person_is_in_the_sums():
    assert place_households([room("a", 1, 5)], *P, [Needs(1)]).taken == {"a": Needs(1)}


def test_a_split_puts_the_pets_and_wheelchair_users_with_the_first_groups():
    assert split_household(Needs(5, 2, 1), 2) == [Needs(3, 2, 1), Needs(2, 0, 0)]
    assert split_household(Needs(5, 4, 2), 3) == [Needs(2, 2, 2), Needs(2, 2, 0), Needs(1, 0, 0)]


def test_the_check_character_needs_exactly_17_digits():
    for wrong in ["1101051949123100", "110105194912310020"]:
        with pytest.raises(ValueError):
            id_check_character(wrong)


def test_an_id_number_with_spaces_and_the_default_field_name():
    assert normalise_id_number(" 110105 19491231 002x ") == "11010519491231002X"
    with pytest.raises(InvalidInput) as exc:
        normalise_id_number("123")
    assert exc.value.extra["field"] == "id_number"


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("310101200002290015", True),  # 29 February 2000: a leap year
        ("310101190002290019", False),  # 29 February 1900: not one
        ("310101194904310013", False),  # 31 April
    ],
)
def test_the_birth_date_is_checked_whole(number, valid):
    if valid:
        assert normalise_id_number(number) == number
    else:
        with pytest.raises(InvalidInput, match="impossible birth date"):
            normalise_id_number(number)


def test_a_name_is_searched_with_single_spaces_and_folded_case():
    assert normalise_name("  Wang   FANG ") == "wang fang"


def test_a_phone_with_the_0086_prefix_and_the_default_field_name():
    assert normalise_phone("0086 138 1234 5678") == "13812345678"
    with pytest.raises(InvalidInput) as exc:
        normalise_phone("12345")
    assert exc.value.extra["field"] == "phone"
    assert "phone is not a PRC mobile or landline number" in exc.value.detail


def test_an_empty_or_one_character_name_shows_no_stars():
    assert mask_name("") == ""
    assert mask_name(" 张 ") == "张"
