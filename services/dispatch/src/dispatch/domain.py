"""Dispatch rules: units and their status, response plans, recommendation, and what a stage or
level change, a status report or an operator's choice does to the units an incident holds.

Pure domain: no I/O, no framework. Functions take what the handlers loaded and return their
decision (and the events it publishes, as contract models); refusals raise ecs.errors.
"""

from __future__ import annotations

import heapq
import math
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Final, Protocol

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ecs.contracts import (
    ParticipantSettled,
    PerimeterSecured,
    PlanPublished,
    UnitAssigned,
    UnitRegistered,
    UnitReleased,
    UnitStatusChanged,
)
from ecs.errors import Conflict, IllegalTransition, InvalidInput, NotFound, StaleVersion
from ecs.geo import haversine_m
from ecs.vocabulary import Category, Level, Participant, Stage

SERVICE: Final = Participant.dispatch.service
"""The service's name: the source of its events."""

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


class InvalidLocation(InvalidInput):
    """A position outside -90..90 latitude, -180..180 longitude (422)."""

    code, title = "invalid_location", "Location out of range"


class UnknownUnit(NotFound):
    """No unit with this id is on the roster (404)."""

    def __init__(self, unit_id: str) -> None:
        super().__init__(f"unit {unit_id} not found", unit_id=unit_id)


class UnknownIncident(NotFound):
    """No event about this incident has reached dispatch (404)."""

    def __init__(self, incident_id: str) -> None:
        super().__init__(
            f"incident {incident_id} is unknown to dispatch (no event about it has arrived)",
            incident_id=incident_id,
        )


class UnknownAssignment(NotFound):
    """No assignment with this id (404)."""

    def __init__(self, assignment_id: int) -> None:
        super().__init__(f"assignment {assignment_id} not found", assignment_id=assignment_id)


class NoPlan(NotFound):
    """The category has no active response plan (404)."""

    def __init__(self, category: str) -> None:
        super().__init__(f"no response plan for category {str(category)!r}", category=str(category))


class StaleUnit(StaleVersion):
    """The unit is not at the version the operator saw (409)."""

    def __init__(self, unit_id: str, current: int, seen: int) -> None:
        super().__init__(
            f"unit {unit_id} is at version {current}, not {seen}: reload it and decide again",
            current_version=current,
        )


@dataclass(frozen=True, slots=True)
class PlanProblem:
    """One bad field of a plan file: its dotted path, its line (1-based), what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.path}: {self.message}"


class PlanError(InvalidInput):
    """A response plan file that cannot be accepted; names each bad field and its line."""

    code, title = "invalid_plan", "Invalid response plan"

    def __init__(self, source: str, problems: Sequence[PlanProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(
            f"{source}: " + "; ".join(str(p) for p in self.problems),
            source=source,
            problems=[{"path": p.path, "line": p.line, "message": p.message} for p in self.problems],
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


def roster_entry(unit: Unit, actor: str) -> UnitRegistered:
    """The roster event of ``unit`` (``dispatch.unit.registered``, ``.updated`` or ``.removed``)."""
    return UnitRegistered(
        unit_id=unit.id,
        callsign=unit.callsign,
        agency=unit.agency,
        unit_type=unit.unit_type,
        capabilities=list(unit.capabilities),
        home_station=unit.home_station,
        district=unit.district,
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


def check_lendable(unit: Unit) -> None:
    """Only live units are lent to drills (and taken back): raises Conflict for an exercise unit."""
    if unit.exercise:
        raise Conflict(f"unit {unit.id} is an exercise unit: only live units are lent to drills")


def reclaim_releases(incident: Incident | None) -> bool:
    """Taking a lent unit back ends its assignment when the incident it serves is an exercise; a
    live incident keeps it."""
    return incident is not None and incident.exercise


# --------------------------------------------------------------------------------------------
# Response plans (预案)


class ApprovalStep(StrEnum):
    """Steps a plan can reserve for a commander's approval."""

    PLAN_ACTIVATION = "plan_activation"
    EVACUATION = "evacuation"
    TRAFFIC_CONTROL = "traffic_control"
    PUBLIC_ALERT = "public_alert"
    OFFICIAL_STATEMENT = "official_statement"
    COVER_STRIPPING = "cover_stripping"
    ALL_CLEAR = "all_clear"


TEMPLATE_FIELDS: Final[frozenset[str]] = frozenset(
    {
        "incident_id",
        "category",
        "level",
        "address",
        "time",
        "isolation_radius_m",
        "evacuation_radius_m",
        "shelter",
        "hotline",
    }
)
"""Placeholders a notification template may use; anything else is a typo caught on load."""


def _check_template(text: str) -> str:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise ValueError(f"template is not well formed: {exc}") from None
    unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
    if "" in names:
        raise ValueError("template has an empty placeholder {}")
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; allowed: {', '.join(sorted(TEMPLATE_FIELDS))}")
    return text


_Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
_Count = Annotated[int, Field(strict=True, ge=1, le=500)]
_Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
_Radius = Annotated[int, Field(strict=True, ge=0, le=100_000)]
_Template = Annotated[str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_check_template)]


class _PlanModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SupplyLine(_PlanModel):
    """Supplies a level of the plan reserves: an item and how many."""

    item: _Name
    quantity: _Quantity


