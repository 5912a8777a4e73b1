"""HTTP in, a command to its handler (or a query to views.py), the answer out: alerts and their
approval, statements, the release clocks, the rumor register, one incident's picture — and the
public CAP feed of live alerts (outside /v1, no token: it is what the public reads).

An information officer drafts and publishes; a commander approves (never their own draft);
every role reads; a drill runner acts on exercise incidents only (DESIGN §8).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, HttpUrl, ValidationInfo, field_validator

from ecs.auth import READERS, Principal, Role
from ecs.bodies import RequestBody
from ecs.envelope import utcnow
from ecs.errors import InvalidInput
from ecs.web import json_response, requires

from . import commands, views
from .context import Context
from .domain import AlertAction, AlertStatus, ChannelKind, MsgType, RumorAction, StatementAction, StatementKind
from .handlers import handle
from .views import (
    AlertAnswer,
    AlertPage,
    ChannelAnswer,
    ChannelList,
    ClockList,
    DeliveryList,
    ExerciseData,
    IncidentView,
    Purged,
    Queued,
    Registered,
    RumorAnswer,
    StatementAnswer,
    TargetsAnswer,
)

alerts_api = APIRouter(prefix="/v1", tags=["alerts"])
statements_api = APIRouter(prefix="/v1", tags=["statements and clocks"])
rumors_api = APIRouter(prefix="/v1", tags=["rumors"])
channels_api = APIRouter(prefix="/v1", tags=["channels and deliveries"])
public_api = APIRouter(prefix="/cap", tags=["public CAP feed"])

WRITERS = (Role.INFORMATION_OFFICER, Role.COMMANDER, Role.DRILL_RUNNER)
"""Draft, edit, submit, publish, withdraw; report and handle rumors."""
APPROVERS = (Role.COMMANDER, Role.DRILL_RUNNER)
"""Approve or reject an alert or a statement (a drill runner: exercise ones only)."""
CHANNEL_ROLES = (Role.COMMANDER, Role.DRILL_RUNNER)
"""Register a channel (a drill runner: exercise channels only)."""
PURGE_ROLES = (Role.DRILL_RUNNER,)
"""Purge exercise data."""

ID = r"^[A-Za-z0-9_-]{1,64}$"
CAP_XML = "application/cap+xml"


async def _context(request: Request) -> Context:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop a request.
    return request.app.state.notification


Ctx = Annotated[Context, Depends(_context)]


def _answer(model: BaseModel, status: int = 200) -> Response:
    return json_response(model.model_dump(mode="json"), status=status)


def _drill_only(principal: Principal, roles: tuple[Role, ...]) -> bool:
    principal.require(*roles)
    return principal.is_drill_only(roles)


# --- request bodies ----------------------------------------------------------------------------


class _Body(RequestBody):
    """Every request body of this service (ecs.bodies.RequestBody: no unknown field, no U+0000, no
    true or false for a number)."""


class CircleIn(_Body):
    """A circle: centre in WGS-84 degrees, radius in metres."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    radius_m: float = Field(gt=0, le=200_000, allow_inf_nan=False)


class AreaIn(_Body):
    """The alert's area: a circle or a closed polygon of 4–100 ``[lat, lon]`` points, or neither
    (a circle of the plan's evacuation radius around the incident); administrative geocodes
    such as ``{"GB/T 2260": "310101"}``."""

    description: str = Field(default="", max_length=500)
    circle: CircleIn | None = None
    polygon: list[list[float]] | None = Field(default=None, description="closed ring of [lat, lon] points")
    geocodes: dict[str, Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=dict, max_length=50)

    @field_validator("polygon")
    @classmethod
    def _one_shape(cls, polygon: list[list[float]] | None, info: ValidationInfo) -> list[list[float]] | None:
        # Both used to be taken and the circle silently dropped from the CAP area.
        if polygon is not None and info.data.get("circle") is not None:
            raise ValueError("give a circle or a polygon, not both")
        return polygon

    def spec(self) -> commands.AreaSpec:
        circle = (self.circle.lat, self.circle.lon, self.circle.radius_m) if self.circle else None
        return commands.AreaSpec(self.description, circle, self.polygon, self.geocodes)


