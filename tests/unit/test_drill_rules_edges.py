"""The edges of the drill rules: the exact refusal a scenario author reads for each problem (field,
line and words), circles of injects anywhere in the MSEL, the limits of the scenario clock and of a
scenario file, the units a scenario names, the scenario as JSON-ready data, and the rule printed
beside every rating."""

from __future__ import annotations

import json
import pathlib

import pytest

from ecs.drill.scenario import (
    MAX_FILE_BYTES,
    Measure,
    ScenarioError,
    as_dict,
    load_scenario,
    parse_duration,
    read_scenario,
)
from ecs.drill.scoring import Rating, rate
from tests.unit.test_drill_scenario import GOOD

BASE = GOOD  # the small valid scenario of test_drill_scenario.py


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(text, "drill.yaml")
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def verify(ident: str, after: str) -> str:
    return f"  - {{id: {ident}, kind: action, action: verify, incident: A1, after: [{after}]}}\n"


def test_a_circle_that_does_not_pass_the_first_inject_nor_start_the_walk_is_found():
    text = (
        BASE.replace("    categories: {fire: 1}\n", "    categories: {fire: 1}\n    after: [A2]\n", 1)
        + "  - {id: A2, kind: alarms, count: 1, place: {lat: 31.2, lon: 121.4}, categories: {fire: 1}}\n"
        + verify("X1", "X2")
        + verify("X2", "X3")
        + verify("X3", "X2")
    )
    assert problems(text) == [(23, "msel[4].after", "injects wait for each other in a circle: X2 -> X3 -> X2")]


def test_a_circle_behind_an_unknown_inject_is_still_found():
    text = BASE + verify("X1", "Z9, X2") + verify("X2", "X1")
    assert problems(text) == [
        (20, "msel[2].after[0]", "Z9 is not an inject of this scenario"),
        (20, "msel[2].after", "injects wait for each other in a circle: X1 -> X2 -> X1"),
    ]


def test_an_inject_waiting_for_itself_is_named_with_its_line():
    assert problems(BASE.replace("after: [A1]", "after: [V1]")) == [
        (19, "msel[1].after[0]", "an inject cannot wait for itself"),
        (19, "msel[1].after", "injects wait for each other in a circle: V1 -> V1"),
    ]


def test_an_inject_may_come_at_the_end_of_the_scenario_clock_but_not_after_it():
    at_the_end = load_scenario(BASE.replace('at: "00:01:00"', 'at: "01:00:00"'), "drill.yaml")
    assert at_the_end.msel[1].at == at_the_end.duration == 3600.0
    assert problems(BASE.replace('at: "00:01:00"', 'at: "01:00:01"')) == [
        (19, "msel[1].at", "after the scenario's duration")
    ]


def test_an_action_on_an_inject_that_is_not_an_alarms_burst_is_refused():
    text = BASE + "  - {id: V2, kind: action, action: verify, incident: V1}\n"
    assert problems(text) == [(20, "msel[2].incident", "V1 is not an alarms inject of this scenario")]


def test_a_shelter_or_a_borrowed_unit_given_twice_is_named():
    shelter = "    - {id: s1, name_zh: 学校, district: x, location: {lat: 31.2, lon: 121.4}, area_m2: 900}\n"
    text = BASE.replace("  units:\n", "  shelters:\n" + shelter + shelter + "  borrow_units: [e7, e8, e7]\n  units:\n")
    assert problems(text) == [
        (13, "resources.shelters[1]", "id s1 is given twice"),
        (14, "resources.borrow_units[2]", "id e7 is given twice"),
    ]


def test_the_units_of_a_scenario_are_numbered_from_one_and_a_fault_beyond_them_is_refused_in_full():
    borrowed = BASE.replace("  units:\n", "  borrow_units: [live-engine-7]\n  units:\n")
    assert load_scenario(borrowed, "drill.yaml").unit_ids() == [
        "drill-fire-engine-1",
        "drill-fire-engine-2",
        "drill-fire-engine-3",
        "live-engine-7",
    ]
    text = BASE + "  - {id: F1, kind: fault, fault: unit_out_of_service, unit: drill-fire-engine-0}\n"
    assert problems(text) == [
        (
            20,
            "msel[2].unit",
            "drill-fire-engine-0 is neither an exercise unit of this scenario nor borrowed"
            " (a drill touches a live unit only by explicit loan: resources.borrow_units)",
        )
    ]


def test_the_units_a_fault_may_name_are_listed_once_per_scenario_not_once_per_fault(monkeypatch):
    """10,000 unit faults over 50,000 units took minutes to check: each fault listed every unit
    again. Listed once, the check is linear in the faults."""
    from ecs.drill.scenario import Scenario

    faults = "".join(
        f"  - {{id: F{k}, kind: fault, fault: unit_out_of_service, unit: drill-fire-engine-{k % 3 + 1}}}\n"
        for k in range(200)
    )
    listed: list[int] = []
    unit_ids = Scenario.unit_ids

    def counting(self: Scenario) -> list[str]:
        listed.append(1)
        return unit_ids(self)

    monkeypatch.setattr(Scenario, "unit_ids", counting)
    scenario = load_scenario(BASE + faults, "drill.yaml")
    assert len(scenario.msel) == 202 and len(listed) == 1


