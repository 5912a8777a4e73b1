"""The rules of incident-intake: categories, correlation, severity, the lifecycle and its guards.

Pure: no I/O, no framework. Handlers load state, call these functions, and save what they return.
Coordinates are WGS-84 decimal degrees; times are timezone-aware datetimes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any, Literal

from ecs import errors
from ecs.geo import haversine_m, point_in_polygon, polygon_area_deg2

# --- Categories and which alarms join which incidents ---------------------------------


class Category(StrEnum):
    fire = "fire"
    explosion = "explosion"
    hazmat = "hazmat"
    building_collapse = "building_collapse"
    crowd_crush = "crowd_crush"
    traffic_accident = "traffic_accident"
    flood = "flood"
    gas_leak = "gas_leak"
    public_security = "public_security"
    medical = "medical"
    other = "other"


_FIRE_FAMILY = {Category.fire, Category.explosion, Category.gas_leak, Category.hazmat}

# incident category -> alarm categories it absorbs. Read a row as "a <key> incident takes ...".
#
# Correlation errs towards separate incidents: a wrongly merged alarm hides a scene that needs
# its own units, while a wrongly separate one only costs an operator a manual merge. So:
# - fire, explosion, gas leak and hazmat are one physical event seen from different phones;
# - a medical call near a scene with casualties is one of those casualties, but a medical
#   incident never absorbs a scene alarm: the fire opens its own incident, to be merged by hand;
# - flood and building_collapse stay apart: a collapse is its own rescue site, and a flood's
#   3 km radius would swallow every collapse in a district.
ABSORBS: dict[Category, frozenset[Category]] = {
    Category.fire: frozenset(_FIRE_FAMILY | {Category.medical}),
    Category.explosion: frozenset(_FIRE_FAMILY | {Category.medical}),
    Category.gas_leak: frozenset(_FIRE_FAMILY | {Category.medical}),
    Category.hazmat: frozenset(_FIRE_FAMILY | {Category.medical}),
    Category.building_collapse: frozenset({Category.building_collapse, Category.medical}),
    Category.crowd_crush: frozenset({Category.crowd_crush, Category.medical}),
    Category.traffic_accident: frozenset({Category.traffic_accident, Category.medical}),
    Category.flood: frozenset({Category.flood}),
    Category.public_security: frozenset({Category.public_security}),
    Category.medical: frozenset({Category.medical}),
    Category.other: frozenset({Category.other}),
}


def can_join(incident_category: Category, alarm_category: Category) -> bool:
    return incident_category == alarm_category or alarm_category in ABSORBS[incident_category]


@dataclass(frozen=True)
class CorrelationWindow:
    distance_m: float
    window_s: float

    def __post_init__(self) -> None:
        if not (self.distance_m > 0 and self.window_s > 0):
            raise ValueError("correlation window distance and time must be positive")


_MIN, _HOUR = 60.0, 3600.0

# Matching uses the window of the incident's category, not the alarm's: the incident describes
# the scene as known, so its extent decides what is "the same place". A medical call near a fire
# is judged by the fire's 500 m, not by its own 100 m.
DEFAULT_WINDOWS: dict[Category, CorrelationWindow] = {
    Category.fire: CorrelationWindow(500, 2 * _HOUR),
    Category.explosion: CorrelationWindow(1000, 2 * _HOUR),
    Category.hazmat: CorrelationWindow(1000, 3 * _HOUR),
    Category.gas_leak: CorrelationWindow(500, 2 * _HOUR),
    Category.building_collapse: CorrelationWindow(300, 6 * _HOUR),
    Category.crowd_crush: CorrelationWindow(400, 1 * _HOUR),
    Category.traffic_accident: CorrelationWindow(200, 30 * _MIN),
    Category.flood: CorrelationWindow(3000, 6 * _HOUR),
    Category.public_security: CorrelationWindow(300, 1 * _HOUR),
    Category.medical: CorrelationWindow(100, 30 * _MIN),
    Category.other: CorrelationWindow(100, 30 * _MIN),
}

# --- Severity level -------------------------------------------------------------------


class Level(IntEnum):
    """National response levels. A lower number is MORE severe, so the worse of two is min().

    I 特别重大 red, II 重大 orange, III 较大 yellow, IV 一般 blue.
    """

    I = 1  # noqa: E741
    II = 2
    III = 3
    IV = 4

    @property
    def colour(self) -> str:
        return _COLOURS[self]


_COLOURS = {Level.I: "red", Level.II: "orange", Level.III: "yellow", Level.IV: "blue"}

# Each table gives floors; the estimate is the most severe floor that applies.
CASUALTY_LEVELS: list[tuple[int, Level]] = [
    (30, Level.I),
    (10, Level.II),
    (3, Level.III),
]
CALLER_LEVELS: list[tuple[int, Level]] = [(100, Level.II), (20, Level.III)]
CATEGORY_FLOORS: dict[Category, Level] = {
    Category.explosion: Level.III,
    Category.building_collapse: Level.III,
    Category.crowd_crush: Level.III,
    Category.hazmat: Level.III,
}


def estimate_level(category: Category, casualties: int, callers: int) -> Level:
    """First estimate before anyone has assessed the scene.

    Many independent callers stand in for casualties nobody has counted yet: a crowd crush
    reported by 150 phones is big even when every caller says "casualties: unknown".
    """
    if casualties < 0 or callers < 0:
        raise ValueError("casualties and callers cannot be negative")
    level = CATEGORY_FLOORS.get(category, Level.IV)
    for threshold, floor in CASUALTY_LEVELS:
        if casualties >= threshold:
            level = min(level, floor)
            break
    for threshold, floor in CALLER_LEVELS:
        if callers >= threshold:
            level = min(level, floor)
            break
    return level


# --- Lifecycle ------------------------------------------------------------------------


class Stage(StrEnum):
    reported = "reported"
    isolation = "isolation"  # 快速隔离
    handling = "handling"  # 科学处置
    opinion_control = "opinion_control"  # 舆情管控
    aftermath = "aftermath"  # 平稳善后
    closed = "closed"
    cancelled = "cancelled"  # false alarm


TERMINAL_STAGES = frozenset({Stage.closed, Stage.cancelled})
OPEN_STAGES = frozenset(Stage) - TERMINAL_STAGES


class Trigger(StrEnum):
    isolate = "isolate"
    handle = "handle"
    control_opinion = "control_opinion"
    begin_aftermath = "begin_aftermath"
    close = "close"
    cancel = "cancel"


TRANSITIONS: dict[tuple[Stage, Trigger], Stage] = {
    (Stage.reported, Trigger.isolate): Stage.isolation,
    (Stage.isolation, Trigger.handle): Stage.handling,
    (Stage.handling, Trigger.control_opinion): Stage.opinion_control,
    (Stage.opinion_control, Trigger.begin_aftermath): Stage.aftermath,
    (Stage.aftermath, Trigger.close): Stage.closed,
    (Stage.reported, Trigger.cancel): Stage.cancelled,
    (Stage.isolation, Trigger.cancel): Stage.cancelled,
}

# Each target stage is reached by exactly one trigger, so an API can say "move to handling".
TRIGGER_FOR_TARGET: dict[Stage, Trigger] = {target: trig for (_, trig), target in TRANSITIONS.items()}


def allowed_triggers(stage: Stage) -> list[Trigger]:
    return [trig for (source, trig) in TRANSITIONS if source == stage]


class IllegalTransition(errors.IllegalTransition):
    """The lifecycle has no such step. A subclass of the shared error, so the API answers 409."""

    def __init__(self, stage: Stage, trigger: Trigger) -> None:
        allowed = allowed_triggers(stage)
        listed = ", ".join(allowed) if allowed else "none, the incident is finished"
        super().__init__(
            f"cannot '{trigger!s}' an incident in stage '{stage!s}'; allowed triggers: {listed}",
            stage=str(stage),
            trigger=str(trigger),
            allowed=[str(t) for t in allowed],
        )
        self.stage = stage
        self.trigger = trigger
        self.allowed = allowed


def next_stage(stage: Stage, trigger: Trigger) -> Stage:
    try:
        return TRANSITIONS[(stage, trigger)]
    except KeyError:
        raise IllegalTransition(stage, trigger) from None


# --- Guards ---------------------------------------------------------------------------

DISPATCH = "dispatch"
PUBLIC_NOTIFICATION = "public-notification"


@dataclass
class GuardFacts:
    """What is known about an incident, much of it from other services' events."""

    verified: bool = False
    perimeter: Perimeter | None = None
    perimeter_units_on_scene: bool = False
    hazard_under_control: bool = False
    statement_published: bool = False
    after_action_report: bool = False
    settled: dict[str, bool] = field(default_factory=dict)  # participant -> settled; absent: silent


