"""Assignments: an operator's choice, the accepted recommendation, release and reassignment, the
purge of exercise data; and the steps every flow that moves units shares (claim, hand over,
release, tell the lifecycle).

A stale unit directory costs a retry, never a wrong assignment: units are claimed with a
conditional UPDATE (store.claim_units), so a unit another replica took meanwhile is simply not
claimed, and the next nearest is tried.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import structlog
from prometheus_client import Counter as Metric

from ecs.envelope import utcnow
from ecs.errors import NotFound, Transient
from ecs.vocabulary import Stage

from .. import store
from ..commands import AcceptRecommendation, AssignUnits, PurgeExercise, Reassign, ReleaseAssignment
from ..context import Context
from ..domain.incidents import (
    Assignment,
    AssignmentSource,
    Held,
    Incident,
    Outcome,
    UnknownAssignment,
    UnknownIncident,
    assigned_event,
    assignment_stage,
    check_assignable,
    check_eligible,
    check_open,
    check_other_incident,
    check_reassignable,
    check_release,
    check_unit_list,
    choose_units,
    incident_facts,
    new_assignment,
    release_event,
    released_status,
    required_units,
    shortfall_messages,
    top_up,
)
from ..domain.recommendation import (
    RecommendationResult,
)
from ..domain.roster import (
    UnitType,
    UnknownUnit,
    busy,
)
from .tx import Tx, incident_lock, transaction

log = structlog.get_logger("dispatch")

ASSIGNED = Metric("dispatch_units_assigned_total", "Units assigned to incidents", ["source"])
RELEASED = Metric("dispatch_units_released_total", "Units released from incidents")
SHORTFALLS = Metric("dispatch_shortfalls_total", "Plan requirements that found too few units", ["unit_type"])

EXERCISE_PURGE_LOCK = "dispatch:exercise-purge"
CLAIM_ROUNDS = 4
"""Recommend-and-claim rounds before a shortfall is reported: each round the units others took
meanwhile give way to the next nearest."""


# --- commands ----------------------------------------------------------------------------------


async def assign_units(ctx: Context, cmd: AssignUnits) -> Outcome:
    """The units an operator chose, all or none: recommended ones as such, others as overrides
    with the operator's reason. Raises NotFound, Conflict (a unit busy or not eligible, the
    incident not open) or InvalidInput (an override without a reason)."""
    check_unit_list(cmd.unit_ids)

    async def work(tx: Tx) -> Outcome:
        await tx.uow.lock(incident_lock(cmd.incident_id))
        incident = await _open_incident(tx, cmd.incident_id)
        units = await store.get_units(tx.conn, cmd.unit_ids)
        for uid in cmd.unit_ids:
            if uid not in units:
                raise UnknownUnit(uid)
            check_assignable(units[uid], incident)
        picks = ctx.directory.recommend(Counter(units[uid].unit_type for uid in cmd.unit_ids), incident)
        chosen = choose_units(cmd.unit_ids, {r.unit_id: r for r in picks.recommendations}, cmd.reason)
        now = utcnow()
        got = await store.claim_units(tx.conn, list(cmd.unit_ids), incident.id, incident.exercise, now)
        tx.touched.extend(got)
        ctx.directory.mark_taken(got)
        if len(got) != len(cmd.unit_ids):
            lost = sorted(set(cmd.unit_ids) - got)
            unit = await store.get_unit(tx.conn, lost[0])
            raise busy(unit) if unit is not None else NotFound(f"unit {lost[0]} not found")
        stage = assignment_stage(incident.stage)
        estimator = ctx.directory.estimator
        new = [
            new_assignment(incident, units[uid], stage, source, tx.actor, why, estimator, now)
            for uid, source, why in chosen
        ]
        made = await add_assignments(tx, incident, new)
        await publish_facts(ctx, tx, incident)
        await tx.uow.commit()
        return Outcome(made, [])

    return await transaction(ctx, work, cmd.actor)


async def accept_recommendation(ctx: Context, cmd: AcceptRecommendation) -> Outcome:
    """Top the incident up to its plan for ``cmd.stage`` (default: its own) with the recommended
    units; what cannot be found is reported as shortfalls, not refused."""

    async def work(tx: Tx) -> Outcome:
        await tx.uow.lock(incident_lock(cmd.incident_id))
        incident = await _open_incident(tx, cmd.incident_id)
        held = await store.active_assignments(tx.conn, incident.id)
        _, level_plan = ctx.plans.level_plan(incident.category, incident.level)
        stage = cmd.stage or incident.stage
        add = top_up(held, required_units(level_plan, stage, ctx.settings.release_on_aftermath))
        made, shortfalls = await claim_recommended(
            ctx, tx, incident, add, assignment_stage(stage), AssignmentSource.RECOMMENDED
        )
        await publish_facts(ctx, tx, incident)
        await tx.uow.commit()
        return Outcome(made, shortfalls)

    return await transaction(ctx, work, cmd.actor)


async def release_assignment(ctx: Context, cmd: ReleaseAssignment) -> Assignment:
    """End an active assignment; the unit goes back (or returns). Conflict if it ended already."""

    async def work(tx: Tx) -> Assignment:
        assignment = await _assignment(tx, cmd.assignment_id)
        await tx.uow.lock(incident_lock(assignment.incident_id))
        incident = await store.get_incident(tx.conn, assignment.incident_id)
        held = check_release(assignment, await _active(tx, assignment))
        await release_held(tx, incident, [held], cmd.reason)
        await publish_facts(ctx, tx, incident)
        done = await _assignment(tx, cmd.assignment_id)
        await tx.uow.commit()
        return done

    return await transaction(ctx, work, cmd.actor)


async def reassign(ctx: Context, cmd: Reassign) -> Assignment:
    """Send an assigned or en-route unit to another open incident, in one transaction; returns the
    new assignment."""

    async def work(tx: Tx) -> Assignment:
        assignment = await _assignment(tx, cmd.assignment_id)
        check_other_incident(assignment, cmd.incident_id)
        for incident_id in sorted((assignment.incident_id, cmd.incident_id)):  # one order: no deadlock
            await tx.uow.lock(incident_lock(incident_id))
        source = await store.get_incident(tx.conn, assignment.incident_id)
        target = await _open_incident(tx, cmd.incident_id)
        held = check_reassignable(assignment, await _active(tx, assignment))
        unit = await store.get_unit(tx.conn, held.unit_id)
        check_eligible(unit, target)
        made = await hand_over(ctx, tx, source, target, [held], f"reassigned: {cmd.reason}")
        for incident in (source, target):
            await publish_facts(ctx, tx, incident)
        await tx.uow.commit()
        return made[0]

    return await transaction(ctx, work, cmd.actor)


async def purge_exercise(ctx: Context, cmd: PurgeExercise) -> dict[str, int]:
    """Forget every exercise incident and assignment (and idle exercise units); live data stays.

    Units still serving an exercise are released first, so a live unit lent to a drill goes back
    to work and the release is published like any other.
    """

    async def work(tx: Tx) -> dict[str, int]:
        await tx.uow.lock(EXERCISE_PURGE_LOCK)
        for incident_id in await store.exercise_incident_ids(tx.conn):
            await tx.uow.lock(incident_lock(incident_id))
            incident = await store.get_incident(tx.conn, incident_id)
            held = await store.active_assignments(tx.conn, incident_id)
            await release_held(tx, incident, held, "exercise data purged")
        assignments = await store.delete_exercise_assignments(tx.conn)
        incidents = await store.delete_exercise_incidents(tx.conn)
        units = 0
        if cmd.units_too:
            idle = await store.idle_exercise_unit_ids(tx.conn)
            units = await store.delete_units(tx.conn, idle)
            tx.touched.extend(idle)
        await tx.uow.commit()
        log.info("exercise.purged", incidents=incidents, assignments=assignments, units=units)
        return {"incidents_purged": incidents, "assignments_purged": assignments, "units_purged": units}

    return await transaction(ctx, work, cmd.actor)


# --- steps shared by the flows that move units ---------------------------------------------------


async def claim_recommended(
    ctx: Context,
    tx: Tx,
    incident: Incident,
    add: Mapping[UnitType, int],
    stage: Stage,
    source: AssignmentSource,
    retry_contended: bool = False,
) -> tuple[list[Assignment], list[str]]:
    """Claim the best available units for ``add`` (by type); a unit taken meanwhile gives way to
    the next. Returns the assignments made and why units are still missing.

    ``retry_contended``: when units were found but every round lost them to other transactions,
    raise Transient (the whole transaction is tried again later, with the roster as it is then)
    instead of recording a shortfall that is no shortage: nothing would ever try again for it
    unless a unit came free. The units lost are marked taken in the directory, so a later try
    claims others or finds a real shortage (recorded then): the retries end."""
    remaining = {t: n for t, n in add.items() if n > 0}
    new: list[Assignment] = []
    result = RecommendationResult()
    now = utcnow()
    for _ in range(CLAIM_ROUNDS):
        if not remaining:
            break
        result = ctx.directory.recommend(remaining, incident)
        picks = result.recommendations
        if not picks:
            break
        got = await store.claim_units(tx.conn, [r.unit_id for r in picks], incident.id, incident.exercise, now)
        tx.touched.extend(r.unit_id for r in picks)
        ctx.directory.mark_taken(r.unit_id for r in picks)  # the ones not got are taken by others
        units = await store.get_units(tx.conn, got)
        for rec in picks:
            if rec.unit_id in got:
                unit = units[rec.unit_id]
                estimator = ctx.directory.estimator
                new.append(new_assignment(incident, unit, stage, source, tx.actor, rec.reason, estimator, now))
                remaining[rec.unit_type] -= 1
        remaining = {t: n for t, n in remaining.items() if n > 0}
        if len(got) == len(picks):
            break
    short = {s.unit_type for s in result.shortfalls}
    if retry_contended and any(t not in short for t in remaining):
        raise Transient(
            f"incident {incident.id}: the units found were taken by others meanwhile "
            f"({', '.join(sorted(str(t) for t in remaining if t not in short))}); trying again"
        )
    made = await add_assignments(tx, incident, new)
    for unit_type in remaining:
        SHORTFALLS.labels(str(unit_type)).inc()
    return made, shortfall_messages(result.shortfalls, remaining)


async def add_assignments(tx: Tx, incident: Incident, new: Sequence[Assignment]) -> list[Assignment]:
    """Store the assignments (the partial unique index refuses a unit's second) and announce them."""
    made = await store.add_assignments(tx.conn, new)
    for assignment in made:
        tx.emit(assigned_event(assignment), incident)
        ASSIGNED.labels(assignment.source).inc()
    return made


async def release_held(tx: Tx, incident: Incident | None, held: Sequence[Held], reason: str) -> None:
    """End active assignments; each unit goes back to available or returns (released_status)."""
    now = utcnow()
    for a in held:
        to = released_status(a.status)
        if await store.set_unit_status(tx.conn, a.unit_id, a.status, to, None, now) is None:
            raise Transient(f"unit {a.unit_id} changed while being released")
        await store.close_assignments(tx.conn, [a.id], now, tx.actor, reason)
        tx.emit(release_event(a, to, tx.actor, reason), incident)
        tx.touched.append(a.unit_id)
        RELEASED.inc()


async def hand_over(
    ctx: Context, tx: Tx, source: Incident | None, target: Incident, held: Sequence[Held], reason: str
) -> list[Assignment]:
    """Move busy units from ``source`` to ``target`` as they are (a reassignment, a merge): each
    assignment ends and a new one begins, for the same stage. Returns the new assignments."""
    if not held:
        return []
    now = utcnow()
    moved = await store.hand_over_units(tx.conn, [a.unit_id for a in held], held[0].incident_id, target.id, now)
    moving = [a for a in held if a.unit_id in moved]
    await store.close_assignments(tx.conn, [a.id for a in moving], now, tx.actor, reason)
    units = await store.get_units(tx.conn, moved)
    estimator = ctx.directory.estimator
    new = []
    for a in moving:
        tx.emit(release_event(a, a.status, tx.actor, reason), source)
        unit = units[a.unit_id]
        new.append(new_assignment(target, unit, a.stage, AssignmentSource.REASSIGNED, tx.actor, reason, estimator, now))
        tx.touched.append(a.unit_id)
    return await add_assignments(tx, target, new)


async def publish_facts(ctx: Context, tx: Tx, incident: Incident) -> None:
    """Tell the lifecycle what it waits for, when it changed: perimeter units on scene, settled."""
    current = await store.get_incident(tx.conn, incident.id)
    held = await store.active_assignments(tx.conn, incident.id)
    facts = incident_facts(current, held, ctx.plans.find(current.category, current.level))
    for event in facts.events:
        tx.emit(event, current)
    if facts.events:
        await store.update_incident(tx.conn, current.id, **facts.values(), updated_at=utcnow())


# --- loading -----------------------------------------------------------------------------------


async def _open_incident(tx: Tx, incident_id: str) -> Incident:
    incident = await store.get_incident(tx.conn, incident_id)
    if incident is None:
        raise UnknownIncident(incident_id)
    check_open(incident)
    return incident


async def _assignment(tx: Tx, assignment_id: int) -> Assignment:
    assignment = await store.get_assignment(tx.conn, assignment_id)
    if assignment is None:
        raise UnknownAssignment(assignment_id)
    return assignment


async def _active(tx: Tx, assignment: Assignment) -> Held | None:
    """The assignment, if still active, with its unit's status."""
    held = await store.active_assignments(tx.conn, assignment.incident_id)
    return next((a for a in held if a.id == assignment.id), None)