def test_a_perimeter_without_units_cannot_be_measured():
    text = BASE.replace("measure: first_unit_assigned", "measure: perimeter_secured").replace(
        "  units:\n    - {unit_type: fire_engine, count: 3, near: {lat: 31.23, lon: 121.47}}\n", "  units: []\n"
    )
    assert problems(text) == [
        (8, "objectives[0].measure", "perimeter_secured cannot be measured in this scenario: no units")
    ]


def test_a_level_out_of_the_scale_is_refused_with_the_forms():
    text = BASE.replace("action: verify,", "action: level, level: V,")
    assert problems(text) == [(19, "msel[1].level", "a level is I, II, III or IV (or 1..4)")]


def test_a_bad_fault_or_an_inject_that_is_not_a_mapping_is_named_without_the_kind():
    fault = BASE + "  - {id: F1, kind: fault, fault: depot_short, depot: d, item: water, quantity: 0}\n"
    assert problems(fault) == [(20, "msel[2].quantity", "Input should be greater than or equal to 1")]
    assert problems(BASE + "  - 5\n") == [
        (20, "msel[2]", "Input should be a valid dictionary or object to extract fields from")
    ]


@pytest.mark.parametrize("value", [True, False, None, [1], {"s": 5}])
def test_a_time_of_another_type_is_refused_with_the_forms(value):
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == "a time is HH:MM:SS, MM:SS, 90s, 5m, 2h or seconds"


@pytest.mark.parametrize("text", ["169h", "168:00:01", "10081m"])
def test_a_written_time_past_a_week_is_refused_naming_it(text):
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value) == f"{text!r} is outside 0 s .. 604800 s (a week)"
    assert parse_duration("168h") == parse_duration("168:00:00") == 604800.0


def test_a_file_of_exactly_the_largest_size_is_read(tmp_path):
    path = tmp_path / "full.yaml"
    padding = MAX_FILE_BYTES - len(BASE.encode()) - 1
    path.write_bytes(BASE.encode() + b"#" * padding + b"\n")
    assert path.stat().st_size == MAX_FILE_BYTES
    scenario, found = read_scenario(str(path))
    assert (scenario.name, found) == ("a small fire", path)


def test_a_file_too_large_or_not_utf8_is_refused_naming_the_file_the_document_and_the_line(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(BASE.encode() + b"#" * MAX_FILE_BYTES)
    with pytest.raises(ScenarioError) as caught:
        read_scenario(str(huge))
    assert caught.value.source == str(huge)
    assert [(p.line, p.path, p.message) for p in caught.value.problems] == [
        (1, "(document)", "larger than 1,000,000 bytes")
    ]
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\ntype: tabletop\n\xc3\x28\n")
    with pytest.raises(ScenarioError) as caught:
        read_scenario(str(binary))
    assert caught.value.source == str(binary)
    assert [(p.line, p.path, p.message) for p in caught.value.problems] == [(3, "(document)", "not UTF-8 text")]


def test_a_huge_file_is_not_read_whole(tmp_path, monkeypatch):
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (3 * MAX_FILE_BYTES))
    taken: list[int] = []
    real_open = pathlib.Path.open

    class Counted:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, *args):
            data = self.f.read(*args)
            taken.append(len(data))
            return data

    monkeypatch.setattr(pathlib.Path, "open", lambda self, *a, **k: Counted(real_open(self, *a, **k)))
    with pytest.raises(ScenarioError):
        read_scenario(str(huge))
    assert taken and sum(taken) < 2 * MAX_FILE_BYTES


def test_a_scenario_as_data_holds_only_plain_json_values():
    text = BASE.replace("action: verify,", "action: level, level: II,")
    data = as_dict(load_scenario(text, "drill.yaml"))

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(type(k) is str and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return type(value) in (str, int, float, bool, type(None))

    assert plain(data)
    assert (data["type"], data["msel"][1]["level"], data["msel"][0]["categories"]) == ("functional", 2, {"fire": 1.0})
    assert json.loads(json.dumps(data)) == data


def test_a_count_is_rated_with_its_rule_and_what_was_counted():
    c = Measure.items_short
    assert rate(c, 0, None) == Rating("P", "count 0 <= target 0", 0.0)
    assert rate(c, 10, 10) == Rating("P", "count 10 <= target 10", 10)
    assert rate(c, 10, 15) == Rating("S", "count 15 <= target + 5", 15)
    assert rate(c, 10, 16) == Rating("M", "count 16 > target + 5", 16)
    assert rate(c, 0, 2) == Rating("M", "count 2 > target + 1", 2)
    assert rate(c, 3, 4) == Rating("S", "count 4 <= target + 1.5", 4)


def test_a_large_count_is_written_with_every_digit():
    """``:g`` wrote 1,000,001 as 1e+06, a rule that read as within its target of 1,000,000."""
    c = Measure.items_short
    assert rate(c, 1_000_000, 1_000_001) == Rating("S", "count 1000001 <= target + 500000", 1_000_001)
    assert rate(c, 10_000_000, 9_999_999).rule == "count 9999999 <= target 10000000"


def test_a_time_is_rated_with_its_rule_and_what_was_measured():
    t = Measure.first_unit_assigned
    assert rate(t, 90, None) == Rating("U", "never observed before the drill ended", None)
    assert rate(t, 90, 90) == Rating("P", "90 s <= target 90 s", 90)
    assert rate(t, 90, 135) == Rating("S", "135 s <= 1.5 x target (135 s)", 135)
    assert rate(t, 90, 136) == Rating("M", "136 s > 1.5 x target (135 s)", 136)
