"""HTTP in, a command to its handler (or a query to views.py), the answer out: the catalogue,
depots, stock city-wide and per depot, ledger documents, and reservations per incident.

Roles: supply officers (and commanders) change stock and reservations; every role reads; a drill
runner acts on exercise depots and reservations only (Principal.require_scope, DESIGN §8) and
alone purges exercise data. Quantities are entered as a number and a unit (the
item's base unit by default, or one of its packs) and answered in base units.
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field

from ecs.auth import READERS, Principal, Role
from ecs.bodies import RequestBody
from ecs.errors import InvalidInput, UnsupportedMediaType
from ecs.web import json_response, requires

from . import commands, views
from .context import Context
from .domain import Action, AdjustmentReason, Condition, Depot, Item
from .handlers import handle
from .views import (
    DepotList,
    DocumentAnswer,
    ExerciseData,
    ExpiryPage,
    ItemList,
    LowStockPage,
    MinimumAnswer,
    MinimumList,
    Purged,
    ReservationAnswer,
    ReservationBatch,
    ReservationList,
    StockPage,
)

catalogue_api = APIRouter(prefix="/v1", tags=["catalogue and depots"])
stock_api = APIRouter(prefix="/v1", tags=["stock and documents"])
reservations_api = APIRouter(prefix="/v1", tags=["reservations"])
alerts_api = APIRouter(prefix="/v1", tags=["low stock and expiry"])
edxl_api = APIRouter(prefix="/v1", tags=["EDXL-RM 1.0"])

SUPPLY: tuple[Role, ...] = (Role.SUPPLY_OFFICER, Role.COMMANDER, Role.DRILL_RUNNER)
"""Who registers depots and changes stock and reservations (a drill runner: exercise depots and
reservations only)."""
CATALOGUE: tuple[Role, ...] = (Role.SUPPLY_OFFICER, Role.COMMANDER)
"""Who changes the catalogue, which live and exercise stock share."""
PURGE: tuple[Role, ...] = (Role.DRILL_RUNNER,)
"""Who purges exercise data."""

CODE = r"^[a-z0-9_]{1,64}$"
ID = r"^[A-Za-z0-9_-]{1,64}$"
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", re.ASCII)


def _plain_number(value: object) -> object:
    """A quantity given as a string is a plain JSON-style number: no other script's digits, no
    ``_`` separators, no surrounding blanks (Python's Decimal takes all three)."""
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        raise ValueError("must be a number such as 12 or 2.5")
    return value


Number = Annotated[Decimal, BeforeValidator(_plain_number)]
Quantity = Annotated[Number, Field(gt=0, le=1_000_000_000, allow_inf_nan=False, description="in `unit`")]


async def _context(request: Request) -> Context:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop a request.
    return request.app.state.stockpile


Ctx = Annotated[Context, Depends(_context)]


def _request_key(who: Principal, key: str | None) -> str | None:
    """The request's Idempotency-Key, per caller, recorded with its effect (handlers.reservations):
    ``commands.request_key(subject, key)``."""
    if not key or not key.strip():
        return None
    return commands.request_key(who.subject, key.strip())


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]


def _answer(model: BaseModel, status: int = 200) -> Response:
    return json_response(model.model_dump(mode="json"), status=status)


async def _own_depots(ctx: Context, who: Principal, *depot_ids: str) -> None:
    """A drill runner posts documents on exercise depots only: 403 on a live one (404 on none)."""
    if who.is_drill_only(SUPPLY):
        for depot_id in depot_ids:
            who.require_scope(SUPPLY, await views.depot_is_exercise(ctx.db, depot_id), "depots")


class _Body(RequestBody):
    """Every request body of this service (ecs.bodies.RequestBody: no unknown field, no U+0000, no
    true or false for a number)."""


class ItemIn(_Body):
    """A catalogue item; quantities of it are counted in whole ``base_unit``s."""

    code: str = Field(pattern=CODE)
    gb_code: str | None = Field(default=None, pattern=r"^[0-9]{7}$", description="GB/T 38565-2020 7-digit code")
    name_en: str = Field(min_length=1, max_length=255)
    name_zh: str = Field(min_length=1, max_length=255)
    base_unit: str = Field(min_length=1, max_length=32)
    packs: dict[Annotated[str, Field(min_length=1, max_length=32)], Annotated[int, Field(ge=2, le=1_000_000)]] = Field(
        default_factory=dict, max_length=10
    )
    shelf_life_days: int | None = Field(default=None, ge=1, le=36500)
    kit_of: dict[Annotated[str, Field(pattern=CODE)], Annotated[int, Field(ge=1, le=1_000_000_000)]] = Field(
        default_factory=dict,
        max_length=100,
        description="a kit's parts: item code -> base units of it in one kit (empty: not a kit); kits are"
        " made and broken only by assembly and disassembly documents",
    )


