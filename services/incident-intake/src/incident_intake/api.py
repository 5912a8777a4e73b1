"""HTTP in, a command to a handler (or a question to a view), the answer out: the 110 gateway
contract v1 and the operator API. Every operator answer is a declared response model."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field, ValidationError

from ecs.auth import COMMANDERS, OPERATORS, READERS, Principal, Role
from ecs.bodies import RequestBody
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
from ecs.envelope import field_path
from ecs.errors import AppError, InvalidInput, PayloadTooLarge, Transient, UnsupportedMediaType
from ecs.privacy import disclose
from ecs.web import json_response, problem, requires

from . import views
from .commands import (
    ChangeLevel,
    ChangeStage,
    MergeIncident,
    PurgeExercise,
    RecordFact,
    ReportAlarms,
    SetPerimeter,
    SplitAlarms,
    Verify,
)
from .correlation import IngestResult
from .domain import CommanderFact, Level, Perimeter, Stage
from .gateways import GatewayRegistry
from .handlers import Context, handle
from .views import (
    AlarmPage,
    CirclePerimeter,
    IncidentDetail,
    IncidentFilter,
    IncidentPage,
    IncidentView,
    PerimeterShape,
    PurgeView,
    RefusalPage,
    SplitView,
)

gateway = APIRouter(tags=["110 gateway v1"])
operator = APIRouter(prefix="/v1", tags=["incidents"])


# --- what routes depend on -------------------------------------------------------------------


async def context(request: Request) -> Context:
    """The handlers' context, built at start-up (async: FastAPI runs a plain ``def`` dependency
    in its thread pool, a thread hop a request)."""
    return request.app.state.context


async def gateway_registry(request: Request) -> GatewayRegistry:
    """The gateways this intake accepts."""
    return request.app.state.gateways


Ctx = Annotated[Context, Depends(context)]
Gateways = Annotated[GatewayRegistry, Depends(gateway_registry)]


# --- 110 gateway contract v1 -----------------------------------------------------------------


def _check_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    media, _, params = ctype.partition(";")
    if media.strip().lower() != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json", field="Content-Type")
    # JSON is UTF-8 (RFC 8259 §8.1): a body said to be in another charset would be read wrongly.
    charset = next(
        (v for k, _, v in (p.partition("=") for p in params.split(";")) if k.strip().lower() == "charset"), None
    )
    if charset is not None and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("Content-Type's charset must be utf-8 (RFC 8259)", field="Content-Type")


async def _signed_body(request: Request, registry: GatewayRegistry, limit: int) -> tuple[str, bytes]:
    _check_json(request)
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"the body is {len(body)} bytes; at most {limit} are accepted")
    h = request.headers
    gateway_id = registry.verify(h.get("x-gateway-id"), h.get("x-timestamp"), h.get("x-signature"), body, time.time())
    return gateway_id, body


def _receipt(result: IngestResult) -> dict[str, Any]:
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
        409: {"description": "the alarm_id was already used for a different alarm"},
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
async def post_alarm(request: Request, registry: Gateways, ctx: Ctx) -> Response:
    """One signed alarm (contract v1, DESIGN §7): 202 with its receipt, 4xx naming what is wrong,
    503 only when intake cannot take it now."""
    gateway_id, body = await _signed_body(request, registry, MAX_ALARM_BYTES)
    try:
        alarm = GatewayAlarm.model_validate_json(body)
    except ValidationError as exc:
        return _invalid_alarm(exc)
    try:
        (result,) = await handle(ReportAlarms([(gateway_id, alarm)], "http"), ctx)
    except Transient as exc:
        return problem(503, "Try again", str(exc), code="unavailable", retry_after_s=1)
    if isinstance(result, AppError):
        raise result
    # Written by hand: the receipt is the gateway path's whole answer, and this path is hot.
    return json_response(_receipt(result), status=202)


def _invalid_alarm(exc: ValidationError) -> Response:
    errors = _alarm_errors(exc)
    if (
        any(e["message"].startswith("Invalid JSON") for e in errors)
        or errors
        and errors[0]["field"] == "body"
        and "JSON" in errors[0]["message"]
    ):
        return problem(400, "Invalid JSON", errors[0]["message"], code="invalid_json", field="body")
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem(422, "Invalid alarm", detail, code="invalid_input", errors=errors)


@gateway.post(
    "/v1/alarms:batch",
    response_model=BatchReceipt,
    summary=f"Push up to {MAX_BATCH} alarms (signed), answered item by item",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["alarms"],
                        "additionalProperties": False,
                        "properties": {
                            "alarms": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": MAX_BATCH,
                                "items": GatewayAlarm.model_json_schema(ref_template="#/components/schemas/{model}"),
                            }
                        },
                    }
                }
            },
        }
    },
)
async def post_alarm_batch(request: Request, registry: Gateways, ctx: Ctx) -> Response:
    """Up to 500 signed alarms, answered item by item: a bad item is refused on its own."""
    gateway_id, body = await _signed_body(request, registry, MAX_BATCH * 8 * 1024)
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return problem(400, "Invalid JSON", str(exc), code="invalid_json", field="body")
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
    results: list[dict[str, Any] | None] = [None] * len(items)
    valid: list[tuple[int, GatewayAlarm]] = []
    for i, item in enumerate(items):
        parsed = _batch_item(i, item)
        if isinstance(parsed, GatewayAlarm):
            valid.append((i, parsed))
        else:
            results[i] = parsed
    if valid:
        try:
            receipts = await handle(ReportAlarms([(gateway_id, a) for _, a in valid], "http"), ctx)
        except Transient as exc:
            return problem(503, "Try again", str(exc), code="unavailable", retry_after_s=1)
        for (i, alarm), r in zip(valid, receipts, strict=True):
            if isinstance(r, AppError):
                results[i] = _refused_item(i, alarm.alarm_id, r)
            else:
                results[i] = {"index": i, "status": 202, "receipt": _receipt(r), "error": None}
    accepted = sum(1 for r in results if r is not None and r["status"] == 202)
    return json_response({"accepted": accepted, "rejected": len(items) - accepted, "results": results})


def _batch_item(i: int, item: Any) -> GatewayAlarm | dict[str, Any]:
    """Batch item ``i`` as an alarm, or its refusal: 413 over MAX_ALARM_BYTES, 422 naming each
    field (``alarms.<i>.<field>``), or 422 ``alarms.<i>`` for one nested deeper than orjson writes
    (255 levels), which no alarm is."""
    alarm_id = item.get("alarm_id") if isinstance(item, dict) else None
    try:
        size = len(orjson.dumps(item))
    except orjson.JSONEncodeError:
        return _invalid_item(i, alarm_id, [{"field": f"alarms.{i}", "message": "nested too deeply to be an alarm"}])
    if size > MAX_ALARM_BYTES:
        detail = f"alarm {i} is larger than {MAX_ALARM_BYTES} bytes"
        error = BatchItemError(index=i, status=413, title="Alarm too large", detail=detail)
        return BatchItemResult(index=i, status=413, error=error).model_dump(mode="json")
    try:
        return GatewayAlarm.model_validate(item)
    except ValidationError as exc:
        return _invalid_item(i, alarm_id, _alarm_errors(exc, f"alarms.{i}."))


def _invalid_item(i: int, alarm_id: Any, errors: list[dict[str, str]]) -> dict[str, Any]:
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    error = BatchItemError(
        index=i,
        alarm_id=str(alarm_id)[:64] if alarm_id else None,
        status=422,
        title="Invalid alarm",
        detail=detail,
        errors=errors,
    )
    return BatchItemResult(index=i, status=422, error=error).model_dump(mode="json")


def _refused_item(i: int, alarm_id: str, exc: AppError) -> dict[str, Any]:
    field = f"alarms.{i}.{exc.extra['field']}" if exc.extra.get("field") else f"alarms.{i}"
    error = BatchItemError(
        index=i,
        alarm_id=alarm_id,
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        errors=[{"field": field, "message": exc.detail}],
    )
    return BatchItemResult(index=i, status=exc.status, error=error).model_dump(mode="json")


# --- operator API ----------------------------------------------------------------------------


class _Body(RequestBody):
    """Every request body of this service (ecs.bodies.RequestBody: no unknown field, no U+0000, no
    true or false for a number)."""


class Versioned(_Body):
    """A change to an incident, made on the version the operator saw."""

    version: int = Field(ge=1, le=2**31 - 1, description="the incident version you saw; a changed incident answers 409")


class StageChange(Versioned):
    """Move to a stage; the lifecycle's guard decides."""

    stage: StageName
    reason: str | None = Field(default=None, max_length=2000)