class LevelPlan(_PlanModel):
    """What the plan asks for at one level: radii in metres, units by stage, supplies, templates, approvals."""

    isolation_radius_m: _Radius
    evacuate: Annotated[bool, Field(strict=True)]
    evacuation_radius_m: _Radius = 0
    isolation_units: dict[UnitType, _Count] = Field(default_factory=dict)
    handling_units: dict[UnitType, _Count] = Field(default_factory=dict)
    supplies: list[SupplyLine] = Field(default_factory=list)
    notification_templates: dict[_Name, _Template] = Field(default_factory=dict)
    approval_required: list[ApprovalStep] = Field(default_factory=list)

    @field_validator("evacuation_radius_m")
    @classmethod
    def _radius_matches_evacuate(cls, radius: int, info: ValidationInfo) -> int:
        evacuate = info.data.get("evacuate")
        if evacuate is True and radius == 0:
            raise ValueError("must be greater than 0 when evacuate is true")
        if evacuate is False and radius != 0:
            raise ValueError("must be 0 (or left out) when evacuate is false")
        return radius

    @field_validator("approval_required")
    @classmethod
    def _steps_once(cls, steps: list[ApprovalStep]) -> list[ApprovalStep]:
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        if repeated:
            raise ValueError(f"step listed twice: {', '.join(repeated)}")
        return steps

    def units_for(self, stage: Stage) -> dict[UnitType, int]:
        """Units the incident should hold during `stage`.

        Handling teams come on top of the isolation units, which stay to hold the perimeter.
        """
        if Stage(stage) is Stage.isolation:
            return dict(self.isolation_units)
        total = dict(self.isolation_units)
        for unit_type, count in self.handling_units.items():
            total[unit_type] = total.get(unit_type, 0) + count
        return total


class PlanLevels(_PlanModel):
    """A plan's four parts, one per level (the YAML keys I..IV)."""

    I: LevelPlan  # noqa: E741
    II: LevelPlan
    III: LevelPlan
    IV: LevelPlan


class ResponsePlan(_PlanModel):
    """A category's response plan (预案), one version of it."""

    category: Category
    version: Annotated[int, Field(strict=True, ge=1)]
    levels: PlanLevels

    def for_level(self, level: int) -> LevelPlan:
        """The plan's part for ``level`` (1..4 or a Level); raises ValueError for another number."""
        return self.by_level[Level(level)]

    @cached_property
    def by_level(self) -> dict[Level, LevelPlan]:
        """The plan's four parts by level; the YAML names them I..IV (``Level.from_name``)."""
        return {Level.from_name(name): part for name, part in self.levels}


