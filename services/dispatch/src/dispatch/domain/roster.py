"""The roster: agencies, unit types and the unit status machine; units as dispatch stores them,
and what may be done to them (register, edit, report a status, lend to a drill, report positions).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from ecs.contracts import UnitRegistered, UnitStatusChanged
from ecs.errors import Conflict, IllegalTransition, InvalidInput, NotFound, StaleVersion

__all__ = [
    "roster_profile",
    "Agency",
    "BUSY",
    "EDITABLE",
    "IllegalStatusChange",
    "LEAVING",
    "Position",
    "REMOVABLE",
    "STATUS_TRANSITIONS",
    "StaleUnit",
    "StatusReport",
    "Unit",
    "UnitSpec",
    "UnitStatus",
    "UnitType",
    "UnknownUnit",
    "busy",
    "check_lendable",
    "drill_may_drive",
    "check_not_registered",
    "check_status_change",
    "check_unique_units",
    "check_version",
    "fix_ahead_of_clock",
    "latest_positions",
    "new_unit",
    "next_statuses",
    "report_status",
    "roster_entry",
    "unit_changes",
]


# --------------------------------------------------------------------------------------------
# Errors


class IllegalStatusChange(IllegalTransition):
    """A status change not in STATUS_TRANSITIONS (409), with the legal next statuses."""

    code, title = "illegal_status_change", "Illegal unit status change"

    def __init__(self, from_status: UnitStatus, to_status: UnitStatus) -> None:
        self.from_status = from_status
        self.to_status = to_status
        self.allowed = next_statuses(from_status)
        legal = sorted(self.allowed)
        super().__init__(
            f"a unit cannot go from {from_status} to {to_status}; "
            f"legal next statuses from {from_status}: {', '.join(legal) or 'none'}",
            from_status=str(from_status),
            to_status=str(to_status),
            allowed=[str(s) for s in legal],
        )


class UnknownUnit(NotFound):
    """No unit with this id is on the roster (404)."""

    def __init__(self, unit_id: str) -> None:
        super().__init__(f"unit {unit_id} not found", unit_id=unit_id)


class StaleUnit(StaleVersion):
    """The unit is not at the version the operator saw (409)."""

    def __init__(self, unit_id: str, current: int, seen: int) -> None:
        super().__init__(
            f"unit {unit_id} is at version {current}, not {seen}: reload it and decide again",
            current_version=current,
        )


# --------------------------------------------------------------------------------------------
# Agencies, unit types, unit status


class Agency(StrEnum):
    """The service a unit belongs to."""

    POLICE = "police"
    FIRE = "fire"
    MEDICAL = "medical"
    HAZMAT = "hazmat"
    RESCUE = "rescue"
    COMMAND = "command"
    UTILITY = "utility"


class UnitType(StrEnum):
    """Kinds of units, each of one agency and with a typical speed on city roads."""

    PATROL_CAR = "patrol_car"
    TRAFFIC_POLICE_CAR = "traffic_police_car"
    SPECIAL_POLICE_TEAM = "special_police_team"
    FIRE_ENGINE = "fire_engine"
    LADDER_TRUCK = "ladder_truck"
    WATER_TANKER = "water_tanker"
    AMBULANCE = "ambulance"
    HAZMAT_TEAM = "hazmat_team"
    DECONTAMINATION_UNIT = "decontamination_unit"
    RESCUE_TEAM = "rescue_team"
    HEAVY_RESCUE_TEAM = "heavy_rescue_team"
    WATER_RESCUE_TEAM = "water_rescue_team"
    COMMAND_VEHICLE = "command_vehicle"
    UTILITY_CREW = "utility_crew"

    @property
    def agency(self) -> Agency:
        """The agency the unit type belongs to."""
        return _UNIT_TYPE_PROFILE[self][0]

    @property
    def speed_kmh(self) -> float:
        """Typical average speed on city roads under blue lights, for arrival estimates."""
        return _UNIT_TYPE_PROFILE[self][1]


_UNIT_TYPE_PROFILE: Final[dict[UnitType, tuple[Agency, float]]] = {
    UnitType.PATROL_CAR: (Agency.POLICE, 50.0),
    UnitType.TRAFFIC_POLICE_CAR: (Agency.POLICE, 50.0),
    UnitType.SPECIAL_POLICE_TEAM: (Agency.POLICE, 45.0),
    UnitType.FIRE_ENGINE: (Agency.FIRE, 40.0),
    UnitType.LADDER_TRUCK: (Agency.FIRE, 35.0),
    UnitType.WATER_TANKER: (Agency.FIRE, 35.0),
    UnitType.AMBULANCE: (Agency.MEDICAL, 50.0),
    UnitType.HAZMAT_TEAM: (Agency.HAZMAT, 35.0),
    UnitType.DECONTAMINATION_UNIT: (Agency.HAZMAT, 30.0),
    UnitType.RESCUE_TEAM: (Agency.RESCUE, 40.0),
    UnitType.HEAVY_RESCUE_TEAM: (Agency.RESCUE, 30.0),
    UnitType.WATER_RESCUE_TEAM: (Agency.RESCUE, 35.0),
    UnitType.COMMAND_VEHICLE: (Agency.COMMAND, 45.0),
    UnitType.UTILITY_CREW: (Agency.UTILITY, 40.0),
}


class UnitStatus(StrEnum):
    """What a unit is doing; STATUS_TRANSITIONS says what may follow what."""

    AVAILABLE = "available"
    ASSIGNED = "assigned"
    EN_ROUTE = "en_route"
    ON_SCENE = "on_scene"
    RETURNING = "returning"
    OUT_OF_SERVICE = "out_of_service"


_S = UnitStatus
STATUS_TRANSITIONS: Final[frozenset[tuple[UnitStatus, UnitStatus]]] = frozenset(
    {
        (_S.AVAILABLE, _S.ASSIGNED),
        (_S.AVAILABLE, _S.OUT_OF_SERVICE),  # maintenance, crew off duty
        (_S.ASSIGNED, _S.EN_ROUTE),
        (_S.ASSIGNED, _S.AVAILABLE),  # released before it left the station
        (_S.EN_ROUTE, _S.ON_SCENE),
        (_S.EN_ROUTE, _S.RETURNING),  # stood down on the way
        (_S.ON_SCENE, _S.RETURNING),
        (_S.RETURNING, _S.AVAILABLE),
        (_S.OUT_OF_SERVICE, _S.AVAILABLE),
        # A breakdown or an injured crew can take a unit out of service at any point of a job.
        (_S.ASSIGNED, _S.OUT_OF_SERVICE),
        (_S.EN_ROUTE, _S.OUT_OF_SERVICE),
        (_S.ON_SCENE, _S.OUT_OF_SERVICE),
        (_S.RETURNING, _S.OUT_OF_SERVICE),
    }
)
del _S

_NEXT_STATUSES: Final[dict[UnitStatus, frozenset[UnitStatus]]] = {
    s: frozenset(to for frm, to in STATUS_TRANSITIONS if frm == s) for s in UnitStatus
}


def next_statuses(from_status: UnitStatus) -> frozenset[UnitStatus]:
    """The statuses a unit may report next from ``from_status``."""
    return _NEXT_STATUSES[UnitStatus(from_status)]


def check_status_change(from_status: UnitStatus, to_status: UnitStatus) -> None:
    """Refuse a status change that is not in STATUS_TRANSITIONS."""
    from_status, to_status = UnitStatus(from_status), UnitStatus(to_status)
    if (from_status, to_status) not in STATUS_TRANSITIONS:
        raise IllegalStatusChange(from_status, to_status)


# --------------------------------------------------------------------------------------------
# The roster: units as dispatch stores them, and what may be done to them


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit on the roster. ``incident_id`` is set exactly while the unit is busy (assigned, en
    route, on scene); ``lent_to_drill`` names the drill a live unit is lent to; ``version`` grows by
    one with every change but a position report. Position in WGS-84 degrees, fixed at
    ``location_at`` (UTC)."""

    id: str
    callsign: str
    agency: Agency
    unit_type: UnitType
    capabilities: tuple[str, ...]
    home_station: str
    district: str
    lat: float
    lon: float
    location_at: datetime
    status: UnitStatus
    incident_id: str | None
    exercise: bool
    lent_to_drill: str | None
    version: int


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """A unit to register: where it is based and where it is now (WGS-84 degrees)."""

    id: str
    unit_type: UnitType
    district: str
    home_station: str
    lat: float
    lon: float
    callsign: str = ""
    capabilities: tuple[str, ...] = ()
    exercise: bool = False
    status: UnitStatus = UnitStatus.AVAILABLE


