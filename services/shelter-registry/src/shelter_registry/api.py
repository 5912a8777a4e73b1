"""HTTP in, a command to its handler (or a query to views.py), the answer out: shelters and their
status, allocations (one household or a batch), registrations with check-in and check-out, the
reunification search and the dashboards.

Each route declares its answer model (views.py), so the OpenAPI describes every answer. A drill
runner acts on exercise shelters and registrations only (Principal.require_scope, DESIGN §8).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from ecs.auth import READERS, Principal, Role
from ecs.bodies import RequestBody
from ecs.errors import InvalidInput
from ecs.privacy import EVACUEES_NEED_TO_KNOW, may_see_personal
from ecs.web import json_response, requires

from . import commands, views
from .context import Context
from .domain import (
    Needs,
    RegistrationAction,
    ShelterAction,
    ShelterKind,
    ShelterStatus,
    StayClass,
    effective_capacity,
    normalise_id_number,
    normalise_phone,
)
from .handlers import handle
from .views import (
    BatchAnswer,
    Dashboard,
    ExerciseData,
    ExpectedAnswer,
    HistoryAnswer,
    Purged,
    RegistrationAnswer,
    SearchAnswer,
    ShelterAnswer,
    ShelterList,
    ShelterPage,
)

shelters_api = APIRouter(prefix="/v1", tags=["shelters"])
registrations_api = APIRouter(prefix="/v1", tags=["allocations and registrations"])
reunification_api = APIRouter(prefix="/v1", tags=["reunification"])

MANAGERS: tuple[Role, ...] = (Role.SHELTER_MANAGER, Role.COMMANDER, Role.DRILL_RUNNER)
"""Who runs shelters and places people; a drill runner on exercise data only."""
PURGE: tuple[Role, ...] = (Role.DRILL_RUNNER,)
"""Who purges exercise data."""

SHELTER_ID = r"^[A-Za-z0-9_-]{1,64}$"
HOTLINE = r"^[0-9+()\- ]{3,32}$"


async def _context(request: Request) -> Context:
    # async: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop a request.
    return request.app.state.shelter


Ctx = Annotated[Context, Depends(_context)]


def _answer(model: BaseModel, status: int = 200) -> Response:
    return json_response(model.model_dump(mode="json"), status=status)


# --- request bodies -----------------------------------------------------------------------------


class _Body(RequestBody):
    """Every request body of this service (ecs.bodies.RequestBody: no unknown field, no U+0000, no
    true or false for a number)."""


class Location(_Body):
    """A position in WGS-84 degrees."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)


class EntranceIn(Location):
    """A way into the shelter."""

    name: str = Field(default="", max_length=100)


class ShelterIn(_Body):
    """A shelter to add. Its capacity is the effective area over the m² a person (GB 21734-2008
    §5.4, 1.5 by default), unless ``capacity`` sets it lower."""

    id: str = Field(pattern=SHELTER_ID)
    name_zh: str = Field(min_length=1, max_length=200)
    name_en: str = Field(default="", max_length=200)
    kind: ShelterKind
    district: str = Field(min_length=1, max_length=64)
    address: str = Field(default="", max_length=300)
    location: Location
    entrances: list[EntranceIn] = Field(default_factory=list, max_length=50)
    stay_class: StayClass = StayClass.short_term
    area_m2: float = Field(gt=0, le=10_000_000, allow_inf_nan=False, description="effective living area, m²")
    capacity: int | None = Field(default=None, ge=0, le=1_000_000, description="lower than the area allows, by hand")
    day_capacity: int | None = Field(
        default=None, ge=0, le=1_000_000, description="people by day; at least the capacity"
    )
    accessible_places: int = Field(default=0, ge=0, le=1_000_000)
    pet_places: int = Field(default=0, ge=0, le=1_000_000)
    facilities: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=50)
    hotline: str = Field(default="", pattern=r"^$|" + HOTLINE)
    status: ShelterStatus = Field(default=ShelterStatus.standby, description="planned or standby")
    exercise: bool = False

    def row(self, m2_per_person: float, where: str = "") -> dict[str, object]:
        """The shelter as the store keeps it. Raises InvalidInput naming the field."""
        if self.status not in (ShelterStatus.planned, ShelterStatus.standby):
            raise InvalidInput("a new shelter is planned or standby", field=f"{where}status")
        try:
            capacity = effective_capacity(self.area_m2, m2_per_person, self.capacity)
        except InvalidInput as exc:
            raise InvalidInput(exc.detail, field=f"{where}capacity") from None
        day = self.day_capacity if self.day_capacity is not None else capacity
        if day < capacity:
            raise InvalidInput(f"day_capacity {day} is below the capacity {capacity}", field=f"{where}day_capacity")
        for name in ("accessible_places", "pet_places"):
            if getattr(self, name) > capacity:
                raise InvalidInput(f"{name} exceeds the capacity {capacity}", field=f"{where}{name}")
        return {
            "id": self.id,
            "name_zh": self.name_zh,
            "name_en": self.name_en,
            "kind": self.kind.value,
            "district": self.district,
            "address": self.address,
            "lat": self.location.lat,
            "lon": self.location.lon,
            "entrances": [e.model_dump() for e in self.entrances],
            "stay_class": self.stay_class.value,
            "area_m2": self.area_m2,
            "m2_per_person": m2_per_person,
            "capacity": capacity,
            "day_capacity": day,
            "accessible_places": self.accessible_places,
            "pet_places": self.pet_places,
            "facilities": list(self.facilities),
            "hotline": self.hotline,
            "status": self.status.value,
            "exercise": self.exercise,
        }