def _format_loc(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(document)"


def _line_of(root: yaml.Node, loc: Sequence[int | str]) -> int:
    """Line (1-based) of the deepest node of `loc` present in the file."""
    node = root
    line = node.start_mark.line + 1
    for part in loc:
        if part == "[key]":
            break
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _duplicate_keys(node: yaml.Node, path: str, seen_nodes: set[int]) -> Iterator[PlanProblem]:
    # PyYAML keeps the last of two equal keys without a word; in a plan that hides an edit.
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            child = f"{path}.{key_node.value}" if path else key_node.value
            if key_node.value in keys:
                yield PlanProblem(child, key_node.start_mark.line + 1, "key appears twice")
            keys.add(key_node.value)
            yield from _duplicate_keys(value_node, child, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{i}]", seen_nodes)


def parse_plan(text: str, source: str) -> ResponsePlan:
    """Read one response plan from YAML, or raise PlanError naming each bad field and its line."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise PlanError(source, [PlanProblem("(document)", 1, "the plan file is empty")])
        duplicates = list(_duplicate_keys(root, "", set()))
        if duplicates:
            raise PlanError(source, duplicates)
        data: Any = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = f"not valid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            message += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise PlanError(source, [PlanProblem("(document)", line, message)]) from None
    except yaml.YAMLError as exc:
        raise PlanError(source, [PlanProblem("(document)", 1, f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()

    try:
        return ResponsePlan.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            message = err["msg"].removeprefix("Value error, ")
            if loc and loc[-1] == "[key]":
                message = f"bad key: {message}"
            problems.append(PlanProblem(_format_loc(loc), _line_of(root, loc), message))
        raise PlanError(source, problems) from None


def plan_catalogue(files: Mapping[str, str]) -> dict[Category, ResponsePlan]:
    """The plans of a folder (``{file name: YAML text}``, other files ignored), by category.

    Raises PlanError when a plan is malformed, when a file is not named after its plan's category
    (``fire.yaml``), or when a category has no plan.
    """
    plans: dict[Category, ResponsePlan] = {}
    for name in sorted(files):
        if not name.endswith(".yaml"):
            continue
        source = f"plans/{name}"
        plan = parse_plan(files[name], source)
        if plan.category != name.removesuffix(".yaml"):
            raise PlanError(source, [PlanProblem("category", 1, f"is {plan.category}, but the file is named {name}")])
        plans[plan.category] = plan
    missing = sorted(set(Category) - set(plans))
    if missing:
        raise PlanError("plans/", [PlanProblem("(folder)", 1, f"no plan for {', '.join(missing)}")])
    return plans


def read_new_plan(category: str, body: str) -> ResponsePlan:
    """An operator's new version of ``category``'s plan, read from its YAML ``body``.

    Raises NotFound for an unknown category, and PlanError (422, each bad field with its line)
    for a malformed plan or one that names another category.
    """
    source = f"plans/{category}.yaml"
    if category not in {c.value for c in Category}:
        raise NotFound(f"no incident category {category!r}", category=category)
    plan = parse_plan(body, source)
    if plan.category != category:
        line = next((n for n, text in enumerate(body.splitlines(), 1) if text.startswith("category:")), 1)
        raise PlanError(
            source, [PlanProblem("category", line, f"is {plan.category}, but this is the plan of {category}")]
        )
    return plan


def check_next_version(plan: ResponsePlan, active_version: int | None) -> None:
    """A new version is the active one + 1 (1 for a category without a plan): raises StaleVersion
    (409) otherwise, so that two commanders editing the same version do not overwrite each other."""
    current = active_version or 0
    if plan.version != current + 1:
        raise StaleVersion(
            f"plan {plan.category} is at version {current}: a new version must say version: {current + 1}",
            current_version=current,
        )


def plan_document(plan: ResponsePlan) -> dict[str, Any]:
    """The plan as stored and published to other services (the body of ecs.contracts.PlanPublished)."""
    return plan.model_dump(mode="json")


def plan_published(plan: ResponsePlan, actor: str, now: datetime) -> PlanPublished:
    """The ``dispatch.plan.published`` event of a plan version that became active at ``now``."""
    return PlanPublished.model_validate({**plan_document(plan), "actor": actor, "published_at": now})


def units_to_add(assigned: Mapping[UnitType, int], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """Units to top up so that `assigned` meets `required` (after a level is raised or a stage begins)."""
    return {t: n - assigned.get(t, 0) for t, n in required.items() if n > assigned.get(t, 0)}


def units_to_release(assigned: Mapping[UnitType, int], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """Units held beyond `required` (after a level is lowered), to be released."""
    return {t: n - required.get(t, 0) for t, n in assigned.items() if n > required.get(t, 0)}


# --------------------------------------------------------------------------------------------
# Arrival estimates


class TravelEstimator(Protocol):
    """Estimates a unit's travel time to a place."""

    def eta_s(self, unit_lat: float, unit_lon: float, dest_lat: float, dest_lon: float, unit_type: UnitType) -> float:
        """Seconds for a unit of ``unit_type`` to drive from the unit's position to the destination."""
        ...


class StraightLineEstimator:
    """Great-circle distance times a road factor, at the unit type's typical speed."""

    def __init__(self, road_factor: float = 1.4) -> None:
        if road_factor < 1.0:
            raise ValueError("road_factor below 1 would make roads shorter than a straight line")
        self.road_factor = road_factor

    def eta_s(self, unit_lat: float, unit_lon: float, dest_lat: float, dest_lon: float, unit_type: UnitType) -> float:
        """Seconds: great-circle metres times the road factor, at the unit type's speed."""
        metres = haversine_m(unit_lat, unit_lon, dest_lat, dest_lon) * self.road_factor
        return metres / (UnitType(unit_type).speed_kmh / 3.6)


# --------------------------------------------------------------------------------------------
# Recommendation


def _check_location(lat: float, lon: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also refuses NaN
        raise InvalidLocation(f"location ({lat}, {lon}) is out of range: lat -90..90, lon -180..180")


@dataclass(frozen=True, slots=True)
class UnitView:
    """What recommendation needs to know about a unit."""

    id: str
    agency: Agency
    unit_type: UnitType
    capabilities: frozenset[str]
    district: str
    lat: float
    lon: float
    status: UnitStatus
    exercise: bool = False
    borrowed_for: str | None = None  # the drill a live unit is lent to, for display

    def __post_init__(self) -> None:
        _check_location(self.lat, self.lon)
        if type(self.unit_type) is not UnitType:
            object.__setattr__(self, "unit_type", UnitType(self.unit_type))
        if type(self.status) is not UnitStatus:
            object.__setattr__(self, "status", UnitStatus(self.status))
        if type(self.agency) is not Agency:
            object.__setattr__(self, "agency", Agency(self.agency))


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A unit to send, with its arrival estimate (s), distance (m) and the reason it was chosen."""

    unit_id: str
    unit_type: UnitType
    eta_s: float
    distance_m: float
    district: str
    reason: str
    strips_cover: bool = False
    borrowed: bool = False


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Units of a type the recommendation could not find, and the districts that kept theirs for cover."""

    unit_type: UnitType
    needed: int
    found: int
    held_by_cover: tuple[str, ...]  # districts that have more units, kept back for their cover
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class RecommendationResult:
    """What a recommendation found: units to send, and what it could not find."""

    recommendations: list[Recommendation] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing is missing."""
        return not self.shortfalls


MinCover = int | Mapping[str, Mapping[UnitType, int]]


class CoverPolicy(Mapping[str, Mapping[UnitType, int]]):
    """Minimum available units per district and type: a default with per-district overrides
    (``{"<district>": {"<unit type>": n}}``)."""

    def __init__(self, default: int, overrides: Mapping[str, Mapping[str, int]]) -> None:
        self.default = default
        self.overrides = {d: {UnitType(t): int(n) for t, n in by_type.items()} for d, by_type in overrides.items()}

    def get(self, district: str, default: Any = None) -> Mapping[UnitType, int]:  # type: ignore[override]
        """The minimum of each unit type ``district`` keeps available."""
        return _DistrictCover(self.default, self.overrides.get(district, {}))

    def __getitem__(self, district: str) -> Mapping[UnitType, int]:
        return self.get(district)

    def __iter__(self) -> Any:
        return iter(self.overrides)

    def __len__(self) -> int:
        return len(self.overrides)


class _DistrictCover(dict[UnitType, int]):
    def __init__(self, default: int, overrides: Mapping[UnitType, int]) -> None:
        super().__init__(overrides)
        self.default = default

    def get(self, unit_type: UnitType, default: Any = None) -> int:  # type: ignore[override]
        return super().get(unit_type, self.default)


_M_PER_DEG: Final = 111_195.0  # metres per degree of latitude (mean Earth radius)
_Candidate = tuple[float, str, UnitView]  # (approximate squared distance in m², unit id, unit)


def _ordinal(n: int) -> str:
    if n == 1:
        return "nearest"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} nearest"


class UnitIndex:
    """Units kept ready for recommendation, updated one unit at a time.

    Available units are bucketed by (exercise, unit type) in a grid of square cells about
    `cell_m` wide, with available counts per district. A recommendation walks rings of cells
    outward from the incident, so it reads the few cells near the incident instead of every unit.
    """

    def __init__(self, cell_m: float = 2_000.0, reference_lat: float | None = None) -> None:
        if cell_m <= 0:
            raise ValueError("cell_m must be positive")
        self._cell_m = cell_m
        self._dlat = cell_m / _M_PER_DEG
        self._cos_ref = 0.0
        self._dlon = 0.0
        if reference_lat is not None:
            self._set_reference(reference_lat)
        self._units: dict[str, UnitView] = {}
        self._cells: dict[tuple[bool, UnitType], dict[tuple[int, int], dict[str, UnitView]]] = {}
        self._sizes: dict[tuple[bool, UnitType], int] = {}
        self._district_available: dict[tuple[bool, UnitType, str], int] = {}

    def _set_reference(self, lat: float) -> None:
        # Cells are square near the reference latitude; the search bound corrects for any other.
        self._cos_ref = max(0.01, math.cos(math.radians(lat)))
        self._dlon = self._cell_m / (_M_PER_DEG * self._cos_ref)

    def _cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self._dlat), math.floor(lon / self._dlon)

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, unit_id: object) -> bool:
        return unit_id in self._units

    def get(self, unit_id: str) -> UnitView | None:
        """What the index knows of a unit, or None."""
        return self._units.get(unit_id)

    def available_count(self, unit_type: UnitType, district: str, exercise: bool = False) -> int:
        """Available units of a type in a district (exercise or live)."""
        return self._district_available.get((exercise, unit_type, district), 0)

    def upsert(self, unit: UnitView) -> None:
        """Add a unit, or replace what is known about it (location, status, district...)."""
        if not self._dlon:
            self._set_reference(unit.lat)
        old = self._units.get(unit.id)
        if old is not None and old.status is UnitStatus.AVAILABLE:
            self._unlist(old)
        self._units[unit.id] = unit
        if unit.status is UnitStatus.AVAILABLE:
            self._list(unit)

    def remove(self, unit_id: str) -> UnitView | None:
        """Forget a unit; returns what was known of it."""
        old = self._units.pop(unit_id, None)
        if old is not None and old.status is UnitStatus.AVAILABLE:
            self._unlist(old)
        return old

    def _list(self, unit: UnitView) -> None:
        key = (unit.exercise, unit.unit_type)
        self._cells.setdefault(key, {}).setdefault(self._cell_of(unit.lat, unit.lon), {})[unit.id] = unit
        self._sizes[key] = self._sizes.get(key, 0) + 1
        dkey = (unit.exercise, unit.unit_type, unit.district)
        self._district_available[dkey] = self._district_available.get(dkey, 0) + 1

    def _unlist(self, unit: UnitView) -> None:
        key = (unit.exercise, unit.unit_type)
        cells = self._cells[key]
        cell = self._cell_of(unit.lat, unit.lon)
        members = cells[cell]
        del members[unit.id]
        if not members:
            del cells[cell]
        self._sizes[key] -= 1
        dkey = (unit.exercise, unit.unit_type, unit.district)
        self._district_available[dkey] -= 1

    def _nearest(self, key: tuple[bool, UnitType], lat: float, lon: float) -> Iterator[_Candidate]:
        """Available units of one bucket, nearest first by an equirectangular distance."""
        cells = self._cells.get(key)
        total = self._sizes.get(key, 0)
        if not cells or not total:
            return
        cos_q = math.cos(math.radians(lat))
        kx = _M_PER_DEG * cos_q
        ky = _M_PER_DEG
        # Every unit outside rings 0..r is at least r * step away (see the cell geometry above).
        step = self._cell_m * min(1.0, cos_q / self._cos_ref)
        i0, j0 = self._cell_of(lat, lon)
        heap: list[_Candidate] = []
        push, pop = heapq.heappush, heapq.heappop
        seen = 0
        visited = 0
        r = 0
        while seen < total:
            if visited > 2 * len(cells) + 8:
                # Far from everything or a sparse type: reading the rest directly is cheaper.
                for (i, j), members in cells.items():
                    if max(abs(i - i0), abs(j - j0)) >= r:
                        for u in members.values():
                            dx = (u.lon - lon) * kx
                            dy = (u.lat - lat) * ky
                            push(heap, (dx * dx + dy * dy, u.id, u))
                break
            if r == 0:
                ring: Iterable[tuple[int, int]] = ((i0, j0),)
            else:
                ring = _ring(i0, j0, r)
            for cell in ring:
                visited += 1
                members = cells.get(cell)
                if members:
                    seen += len(members)
                    for u in members.values():
                        dx = (u.lon - lon) * kx
                        dy = (u.lat - lat) * ky
                        push(heap, (dx * dx + dy * dy, u.id, u))
            bound = r * step
            bound2 = bound * bound
            while heap and heap[0][0] <= bound2:
                yield pop(heap)
            r += 1
        while heap:
            yield pop(heap)

    def recommend(
        self,
        requirement: Mapping[UnitType, int],
        incident_lat: float,
        incident_lon: float,
        incident_level: int,
        incident_exercise: bool,
        min_cover: MinCover = 0,
        estimator: TravelEstimator | None = None,
        borrowed_ids: Iterable[str] = (),
    ) -> RecommendationResult:
        """Available units for `requirement`, nearest by estimated arrival first.

        A district keeps `min_cover` available units of each type unless the incident is level I.
        An exercise incident takes exercise units, and live units only when their id is in
        `borrowed_ids`; a borrowed live unit never takes its district below cover. A live incident
        never takes exercise units.
        """
        _check_location(incident_lat, incident_lon)
        level = Level(incident_level)
        estimator = estimator or StraightLineEstimator()
        borrowed: list[UnitView] = []
        if incident_exercise:
            for uid in dict.fromkeys(borrowed_ids):
                u = self._units.get(uid)
                if u is not None and not u.exercise and u.status is UnitStatus.AVAILABLE:
                    borrowed.append(u)

        if isinstance(min_cover, int):
            cover_all = min_cover

            def cover(district: str, unit_type: UnitType) -> int:
                return cover_all

        else:
            cover_map = min_cover

            def cover(district: str, unit_type: UnitType) -> int:
                return cover_map.get(district, {}).get(unit_type, 0)

        result = RecommendationResult()
        for unit_type, needed in requirement.items():
            unit_type = UnitType(unit_type)
            if needed < 0:
                raise ValueError(f"requirement for {unit_type} is negative: {needed}")
            if needed == 0:
                continue
            self._recommend_type(
                unit_type,
                needed,
                incident_lat,
                incident_lon,
                level,
                incident_exercise,
                borrowed,
                cover,
                estimator,
                result,
            )
        return result

    def _recommend_type(
        self,
        unit_type: UnitType,
        needed: int,
        lat: float,
        lon: float,
        level: Level,
        exercise: bool,
        borrowed: list[UnitView],
        cover: Callable[[str, UnitType], int],
        estimator: TravelEstimator,
        result: RecommendationResult,
    ) -> None:
        stream: Iterator[_Candidate] = self._nearest((exercise, unit_type), lat, lon)
        lent = [u for u in borrowed if u.unit_type is unit_type]
        if lent:
            kx = _M_PER_DEG * math.cos(math.radians(lat))
            ranked = sorted((((u.lon - lon) * kx) ** 2 + ((u.lat - lat) * _M_PER_DEG) ** 2, u.id, u) for u in lent)
            stream = heapq.merge(stream, ranked)

        # Pre-rank by straight-line distance within each district's allowance, then rank a few
        # more than needed by the estimator, whose order may differ slightly from the pre-rank.
        wanted = needed * 2
        taken: dict[tuple[bool, str], int] = {}
        shortlist: list[UnitView] = []
        held_by_cover: set[str] = set()
        for _, _, u in stream:
            dkey = (u.exercise, u.district)
            left = self._district_available[(u.exercise, unit_type, u.district)] - taken.get(dkey, 0) - 1
            may_strip = level is Level.I and u.exercise == exercise
            if left < cover(u.district, unit_type) and not may_strip:
                held_by_cover.add(u.district)
                continue
            taken[dkey] = taken.get(dkey, 0) + 1
            shortlist.append(u)
            if len(shortlist) >= wanted:
                break

        timed = sorted((estimator.eta_s(u.lat, u.lon, lat, lon, unit_type), u.id, u) for u in shortlist)[:needed]

        taken.clear()
        for rank, (eta, _, u) in enumerate(timed, start=1):
            dkey = (u.exercise, u.district)
            taken[dkey] = taken.get(dkey, 0) + 1
            keeps = self._district_available[(u.exercise, unit_type, u.district)] - taken[dkey]
            minimum = cover(u.district, unit_type)
            lent_unit = u.exercise != exercise
            what = f"{_ordinal(rank)} available {unit_type}"
            if lent_unit:
                what += f" (live unit lent to the exercise{f' {u.borrowed_for}' if u.borrowed_for else ''})"
            if keeps < minimum:
                where = (
                    f"district {u.district} left with {keeps} of its minimum {minimum}: "
                    f"cover stripped for a level I incident"
                )
            elif minimum:
                where = f"district {u.district} keeps {keeps} of its minimum {minimum}"
            else:
                where = f"district {u.district} keeps {keeps}"
            result.recommendations.append(
                Recommendation(
                    unit_id=u.id,
                    unit_type=unit_type,
                    eta_s=eta,
                    distance_m=haversine_m(u.lat, u.lon, lat, lon),
                    district=u.district,
                    reason=f"{what}, ETA {eta / 60:.1f} min, {where}",
                    strips_cover=keeps < minimum,
                    borrowed=lent_unit,
                )
            )

        found = len(timed)
        if found < needed:
            pool = " among exercise units and borrowed live units" if exercise else ""
            if held_by_cover:
                districts = sorted(held_by_cover)
                noun = "district" if len(districts) == 1 else "districts"
                message = (
                    f"need {needed} {unit_type}, only {found} available{pool} without stripping "
                    f"{noun} {', '.join(districts)} below cover"
                )
            else:
                message = f"need {needed} {unit_type}, only {found} available{pool}"
            result.shortfalls.append(Shortfall(unit_type, needed, found, tuple(sorted(held_by_cover)), message))


def _ring(i0: int, j0: int, r: int) -> Iterator[tuple[int, int]]:
    """Cells at Chebyshev distance exactly r from (i0, j0)."""
    for dj in range(-r, r + 1):
        yield i0 - r, j0 + dj
        yield i0 + r, j0 + dj
    for di in range(-r + 1, r):
        yield i0 + di, j0 - r
        yield i0 + di, j0 + r


def recommend(
    requirement: Mapping[UnitType, int],
    incident_lat: float,
    incident_lon: float,
    incident_level: int,
    incident_exercise: bool,
    units: Sequence[UnitView],
    min_cover: MinCover = 0,
    estimator: TravelEstimator | None = None,
    borrowed_ids: Iterable[str] = (),
) -> RecommendationResult:
    """Recommend from a plain list of units (builds a UnitIndex; keep one for repeated use)."""
    index = UnitIndex()
    for unit in units:
        index.upsert(unit)
    return index.recommend(
        requirement,
        incident_lat,
        incident_lon,
        incident_level,
        incident_exercise,
        min_cover,
        estimator,
        borrowed_ids,
    )


# --------------------------------------------------------------------------------------------
# Incidents and the units they hold


class AssignmentSource(StrEnum):
    """How a unit came to serve an incident."""

    AUTOMATIC = "automatic"  # the stage automation, by the plan
    RECOMMENDED = "recommended"  # an operator accepted the recommendation
    OVERRIDE = "override"  # an operator chose a unit that was not recommended, with a reason
    REASSIGNED = "reassigned"  # moved from another incident (a reassignment or a merge)


@dataclass(frozen=True, slots=True)
class Incident:
    """Dispatch's copy of an incident, kept from incident-intake's events (location in WGS-84
    degrees), and what dispatch last published about it (None: nothing yet)."""

    id: str
    category: Category
    level: Level
    stage: Stage
    lat: float
    lon: float
    exercise: bool
    merged_into: str | None = None
    perimeter_secured: bool | None = None
    settled: bool | None = None
    shortfalls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Held:
    """An active assignment, with the status its unit reports now."""

    id: int
    incident_id: str
    unit_id: str
    unit_type: UnitType
    stage: Stage  # what the unit was sent for: isolation (the perimeter) or handling
    source: AssignmentSource
    status: UnitStatus


@dataclass(frozen=True, slots=True)
class Assignment:
    """A unit sent to an incident, from its assignment to its release (times in UTC; arrival
    estimate in seconds, straight-line distance in metres, both to 0.1). ``id`` is None until
    stored."""

    incident_id: str
    unit_id: str
    unit_type: UnitType
    agency: Agency
    stage: Stage
    source: AssignmentSource
    actor: str
    reason: str
    eta_s: float | None
    distance_m: float | None
    exercise: bool
    assigned_at: datetime
    arrived_at: datetime | None = None
    released_at: datetime | None = None
    released_by: str | None = None
    release_reason: str | None = None
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an assignment command did: the assignments made and the units it could not find."""

    assignments: list[Assignment]
    shortfalls: list[str]


def assignment_stage(stage: Stage) -> Stage:
    """What a unit sent during ``stage`` is for: the perimeter (isolation) until handling begins,
    handling from then on."""
    return Stage.isolation if stage in (Stage.reported, Stage.isolation) else Stage.handling


def plan_stage(stage: Stage, release_on_aftermath: bool) -> Stage | None:
    """Whose units the plan wants an incident to hold at ``stage``: isolation's until handling
    begins; handling's (isolation's included) through opinion control, and through aftermath
    unless units go home when it begins; None (no units) once closed or cancelled."""
    if stage in (Stage.reported, Stage.isolation):
        return Stage.isolation
    if stage in (Stage.handling, Stage.opinion_control) or (stage == Stage.aftermath and not release_on_aftermath):
        return Stage.handling
    return None


def required_units(level_plan: LevelPlan, stage: Stage, release_on_aftermath: bool) -> dict[UnitType, int]:
    """The units, by type, the plan's part for the incident's level wants it to hold at ``stage``."""
    wanted = plan_stage(stage, release_on_aftermath)
    return level_plan.units_for(wanted) if wanted is not None else {}


def held_by_type(held: Iterable[Held]) -> Counter[UnitType]:
    """How many units of each type the incident holds."""
    return Counter(UnitType(a.unit_type) for a in held)


def top_up(held: Sequence[Held], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """The units, by type, missing from ``held`` to meet ``required``."""
    return units_to_add(held_by_type(held), required)


def check_open(incident: Incident) -> None:
    """Units are sent to an open incident only: raises Conflict for a merged, closed or cancelled one."""
    if incident.merged_into:
        raise Conflict(
            f"incident {incident.id} was merged into {incident.merged_into}", merged_into=incident.merged_into
        )
    if not Stage(incident.stage).is_open:
        raise Conflict(f"incident {incident.id} is {incident.stage}", stage=incident.stage)


def may_serve(unit: Unit, incident: Incident) -> bool:
    """Whether the unit may serve the incident (DESIGN §8): a live incident takes live units only;
    an exercise incident takes exercise units and live units lent to a drill. The same rule guards
    the claim in the database (store.claim_units)."""
    if incident.exercise:
        return unit.exercise or unit.lent_to_drill is not None
    return not unit.exercise


def check_eligible(unit: Unit, incident: Incident) -> None:
    """Raises Conflict when the unit may not serve the incident (see may_serve), saying why."""
    if incident.exercise and not unit.exercise and not unit.lent_to_drill:
        raise Conflict(
            f"unit {unit.id} is a live unit not lent to a drill: exercise incident {incident.id} cannot take it",
            unit_id=unit.id,
        )
    if not incident.exercise and unit.exercise:
        raise Conflict(
            f"unit {unit.id} is an exercise unit: live incident {incident.id} cannot take it", unit_id=unit.id
        )


def check_assignable(unit: Unit, incident: Incident) -> None:
    """An operator may assign the unit to the incident: it may serve it and it is available.
    Raises Conflict otherwise, naming the incident a busy unit serves."""
    check_eligible(unit, incident)
    if unit.status is not UnitStatus.AVAILABLE:
        raise busy(unit)


def check_unit_list(unit_ids: Sequence[str]) -> None:
    """An operator's choice names at least one unit, each once: raises InvalidInput otherwise."""
    if not unit_ids:
        raise InvalidInput("name at least one unit", field="unit_ids")
    if len(set(unit_ids)) != len(unit_ids):
        raise InvalidInput("a unit is listed twice", field="unit_ids")


def choose_units(
    unit_ids: Sequence[str], recommended: Mapping[str, Recommendation], reason: str | None
) -> list[tuple[str, AssignmentSource, str]]:
    """An operator's choice as (unit id, source, reason) per unit: a recommended unit keeps the
    recommendation's reason (and the operator's, if given); any other is an override and needs the
    operator's reason, else InvalidInput (422) names the units not recommended."""
    overrides = [uid for uid in unit_ids if uid not in recommended]
    if overrides and not (reason and reason.strip()):
        raise InvalidInput(
            f"unit {overrides[0]} is not among the recommended units: give a reason to override",
            field="reason",
            not_recommended=overrides,
        )
    chosen = []
    for uid in unit_ids:
        rec = recommended.get(uid)
        if rec is None:
            chosen.append((uid, AssignmentSource.OVERRIDE, f"override: {reason}"))
        else:
            chosen.append((uid, AssignmentSource.RECOMMENDED, f"{rec.reason} ({reason})" if reason else rec.reason))
    return chosen


def new_assignment(
    incident: Incident,
    unit: Unit,
    stage: Stage,
    source: AssignmentSource,
    actor: str,
    reason: str,
    estimator: TravelEstimator,
    now: datetime,
) -> Assignment:
    """The assignment of ``unit`` to ``incident`` at ``now``, with the estimated arrival (s) and the
    straight-line distance (m) from where the unit is."""
    eta = estimator.eta_s(unit.lat, unit.lon, incident.lat, incident.lon, unit.unit_type)
    return Assignment(
        incident_id=incident.id,
        unit_id=unit.id,
        unit_type=unit.unit_type,
        agency=unit.agency,
        stage=stage,
        source=source,
        actor=actor,
        reason=reason,
        eta_s=round(eta, 1),
        distance_m=round(haversine_m(unit.lat, unit.lon, incident.lat, incident.lon), 1),
        exercise=incident.exercise,
        assigned_at=now,
    )


def assigned_event(assignment: Assignment) -> UnitAssigned:
    """The ``dispatch.unit.assigned`` event of a stored assignment."""
    if assignment.id is None:
        raise ValueError("an assignment is announced once stored")
    return UnitAssigned(
        incident_id=assignment.incident_id,
        assignment_id=assignment.id,
        unit_id=assignment.unit_id,
        unit_type=assignment.unit_type,
        agency=assignment.agency,
        stage=assignment.stage,
        source=assignment.source,
        actor=assignment.actor,
        eta_s=assignment.eta_s,
        distance_m=assignment.distance_m,
        reason=assignment.reason,
    )


def released_status(status: UnitStatus) -> UnitStatus:
    """Where a released unit goes: available again if it had not left yet, else returning."""
    return UnitStatus.AVAILABLE if status is UnitStatus.ASSIGNED else UnitStatus.RETURNING


def release_event(held: Held, status: UnitStatus, actor: str, reason: str) -> UnitReleased:
    """The ``dispatch.unit.released`` event: the unit no longer serves the incident; ``status`` is
    the unit's status afterwards."""
    return UnitReleased(
        incident_id=held.incident_id,
        assignment_id=held.id,
        unit_id=held.unit_id,
        unit_type=held.unit_type,
        status=status,
        reason=reason,
        actor=actor,
    )


def check_release(assignment: Assignment, held: Held | None) -> Held:
    """The active assignment to release; raises Conflict when it was released already."""
    if held is None:
        raise Conflict(
            f"assignment {assignment.id} was already released at {assignment.released_at}",
            assignment_id=assignment.id,
        )
    return held


def check_other_incident(assignment: Assignment, to_incident_id: str) -> None:
    """A reassignment goes to another incident: raises Conflict for the one the unit serves."""
    if assignment.incident_id == to_incident_id:
        raise Conflict(f"unit {assignment.unit_id} already serves incident {to_incident_id}")


def check_reassignable(assignment: Assignment, held: Held | None) -> Held:
    """Only a unit not yet on scene (assigned or en route) is sent elsewhere; raises Conflict when
    the assignment ended or the unit must be released first."""
    if held is None:
        raise Conflict(f"assignment {assignment.id} was already released", assignment_id=assignment.id)
    if held.status not in (UnitStatus.ASSIGNED, UnitStatus.EN_ROUTE):
        raise Conflict(
            f"unit {held.unit_id} is {held.status} at incident {held.incident_id}: release it first",
            incident_id=held.incident_id,
        )
    return held


def merge_reason(target: Incident) -> str:
    """Why a merge ends the absorbed incident's assignments."""
    return f"incident merged into {target.id}"


def takes_over(target: Incident) -> bool:
    """Whether the incident a merge absorbed another into takes over its units (it is open) or
    they are released."""
    return Stage(target.stage).is_open


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a stage or level change asks of the units an incident holds: assignments to release
    (and why), and the units to add by type for ``stage`` (isolation or handling)."""

    release: tuple[Held, ...] = ()
    release_reason: str = ""
    add: dict[UnitType, int] = field(default_factory=dict)
    stage: Stage = Stage.isolation


def reconcile(
    incident: Incident, held: Sequence[Held], level_plan: LevelPlan | None, release_on_aftermath: bool
) -> Reconciliation:
    """Bring the units ``incident`` holds to what its plan wants at its stage and level.

    A merged, closed or cancelled incident (or one in aftermath when units go home then) releases
    everything. A reported one waits: the plan's units go out when isolation begins. Otherwise the
    automatic assignments beyond the plan go (a lowered level), and what is missing is added.
    Raises NoPlan when the plan is needed and ``level_plan`` is None.
    """
    stage = Stage(incident.stage)
    if incident.merged_into or plan_stage(stage, release_on_aftermath) is None:
        reason = f"incident merged into {incident.merged_into}" if incident.merged_into else f"incident {stage}"
        return Reconciliation(release=tuple(held), release_reason=reason)
    if stage is Stage.reported:
        return Reconciliation()
    if level_plan is None:
        raise NoPlan(incident.category)
    required = required_units(level_plan, stage, release_on_aftermath)
    holding = held_by_type(held)
    excess = units_to_release(holding, required)
    return Reconciliation(
        release=tuple(surplus(held, excess)),
        release_reason=f"incident lowered to level {incident.level}: more units than the plan wants",
        add=units_to_add(holding, required),
        stage=assignment_stage(stage),
    )


_GIVE_BACK_ORDER: Final = {UnitStatus.ASSIGNED: 0, UnitStatus.EN_ROUTE: 1, UnitStatus.ON_SCENE: 2}


def surplus(held: Sequence[Held], excess: Mapping[UnitType, int]) -> list[Held]:
    """The assignments to give back, ``excess`` of each type: automatic ones only (an operator's
    choice stays), those not yet on scene first, the most recent first."""
    picked: list[Held] = []
    for unit_type, n in excess.items():
        pool = [a for a in held if a.unit_type == unit_type and a.source == AssignmentSource.AUTOMATIC]
        pool.sort(key=lambda a: (_GIVE_BACK_ORDER.get(UnitStatus(a.status), 3), -a.id))
        picked.extend(pool[:n])
    return picked


def perimeter_secured(held: Sequence[Held], plan_wants: int) -> bool:
    """The perimeter counts as secured when every isolation unit the incident holds is on scene and
    it holds at least one, or when its plan wants none (``plan_wants`` isolation units)."""
    perimeter = [a for a in held if a.stage == Stage.isolation]
    on_scene = sum(1 for a in perimeter if a.status == UnitStatus.ON_SCENE)
    return on_scene == len(perimeter) and (bool(perimeter) or plan_wants == 0)


def is_settled(held: Sequence[Held]) -> bool:
    """Dispatch is settled with an incident when it holds no units for it."""
    return not held


@dataclass(frozen=True, slots=True)
class Facts:
    """What dispatch tells the lifecycle about an incident when it changed: the new values (None:
    unchanged) and their events."""

    perimeter_secured: bool | None = None
    settled: bool | None = None
    events: tuple[PerimeterSecured | ParticipantSettled, ...] = ()

    def values(self) -> dict[str, bool]:
        """The changed values, by column of dispatch's copy of the incident."""
        changed = {"perimeter_secured": self.perimeter_secured, "settled": self.settled}
        return {k: v for k, v in changed.items() if v is not None}


def incident_facts(incident: Incident, held: Sequence[Held], level_plan: LevelPlan | None) -> Facts:
    """The lifecycle's guards wait for these facts (DESIGN §3): the perimeter units on scene, and
    dispatch settled. Published when they change, and ``settled`` the first time in any case."""
    plan_wants = sum(level_plan.isolation_units.values()) if level_plan is not None else 0
    secured = perimeter_secured(held, plan_wants)
    settled = is_settled(held)
    new_secured: bool | None = None
    new_settled: bool | None = None
    events: list[PerimeterSecured | ParticipantSettled] = []
    if bool(incident.perimeter_secured) != secured:
        new_secured = secured
        perimeter = [a for a in held if a.stage == Stage.isolation]
        on_scene = sum(1 for a in perimeter if a.status == UnitStatus.ON_SCENE)
        detail = f"{on_scene} of {len(perimeter)} perimeter units on scene"
        if len(perimeter) < plan_wants:
            detail += f" (the plan wants {plan_wants})"
        events.append(PerimeterSecured(incident_id=incident.id, on_scene=secured, detail=detail))
    if incident.settled is None or incident.settled != settled:
        new_settled = settled
        detail = "no units held" if settled else f"{len(held)} units held"
        events.append(
            ParticipantSettled(
                incident_id=incident.id, participant=Participant.dispatch, settled=settled, detail=detail
            )
        )
    return Facts(new_secured, new_settled, tuple(events))


def shortfall_messages(shortfalls: Sequence[Shortfall], remaining: Mapping[UnitType, int]) -> list[str]:
    """Why units are still missing after claiming: the recommendation's shortfall of each type
    still short, or, when it found enough, that they were taken by others meanwhile."""
    messages = [s.message for s in shortfalls if s.unit_type in remaining]
    for unit_type, n in remaining.items():
        if not any(s.unit_type == unit_type for s in shortfalls):
            messages.append(f"need {n} more {unit_type}: the units found were taken meanwhile")
    return messages


Position = tuple[str, float, float, datetime]
"""A position report: unit id, latitude and longitude (WGS-84 degrees), when it was fixed (UTC)."""


def latest_positions(reports: Iterable[Position]) -> dict[str, Position]:
    """The newest report of each unit in a batch."""
    latest: dict[str, Position] = {}
    for report in reports:
        seen = latest.get(report[0])
        if seen is None or report[3] > seen[3]:
            latest[report[0]] = report
    return latest
