"""resource-stockpile's rules: units and packs, which stock may be reserved, nearest first and
FEFO, what a reservation's quantities may do (every bucket × action), the ledger's history, and
what the plan wants at each stage."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from ecs.errors import Conflict, IllegalTransition, InvalidInput
from ecs.vocabulary import Stage
from resource_stockpile.domain import (
    MAX_QUANTITY,
    TRANSITIONS,
    Action,
    Allocation,
    Bucket,
    Candidate,
    Condition,
    Depot,
    Item,
    NegativeBalance,
    PartsShort,
    StockLine,
    Take,
    Topping,
    allocate,
    allocate_many,
    check_history,
    check_item,
    check_kits,
    in_packs,
    move,
    plan_assembly,
    plan_disassembly,
    reconcile,
    reservable,
    settled,
    settled_detail,
    spread,
    to_base,
    travel_s,
)

WATER = Item("drinking_water_bottle", "drinking water", "瓶装饮用水", "bottle", {"case": 24}, "3010101", 365)
TODAY = date(2026, 12, 1)


def line(line_id: int, depot: str, on_hand: int, reserved: int = 0, expiry: date | None = None, **kw) -> StockLine:
    return StockLine(
        line_id,
        depot,
        "stretcher",
        kw.get("lot", f"L{line_id}"),
        expiry,
        kw.get("condition", Condition.good),
        on_hand,
        reserved,
    )


# --- units and packs ---------------------------------------------------------------------------


def test_quantities_in_packs_become_base_units():
    assert to_base(WATER, 3, "case") == 72
    assert to_base(WATER, Decimal("0.5"), "case") == 12
    assert to_base(WATER, 7, None) == 7
    assert to_base(WATER, 7, "bottle") == 7
    assert to_base(WATER, "5.000000000000000000000000000000000000", None) == 5  # trailing zeros: whole
    assert to_base(WATER, "1E+2", None) == 100
    assert to_base(WATER, MAX_QUANTITY, None) == MAX_QUANTITY


@pytest.mark.parametrize(
    ("quantity", "unit", "field", "words"),
    [
        (0, None, "quantity", "greater than 0"),
        (-3, None, "quantity", "greater than 0"),
        (Decimal("1.5"), None, "quantity", "whole number of bottle"),
        (Decimal("0.3"), "case", "quantity", "whole number of bottle"),
        (MAX_QUANTITY + 1, None, "quantity", "more than"),
        (3, "pallet", "unit", "not a unit of drinking_water_bottle"),
        ("nan", None, "quantity", "greater than 0"),
        # Beyond the default decimal context: 28 digits would underflow these to 0 or round them
        # to a whole number, so that they passed as whole (0 then failed in the database: a 500).
        ("1e-999999999", None, "quantity", "whole number of bottle"),
        ("1e-1000030", "case", "quantity", "whole number of bottle"),
        ("1.00000000000000000000000000000001", None, "quantity", "whole number of bottle"),
        ("0.04166666666666666666666666666666667", "case", "quantity", "whole number of bottle"),
        ("1e999999999", None, "quantity", "more than"),
    ],
)
def test_bad_quantities_are_refused_naming_the_field(quantity, unit, field, words):
    with pytest.raises(InvalidInput) as err:
        to_base(WATER, quantity, unit)
    assert err.value.extra["field"] == field
    assert words in err.value.detail


def test_a_line_of_a_document_names_its_own_unit_field():
    with pytest.raises(InvalidInput) as err:
        to_base(WATER, 1, "crate", "lines.2.quantity")
    assert err.value.extra["field"] == "lines.2.unit"


def test_an_operator_sees_both_packs_and_base_units():
    assert in_packs(WATER, 98) == {"case": 4, "bottle": 2}
    assert in_packs(Item("stretcher", "stretcher", "担架", "piece"), 5) == {"piece": 5}


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (Item("x", "x", "x", "piece", gb_code="301"), "gb_code"),
        # Python's \d takes any script's digits: full-width ones were stored as a code.
        (Item("x", "x", "x", "piece", gb_code="\uff11\uff12\uff13\uff14\uff15\uff16\uff17"), "gb_code"),
        (Item("x", "x", "x", "piece", {"piece": 2}), "packs.piece"),
        (Item("x", "x", "x", "piece", {"box": 1}), "packs.box"),
    ],
)
def test_a_bad_catalogue_entry_is_refused(item, field):
    with pytest.raises(InvalidInput) as err:
        check_item(item)
    assert err.value.extra["field"] == field


# --- what may be reserved, and from where ----------------------------------------------------------


@pytest.mark.parametrize(
    ("stock", "ok"),
    [
        (line(1, "A", 5), True),
        (line(1, "A", 5, expiry=TODAY + timedelta(days=30)), True),
        (line(1, "A", 5, expiry=TODAY + timedelta(days=29)), False),
        (line(1, "A", 5, expiry=TODAY - timedelta(days=1)), False),
        (line(1, "A", 5, condition=Condition.damaged), False),
        (line(1, "A", 5, condition=Condition.quarantined), False),
        (line(1, "A", 5, reserved=5), False),
    ],
)
def test_only_good_stock_that_keeps_long_enough_is_reservable(stock, ok):
    assert reservable(stock, TODAY, 30) is ok


def test_nearest_depot_first_then_earliest_expiry_and_split_until_met():
    far = Candidate(line(1, "far", 100), 900.0)
    near_late = Candidate(line(2, "near", 10, expiry=TODAY + timedelta(days=300)), 120.0)
    near_soon = Candidate(line(3, "near", 10, expiry=TODAY + timedelta(days=60)), 120.0)
    near_never = Candidate(line(4, "near", 10), 120.0)
    takes, missing = allocate([far, near_late, near_never, near_soon], 35)
    assert [(t.line_id, t.quantity) for t in takes] == [(3, 10), (2, 10), (4, 10), (1, 5)]
    assert missing == 0


def test_a_partial_allocation_says_what_is_missing():
    takes, missing = allocate([Candidate(line(1, "A", 4, reserved=1), 60.0)], 10)
    assert [(t.line_id, t.quantity) for t in takes] == [(1, 3)]
    assert missing == 7


def test_requests_for_the_same_item_share_its_lines_and_others_get_their_own():
    near = Candidate(line(1, "near", 10, reserved=2), 60.0)
    far = Candidate(line(2, "far", 5), 600.0)
    kit = Candidate(StockLine(3, "near", "first_aid_kit", "K", None, Condition.good, 4, 0), 60.0)
    plans = allocate_many(
        {"stretcher": [far, near], "first_aid_kit": [kit]},
        [("stretcher", 6), ("first_aid_kit", 5), ("stretcher", 6), ("blanket", 1)],
    )
    assert [[(t.line_id, t.quantity) for t in p] for p in plans] == [
        [(1, 6)],
        [(3, 4)],  # one short: nothing else has it
        [(1, 2), (2, 4)],  # what the first left of the nearest line, then the next
        [],  # no line at all
    ]


def test_travel_time_grows_with_distance():
    depot = Depot("A", "A", "huangpu", 31.2304, 121.4737)
    assert travel_s(depot, 31.2304, 121.4737, 1.4, 30) == 0
    one_km = travel_s(depot, 31.2304 + 1 / 111.2, 121.4737, 1.4, 30)
    assert one_km == pytest.approx(1000 * 1.4 / (30 / 3.6), rel=0.01)


# --- a reservation's quantities ------------------------------------------------------------------------


@pytest.mark.parametrize("bucket", list(Bucket))
@pytest.mark.parametrize("action", list(Action))
def test_every_bucket_and_action(bucket, action):
    if (bucket, action) in TRANSITIONS:
        assert move(bucket, action) == TRANSITIONS[(bucket, action)]
    else:
        with pytest.raises(IllegalTransition):
            move(bucket, action)


def test_the_table_is_reserved_issued_then_returned_or_consumed_or_released():
    assert {
        (Bucket.held, Action.issue): Bucket.out,
        (Bucket.held, Action.release): Bucket.released,
        (Bucket.out, Action.return_): Bucket.returned,
        (Bucket.out, Action.consume): Bucket.consumed,
    } == TRANSITIONS


def alloc(i: int, travel: float, held: int, out: int = 0, item: str = "stretcher") -> Allocation:
    return Allocation(i, 1, i, f"D{i}", item, travel, held, out)


def test_an_action_falls_on_the_nearest_allocations_first():
    allocs = [alloc(1, 500.0, 10), alloc(2, 100.0, 4)]
    assert [(a.id, q) for a, q in spread(allocs, Action.issue, 6)] == [(2, 4), (1, 2)]
    assert [(a.id, q) for a, q in spread(allocs, Action.release, None)] == [(2, 4), (1, 10)]


def test_more_than_there_is_is_refused_naming_what_there_is():
    with pytest.raises(Conflict) as err:
        spread([alloc(1, 1.0, 10, out=2)], Action.return_, 3)
    assert err.value.extra["available"] == 2
    with pytest.raises(Conflict):
        spread([alloc(1, 1.0, 0, out=0)], Action.release, None)


def test_settled_when_nothing_is_held_or_out():
    assert settled([])
    assert not settled([alloc(1, 1.0, 0, out=1)])
    assert settled([Allocation(1, 1, 1, "D", "stretcher", 1.0, 0, 0, returned=3, consumed=2, released=5)])
    assert settled_detail([alloc(1, 1.0, 4, out=1), alloc(2, 1.0, 1)]) == "stretcher: 5 held, 1 out"


# --- the ledger's history ------------------------------------------------------------------------------


def at(day: int) -> datetime:
    return datetime(2026, 11, day, 12, tzinfo=UTC)


def test_a_back_dated_issue_that_digs_a_hole_in_the_past_is_refused_with_the_date_and_item():
    history = [(at(1), 10), (at(5), -8), (at(10), 20)]
    check_history(history, at(20), -22, "stretcher", "A")  # 22 on hand now: fine
    with pytest.raises(NegativeBalance) as err:
        check_history(history, at(3), -5, "stretcher", "A")  # 10 then, but 2 left on the 5th
    assert err.value.extra == {"item": "stretcher", "depot_id": "A", "date": "2026-11-05"}
    assert "would fall to -3" in err.value.detail


def test_a_receipt_never_needs_the_history():
    check_history([], at(1), 5, "stretcher", "A")


# --- what the plan wants at each stage ---------------------------------------------------------------


@pytest.mark.parametrize("stage", list(Stage))
def test_reconcile_over_every_stage(stage):
    wanted = {"stretcher": 40, "blanket": 10}
    holding = {"stretcher": (30, 5), "crowd_barrier": (8, 0)}
    got = reconcile(stage, wanted, holding)
    if stage in (Stage.handling, Stage.opinion_control):
        assert got == [
            Topping("blanket", add=10),
            Topping("crowd_barrier", release=8),
            Topping("stretcher", add=5),
        ]
    elif stage in (Stage.aftermath, Stage.closed, Stage.cancelled):
        assert got == [Topping("crowd_barrier", release=8), Topping("stretcher", release=30)]
    else:
        assert got == []


def test_what_was_asked_for_and_not_got_is_not_asked_for_again():
    # The plan wants 80; 15 were got, 65 were missing: a repeat of the event asks nothing more.
    assert reconcile(Stage.handling, {"first_aid_kit": 80}, {"first_aid_kit": (15, 0)}, {"first_aid_kit": 65}) == []
    # A raise to 200 asks for the 120 more only, once.
    assert reconcile(Stage.handling, {"first_aid_kit": 200}, {"first_aid_kit": (15, 0)}, {"first_aid_kit": 65}) == [
        Topping("first_aid_kit", add=120)
    ]
    # Missing stock is not held: a lowering releases only what is held beyond the plan.
    assert reconcile(Stage.handling, {"first_aid_kit": 10}, {"first_aid_kit": (15, 0)}, {"first_aid_kit": 65}) == [
        Topping("first_aid_kit", release=5)
    ]
    # An item missing whole (nothing got) is not asked for again either.
    assert reconcile(Stage.handling, {"loudspeaker": 25}, {}, {"loudspeaker": 25}) == []


def test_a_lower_level_releases_only_what_is_still_held():
    assert reconcile(Stage.handling, {"stretcher": 10}, {"stretcher": (5, 20)}) == [Topping("stretcher", release=5)]
    assert reconcile(Stage.handling, {"stretcher": 10}, {"stretcher": (0, 20)}) == []


def test_below_a_minimum_only_when_there_is_one():
    from resource_stockpile.domain import is_below

    assert is_below(9, 10) and not is_below(10, 10) and not is_below(11, 10)
    assert not is_below(0, 0)  # no minimum: never below


def test_the_expiry_horizon_counts_days_from_today():
    from resource_stockpile.domain import expiry_horizon

    assert expiry_horizon(date(2026, 12, 1), 60) == date(2027, 1, 30)
    assert expiry_horizon(date(2026, 12, 1), -5) == date(2026, 12, 1)


# --- kits ------------------------------------------------------------------------------------------

KIT = Item("trauma_kit", "trauma kit", "创伤急救包", "kit", kit_of={"bandage": 2, "tourniquet": 1})
PART_ITEMS = {c: Item(c, c, c, "piece") for c in ("bandage", "tourniquet")}


def part(line_id: int, item: str, on_hand: int, expiry: date | None = None, **kw) -> StockLine:
    return StockLine(
        line_id, "A", item, f"L{line_id}", expiry, kw.get("condition", Condition.good), on_hand, kw.get("reserved", 0)
    )


def test_an_assembly_takes_parts_fefo_from_good_unexpired_stock_and_the_kit_gets_the_earliest_expiry():
    stock = [
        part(1, "bandage", 10, TODAY + timedelta(days=300)),
        part(2, "bandage", 3, TODAY + timedelta(days=20), reserved=1),
        part(3, "bandage", 50, TODAY - timedelta(days=1)),  # expired
        part(4, "bandage", 50, condition=Condition.damaged),
        part(5, "tourniquet", 9),
    ]
    takes, expiry = plan_assembly(KIT, 4, "A", stock, TODAY)
    assert [(x.id, q) for x, q in takes] == [(2, 2), (1, 6), (5, 4)]
    assert expiry == TODAY + timedelta(days=20)


def test_not_enough_parts_names_every_short_part_and_the_depot():
    with pytest.raises(PartsShort) as refused:
        plan_assembly(KIT, 10, "A", [part(1, "bandage", 15), part(5, "tourniquet", 9)], TODAY)
    assert refused.value.extra == {"depot_id": "A", "part": "bandage", "short": {"bandage": 5, "tourniquet": 1}}
    assert refused.value.status == 409


def test_a_disassembly_takes_kits_not_reserved_earliest_expiry_first():
    kits = [
        StockLine(7, "A", "trauma_kit", "A1", TODAY + timedelta(days=99), Condition.good, 3, 3),
        StockLine(8, "A", "trauma_kit", "A2", TODAY + timedelta(days=50), Condition.good, 2, 0),
        StockLine(9, "A", "trauma_kit", "A3", None, Condition.good, 5, 0),
    ]
    takes, expiry = plan_disassembly(KIT, 4, "A", kits)
    assert [(x.id, q) for x, q in takes] == [(8, 2), (9, 2)]
    assert expiry == TODAY + timedelta(days=50)
    with pytest.raises(PartsShort):
        plan_disassembly(KIT, 8, "A", kits)


@pytest.mark.parametrize(
    ("new", "field"),
    [
        ([Item("k", "k", "k", "kit", kit_of={"k": 1})], "items.0.kit_of.k"),
        (
            [Item("a", "a", "a", "kit", kit_of={"b": 1}), Item("b", "b", "b", "kit", kit_of={"c": 1})],
            "items.0.kit_of.b",  # a contains itself through b
        ),
        ([Item("x", "x", "x", "kit", kit_of={"ghost": 1})], "items.0.kit_of.ghost"),
        ([Item("x", "x", "x", "kit", kit_of={"bandage": 0})], "items.0.kit_of.bandage"),
    ],
)
def test_a_kit_containing_itself_an_unknown_part_or_a_part_below_one_is_refused(new, field):
    # c is a kit in the catalogue already, containing a: a -> b -> c -> a.
    known = {**PART_ITEMS, "c": Item("c", "c", "c", "kit", kit_of={"a": 1})}
    with pytest.raises(InvalidInput) as refused:
        check_kits(new, known)
    assert refused.value.extra["field"] == field


def test_kits_of_kits_are_fine():
    team_pack = Item("team_pack", "t", "t", "pack", kit_of={"trauma_kit": 3, "bandage": 1})
    assert check_kits([team_pack], {**PART_ITEMS, "trauma_kit": KIT}) is None  # refusing raises


def test_a_catalogue_of_many_kits_of_kits_is_walked_once_and_a_deep_circle_still_found():
    # 1,000 kits, each made of the 100 before it: fine (each kit explored once, not per kit).
    plain = Item("k0", "k0", "k0", "piece")
    kits = [
        Item(f"k{i}", "k", "k", "kit", kit_of={f"k{j}": 1 for j in range(max(0, i - 100), i)}) for i in range(1, 1001)
    ]
    assert check_kits(kits, {"k0": plain}) is None
    # The first of them made of the last closes a circle through all of them.
    kits[0] = Item("k1", "k", "k", "kit", kit_of={"k0": 1, "k1000": 1})
    with pytest.raises(InvalidInput) as refused:
        check_kits(kits, {"k0": plain})
    assert refused.value.extra["field"].startswith("items.") and "contains itself" in str(refused.value)


# --- the edges of each rule -------------------------------------------------------------------------


def test_a_good_catalogue_entry_passes_with_packs_from_2_to_the_largest_quantity():
    assert check_item(WATER) is None  # refusing raises
    assert check_item(Item("x", "x", "x", "piece", {"pair": 2, "container": MAX_QUANTITY})) is None


def test_a_bad_catalogue_entry_says_what_is_wrong():
    with pytest.raises(InvalidInput) as err:
        check_item(Item("x", "x", "x", "piece", gb_code="301"))
    assert err.value.detail == "gb_code must be 7 digits (GB/T 38565-2020)"
    with pytest.raises(InvalidInput) as err:
        check_item(Item("x", "x", "x", "piece", {"piece": 2}))
    assert err.value.detail == "pack 'piece' has the base unit's name"
    with pytest.raises(InvalidInput) as err:
        check_item(Item("x", "x", "x", "piece", {"box": MAX_QUANTITY + 1}))
    assert err.value.extra["field"] == "packs.box"
    assert err.value.detail == f"pack 'box' must hold a whole number of piece from 2 to {MAX_QUANTITY}"


@pytest.mark.parametrize("q", [True, 1.5, 0, MAX_QUANTITY + 1])
def test_a_kit_part_is_a_whole_number_of_base_units_from_1_to_the_largest_quantity(q):
    with pytest.raises(InvalidInput) as refused:
        check_kits([Item("k", "k", "k", "kit", kit_of={"bandage": q})], PART_ITEMS)
    assert refused.value.extra["field"] == "items.0.kit_of.bandage"
    assert refused.value.detail == f"kit k: part bandage must be a whole number of base units from 1 to {MAX_QUANTITY}"


def test_a_kit_of_the_largest_quantity_of_a_part_is_fine_and_an_unknown_part_is_named():
    assert check_kits([Item("k", "k", "k", "kit", kit_of={"bandage": MAX_QUANTITY})], PART_ITEMS) is None
    with pytest.raises(InvalidInput) as refused:
        check_kits([Item("k", "k", "k", "kit", kit_of={"ghost": 1})], PART_ITEMS)
    assert refused.value.detail == "kit k: part ghost is not in the catalogue"


def test_every_new_kit_is_checked_even_after_one_already_walked():
    new = [
        Item("x", "x", "x", "kit", kit_of={"y": 1}),
        Item("y", "y", "y", "kit", kit_of={"bandage": 1}),  # walked through x already
        Item("z", "z", "z", "kit", kit_of={"z": 1}),
    ]
    with pytest.raises(InvalidInput) as refused:
        check_kits(new, PART_ITEMS)
    assert refused.value.extra["field"] == "items.2.kit_of.z"
    assert refused.value.detail == "kit z lists itself as a part"


def test_parts_short_says_which_depot_and_by_how_much():
    with pytest.raises(PartsShort) as refused:
        plan_assembly(KIT, 10, "A", [part(1, "bandage", 15), part(5, "tourniquet", 9)], TODAY)
    assert refused.value.detail == (
        "depot A has too little good, unexpired stock for 10 trauma_kit: bandage short by 5, tourniquet short by 1"
    )


def test_an_assembly_takes_a_last_unit_and_what_expires_today_and_skips_what_is_all_reserved():
    stock = [
        part(1, "bandage", 5, TODAY, reserved=5),  # nothing available
        part(2, "bandage", 1, TODAY),  # one left, expiring today: still good today
        part(3, "bandage", 2, TODAY + timedelta(days=10)),
        part(4, "bandage", 9, TODAY + timedelta(days=20)),  # not needed
        part(5, "tourniquet", 2),
        part(6, "tourniquet", 9),  # not needed
    ]
    takes, expiry = plan_assembly(KIT, 1, "A", stock, TODAY)
    assert [(x.id, q) for x, q in takes] == [(2, 1), (3, 1), (5, 1)]
    assert expiry == TODAY
    takes, _ = plan_assembly(KIT, 2, "A", stock, TODAY)
    assert [(x.id, q) for x, q in takes] == [(2, 1), (3, 2), (4, 1), (5, 2)]


def test_an_assembly_of_parts_that_never_expire_gives_kits_that_never_expire():
    takes, expiry = plan_assembly(KIT, 1, "A", [part(1, "bandage", 2), part(5, "tourniquet", 1)], TODAY)
    assert [(x.id, q) for x, q in takes] == [(1, 2), (5, 1)]
    assert expiry is None


def test_an_assembly_with_a_part_never_stocked_names_it_short():
    with pytest.raises(PartsShort) as refused:
        plan_assembly(KIT, 3, "A", [part(1, "bandage", 10)], TODAY)
    assert refused.value.extra["short"] == {"tourniquet": 3}


def kit_line(line_id: int, on_hand: int, reserved: int = 0, expiry: date | None = None) -> StockLine:
    return StockLine(line_id, "A", "trauma_kit", f"K{line_id}", expiry, Condition.good, on_hand, reserved)


def test_a_disassembly_takes_a_last_kit_stops_when_met_and_names_what_is_short():
    kits = [kit_line(1, 1, expiry=TODAY), kit_line(2, 2), kit_line(3, 4, reserved=4), kit_line(4, 5)]
    takes, expiry = plan_disassembly(KIT, 2, "A", kits)
    assert [(x.id, q) for x, q in takes] == [(1, 1), (2, 1)]
    assert expiry == TODAY
    takes, expiry = plan_disassembly(KIT, 3, "A", kits[1:])
    assert [(x.id, q) for x, q in takes] == [(2, 2), (4, 1)]
    assert expiry is None
    with pytest.raises(PartsShort) as refused:
        plan_disassembly(KIT, 9, "B", kits)
    assert refused.value.extra == {"depot_id": "B", "part": "trauma_kit", "short": {"trauma_kit": 1}}
    assert refused.value.detail == (
        "depot B has too little good, unexpired stock for 9 trauma_kit: trauma_kit short by 1"
    )


def test_a_quantity_that_is_not_a_number_or_a_unit_that_is_not_the_items_is_refused_saying_so():
    with pytest.raises(InvalidInput) as err:
        to_base(WATER, "a dozen", None)
    assert err.value.detail == "quantity must be a number"
    assert err.value.extra == {"field": "quantity"}
    with pytest.raises(InvalidInput) as err:
        to_base(WATER, 3, "pallet")
    assert err.value.detail == "'pallet' is not a unit of drinking_water_bottle; one of: bottle, case"
    assert err.value.extra == {"field": "unit", "item": "drinking_water_bottle"}
    with pytest.raises(InvalidInput) as err:
        to_base(WATER, Decimal("1.5"), None)
    assert err.value.detail == "quantity must be a whole number of bottle (1.5 bottle is not)"


def test_the_largest_quantity_itself_is_allowed():
    assert to_base(WATER, MAX_QUANTITY, None) == MAX_QUANTITY


def test_packs_are_counted_in_the_largest_pack_whatever_its_name():
    item = Item("water", "water", "水", "bottle", {"case": 24, "pack": 6})
    assert in_packs(item, 98) == {"case": 4, "bottle": 2}


def test_a_last_unit_is_reservable_and_with_no_shelf_life_asked_so_is_what_expires_today():
    assert reservable(line(1, "A", 5, reserved=4), TODAY, 30)
    assert reservable(line(1, "A", 5, expiry=TODAY), TODAY, 0)
    assert not reservable(line(1, "A", 5, expiry=TODAY - timedelta(days=1)), TODAY, 0)


def test_travel_times_equal_to_the_millisecond_are_one_distance_and_the_depot_decides():
    b = Candidate(line(1, "B", 10), 100.0001)
    a = Candidate(line(2, "A", 10), 100.0002)
    takes, _ = allocate([b, a], 5)
    assert [t.depot_id for t in takes] == ["A"]
    nearer = Candidate(line(3, "Z", 10), 100.2)
    farther = Candidate(line(4, "Y", 10), 100.4)
    takes, _ = allocate([farther, nearer], 5)
    assert [t.depot_id for t in takes] == ["Z"]


def test_an_allocation_takes_a_last_unit_stops_when_met_and_skips_empty_lines():
    empty = Candidate(line(1, "A", 4, reserved=4), 10.0)
    one = Candidate(line(2, "A", 1), 20.0)
    more = Candidate(line(3, "B", 5), 30.0)
    spare = Candidate(line(4, "C", 5), 40.0)
    takes, missing = allocate([spare, more, one, empty], 6)
    assert takes == [Take(2, "A", 1, 20.0), Take(3, "B", 5, 30.0)]
    assert missing == 0


def test_requests_for_one_line_count_it_down_across_every_request():
    only = Candidate(line(1, "A", 10), 60.0)
    other = Candidate(line(2, "B", 5), 90.0)
    plans = allocate_many({"stretcher": [other, only]}, [("stretcher", 4), ("stretcher", 4), ("stretcher", 4)])
    assert plans == [
        [Take(1, "A", 4, 60.0)],
        [Take(1, "A", 4, 60.0)],
        [Take(1, "A", 2, 60.0), Take(2, "B", 2, 90.0)],
    ]


def test_a_request_after_a_line_was_used_up_skips_it_and_takes_a_last_unit():
    first = Candidate(line(1, "A", 3), 60.0)
    last = Candidate(line(2, "B", 1), 90.0)
    spare = Candidate(line(3, "C", 5), 120.0)
    plans = allocate_many({"stretcher": [first, last, spare]}, [("stretcher", 3), ("stretcher", 1)])
    assert plans == [[Take(1, "A", 3, 60.0)], [Take(2, "B", 1, 90.0)]]


def test_a_minimum_of_one_counts():
    from resource_stockpile.domain import is_below

    assert is_below(0, 1) and not is_below(1, 1)


def test_an_illegal_action_names_the_bucket_the_action_and_what_is_allowed():
    with pytest.raises(IllegalTransition) as err:
        move(Bucket.out, Action.issue)
    assert err.value.detail == "cannot issue what is out; allowed: return, consume"
    assert err.value.extra == {"bucket": "out", "action": "issue"}
    with pytest.raises(IllegalTransition) as err:
        move(Bucket.returned, Action.release)
    assert err.value.detail == "cannot release what is returned; allowed: none, it is done"


def test_more_than_there_is_says_how_much_is_there():
    with pytest.raises(Conflict) as err:
        spread([alloc(1, 1.0, 10, out=2)], Action.return_, 3)
    assert err.value.detail == "cannot return 3: 2 are out"
    assert err.value.extra == {"action": "return", "available": 2}
    with pytest.raises(Conflict) as err:
        spread([alloc(1, 1.0, 10, out=1)], Action.consume, 3)
    assert err.value.detail == "cannot consume 3: 1 is out"


def test_an_action_skips_allocations_with_nothing_there_and_takes_a_last_unit():
    allocs = [alloc(1, 10.0, 0, out=5), alloc(2, 20.0, 1), alloc(3, 30.0, 5), alloc(4, 40.0, 5)]
    assert [(a.id, q) for a, q in spread(allocs, Action.issue, 3)] == [(2, 1), (3, 2)]
    assert [(a.id, q) for a, q in spread(allocs, Action.issue, 1)] == [(2, 1)]


def test_the_settled_detail_lists_every_item_holding_anything():
    allocs = [alloc(1, 1.0, 4, out=1), alloc(2, 1.0, 3, item="blanket"), alloc(3, 1.0, 0, out=2, item="tent")]
    assert settled_detail(allocs) == "blanket: 3 held, 0 out; stretcher: 4 held, 1 out; tent: 0 held, 2 out"


def test_an_issue_is_checked_at_its_own_date_and_entries_at_one_instant_keep_their_order():
    with pytest.raises(NegativeBalance) as err:
        check_history([(at(1), 3)], at(5), -5, "stretcher", "A")
    assert err.value.extra["date"] == "2026-11-05"
    # A receipt and an issue booked at the same instant, in that order: the balance never dips.
    check_history([(at(1), 2), (at(5), 5), (at(5), -5)], at(3), -2, "stretcher", "A")


def test_a_plan_met_exactly_changes_nothing_and_a_single_unit_is_released():
    assert reconcile(Stage.handling, {"stretcher": 10}, {"stretcher": (10, 0)}) == []
    assert reconcile(Stage.handling, {"stretcher": 5}, {"stretcher": (1, 5)}) == [Topping("stretcher", release=1)]
    assert reconcile(Stage.aftermath, {"stretcher": 5}, {"stretcher": (1, 5)}) == [Topping("stretcher", release=1)]


def test_an_allocation_takes_the_last_unit_it_needs_from_the_next_line():
    takes, missing = allocate([Candidate(line(1, "A", 5), 10.0), Candidate(line(2, "B", 5), 20.0)], 6)
    assert takes == [Take(1, "A", 5, 10.0), Take(2, "B", 1, 20.0)]
    assert missing == 0


def test_a_circle_of_two_new_kits_names_the_kit_and_the_part_through_which():
    new = [Item("a", "a", "a", "kit", kit_of={"b": 1}), Item("b", "b", "b", "kit", kit_of={"a": 1})]
    with pytest.raises(InvalidInput) as refused:
        check_kits(new, PART_ITEMS)
    assert refused.value.extra["field"] == "items.0.kit_of.b"
    assert refused.value.detail == "kit a contains itself (through b)"


def test_a_circle_found_below_the_first_kit_names_the_new_kit_in_it():
    new = [
        Item("x", "x", "x", "kit", kit_of={"a": 1}),
        Item("a", "a", "a", "kit", kit_of={"b": 1}),
        Item("b", "b", "b", "kit", kit_of={"a": 1}),
    ]
    with pytest.raises(InvalidInput) as refused:
        check_kits(new, PART_ITEMS)
    assert refused.value.extra["field"] == "items.1.kit_of.b"


def test_a_circle_through_a_stored_kit_names_a_new_item():
    # c is stored and lists n; the new n lists c: c now contains itself, found from r.
    known = {**PART_ITEMS, "c": Item("c", "c", "c", "kit", kit_of={"n": 1})}
    new = [Item("r", "r", "r", "kit", kit_of={"c": 1}), Item("n", "n", "n", "kit", kit_of={"c": 1})]
    with pytest.raises(InvalidInput) as refused:
        check_kits(new, known)
    # The field is where the request can break the circle: n's part c (r lists no n; the path
    # named items.0.kit_of.n before, a part r does not have).
    assert refused.value.extra["field"] == "items.1.kit_of.c"
    assert refused.value.detail == "kit n contains itself (through c)"