BUSY: Final[frozenset[UnitStatus]] = frozenset({UnitStatus.ASSIGNED, UnitStatus.EN_ROUTE, UnitStatus.ON_SCENE})
"""Statuses in which a unit serves an incident (and only then has ``incident_id`` set)."""
REMOVABLE: Final[frozenset[UnitStatus]] = frozenset({UnitStatus.AVAILABLE, UnitStatus.OUT_OF_SERVICE})
"""Statuses in which a unit may leave the roster: it serves no incident."""
EDITABLE: Final[frozenset[str]] = frozenset({"callsign", "capabilities", "home_station", "district"})
"""Roster fields an operator may change (``PATCH /v1/units/{id}``)."""
LEAVING: Final[frozenset[UnitStatus]] = frozenset({UnitStatus.RETURNING, UnitStatus.OUT_OF_SERVICE})
"""Reported statuses that end the unit's assignment."""


def check_unique_units(unit_ids: Sequence[str]) -> None:
    """Raises InvalidInput (field ``units``) naming the first id listed twice."""
    repeated = sorted(i for i, n in Counter(unit_ids).items() if n > 1)
    if repeated:
        raise InvalidInput(f"unit {repeated[0]} is listed twice", field="units")


def check_not_registered(existing: Iterable[str]) -> None:
    """Raises Conflict (409) naming the units of a registration that are on the roster already."""
    taken = sorted(existing)
    if taken:
        raise Conflict(f"unit {taken[0]} is already registered", unit_id=taken[0], existing=taken)


