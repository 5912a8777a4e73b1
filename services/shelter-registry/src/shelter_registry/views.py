"""The read side of the operator API: the answers (Pydantic models, so that the OpenAPI describes
each of them) and the queries that fill them: shelter lists with cursors, registrations and their
history, the reunification answer, per-shelter and per-incident dashboards.

Times are UTC, positions WGS-84 degrees, areas m², walking times seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import case, func, or_, select

from ecs.db import Database
from ecs.envelope import utcnow
from ecs.errors import NotFound

from . import store
from .domain import (
    HOLDS_PLACE,
    TRANSITIONS,
    RegistrationStatus,
    ShelterKind,
    ShelterStatus,
    StayClass,
    mask_id_number,
    mask_name,
    mask_phone,
    shown_status,
)
from .pfif import PfifPerson, pfif_document
from .store import Registration, Shelter

# --- answers -----------------------------------------------------------------------------------


class Position(BaseModel):
    """WGS-84 degrees."""

    lat: float
    lon: float


class Entrance(Position):
    """A way in, for walking routes."""

    name: str = ""


class ShelterAnswer(BaseModel):
    """A shelter: its facts, its capacity (GB 21734-2008: area over m² a person), what it holds."""

    id: str
    name_zh: str
    name_en: str
    kind: ShelterKind
    district: str
    address: str
    location: Position
    entrances: list[Entrance]
    stay_class: StayClass
    area_m2: float = Field(description="effective living area, m²")
    m2_per_person: float
    capacity: int = Field(description="people it sleeps (night)")
    day_capacity: int = Field(description="people it holds by day")
    accessible_places: int
    pet_places: int
    facilities: list[str]
    hotline: str
    status: ShelterStatus = Field(description="full when open with no place left")
    occupied: int
    free: int
    accessible_free: int
    pet_free: int
    exercise: bool
    opened_for: str | None = Field(description="the incident whose evacuation opened it")
    version: int = Field(description="send it back with a change: a shelter changed meanwhile answers 409")
    next_actions: list[str]

    @classmethod
    def of(cls, s: Shelter) -> ShelterAnswer:
        """The answer for a stored shelter."""
        return cls(
            id=s.id,
            name_zh=s.name_zh,
            name_en=s.name_en,
            kind=ShelterKind(s.kind),
            district=s.district,
            address=s.address,
            location=Position(lat=s.lat, lon=s.lon),
            entrances=[Entrance(**e) for e in s.entrances],
            stay_class=StayClass(s.stay_class),
            area_m2=s.area_m2,
            m2_per_person=s.m2_per_person,
            capacity=s.capacity,
            day_capacity=s.day_capacity,
            accessible_places=s.accessible_places,
            pet_places=s.pet_places,
            facilities=list(s.facilities),
            hotline=s.hotline,
            status=shown_status(s.status, s.occupied, s.capacity),
            occupied=s.occupied,
            free=s.capacity - s.occupied,
            accessible_free=s.accessible_places - s.accessible_used,
            pet_free=s.pet_places - s.pets_used,
            exercise=s.exercise,
            opened_for=s.opened_for,
            version=s.version,
            next_actions=sorted(a.value for (st, a) in TRANSITIONS if st is s.status),
        )


class ShelterList(BaseModel):
    """Shelters, in the order given."""

    items: list[ShelterAnswer]


class ShelterPage(ShelterList):
    """A page of shelters, by id."""

    next_cursor: str | None = Field(description="pass it as ?cursor= for the next page; null on the last")


class PersonAnswer(BaseModel):
    """A registered person; names in full for shelter managers and commanders, masked otherwise.
    ID and phone numbers are only ever shown masked."""

    name: str
    id_number: str | None = Field(description="masked")
    phone: str | None = Field(description="masked")
    wheelchair: bool
    consent_to_share: bool


class RegistrationAnswer(BaseModel):
    """A household's registration at a shelter."""

    id: str
    shelter_id: str
    incident_id: str | None
    status: RegistrationStatus
    people: int
    wheelchairs: int
    pets: int
    origin_address: str
    exercise: bool
    moved_to: str | None = Field(description="the registration at the shelter the household moved to")
    version: int
    created_at: datetime
    persons: list[PersonAnswer]

    @classmethod
    def of(cls, r: Registration, persons: list[PersonAnswer], full: bool) -> RegistrationAnswer:
        """The answer for a registration; ``full`` shows names and the origin address."""
        return cls(
            id=r.id,
            shelter_id=r.shelter_id,
            incident_id=r.incident_id,
            status=r.status,
            people=r.people,
            wheelchairs=r.wheelchairs,
            pets=r.pets,
            origin_address=r.origin_address if full else ("***" if r.origin_address else ""),
            exercise=r.exercise,
            moved_to=r.moved_to,
            version=r.version,
            created_at=r.created_at,
            persons=persons,
        )


