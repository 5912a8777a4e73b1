"""HTTP in, a command to a handler, the response out: the gateway contract v1 and the operator API."""

from __future__ import annotations

import base64
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import and_, delete, or_, select

from ecs.auth import Principal, Role
from ecs.contracts import (
    ALARM_ID_PATTERN,
    MAX_ALARM_BYTES,
    MAX_BATCH,
    AlarmReceipt,
    BatchItemError,
    BatchItemResult,
    BatchReceipt,
    CategoryName,
    GatewayAlarm,
    StageName,
)
from ecs.errors import Forbidden, InvalidInput, PayloadTooLarge, Transient, UnsupportedMediaType
from ecs.web import field_path, json_response, problem, requires

from . import domain, store
from .domain import Level, Perimeter, Stage
from .handlers import guard_facts, to_incoming

gateway = APIRouter(tags=["110 gateway v1"])
operator = APIRouter(prefix="/v1", tags=["incidents"])

READERS = (
    Role.DISPATCHER,
    Role.COMMANDER,
    Role.AUDITOR,
    Role.INFORMATION_OFFICER,
    Role.DRILL_RUNNER,
    Role.SUPPLY_OFFICER,
    Role.SHELTER_MANAGER,
)
DISPATCH_ROLES = (Role.DISPATCHER, Role.COMMANDER, Role.DRILL_RUNNER)
COMMAND_ROLES = (Role.COMMANDER, Role.DRILL_RUNNER)


# --- 110 gateway contract v1 -----------------------------------------------------------------


def _check_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json", field="Content-Type")


async def _signed_body(request: Request, limit: int) -> tuple[str, bytes]:
    _check_json(request)
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is {len(body)} bytes; at most {limit} are accepted")
    h = request.headers
    gateway_id = request.app.state.gateways.verify(
        h.get("x-gateway-id"), h.get("x-timestamp"), h.get("x-signature"), body, time.time()
    )
    return gateway_id, body


def _receipt(result: Any) -> dict[str, Any]:
    return {
        "alarm_id": result.alarm_id,
        "incident_id": result.incident_id,
        "duplicate": result.duplicate,
        "correlated": result.correlated,
    }


