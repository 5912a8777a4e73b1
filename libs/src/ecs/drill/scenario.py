"""Drill scenario files: an exercise's metadata, objectives with measurable targets, the exercise
resources it creates or borrows, and its master scenario events list (MSEL) of injects on the
scenario clock.

A scenario is YAML, read whole or refused whole (``load_scenario`` raises ScenarioError, a 422-style
error naming the file and each bad field with its line, like a response plan). Terms follow US HSEEP
(exercise types, MSEL, injects, objectives rated P / S / M / U) and China's 2009 drill guide
(《突发事件应急演练指南》: tabletop 桌面演练, functional 功能演练, full-scale 全面演练).

Times are scenario seconds from the drill's start (``"00:05:00"``, ``"5m"``, ``"90s"``, ``"2h"``
or a number of seconds); places are WGS-84 degrees; distances are metres.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..vocabulary import Category, Level
from ..yamlfile import FileProblem, Location, YamlFileError, load_yaml_model

__all__ = [
    "SCENARIOS",
    "Action",
    "AlarmBurst",
    "Fault",
    "Measure",
    "Objective",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_duration",
    "scenario_path",
]

SCENARIOS = Path(__file__).parent / "scenarios"
"""The shipped scenarios (``<name>.yaml``): ``ecs drill run bund`` finds ``bund.yaml`` here."""

_DURATION = re.compile(r"^(?:([0-9]+):)?([0-9]{1,2}):([0-9]{1,2})$")
_UNIT_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*(s|m|h)$")
MAX_SCENARIO_S = 7 * 24 * 3600
"""A drill's scenario clock runs at most a week."""


def parse_duration(value: object) -> float:
    """Scenario seconds from ``"HH:MM:SS"``, ``"MM:SS"``, ``"90s"``, ``"5m"``, ``"2h"`` or a
    number of seconds. Raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a time is HH:MM:SS, MM:SS, 90s, 5m, 2h or seconds")
    if isinstance(value, int | float):
        if not 0 <= value <= MAX_SCENARIO_S:  # also NaN, infinities and ints too large for a float
            raise ValueError(f"a number of seconds must lie in 0 .. {MAX_SCENARIO_S} (a week)")
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if m := _DURATION.match(text):
            hours = 0 if m.group(1) is None else int(m.group(1))  # MM:SS has no hours
            minutes, secs = int(m.group(2)), int(m.group(3))
            if minutes >= 60 and m.group(1) is not None or secs >= 60:
                raise ValueError(f"{value!r} is not a time: minutes and seconds run to 59")
            seconds = hours * 3600 + minutes * 60 + secs
        elif m := _UNIT_DURATION.match(text):
            seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]
        else:
            raise ValueError(f"{value!r} is not a time: use HH:MM:SS, MM:SS, 90s, 5m, 2h or seconds")
    else:
        raise ValueError("a time is HH:MM:SS, MM:SS, 90s, 5m, 2h or seconds")
    if not 0 <= seconds <= MAX_SCENARIO_S:
        raise ValueError(f"{value!r} is outside 0 s .. {MAX_SCENARIO_S} s (a week)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Scenario seconds, written as a time (see parse_duration)."""

Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")]
ItemCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Point(_Model):
    """A place in WGS-84 degrees."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)


class ExerciseType(StrEnum):
    """HSEEP's exercise types (演练形式)."""

    tabletop = "tabletop"
    functional = "functional"
    full_scale = "full-scale"


class Measure(StrEnum):
    """What an objective measures, from the system's own events.

    Times run from the drill's first alarm, in scenario seconds; counts are whole numbers."""

    incident_opened = "incident_opened"  # incident.created
    incident_verified = "incident_verified"  # incident.verified
    first_unit_assigned = "first_unit_assigned"  # dispatch.unit.assigned
    perimeter_secured = "perimeter_secured"  # dispatch.incident.perimeter_secured
    supplies_reserved = "supplies_reserved"  # stockpile.reservation.made
    shelter_opened = "shelter_opened"  # shelter.status.changed to open
    evacuees_placed = "evacuees_placed"  # every household of the evacuate injects placed
    first_alert_published = "first_alert_published"  # notification.alert.published
    first_statement_published = "first_statement_published"  # notification.statement.published
    incident_closed = "incident_closed"  # incident.stage.changed to closed
    items_short = "items_short"  # base units the reservations could not find
    clocks_missed = "clocks_missed"  # notification.clock.missed (the 5 h / 24 h clocks)
    incidents_opened = "incidents_opened"  # how many incidents the drill's alarms opened

    @property
    def is_count(self) -> bool:
        """True for a count (a target in whole numbers, at most), False for a time."""
        return self in COUNT_MEASURES