class HistoryEntry(BaseModel):
    """One step of a registration's history: who did what, when, from where to where."""

    action: str
    from_status: RegistrationStatus | None
    to_status: RegistrationStatus
    from_shelter: str | None
    to_shelter: str | None
    actor: str
    at: datetime


class HistoryAnswer(BaseModel):
    """A registration's history, oldest first (append-only)."""

    registration_id: str
    items: list[HistoryEntry]


class BatchAnswer(BaseModel):
    """Where each household of a batch went, in the order sent (null: no open shelter took it)."""

    placed: list[str | None]
    households_placed: int
    households_unplaced: int
    already_placed: int = Field(description="households of this batch placed by an earlier request")


class SearchAnswer(BaseModel):
    """A reunification search's answer: never the person's location or details, unless they consented."""

    found: bool
    message: str
    shelter_hotline: str | None = Field(description="the shelter's public hotline, to call")
    shelter_name: str | None = Field(description="only when the person consented to share")
    registration_id: str | None = Field(description="only when the person consented to share")


class Bucket(BaseModel):
    """Arrivals and departures (people) in one hour, UTC."""

    hour: datetime
    arrivals: int
    departures: int


class Dashboard(BaseModel):
    """Capacity and occupancy (night: who sleeps there; day: who is there by day), accessible and
    pet places left, households, arrivals and departures by hour over the last day."""

    capacity: int
    day_capacity: int
    occupied: int
    day_free: int
    night_free: int
    accessible_free: int
    pet_free: int
    households: int
    checked_in_people: int
    planned_people: int
    shelters: int
    timeline: list[Bucket]


class ExpectedAnswer(BaseModel):
    """The incident's expected evacuees, and the shelters opened for them now."""

    incident_id: str
    expected_evacuees: int
    opened: list[str]


class ExerciseData(BaseModel):
    """What exercise data shelter-registry holds (DESIGN §8)."""

    incidents: int = Field(description="exercise incidents known to shelter-registry")
    shelters: int = Field(description="exercise shelters")
    registrations: int = Field(description="exercise registrations, whatever their status")
    evacuees_placed: int = Field(description="people of exercise registrations who hold a place now")


class Purged(BaseModel):
    """What the purge of exercise data removed; ``evacuees_released``: the people whose places
    were given back first."""

    incidents_purged: int
    registrations_purged: int
    evacuees_released: int
    shelters_purged: int


# --- queries -----------------------------------------------------------------------------------


async def shelter(db: Database, shelter_id: str) -> Shelter:
    """Raises NotFound (404)."""
    async with db.engine.connect() as conn:
        return await store.shelter(conn, shelter_id)


async def incident_exercise(db: Database, incident_id: str) -> bool:
    """Whether an incident is an exercise; raises NotFound (404) for one shelter-registry has not heard of."""
    async with db.engine.connect() as conn:
        row = await store.incident(conn, incident_id)
    if row is None:
        raise NotFound(f"no incident {incident_id!r} known to shelter-registry", field="incident_id")
    return bool(row.exercise)


