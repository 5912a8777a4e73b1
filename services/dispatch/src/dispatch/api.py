"""HTTP in, a command to its handler (or a query to views.py), the answer out: units, plans,
recommendations, assignments and the per-incident view of who is coming and when.

Each route declares its answer model (views.py), so the OpenAPI describes every answer. A drill
runner acts on exercise units and incidents only (Principal.require_scope, DESIGN §8).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field

from ecs.auth import COMMANDERS, OPERATORS, READERS, Principal, Role
from ecs.bodies import RequestBody
from ecs.errors import InvalidInput, UnsupportedMediaType
from ecs.vocabulary import Stage
from ecs.web import json_response, requires

from . import commands, views
from .context import Context
from .domain import Agency, UnitSpec, UnitStatus, UnitType, drill_may_drive
from .handlers import handle
from .views import (
    AssignmentAnswer,
    ExerciseData,
    IncidentPage,
    IncidentView,
    OutcomeAnswer,
    PlanAnswer,
    PlanList,
    PlanVersions,
    Purged,
    RecommendationsAnswer,
    UnitAnswer,
    UnitList,
    UnitPage,
)

units_api = APIRouter(prefix="/v1", tags=["units"])
plans_api = APIRouter(prefix="/v1", tags=["response plans"])
incidents_api = APIRouter(prefix="/v1", tags=["incidents and assignments"])

# Role sets beyond ecs.auth's: publishing a plan is a commander's alone (a drill runner does not
# change what every incident is sent), and only a drill runner purges exercise data. Lending a live
# unit to a drill is for COMMANDERS; taking it back for live duty, for any of the OPERATORS.
PLAN_ROLES = (Role.COMMANDER,)
PURGE_ROLES = (Role.DRILL_RUNNER,)

UNIT_ID = r"^[A-Za-z0-9_-]{1,64}$"
PLAN_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


async def _context(request: Request) -> Context:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop a request.
    return request.app.state.dispatch


Ctx = Annotated[Context, Depends(_context)]


def _answer(model: BaseModel, status: int = 200) -> Response:
    # orjson writes the answer, as the operator API always has (times with their +00:00 offset);
    # building it through the declared model keeps the OpenAPI true to it.
    return json_response(model.model_dump(), status=status)


# --- request bodies -----------------------------------------------------------------------------


class _Body(RequestBody):
    """Every request body of this service (ecs.bodies.RequestBody: no unknown field, no U+0000, no
    true or false for a number)."""


class Location(_Body):
    """A position in WGS-84 degrees."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)


class UnitIn(_Body):
    """A unit to register."""

    id: str = Field(pattern=UNIT_ID, description="also the last token of the unit's location subject")
    callsign: str = Field(default="", max_length=64)
    unit_type: UnitType
    capabilities: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=50)
    home_station: str = Field(min_length=1, max_length=128)
    district: str = Field(min_length=1, max_length=64)
    location: Location
    exercise: bool = False
    status: Literal[UnitStatus.AVAILABLE, UnitStatus.OUT_OF_SERVICE] = UnitStatus.AVAILABLE

    def spec(self) -> UnitSpec:
        """The unit as the domain registers it."""
        return UnitSpec(
            id=self.id,
            unit_type=self.unit_type,
            district=self.district,
            home_station=self.home_station,
            lat=self.location.lat,
            lon=self.location.lon,
            callsign=self.callsign,
            capabilities=tuple(self.capabilities),
            exercise=self.exercise,
            status=UnitStatus(self.status),
        )


class UnitBatch(_Body):
    """Units to register together, all or none."""

    units: list[UnitIn] = Field(min_length=1, max_length=1000)


class UnitChange(_Body):
    """Roster fields to change; the fields left out stay."""

    version: int = Field(ge=1, le=2**31 - 1, description="the unit version you saw; a changed unit answers 409")
    callsign: str | None = Field(default=None, min_length=1, max_length=64)
    capabilities: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(default=None, max_length=50)
    home_station: str | None = Field(default=None, min_length=1, max_length=128)
    district: str | None = Field(default=None, min_length=1, max_length=64)


class StatusChange(_Body):
    """A unit's new status."""

    status: UnitStatus
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="when given, refused (409) if the unit changed"
    )