Text = Annotated[str, Field(min_length=1, max_length=4000)]


def _not_past(expires: datetime | None) -> datetime | None:
    """An alert that expires before it is drafted would be published already expired (CAP 1.2
    ``expires``)."""
    if expires is not None and expires <= datetime.now(UTC):
        raise ValueError("must be in the future")
    return expires


Expires = Annotated[AwareDatetime | None, AfterValidator(_not_past)]


class AlertIn(_Body):
    """An alert to compose for the incident: from the plan's templates and the incident, with the
    values the incident does not know (``address``, ``shelter``...), or from the texts given."""

    msg_type: MsgType = MsgType.Alert
    references: str | None = Field(
        default=None, pattern=ID, description="the published alert an Update or Cancel changes"
    )
    area: AreaIn = Field(default_factory=AreaIn)
    values: dict[str, Annotated[str, Field(max_length=500)]] = Field(default_factory=dict, max_length=20)
    description_zh: Text | None = None
    description_en: Text | None = None
    instruction_zh: str = Field(default="", max_length=2000)
    instruction_en: str = Field(default="", max_length=2000)
    expires: Expires = None


class AlertChange(_Body):
    """A draft's fields to change; those left out stay."""

    version: int = Field(ge=1, le=2**31 - 1, description="the version you saw; a changed alert answers 409")
    area: AreaIn | None = None
    description_zh: Text | None = None
    description_en: Text | None = None
    instruction_zh: str | None = Field(default=None, max_length=2000)
    instruction_en: str | None = Field(default=None, max_length=2000)
    expires: Expires = None


class Seen(_Body):
    """The version of the alert, statement or rumor you saw."""

    version: int = Field(ge=1, le=2**31 - 1)


class StatementIn(_Body):
    """A statement to draft: from the plan's template for its kind, or from the texts given."""

    kind: StatementKind = StatementKind.information
    text_zh: Text | None = None
    text_en: Text | None = None
    values: dict[str, Annotated[str, Field(max_length=500)]] = Field(default_factory=dict, max_length=20)
    answers_rumors: list[Annotated[str, Field(pattern=ID)]] = Field(default_factory=list, max_length=50)


class RumorIn(_Body):
    """A rumor seen about the incident."""

    source: str = Field(min_length=1, max_length=255, description="where it was seen, e.g. a platform and account")
    text: Text
    link: HttpUrl | None = None
    first_seen: AwareDatetime
    reach: int | None = Field(default=None, ge=0, le=2_000_000_000, description="estimated people reached")


class RumorStep(Seen):
    """A step of a rumor; an answer names the published statement or alert that answered it."""

    statement_id: str | None = Field(default=None, pattern=ID)
    alert_id: str | None = Field(default=None, pattern=ID)


# --- alerts ------------------------------------------------------------------------------------


@alerts_api.post(
    "/incidents/{incident_id}/alerts", status_code=201, response_model=AlertAnswer, summary="Compose an alert"
)
async def draft_alert(ctx: Ctx, incident_id: str, body: AlertIn, principal: Principal = requires(*WRITERS)) -> Response:
    """422 naming a template variable the incident does not provide or a bad polygon; 409 for an
    Update or Cancel without a live alert to reference; 404 for an unknown incident."""
    cmd = commands.DraftAlert(
        incident_id,
        principal.subject,
        body.msg_type,
        body.references,
        body.area.spec(),
        body.values,
        body.description_zh,
        body.description_en,
        body.instruction_zh,
        body.instruction_en,
        body.expires,
        _drill_only(principal, WRITERS),
    )
    row = await handle(ctx, cmd)
    return _answer(await views.alert(ctx, row.id), status=201)


@alerts_api.get("/alerts", response_model=AlertPage, summary="List alerts, newest first")
async def list_alerts(
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    incident_id: str | None = None,
    status: Annotated[list[AlertStatus] | None, Query()] = None,
    exercise: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=ID, description="next_cursor of the previous page (422 for another form)")
    ] = None,
) -> Response:
    """Every filter given must match."""
    page = await views.alerts_page(
        ctx, incident_id=incident_id, status=status or (), exercise=exercise, limit=limit, cursor=cursor
    )
    return _answer(page)