async def incident_plan_facts(db: Database, incident_id: str) -> Any | None:
    """shelter-registry's copy of an incident (stage, category, level, the plan's radius), or None."""
    async with db.engine.connect() as conn:
        return await store.incident(conn, incident_id)


async def shelters_page(
    db: Database,
    *,
    status: list[ShelterStatus] | None = None,
    district: list[str] | None = None,
    kind: list[ShelterKind] | None = None,
    exercise: bool | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> ShelterPage:
    """Shelters matching every filter given (a list matches any of its values), by id. ``full``
    matches open shelters with no place left."""
    c = store.shelters.c
    q = select(store.shelters)
    if status:
        no_room = (c.status == ShelterStatus.open.value) & (c.occupied >= c.capacity)
        conds = []
        for st in status:
            if st is ShelterStatus.full:
                conds.append(no_room)
            elif st is ShelterStatus.open:
                conds.append((c.status == ShelterStatus.open.value) & (c.occupied < c.capacity))
            else:
                conds.append(c.status == st.value)
        q = q.where(or_(*conds))
    if district:
        q = q.where(c.district.in_(district))
    if kind:
        q = q.where(c.kind.in_([k.value for k in kind]))
    if exercise is not None:
        q = q.where(c.exercise.is_(exercise))
    if cursor:
        q = q.where(c.id > cursor)
    async with db.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(c.id).limit(limit + 1))).all()
    page = rows[:limit]
    return ShelterPage(
        items=[ShelterAnswer.of(store.to_shelter(r)) for r in page],
        next_cursor=page[-1].id if len(rows) > limit else None,
    )


async def registration(db: Database, registration_id: str, full: bool) -> RegistrationAnswer:
    """A registration with its people; raises NotFound (404)."""
    async with db.engine.connect() as conn:
        reg = await store.registration(conn, registration_id)
        p = store.persons.c
        rows = (
            await conn.execute(select(store.persons).where(p.registration_id == registration_id).order_by(p.id))
        ).all()
    persons = [
        PersonAnswer(
            name=r.name if full else mask_name(r.name),
            id_number=r.id_masked,
            phone=r.phone_masked,
            wheelchair=r.wheelchair,
            consent_to_share=r.consent_to_share,
        )
        for r in rows
    ]
    return RegistrationAnswer.of(reg, persons, full)


def placed(reg: Registration, people: list[Any]) -> RegistrationAnswer:
    """The answer to a placement, from what was just written (``people``: commands.Person), for a
    role that acts on it: names in full, numbers masked."""
    persons = [
        PersonAnswer(
            name=p.name.strip(),
            id_number=mask_id_number(p.id_number) if p.id_number else None,
            phone=mask_phone(p.phone) if p.phone else None,
            wheelchair=p.wheelchair,
            consent_to_share=p.consent_to_share,
        )
        for p in people
    ]
    return RegistrationAnswer.of(reg, persons, full=True)


async def registration_row(db: Database, registration_id: str) -> Registration:
    """The stored registration; raises NotFound (404)."""
    async with db.engine.connect() as conn:
        return await store.registration(conn, registration_id)


async def history(db: Database, registration_id: str) -> HistoryAnswer:
    """A registration's history, oldest first; raises NotFound (404)."""
    h = store.history.c
    async with db.engine.connect() as conn:
        await store.registration(conn, registration_id)
        rows = (
            await conn.execute(select(store.history).where(h.registration_id == registration_id).order_by(h.seq))
        ).all()
    return HistoryAnswer(
        registration_id=registration_id,
        items=[
            HistoryEntry(
                action=r.action,
                from_status=r.from_status,
                to_status=r.to_status,
                from_shelter=r.from_shelter,
                to_shelter=r.to_shelter,
                actor=r.actor,
                at=r.at,
            )
            for r in rows
        ],
    )


