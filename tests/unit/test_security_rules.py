"""Exercise isolation as pure rules (DESIGN §8): a drill borrows only an available live unit, and
a drill runner drives a borrowed unit only while it serves no live incident."""

from __future__ import annotations

import pytest

from dispatch.domain import UnitStatus, check_lendable, drill_may_drive
from ecs.errors import Conflict
from tests.unit.test_dispatch_rules import unit


@pytest.mark.parametrize("status", [s for s in UnitStatus if s is not UnitStatus.AVAILABLE])
def test_a_drill_does_not_borrow_a_busy_or_out_of_service_unit(status):
    busy = unit(status=status, incident_id="inc-1" if status != UnitStatus.OUT_OF_SERVICE else None)
    with pytest.raises(Conflict, match="a drill borrows only an available live unit"):
        check_lendable(busy)
    check_lendable(busy, lending=False)  # a loan is always recalled at once


def test_a_drill_borrows_an_available_live_unit():
    check_lendable(unit())
    with pytest.raises(Conflict, match="only live units are lent"):
        check_lendable(unit(exercise=True))


def test_a_drill_runner_drives_a_borrowed_unit_only_while_it_serves_no_live_incident():
    lent = unit(lent_to_drill="d1")
    assert drill_may_drive(lent, serves_live_incident=False) is True
    assert drill_may_drive(lent, serves_live_incident=True) is False
    assert drill_may_drive(unit(), serves_live_incident=False) is False
    assert drill_may_drive(unit(exercise=True), serves_live_incident=False) is True