class LevelChange(Versioned):
    """Raise or lower the level, with the reason."""

    level: Literal[1, 2, 3, 4] = Field(description="1 = I (red) .. 4 = IV (blue)")
    reason: str = Field(min_length=1, max_length=2000)


class PerimeterChange(Versioned):
    """Set the cordon: a circle or a polygon."""

    perimeter: PerimeterShape


class FactChange(Versioned):
    """Record a commander's fact, with an optional note."""

    fact: CommanderFact
    note: str = Field(default="", max_length=20000)


class Merge(Versioned):
    """Merge the source incident, seen at ``source_version``, into this one."""

    source_incident_id: str = Field(min_length=1, max_length=32)
    source_version: int = Field(ge=1, le=2**31 - 1)


class AlarmRef(_Body):
    """An alarm as its gateway names it."""

    gateway_id: str = Field(min_length=1, max_length=64)
    alarm_id: str = Field(pattern=ALARM_ID_PATTERN)


class Split(Versioned):
    """Move these alarms out into a new incident."""

    alarms: list[AlarmRef] = Field(min_length=1, max_length=10000)


class Cancel(Versioned):
    """Cancel a false alarm, with the reason."""

    reason: str = Field(min_length=1, max_length=2000)


async def _in_scope(principal: Principal, roles: tuple[Role, ...], incident_id: str, ctx: Context) -> None:
    """A drill runner acts like a dispatcher or commander, but on exercise incidents only
    (DESIGN §8): for a caller who holds nothing else of ``roles``, the incident is read first."""
    # For anyone else the incident's flag does not matter, so it is not read.
    drill_only = principal.is_drill_only(roles)
    exercise = (await views.incident_row(ctx.db, incident_id)).exercise if drill_only else False
    principal.require_scope(roles, exercise, "incidents")