async def _timeline(conn: Any, where: Any, since: datetime) -> list[Bucket]:
    h, r = store.history.c, store.registrations.c
    q = (
        select(h.action, h.at, r.people)
        .select_from(store.history.join(store.registrations, r.id == h.registration_id))
        .where(where, h.at >= since, h.action.in_(["check_in", "check_out", "move"]))
    )
    buckets: dict[datetime, list[int]] = {}
    for action, at, people in await conn.execute(q):
        hour = at.replace(minute=0, second=0, microsecond=0)
        b = buckets.setdefault(hour, [0, 0])
        b[0 if action == "check_in" else 1] += people
    return [Bucket(hour=k, arrivals=v[0], departures=v[1]) for k, v in sorted(buckets.items())]


async def _people(conn: Any, where: Any) -> tuple[int, int, int]:
    r = store.registrations.c
    holds = sorted(s.value for s in HOLDS_PLACE)
    q = select(
        func.count().filter(r.status.in_(holds)),
        func.coalesce(func.sum(case((r.status == RegistrationStatus.checked_in.value, r.people), else_=0)), 0),
        func.coalesce(func.sum(case((r.status == RegistrationStatus.planned.value, r.people), else_=0)), 0),
    ).where(where)
    households, checked_in, planned = (await conn.execute(q)).one()
    return int(households), int(checked_in), int(planned)


def _dashboard(shelters: list[Shelter], people: tuple[int, int, int], timeline: list[Bucket]) -> Dashboard:
    capacity = sum(s.capacity for s in shelters)
    day = sum(s.day_capacity for s in shelters)
    occupied = sum(s.occupied for s in shelters)
    return Dashboard(
        capacity=capacity,
        day_capacity=day,
        occupied=occupied,
        day_free=day - occupied,
        night_free=capacity - occupied,
        accessible_free=sum(s.accessible_places - s.accessible_used for s in shelters),
        pet_free=sum(s.pet_places - s.pets_used for s in shelters),
        households=people[0],
        checked_in_people=people[1],
        planned_people=people[2],
        shelters=len(shelters),
        timeline=timeline,
    )


async def shelter_dashboard(db: Database, shelter_id: str) -> Dashboard:
    """One shelter's dashboard; raises NotFound (404)."""
    r, h = store.registrations.c, store.history.c
    since = utcnow() - timedelta(days=1)
    async with db.engine.connect() as conn:
        s = await store.shelter(conn, shelter_id)
        people = await _people(conn, r.shelter_id == shelter_id)
        timeline = await _timeline(conn, (h.to_shelter == shelter_id) | (h.from_shelter == shelter_id), since)
    return _dashboard([s], people, timeline)


async def incident_dashboard(db: Database, incident_id: str) -> Dashboard:
    """An incident's dashboard over the shelters its evacuees are in; raises NotFound (404) for an
    incident with neither a record nor a registration."""
    r = store.registrations.c
    since = utcnow() - timedelta(days=1)
    async with db.engine.connect() as conn:
        known = await store.incident(conn, incident_id)
        ids = [
            row[0] for row in await conn.execute(select(r.shelter_id).where(r.incident_id == incident_id).distinct())
        ]
        if known is None and not ids:
            raise NotFound(f"no incident {incident_id!r} known to shelter-registry", field="incident_id")
        c = store.shelters.c
        cond = c.id.in_(ids) | (c.opened_for == incident_id)
        shelters = [store.to_shelter(row) for row in await conn.execute(select(store.shelters).where(cond))]
        people = await _people(conn, r.incident_id == incident_id)
        timeline = await _timeline(conn, r.incident_id == incident_id, since)
    return _dashboard(shelters, people, timeline)


EXPORTED: tuple[str, ...] = (
    RegistrationStatus.planned.value,
    RegistrationStatus.checked_in.value,
    RegistrationStatus.checked_out.value,
)
"""Registrations whose people a PFIF export lists: a cancelled household never came, and a moved
one is listed under the registration it moved to (with the same record ids)."""


@dataclass(frozen=True, slots=True)
class PfifPage:
    """One page of an incident's PFIF export: the document and the cursor of the next page."""

    document: bytes
    next_cursor: str | None