@alerts_api.get("/alerts/{alert_id}", response_model=AlertAnswer, summary="One alert, with its CAP XML")
async def get_alert(ctx: Ctx, alert_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 if there is no such alert."""
    return _answer(await views.alert(ctx, alert_id))


@alerts_api.patch("/alerts/{alert_id}", response_model=AlertAnswer, summary="Edit a draft")
async def edit_alert(ctx: Ctx, alert_id: str, body: AlertChange, principal: Principal = requires(*WRITERS)) -> Response:
    """409 for anything but a draft (a published alert: issue an Update), or a stale version."""
    cmd = commands.EditAlert(
        alert_id,
        body.version,
        principal.subject,
        body.area.spec() if body.area is not None else None,
        body.description_zh,
        body.description_en,
        body.instruction_zh,
        body.instruction_en,
        body.expires,
        _drill_only(principal, WRITERS),
    )
    await handle(ctx, cmd)
    return _answer(await views.alert(ctx, alert_id))


async def _step_alert(
    ctx: Context, alert_id: str, action: AlertAction, seen: Seen, principal: Principal, roles: tuple[Role, ...]
) -> Response:
    await handle(
        ctx, commands.StepAlert(alert_id, action, seen.version, principal.subject, _drill_only(principal, roles))
    )
    return _answer(await views.alert(ctx, alert_id))


@alerts_api.post("/alerts/{alert_id}:submit", response_model=AlertAnswer, summary="Ask for approval")
async def submit_alert(ctx: Ctx, alert_id: str, body: Seen, principal: Principal = requires(*WRITERS)) -> Response:
    """422 with the path and reason when the document fails the CAP 1.2 schema."""
    return await _step_alert(ctx, alert_id, AlertAction.submit, body, principal, WRITERS)


@alerts_api.post("/alerts/{alert_id}:approve", response_model=AlertAnswer, summary="Approve (a second person)")
async def approve_alert(ctx: Ctx, alert_id: str, body: Seen, principal: Principal = requires(*APPROVERS)) -> Response:
    """403 for the alert's author; 422 when the document fails the CAP 1.2 schema."""
    return await _step_alert(ctx, alert_id, AlertAction.approve, body, principal, APPROVERS)


@alerts_api.post("/alerts/{alert_id}:reject", response_model=AlertAnswer, summary="Send back to the author")
async def reject_alert(ctx: Ctx, alert_id: str, body: Seen, principal: Principal = requires(*APPROVERS)) -> Response:
    """409 unless the alert is pending approval."""
    return await _step_alert(ctx, alert_id, AlertAction.reject, body, principal, APPROVERS)


@alerts_api.post("/alerts/{alert_id}:publish", response_model=AlertAnswer, summary="Publish an approved alert")
async def publish_alert(ctx: Ctx, alert_id: str, body: Seen, principal: Principal = requires(*WRITERS)) -> Response:
    """``sent`` is frozen now; an Update or Cancel ends the alert it references (409 if that one
    is no longer live)."""
    return await _step_alert(ctx, alert_id, AlertAction.publish, body, principal, WRITERS)


@alerts_api.post("/alerts/{alert_id}:withdraw", response_model=AlertAnswer, summary="Drop an unpublished alert")
async def withdraw_alert(ctx: Ctx, alert_id: str, body: Seen, principal: Principal = requires(*WRITERS)) -> Response:
    """409 for a published alert: cancel it with a Cancel instead."""
    return await _step_alert(ctx, alert_id, AlertAction.withdraw, body, principal, WRITERS)


# --- statements and clocks ---------------------------------------------------------------------


@statements_api.post(
    "/incidents/{incident_id}/statements",
    status_code=201,
    response_model=StatementAnswer,
    summary="Draft an official statement",
)
async def draft_statement(
    ctx: Ctx, incident_id: str, body: StatementIn, principal: Principal = requires(*WRITERS)
) -> Response:
    """422 naming a template variable the incident does not provide."""
    cmd = commands.DraftStatement(
        incident_id,
        body.kind,
        principal.subject,
        body.text_zh,
        body.text_en,
        body.values,
        body.answers_rumors,
        _drill_only(principal, WRITERS),
    )
    row = await handle(ctx, cmd)
    return _answer(views.statement_answer(row), status=201)


@statements_api.get("/statements/{statement_id}", response_model=StatementAnswer, summary="One statement")
async def get_statement(ctx: Ctx, statement_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 if there is no such statement."""
    return _answer(await views.statement(ctx.db, statement_id))


async def _step_statement(
    ctx: Context, statement_id: str, action: StatementAction, seen: Seen, principal: Principal, roles: tuple[Role, ...]
) -> Response:
    cmd = commands.StepStatement(statement_id, action, seen.version, principal.subject, _drill_only(principal, roles))
    return _answer(views.statement_answer(await handle(ctx, cmd)))


@statements_api.post("/statements/{statement_id}:submit", response_model=StatementAnswer, summary="Ask for approval")
async def submit_statement(
    ctx: Ctx, statement_id: str, body: Seen, principal: Principal = requires(*WRITERS)
) -> Response:
    """409 unless a draft."""
    return await _step_statement(ctx, statement_id, StatementAction.submit, body, principal, WRITERS)


@statements_api.post("/statements/{statement_id}:approve", response_model=StatementAnswer, summary="Approve")
async def approve_statement(
    ctx: Ctx, statement_id: str, body: Seen, principal: Principal = requires(*APPROVERS)
) -> Response:
    """403 for the statement's author."""
    return await _step_statement(ctx, statement_id, StatementAction.approve, body, principal, APPROVERS)


@statements_api.post("/statements/{statement_id}:reject", response_model=StatementAnswer, summary="Send back")
async def reject_statement(
    ctx: Ctx, statement_id: str, body: Seen, principal: Principal = requires(*APPROVERS)
) -> Response:
    """409 unless pending approval."""
    return await _step_statement(ctx, statement_id, StatementAction.reject, body, principal, APPROVERS)


@statements_api.post("/statements/{statement_id}:publish", response_model=StatementAnswer, summary="Publish")
async def publish_statement(
    ctx: Ctx, statement_id: str, body: Seen, principal: Principal = requires(*WRITERS)
) -> Response:
    """Meets the release clocks it answers and lets the incident move to aftermath."""
    return await _step_statement(ctx, statement_id, StatementAction.publish, body, principal, WRITERS)


@statements_api.post("/statements/{statement_id}:withdraw", response_model=StatementAnswer, summary="Withdraw")
async def withdraw_statement(
    ctx: Ctx, statement_id: str, body: Seen, principal: Principal = requires(*WRITERS)
) -> Response:
    """409 for a published statement."""
    return await _step_statement(ctx, statement_id, StatementAction.withdraw, body, principal, WRITERS)


@statements_api.get("/clocks", response_model=ClockList, summary="Release clocks, soonest due first")
async def list_clocks(
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    due_within_s: Annotated[
        float | None, Query(ge=0, le=7 * 24 * 3600, description="only unmet clocks due within this many seconds")
    ] = None,
    exercise: bool | None = None,
) -> Response:
    """``?due_within_s=3600`` lists the clocks about to be missed in the next hour (and those missed)."""
    return _answer(await views.clocks(ctx, utcnow(), due_within_s, exercise))


@statements_api.get("/incidents/{incident_id}", response_model=IncidentView, summary="One incident's picture")
async def get_incident(ctx: Ctx, incident_id: str, principal: Principal = requires(*READERS)) -> Response:
    """Alerts, statements, clocks, open rumors, and what keeps the incident unsettled."""
    return _answer(await views.incident_view(ctx, incident_id, utcnow()))


# --- rumors ------------------------------------------------------------------------------------


@rumors_api.post(
    "/incidents/{incident_id}/rumors", status_code=201, response_model=RumorAnswer, summary="Report a rumor"
)
async def report_rumor(
    ctx: Ctx, incident_id: str, body: RumorIn, principal: Principal = requires(*WRITERS)
) -> Response:
    """404 for an unknown incident."""
    cmd = commands.ReportRumor(
        incident_id,
        body.source,
        body.text,
        body.first_seen,
        principal.subject,
        str(body.link) if body.link is not None else None,
        body.reach,
        _drill_only(principal, WRITERS),
    )
    row = await handle(ctx, cmd)
    return _answer(await views.rumor(ctx.db, row.id), status=201)


@rumors_api.get("/rumors/{rumor_id}", response_model=RumorAnswer, summary="One rumor and its answers")
async def get_rumor(ctx: Ctx, rumor_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 if there is no such rumor."""
    return _answer(await views.rumor(ctx.db, rumor_id))


@rumors_api.post("/rumors/{rumor_id}:{action}", response_model=RumorAnswer, summary="Verify, answer or close a rumor")
async def step_rumor(
    ctx: Ctx, rumor_id: str, action: RumorAction, body: RumorStep, principal: Principal = requires(*WRITERS)
) -> Response:
    """``confirm``, ``refute``, ``mark_unverified``, ``answer`` (naming the published statement or
    alert) or ``close``; 409 for a step the rumor's status does not allow."""
    cmd = commands.StepRumor(
        rumor_id,
        action,
        body.version,
        principal.subject,
        body.statement_id,
        body.alert_id,
        _drill_only(principal, WRITERS),
    )
    await handle(ctx, cmd)
    return _answer(await views.rumor(ctx.db, rumor_id))


# --- channels and deliveries ---------------------------------------------------------------------


class ChannelIn(_Body):
    """A channel to register. A webhook needs its receiver's URL and the key its messages are
    signed with; the other kinds go through the gateway."""

    kind: ChannelKind
    name: str = Field(min_length=1, max_length=255)
    exercise: bool = Field(description="an exercise channel: it receives exercise alerts only")
    url: HttpUrl | None = None
    secret: str | None = Field(default=None, min_length=16, max_length=255)


@channels_api.post("/channels", status_code=201, response_model=ChannelAnswer, summary="Register a channel")
async def register_channel(ctx: Ctx, body: ChannelIn, principal: Principal = requires(*CHANNEL_ROLES)) -> Response:
    """422 for a webhook without url and secret; 403 for a drill runner registering a live channel."""
    principal.require_scope(CHANNEL_ROLES, body.exercise, "channels")
    if body.kind is ChannelKind.webhook and (body.url is None or body.secret is None):
        raise InvalidInput("a webhook channel needs url and secret", field="url" if body.url is None else "secret")
    cmd = commands.RegisterChannel(
        body.kind, body.name, body.exercise, principal.subject, str(body.url) if body.url else None, body.secret
    )
    return _answer(views.channel_answer(await handle(ctx, cmd)), status=201)


@channels_api.get("/channels", response_model=ChannelList, summary="The channels")
async def list_channels(ctx: Ctx, principal: Principal = requires(*READERS)) -> Response:
    """In the order they were registered."""
    return _answer(await views.channels(ctx.db))


@channels_api.get("/alerts/{alert_id}/deliveries", response_model=DeliveryList, summary="An alert's deliveries")
async def list_deliveries(ctx: Ctx, alert_id: str, principal: Principal = requires(*READERS)) -> Response:
    """Each attempt's outcome: delivered, refused (and why), skipped (an SMS or cell broadcast with
    no target inside the area), or pending with its next attempt; SMS and cell broadcast list
    the targets they were limited to."""
    await views.alert(ctx, alert_id)
    return _answer(await views.deliveries(ctx.db, alert_id=alert_id))


@channels_api.get(
    "/statements/{statement_id}/deliveries", response_model=DeliveryList, summary="A statement's deliveries"
)
async def list_statement_deliveries(ctx: Ctx, statement_id: str, principal: Principal = requires(*READERS)) -> Response:
    """As an alert's: delivered, refused, skipped (an SMS or cell broadcast with no target in the
    incident's area) or pending with its next attempt; 404 if there is no such statement."""
    await views.statement(ctx.db, statement_id)
    return _answer(await views.deliveries(ctx.db, statement_id=statement_id))


@channels_api.post("/alerts/{alert_id}:republish", response_model=Queued, summary="Send a published alert again")
async def republish(ctx: Ctx, alert_id: str, principal: Principal = requires(*WRITERS)) -> Response:
    """409 unless the alert is published."""
    queued = await handle(ctx, commands.Republish(alert_id, principal.subject, _drill_only(principal, WRITERS)))
    return _answer(Queued(queued=queued))


class TargetIn(_Body):
    """A cell (a cell-broadcast site), a district or a subscriber group at its position."""

    id: str = Field(pattern=ID)
    kind: Literal["cell", "district", "subscribers"]
    name: str = Field(default="", max_length=255)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    district: str | None = Field(default=None, max_length=64)


class TargetBatch(_Body):
    targets: list[TargetIn] = Field(min_length=1, max_length=10_000)


@channels_api.post("/targets:batch", status_code=201, response_model=Registered, summary="Register targets")
async def register_targets(ctx: Ctx, body: TargetBatch, principal: Principal = requires(Role.COMMANDER)) -> Response:
    """Up to 10,000 cells, districts or subscriber groups at once; an id already known stays as it is."""
    cmd = commands.RegisterTargets([t.model_dump() for t in body.targets], principal.subject)
    return _answer(Registered(registered=await handle(ctx, cmd)), status=201)


@channels_api.get("/alerts/{alert_id}/targets", response_model=TargetsAnswer, summary="What an alert's area reaches")
async def alert_targets(
    ctx: Ctx,
    alert_id: str,
    principal: Principal = requires(*READERS),
    limit: Annotated[int, Query(ge=0, le=10_000)] = 1000,
) -> Response:
    """The cells, districts and subscriber groups inside the alert's polygon or circle."""
    return _answer(await views.alert_targets(ctx, alert_id, limit))


# --- exercise data ---------------------------------------------------------------------------------


@channels_api.get(
    "/exercise",
    response_model=ExerciseData,
    summary="What exercise data public-notification holds",
    tags=["exercise"],
)
async def exercise_data(ctx: Ctx, principal: Principal = requires(*READERS)) -> Response:
    """Exercise incidents, alerts, statements, rumors, clocks, deliveries and channels."""
    return _answer(await views.exercise_data(ctx.db))


@channels_api.delete(
    "/exercise",
    response_model=Purged,
    summary="Purge exercise incidents, alerts, statements, rumors, clocks (exercise channels with ?channels=true)",
    tags=["exercise"],
)
async def purge_exercise(ctx: Ctx, principal: Principal = requires(*PURGE_ROLES), channels: bool = False) -> Response:
    """Deliveries of exercise alerts go first: a pending one is never sent. Live data untouched; a
    second purge purges nothing."""
    return _answer(Purged(**await handle(ctx, commands.PurgeExercise(principal.subject, channels))))


# --- the public CAP feed -----------------------------------------------------------------------


@public_api.get(
    "/feed.xml",
    response_class=Response,
    responses={200: {"content": {"application/atom+xml": {}}}},
    summary="Atom feed of the live public alerts",
)
async def cap_feed(ctx: Ctx, request: Request) -> Response:
    """Published Actual alerts in force; exercise alerts never appear here."""
    base = str(request.base_url).rstrip("/")
    return Response(await views.public_feed(ctx, base, utcnow()), media_type="application/atom+xml")


@public_api.get(
    "/alerts/{alert_id}.xml",
    response_class=Response,
    responses={200: {"content": {CAP_XML: {}}}},
    summary="One published alert's CAP 1.2 XML",
)
async def cap_alert(ctx: Ctx, alert_id: str) -> Response:
    """404 for an alert not published or an exercise alert."""
    return Response(await views.public_alert_xml(ctx, alert_id), media_type=CAP_XML)