class LocationChange(Location):
    """A unit's position and when it was fixed."""

    at: AwareDatetime | None = Field(default=None, description="when the position was fixed (default: now)")


class Lend(_Body):
    """The drill a live unit is lent to."""

    drill: str = Field(min_length=1, max_length=128, description="the drill the live unit is lent to")


class AssignUnits(_Body):
    """The units an operator chose for the incident."""

    unit_ids: list[Annotated[str, Field(pattern=UNIT_ID)]] = Field(min_length=1, max_length=200)
    reason: str | None = Field(
        default=None, max_length=2000, description="required when a unit is not among the recommended ones"
    )


class AcceptRecommendation(_Body):
    """Whose units to top the incident up to."""

    stage: Literal[Stage.isolation, Stage.handling] | None = Field(
        default=None, description="whose units to top up to; default: the incident's stage"
    )


class Release(_Body):
    """Why the unit no longer serves the incident."""

    reason: str = Field(min_length=1, max_length=2000)


class Reassign(_Body):
    """The incident to send the unit to, and why."""

    incident_id: str = Field(min_length=1, max_length=32)
    reason: str = Field(min_length=1, max_length=2000)


# --- units -------------------------------------------------------------------------------------


@units_api.post("/units", status_code=201, response_model=UnitAnswer, summary="Register a unit")
async def register_unit(ctx: Ctx, body: UnitIn, principal: Principal = requires(*OPERATORS)) -> Response:
    """409 if the id is taken; 403 for a drill runner registering a live unit."""
    principal.require_scope(OPERATORS, body.exercise, "units")
    (unit,) = await handle(ctx, commands.RegisterUnits([body.spec()], principal.subject))
    return _answer(UnitAnswer.of(unit), status=201)


@units_api.post(
    "/units:batch",
    status_code=201,
    response_model=UnitList,
    summary="Register up to 1,000 units at once (all or none)",
)
async def register_units(ctx: Ctx, body: UnitBatch, principal: Principal = requires(*OPERATORS)) -> Response:
    """All or none: 409 if an id is taken, 422 if one is listed twice."""
    for u in body.units:
        principal.require_scope(OPERATORS, u.exercise, "units")
    units = await handle(ctx, commands.RegisterUnits([u.spec() for u in body.units], principal.subject))
    return _answer(UnitList(items=[UnitAnswer.of(u) for u in units]), status=201)


@units_api.get("/units", response_model=UnitPage, summary="List units, filtered, by id")
async def list_units(
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    status: Annotated[list[UnitStatus] | None, Query()] = None,
    unit_type: Annotated[list[UnitType] | None, Query()] = None,
    agency: Annotated[list[Agency] | None, Query()] = None,
    district: Annotated[list[str] | None, Query()] = None,
    exercise: bool | None = None,
    incident_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=UNIT_ID, description="next_cursor of the previous page (422 for another form)")
    ] = None,
) -> Response:
    """Every filter given must match; a filter given several times matches any of its values."""
    page = await views.units_page(
        ctx.db,
        status=status or (),
        unit_type=unit_type or (),
        agency=agency or (),
        district=district or (),
        exercise=exercise,
        incident_id=incident_id,
        limit=limit,
        cursor=cursor,
    )
    return _answer(page)


