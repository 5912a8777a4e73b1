"""Incidents and the units they hold: what a stage or level change, an operator's choice, a
release, a reassignment or a merge does to their assignments, and the facts the lifecycle waits
for (perimeter secured, dispatch settled).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from ecs.contracts import ParticipantSettled, PerimeterSecured, UnitAssigned, UnitReleased
from ecs.errors import Conflict, InvalidInput, NotFound
from ecs.geo import haversine_m
from ecs.vocabulary import Category, Level, Participant, Stage

from .recommendation import Recommendation, Shortfall, TravelEstimator
from .response_plans import LevelPlan, NoPlan, units_to_add, units_to_release
from .roster import Agency, Unit, UnitStatus, UnitType, busy

__all__ = [
    "Assignment",
    "AssignmentSource",
    "Facts",
    "Held",
    "Incident",
    "Outcome",
    "Reconciliation",
    "UnknownAssignment",
    "UnknownIncident",
    "assigned_event",
    "assignment_stage",
    "check_assignable",
    "check_eligible",
    "check_open",
    "check_other_incident",
    "check_reassignable",
    "check_release",
    "check_unit_list",
    "choose_units",
    "held_by_type",
    "incident_facts",
    "is_settled",
    "may_serve",
    "merge_reason",
    "split_reason",
    "new_assignment",
    "perimeter_secured",
    "plan_stage",
    "reclaim_releases",
    "reconcile",
    "release_event",
    "released_status",
    "required_units",
    "shortfall_messages",
    "surplus",
    "takes_over",
    "top_up",
]


# --------------------------------------------------------------------------------------------
# Errors


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


def reclaim_releases(incident: Incident | None) -> bool:
    """Taking a lent unit back ends its assignment when the incident it serves is an exercise; a
    live incident keeps it."""
    return incident is not None and incident.exercise


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


def split_reason(left: Incident, new: Incident) -> str:
    """Why a split moves the units that came with a merge back to the incident split off."""
    return f"alarms split from {left.id} into {new.id}, with the units that came with them"


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