class ItemBatch(_Body):
    items: list[ItemIn] = Field(min_length=1, max_length=1000)


class DepotIn(_Body):
    """A depot; position in WGS-84 degrees."""

    id: str = Field(pattern=ID)
    name: str = Field(min_length=1, max_length=255)
    district: str = Field(min_length=1, max_length=64)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False, strict=True)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False, strict=True)
    hours: str = Field(default="00:00-24:00", max_length=255)
    contact: str = Field(default="", max_length=255)
    exercise: bool = Field(default=False, strict=True)


class DepotBatch(_Body):
    depots: list[DepotIn] = Field(min_length=1, max_length=1000)


class ReceiptLineIn(_Body):
    item: str = Field(pattern=CODE)
    lot: str = Field(min_length=1, max_length=64)
    quantity: Quantity
    unit: str | None = Field(default=None, max_length=32, description="the base unit (default) or a pack")
    expiry: date | None = None
    condition: Condition = Condition.good


class ReceiptIn(_Body):
    """A receipt: stock arriving at a depot."""

    depot_id: str = Field(pattern=ID)
    lines: list[ReceiptLineIn] = Field(min_length=1, max_length=500)
    effective_at: AwareDatetime | None = Field(default=None, description="when it arrived (default: now)")
    note: str = Field(default="", max_length=2000)


class AdjustmentIn(_Body):
    """An adjustment of one lot by a signed ``delta``, with its reason."""

    depot_id: str = Field(pattern=ID)
    item: str = Field(pattern=CODE)
    lot: str = Field(min_length=1, max_length=64)
    condition: Condition = Condition.good
    delta: Annotated[Number, Field(ge=-1_000_000_000, le=1_000_000_000, allow_inf_nan=False)]
    unit: str | None = Field(default=None, max_length=32)
    reason: AdjustmentReason
    effective_at: AwareDatetime | None = None
    note: str = Field(default="", max_length=2000)


class TransferIn(_Body):
    """A good lot moving from one depot to another."""

    from_depot: str = Field(pattern=ID)
    to_depot: str = Field(pattern=ID)
    item: str = Field(pattern=CODE)
    lot: str = Field(min_length=1, max_length=64)
    quantity: Quantity
    unit: str | None = Field(default=None, max_length=32)
    effective_at: AwareDatetime | None = None
    note: str = Field(default="", max_length=2000)


class KitDocumentIn(_Body):
    """Kits made from their parts (an assembly) or broken back into them (a disassembly) at one
    depot; ``quantity`` in ``unit`` (the kit's base unit or one of its packs)."""

    depot_id: str = Field(pattern=ID)
    item: str = Field(pattern=CODE, description="the kit's item code")
    quantity: Quantity
    unit: str | None = Field(default=None, max_length=32)
    note: str = Field(default="", max_length=2000)


class Near(_Body):
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)


class ReservationIn(_Body):
    """ "``quantity`` of ``item`` near ``near``" (default: the incident's position)."""

    item: str = Field(pattern=CODE)
    quantity: Quantity
    unit: str | None = Field(default=None, max_length=32)
    near: Near | None = None


class RequestLineIn(_Body):
    item: str = Field(pattern=CODE)
    quantity: Quantity
    unit: str | None = Field(default=None, max_length=32)


class ReservationBatchIn(_Body):
    """Several items at once, all or none, each reserved nearest first."""

    lines: list[RequestLineIn] = Field(min_length=1, max_length=100)
    near: Near | None = None


class ActionIn(_Body):
    """Part of a reservation (``quantity`` None: all there is) issued, returned (in ``condition``),
    consumed or released."""

    quantity: Quantity | None = None
    unit: str | None = Field(default=None, max_length=32)
    condition: Condition = Condition.good
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="when given, refused (409) if the reservation changed"
    )