COUNT_MEASURES = frozenset({Measure.items_short, Measure.clocks_missed, Measure.incidents_opened})


class Objective(_Model):
    """An exercise objective mapped to a capability, with a measurable target: a time (at most,
    from the first alarm) or a count (at most)."""

    id: Ident
    capability: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    description: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    measure: Measure
    target: Annotated[str | int | float, Field(description="a time for a time measure, a count for a count")]

    @property
    def target_value(self) -> float:
        """The target in scenario seconds (a time) or as a count."""
        if self.measure.is_count:
            return float(self.target)
        return parse_duration(self.target)

    @field_validator("target")
    @classmethod
    def _target_fits_measure(cls, target: str | int | float, info: ValidationInfo) -> str | int | float:
        measure = info.data.get("measure")
        if measure is None:  # the measure itself was refused: that error says enough
            return target
        if measure.is_count:
            if isinstance(target, str | bool) or not 0 <= target <= 10**9 or float(target) != int(target):
                raise ValueError(f"{measure} is a count: give the largest acceptable count, a whole number >= 0")
        else:
            try:
                parse_duration(target)
            except ValueError as exc:
                raise ValueError(f"{measure} is a time: {exc}") from None
        return target


class UnitGroup(_Model):
    """Exercise units to create: ``count`` of ``unit_type`` around ``near`` within ``spread_m``.
    Their ids are ``drill-<unit type with dashes>-<n>`` (see unit_id)."""

    unit_type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    count: int = Field(ge=1, le=500)
    near: Point
    spread_m: float = Field(default=3000, ge=0, le=100_000)
    district: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "drill"
    agency: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class DepotSpec(_Model):
    """An exercise depot to create and stock (base units of each catalogue item)."""

    id: Ident
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    district: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    location: Point
    stock: dict[ItemCode, Annotated[int, Field(ge=1, le=10_000_000)]] = Field(default_factory=dict)


class ShelterSpec(_Model):
    """An exercise shelter to create on standby (capacity from its area, GB 21734: 1.5 m² a person)."""

    id: Ident
    name_zh: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    name_en: Annotated[str, StringConstraints(max_length=200)] = ""
    kind: Literal["park", "square", "school", "stadium", "community_centre", "other"] = "school"
    district: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    location: Point
    area_m2: float = Field(gt=0, le=10_000_000)
    accessible_places: int = Field(default=0, ge=0, le=100_000)
    pet_places: int = Field(default=0, ge=0, le=100_000)


class Resources(_Model):
    """What the drill creates (all ``exercise: true``) or borrows from live service by explicit loan."""

    units: list[UnitGroup] = Field(default_factory=list, max_length=100)
    borrow_units: list[Ident] = Field(
        default_factory=list, max_length=100, description="live units lent to the drill; a busy one refuses the start"
    )
    depots: list[DepotSpec] = Field(default_factory=list, max_length=100)
    shelters: list[ShelterSpec] = Field(default_factory=list, max_length=1000)


class Crews(_Model):
    """How the drill plays the units' crews: an assigned unit reports en route, then on scene."""

    en_route_after: Duration = 30.0
    arrive_after: Duration = 180.0


class _Inject(_Model):
    id: Ident
    at: Duration = 0.0
    after: list[Ident] = Field(default_factory=list, max_length=50, description="injects that must be done first")
    note: Annotated[str, StringConstraints(max_length=500)] = ""