def _alarm_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    return [{"field": prefix + field_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]


@gateway.post(
    "/v1/alarms",
    status_code=202,
    response_model=AlarmReceipt,
    summary="Push one alarm (signed)",
    responses={
        401: {"description": "unknown gateway, bad signature or timestamp outside the window"},
        413: {},
        415: {},
        422: {},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": GatewayAlarm.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    },
)
async def post_alarm(request: Request) -> Response:
    gateway_id, body = await _signed_body(request, MAX_ALARM_BYTES)
    try:
        alarm = GatewayAlarm.model_validate_json(body)
    except ValidationError as exc:
        return _invalid_alarm(exc)
    state = request.app.state
    try:
        result = await state.ingestor.submit(to_incoming(gateway_id, alarm, "http", state.settings.caller_pepper))
    except Transient as exc:
        return problem(503, "Try again", str(exc), code="unavailable", retry_after_s=1)
    return json_response(_receipt(result), status=202)


def _invalid_alarm(exc: ValidationError) -> Response:
    errors = _alarm_errors(exc)
    if (
        any(e["message"].startswith("Invalid JSON") for e in errors)
        or errors
        and errors[0]["field"] == "body"
        and "JSON" in errors[0]["message"]
    ):
        return problem(400, "Invalid JSON", errors[0]["message"], code="invalid_json")
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem(422, "Invalid alarm", detail, code="invalid_input", errors=errors)


@gateway.post(
    "/v1/alarms:batch",
    response_model=BatchReceipt,
    summary=f"Push up to {MAX_BATCH} alarms (signed), answered item by item",
)
async def post_alarm_batch(request: Request) -> Response:
    gateway_id, body = await _signed_body(request, MAX_BATCH * 8 * 1024)
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid JSON", str(exc), code="invalid_json")
    items = raw.get("alarms") if isinstance(raw, dict) else None
    if not isinstance(items, list) or set(raw) != {"alarms"}:
        return problem(
            422,
            "Invalid batch",
            'the body must be {"alarms": [ ... ]} and nothing else',
            code="invalid_input",
            field="alarms",
        )
    if not 1 <= len(items) <= MAX_BATCH:
        return problem(
            422,
            "Invalid batch",
            f"a batch holds 1 to {MAX_BATCH} alarms, not {len(items)}",
            code="invalid_input",
            field="alarms",
        )
    state = request.app.state
    results: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[tuple[int, Any]] = []
    for i, item in enumerate(items):
        alarm_id = item.get("alarm_id") if isinstance(item, dict) else None
        try:
            if len(orjson.dumps(item)) > MAX_ALARM_BYTES:
                raise InvalidInput(f"alarm {i} is larger than {MAX_ALARM_BYTES} bytes")
            alarm = GatewayAlarm.model_validate(item)
        except ValidationError as exc:
            errors = _alarm_errors(exc, f"alarms.{i}.")
            detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
            results[i] = BatchItemResult(
                index=i,
                status=422,
                error=BatchItemError(
                    index=i,
                    alarm_id=str(alarm_id)[:64] if alarm_id else None,
                    status=422,
                    title="Invalid alarm",
                    detail=detail,
                    errors=errors,
                ),
            ).model_dump(mode="json")
            continue
        except InvalidInput as exc:
            results[i] = BatchItemResult(
                index=i,
                status=413,
                error=BatchItemError(index=i, status=413, title="Alarm too large", detail=exc.detail),
            ).model_dump(mode="json")
            continue
        valid.append((i, to_incoming(gateway_id, alarm, "http", state.settings.caller_pepper)))
    if valid:
        try:
            receipts = await state.ingestor.submit_many([v for _, v in valid])
        except Transient as exc:
            return problem(503, "Try again", str(exc), code="unavailable", retry_after_s=1)
        for (i, _), r in zip(valid, receipts, strict=True):
            results[i] = {"index": i, "status": 202, "receipt": _receipt(r), "error": None}
    accepted = len(valid)
    return json_response({"accepted": accepted, "rejected": len(items) - accepted, "results": results})


# --- operator API ----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Versioned(_Body):
    version: int = Field(ge=1, description="the incident version you saw; a changed incident answers 409")


class StageChange(Versioned):
    stage: StageName
    reason: str | None = Field(default=None, max_length=2000)


class LevelChange(Versioned):
    level: Literal[1, 2, 3, 4] = Field(description="1 = I (red) .. 4 = IV (blue)")
    reason: str = Field(min_length=1, max_length=2000)


class CirclePerimeter(_Body):
    kind: Literal["circle"]
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    radius_m: float = Field(gt=0, le=domain.MAX_RADIUS_M, allow_inf_nan=False)


class PolygonPerimeter(_Body):
    kind: Literal["polygon"]
    points: list[tuple[float, float]] = Field(min_length=3, max_length=500, description="[lat, lon] pairs")


class PerimeterChange(Versioned):
    perimeter: Annotated[CirclePerimeter | PolygonPerimeter, Field(discriminator="kind")]


class FactChange(Versioned):
    fact: Literal["hazard_under_control", "after_action_report"]
    note: str = Field(default="", max_length=20000)


class Merge(Versioned):
    source_incident_id: str = Field(min_length=1, max_length=32)
    source_version: int = Field(ge=1)


class AlarmRef(_Body):
    gateway_id: str = Field(min_length=1, max_length=64)
    alarm_id: str = Field(pattern=ALARM_ID_PATTERN)


class Split(Versioned):
    alarms: list[AlarmRef] = Field(min_length=1, max_length=10000)


class Cancel(Versioned):
    reason: str = Field(min_length=1, max_length=2000)


def incident_view(row: Any, settings: Any) -> dict[str, Any]:
    level = Level(row.level)
    stage = Stage(row.stage)
    facts = guard_facts(row)
    next_steps = []
    for (source, trigger), target in domain.TRANSITIONS.items():
        if source != stage:
            continue
        missing = domain.check_guard(
            stage, trigger, facts, settings.required_participants, domain.DISPATCH in settings.required_participants
        )
        next_steps.append({"stage": str(target), "allowed": not missing, "missing": missing})
    return {
        "id": row.id,
        "category": row.category,
        "stage": row.stage,
        "level": int(level),
        "level_name": level.name,
        "level_colour": level.colour,
        "exercise": row.exercise,
        "location": {"lat": row.lat, "lon": row.lon},
        "first_alarm_at": row.first_alarm_at,
        "last_alarm_at": row.last_alarm_at,
        "alarm_count": row.alarm_count,
        "caller_count": row.caller_count,
        "casualties": row.casualties,
        "verified": row.verified,
        "perimeter": row.perimeter,
        "facts": row.facts or {},
        "merged_into": row.merged_into,
        "split_from": row.split_from,
        "version": row.version,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "next": next_steps,
    }


def alarm_view(r: Any) -> dict[str, Any]:
    return {
        "gateway_id": r.gateway_id,
        "alarm_id": r.alarm_id,
        "incident_id": r.incident_id,
        "original_incident_id": r.original_incident_id,
        "category": r.category,
        "location": {
            "lat": r.lat,
            "lon": r.lon,
            "reported_lat": r.reported_lat,
            "reported_lon": r.reported_lon,
            "crs": r.crs,
            "accuracy_m": r.accuracy_m,
            "address": r.address,
        },
        "received_at": r.received_at,
        "ingested_at": r.ingested_at,
        "caller": {"number": r.caller_number, "name": r.caller_name} if r.caller_number else None,
        "description": r.description,
        "casualties": r.casualties,
        "exercise": r.exercise,
        "via": r.via,
    }


def _cursor_encode(*parts: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode()


def _cursor_decode(cursor: str, *types: type) -> list[Any]:
    """The parts of a cursor this API gave out, each of the expected type, else 422."""
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except Exception:
        parts = None
    if (
        not isinstance(parts, list)
        or len(parts) != len(types)
        or not all(isinstance(p, t) for p, t in zip(parts, types, strict=True))
    ):
        raise InvalidInput("cursor is not one this API gave out", field="cursor")
    return parts


async def _authorize(request: Request, principal: Principal, incident_id: str, roles: tuple[Role, ...]) -> None:
    """A drill runner may act like a dispatcher or commander, but on exercise incidents only."""
    strict = tuple(r for r in roles if r is not Role.DRILL_RUNNER)
    if principal.roles.intersection(strict):
        return
    if Role.DRILL_RUNNER in principal.roles:
        row = await request.app.state.commands.get(incident_id)
        if row.exercise:
            return
        raise Forbidden("a drill runner acts on exercise incidents only")
    principal.require(*strict)


@operator.get("/incidents", summary="List incidents")
async def list_incidents(
    request: Request,
    principal: Principal = requires(*READERS),
    stage: Annotated[list[StageName] | None, Query()] = None,
    level: Annotated[list[Annotated[int, Field(ge=1, le=4)]] | None, Query(description="1 (I) .. 4 (IV)")] = None,
    category: Annotated[list[CategoryName] | None, Query()] = None,
    exercise: bool | None = None,
    bbox: Annotated[str | None, Query(description="min_lat,min_lon,max_lat,max_lon")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    include_merged: bool = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Response:
    t = store.incidents
    q = select(t)
    if stage:
        q = q.where(t.c.stage.in_(stage))
    if level:
        q = q.where(t.c.level.in_(level))
    if category:
        q = q.where(t.c.category.in_(category))
    if exercise is not None:
        q = q.where(t.c.exercise == exercise)
    if not include_merged:
        q = q.where(t.c.merged_into.is_(None))
    if bbox:
        try:
            min_lat, min_lon, max_lat, max_lon = (float(v) for v in bbox.split(","))
        except ValueError:
            raise InvalidInput("bbox must be min_lat,min_lon,max_lat,max_lon", field="bbox") from None
        if not (-90 <= min_lat <= max_lat <= 90 and -180 <= min_lon <= max_lon <= 180):
            raise InvalidInput("bbox is out of range or inverted", field="bbox")
        q = q.where(t.c.lat.between(min_lat, max_lat), t.c.lon.between(min_lon, max_lon))
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name} needs a timezone offset", field=name)
    if since:
        q = q.where(t.c.first_alarm_at >= since)
    if until:
        q = q.where(t.c.first_alarm_at < until)
    if cursor:
        created, last_id = _cursor_decode(cursor, str, str)
        try:
            created_at = datetime.fromisoformat(created)
        except ValueError:
            raise InvalidInput("cursor is not one this API gave out", field="cursor") from None
        if created_at.tzinfo is None:
            raise InvalidInput("cursor is not one this API gave out", field="cursor")
        q = q.where(or_(t.c.created_at < created_at, and_(t.c.created_at == created_at, t.c.id < last_id)))
    q = q.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit + 1)
    async with request.app.state.db.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    page = rows[:limit]
    nxt = _cursor_encode(page[-1].created_at.isoformat(), page[-1].id) if len(rows) > limit else None
    settings = request.app.state.settings
    return json_response({"items": [incident_view(r, settings) for r in page], "next_cursor": nxt})


@operator.get("/incidents/{incident_id}", summary="One incident with its latest alarms and its timeline")
async def get_incident(
    request: Request,
    incident_id: str,
    principal: Principal = requires(*READERS),
    alarms_limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> Response:
    row = await request.app.state.commands.get(incident_id)
    a, tl = store.alarms, store.timeline
    async with request.app.state.db.engine.connect() as conn:
        alarm_rows = (
            await conn.execute(
                select(a).where(a.c.incident_id == incident_id).order_by(a.c.seq.desc()).limit(alarms_limit)
            )
        ).all()
        events = (await conn.execute(select(tl).where(tl.c.incident_id == incident_id).order_by(tl.c.seq))).all()
    view = incident_view(row, request.app.state.settings)
    view["alarms"] = [alarm_view(r) for r in alarm_rows]
    view["timeline"] = [{"at": e.at, "actor": e.actor, "kind": e.kind, "detail": e.detail} for e in events]
    return json_response(view)


@operator.get("/incidents/{incident_id}/alarms", summary="The incident's alarms, oldest first, paginated")
async def list_alarms(
    request: Request,
    incident_id: str,
    principal: Principal = requires(*READERS),
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    cursor: str | None = None,
) -> Response:
    await request.app.state.commands.get(incident_id)
    a = store.alarms
    q = select(a).where(a.c.incident_id == incident_id)
    if cursor:
        (after,) = _cursor_decode(cursor, int)
        q = q.where(a.c.seq > after)
    async with request.app.state.db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(a.c.seq).limit(limit + 1))).all()
    page = rows[:limit]
    return json_response(
        {
            "items": [alarm_view(r) for r in page],
            "next_cursor": _cursor_encode(page[-1].seq) if len(rows) > limit else None,
        }
    )


def _view(request: Request, row: Any) -> Response:
    return json_response(incident_view(row, request.app.state.settings))


@operator.post("/incidents/{incident_id}/verify", summary="Verify the incident (dispatcher)")
async def verify(
    request: Request, incident_id: str, body: Versioned, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, DISPATCH_ROLES)
    return _view(request, await request.app.state.commands.verify(incident_id, body.version, principal.subject))


@operator.put("/incidents/{incident_id}/perimeter", summary="Set the perimeter: a circle or a polygon")
async def set_perimeter(
    request: Request, incident_id: str, body: PerimeterChange, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, DISPATCH_ROLES)
    p = body.perimeter
    try:
        shape = (
            Perimeter.circle(p.lat, p.lon, p.radius_m)
            if isinstance(p, CirclePerimeter)
            else Perimeter.polygon(p.points)
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), field="perimeter") from None
    return _view(
        request, await request.app.state.commands.set_perimeter(incident_id, body.version, shape, principal.subject)
    )


@operator.post("/incidents/{incident_id}/stage", summary="Move the incident to another stage (guarded)")
async def change_stage(
    request: Request, incident_id: str, body: StageChange, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    target = Stage(body.stage)
    # Dispatchers start isolation and cancel false alarms; every later step is a commander's call.
    roles = DISPATCH_ROLES if target in (Stage.isolation, Stage.cancelled) else COMMAND_ROLES
    await _authorize(request, principal, incident_id, roles)
    return _view(
        request,
        await request.app.state.commands.change_stage(
            incident_id, body.version, target, principal.subject, body.reason
        ),
    )


@operator.post("/incidents/{incident_id}/cancel", summary="Cancel a false alarm (from reported or isolation)")
async def cancel(
    request: Request, incident_id: str, body: Cancel, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, DISPATCH_ROLES)
    return _view(
        request,
        await request.app.state.commands.change_stage(
            incident_id, body.version, Stage.cancelled, principal.subject, body.reason
        ),
    )


@operator.post("/incidents/{incident_id}/level", summary="Raise or lower the level (commander)")
async def change_level(
    request: Request, incident_id: str, body: LevelChange, principal: Principal = requires(*COMMAND_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, COMMAND_ROLES)
    return _view(
        request,
        await request.app.state.commands.change_level(
            incident_id, body.version, Level(body.level), principal.subject, body.reason
        ),
    )


@operator.post(
    "/incidents/{incident_id}/facts", summary="Record a commander's fact: hazard under control, after-action report"
)
async def record_fact(
    request: Request, incident_id: str, body: FactChange, principal: Principal = requires(*COMMAND_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, COMMAND_ROLES)
    return _view(
        request,
        await request.app.state.commands.record_fact(
            incident_id, body.version, body.fact, principal.subject, body.note
        ),
    )


@operator.post("/incidents/{incident_id}/merge", summary="Merge another incident into this one")
async def merge(
    request: Request, incident_id: str, body: Merge, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, DISPATCH_ROLES)
    row = await request.app.state.commands.merge(
        incident_id, body.version, body.source_incident_id, body.source_version, principal.subject
    )
    return _view(request, row)


@operator.post("/incidents/{incident_id}/split", summary="Split alarms out into a new incident")
async def split(
    request: Request, incident_id: str, body: Split, principal: Principal = requires(*DISPATCH_ROLES)
) -> Response:
    await _authorize(request, principal, incident_id, DISPATCH_ROLES)
    refs = [(r.gateway_id, r.alarm_id) for r in body.alarms]
    old, new = await request.app.state.commands.split(incident_id, body.version, refs, principal.subject)
    settings = request.app.state.settings
    return json_response(
        {"incident": incident_view(old, settings), "new_incident": incident_view(new, settings)}, status=201
    )


@operator.delete(
    "/exercise/incidents",
    summary="Purge every exercise incident and its alarms (live data untouched)",
    tags=["exercise"],
)
async def purge_exercise(request: Request, principal: Principal = requires(Role.DRILL_RUNNER)) -> Response:
    t, a, c, tl = store.incidents, store.alarms, store.incident_callers, store.timeline
    async with request.app.state.db.uow() as uow:
        await store.tick(uow.conn, new_epoch=True)  # every replica drops its cache of open incidents
        ids = select(t.c.id).where(t.c.exercise.is_(True)).scalar_subquery()
        await uow.conn.execute(delete(c).where(c.c.incident_id.in_(ids)))
        await uow.conn.execute(delete(tl).where(tl.c.incident_id.in_(ids)))
        alarms_gone = (await uow.conn.execute(delete(a).where(a.c.exercise.is_(True)))).rowcount
        incidents_gone = (await uow.conn.execute(delete(t).where(t.c.exercise.is_(True)))).rowcount
        await uow.commit()
    return json_response({"incidents_purged": incidents_gone, "alarms_purged": alarms_gone})
