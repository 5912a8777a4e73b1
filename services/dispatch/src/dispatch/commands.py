"""What operators (through the API) and the vehicle feed ask dispatch to do: one command, one
handler (handlers.COMMANDS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ecs.vocabulary import Stage

from .domain import Position, UnitSpec, UnitStatus

# --- the roster ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterUnits:
    """Put units on the roster, all or none."""

    units: Sequence[UnitSpec]
    actor: str


@dataclass(frozen=True, slots=True)
class UpdateUnit:
    """Change a unit's callsign, capabilities, station or district, if it is still at ``version``."""

    unit_id: str
    version: int
    changes: Mapping[str, Any]
    actor: str


@dataclass(frozen=True, slots=True)
class RemoveUnit:
    """Take an available or out-of-service unit off the roster."""

    unit_id: str
    actor: str


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """A unit's new status (if given, refused unless the unit is still at ``version``)."""

    unit_id: str
    status: UnitStatus
    actor: str
    version: int | None = None


@dataclass(frozen=True, slots=True)
class MoveUnit:
    """Set a unit's position (WGS-84 degrees) as fixed at ``at`` (UTC; default: now)."""

    unit_id: str
    lat: float
    lon: float
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RecordPositions:
    """A batch of position reports from the vehicle feed."""

    reports: Sequence[Position]


@dataclass(frozen=True, slots=True)
class LendUnit:
    """Lend a live unit to a drill, so that the drill's incidents may take it."""

    unit_id: str
    drill: str
    actor: str


@dataclass(frozen=True, slots=True)
class ReclaimUnit:
    """Take a lent unit back; an exercise assignment it has ends."""

    unit_id: str
    actor: str


# --- assignments -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssignUnits:
    """Assign the units an operator chose, all or none; one not recommended needs a reason."""

    incident_id: str
    unit_ids: Sequence[str]
    actor: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AcceptRecommendation:
    """Top the incident up to its plan for ``stage`` (default: its own) with recommended units."""

    incident_id: str
    actor: str
    stage: Stage | None = None


@dataclass(frozen=True, slots=True)
class ReleaseAssignment:
    """The unit no longer serves the incident."""

    assignment_id: int
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class Reassign:
    """Send an assigned or en-route unit to another incident."""

    assignment_id: int
    incident_id: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class PurgeExercise:
    """Forget exercise incidents and assignments (and idle exercise units if ``units_too``)."""

    actor: str
    units_too: bool


# --- plans -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """A commander's new version of a category's response plan, as YAML."""

    category: str
    body: str
    actor: str