@dataclass(frozen=True)
class _GuardContext:
    facts: GuardFacts
    required_participants: Sequence[str]
    dispatch_participates: bool


def _guard_isolate(ctx: _GuardContext) -> list[str]:
    missing = []
    if not ctx.facts.verified:
        missing.append("incident not verified by a dispatcher")
    if ctx.facts.perimeter is None:
        missing.append("no perimeter set")
    return missing


def _guard_handle(ctx: _GuardContext) -> list[str]:
    # Without dispatch in the plan nobody will ever report units on scene; waiting would deadlock.
    if ctx.dispatch_participates and not ctx.facts.perimeter_units_on_scene:
        return ["perimeter units not on scene (dispatch)"]
    return []


def _guard_control_opinion(ctx: _GuardContext) -> list[str]:
    return [] if ctx.facts.hazard_under_control else ["hazard not declared under control"]


def _guard_begin_aftermath(ctx: _GuardContext) -> list[str]:
    # Same reasoning as dispatch: only a participating notification service can publish.
    if PUBLIC_NOTIFICATION in ctx.required_participants and not ctx.facts.statement_published:
        return ["no official statement published"]
    return []


def _guard_close(ctx: _GuardContext) -> list[str]:
    missing = []
    for participant in ctx.required_participants:
        settled = ctx.facts.settled.get(participant)
        if settled is None:
            # Silence is not consent: a participant that never reported may still hold units.
            missing.append(f"participant '{participant}' has not reported")
        elif not settled:
            missing.append(f"participant '{participant}' not settled")
    if not ctx.facts.after_action_report:
        missing.append("after-action report missing")
    return missing