@units_api.get("/units/{unit_id}", response_model=UnitAnswer, summary="One unit")
async def get_unit(ctx: Ctx, unit_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 if the unit is not on the roster."""
    return _answer(UnitAnswer.of(await views.unit(ctx.db, unit_id)))


async def _own_unit(ctx: Context, principal: Principal, unit_id: str, lent_counts: bool) -> None:
    unit = await views.unit(ctx.db, unit_id)
    # A live unit lent to a drill reports its status and position in the drill too, unless it
    # serves a live incident: nothing a drill runner does may touch that (DESIGN §8).
    exercise = unit.exercise
    if lent_counts and not exercise and principal.is_drill_only(OPERATORS):
        serves_live = unit.incident_id is not None and not (await views.incident(ctx.db, unit.incident_id)).exercise
        exercise = drill_may_drive(unit, serves_live)
    principal.require_scope(OPERATORS, exercise, "units")


@units_api.patch(
    "/units/{unit_id}",
    response_model=UnitAnswer,
    summary="Change a unit's callsign, capabilities, station or district",
)
async def update_unit(
    ctx: Ctx, unit_id: str, body: UnitChange, principal: Principal = requires(*OPERATORS)
) -> Response:
    """409 (with the current version) if the unit changed since the version you send."""
    await _own_unit(ctx, principal, unit_id, lent_counts=False)
    changes = body.model_dump(exclude={"version"}, exclude_none=True)
    if not changes:
        raise InvalidInput("nothing to change", field="body")
    unit = await handle(ctx, commands.UpdateUnit(unit_id, body.version, changes, principal.subject))
    return _answer(UnitAnswer.of(unit))


@units_api.delete("/units/{unit_id}", status_code=204, summary="Remove an available or out-of-service unit")
async def remove_unit(ctx: Ctx, unit_id: str, principal: Principal = requires(*OPERATORS)) -> Response:
    """409, naming the incident it serves, if the unit is busy."""
    await _own_unit(ctx, principal, unit_id, lent_counts=False)
    await handle(ctx, commands.RemoveUnit(unit_id, principal.subject))
    return Response(status_code=204)


@units_api.post(
    "/units/{unit_id}/status",
    response_model=UnitAnswer,
    summary="Report a unit's status (en route, on scene, returning, available, out of service)",
    responses={409: {"description": "illegal status change, with the legal next statuses"}},
)
async def change_status(
    ctx: Ctx, unit_id: str, body: StatusChange, principal: Principal = requires(*OPERATORS)
) -> Response:
    """Returning or out of service ends the unit's assignment. 409 for an illegal change (with the
    legal next statuses), or if ``version`` is given and the unit changed."""
    await _own_unit(ctx, principal, unit_id, lent_counts=True)
    unit = await handle(ctx, commands.ReportStatus(unit_id, body.status, principal.subject, body.version))
    return _answer(UnitAnswer.of(unit))


@units_api.put(
    "/units/{unit_id}/location",
    response_model=UnitAnswer,
    summary="Set a unit's position (the feed is vehicle.location.<id>)",
)
async def set_location(
    ctx: Ctx, unit_id: str, body: LocationChange, principal: Principal = requires(*OPERATORS)
) -> Response:
    """A position older than the one stored is ignored."""
    await _own_unit(ctx, principal, unit_id, lent_counts=True)
    unit = await handle(ctx, commands.MoveUnit(unit_id, body.lat, body.lon, body.at))
    return _answer(UnitAnswer.of(unit))


@units_api.put(
    "/units/{unit_id}/lend", response_model=UnitAnswer, summary="Lend a live unit to a drill", tags=["exercise"]
)
async def lend(ctx: Ctx, unit_id: str, body: Lend, principal: Principal = requires(*COMMANDERS)) -> Response:
    """Exercise incidents may then take the unit while it is available. 409 for an exercise unit."""
    return _answer(UnitAnswer.of(await handle(ctx, commands.LendUnit(unit_id, body.drill, principal.subject))))


@units_api.delete(
    "/units/{unit_id}/lend",
    response_model=UnitAnswer,
    summary="Take a lent unit back (its exercise assignment, if any, is released)",
    tags=["exercise"],
)
async def reclaim(ctx: Ctx, unit_id: str, principal: Principal = requires(*OPERATORS)) -> Response:
    """The unit's exercise assignment, if any, ends at once. A drill runner may take back only a
    unit that serves no live incident (403 otherwise)."""
    await _own_unit(ctx, principal, unit_id, lent_counts=True)
    return _answer(UnitAnswer.of(await handle(ctx, commands.ReclaimUnit(unit_id, principal.subject))))


# --- plans -------------------------------------------------------------------------------------


@plans_api.get("/plans", response_model=PlanList, summary="The active response plan of each category")
async def list_plans(ctx: Ctx, principal: Principal = requires(*READERS)) -> Response:
    """The active version of each category's plan."""
    return _answer(views.plan_list(ctx.plans))


@plans_api.get(
    "/plans/{category}",
    response_model=PlanAnswer,
    summary="A category's active plan (or ?version=n), as JSON or YAML",
    responses={200: {"content": {"application/yaml": {"schema": {"type": "string"}}}}},
)
async def get_plan(
    ctx: Ctx,
    category: str,
    principal: Principal = requires(*READERS),
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    accept: Annotated[str, Header()] = "",
) -> Response:
    """With ``Accept: application/yaml``, the plan as its author wrote it. 404 if there is no such version."""
    if "yaml" in accept:
        return Response(await views.plan_yaml(ctx.db, category, version), media_type="application/yaml")
    return _answer(await views.plan(ctx.db, category, version))


