"""The rules of incident-intake: which alarms join which incident, severity, the lifecycle and its
guards, and the ``Incident`` whose methods decide each operator command.

Pure: no I/O, no framework. Handlers load an ``Incident``, call one of its methods, and save the
``Change`` it returns (the values to write, the timeline entry, the event). Coordinates are WGS-84
decimal degrees, distances metres, durations seconds, times timezone-aware datetimes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from ecs import errors
from ecs.contracts import (
    AlarmLinked,
    CategoryChanged,
    FactRecorded,
    IncidentCreated,
    IncidentMerged,
    IncidentSplit,
    IncidentVerified,
    LevelChanged,
    PerimeterSet,
    StageChanged,
)
from ecs.geo import EARTH_RADIUS_M, haversine_m, point_in_polygon, ring_fault
from ecs.vocabulary import OPEN_STAGES, TERMINAL_STAGES, Category, Level, Participant, Stage

__all__ = [
    "OPEN_STAGES",
    "TERMINAL_STAGES",
    "Category",
    "Level",
    "Participant",
    "Stage",
]

# --- Which alarms join which incidents -------------------------------------------------

_FIRE_FAMILY = {Category.fire, Category.explosion, Category.gas_leak, Category.hazmat}

# incident category -> alarm categories it absorbs. Read a row as "a <key> incident takes ...".
#
# Correlation errs towards separate incidents: a wrongly merged alarm hides a scene that needs
# its own units, while a wrongly separate one only costs an operator a manual merge. So:
# - fire, explosion, gas leak and hazmat are one physical event seen from different phones;
# - a medical call near a scene with casualties is one of those casualties; and when the medical
#   call came first, the scene alarm that follows is the same event seen more clearly: the
#   medical-only incident takes it and becomes the scene's (``SCENES_OF_MEDICAL``);
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


SCENES_OF_MEDICAL: frozenset[Category] = frozenset(
    c for c, absorbed in ABSORBS.items() if c != Category.medical and Category.medical in absorbed
)
"""The scene categories whose casualties call as ``medical``: a medical-only incident near the
first alarm of one of them becomes that scene (the most specific category wins)."""


def can_join(incident_category: Category, alarm_category: Category) -> bool:
    """Whether an alarm of ``alarm_category`` may join an incident of ``incident_category``."""
    return (
        incident_category == alarm_category
        or alarm_category in ABSORBS[incident_category]
        or (incident_category == Category.medical and alarm_category in SCENES_OF_MEDICAL)
    )


def joined_category(incident_category: Category, alarm_category: Category) -> Category:
    """The category an incident has once an alarm it may take joined: a medical-only incident
    becomes the scene a scene alarm reports; any other keeps its own."""
    if incident_category == Category.medical and alarm_category in SCENES_OF_MEDICAL:
        return alarm_category
    return incident_category


@dataclass(frozen=True)
class CorrelationWindow:
    """How near (metres) and how soon (seconds, either side of its latest alarm) an alarm must be
    to join an incident of one category. Raises ValueError unless both are positive."""

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


def windows_from(overrides: Mapping[str, Mapping[str, float]]) -> dict[Category, CorrelationWindow]:
    """The default windows with some categories' replaced, e.g.
    ``{"fire": {"distance_m": 800, "window_s": 3600}}``. Raises ValueError naming an unknown
    category or a window that is not positive."""
    windows = dict(DEFAULT_WINDOWS)
    for name, w in overrides.items():
        try:
            category = Category(name)
        except ValueError:
            raise ValueError(f"correlation_windows: unknown category {name!r}") from None
        windows[category] = CorrelationWindow(float(w["distance_m"]), float(w["window_s"]))
    return windows


# --- Severity level -------------------------------------------------------------------

# Each table gives floors; the estimate is the most severe floor that applies. A lower level
# number is more severe (ecs.vocabulary.Level), so the worse of two is min().
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
    Raises ValueError for a negative count.
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


class Trigger(StrEnum):
    """What an operator asks for to move an incident on (DESIGN §3)."""

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
    """The triggers the lifecycle has from ``stage``, in table order."""
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
    """The stage ``trigger`` leads to from ``stage``; raises IllegalTransition naming the allowed
    triggers when the lifecycle has no such step."""
    try:
        return TRANSITIONS[(stage, trigger)]
    except KeyError:
        raise IllegalTransition(stage, trigger) from None


def trigger_for(target: Stage) -> Trigger:
    """The one trigger that leads to ``target``; raises InvalidInput (422) for ``reported``, which
    no step leads to."""
    trigger = TRIGGER_FOR_TARGET.get(target)
    if trigger is None:
        raise errors.InvalidInput(f"no transition leads to stage {target!s}", field="stage")
    return trigger


# --- Guards ---------------------------------------------------------------------------


@dataclass
class GuardFacts:
    """What is known about an incident, much of it from other services' events."""

    verified: bool = False
    perimeter: Perimeter | None = None
    perimeter_units_on_scene: bool = False
    hazard_under_control: bool = False
    statement_published: bool = False
    after_action_report: bool = False
    settled: dict[Participant, bool] = field(default_factory=dict)  # absent: the participant is silent


