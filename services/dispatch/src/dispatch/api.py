"""HTTP in, a command to a handler, the response out: units, plans, recommendations, assignments
and the per-incident view of who is coming and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select

from ecs.auth import Principal, Role
from ecs.errors import Forbidden, InvalidInput, NotFound, UnsupportedMediaType
from ecs.vocabulary import Stage
from ecs.web import json_response, requires

from . import store
from .domain import UnitStatus, UnitType, next_statuses
from .handlers import Dispatcher, Outcome, UnitSpec
from .plans import PlanBook

units_api = APIRouter(prefix="/v1", tags=["units"])
plans_api = APIRouter(prefix="/v1", tags=["response plans"])
incidents_api = APIRouter(prefix="/v1", tags=["incidents and assignments"])

READERS = (
    Role.DISPATCHER,
    Role.COMMANDER,
    Role.AUDITOR,
    Role.DRILL_RUNNER,
    Role.INFORMATION_OFFICER,
    Role.SUPPLY_OFFICER,
    Role.SHELTER_MANAGER,
)
# A drill runner may do what a dispatcher does, but to exercise units and incidents only.
DISPATCH_ROLES = (Role.DISPATCHER, Role.COMMANDER, Role.DRILL_RUNNER)
PLAN_ROLES = (Role.COMMANDER,)
LEND_ROLES = (Role.COMMANDER, Role.DRILL_RUNNER)
RECLAIM_ROLES = (Role.DISPATCHER, Role.COMMANDER, Role.DRILL_RUNNER)

UNIT_ID = r"^[A-Za-z0-9_-]{1,64}$"
PLAN_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Location(_Body):
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)


class UnitIn(_Body):
    id: str = Field(pattern=UNIT_ID, description="also the last token of the unit's location subject")
    callsign: str = Field(default="", max_length=64)
    unit_type: UnitType
    capabilities: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=50)
    home_station: str = Field(min_length=1, max_length=128)
    district: str = Field(min_length=1, max_length=64)
    location: Location
    exercise: bool = False
    status: Literal["available", "out_of_service"] = "available"


class UnitBatch(_Body):
    units: list[UnitIn] = Field(min_length=1, max_length=1000)


class UnitChange(_Body):
    version: int = Field(ge=1, description="the unit version you saw; a changed unit answers 409")
    callsign: str | None = Field(default=None, min_length=1, max_length=64)
    capabilities: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(default=None, max_length=50)
    home_station: str | None = Field(default=None, min_length=1, max_length=128)
    district: str | None = Field(default=None, min_length=1, max_length=64)


class StatusChange(_Body):
    status: UnitStatus
    version: int | None = Field(default=None, ge=1, description="when given, refused (409) if the unit changed")


class LocationChange(Location):
    at: AwareDatetime | None = Field(default=None, description="when the position was fixed (default: now)")


class Lend(_Body):
    drill: str = Field(min_length=1, max_length=128, description="the drill the live unit is lent to")


class AssignUnits(_Body):
    unit_ids: list[Annotated[str, Field(pattern=UNIT_ID)]] = Field(min_length=1, max_length=200)
    reason: str | None = Field(
        default=None, max_length=2000, description="required when a unit is not among the recommended ones"
    )


class AcceptRecommendation(_Body):
    stage: Literal[Stage.isolation, Stage.handling] | None = Field(
        default=None, description="whose units to top up to; default: the incident's stage"
    )


class Release(_Body):
    reason: str = Field(min_length=1, max_length=2000)


class Reassign(_Body):
    incident_id: str = Field(min_length=1, max_length=32)
    reason: str = Field(min_length=1, max_length=2000)


# --- views -----------------------------------------------------------------------------------


def unit_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "callsign": row.callsign,
        "agency": row.agency,
        "unit_type": row.unit_type,
        "capabilities": list(row.capabilities or []),
        "home_station": row.home_station,
        "district": row.district,
        "location": {"lat": row.lat, "lon": row.lon, "at": row.location_at},
        "status": row.status,
        "incident_id": row.incident_id,
        "exercise": row.exercise,
        "lent_to_drill": row.lent_to_drill,
        "version": row.version,
        "next_statuses": sorted(s.value for s in _next(row.status)),
    }


def _next(status: str) -> frozenset[UnitStatus]:
    return next_statuses(UnitStatus(status))


def assignment_view(row: Any) -> dict[str, Any]:
    get = row.get if isinstance(row, dict) else row._mapping.get
    return {
        "id": get("id"),
        "incident_id": get("incident_id"),
        "unit_id": get("unit_id"),
        "unit_type": get("unit_type"),
        "agency": get("agency"),
        "stage": get("stage"),
        "source": get("source"),
        "actor": get("actor"),
        "reason": get("reason"),
        "eta_s": get("eta_s"),
        "distance_m": get("distance_m"),
        "exercise": get("exercise"),
        "assigned_at": get("assigned_at"),
        "arrived_at": get("arrived_at"),
        "released_at": get("released_at"),
        "released_by": get("released_by"),
        "release_reason": get("release_reason"),
    }


def outcome_view(outcome: Outcome) -> dict[str, Any]:
    return {
        "assignments": [assignment_view(a) for a in outcome.assignments],
        "shortfalls": outcome.shortfalls,
        "complete": not outcome.shortfalls,
    }


def _types(counts: dict[Any, int]) -> dict[str, int]:
    return {str(t): n for t, n in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def incident_summary(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "category": row.category,
        "level": row.level,
        "stage": row.stage,
        "location": {"lat": row.lat, "lon": row.lon},
        "exercise": row.exercise,
        "perimeter": row.perimeter,
        "merged_into": row.merged_into,
        "perimeter_secured": bool(row.perimeter_secured),
        "settled": row.settled,
        "shortfalls": list(row.shortfalls or []),
        "updated_at": row.updated_at,
    }


# --- units -----------------------------------------------------------------------------------


def _spec(u: UnitIn) -> UnitSpec:
    return UnitSpec(
        id=u.id,
        unit_type=u.unit_type,
        district=u.district,
        home_station=u.home_station,
        lat=u.location.lat,
        lon=u.location.lon,
        callsign=u.callsign,
        capabilities=tuple(u.capabilities),
        exercise=u.exercise,
        status=UnitStatus(u.status),
    )


def _only_exercise(principal: Principal, exercise: bool, what: str) -> None:
    """A drill runner without another dispatch role acts on exercise units and incidents only."""
    if exercise or principal.roles.intersection({Role.DISPATCHER, Role.COMMANDER}):
        return
    raise Forbidden(f"a drill runner acts on exercise {what} only")


def _dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


@units_api.post("/units", status_code=201, summary="Register a unit")
async def register_unit(request: Request, body: UnitIn, principal: Principal = requires(*DISPATCH_ROLES)) -> Response:
    _only_exercise(principal, body.exercise, "units")
    (row,) = await _dispatcher(request).register_units([_spec(body)], principal.subject)
    return json_response(unit_view(row), status=201)


@units_api.post("/units:batch", status_code=201, summary="Register up to 1,000 units at once (all or none)")
async def register_units(
    request: Request, body: UnitBatch, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    for u in body.units:
        _only_exercise(principal, u.exercise, "units")
    rows = await _dispatcher(request).register_units([_spec(u) for u in body.units], principal.subject)
    return json_response({"items": [unit_view(r) for r in rows]}, status=201)


@units_api.get("/units", summary="List units, filtered, by id")
async def list_units(
    request: Request,
    principal: Principal = requires(*READERS),
    status: Annotated[list[UnitStatus] | None, Query()] = None,
    unit_type: Annotated[list[UnitType] | None, Query()] = None,
    agency: Annotated[list[str] | None, Query()] = None,
    district: Annotated[list[str] | None, Query()] = None,
    exercise: bool | None = None,
    incident_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    u = store.units.c
    q = select(store.units)
    if status:
        q = q.where(u.status.in_([s.value for s in status]))
    if unit_type:
        q = q.where(u.unit_type.in_([t.value for t in unit_type]))
    if agency:
        q = q.where(u.agency.in_(agency))
    if district:
        q = q.where(u.district.in_(district))
    if exercise is not None:
        q = q.where(u.exercise.is_(exercise))
    if incident_id:
        q = q.where(u.incident_id == incident_id)
    if cursor:
        q = q.where(u.id > cursor)
    async with request.app.state.db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(u.id).limit(limit + 1))).all()
    page = rows[:limit]
    return json_response(
        {"items": [unit_view(r) for r in page], "next_cursor": page[-1].id if len(rows) > limit else None}
    )


@units_api.get("/units/{unit_id}", summary="One unit")
async def get_unit(request: Request, unit_id: str, principal: Principal = requires(*READERS)) -> Response:
    return json_response(unit_view(await _dispatcher(request).get_unit(unit_id)))


async def _unit_for(request: Request, principal: Principal, unit_id: str) -> Any:
    row = await _dispatcher(request).get_unit(unit_id)
    # A live unit lent to a drill reports its status in the drill too.
    _only_exercise(principal, row.exercise or row.lent_to_drill is not None, "units")
    return row


@units_api.patch("/units/{unit_id}", summary="Change a unit's callsign, capabilities, station or district")
async def update_unit(
    request: Request, unit_id: str, body: UnitChange, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    row = await _dispatcher(request).get_unit(unit_id)
    _only_exercise(principal, row.exercise, "units")
    changes = body.model_dump(exclude={"version"}, exclude_none=True)
    if not changes:
        raise InvalidInput("nothing to change", field="body")
    row = await _dispatcher(request).update_unit(unit_id, body.version, changes, principal.subject)
    return json_response(unit_view(row))


@units_api.delete("/units/{unit_id}", status_code=204, summary="Remove an available or out-of-service unit")
async def remove_unit(request: Request, unit_id: str, principal: Principal = requires(*DISPATCH_ROLES)) -> Response:
    row = await _dispatcher(request).get_unit(unit_id)
    _only_exercise(principal, row.exercise, "units")
    await _dispatcher(request).remove_unit(unit_id, principal.subject)
    return Response(status_code=204)


@units_api.post(
    "/units/{unit_id}/status",
    summary="Report a unit's status (en route, on scene, returning, available, out of service)",
    responses={409: {"description": "illegal status change, with the legal next statuses"}},
)
async def change_status(
    request: Request, unit_id: str, body: StatusChange, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _unit_for(request, principal, unit_id)
    row = await _dispatcher(request).change_status(unit_id, body.status, principal.subject, body.version)
    return json_response(unit_view(row))


@units_api.put("/units/{unit_id}/location", summary="Set a unit's position (the feed is vehicle.location.<id>)")
async def set_location(
    request: Request, unit_id: str, body: LocationChange, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _unit_for(request, principal, unit_id)
    row = await _dispatcher(request).move_unit(unit_id, body.lat, body.lon, body.at)
    return json_response(unit_view(row))


@units_api.put("/units/{unit_id}/lend", summary="Lend a live unit to a drill", tags=["exercise"])
async def lend(request: Request, unit_id: str, body: Lend, principal: Principal = requires(*LEND_ROLES)) -> Response:
    return json_response(unit_view(await _dispatcher(request).lend(unit_id, body.drill, principal.subject)))


@units_api.delete(
    "/units/{unit_id}/lend",
    summary="Take a lent unit back (its exercise assignment, if any, is released)",
    tags=["exercise"],
)
async def reclaim(request: Request, unit_id: str, principal: Principal = requires(*RECLAIM_ROLES)) -> Response:
    return json_response(unit_view(await _dispatcher(request).lend(unit_id, None, principal.subject)))


# --- plans -----------------------------------------------------------------------------------


def _plans(request: Request) -> PlanBook:
    return request.app.state.plans


@plans_api.get("/plans", summary="The active response plan of each category")
async def list_plans(request: Request, principal: Principal = requires(*READERS)) -> Response:
    plans = _plans(request)
    return json_response({"items": [{"category": c, "version": plans.active(c)[0]} for c in plans.categories()]})


@plans_api.get("/plans/{category}", summary="A category's active plan (or ?version=n), as JSON or YAML")
async def get_plan(
    request: Request,
    category: str,
    principal: Principal = requires(*READERS),
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    if "yaml" in request.headers.get("accept", ""):
        async with request.app.state.db.engine.connect() as conn:
            row = await store.get_plan(conn, category, version)
        if row is None:
            raise NotFound(f"no such plan for category {category!r}", category=category)
        return Response(row.body, media_type="application/yaml")
    return json_response(await _plans(request).document(category, version))


@plans_api.get("/plans/{category}/versions", summary="Every stored version of a category's plan")
async def plan_history(request: Request, category: str, principal: Principal = requires(*READERS)) -> Response:
    async with request.app.state.db.engine.connect() as conn:
        rows = await store.plan_versions(conn, category)
    return json_response(
        {
            "items": [
                {"version": r.version, "origin": r.origin, "actor": r.actor, "created_at": r.created_at} for r in rows
            ]
        }
    )


@plans_api.put(
    "/plans/{category}",
    summary="Publish a new version of a category's plan (YAML body, version = active + 1)",
    responses={
        422: {"description": "malformed plan: each bad field with its line; the active plan stays"},
        409: {"description": "the version is not the active one + 1"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/yaml": {"schema": {"type": "string"}}}}},
)
async def put_plan(request: Request, category: str, principal: Principal = requires(*PLAN_ROLES)) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in PLAN_TYPES:
        raise UnsupportedMediaType(f"send the plan as YAML ({', '.join(PLAN_TYPES[:3])})", field="Content-Type")
    raw = await request.body()
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the plan must be UTF-8 text", field="body") from None
    plan = await _plans(request).publish(category, body, principal.subject)
    return json_response(await _plans(request).document(category, plan.version))


# --- incidents, recommendations, assignments --------------------------------------------------


async def _incident_for(request: Request, principal: Principal, incident_id: str) -> Any:
    incident = await _dispatcher(request).get_incident(incident_id)
    _only_exercise(principal, incident.exercise, "incidents")
    return incident


@incidents_api.get("/incidents", summary="Incidents dispatch knows of, most recently changed first")
async def list_incidents(
    request: Request,
    principal: Principal = requires(*READERS),
    stage: Annotated[list[str] | None, Query()] = None,
    exercise: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Response:
    i = store.incidents.c
    q = select(store.incidents)
    if stage:
        q = q.where(i.stage.in_(stage))
    if exercise is not None:
        q = q.where(i.exercise.is_(exercise))
    if cursor:
        q = q.where(i.id < cursor)
    async with request.app.state.db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(i.id.desc()).limit(limit + 1))).all()
    page = rows[:limit]
    return json_response(
        {"items": [incident_summary(r) for r in page], "next_cursor": page[-1].id if len(rows) > limit else None}
    )


@incidents_api.get("/incidents/{incident_id}", summary="Who is coming and when: the incident's units and their ETAs")
async def incident_view(request: Request, incident_id: str, principal: Principal = requires(*READERS)) -> Response:
    dispatcher = _dispatcher(request)
    incident, held, history = await dispatcher.snapshot(incident_id)
    now = datetime.now(UTC)
    version, required = dispatcher.requirement(incident)
    held_by_type: dict[str, int] = {}
    units = []
    for a in held:
        held_by_type[a.unit_type] = held_by_type.get(a.unit_type, 0) + 1
        moving = a.status in (UnitStatus.ASSIGNED, UnitStatus.EN_ROUTE)
        eta = dispatcher.directory.eta_s(a, incident) if moving else 0.0
        units.append(
            {
                **assignment_view(a),
                "callsign": a.callsign,
                "status": a.status,
                "district": a.district,
                "location": {"lat": a.lat, "lon": a.lon, "at": a.location_at},
                "eta_now_s": round(eta, 1),
                "expected_at": now + timedelta(seconds=eta) if moving else a.arrived_at,
            }
        )
    units.sort(key=lambda u: (u["status"] == "on_scene", u["eta_now_s"]))
    missing = {str(t): n - held_by_type.get(str(t), 0) for t, n in required.items() if n > held_by_type.get(str(t), 0)}
    return json_response(
        {
            **incident_summary(incident),
            "plan": {"category": incident.category, "version": version, "level": incident.level},
            "required": _types(required),
            "held": dict(sorted(held_by_type.items())),
            "missing": missing,
            "on_scene": sum(1 for u in units if u["status"] == "on_scene"),
            "coming": sum(1 for u in units if u["status"] != "on_scene"),
            "units": units,
            "released": [assignment_view(a) for a in history if a.released_at is not None],
        }
    )


@incidents_api.get("/incidents/{incident_id}/recommendations", summary="Units to send, nearest by ETA, with reasons")
async def recommendations(
    request: Request,
    incident_id: str,
    principal: Principal = requires(*READERS),
    stage: Annotated[Literal[Stage.isolation, Stage.handling] | None, Query()] = None,
    unit_type: Annotated[UnitType | None, Query(description="recommend for this type instead of the plan")] = None,
    count: Annotated[int, Query(ge=1, le=200)] = 1,
) -> Response:
    requirement = {unit_type: count} if unit_type is not None else None
    found = await _dispatcher(request).recommend(incident_id, requirement, stage)
    result = found["result"]
    incident = found["incident"]
    return json_response(
        {
            "incident_id": incident.id,
            "stage": stage or incident.stage,
            "plan": {"category": incident.category, "version": found["plan_version"], "level": incident.level},
            "required": _types(found["required"]),
            "held": _types(found["held"]),
            "requirement": _types(found["requirement"]),
            "recommendations": [
                {
                    "unit_id": r.unit_id,
                    "unit_type": str(r.unit_type),
                    "eta_s": round(r.eta_s, 1),
                    "distance_m": round(r.distance_m, 1),
                    "district": r.district,
                    "reason": r.reason,
                    "strips_cover": r.strips_cover,
                    "borrowed": r.borrowed,
                }
                for r in result.recommendations
            ],
            "shortfalls": [
                {
                    "unit_type": str(s.unit_type),
                    "needed": s.needed,
                    "found": s.found,
                    "held_by_cover": list(s.held_by_cover),
                    "message": s.message,
                }
                for s in result.shortfalls
            ],
            "complete": result.complete,
        }
    )


@incidents_api.post(
    "/incidents/{incident_id}/assignments",
    status_code=201,
    summary="Assign chosen units (all or none); a unit not recommended needs a reason",
    responses={409: {"description": "a unit is busy: the answer names the incident it serves"}},
)
async def assign(
    request: Request, incident_id: str, body: AssignUnits, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _incident_for(request, principal, incident_id)
    outcome = await _dispatcher(request).assign(incident_id, body.unit_ids, principal.subject, body.reason)
    return json_response(outcome_view(outcome), status=201)


@incidents_api.post(
    "/incidents/{incident_id}/assignments:recommended",
    status_code=201,
    summary="Accept the recommendation: top the incident up to its plan",
)
async def accept(
    request: Request,
    incident_id: str,
    body: AcceptRecommendation | None = None,
    principal: Principal = requires(*DISPATCH_ROLES),
) -> Response:
    await _incident_for(request, principal, incident_id)
    stage = body.stage if body is not None else None
    outcome = await _dispatcher(request).assign_recommended(incident_id, principal.subject, stage)
    return json_response(outcome_view(outcome), status=201)


@incidents_api.get("/assignments/{assignment_id}", summary="One assignment")
async def get_assignment(request: Request, assignment_id: int, principal: Principal = requires(*READERS)) -> Response:
    async with request.app.state.db.engine.connect() as conn:
        row = await store.get_assignment(conn, assignment_id)
    if row is None:
        raise NotFound(f"assignment {assignment_id} not found", assignment_id=assignment_id)
    return json_response(assignment_view(row))


async def _assignment_incident(request: Request, principal: Principal, assignment_id: int) -> None:
    async with request.app.state.db.engine.connect() as conn:
        row = await store.get_assignment(conn, assignment_id)
    if row is not None:
        _only_exercise(principal, row.exercise, "incidents")


@incidents_api.post("/assignments/{assignment_id}/release", summary="Release the unit from the incident")
async def release(
    request: Request, assignment_id: int, body: Release, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _assignment_incident(request, principal, assignment_id)
    row = await _dispatcher(request).release(assignment_id, principal.subject, body.reason)
    return json_response(assignment_view(row))


@incidents_api.post(
    "/assignments/{assignment_id}/reassign",
    status_code=201,
    summary="Send an assigned or en-route unit to another incident",
)
async def reassign(
    request: Request, assignment_id: int, body: Reassign, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _assignment_incident(request, principal, assignment_id)
    await _incident_for(request, principal, body.incident_id)
    row = await _dispatcher(request).reassign(assignment_id, body.incident_id, principal.subject, body.reason)
    return json_response(assignment_view(row), status=201)


# --- exercise data -----------------------------------------------------------------------------


@incidents_api.get("/exercise", summary="What exercise data dispatch holds", tags=["exercise"])
async def exercise_data(request: Request, principal: Principal = requires(*READERS)) -> Response:
    i, a, u = store.incidents.c, store.assignments.c, store.units.c
    async with request.app.state.db.engine.connect() as conn:
        incidents = (await conn.execute(select(i.id).where(i.exercise.is_(True)).order_by(i.id))).scalars().all()
        active = (await conn.execute(select(a.id).where(a.exercise.is_(True), a.released_at.is_(None)))).scalars().all()
        units = (await conn.execute(select(u.id).where(u.exercise.is_(True)).order_by(u.id))).scalars().all()
        lent = (await conn.execute(select(u.id).where(u.lent_to_drill.is_not(None)).order_by(u.id))).scalars().all()
    return json_response(
        {
            "incidents": list(incidents),
            "active_assignments": len(active),
            "units": list(units),
            "lent_units": list(lent),
        }
    )


@incidents_api.delete(
    "/exercise",
    summary="Purge exercise incidents and assignments (and exercise units with ?units=true); live data untouched",
    tags=["exercise"],
)
async def purge_exercise(
    request: Request, principal: Principal = requires(Role.DRILL_RUNNER), units: bool = False
) -> Response:
    return json_response(await _dispatcher(request).purge_exercise(principal.subject, units))
