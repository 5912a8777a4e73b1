"""Drill scenario files are refused whole, before anything runs, with the file, the line and the
field of each problem: an unknown field, a bad time, an inject waiting for an unknown one or for
itself in a circle, a target that cannot be measured, a fault on a live resource. The shipped
scenarios are valid. The rating rules give P / S / M / U as stated."""

from __future__ import annotations

import pytest

from ecs.drill.scenario import SCENARIOS, Measure, ScenarioError, load_scenario, parse_duration, read_scenario
from ecs.drill.scoring import rate

GOOD = """\
name: a small fire
type: functional
duration: "01:00:00"
objectives:
  - id: O1
    capability: rapid isolation
    description: first unit within 3 minutes
    measure: first_unit_assigned
    target: "00:03:00"
resources:
  units:
    - {unit_type: fire_engine, count: 3, near: {lat: 31.23, lon: 121.47}}
msel:
  - id: A1
    kind: alarms
    count: 5
    place: {lat: 31.23, lon: 121.47}
    categories: {fire: 1}
  - {id: V1, kind: action, action: verify, incident: A1, at: "00:01:00", after: [A1]}
"""


def problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(text, "drill.yaml")
    assert caught.value.source == "drill.yaml"
    assert caught.value.status == 422
    return [(p.line, p.path, p.message) for p in caught.value.problems]


def test_the_example_and_every_shipped_scenario_are_valid():
    scenario = load_scenario(GOOD, "drill.yaml")
    assert [i.id for i in scenario.msel] == ["A1", "V1"]
    assert scenario.msel[1].at == 60.0
    shipped = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    assert "bund" in shipped
    for name in shipped:
        read_scenario(name)  # raises on any problem


def test_an_unknown_field_is_named_with_its_line():
    text = GOOD.replace("    count: 5\n", "    count: 5\n    colour: red\n")
    assert problems(text) == [(17, "msel[0].colour", "Extra inputs are not permitted")]


def test_a_bad_time_is_named_with_its_line():
    text = GOOD.replace('at: "00:01:00"', 'at: "00:61:00"')
    ((line, path, message),) = problems(text)
    assert (line, path) == (19, "msel[1].at")
    assert "minutes and seconds run to 59" in message
    assert "not a time" in problems(GOOD.replace('target: "00:03:00"', "target: soon"))[0][2]


def test_an_inject_waiting_for_an_unknown_one_or_in_a_circle_is_refused():
    assert problems(GOOD.replace("after: [A1]", "after: [A9]")) == [
        (19, "msel[1].after[0]", "A9 is not an inject of this scenario")
    ]
    circle = GOOD.replace("    categories: {fire: 1}\n", "    categories: {fire: 1}\n    after: [V1]\n")
    ((line, path, message),) = problems(circle)
    assert path == "msel[0].after" and "in a circle: A1 -> V1 -> A1" in message
    assert line == 19


def test_a_target_that_cannot_be_measured_is_refused():
    text = GOOD.replace("measure: first_unit_assigned", "measure: evacuees_placed")
    assert problems(text) == [
        (8, "objectives[0].measure", "evacuees_placed cannot be measured in this scenario: no evacuate inject")
    ]
    count = GOOD.replace("measure: first_unit_assigned", "measure: items_short")
    assert problems(count)[0][1:] == (
        "objectives[0].target",
        "items_short is a count: give the largest acceptable count, a whole number >= 0",
    )


def test_a_fault_on_a_live_unit_without_a_loan_is_refused_before_the_start():
    text = GOOD + "  - {id: F1, kind: fault, fault: unit_out_of_service, unit: live-engine-7, at: 60}\n"
    ((line, path, message),) = problems(text)
    assert (line, path) == (20, "msel[2].unit")
    assert "explicit loan" in message
    borrowed = text.replace("resources:\n", "resources:\n  borrow_units: [live-engine-7]\n")
    assert load_scenario(borrowed, "drill.yaml").resources.borrow_units == ["live-engine-7"]


def test_an_action_missing_or_given_a_stray_parameter_is_refused():
    missing = GOOD.replace("action: verify", "action: perimeter")
    assert problems(missing) == [(19, "msel[1]", "radius_m: the perimeter action needs it")]
    stray = GOOD.replace("action: verify,", "action: verify, radius_m: 100,")
    assert "radius_m: the verify action takes no radius_m" in problems(stray)[0][2]