def _in_utc_range(value: datetime) -> bool:
    try:
        value.astimezone(UTC)
    except OverflowError:
        return False
    return True


def _view(row: Any, ctx: Context) -> IncidentView:
    return views.incident_view(row, ctx.settings.required_participants)


@operator.get("/incidents", summary="List incidents")
async def list_incidents(
    ctx: Ctx,
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
) -> IncidentPage:
    """Incidents, newest first, filtered by stage, level, category, drill flag, area and first alarm time."""
    box = None
    if bbox:
        try:
            min_lat, min_lon, max_lat, max_lon = (float(v) for v in bbox.split(","))
        except ValueError:
            raise InvalidInput("bbox must be min_lat,min_lon,max_lat,max_lon", field="bbox") from None
        if not (-90 <= min_lat <= max_lat <= 90 and -180 <= min_lon <= max_lon <= 180):
            raise InvalidInput("bbox is out of range or inverted", field="bbox")
        box = (min_lat, min_lon, max_lat, max_lon)
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInput(f"{name} needs a timezone offset", field=name)
        if value is not None and not _in_utc_range(value):
            raise InvalidInput(f"{name} is outside the years 1 to 9999 in UTC", field=name)
    where = IncidentFilter(
        stages=stage or (),
        levels=level or (),
        categories=category or (),
        exercise=exercise,
        bbox=box,
        since=since,
        until=until,
        include_merged=include_merged,
    )
    return await views.incident_page(ctx.db, where, limit, cursor, ctx.settings.required_participants)