@plans_api.get("/plans/{category}/versions", response_model=PlanVersions, summary="Every stored version of a plan")
async def plan_history(ctx: Ctx, category: str, principal: Principal = requires(*READERS)) -> Response:
    """Newest first: version, origin (shipped or api), who stored it and when."""
    return _answer(await views.plan_versions(ctx.db, category))


@plans_api.put(
    "/plans/{category}",
    response_model=PlanAnswer,
    summary="Publish a new version of a category's plan (YAML body, version = active + 1)",
    responses={
        422: {"description": "malformed plan: each bad field with its line; the active plan stays"},
        409: {"description": "the version is not the active one + 1"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/yaml": {"schema": {"type": "string"}}}}},
)
async def put_plan(
    ctx: Ctx,
    request: Request,
    category: str,
    principal: Principal = requires(*PLAN_ROLES),
) -> Response:
    """Refused whole: 422 naming each bad field and its line; 409 unless the version is the active
    one + 1; 415 unless sent as YAML."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in PLAN_TYPES:
        raise UnsupportedMediaType(f"send the plan as YAML ({', '.join(PLAN_TYPES[:3])})", field="Content-Type")
    try:
        body = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the plan must be UTF-8 text", field="body") from None
    plan = await handle(ctx, commands.PublishPlan(category, body, principal.subject))
    return _answer(await views.plan(ctx.db, category, plan.version))


# --- incidents, recommendations, assignments -----------------------------------------------------


async def _own_incident(ctx: Context, principal: Principal, incident_id: str) -> None:
    incident = await views.incident(ctx.db, incident_id)
    principal.require_scope(OPERATORS, incident.exercise, "incidents")


async def _own_assignment(ctx: Context, principal: Principal, assignment_id: int) -> None:
    assignment = await views.assignment_or_none(ctx.db, assignment_id)
    if assignment is not None:  # an unknown one is refused by the handler (404)
        principal.require_scope(OPERATORS, assignment.exercise, "incidents")


@incidents_api.get(
    "/incidents", response_model=IncidentPage, summary="Incidents dispatch knows of, most recently changed first"
)
async def list_incidents(
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    stage: Annotated[list[Stage] | None, Query(description="any of these stages")] = None,
    exercise: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    """Filtered by stage (any of those given) and exercise, most recently changed first; pages by
    ``next_cursor`` (422 for a cursor this API did not give out)."""
    return _answer(await views.incidents_page(ctx.db, stage=stage or (), exercise=exercise, limit=limit, cursor=cursor))


@incidents_api.get(
    "/incidents/{incident_id}",
    response_model=IncidentView,
    summary="Who is coming and when: the incident's units and their ETAs",
)
async def incident_view(ctx: Ctx, incident_id: str, principal: Principal = requires(*READERS)) -> Response:
    """Each unit with its arrival estimate from where it is now; what the plan wants, what the
    incident holds and lacks; the units released. 404 if dispatch never heard of the incident."""
    return _answer(await views.incident_view(ctx, incident_id))


@incidents_api.get(
    "/incidents/{incident_id}/recommendations",
    response_model=RecommendationsAnswer,
    summary="Units to send, nearest by ETA, with reasons",
)
async def recommendations(
    ctx: Ctx,
    incident_id: str,
    principal: Principal = requires(*READERS),
    stage: Annotated[Literal[Stage.isolation, Stage.handling] | None, Query()] = None,
    unit_type: Annotated[UnitType | None, Query(description="recommend for this type instead of the plan")] = None,
    count: Annotated[int, Query(ge=1, le=200)] = 1,
) -> Response:
    """For what the plan wants at the incident's stage (or ``stage``), less what it holds; or for
    ``count`` units of ``unit_type``. Each unit with the reason it was chosen; shortfalls name the
    districts that kept their cover."""
    requirement = {unit_type: count} if unit_type is not None else None
    return _answer(await views.recommendations(ctx, incident_id, requirement, stage))


@incidents_api.post(
    "/incidents/{incident_id}/assignments",
    status_code=201,
    response_model=OutcomeAnswer,
    summary="Assign chosen units (all or none); a unit not recommended needs a reason",
    responses={409: {"description": "a unit is busy: the answer names the incident it serves"}},
)
async def assign(
    ctx: Ctx, incident_id: str, body: AssignUnits, principal: Principal = requires(*OPERATORS)
) -> Response:
    """All or none. 409 if a unit is busy (naming its incident) or may not serve the incident; 422
    if a unit not recommended has no reason."""
    await _own_incident(ctx, principal, incident_id)
    outcome = await handle(ctx, commands.AssignUnits(incident_id, body.unit_ids, principal.subject, body.reason))
    return _answer(OutcomeAnswer.of(outcome), status=201)


@incidents_api.post(
    "/incidents/{incident_id}/assignments:recommended",
    status_code=201,
    response_model=OutcomeAnswer,
    summary="Accept the recommendation: top the incident up to its plan",
)
async def accept(
    ctx: Ctx,
    incident_id: str,
    body: AcceptRecommendation | None = None,
    principal: Principal = requires(*OPERATORS),
) -> Response:
    """Claims the best available units for what the plan still lacks; what cannot be found is answered as shortfalls."""
    await _own_incident(ctx, principal, incident_id)
    stage = body.stage if body is not None else None
    outcome = await handle(ctx, commands.AcceptRecommendation(incident_id, principal.subject, stage))
    return _answer(OutcomeAnswer.of(outcome), status=201)


AssignmentId = Annotated[int, Path(ge=1, le=2**63 - 1, description="an assignment's id (64-bit)")]
"""An assignment id as the database can hold it: a larger number is 422, never a 500."""


@incidents_api.get("/assignments/{assignment_id}", response_model=AssignmentAnswer, summary="One assignment")
async def get_assignment(ctx: Ctx, assignment_id: AssignmentId, principal: Principal = requires(*READERS)) -> Response:
    """404 if there is no assignment of this id."""
    return _answer(AssignmentAnswer.of(await views.assignment(ctx.db, assignment_id)))


@incidents_api.post(
    "/assignments/{assignment_id}/release",
    response_model=AssignmentAnswer,
    summary="Release the unit from the incident",
)
async def release(
    ctx: Ctx, assignment_id: AssignmentId, body: Release, principal: Principal = requires(*OPERATORS)
) -> Response:
    """The unit goes back to available, or returns if it had left. 409 if the assignment ended already."""
    await _own_assignment(ctx, principal, assignment_id)
    done = await handle(ctx, commands.ReleaseAssignment(assignment_id, principal.subject, body.reason))
    return _answer(AssignmentAnswer.of(done))


@incidents_api.post(
    "/assignments/{assignment_id}/reassign",
    status_code=201,
    response_model=AssignmentAnswer,
    summary="Send an assigned or en-route unit to another incident",
)
async def reassign(
    ctx: Ctx, assignment_id: AssignmentId, body: Reassign, principal: Principal = requires(*OPERATORS)
) -> Response:
    """Only a unit assigned or en route, to an open incident, in one transaction. 409 otherwise."""
    await _own_assignment(ctx, principal, assignment_id)
    await _own_incident(ctx, principal, body.incident_id)
    made = await handle(ctx, commands.Reassign(assignment_id, body.incident_id, principal.subject, body.reason))
    return _answer(AssignmentAnswer.of(made), status=201)


# --- exercise data -----------------------------------------------------------------------------


@incidents_api.get(
    "/exercise", response_model=ExerciseData, summary="What exercise data dispatch holds", tags=["exercise"]
)
async def exercise_data(ctx: Ctx, principal: Principal = requires(*READERS)) -> Response:
    """Exercise incidents and units, active exercise assignments, live units lent to drills."""
    return _answer(await views.exercise_data(ctx.db))


@incidents_api.delete(
    "/exercise",
    response_model=Purged,
    summary="Purge exercise incidents and assignments (and exercise units with ?units=true); live data untouched",
    tags=["exercise"],
)
async def purge_exercise(ctx: Ctx, principal: Principal = requires(*PURGE_ROLES), units: bool = False) -> Response:
    """Units still serving an exercise are released first (a lent live unit goes back to work)."""
    purged: dict[str, Any] = await handle(ctx, commands.PurgeExercise(principal.subject, units))
    return _answer(Purged(**purged))