class ShelterBatch(_Body):
    """Shelters to add together, all or none."""

    shelters: list[ShelterIn] = Field(min_length=1, max_length=1000)


class ShelterChange(_Body):
    """Facts to change; the fields left out stay. A new area or capacity re-derives the capacity."""

    version: int = Field(ge=1, le=2**31 - 1, description="the shelter version you saw; a changed shelter answers 409")
    name_zh: str | None = Field(default=None, min_length=1, max_length=200)
    name_en: str | None = Field(default=None, max_length=200)
    area_m2: float | None = Field(default=None, gt=0, le=10_000_000, allow_inf_nan=False)
    capacity: int | None = Field(default=None, ge=0, le=1_000_000)
    day_capacity: int | None = Field(default=None, ge=0, le=1_000_000)
    accessible_places: int | None = Field(default=None, ge=0, le=1_000_000)
    pet_places: int | None = Field(default=None, ge=0, le=1_000_000)
    facilities: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(default=None, max_length=50)
    hotline: str | None = Field(default=None, pattern=HOTLINE)


class StatusChange(_Body):
    """An action on the shelter's status machine."""

    action: ShelterAction
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="when given, refused (409) if the shelter changed"
    )


class PersonIn(_Body):
    """One person, after GB/T 33744's registration form. ID numbers (PRC resident ID, GB 11643-1999,
    check digit verified) and phones are stored only as fingerprints and masked."""

    name: str = Field(min_length=1, max_length=100)
    id_number: str | None = Field(default=None, max_length=32)
    phone: str | None = Field(default=None, max_length=32)
    wheelchair: bool = False
    consent_to_share: bool = Field(default=False, description="a relative who finds them may learn where")

    def person(self, where: str) -> commands.Person:
        """The person, numbers checked. Raises InvalidInput naming the field."""
        return commands.Person(
            name=self.name,
            id_number=normalise_id_number(self.id_number, f"{where}id_number") if self.id_number else None,
            phone=normalise_phone(self.phone, f"{where}phone") if self.phone else None,
            wheelchair=self.wheelchair,
            consent_to_share=self.consent_to_share,
        )


class HouseholdIn(_Body):
    """A household, placed whole: its people, its pets, where it comes from."""

    persons: list[PersonIn] = Field(min_length=1, max_length=50)
    pets: int = Field(default=0, ge=0, le=20)
    origin_address: str = Field(default="", max_length=300)


class AllocationIn(_Body):
    """Place one household in the nearest open shelter (walking time from ``near``) that takes it whole."""

    near: Location
    household: HouseholdIn
    incident_id: str | None = Field(default=None, max_length=32)
    exercise: bool = Field(default=False, description="ignored with an incident: the incident's world counts")
    shelter_id: str | None = Field(default=None, pattern=SHELTER_ID, description="this shelter, not the nearest")