class MinimumIn(_Body):
    """The least the depot should keep of the item, in ``unit`` (0: no minimum)."""

    minimum: Annotated[Number, Field(ge=0, le=1_000_000_000, allow_inf_nan=False, description="in `unit`")]
    unit: str | None = Field(default=None, max_length=32, description="the base unit (default) or a pack")
    version: int | None = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="when given, refused (409) if the minimum changed (0: if one exists)",
    )


# --- the catalogue and depots ---------------------------------------------------------------------


@catalogue_api.get("/items", response_model=ItemList)
async def list_items(ctx: Ctx, _: Principal = requires(*READERS)) -> Response:
    """The catalogue."""
    return _answer(await views.items(ctx.db))


@catalogue_api.post("/items", response_model=ItemList, status_code=201)
async def add_items(body: ItemBatch, ctx: Ctx, who: Principal = requires(*CATALOGUE)) -> Response:
    """Add items, all or none (409 naming the codes already there)."""
    new = [
        Item(
            code=i.code,
            gb_code=i.gb_code,
            name_en=i.name_en,
            name_zh=i.name_zh,
            base_unit=i.base_unit,
            packs=dict(i.packs),
            shelf_life_days=i.shelf_life_days,
            kit_of=dict(i.kit_of),
        )
        for i in body.items
    ]
    added = await handle(ctx, commands.AddItems(new, who.subject))
    return _answer(ItemList(items=[views.item_answer(i) for i in added]), 201)


@catalogue_api.get("/depots", response_model=DepotList)
async def list_depots(ctx: Ctx, _: Principal = requires(*READERS)) -> Response:
    """Every depot."""
    return _answer(await views.depots(ctx.db))


@catalogue_api.post("/depots", response_model=DepotList, status_code=201)
async def add_depots(body: DepotBatch, ctx: Ctx, who: Principal = requires(*SUPPLY)) -> Response:
    """Register depots, all or none (409 naming the ids already there); a drill runner, exercise
    depots only."""
    who.require_scope(SUPPLY, all(d.exercise for d in body.depots), "depots")
    new = [Depot(**d.model_dump()) for d in body.depots]
    await handle(ctx, commands.AddDepots(new, who.subject))
    return _answer(await views.depots(ctx.db), 201)


# --- stock and documents -----------------------------------------------------------------------------