def test_not_yaml_an_empty_file_and_a_repeated_key_are_refused():
    assert problems("name: [unclosed\n")[0][1] == "(document)"
    assert problems("") == [(1, "(document)", "the scenario file is empty")]
    assert problems(GOOD.replace("type: functional\n", "type: functional\ntype: tabletop\n"))[0][:2] == (3, "type")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:05:00", 300), ("05:00", 300), ("90s", 90), ("5m", 300), ("2h", 7200), (45, 45), ("1:00:00", 3600)],
)
def test_times_are_read_in_every_documented_form(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "-1", True, "00:00:60", "8d", 10**9])
def test_other_times_are_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_rating_rules():
    t = Measure.first_unit_assigned
    assert [rate(t, 90, m).letter for m in (60, 90, 120, 135, 136, None)] == ["P", "P", "S", "S", "M", "U"]
    c = Measure.items_short
    assert [rate(c, 0, m).letter for m in (0, 1, 2)] == ["P", "S", "M"]
    assert [rate(c, 10, m).letter for m in (10, 15, 16, None)] == ["P", "S", "M", "P"]


def test_time_limits_and_messages():
    assert parse_duration("60:00") == 3600  # MM:SS may run past 59 minutes
    assert parse_duration("00:59:59") == 3599
    assert parse_duration(7 * 24 * 3600) == 7 * 24 * 3600  # a week, the longest scenario clock
    for bad in (7 * 24 * 3600 + 1, "00:60:00", "1:00:60", None, [1], False):
        with pytest.raises(ValueError) as caught:
            parse_duration(bad)
        assert "a week" in str(caught.value) or "HH:MM:SS" in str(caught.value) or "run to 59" in str(caught.value)


def test_ids_given_twice_are_refused():
    objectives = GOOD.replace(
        "resources:\n",
        "  - {id: O1, capability: c, description: d, measure: incidents_opened, target: 1}\nresources:\n",
    )
    assert "objective id O1 is used twice" in problems(objectives)[0][2]
    twice = GOOD + "  - {id: V1, kind: action, action: verify, incident: A1}\n"
    assert problems(twice) == [(20, "msel[2].id", "inject id V1 is used twice")]


@pytest.mark.parametrize(
    ("measure", "why"),
    [
        ("supplies_reserved", "no depots"),
        ("items_short", "no depots"),
        ("shelter_opened", "no shelters"),
        ("first_alert_published", "no alert inject"),
        ("first_statement_published", "no statement inject"),
    ],
)
def test_each_measure_needs_what_it_measures(measure, why):
    target = "0" if measure == "items_short" else '"00:10:00"'
    text = GOOD.replace("measure: first_unit_assigned", f"measure: {measure}").replace(
        'target: "00:03:00"', f"target: {target}"
    )
    assert problems(text) == [(8, "objectives[0].measure", f"{measure} cannot be measured in this scenario: {why}")]


def test_units_are_needed_to_measure_their_dispatch():
    text = GOOD.replace(
        "  units:\n    - {unit_type: fire_engine, count: 3, near: {lat: 31.23, lon: 121.47}}\n", "  units: []\n"
    )
    assert problems(text)[0][2] == "first_unit_assigned cannot be measured in this scenario: no units"
    borrowed = text.replace("  units: []\n", "  units: []\n  borrow_units: [live-engine-1]\n")
    assert load_scenario(borrowed, "drill.yaml").unit_ids() == ["live-engine-1"]


def test_faults_on_the_drills_own_resources_only():
    own = GOOD + "  - {id: F1, kind: fault, fault: unit_out_of_service, unit: drill-fire-engine-3}\n"
    assert load_scenario(own, "drill.yaml").msel[2].unit == "drill-fire-engine-3"
    beyond = GOOD + "  - {id: F1, kind: fault, fault: unit_out_of_service, unit: drill-fire-engine-4}\n"
    assert problems(beyond)[0][:2] == (20, "msel[2].unit")
    depot = GOOD + "  - {id: F2, kind: fault, fault: depot_short, depot: live-depot, item: stretcher, quantity: 5}\n"
    assert problems(depot) == [(20, "msel[2].depot", "live-depot is not an exercise depot of this scenario")]
    unnamed = GOOD + "  - {id: F3, kind: fault, fault: depot_short, depot: d}\n"
    assert "depot_short names all three" in problems(unnamed)[0][2]


def test_a_shipped_scenario_is_found_by_name_and_an_unknown_name_lists_them(tmp_path):
    scenario, path = read_scenario("bund")
    assert path == SCENARIOS / "bund.yaml" and scenario.type.value == "full-scale"
    mine = tmp_path / "mine.yaml"
    mine.write_text(GOOD, encoding="utf-8")
    assert read_scenario(str(mine))[1] == mine
    with pytest.raises(FileNotFoundError) as caught:
        read_scenario("atlantis")
    assert "'atlantis'" in str(caught.value) and "bund, " in str(caught.value)
    with pytest.raises(ScenarioError) as bad:
        mine.write_text(GOOD.replace("count: 5", "count: 0"), encoding="utf-8")
        read_scenario(str(mine))
    assert bad.value.source == str(mine)


