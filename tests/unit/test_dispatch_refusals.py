"""dispatch's refusals, word for word, as an operator reads them: a unit that is busy or not
lendable, a unit list with nothing or a repeat in it, an incident that is not open, an assignment
that cannot be sent elsewhere; each names what the operator must know (the incident, the status)."""

from __future__ import annotations

import pytest

from dispatch.domain import (
    busy,
    check_lendable,
    check_open,
    check_reassignable,
    check_unique_units,
    check_unit_list,
)
from ecs.errors import Conflict, InvalidInput
from ecs.vocabulary import Stage
from tests.unit.test_dispatch_rules import S, held, incident, unit


def test_a_busy_unit_names_the_incident_it_serves_or_its_status():
    serving = busy(unit(status=S.EN_ROUTE, incident_id="inc-7"))
    assert serving.detail == "unit fe-1 is already assigned to incident inc-7 (en_route)"
    assert serving.extra == {"unit_id": "fe-1", "incident_id": "inc-7", "unit_status": S.EN_ROUTE}
    away = busy(unit(status=S.OUT_OF_SERVICE))
    assert away.detail == "unit fe-1 is out_of_service"
    assert away.extra == {"unit_id": "fe-1", "unit_status": S.OUT_OF_SERVICE}


def test_only_an_available_live_unit_is_lent_and_any_live_unit_taken_back():
    check_lendable(unit())
    with pytest.raises(Conflict) as caught:
        check_lendable(unit(exercise=True))
    assert caught.value.detail == "unit fe-1 is an exercise unit: only live units are lent to drills"
    with pytest.raises(Conflict):
        check_lendable(unit(exercise=True), lending=False)
    for status, incident_id in ((S.ASSIGNED, "inc-1"), (S.OUT_OF_SERVICE, None), (S.AVAILABLE, "inc-1")):
        with pytest.raises(Conflict) as caught:
            check_lendable(unit(status=status, incident_id=incident_id))
        assert caught.value.detail == f"unit fe-1 is {status}: a drill borrows only an available live unit"
        assert caught.value.extra == {"unit_id": "fe-1", "unit_status": str(status), "incident_id": incident_id}
        check_lendable(unit(status=status, incident_id=incident_id), lending=False)  # taking back


def test_a_unit_list_names_at_least_one_unit_each_once():
    check_unit_list(["fe-1", "fe-2"])
    for ids, detail in (([], "name at least one unit"), (["fe-1", "fe-2", "fe-1"], "a unit is listed twice")):
        with pytest.raises(InvalidInput) as caught:
            check_unit_list(ids)
        assert (caught.value.detail, caught.value.extra) == (detail, {"field": "unit_ids"})
    check_unique_units(["a", "b"])
    with pytest.raises(InvalidInput) as caught:
        check_unique_units(["z", "b", "z", "b"])
    assert (caught.value.detail, caught.value.extra) == ("unit b is listed twice", {"field": "units"})


def test_units_go_to_an_open_incident_only():
    check_open(incident(Stage.handling))
    with pytest.raises(Conflict) as caught:
        check_open(incident(merged_into="inc-2"))
    assert (caught.value.detail, caught.value.extra) == (
        "incident inc-1 was merged into inc-2",
        {"merged_into": "inc-2"},
    )
    with pytest.raises(Conflict) as caught:
        check_open(incident(Stage.closed))
    assert (caught.value.detail, caught.value.extra) == ("incident inc-1 is closed", {"stage": Stage.closed})


def test_only_a_unit_not_yet_on_scene_is_sent_elsewhere():
    class Ended:
        id = 41

    with pytest.raises(Conflict) as caught:
        check_reassignable(Ended(), None)  # type: ignore[arg-type]
    assert (caught.value.detail, caught.value.extra) == ("assignment 41 was already released", {"assignment_id": 41})
    for status in (S.ASSIGNED, S.EN_ROUTE):
        h = held(1, status=status)
        assert check_reassignable(Ended(), h) is h  # type: ignore[arg-type]
    with pytest.raises(Conflict) as caught:
        check_reassignable(Ended(), held(1, status=S.ON_SCENE))  # type: ignore[arg-type]
    assert caught.value.detail == "unit u-1 is on_scene at incident inc-1: release it first"
    assert caught.value.extra == {"incident_id": "inc-1"}