def new_unit(spec: UnitSpec, now: datetime) -> Unit:
    """The roster entry of a unit registered at ``now``: its agency from its type, capabilities
    once each and sorted, its id as callsign unless it has one, version 1."""
    unit_type = UnitType(spec.unit_type)
    return Unit(
        id=spec.id,
        callsign=spec.callsign or spec.id,
        agency=unit_type.agency,
        unit_type=unit_type,
        capabilities=tuple(sorted(set(spec.capabilities))),
        home_station=spec.home_station,
        district=spec.district,
        lat=spec.lat,
        lon=spec.lon,
        location_at=now,
        status=UnitStatus(spec.status),
        incident_id=None,
        exercise=spec.exercise,
        lent_to_drill=None,
        version=1,
    )


def roster_profile(unit: Unit) -> dict[str, Any]:
    """What the roster says of a unit, by the field names the roster event and the API share:
    callsign, agency, unit_type, capabilities, home_station, district."""
    return {
        "callsign": unit.callsign,
        "agency": unit.agency,
        "unit_type": unit.unit_type,
        "capabilities": list(unit.capabilities),
        "home_station": unit.home_station,
        "district": unit.district,
    }


def roster_entry(unit: Unit, actor: str) -> UnitRegistered:
    """The roster event of ``unit`` (``dispatch.unit.registered``, ``.updated`` or ``.removed``)."""
    return UnitRegistered(
        unit_id=unit.id,
        **roster_profile(unit),
        exercise=unit.exercise,
        lent_to_drill=unit.lent_to_drill,
        actor=actor,
    )


def unit_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The editable fields of ``changes`` (others are dropped), capabilities once each and sorted."""
    values = {k: v for k, v in changes.items() if k in EDITABLE}
    if "capabilities" in values:
        values["capabilities"] = sorted(set(values["capabilities"]))
    return values


def check_version(unit: Unit, seen: int | None) -> None:
    """Raises StaleUnit (409) when the operator saw another version of the unit (None: any)."""
    if seen is not None and unit.version != seen:
        raise StaleUnit(unit.id, unit.version, seen)


def busy(unit: Unit) -> Conflict:
    """The refusal for a unit that is not available: names the incident it serves, if any."""
    if unit.incident_id:
        return Conflict(
            f"unit {unit.id} is already assigned to incident {unit.incident_id} ({unit.status})",
            unit_id=unit.id,
            incident_id=unit.incident_id,
            unit_status=unit.status,
        )
    return Conflict(f"unit {unit.id} is {unit.status}", unit_id=unit.id, unit_status=unit.status)


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What a unit's reported status does: the unit's status and incident afterwards, whether its
    assignment ends (and why) or records the arrival, and the event."""

    from_status: UnitStatus
    to_status: UnitStatus
    incident_id: str | None
    leaves: bool
    arrives: bool
    event: UnitStatusChanged

    @property
    def release_reason(self) -> str:
        """Why the report ended the assignment, as the release records it."""
        return f"unit reported {self.to_status}"