@dataclass(frozen=True)
class _GuardContext:
    facts: GuardFacts
    required_participants: Sequence[Participant]
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
    if Participant.notification in ctx.required_participants and not ctx.facts.statement_published:
        return ["no official statement published"]
    return []


def _guard_close(ctx: _GuardContext) -> list[str]:
    missing = []
    for participant in ctx.required_participants:
        settled = ctx.facts.settled.get(participant)
        if settled is None:
            # Silence is not consent: a participant that never reported may still hold units.
            missing.append(f"participant '{participant.service}' has not reported")
        elif not settled:
            missing.append(f"participant '{participant.service}' not settled")
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
    required_participants: Sequence[Participant],
    dispatch_participates: bool | None = None,
) -> list[str]:
    """What still blocks this step, in words an operator can act on; empty means go.

    ``dispatch_participates`` defaults to whether dispatch is among ``required_participants``.
    Raises IllegalTransition for a step the lifecycle does not have, so an empty list can
    never be mistaken for permission to do something impossible.
    """
    next_stage(stage, trigger)
    if dispatch_participates is None:
        dispatch_participates = Participant.dispatch in required_participants
    return GUARDS[trigger](_GuardContext(facts, required_participants, dispatch_participates))


def auto_verified(callers: int, sensor_confirmed: bool, threshold: int = 3) -> bool:
    """Enough independent callers, or a sensor, count as a dispatcher's verification.
    Raises ValueError for a threshold below 1."""
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
            fault = ring_fault(ring)
            if fault is not None:
                raise ValueError(f"polygon {fault}")
            object.__setattr__(self, "ring", ring)
        else:
            raise ValueError(f"perimeter kind must be 'circle' or 'polygon', got {self.kind!r}")

    @classmethod
    def circle(cls, lat: float, lon: float, radius_m: float) -> Perimeter:
        """A circle of ``radius_m`` metres (at most 50 km) around (lat, lon); raises ValueError."""
        return cls("circle", center=(lat, lon), radius_m=radius_m)

    @classmethod
    def polygon(cls, points: Iterable[Sequence[float]]) -> Perimeter:
        """A polygon of 3 to 500 [lat, lon] points, closed or open; raises ValueError."""
        try:
            ring = tuple(tuple(p) for p in points)
        except TypeError:
            raise ValueError("polygon points must be a list of [lat, lon] pairs") from None
        return cls("polygon", ring=ring)  # type: ignore[arg-type]

    def contains(self, lat: float, lon: float) -> bool:
        """Whether (lat, lon) is inside the cordon (on its edge counts as inside)."""
        if self.kind == "circle":
            assert self.center is not None and self.radius_m is not None
            return haversine_m(*self.center, lat, lon) <= self.radius_m
        return point_in_polygon(lat, lon, self.ring)

    def to_dict(self) -> dict[str, Any]:
        """As stored and published: ``{"kind": "circle", "lat", "lon", "radius_m"}`` or
        ``{"kind": "polygon", "points": [[lat, lon], ...]}``."""
        if self.kind == "circle":
            assert self.center is not None
            lat, lon = self.center
            return {"kind": "circle", "lat": lat, "lon": lon, "radius_m": self.radius_m}
        return {"kind": "polygon", "points": [[lat, lon] for lat, lon in self.ring]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Perimeter:
        """The inverse of ``to_dict``; raises ValueError naming what is missing or wrong."""
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


# --- What a decision returns ----------------------------------------------------------

IntakeEvent = (
    IncidentCreated
    | AlarmLinked
    | LevelChanged
    | CategoryChanged
    | IncidentVerified
    | PerimeterSet
    | StageChanged
    | IncidentMerged
    | IncidentSplit
    | FactRecorded
)
"""The contract models of the events incident-intake publishes."""


@dataclass(frozen=True)
class Entry:
    """One line of an incident's timeline: who (an operator, ``correlation`` or the service that
    reported a fact), what kind of change, and its detail (JSON)."""

    incident_id: str
    actor: str
    kind: str
    detail: dict[str, Any]


@dataclass(slots=True)
class Event:
    """An event to publish about an incident: its contract model and whether it is a drill's.

    ``cause`` is the alarm (``<gateway_id>:<alarm_id>``) behind it, if one is; ``id`` a stable
    message id where a replay must map to the same message (JetStream then drops the copy).
    A value: nothing changes it once made (not frozen only because correlation makes one per
    alarm, and a frozen dataclass costs several times as much to build).
    """

    data: IntakeEvent
    exercise: bool
    cause: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Change:
    """What a decision changes on one incident: the columns to write, the timeline entry and the
    event to publish (if any).

    A ``versioned`` change lands only on the version the decision was made on, and bumps it: an
    operator who saw the old version is refused (409). A fact from another service is not
    versioned: it changes what may happen next, not what the operator decided on.
    """

    incident_id: str
    values: dict[str, Any]
    entry: Entry
    event: Event | None = None
    versioned: bool = True


@dataclass(frozen=True)
class LevelChange:
    """Correlation raised an incident's level by itself; ``reason`` says from what."""

    from_level: Level
    to_level: Level
    reason: str


@dataclass(frozen=True)
class Counts:
    """An incident's aggregates as its alarms give them (recomputed after a merge or a split)."""

    alarm_count: int
    first_alarm_at: datetime
    last_alarm_at: datetime
    casualties: int
    caller_count: int

    def values(self) -> dict[str, Any]:
        """The columns these counts are stored in."""
        return {
            "alarm_count": self.alarm_count,
            "first_alarm_at": self.first_alarm_at,
            "last_alarm_at": self.last_alarm_at,
            "casualties": self.casualties,
            "caller_count": self.caller_count,
        }


@dataclass(frozen=True)
class NextStep:
    """A step the lifecycle has from the incident's stage: whether its guard lets it through now,
    and if not, what is missing."""

    stage: Stage
    allowed: bool
    missing: list[str]


AlarmKey = tuple[str, str]
"""An alarm as gateways name it: (gateway_id, alarm_id)."""

CommanderFact = Literal["hazard_under_control", "after_action_report"]
"""The facts a commander records by hand."""

COMMANDER_FACTS: tuple[CommanderFact, ...] = ("hazard_under_control", "after_action_report")


# --- Alarms and incidents -------------------------------------------------------------


@dataclass
class AlarmFacts:
    """What correlation needs of one alarm. caller_key is a hash of the number, never the number.
    Raises ValueError for a ``received_at`` without a timezone offset."""

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


def refuse_self_merge(target_id: str, source_id: str) -> None:
    """Raises InvalidInput (422, naming ``source_incident_id``) when both are one incident."""
    if target_id == source_id:
        raise errors.InvalidInput("an incident cannot be merged into itself", field="source_incident_id")


@dataclass
class Incident:
    """An incident: what correlation matches alarms against, and what operators decide on.

    lat/lon stay at the first alarm's location. ``caller_count`` counts distinct identified
    callers (anonymous alarms cannot prove independence); ``casualties`` is the most any alarm
    reported. ``version`` is what an operator saw; ``facts`` holds the lifecycle facts as stored
    (on scene, under control, statement, report, ``settled`` by participant).

    Each command method checks the rules and returns the ``Change`` to save; it never changes the
    incident itself. They raise the shared errors (``ecs.errors``), which the API maps to problems.
    """

    id: str
    category: Category
    lat: float
    lon: float
    first_alarm_at: datetime
    last_alarm_at: datetime
    alarm_count: int
    caller_count: int
    casualties: int
    level: Level
    exercise: bool
    stage: Stage = Stage.reported
    verified: bool = False
    version: int = 1
    perimeter: Perimeter | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    merged_into: str | None = None
    split_from: str | None = None

    # -- what is known, and what may happen next

    def guard_facts(self) -> GuardFacts:
        """The lifecycle guards' view of this incident. A participant this version does not know
        is left out: no setting can require it, so it guards nothing."""
        facts = self.facts
        settled: dict[Participant, bool] = {}
        for name, value in (facts.get("settled") or {}).items():
            try:
                settled[Participant.parse(name)] = bool(value)
            except ValueError:
                continue
        return GuardFacts(
            verified=self.verified,
            perimeter=self.perimeter,
            perimeter_units_on_scene=bool(facts.get("perimeter_units_on_scene")),
            hazard_under_control=bool(facts.get("hazard_under_control")),
            statement_published=bool(facts.get("statement_published")),
            after_action_report=bool(facts.get("after_action_report")),
            settled=settled,
        )

    def next_steps(self, participants: Sequence[Participant]) -> list[NextStep]:
        """Every step the lifecycle has from here, each with what still blocks it."""
        facts = self.guard_facts()
        steps = []
        for (source, trigger), target in TRANSITIONS.items():
            if source == self.stage:
                missing = check_guard(self.stage, trigger, facts, participants)
                steps.append(NextStep(target, not missing, missing))
        return steps

    def expect(self, version: int | None) -> None:
        """Raises Conflict (409) if the incident was merged away, StaleVersion (409, with the
        current version) if it is no longer at ``version``; None skips the version check."""
        if self.merged_into:
            raise errors.Conflict(
                f"incident {self.id} was merged into {self.merged_into}", merged_into=self.merged_into
            )
        self.expect_version(version)

    def expect_version(self, version: int | None) -> None:
        """Raises StaleVersion (409, with the current version) unless at ``version``."""
        if version is not None and self.version != version:
            raise errors.StaleVersion(
                f"incident {self.id} is at version {self.version}, not {version}: reload and decide again",
                current_version=self.version,
            )

    def _require_open(self, action: str) -> None:
        if not self.stage.is_open:
            raise errors.Conflict(f"cannot {action}: incident {self.id} is {self.stage}", stage=str(self.stage))

    def _change(self, actor: str, kind: str, detail: dict[str, Any], values: dict[str, Any], event: Any) -> Change:
        return Change(self.id, values, Entry(self.id, actor, kind, detail), Event(event, self.exercise))

    def created(self, gateway_id: str, alarm_id: str) -> IncidentCreated:
        """The event announcing this incident, opened by alarm (gateway_id, alarm_id)."""
        return IncidentCreated(
            incident_id=self.id,
            category=self.category,
            level=self.level,
            lat=self.lat,
            lon=self.lon,
            first_alarm_at=self.first_alarm_at,
            alarm_id=alarm_id,
            gateway_id=gateway_id,
            exercise=self.exercise,
        )

    # -- operator commands

    def verify(self, actor: str) -> Change:
        """A dispatcher confirms the incident is real. Refused (409) when it is finished or
        already verified."""
        self._require_open("verify")
        if self.verified:
            raise errors.Conflict(f"incident {self.id} is already verified")
        event = IncidentVerified(incident_id=self.id, actor=actor, automatic=False, version=self.version + 1)
        return self._change(actor, "verified", {"automatic": False}, {"verified": True}, event)

    def set_perimeter(self, perimeter: Perimeter, actor: str) -> Change:
        """Set (or replace) the cordon. Refused (409) when the incident is finished."""
        self._require_open("set a perimeter")
        shape = perimeter.to_dict()
        event = PerimeterSet(incident_id=self.id, perimeter=shape, actor=actor, version=self.version + 1)
        return self._change(actor, "perimeter.set", {"perimeter": shape}, {"perimeter": shape}, event)

    def change_stage(
        self, target: Stage, actor: str, reason: str | None, participants: Sequence[Participant]
    ) -> Change:
        """Move to ``target`` through the lifecycle's one step there, if its guard lets it.

        Raises InvalidInput (422) for a target no step leads to, IllegalTransition (409, naming
        the allowed triggers) for a step the lifecycle does not have from here, and the shared
        IllegalTransition (409, with ``missing``) while the guard still blocks it.
        """
        trigger = trigger_for(target)
        next_stage(self.stage, trigger)
        missing = check_guard(self.stage, trigger, self.guard_facts(), participants)
        if missing:
            raise errors.IllegalTransition(
                f"cannot move incident {self.id} from {self.stage} to {target}: " + "; ".join(missing),
                missing=missing,
                stage=str(self.stage),
            )
        event = StageChanged(
            incident_id=self.id,
            from_stage=self.stage,
            to_stage=target,
            actor=actor,
            version=self.version + 1,
            category=self.category,
            level=self.level,
            lat=self.lat,
            lon=self.lon,
            perimeter=self.perimeter.to_dict() if self.perimeter else None,
            reason=reason,
        )
        detail = {"from": str(self.stage), "to": str(target), "reason": reason}
        return self._change(actor, "stage.changed", detail, {"stage": target.value}, event)

    def change_level(self, level: Level, actor: str, reason: str) -> Change:
        """Raise or lower the level (a commander's judgement). Refused (409) when the incident is
        finished or already at ``level``."""
        self._require_open("change the level")
        if self.level == level:
            raise errors.Conflict(f"incident {self.id} is already level {level.name}")
        event = LevelChanged(
            incident_id=self.id,
            from_level=self.level,
            to_level=level,
            reason=reason,
            actor=actor,
            version=self.version + 1,
        )
        detail = {"from": int(self.level), "to": int(level), "reason": reason}
        facts = dict(self.facts)
        # What was known when the operator decided: correlation's estimate may override this
        # decision only with more than that (``absorb``).
        facts[OPERATOR_LEVEL] = {
            "level": int(level),
            "actor": actor,
            "category": str(self.category),
            "casualties": self.casualties,
            "callers": self.caller_count,
            "estimate": int(min(self.level, estimate_level(self.category, self.casualties, self.caller_count))),
        }
        return self._change(actor, "level.changed", detail, {"level": int(level), "facts": facts}, event)

    def record_fact(self, fact: CommanderFact, actor: str, note: str = "") -> Change:
        """A commander declares the hazard under control or files the after-action report.
        Refused (409) when the incident is finished."""
        self._require_open(f"record {fact}")
        facts = dict(self.facts)
        facts[fact] = True
        if note:
            facts[f"{fact}_note"] = note
        event = FactRecorded(incident_id=self.id, fact=fact, actor=actor, version=self.version + 1)
        return self._change(actor, f"fact.{fact}", {"note": note}, {"facts": facts}, event)

    def apply_fact(
        self, fact: str, value: Any, source: str, message_id: str, participant: Participant | None = None
    ) -> Change:
        """Record what another service (``source``) reported in message ``message_id``: a fact's
        value, or with ``participant`` whether that participant is settled. Applies in any stage:
        a late report about a finished incident still belongs on its timeline."""
        facts = dict(self.facts)
        if participant is not None:
            settled = dict(facts.get("settled") or {})
            settled[participant.value] = bool(value)
            facts["settled"] = settled
        else:
            facts[fact] = value
        detail = {
            "fact": fact,
            "value": value,
            "participant": participant.value if participant is not None else None,
            "message_id": message_id,
        }
        entry = Entry(self.id, source, f"fact.{fact}", detail)
        return Change(self.id, {"facts": facts}, entry, None, versioned=False)

    def check_merge(self, source: Incident) -> None:
        """Whether ``source`` may be merged into this incident. Raises InvalidInput (422) for a
        self-merge, Conflict (409) when either is finished, the source was already merged, or one
        is a drill's and the other live (DESIGN §8)."""
        refuse_self_merge(self.id, source.id)
        self._require_open("merge")
        source._require_open("merge")
        if source.merged_into:
            raise errors.Conflict(f"incident {source.id} was already merged into {source.merged_into}")
        if source.exercise != self.exercise:
            raise errors.Conflict("an exercise incident and a live incident cannot be merged")

    def merge(self, source: Incident, actor: str, moved: int, counts: Counts) -> tuple[Change, Change]:
        """Take in ``source``, whose ``moved`` alarms now belong here, giving these ``counts``.

        Returns the change to the source (merged away, its counts emptied; the rest of its state
        stays on its row, for a split to give back) and to this incident, which keeps the most
        advanced state of the two: the later stage, verified if either was, a perimeter (its
        own, else the source's), every fact either had (a participant settled only if settled
        for both), the more severe level. The timeline says which came from where. Raises as
        ``check_merge``.
        """
        self.check_merge(source)
        gone = Change(
            source.id,
            {"merged_into": self.id, "alarm_count": 0, "caller_count": 0},
            Entry(source.id, actor, "merged.into", {"incident_id": self.id, "alarms_moved": moved}),
        )
        stage = max(self.stage, source.stage, key=STAGE_ORDER.index)
        perimeter = self.perimeter or source.perimeter
        values = {
            **counts.values(),
            "level": int(min(self.level, source.level)),
            "verified": self.verified or source.verified,
            "stage": stage.value,
            "perimeter": perimeter.to_dict() if perimeter else None,
            "facts": merged_facts(self.facts, source.facts),
        }
        kept = {
            "stage": self.id if stage == self.stage else source.id,
            "perimeter": None if perimeter is None else self.id if self.perimeter else source.id,
            "level": self.id if self.level <= source.level else source.id,
            "verified": self.id if self.verified else source.id if source.verified else None,
        }
        event = IncidentMerged(incident_id=self.id, merged_incident_id=source.id, alarms_moved=moved, actor=actor)
        detail = {"merged_incident_id": source.id, "alarms_moved": moved, "kept_from": kept}
        return gone, self._change(actor, "merged", detail, values, event)

    def carried_stage(self, before: Stage, actor: str, reason: str) -> Event | None:
        """The StageChanged event from ``before`` to this incident's stage when a merge or a split
        carried it there without a step of the lifecycle, so that other services act on it;
        None if the stage is still ``before``."""
        if before == self.stage:
            return None
        event = StageChanged(
            incident_id=self.id,
            from_stage=before,
            to_stage=self.stage,
            actor=actor,
            version=self.version,
            category=self.category,
            level=self.level,
            lat=self.lat,
            lon=self.lon,
            perimeter=self.perimeter.to_dict() if self.perimeter else None,
            reason=reason,
        )
        return Event(event, self.exercise)

    def plan_split(self, alarms: Sequence[AlarmKey], wanted: Collection[AlarmKey]) -> list[AlarmKey]:
        """Which of the incident's ``alarms`` (oldest first) leave for a new incident.

        Raises InvalidInput (422, naming ``alarms``) when none is named or one named is not this
        incident's, Conflict (409) when the incident is finished or every alarm would leave.
        """
        if not wanted:
            raise errors.InvalidInput("name at least one alarm to split out", field="alarms")
        self._require_open("split")
        wanted = set(wanted)
        moving = [key for key in alarms if key in wanted]
        unknown = wanted - set(moving)
        if unknown:
            gateway_id, alarm_id = sorted(unknown)[0]
            raise errors.InvalidInput(
                f"alarm {gateway_id}:{alarm_id} does not belong to incident {self.id}", field="alarms"
            )
        if len(moving) == len(alarms):
            raise errors.Conflict("splitting out every alarm would leave the incident empty: cancel or merge instead")
        return moving

    def split(
        self,
        new_id: str,
        first: AlarmFacts,
        moved: Sequence[AlarmKey],
        new_counts: Counts,
        counts: Counts,
        actor: str,
        origin: Incident | None = None,
    ) -> Split:
        """Open incident ``new_id`` for the ``moved`` alarms (``first`` is the oldest of them,
        ``new_counts`` their aggregates); ``counts`` are what this incident keeps.

        When the alarms are exactly those of ``origin``, an incident merged into this one, the
        new incident gets the state that was origin's: its place, category, stage, verification,
        perimeter, facts and level. Otherwise it starts where its first alarm was, unverified,
        with a level estimated from its own alarms. Either way it remembers it was split from this
        one, and this incident keeps its level.
        """
        new = replace(
            open_incident(new_id, first),
            **new_counts.values(),
            level=estimate_level(first.category, new_counts.casualties, new_counts.caller_count),
            split_from=self.id,
        )
        if origin is not None:
            new = replace(
                new,
                category=origin.category,
                lat=origin.lat,
                lon=origin.lon,
                stage=origin.stage,
                verified=origin.verified,
                perimeter=origin.perimeter,
                facts=dict(origin.facts),
                level=origin.level,
            )
        refs = [f"{gateway_id}:{alarm_id}" for gateway_id, alarm_id in moved]
        created = new.created(*moved[0])
        born = Entry(
            new.id,
            actor,
            "split.from",
            {"incident_id": self.id, "alarms": len(moved), "state_of": origin.id if origin is not None else None},
        )
        event = IncidentSplit(
            incident_id=self.id,
            new_incident_id=new.id,
            alarm_ids=refs,
            actor=actor,
            state_of=origin.id if origin is not None else None,
        )
        left = self._change(actor, "split", {"new_incident_id": new.id, "alarms": refs}, counts.values(), event)
        return Split(new, born, Event(created, new.exercise), left)


STAGE_ORDER: list[Stage] = [
    Stage.reported,
    Stage.isolation,
    Stage.handling,
    Stage.opinion_control,
    Stage.aftermath,
    Stage.closed,
    Stage.cancelled,
]
"""Stages from the least to the most advanced (a merge keeps the later of two open stages)."""


def merged_facts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two incidents' facts as one: a fact true for either is true; a participant is settled
    only if it is settled for both (one that reported for only one incident counts as that)."""
    facts = {**b, **a}
    for name in set(a) | set(b):
        if isinstance(a.get(name), bool) or isinstance(b.get(name), bool):
            facts[name] = bool(a.get(name)) or bool(b.get(name))
    settled_a, settled_b = dict(a.get("settled") or {}), dict(b.get("settled") or {})
    if settled_a or settled_b:
        facts["settled"] = {
            p: bool(settled_a.get(p, True)) and bool(settled_b.get(p, True)) for p in set(settled_a) | set(settled_b)
        }
    return facts


@dataclass(frozen=True)
class Split:
    """A split decided: the new incident (to insert) with its timeline entry and creation event,
    and the change to the incident the alarms left."""

    new: Incident
    entry: Entry
    created: Event
    left: Change


def open_incident(id: str, alarm: AlarmFacts) -> Incident:
    """A new incident opened by its first alarm: reported, unverified, version 1, at the alarm's
    place, with the level its first alarm gives."""
    casualties = alarm.casualties or 0
    callers = 1 if alarm.caller_key else 0
    return Incident(
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


M_PER_DEGREE_LAT = EARTH_RADIUS_M * math.pi / 180
"""Metres of great circle per degree of latitude on the haversine sphere (ecs.geo.EARTH_RADIUS_M)."""


def find_incident(
    alarm: AlarmFacts,
    candidates: Iterable[Incident],
    windows: Mapping[Category, CorrelationWindow] = DEFAULT_WINDOWS,
) -> Incident | None:
    """The open incident this alarm belongs to, or None to open a new one.

    An alarm joins when it is within the window of time of the incident's span (an alarm inside
    the span, or late, is measured as 0 s away) and the window of distance of the category the
    incident would have with it (a medical-only incident near a crowd crush is judged by the
    crowd crush's window). Nearest wins, then the oldest, then the smallest id, so that two
    replicas looking at the same candidates always pick the same incident.
    """
    best: tuple[float, datetime, str] | None = None
    chosen = None
    for incident in candidates:
        if incident.stage not in OPEN_STAGES or incident.exercise != alarm.exercise:
            continue
        if not can_join(incident.category, alarm.category):
            continue
        category = joined_category(incident.category, alarm.category)
        window = windows.get(category, DEFAULT_WINDOWS[category])
        if gap_to_span(alarm.received_at, incident.first_alarm_at, incident.last_alarm_at) > window.window_s:
            continue
        # The latitudes alone bound the distance from below (R·|Δφ|): most candidates of the
        # index's cells end here, without the trigonometry. A metre of slack leaves the cases at
        # the window's edge to haversine_m, whose rounding differs from this product's.
        if abs(incident.lat - alarm.lat) * M_PER_DEGREE_LAT > window.distance_m + 1.0:
            continue
        distance = haversine_m(incident.lat, incident.lon, alarm.lat, alarm.lon)
        if distance > window.distance_m:
            continue
        key = (distance, incident.first_alarm_at, incident.id)
        if best is None or key < best:
            best, chosen = key, incident
    return chosen


def gap_to_span(at: datetime, first: datetime, last: datetime) -> float:
    """Seconds from ``at`` to the span [first, last]; 0 inside it."""
    if at < first:
        return (first - at).total_seconds()
    if at > last:
        return (at - last).total_seconds()
    return 0.0


def take_category(incident: Incident, alarm: AlarmFacts) -> str | None:
    """Give a medical-only incident the scene category of ``alarm`` (in place); returns the
    timeline's reason when it changed, else None."""
    category = joined_category(incident.category, alarm.category)
    if category == incident.category:
        return None
    reason = (
        f"a {category} alarm arrived near this {incident.category}-only incident: "
        f"the casualties are the {category}'s, the incident is now a {category}"
    )
    incident.category = category
    return reason


OPERATOR_LEVEL = "operator_level"
"""The fact holding an operator's last level decision and what was known when it was made."""


def absorb(incident: Incident, alarm: AlarmFacts, new_caller: bool) -> LevelChange | None:
    """Fold one more alarm into an incident, in place; return the level change it caused, if any.

    The location stays at the first alarm's: a stable anchor keeps the correlation radius from
    drifting down a street alarm by alarm until it joins scenes that have nothing in common.

    Automatic re-estimation only raises the level. Lowering it is a human judgement: a quiet
    minute on the phones does not mean the scene got smaller, and an operator's raise must stick.
    An operator's lowering sticks too: after one, the estimate raises the level only when what is
    now known gives a more severe estimate than what was known when the operator decided (more
    casualties, callers past the next threshold, a more severe category), and the reason says so.
    The alarm's own category counts too: an explosion reported at a fire is at least level III.
    Raises ValueError for a finished incident or a drill alarm at a live incident (or the reverse).
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
        return None
    reason = f"{incident.casualties} casualties reported, {incident.caller_count} callers, category {incident.category}"
    decided = incident.facts.get(OPERATOR_LEVEL)
    if decided:
        known = min(
            estimate_level(Category(decided["category"]), int(decided["casualties"]), int(decided["callers"])),
            Level(int(decided["estimate"])),
        )
        if estimate >= known:
            return None  # nothing beyond what the operator knew when deciding
        reason += (
            f"; new since {decided['actor']} set level {Level(int(decided['level'])).name}: "
            f"casualties {decided['casualties']} -> {incident.casualties}, "
            f"callers {decided['callers']} -> {incident.caller_count}"
        )
    change = LevelChange(incident.level, estimate, reason)
    incident.level = estimate
    return change