@operator.get("/incidents/{incident_id}", summary="One incident with its latest alarms and its timeline")
async def get_incident(
    incident_id: str,
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    alarms_limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> IncidentDetail:
    """One incident with its latest alarms and its whole timeline. Callers' numbers and names are
    whole for dispatchers and commanders, masked for every other role (ecs.privacy)."""
    detail = await views.incident_detail(ctx.db, incident_id, alarms_limit, ctx.settings.required_participants)
    return disclose(detail, principal, views.CallerView)


@operator.get("/incidents/{incident_id}/alarms", summary="The incident's alarms, oldest first, paginated")
async def list_alarms(
    incident_id: str,
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    cursor: str | None = None,
) -> AlarmPage:
    """The incident's alarms, oldest first, a page at a time; callers masked as in GET
    /v1/incidents/{incident_id}."""
    return disclose(await views.alarm_page(ctx.db, incident_id, limit, cursor), principal, views.CallerView)


@operator.post("/incidents/{incident_id}/verify", summary="Verify the incident (dispatcher)")
async def verify(
    incident_id: str, body: Versioned, ctx: Ctx, principal: Principal = requires(*OPERATORS)
) -> IncidentView:
    """A dispatcher confirms the incident is real."""
    await _in_scope(principal, OPERATORS, incident_id, ctx)
    return _view(await handle(Verify(incident_id, body.version, principal.subject), ctx), ctx)


@operator.put("/incidents/{incident_id}/perimeter", summary="Set the perimeter: a circle or a polygon")
async def set_perimeter(
    incident_id: str, body: PerimeterChange, ctx: Ctx, principal: Principal = requires(*OPERATORS)
) -> IncidentView:
    """Set the cordon; a bad shape is 422 naming ``perimeter``."""
    await _in_scope(principal, OPERATORS, incident_id, ctx)
    p = body.perimeter
    try:
        shape = (
            Perimeter.circle(p.lat, p.lon, p.radius_m)
            if isinstance(p, CirclePerimeter)
            else Perimeter.polygon(p.points)
        )
    except ValueError as exc:
        raise InvalidInput(str(exc), field="perimeter") from None
    return _view(await handle(SetPerimeter(incident_id, body.version, shape, principal.subject), ctx), ctx)


@operator.post("/incidents/{incident_id}/stage", summary="Move the incident to another stage (guarded)")
async def change_stage(
    incident_id: str, body: StageChange, ctx: Ctx, principal: Principal = requires(*OPERATORS)
) -> IncidentView:
    """Move through the lifecycle. Dispatchers start isolation and cancel; later steps are commanders'."""
    target = Stage(body.stage)
    # Dispatchers start isolation and cancel false alarms; every later step is a commander's call.
    roles = OPERATORS if target in (Stage.isolation, Stage.cancelled) else COMMANDERS
    await _in_scope(principal, roles, incident_id, ctx)
    command = ChangeStage(incident_id, body.version, target, principal.subject, body.reason)
    return _view(await handle(command, ctx), ctx)


@operator.post("/incidents/{incident_id}/cancel", summary="Cancel a false alarm (from reported or isolation)")
async def cancel(incident_id: str, body: Cancel, ctx: Ctx, principal: Principal = requires(*OPERATORS)) -> IncidentView:
    """Cancel a false alarm (only from reported or isolation)."""
    await _in_scope(principal, OPERATORS, incident_id, ctx)
    command = ChangeStage(incident_id, body.version, Stage.cancelled, principal.subject, body.reason)
    return _view(await handle(command, ctx), ctx)


@operator.post("/incidents/{incident_id}/level", summary="Raise or lower the level (commander)")
async def change_level(
    incident_id: str, body: LevelChange, ctx: Ctx, principal: Principal = requires(*COMMANDERS)
) -> IncidentView:
    """Raise or lower the level (a commander's judgement)."""
    await _in_scope(principal, COMMANDERS, incident_id, ctx)
    command = ChangeLevel(incident_id, body.version, Level(body.level), principal.subject, body.reason)
    return _view(await handle(command, ctx), ctx)


@operator.post(
    "/incidents/{incident_id}/facts", summary="Record a commander's fact: hazard under control, after-action report"
)
async def record_fact(
    incident_id: str, body: FactChange, ctx: Ctx, principal: Principal = requires(*COMMANDERS)
) -> IncidentView:
    """Record that the hazard is under control, or that the after-action report exists."""
    await _in_scope(principal, COMMANDERS, incident_id, ctx)
    command = RecordFact(incident_id, body.version, body.fact, principal.subject, body.note)
    return _view(await handle(command, ctx), ctx)


@operator.post("/incidents/{incident_id}/merge", summary="Merge another incident into this one")
async def merge(incident_id: str, body: Merge, ctx: Ctx, principal: Principal = requires(*OPERATORS)) -> IncidentView:
    """Merge another incident (and its alarms) into this one."""
    await _in_scope(principal, OPERATORS, incident_id, ctx)
    command = MergeIncident(incident_id, body.version, body.source_incident_id, body.source_version, principal.subject)
    return _view(await handle(command, ctx), ctx)


@operator.post("/incidents/{incident_id}/split", status_code=201, summary="Split alarms out into a new incident")
async def split(incident_id: str, body: Split, ctx: Ctx, principal: Principal = requires(*OPERATORS)) -> SplitView:
    """Split alarms out into a new incident; answers both incidents."""
    await _in_scope(principal, OPERATORS, incident_id, ctx)
    refs = [(r.gateway_id, r.alarm_id) for r in body.alarms]
    old, new = await handle(SplitAlarms(incident_id, body.version, refs, principal.subject), ctx)
    return SplitView(incident=_view(old, ctx), new_incident=_view(new, ctx))


@operator.get("/alarm-refusals", summary="Alarms refused after parsing, newest first", tags=["alarms"])
async def list_refusals(
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> RefusalPage:
    """Alarms refused after they were parsed (an alarm_id reused for a different alarm, input the
    database would not store), so an operator can follow them up with the gateway."""
    return await views.refusal_page(ctx.db, limit, cursor)


@operator.get(
    "/exercise",
    response_model=views.ExerciseView,
    summary="What exercise data incident-intake holds (counts; live data is never counted)",
    tags=["exercise"],
)
async def exercise_data(ctx: Ctx, principal: Principal = requires(*READERS)) -> views.ExerciseView:
    """Exercise incidents (all and still open) and their alarms."""
    return await views.exercise_data(ctx.db)


@operator.delete(
    "/exercise/incidents",
    summary="Purge every exercise incident and its alarms (live data untouched)",
    tags=["exercise"],
)
async def purge_exercise(ctx: Ctx, principal: Principal = requires(Role.DRILL_RUNNER)) -> PurgeView:
    """Delete every exercise incident with its alarms, callers and timeline; live data stays."""
    incidents, alarms = await handle(PurgeExercise(), ctx)
    return PurgeView(incidents_purged=incidents, alarms_purged=alarms)