def report_status(unit: Unit, to: UnitStatus, actor: str, seen_version: int | None = None) -> StatusReport:
    """A unit reports ``to``. Returning or out of service ends its assignment; on scene records the
    arrival.

    Raises StaleUnit when ``seen_version`` is given and differs, IllegalStatusChange for a change
    not in STATUS_TRANSITIONS, and Conflict for ``assigned`` (units are assigned to an incident,
    not by status) and for ``available`` while the unit serves an incident (release it instead).
    """
    to = UnitStatus(to)
    check_version(unit, seen_version)
    check_status_change(unit.status, to)
    if to is UnitStatus.ASSIGNED:
        raise Conflict("a unit is assigned through POST /v1/incidents/{incident_id}/assignments, not by status")
    if to is UnitStatus.AVAILABLE and unit.incident_id is not None:
        raise Conflict(
            f"unit {unit.id} serves incident {unit.incident_id}: release its assignment instead",
            incident_id=unit.incident_id,
        )
    leaves = unit.incident_id is not None and to in LEAVING
    event = UnitStatusChanged(
        unit_id=unit.id,
        unit_type=unit.unit_type,
        from_status=unit.status,
        to_status=to,
        incident_id=unit.incident_id,
        actor=actor,
    )
    return StatusReport(
        from_status=unit.status,
        to_status=to,
        incident_id=None if leaves else unit.incident_id,
        leaves=leaves,
        arrives=to is UnitStatus.ON_SCENE,
        event=event,
    )


def check_lendable(unit: Unit, lending: bool = True) -> None:
    """Only live units are lent to drills (and taken back): raises Conflict for an exercise unit.
    A drill borrows only an available live unit (DESIGN §8): lending (``lending``) a unit that is
    busy (assigned, en route, on scene) or out of service raises Conflict naming its status."""
    if unit.exercise:
        raise Conflict(f"unit {unit.id} is an exercise unit: only live units are lent to drills")
    if lending and (unit.status is not UnitStatus.AVAILABLE or unit.incident_id is not None):
        raise Conflict(
            f"unit {unit.id} is {unit.status}: a drill borrows only an available live unit",
            unit_id=unit.id,
            unit_status=str(unit.status),
            incident_id=unit.incident_id,
        )


def drill_may_drive(unit: Unit, serves_live_incident: bool) -> bool:
    """Whether a drill runner may report the unit's status or position (DESIGN §8): an exercise
    unit, or a live unit lent to a drill while it serves no live incident. Nothing a drill runner
    does may change a live unit serving a live incident."""
    return unit.exercise or (unit.lent_to_drill is not None and not serves_live_incident)


# --------------------------------------------------------------------------------------------
# Position reports


Position = tuple[str, float, float, datetime]
"""A position report: unit id, latitude and longitude (WGS-84 degrees), when it was fixed (UTC)."""


def fix_ahead_of_clock(at: datetime, now: datetime, max_ahead_s: float) -> str | None:
    """Why a position fixed at ``at`` cannot be taken: it is more than ``max_ahead_s`` seconds
    ahead of ``now`` (both aware, UTC), so it would count as newer than every true fix after it and
    freeze the unit there. None when it can be taken."""
    ahead = (at - now).total_seconds()
    if ahead > max_ahead_s:
        return (
            f"the position is fixed at {at.isoformat()}, {ahead:.0f} s ahead of dispatch's clock "
            f"({now.isoformat(timespec='seconds')}); at most {max_ahead_s:g} s ahead is accepted"
        )
    return None


def latest_positions(reports: Iterable[Position]) -> dict[str, Position]:
    """The newest report of each unit in a batch."""
    latest: dict[str, Position] = {}
    for report in reports:
        seen = latest.get(report[0])
        if seen is None or report[3] > seen[3]:
            latest[report[0]] = report
    return latest