class BatchHousehold(_Body):
    """A household of an evacuation zone, by counts."""

    ref: str = Field(min_length=1, max_length=100, description="unique in the batch; a repeat places it once")
    people: int = Field(ge=1, le=50)
    wheelchairs: int = Field(default=0, ge=0, le=50)
    pets: int = Field(default=0, ge=0, le=20)


class BatchIn(_Body):
    """Place an evacuation zone's households, nearest first, each whole unless ``allow_split``."""

    near: Location
    households: list[BatchHousehold] = Field(min_length=1, max_length=10_000)
    incident_id: str | None = Field(default=None, max_length=32)
    exercise: bool = False
    allow_split: bool = False


class RegistrationChange(_Body):
    """A registration's change; ``to_shelter`` for a move."""

    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="when given, refused (409) if it changed")
    to_shelter: str | None = Field(default=None, pattern=SHELTER_ID)


class SearchIn(_Body):
    """A relative's search: the full name and the phone or the ID number."""

    name: str = Field(min_length=1, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    id_number: str | None = Field(default=None, max_length=32)


class ExpectedIn(_Body):
    """The number of people expected to leave their homes (an estimate)."""

    expected_evacuees: int = Field(ge=0, le=10_000_000)


# --- shelters -----------------------------------------------------------------------------------


async def _own_shelter(ctx: Context, principal: Principal, shelter_id: str) -> None:
    s = await views.shelter(ctx.db, shelter_id)
    principal.require_scope(MANAGERS, s.exercise, "shelters")


@shelters_api.post("/shelters", status_code=201, response_model=ShelterAnswer, summary="Add a shelter")
async def add_shelter(ctx: Ctx, body: ShelterIn, principal: Principal = requires(*MANAGERS)) -> Response:
    """409 if the id is taken; 422 naming the field for a capacity above what the area allows."""
    principal.require_scope(MANAGERS, body.exercise, "shelters")
    row = body.row(ctx.settings.m2_per_person)
    (s,) = await handle(ctx, commands.RegisterShelters([row], principal.subject))
    return _answer(ShelterAnswer.of(s), status=201)


@shelters_api.post(
    "/shelters:batch", status_code=201, response_model=ShelterList, summary="Add up to 1,000 shelters (all or none)"
)
async def add_shelters(ctx: Ctx, body: ShelterBatch, principal: Principal = requires(*MANAGERS)) -> Response:
    """All or none: 409 if an id is taken, 422 if one is listed twice."""
    seen: set[str] = set()
    rows = []
    for i, s in enumerate(body.shelters):
        principal.require_scope(MANAGERS, s.exercise, "shelters")
        if s.id in seen:
            raise InvalidInput(f"shelter {s.id} is listed twice", field=f"shelters.{i}.id")
        seen.add(s.id)
        rows.append(s.row(ctx.settings.m2_per_person, f"shelters.{i}."))
    added = await handle(ctx, commands.RegisterShelters(rows, principal.subject))
    return _answer(ShelterList(items=[ShelterAnswer.of(s) for s in added]), status=201)


@shelters_api.get("/shelters", response_model=ShelterPage, summary="List shelters, filtered, by id")
async def list_shelters(
    ctx: Ctx,
    principal: Principal = requires(*READERS),
    status: Annotated[list[ShelterStatus] | None, Query()] = None,
    district: Annotated[list[str] | None, Query()] = None,
    kind: Annotated[list[ShelterKind] | None, Query()] = None,
    exercise: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(pattern=SHELTER_ID, description="next_cursor of the previous page (422 for another form)")
    ] = None,
) -> Response:
    """Every filter given must match; a filter given several times matches any of its values."""
    page = await views.shelters_page(
        ctx.db, status=status, district=district, kind=kind, exercise=exercise, limit=limit, cursor=cursor
    )
    return _answer(page)