def _guard_cancel(ctx: _GuardContext) -> list[str]:
    return []  # a false alarm must always be cancellable before handling starts


GUARDS: dict[Trigger, Callable[[_GuardContext], list[str]]] = {
    Trigger.isolate: _guard_isolate,
    Trigger.handle: _guard_handle,
    Trigger.control_opinion: _guard_control_opinion,
    Trigger.begin_aftermath: _guard_begin_aftermath,
    Trigger.close: _guard_close,
    Trigger.cancel: _guard_cancel,
}


def check_guard(
    stage: Stage,
    trigger: Trigger,
    facts: GuardFacts,
    required_participants: Sequence[str],
    dispatch_participates: bool,
) -> list[str]:
    """What still blocks this step, in words an operator can act on; empty means go.

    Raises IllegalTransition for a step the lifecycle does not have, so an empty list can
    never be mistaken for permission to do something impossible.
    """
    next_stage(stage, trigger)
    return GUARDS[trigger](_GuardContext(facts, required_participants, dispatch_participates))


def auto_verified(callers: int, sensor_confirmed: bool, threshold: int = 3) -> bool:
    """Enough independent callers, or a sensor, count as a dispatcher's verification."""
    if threshold < 1:
        raise ValueError("auto-verification threshold must be at least 1")
    return sensor_confirmed or callers >= threshold


# --- Perimeter ------------------------------------------------------------------------

MAX_RADIUS_M = 50_000.0
MIN_POLYGON_POINTS, MAX_POLYGON_POINTS = 3, 500