async def pfif_page(
    db: Database,
    incident_id: str,
    *,
    domain: str,
    author: str,
    retention: timedelta,
    limit: int,
    cursor: int | None,
) -> PfifPage:
    """The incident's registered people as a PFIF 1.4 document, ``limit`` at a time by person,
    after ``cursor`` (the last person of the previous page). Raises NotFound (404)."""
    p, r, s = store.persons.c, store.registrations.c, store.shelters.c
    async with db.engine.connect() as conn:
        incident = await store.incident(conn, incident_id)
        if incident is None:
            raise NotFound(f"no incident {incident_id!r} known to shelter-registry", field="incident_id")
        q = (
            select(
                p.id,
                p.name,
                p.consent_to_share,
                r.id.label("registration_id"),
                r.changed_at,
                r.exercise,
                s.name_zh,
                s.name_en,
                s.hotline,
            )
            .select_from(store.persons.join(store.registrations, r.id == p.registration_id))
            .join(store.shelters, s.id == r.shelter_id)
            .where(r.incident_id == incident_id, r.status.in_(EXPORTED))
        )
        if cursor is not None:
            q = q.where(p.id > cursor)
        rows = (await conn.execute(q.order_by(p.id).limit(limit + 1))).all()
        page = rows[:limit]
        regs = sorted({row.registration_id for row in page})
        # The place of each person in the household, and the household's first registration.
        places: dict[int, int] = {}
        for i in range(0, len(regs), 500):
            members = select(p.id, p.registration_id).where(p.registration_id.in_(regs[i : i + 500]))
            seen: dict[str, int] = {}
            for pid, reg in (await conn.execute(members.order_by(p.registration_id, p.id))).all():
                seen[reg] = seen.get(reg, 0) + 1
                places[pid] = seen[reg]
        moved = select(r.id, r.moved_to, r.created_at).where(r.incident_id == incident_id)
        came_from: dict[str, str] = {}
        created: dict[str, datetime] = {}
        for rid, moved_to, created_at in (await conn.execute(moved)).all():
            created[rid] = created_at
            if moved_to is not None:
                came_from[moved_to] = rid
    expires = incident.closed_at + retention if incident.closed_at is not None else None

    def first(reg: str) -> str:
        hops = 0
        while reg in came_from and hops < 1000:  # a move chain; the bound guards a damaged one
            reg, hops = came_from[reg], hops + 1
        return reg

    persons = []
    for row in page:
        origin = first(row.registration_id)
        shown = f"{row.name_zh} ({row.name_en})" if row.name_en else row.name_zh
        persons.append(
            PfifPerson(
                record_key=f"{origin}.{places[row.id]}",
                full_name=row.name,
                registered_at=created[origin],
                changed_at=row.changed_at,
                hotline=row.hotline,
                shelter_name=shown if row.consent_to_share else None,
                expires_at=expires,
                exercise=bool(row.exercise),
            )
        )
    return PfifPage(
        document=pfif_document(persons, domain, author),
        next_cursor=str(page[-1].id) if len(rows) > limit else None,
    )


async def exercise_data(db: Database) -> ExerciseData:
    """How many exercise incidents, shelters and registrations there are, and how many exercise
    evacuees hold a place."""
    i, sh, r = store.incidents.c, store.shelters.c, store.registrations.c
    holds = sorted(s.value for s in HOLDS_PLACE)
    async with db.engine.connect() as conn:
        incidents = (await conn.execute(select(func.count()).where(i.exercise.is_(True)))).scalar_one()
        shelters = (await conn.execute(select(func.count()).where(sh.exercise.is_(True)))).scalar_one()
        registrations = (await conn.execute(select(func.count()).where(r.exercise.is_(True)))).scalar_one()
        placed = (
            await conn.execute(
                select(func.coalesce(func.sum(r.people), 0)).where(r.exercise.is_(True), r.status.in_(holds))
            )
        ).scalar_one()
    return ExerciseData(
        incidents=int(incidents), shelters=int(shelters), registrations=int(registrations), evacuees_placed=int(placed)
    )