@shelters_api.get("/shelters/{shelter_id}", response_model=ShelterAnswer, summary="One shelter")
async def get_shelter(ctx: Ctx, shelter_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 if there is no such shelter."""
    return _answer(ShelterAnswer.of(await views.shelter(ctx.db, shelter_id)))


@shelters_api.patch("/shelters/{shelter_id}", response_model=ShelterAnswer, summary="Change a shelter's facts")
async def update_shelter(
    ctx: Ctx, shelter_id: str, body: ShelterChange, principal: Principal = requires(*MANAGERS)
) -> Response:
    """409 (with the current version) if it changed since ``version``, or if a lower capacity would
    leave fewer places than people; 422 for a capacity above what the area allows."""
    await _own_shelter(ctx, principal, shelter_id)
    changes = body.model_dump(exclude={"version"}, exclude_none=True)
    if not changes:
        raise InvalidInput("nothing to change", field="body")
    s = await handle(ctx, commands.UpdateShelter(shelter_id, body.version, changes, principal.subject))
    return _answer(ShelterAnswer.of(s))


@shelters_api.post(
    "/shelters/{shelter_id}/status",
    response_model=ShelterAnswer,
    summary="Make ready, open, close, take out of service",
)
async def change_status(
    ctx: Ctx, shelter_id: str, body: StatusChange, principal: Principal = requires(*MANAGERS)
) -> Response:
    """409 for an action the status does not allow (naming those it does), for closing a shelter
    with people in it (naming how many), or for a stale ``version``."""
    await _own_shelter(ctx, principal, shelter_id)
    s = await handle(ctx, commands.ChangeShelterStatus(shelter_id, body.action, body.version, principal.subject))
    return _answer(ShelterAnswer.of(s))


@shelters_api.get("/shelters/{shelter_id}/dashboard", response_model=Dashboard, summary="A shelter's dashboard")
async def shelter_dashboard(ctx: Ctx, shelter_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 if there is no such shelter."""
    return _answer(await views.shelter_dashboard(ctx.db, shelter_id))


@shelters_api.get("/incidents/{incident_id}/dashboard", response_model=Dashboard, summary="An incident's shelters")
async def incident_dashboard(ctx: Ctx, incident_id: str, principal: Principal = requires(*READERS)) -> Response:
    """404 for an incident shelter-registry knows nothing of."""
    return _answer(await views.incident_dashboard(ctx.db, incident_id))


@shelters_api.put(
    "/incidents/{incident_id}/expected-evacuees",
    response_model=ExpectedAnswer,
    summary="Correct the expected number of evacuees",
)
async def set_expected(
    ctx: Ctx, incident_id: str, body: ExpectedIn, principal: Principal = requires(Role.SHELTER_MANAGER, Role.COMMANDER)
) -> Response:
    """Opens more standby shelters while the incident is evacuating; 404 for an unknown incident."""
    out = await handle(ctx, commands.SetExpectedEvacuees(incident_id, body.expected_evacuees, principal.subject))
    return _answer(ExpectedAnswer(**out))


# --- allocations and registrations --------------------------------------------------------------


@registrations_api.post(
    "/allocations", status_code=201, response_model=RegistrationAnswer, summary="Place one household whole"
)
async def allocate(ctx: Ctx, body: AllocationIn, principal: Principal = requires(*MANAGERS)) -> Response:
    """409 naming the largest household an open shelter could take when none takes this one; 404
    for an unknown incident or shelter; 422 naming a malformed ID or phone number."""
    exercise = body.exercise if body.incident_id is None else await views.incident_exercise(ctx.db, body.incident_id)
    principal.require_scope(MANAGERS, exercise, "shelters")
    h = body.household
    people = [p.person(f"household.persons.{i}.") for i, p in enumerate(h.persons)]
    needs = Needs(len(people), sum(p.wheelchair for p in people), h.pets)
    reg = await handle(
        ctx,
        commands.PlaceHousehold(
            lat=body.near.lat,
            lon=body.near.lon,
            needs=needs,
            people=people,
            origin_address=h.origin_address,
            incident_id=body.incident_id,
            exercise=body.exercise,
            actor=principal.subject,
            shelter_id=body.shelter_id,
        ),
    )
    return _answer(views.placed(reg, people), status=201)


@registrations_api.post(
    "/allocations:batch", status_code=201, response_model=BatchAnswer, summary="Place an evacuation zone's households"
)
async def allocate_batch(ctx: Ctx, body: BatchIn, principal: Principal = requires(*MANAGERS)) -> Response:
    """Households whole, nearest first; a repeated batch (same refs) places each household once."""
    exercise = body.exercise if body.incident_id is None else await views.incident_exercise(ctx.db, body.incident_id)
    principal.require_scope(MANAGERS, exercise, "shelters")
    seen: set[str] = set()
    for i, h in enumerate(body.households):
        if h.ref in seen:
            raise InvalidInput(f"household {h.ref} is listed twice", field=f"households.{i}.ref")
        if h.wheelchairs > h.people:
            raise InvalidInput("more wheelchair users than people", field=f"households.{i}.wheelchairs")
        seen.add(h.ref)
    out = await handle(
        ctx,
        commands.PlaceBatch(
            lat=body.near.lat,
            lon=body.near.lon,
            households=[Needs(h.people, h.wheelchairs, h.pets) for h in body.households],
            refs=[h.ref for h in body.households],
            incident_id=body.incident_id,
            exercise=body.exercise,
            actor=principal.subject,
            allow_split=body.allow_split,
        ),
    )
    placed = sum(1 for p in out.placed if p is not None)
    answer = BatchAnswer(
        placed=out.placed,
        households_placed=placed,
        households_unplaced=len(out.placed) - placed,
        already_placed=out.already,
    )
    return _answer(answer, status=201)


@registrations_api.get(
    "/registrations/{registration_id}", response_model=RegistrationAnswer, summary="One registration"
)
async def get_registration(ctx: Ctx, registration_id: str, principal: Principal = requires(*READERS)) -> Response:
    """Names and origin in full for shelter managers and commanders, masked for other roles."""
    full = may_see_personal(principal, EVACUEES_NEED_TO_KNOW)
    return _answer(await views.registration(ctx.db, registration_id, full))


@registrations_api.get(
    "/registrations/{registration_id}/history", response_model=HistoryAnswer, summary="A registration's history"
)
async def registration_history(ctx: Ctx, registration_id: str, principal: Principal = requires(*READERS)) -> Response:
    """Who did what, when, from which shelter to which; 404 for an unknown registration."""
    return _answer(await views.history(ctx.db, registration_id))


async def _change(
    ctx: Context, principal: Principal, registration_id: str, action: RegistrationAction, body: RegistrationChange
) -> Response:
    reg = await views.registration_row(ctx.db, registration_id)
    principal.require_scope(MANAGERS, reg.exercise, "registrations")
    cmd = commands.ChangeRegistration(registration_id, action, body.version, principal.subject, body.to_shelter)
    await handle(ctx, cmd)
    return _answer(await views.registration(ctx.db, registration_id, full=True))


@registrations_api.post(
    "/registrations/{registration_id}/check-in", response_model=RegistrationAnswer, summary="Check a household in"
)
async def check_in(
    ctx: Ctx, registration_id: str, body: RegistrationChange, principal: Principal = requires(*MANAGERS)
) -> Response:
    """409 for a closed or out-of-service shelter, or a registration not planned."""
    return await _change(ctx, principal, registration_id, RegistrationAction.check_in, body)


@registrations_api.post(
    "/registrations/{registration_id}/check-out", response_model=RegistrationAnswer, summary="Check a household out"
)
async def check_out(
    ctx: Ctx, registration_id: str, body: RegistrationChange, principal: Principal = requires(*MANAGERS)
) -> Response:
    """Gives the places back; 409 for a registration not checked in."""
    return await _change(ctx, principal, registration_id, RegistrationAction.check_out, body)


@registrations_api.post(
    "/registrations/{registration_id}/cancel", response_model=RegistrationAnswer, summary="Cancel a planned placement"
)
async def cancel(
    ctx: Ctx, registration_id: str, body: RegistrationChange, principal: Principal = requires(*MANAGERS)
) -> Response:
    """Gives the places back; 409 for a registration not planned."""
    return await _change(ctx, principal, registration_id, RegistrationAction.cancel, body)


@registrations_api.post(
    "/registrations/{registration_id}/move", response_model=RegistrationAnswer, summary="Move a household elsewhere"
)
async def move(
    ctx: Ctx, registration_id: str, body: RegistrationChange, principal: Principal = requires(*MANAGERS)
) -> Response:
    """To ``to_shelter`` (it must take the whole household now, 409 otherwise); the answer is the
    old registration, ``moved_to`` names the new one."""
    if body.to_shelter is None:
        raise InvalidInput("a move needs to_shelter", field="to_shelter")
    return await _change(ctx, principal, registration_id, RegistrationAction.move, body)


# --- reunification ------------------------------------------------------------------------------


@reunification_api.post("/reunification/search", response_model=SearchAnswer, summary="Find a relative")
async def search(ctx: Ctx, body: SearchIn, principal: Principal = requires(*READERS)) -> Response:
    """A full name and the phone or the ID number (422 otherwise); never a list. The answer says
    whether the person is registered safe and gives the shelter's public hotline; where, only if
    they consented. Every search is logged; over the limit answers 429."""
    if not body.phone and not body.id_number:
        raise InvalidInput("a search needs the full name and the phone or the ID number", field="phone")
    phone = normalise_phone(body.phone, "phone") if body.phone else None
    id_number = normalise_id_number(body.id_number, "id_number") if body.id_number else None
    found = await handle(ctx, commands.Search(principal.subject, body.name, phone, id_number))
    if found.registration_id is None:
        return _answer(
            SearchAnswer(
                found=False,
                message="no registration matches these facts",
                shelter_hotline=None,
                shelter_name=None,
                registration_id=None,
            )
        )
    s = await views.shelter(ctx.db, found.shelter_id)
    return _answer(
        SearchAnswer(
            found=True,
            message="registered safe at a shelter",
            shelter_hotline=s.hotline or None,
            shelter_name=s.name_zh if found.consented else None,
            registration_id=found.registration_id if found.consented else None,
        )
    )


EXPORTERS: tuple[Role, ...] = (Role.SHELTER_MANAGER, Role.COMMANDER, Role.DRILL_RUNNER)
"""Who exports an incident's reunification records; a drill runner those of exercise incidents only."""
PFIF_XML = "application/xml"


@reunification_api.get(
    "/incidents/{incident_id}/pfif",
    response_class=Response,
    summary="Export an incident's reunification records as PFIF 1.4",
    responses={
        200: {
            "description": "A PFIF 1.4 document (http://zesty.ca/pfif/1.4): one pfif:person a registered"
            " person with one pfif:note (status believed_alive, the shelter's public hotline; the shelter"
            " only when the person consented). ID numbers, phones and addresses are never exported.",
            "content": {PFIF_XML: {"schema": {"type": "string", "format": "xml"}}},
            "headers": {
                "Link": {
                    "description": 'the next page, rel="next" (absent on the last page)',
                    "schema": {"type": "string"},
                }
            },
        }
    },
)
async def export_pfif(
    ctx: Ctx,
    request: Request,
    incident_id: str,
    principal: Principal = requires(*EXPORTERS),
    limit: Annotated[int, Query(ge=1, le=5000, description="people a page")] = 1000,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,19}$", description="from the Link of the previous page")
    ] = None,
) -> Response:
    """Pages of ``limit`` people, each page a whole PFIF document; a ``Link: <...>; rel="next"``
    header names the next. 404 for an unknown incident; 403 for other roles, and for a drill
    runner on a live incident."""
    exercise = await views.incident_exercise(ctx.db, incident_id)
    principal.require_scope(EXPORTERS, exercise, "incidents")
    page = await views.pfif_page(
        ctx.db,
        incident_id,
        domain=ctx.settings.pfif_domain,
        author=ctx.settings.pfif_author,
        retention=timedelta(days=ctx.settings.retention_days),
        limit=limit,
        cursor=int(cursor) if cursor is not None else None,
    )
    headers = {}
    if page.next_cursor is not None:
        following = request.url.include_query_params(cursor=page.next_cursor, limit=limit)
        headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return Response(page.document, media_type=PFIF_XML, headers=headers)


# --- exercise data ------------------------------------------------------------------------------


@shelters_api.get(
    "/exercise", response_model=ExerciseData, summary="What exercise data shelter-registry holds", tags=["exercise"]
)
async def exercise_data(ctx: Ctx, _: Principal = requires(*READERS)) -> Response:
    """Exercise incidents, shelters and registrations, and the exercise evacuees holding places."""
    return _answer(await views.exercise_data(ctx.db))


@shelters_api.delete(
    "/exercise",
    response_model=Purged,
    summary="Purge exercise incidents and registrations (exercise shelters too with ?shelters=true); live untouched",
    tags=["exercise"],
)
async def purge_exercise(ctx: Ctx, principal: Principal = requires(*PURGE), shelters: bool = False) -> Response:
    """The places exercise evacuees hold are given back first, so exercise shelters that stay are
    empty again. A second purge purges nothing."""
    purged = await handle(ctx, commands.PurgeExercise(principal.subject, shelters))
    return _answer(Purged(**purged))