@stock_api.get("/stock", response_model=StockPage)
async def list_stock(
    ctx: Ctx,
    _: Principal = requires(*READERS),
    depot_id: str | None = Query(default=None, pattern=ID),
    item: str | None = Query(default=None, pattern=CODE),
    district: str | None = Query(default=None, max_length=64),
    cursor: int = Query(default=0, ge=0, le=2**63 - 1),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Response:
    """Stock lines with something on hand, per depot, item or district, or city-wide."""
    return _answer(await views.stock(ctx.db, depot_id, item, district, cursor, limit))


@stock_api.post("/documents/receipts", response_model=DocumentAnswer, status_code=201)
async def post_receipt(body: ReceiptIn, ctx: Ctx, who: Principal = requires(*SUPPLY)) -> Response:
    """A receipt (404: unknown depot or item; 422: a unit the item does not have, a fraction)."""
    await _own_depots(ctx, who, body.depot_id)
    lines = [commands.ReceiptLine(l.item, l.lot, l.quantity, l.unit, l.expiry, l.condition) for l in body.lines]
    doc = await handle(ctx, commands.ReceiveStock(body.depot_id, lines, who.subject, body.effective_at, body.note))
    return _answer(DocumentAnswer(document_id=doc), 201)


@stock_api.post("/documents/adjustments", response_model=DocumentAnswer, status_code=201)
async def post_adjustment(body: AdjustmentIn, ctx: Ctx, who: Principal = requires(*SUPPLY)) -> Response:
    """An adjustment (409 with the item and the date when a balance would go negative)."""
    await _own_depots(ctx, who, body.depot_id)
    cmd = commands.AdjustStock(
        body.depot_id,
        body.item,
        body.lot,
        body.condition,
        body.delta,
        body.reason,
        who.subject,
        body.unit,
        body.effective_at,
        body.note,
    )
    return _answer(DocumentAnswer(document_id=await handle(ctx, cmd)), 201)


@stock_api.post("/documents/transfers", response_model=DocumentAnswer, status_code=201)
async def post_transfer(body: TransferIn, ctx: Ctx, who: Principal = requires(*SUPPLY)) -> Response:
    """A transfer between depots (409 when the source has too little available)."""
    await _own_depots(ctx, who, body.from_depot, body.to_depot)
    cmd = commands.TransferStock(
        body.from_depot,
        body.to_depot,
        body.item,
        body.lot,
        body.quantity,
        who.subject,
        body.unit,
        body.effective_at,
        body.note,
    )
    return _answer(DocumentAnswer(document_id=await handle(ctx, cmd)), 201)


@stock_api.post("/documents/assemblies", response_model=DocumentAnswer, status_code=201)
async def post_assembly(body: KitDocumentIn, ctx: Ctx, who: Principal = requires(*SUPPLY)) -> Response:
    """An assembly: kits made at a depot from its good, unexpired parts, earliest expiry first;
    the kits get the earliest expiry of the parts taken (404: unknown depot or kit; 422: ``item``
    is not a kit, ``quantity`` or ``unit``; 409 naming each short part, the depot and how much)."""
    await _own_depots(ctx, who, body.depot_id)
    cmd = commands.AssembleKits(body.depot_id, body.item, body.quantity, who.subject, body.unit, body.note)
    return _answer(DocumentAnswer(document_id=await handle(ctx, cmd)), 201)


@stock_api.post("/documents/disassemblies", response_model=DocumentAnswer, status_code=201)
async def post_disassembly(body: KitDocumentIn, ctx: Ctx, who: Principal = requires(*SUPPLY)) -> Response:
    """A disassembly: kits at a depot (good, not reserved, earliest expiry first) broken back into
    their parts, which get the kits' expiry (404: unknown depot or kit; 422: ``item`` is not a
    kit, ``quantity`` or ``unit``; 409 when too few kits are available)."""
    await _own_depots(ctx, who, body.depot_id)
    cmd = commands.DisassembleKits(body.depot_id, body.item, body.quantity, who.subject, body.unit, body.note)
    return _answer(DocumentAnswer(document_id=await handle(ctx, cmd)), 201)


# --- low stock and expiry -------------------------------------------------------------------------


@alerts_api.get("/minimums", response_model=MinimumList)
async def list_minimums(
    ctx: Ctx, _: Principal = requires(*READERS), depot_id: str | None = Query(default=None, pattern=ID)
) -> Response:
    """Every depot's minimums (or one depot's), with what each could reserve now and whether it is below."""
    return _answer(await views.minimums(ctx.db, ctx.settings.min_shelf_life_days, depot_id))


@alerts_api.put("/depots/{depot_id}/minimums/{item}", response_model=MinimumAnswer)
async def set_minimum(
    depot_id: Annotated[str, Path(pattern=ID)],
    item: Annotated[str, Path(pattern=CODE)],
    body: MinimumIn,
    ctx: Ctx,
    who: Principal = requires(*CATALOGUE),
) -> Response:
    """Set the least a depot should keep of an item (reservable: good, not short-dated); below it one
    low-stock alert opens, at or above it clears. 404: unknown depot or item; 409: stale ``version``."""
    cmd = commands.SetMinimum(depot_id, item, body.minimum, who.subject, body.unit, body.version)
    await handle(ctx, cmd)
    return _answer(await views.minimum(ctx.db, ctx.settings.min_shelf_life_days, depot_id, item))


@alerts_api.get("/alerts/low-stock", response_model=LowStockPage)
async def low_stock(
    ctx: Ctx,
    _: Principal = requires(*READERS),
    state: Literal["open", "cleared", "all"] = "open",
    depot_id: str | None = Query(default=None, pattern=ID),
    item: str | None = Query(default=None, pattern=CODE),
    exercise: bool | None = None,
    cursor: int | None = Query(default=None, ge=1, le=2**63 - 1),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Response:
    """Low-stock alerts, newest first (open ones by default); exercise depots' are marked ``exercise``."""
    page = await views.low_stock_alerts(
        ctx.db, ctx.settings.min_shelf_life_days, state, depot_id, item, exercise, cursor, limit
    )
    return _answer(page)


@alerts_api.get("/alerts/expiry", response_model=ExpiryPage)
async def expiry(
    ctx: Ctx,
    _: Principal = requires(*READERS),
    depot_id: str | None = Query(default=None, pattern=ID),
    item: str | None = Query(default=None, pattern=CODE),
    exercise: bool | None = None,
    cursor: int | None = Query(default=None, ge=1, le=2**63 - 1),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Response:
    """Lots warned of as expiring within STOCKPILE_EXPIRY_WARNING_DAYS (once per lot), newest first,
    with what is on hand of each now."""
    return _answer(await views.expiry_warnings(ctx.db, depot_id, item, exercise, cursor, limit))


# --- reservations --------------------------------------------------------------------------------------


@reservations_api.get("/incidents/{incident_id}/reservations", response_model=ReservationList)
async def incident_reservations(incident_id: str, ctx: Ctx, _: Principal = requires(*READERS)) -> Response:
    """An incident's reservations, newest first, and whether it is settled."""
    return _answer(await views.incident_reservations(ctx.db, incident_id))


@reservations_api.post("/incidents/{incident_id}/reservations", response_model=ReservationAnswer, status_code=201)
async def reserve(
    incident_id: str,
    body: ReservationIn,
    ctx: Ctx,
    idempotency_key: IdempotencyKey = None,
    who: Principal = requires(*SUPPLY),
) -> Response:
    """Reserve nearest first across depots; a partial reservation answers 201 with ``missing``."""
    exercise = await views.incident_is_exercise(ctx.db, incident_id, remembered=True)  # the handler reads it again
    who.require_scope(SUPPLY, exercise, "incidents")
    near = body.near
    got = await handle(
        ctx,
        commands.Reserve(
            incident_id,
            body.item,
            body.quantity,
            who.subject,
            body.unit,
            near.lat if near else None,
            near.lon if near else None,
            request_key=_request_key(who, idempotency_key),
        ),
    )
    made = views.just_made([got])
    return _answer(made.reservations[0] if made else await views.reservation(ctx.db, got.reservation_id), 201)


@reservations_api.post("/incidents/{incident_id}/reservations:batch", response_model=ReservationBatch, status_code=201)
async def reserve_many(
    incident_id: str,
    body: ReservationBatchIn,
    ctx: Ctx,
    idempotency_key: IdempotencyKey = None,
    who: Principal = requires(*SUPPLY),
) -> Response:
    """Reserve several items in one request, all or none; each line answers with what is missing."""
    exercise = await views.incident_is_exercise(ctx.db, incident_id, remembered=True)  # the handler reads it again
    who.require_scope(SUPPLY, exercise, "incidents")
    near = body.near
    lines = [commands.RequestLine(line.item, line.quantity, line.unit) for line in body.lines]
    cmd = commands.ReserveMany(
        incident_id,
        lines,
        who.subject,
        near.lat if near else None,
        near.lon if near else None,
        request_key=_request_key(who, idempotency_key),
    )
    got = await handle(ctx, cmd)
    answer = views.just_made(got) or await views.reservations(ctx.db, [r.reservation_id for r in got])
    return _answer(answer, 201)


ReservationId = Annotated[int, Path(ge=1, le=2**63 - 1, description="a reservation's id (a 64-bit key)")]
"""Beyond 64 bits no reservation can exist: 422 naming the parameter, not a database error."""


@reservations_api.get("/reservations/{reservation_id}", response_model=ReservationAnswer)
async def get_reservation(reservation_id: ReservationId, ctx: Ctx, _: Principal = requires(*READERS)) -> Response:
    """One reservation and where its quantity is."""
    return _answer(await views.reservation(ctx.db, reservation_id))


@reservations_api.post("/reservations/{reservation_id}/{action}", response_model=ReservationAnswer)
async def act(
    reservation_id: ReservationId,
    action: Literal["issue", "return", "consume", "release"],
    body: ActionIn,
    ctx: Ctx,
    idempotency_key: IdempotencyKey = None,
    who: Principal = requires(*SUPPLY),
) -> Response:
    """Issue (leaves the depot), return (partly or whole, with its condition), consume or release
    (back to stock) part of a reservation; 409 for more than there is or a stale ``version``."""
    current = await views.reservation(ctx.db, reservation_id)
    who.require_scope(SUPPLY, current.exercise, "reservations")
    cmd = commands.ActOnReservation(
        reservation_id,
        Action(action),
        who.subject,
        body.quantity,
        body.unit,
        body.condition,
        body.version,
        _request_key(who, idempotency_key),
    )
    await handle(ctx, cmd)
    return _answer(await views.reservation(ctx.db, reservation_id))


# --- EDXL-RM 1.0 -----------------------------------------------------------------------------------

EDXL_XML = "application/xml"
EDXL_TYPES = ("application/xml", "text/xml", "application/edxl-rm+xml")


@edxl_api.get(
    "/incidents/{incident_id}/edxl-rm/{message}",
    response_class=Response,
    summary="Export an incident's reservations as an EDXL-RM 1.0 RequestResource, CommitResource or ReleaseResource",
    responses={
        200: {
            "description": "An OASIS EDXL-RM 1.0 message (urn:oasis:names:tc:emergency:EDXL:RM:1.0:msg), valid"
            " against the official schemas: one ResourceInformation per reservation (item), quantities in the"
            " item's base unit; RequestResource what was asked, CommitResource what was reserved (Accept,"
            " Provisional with what is missing, or Decline), ReleaseResource what was released. Every message"
            " names the request as OriginatingMessageID (a neighbour's, for an imported one); the commit's"
            " PrecedingMessageID is the request's, the release's the commit's.",
            "content": {EDXL_XML: {"schema": {"type": "string", "format": "xml"}}},
        },
        409: {"description": "a ReleaseResource of reservations nothing of which was released"},
    },
)
async def export_edxl(
    incident_id: str,
    message: Literal["RequestResource", "CommitResource", "ReleaseResource"],
    ctx: Ctx,
    _: Principal = requires(*READERS),
    reservation_id: Annotated[
        list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None,
        Query(max_length=100, description="only these reservations of the incident (default: all)"),
    ] = None,
) -> Response:
    """404 for an unknown incident, a reservation not of it, or an incident without reservations."""
    settings = ctx.settings
    document = await views.edxl_document(
        ctx.db, incident_id, message, reservation_id, settings.edxl_sender, settings.edxl_sender_urn
    )
    return Response(document, media_type=EDXL_XML)


@edxl_api.post(
    "/edxl-rm/requests",
    response_model=ReservationBatch,
    status_code=201,
    summary="Import a neighbour's EDXL-RM 1.0 RequestResource as reservations for an incident",
    responses={
        422: {
            "description": "not valid against the EDXL-RM 1.0 schema (field: the XPath; line; the reason), an"
            " item not in the catalogue, or a quantity or unit the item cannot have; nothing is reserved"
        },
        415: {"description": "not sent as XML"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {EDXL_XML: {"schema": {"type": "string"}}}}},
)
async def import_edxl(
    request: Request,
    ctx: Ctx,
    incident_id: Annotated[str, Query(min_length=1, max_length=32, description="the incident to reserve for")],
    who: Principal = requires(*SUPPLY),
) -> Response:
    """One reservation per ResourceInformation (item: Resource/TypeStructure of ValueListURN
    urn:ecs:stockpile:item, or Resource/ResourceID; quantity: AssignmentInformation/Quantity/
    MeasuredQuantity, UnitOfMeasure the base unit or a pack), nearest the incident first, all or
    none. The same MessageID again answers what it made the first time."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in EDXL_TYPES:
        raise UnsupportedMediaType(f"send the document as XML ({', '.join(EDXL_TYPES)})", field="Content-Type")
    who.require_scope(SUPPLY, await views.incident_is_exercise(ctx.db, incident_id), "incidents")
    body = await request.body()
    if not body:
        raise InvalidInput("an EDXL-RM RequestResource document is required", field="body")
    got = await handle(ctx, commands.ImportEdxlRequest(incident_id, body, who.subject))
    return _answer(await views.reservations(ctx.db, [r.reservation_id for r in got]), 201)


# --- exercise data -----------------------------------------------------------------------------------


@reservations_api.get("/exercise", response_model=ExerciseData, tags=["exercise"])
async def exercise_data(ctx: Ctx, _: Principal = requires(*READERS)) -> Response:
    """What exercise data resource-stockpile holds: incidents, reservations and what they hold,
    exercise depots with their stock lines and documents."""
    return _answer(await views.exercise_data(ctx.db))


@reservations_api.delete(
    "/exercise",
    response_model=Purged,
    summary="Purge exercise incidents and reservations (and exercise depots with ?depots=true); live data untouched",
    tags=["exercise"],
)
async def purge_exercise(ctx: Ctx, who: Principal = requires(*PURGE), depots: bool = False) -> Response:
    """What exercise reservations hold goes back to its stock lines first; with ``depots``, the
    exercise depots go too, with their stock lines, ledger and documents. A second purge purges
    nothing."""
    purged = await handle(ctx, commands.PurgeExercise(who.subject, depots))
    return _answer(Purged(**purged))