class AlarmBurst(_Inject):
    """``count`` alarms through the gateway contract, spread evenly over ``over``, around ``place``
    within ``spread_m``, from ``callers`` distinct numbers; a ``gcj02_share`` of them report GCJ-02
    coordinates as many phone maps do. ``categories`` weighs the categories (first alarms first:
    ``first`` is the category of the very first alarm)."""

    kind: Literal["alarms"]
    count: int = Field(ge=1, le=100_000)
    over: Duration = 0.0
    place: Point
    address: Annotated[str, StringConstraints(max_length=200)] = ""
    spread_m: float = Field(default=50, ge=0, le=20_000)
    categories: dict[Category, Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]] = Field(min_length=1)
    first: Category | None = None
    callers: int | None = Field(default=None, ge=1, le=1_000_000, description="distinct callers; default: one each")
    gcj02_share: float = Field(default=0.0, ge=0, le=1)
    casualties: int = Field(default=0, ge=0, le=10_000, description="casualties each alarm reports")
    description: Annotated[str, StringConstraints(max_length=500)] = ""
    expect_incidents: int | None = Field(default=None, ge=1, le=100_000, description="the burst opens this many")


def _level(value: object) -> object:
    """A level as I..IV (or 1..4); anything else is a ValueError naming the forms."""
    if isinstance(value, str):
        try:
            return Level.from_name(value)
        except (KeyError, ValueError):
            raise ValueError("a level is I, II, III or IV (or 1..4)") from None
    return value


class ActionName(StrEnum):
    """Operator actions the runner performs through the operator API."""

    verify = "verify"
    perimeter = "perimeter"
    stage = "stage"
    level = "level"
    fact = "fact"
    evacuate = "evacuate"
    send_home = "send_home"
    return_supplies = "return_supplies"
    alert = "alert"
    all_clear = "all_clear"
    statement = "statement"
    rumor = "rumor"