def test_objectives_are_scored_with_their_rule_and_evidence():
    from ecs.drill.scoring import score

    scenario = load_scenario(GOOD, "drill.yaml")
    (row,) = score(scenario.objectives, {Measure.first_unit_assigned: 200.0}, {Measure.first_unit_assigned: "fe-1"})
    assert row == {
        "id": "O1",
        "capability": "rapid isolation",
        "description": "first unit within 3 minutes",
        "measure": "first_unit_assigned",
        "target_s": 180.0,
        "measured_s": 200.0,
        "rating": "S",
        "rule": "200 s <= 1.5 x target (270 s)",
        "evidence": "fe-1",
    }
    (missing,) = score(scenario.objectives, {}, {})
    assert (missing["rating"], missing["measured_s"], missing["evidence"]) == ("U", None, "no event observed")


def test_a_billion_laughs_a_binary_file_and_a_huge_file_are_refused_without_walking_them(tmp_path):
    laughs = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for n in range(1, 9):
        laughs.append(f"{chr(97 + n)}: &{chr(97 + n)} [{', '.join(['*' + chr(96 + n)] * 10)}]")
    ((line, path, message),) = problems("\n".join(laughs) + "\n")
    assert path == "(document)" and "expands to more than 200,000 values" in message
    binary = tmp_path / "garbage.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\x00\x01")
    with pytest.raises(ScenarioError) as caught:
        read_scenario(str(binary))
    assert [(p.line, p.message) for p in caught.value.problems] == [(2, "not UTF-8 text")]
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# " + b"x" * 1_000_000 + b"\n")
    with pytest.raises(ScenarioError) as caught:
        read_scenario(str(huge))
    assert "larger than 1,000,000 bytes" in caught.value.problems[0].message


def test_the_shipped_response_plans_share_their_templates_by_alias_and_still_load():
    from importlib import resources

    from dispatch.domain.response_plans import parse_plan

    text = resources.files("dispatch").joinpath("plans", "crowd_crush.yaml").read_text(encoding="utf-8")
    assert "*crush_major" in text
    assert parse_plan(text, "crowd_crush.yaml").category == "crowd_crush"


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (("categories: {fire: 1}", "categories: {fire: .inf}"), "msel[0].categories.fire", "finite"),
        (("categories: {fire: 1}", "categories: {fire: 1}\n    first: medical"), "msel[0].first", "not one of"),
        (('target: "00:03:00"', "target: .inf"), "objectives[0].target", "a week"),
        (('target: "00:03:00"', "target: " + "9" * 400), "objectives[0].target", "a week"),
        (('duration: "01:00:00"', "duration: 0"), "duration", "greater than 0"),
        (('at: "00:01:00"', "at: " + "9" * 5000), "(document)", "cannot be read"),
        (("action: verify,", "action: level, level: V,"), "msel[1].level", "I, II, III or IV"),
    ],
)
def test_values_that_would_fail_the_run_are_refused_with_their_field(change, path, words):
    old, new = change
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1))
    assert any(p == path and words in m for _, p, m in found), found


def test_resources_given_twice_are_refused():
    text = GOOD.replace(
        "  units:\n",
        "  depots:\n    - {id: d1, name: a, district: x, location: {lat: 31.2, lon: 121.4}}\n"
        "    - {id: d1, name: b, district: x, location: {lat: 31.2, lon: 121.4}}\n  units:\n",
    ).replace(
        "    - {unit_type: fire_engine, count: 3, near: {lat: 31.23, lon: 121.47}}\n",
        "    - {unit_type: fire_engine, count: 3, near: {lat: 31.23, lon: 121.47}}\n"
        "    - {unit_type: fire_engine, count: 2, near: {lat: 31.20, lon: 121.40}}\n",
    )
    found = {(p, m) for _, p, m in problems(text)}
    assert ("resources.depots[1]", "id d1 is given twice") in found
    assert ("resources.units[1]", "unit type (one group each) fire_engine is given twice") in found


def test_long_chains_and_circles_deep_nesting_nul_and_thousands_of_bad_keys_are_answered_at_once():
    chain = "".join(
        f"  - {{id: I{k}, kind: action, action: verify, incident: A1, after: [I{k + 1}]}}\n" for k in range(2000)
    )
    assert "I2000 is not an inject" in problems(GOOD + chain)[0][2]  # no RecursionError on a long chain
    circle = chain.replace("after: [I2000]", "after: [I0]")
    assert "in a circle" in problems(GOOD + circle)[0][2]
    assert problems("a: " + "[" * 1000 + "]" * 1000 + "\n")[0][1:] == ("(document)", "nested too deeply")
    assert problems("name: a\x00b\n")[0][1] == "(document)"
    many = GOOD + "".join(f"k{k}: {k}\n" for k in range(20_000))
    found = problems(many)
    assert len(found) == 51 and found[-1][2] == "and 19950 more problems"
