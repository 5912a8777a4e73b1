"""Dispatch rules: units and their status, response plans, and recommendation.

Pure domain: no I/O beyond reading the plan files shipped inside this package, no framework.
"""

from __future__ import annotations

import heapq
import math
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from importlib import resources
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

from ecs.errors import IllegalTransition, InvalidInput
from ecs.geo import haversine_m
from ecs.vocabulary import Category, Level, Stage

# --------------------------------------------------------------------------------------------
# Errors


class IllegalStatusChange(IllegalTransition):
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
    code, title = "invalid_location", "Location out of range"


@dataclass(frozen=True, slots=True)
class PlanProblem:
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
    POLICE = "police"
    FIRE = "fire"
    MEDICAL = "medical"
    HAZMAT = "hazmat"
    RESCUE = "rescue"
    COMMAND = "command"
    UTILITY = "utility"


class UnitType(StrEnum):
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
    return _NEXT_STATUSES[UnitStatus(from_status)]


def check_status_change(from_status: UnitStatus, to_status: UnitStatus) -> None:
    """Refuse a status change that is not in STATUS_TRANSITIONS."""
    from_status, to_status = UnitStatus(from_status), UnitStatus(to_status)
    if (from_status, to_status) not in STATUS_TRANSITIONS:
        raise IllegalStatusChange(from_status, to_status)


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
    item: _Name
    quantity: _Quantity


class LevelPlan(_PlanModel):
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
    I: LevelPlan  # noqa: E741
    II: LevelPlan
    III: LevelPlan
    IV: LevelPlan


class ResponsePlan(_PlanModel):
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


def load_shipped_plans() -> dict[Category, ResponsePlan]:
    """The plan files shipped with the service, one per incident category, by category."""
    plans: dict[Category, ResponsePlan] = {}
    folder = resources.files("dispatch").joinpath("plans")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        source = f"plans/{entry.name}"
        plan = parse_plan(entry.read_text(encoding="utf-8"), source)
        if plan.category != entry.name.removesuffix(".yaml"):
            raise PlanError(
                source, [PlanProblem("category", 1, f"is {plan.category}, but the file is named {entry.name}")]
            )
        plans[plan.category] = plan
    missing = sorted(set(Category) - set(plans))
    if missing:
        raise PlanError("plans/", [PlanProblem("(folder)", 1, f"no plan for {', '.join(missing)}")])
    return plans


def units_to_add(assigned: Mapping[UnitType, int], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """Units to top up so that `assigned` meets `required` (after a level is raised or a stage begins)."""
    return {t: n - assigned.get(t, 0) for t, n in required.items() if n > assigned.get(t, 0)}


def units_to_release(assigned: Mapping[UnitType, int], required: Mapping[UnitType, int]) -> dict[UnitType, int]:
    """Units held beyond `required` (after a level is lowered), to be released."""
    return {t: n - required.get(t, 0) for t, n in assigned.items() if n > required.get(t, 0)}


# --------------------------------------------------------------------------------------------
# Arrival estimates


class TravelEstimator(Protocol):
    def eta_s(
        self, unit_lat: float, unit_lon: float, dest_lat: float, dest_lon: float, unit_type: UnitType
    ) -> float: ...


class StraightLineEstimator:
    """Great-circle distance times a road factor, at the unit type's typical speed."""

    def __init__(self, road_factor: float = 1.4) -> None:
        if road_factor < 1.0:
            raise ValueError("road_factor below 1 would make roads shorter than a straight line")
        self.road_factor = road_factor

    def eta_s(self, unit_lat: float, unit_lon: float, dest_lat: float, dest_lon: float, unit_type: UnitType) -> float:
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
    unit_type: UnitType
    needed: int
    found: int
    held_by_cover: tuple[str, ...]  # districts that have more units, kept back for their cover
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class RecommendationResult:
    recommendations: list[Recommendation] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.shortfalls


MinCover = int | Mapping[str, Mapping[UnitType, int]]

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
        return self._units.get(unit_id)

    def available_count(self, unit_type: UnitType, district: str, exercise: bool = False) -> int:
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