class Action(_Inject):
    """An operator action on the incident opened by the alarm inject ``incident`` (it may start as
    soon as that burst's first alarms opened it; ``after: [<burst>]`` waits for the whole burst).
    A refusal the operator would retry (409 while a guard is not yet met, 503, the incident not
    opened yet) is retried for ``retry_for``."""

    kind: Literal["action"]
    action: ActionName
    incident: Ident
    retry_for: Duration = 1800.0
    radius_m: float | None = Field(default=None, gt=0, le=50_000)
    to: Literal["isolation", "handling", "opinion_control", "aftermath", "closed", "cancelled"] | None = None
    level: Annotated[Level, BeforeValidator(_level)] | None = None
    fact: Literal["hazard_under_control", "after_action_report"] | None = None
    households: int | None = Field(default=None, ge=1, le=10_000)
    people_per_household: int = Field(default=3, ge=1, le=20)
    text: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = Field(
        default=None,
        description=(
            "a rumor's text; for a statement, its English text written by hand (text_en), where the"
            " plan's level has no official_statement template (the Chinese text still comes from the"
            " template or the service's default)"
        ),
    )
    source: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "微博"
    values: dict[str, Annotated[str, StringConstraints(max_length=500)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _parameters(self) -> Action:
        needs = {
            ActionName.perimeter: "radius_m",
            ActionName.stage: "to",
            ActionName.level: "level",
            ActionName.fact: "fact",
            ActionName.evacuate: "households",
            ActionName.rumor: "text",
        }
        wanted = needs.get(self.action)
        if wanted is not None and getattr(self, wanted) is None:
            raise ValueError(f"{wanted}: the {self.action} action needs it")
        given = {k for k in ("radius_m", "to", "level", "fact", "households", "text") if getattr(self, k) is not None}
        optional = {"text"} if self.action is ActionName.statement else set()
        stray = sorted(given - {wanted} - optional)
        if stray:
            raise ValueError(f"{stray[0]}: the {self.action} action takes no {stray[0]}")
        return self


class FaultName(StrEnum):
    """Faults a drill injects into its own exercise resources."""

    unit_out_of_service = "unit_out_of_service"
    depot_short = "depot_short"


class Fault(_Inject):
    """A fault in the drill's own resources: a unit goes out of service, or a depot loses stock
    (an adjustment with reason ``lost``). A fault on a live resource is refused before the start."""

    kind: Literal["fault"]
    fault: FaultName
    unit: Ident | None = None
    depot: Ident | None = None
    item: ItemCode | None = None
    quantity: int | None = Field(default=None, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _parameters(self) -> Fault:
        if self.fault is FaultName.unit_out_of_service and self.unit is None:
            raise ValueError("unit: unit_out_of_service names the unit")
        if self.fault is FaultName.depot_short and (self.depot is None or self.item is None or self.quantity is None):
            raise ValueError("depot, item, quantity: depot_short names all three")
        return self


Inject = Annotated[AlarmBurst | Action | Fault, Field(discriminator="kind")]


class Scenario(_Model):
    """One drill: metadata, objectives, resources and the MSEL (see the module docstring)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    type: ExerciseType
    description: Annotated[str, StringConstraints(max_length=4000)] = ""
    duration: Annotated[Duration, Field(gt=0)] = Field(description="the scenario clock stops here at the latest")
    participants: list[Literal["dispatch", "resource-stockpile", "shelter-registry", "public-notification"]] = Field(
        default_factory=list, description="services the lifecycle waits for, besides incident-intake"
    )
    objectives: list[Objective] = Field(min_length=1, max_length=100)
    resources: Resources = Field(default_factory=Resources)
    crews: Crews = Field(default_factory=Crews)
    msel: list[Inject] = Field(min_length=1, max_length=10_000)

    @field_validator("objectives")
    @classmethod
    def _objective_ids_once(cls, objectives: list[Objective]) -> list[Objective]:
        _once([o.id for o in objectives], "objective")
        return objectives

    def problems(self) -> Iterator[tuple[Location, str]]:
        """What makes the scenario unrunnable across fields: each a location and a reason."""
        yield from self._resources_once()
        ids = [i.id for i in self.msel]
        seen: set[str] = set()
        for n, i in enumerate(ids):
            if i in seen:
                yield ("msel", n, "id"), f"inject id {i} is used twice"
            seen.add(i)
        bursts = {i.id for i in self.msel if isinstance(i, AlarmBurst)}
        # Once per scenario, not per fault: 10,000 faults over 50,000 units took minutes.
        units = frozenset(self.unit_ids())
        depots = frozenset(d.id for d in self.resources.depots)
        for n, inject in enumerate(self.msel):
            for k, dep in enumerate(inject.after):
                if dep not in seen:
                    yield ("msel", n, "after", k), f"{dep} is not an inject of this scenario"
                elif dep == inject.id:
                    yield ("msel", n, "after", k), "an inject cannot wait for itself"
            if inject.at > self.duration:
                yield ("msel", n, "at"), "after the scenario's duration"
            if isinstance(inject, Action) and inject.incident not in bursts:
                yield ("msel", n, "incident"), f"{inject.incident} is not an alarms inject of this scenario"
            if isinstance(inject, Fault):
                yield from self._fault_on_own(n, inject, units, depots)
            if isinstance(inject, AlarmBurst) and inject.first is not None and inject.first not in inject.categories:
                yield ("msel", n, "first"), f"{inject.first} is not one of this burst's categories"
        if cycle := _cycle({i.id: i.after for i in self.msel}):
            yield (
                ("msel", ids.index(cycle[0]), "after"),
                f"injects wait for each other in a circle: {' -> '.join(cycle)}",
            )
        yield from self._measurable()

    def _resources_once(self) -> Iterator[tuple[Location, str]]:
        """Each depot, shelter, borrowed unit and unit type once (the runner names units by type)."""
        res = self.resources
        for field, ids in (
            ("depots", [d.id for d in res.depots]),
            ("shelters", [s.id for s in res.shelters]),
            ("borrow_units", list(res.borrow_units)),
            ("units", [g.unit_type for g in res.units]),
        ):
            seen: set[str] = set()
            for n, i in enumerate(ids):
                if i in seen:
                    what = "unit type (one group each)" if field == "units" else "id"
                    yield ("resources", field, n), f"{what} {i} is given twice"
                seen.add(i)

    def _fault_on_own(
        self, n: int, fault: Fault, units: frozenset[str], depots: frozenset[str]
    ) -> Iterator[tuple[Location, str]]:
        if fault.fault is FaultName.unit_out_of_service and fault.unit not in units:
            yield (
                ("msel", n, "unit"),
                (
                    f"{fault.unit} is neither an exercise unit of this scenario nor borrowed"
                    " (a drill touches a live unit only by explicit loan: resources.borrow_units)"
                ),
            )
        if fault.fault is FaultName.depot_short and fault.depot not in depots:
            yield ("msel", n, "depot"), f"{fault.depot} is not an exercise depot of this scenario"

    def _measurable(self) -> Iterator[tuple[Location, str]]:
        actions = {i.action for i in self.msel if isinstance(i, Action)}
        needs: dict[Measure, tuple[bool, str]] = {
            Measure.first_unit_assigned: (bool(self.resources.units or self.resources.borrow_units), "no units"),
            Measure.perimeter_secured: (bool(self.resources.units or self.resources.borrow_units), "no units"),
            Measure.supplies_reserved: (bool(self.resources.depots), "no depots"),
            Measure.items_short: (bool(self.resources.depots), "no depots"),
            Measure.shelter_opened: (bool(self.resources.shelters), "no shelters"),
            Measure.evacuees_placed: (ActionName.evacuate in actions, "no evacuate inject"),
            Measure.first_alert_published: (ActionName.alert in actions, "no alert inject"),
            Measure.first_statement_published: (ActionName.statement in actions, "no statement inject"),
        }
        for n, objective in enumerate(self.objectives):
            ok, why = needs.get(objective.measure, (True, ""))
            if not ok:
                yield ("objectives", n, "measure"), f"{objective.measure} cannot be measured in this scenario: {why}"

    def unit_ids(self) -> list[str]:
        """Every unit the drill may act on: its exercise units, then the borrowed live ones."""
        ids = [unit_id(g, k) for g in self.resources.units for k in range(1, g.count + 1)]
        return [*ids, *self.resources.borrow_units]


def unit_id(group: UnitGroup, n: int) -> str:
    """The id of the ``n``-th unit (1-based) of an exercise unit group: ``drill-<type>-<n>``."""
    return f"drill-{group.unit_type.replace('_', '-')}-{n}"


def _once(ids: list[str], what: str) -> None:
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise ValueError(f"{what} id {repeated[0]} is used twice")


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A circle of injects waiting for each other (``[a, b, a]``), or None. Iterative: a chain of
    thousands of injects is walked without recursion."""
    state: dict[str, int] = {}
    for start in graph:
        if start in state:
            continue
        path: list[str] = [start]
        edges = [iter(graph[start])]
        state[start] = 1
        while edges:
            nxt = next(edges[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                edges.pop()
            elif nxt not in graph:  # an unknown inject: reported on its own
                continue
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                edges.append(iter(graph[nxt]))
    return None


class ScenarioError(YamlFileError):
    """A scenario file that cannot be run (422-style): names the file and each bad field with its
    line. Nothing of it has been run."""

    code, title = "invalid_scenario", "Invalid drill scenario"


def scenario_path(name_or_path: str) -> Path:
    """A shipped scenario by name (``bund``) or a file path. Raises FileNotFoundError naming the
    shipped ones when neither exists."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SCENARIOS / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml")))
    raise FileNotFoundError(f"no scenario file {name_or_path!r}; the shipped scenarios are: {names}")


def load_scenario(text: str, source: str) -> Scenario:
    """A scenario from its YAML ``text``; raises ScenarioError naming ``source``, each bad field and
    its line (an unknown field, a bad time, an inject waiting for an unknown one, a target that
    cannot be measured, a fault on a live resource)."""
    return load_yaml_model(
        text, source, Scenario, ScenarioError, what="scenario file", check=Scenario.problems, locate=_without_tag
    )


def _without_tag(loc: Location) -> Location:
    """``("msel", 3, "action", "at")`` -> ``("msel", 3, "at")``: Pydantic names the inject's kind
    (the discriminated union's tag) in the location; the file has no such level."""
    if len(loc) > 2 and loc[0] == "msel" and isinstance(loc[1], int) and loc[2] in ("alarms", "action", "fault"):
        return (*loc[:2], *loc[3:])
    return loc


MAX_FILE_BYTES = 1_000_000
"""The largest scenario file read (the shipped ones are a few kB)."""


def read_scenario(name_or_path: str) -> tuple[Scenario, Path]:
    """A shipped scenario by name, or a file; see load_scenario and scenario_path. A file over
    MAX_FILE_BYTES, or not UTF-8 text, is a ScenarioError too."""
    path = scenario_path(name_or_path)
    with path.open("rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(str(path), [FileProblem("(document)", 1, f"larger than {MAX_FILE_BYTES:,} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(str(path), [FileProblem("(document)", line, "not UTF-8 text")]) from None
    return load_scenario(text, str(path)), path


def as_dict(scenario: Scenario) -> dict[str, Any]:
    """The scenario as JSON-ready data (for the report)."""
    return scenario.model_dump(mode="json")