@dataclass(frozen=True)
class Perimeter:
    """A cordon: a circle, or a polygon of (lat, lon) points (note: not GeoJSON's lon, lat).

    Validated on construction, so a Perimeter that exists is always usable.
    """

    kind: Literal["circle", "polygon"]
    center: tuple[float, float] | None = None
    radius_m: float | None = None
    ring: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "circle":
            if self.center is None or self.radius_m is None:
                raise ValueError("circle perimeter needs a center and a radius_m")
            object.__setattr__(self, "center", _coordinate(*self.center, where="center"))
            radius = _number(self.radius_m, "radius_m")
            if not 0 < radius <= MAX_RADIUS_M:
                raise ValueError(f"radius_m must be > 0 and <= {MAX_RADIUS_M:g} m, got {radius:g}")
            object.__setattr__(self, "radius_m", radius)
        elif self.kind == "polygon":
            ring = tuple(_coordinate(*p, where=f"point {i}") for i, p in enumerate(self.ring))
            if len(ring) > 1 and ring[0] == ring[-1]:
                ring = ring[:-1]  # a closed ring repeats its first point; store it open
            if not MIN_POLYGON_POINTS <= len(ring) <= MAX_POLYGON_POINTS:
                raise ValueError(
                    f"polygon needs {MIN_POLYGON_POINTS} to {MAX_POLYGON_POINTS} distinct points, got {len(ring)}"
                )
            # Rounding leaves a collinear ring a sliver of area; 1e-10 deg² is about a square metre.
            if abs(polygon_area_deg2(ring)) < 1e-10:
                raise ValueError("polygon has no area (its points are on one line)")
            object.__setattr__(self, "ring", ring)
        else:
            raise ValueError(f"perimeter kind must be 'circle' or 'polygon', got {self.kind!r}")

    @classmethod
    def circle(cls, lat: float, lon: float, radius_m: float) -> Perimeter:
        return cls("circle", center=(lat, lon), radius_m=radius_m)

    @classmethod
    def polygon(cls, points: Iterable[Sequence[float]]) -> Perimeter:
        try:
            ring = tuple(tuple(p) for p in points)
        except TypeError:
            raise ValueError("polygon points must be a list of [lat, lon] pairs") from None
        return cls("polygon", ring=ring)  # type: ignore[arg-type]

    def contains(self, lat: float, lon: float) -> bool:
        if self.kind == "circle":
            assert self.center is not None and self.radius_m is not None
            return haversine_m(*self.center, lat, lon) <= self.radius_m
        return point_in_polygon(lat, lon, self.ring)

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "circle":
            assert self.center is not None
            lat, lon = self.center
            return {"kind": "circle", "lat": lat, "lon": lon, "radius_m": self.radius_m}
        return {"kind": "polygon", "points": [[lat, lon] for lat, lon in self.ring]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Perimeter:
        kind = data.get("kind")
        try:
            if kind == "circle":
                return cls.circle(data["lat"], data["lon"], data["radius_m"])
            if kind == "polygon":
                return cls.polygon(data["points"])
        except KeyError as exc:
            raise ValueError(f"{kind} perimeter is missing {exc.args[0]!r}") from None
        raise ValueError(f"perimeter kind must be 'circle' or 'polygon', got {kind!r}")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _coordinate(*pair: Any, where: str) -> tuple[float, float]:
    if len(pair) != 2:
        raise ValueError(f"{where} must be a [lat, lon] pair, got {list(pair)!r}")
    lat, lon = _number(pair[0], f"{where} lat"), _number(pair[1], f"{where} lon")
    if not -90 <= lat <= 90:
        raise ValueError(f"{where} lat must be in [-90, 90], got {lat:g}")
    if not -180 <= lon <= 180:
        raise ValueError(f"{where} lon must be in [-180, 180], got {lon:g}")
    return lat, lon


# --- Correlation ----------------------------------------------------------------------


@dataclass
class AlarmFacts:
    """What correlation needs of one alarm. caller_key is a hash of the number, never the number."""

    category: Category
    lat: float
    lon: float
    received_at: datetime
    caller_key: str | None = None
    casualties: int | None = None
    exercise: bool = False

    def __post_init__(self) -> None:
        if self.received_at.utcoffset() is None:
            raise ValueError("received_at must carry a timezone offset")


@dataclass
class IncidentState:
    """What correlation needs of one incident. lat/lon stay at the first alarm's location."""

    id: str
    category: Category
    lat: float
    lon: float
    first_alarm_at: datetime
    last_alarm_at: datetime
    alarm_count: int
    caller_count: int  # distinct identified callers; anonymous alarms cannot prove independence
    casualties: int  # the most any alarm has reported
    level: Level
    exercise: bool
    stage: Stage = Stage.reported


Event = tuple[str, dict[str, Any]]


def open_incident(id: str, alarm: AlarmFacts) -> IncidentState:
    casualties = alarm.casualties or 0
    callers = 1 if alarm.caller_key else 0
    return IncidentState(
        id=id,
        category=alarm.category,
        lat=alarm.lat,
        lon=alarm.lon,
        first_alarm_at=alarm.received_at,
        last_alarm_at=alarm.received_at,
        alarm_count=1,
        caller_count=callers,
        casualties=casualties,
        level=estimate_level(alarm.category, casualties, callers),
        exercise=alarm.exercise,
        stage=Stage.reported,
    )


def find_incident(
    alarm: AlarmFacts,
    candidates: Iterable[IncidentState],
    windows: Mapping[Category, CorrelationWindow] = DEFAULT_WINDOWS,
) -> IncidentState | None:
    """The open incident this alarm belongs to, or None to open a new one.

    Nearest wins, then the oldest, then the smallest id, so that two replicas looking at the
    same candidates always pick the same incident.
    """
    best: tuple[float, datetime, str] | None = None
    chosen = None
    for incident in candidates:
        if incident.stage not in OPEN_STAGES or incident.exercise != alarm.exercise:
            continue
        if not can_join(incident.category, alarm.category):
            continue
        window = windows.get(incident.category, DEFAULT_WINDOWS[incident.category])
        gap_s = abs((alarm.received_at - incident.last_alarm_at).total_seconds())
        if gap_s > window.window_s:
            continue
        distance = haversine_m(incident.lat, incident.lon, alarm.lat, alarm.lon)
        if distance > window.distance_m:
            continue
        key = (distance, incident.first_alarm_at, incident.id)
        if best is None or key < best:
            best, chosen = key, incident
    return chosen


def absorb(incident: IncidentState, alarm: AlarmFacts, new_caller: bool) -> list[Event]:
    """Fold one more alarm into an incident, in place; return the events that caused.

    The location stays at the first alarm's: a stable anchor keeps the correlation radius from
    drifting down a street alarm by alarm until it joins scenes that have nothing in common.

    Automatic re-estimation only raises the level. Lowering it is a human judgement: a quiet
    minute on the phones does not mean the scene got smaller, and an operator's raise must stick.
    The alarm's own category counts too: an explosion reported at a fire is at least level III.
    """
    if incident.stage in TERMINAL_STAGES:
        raise ValueError(f"incident {incident.id} is {incident.stage}; it takes no more alarms")
    if incident.exercise != alarm.exercise:
        raise ValueError("exercise and live alarms never share an incident")

    incident.alarm_count += 1
    if new_caller and alarm.caller_key:
        incident.caller_count += 1
    if alarm.casualties is not None:
        incident.casualties = max(incident.casualties, alarm.casualties)
    incident.first_alarm_at = min(incident.first_alarm_at, alarm.received_at)
    incident.last_alarm_at = max(incident.last_alarm_at, alarm.received_at)

    estimate = min(
        estimate_level(incident.category, incident.casualties, incident.caller_count),
        CATEGORY_FLOORS.get(alarm.category, Level.IV),
    )
    if estimate >= incident.level:
        return []
    events: list[Event] = [
        (
            "incident.level.changed",
            {"from": int(incident.level), "to": int(estimate), "reason": "auto"},
        )
    ]
    incident.level = estimate
    return events
