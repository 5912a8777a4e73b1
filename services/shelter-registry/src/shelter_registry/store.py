"""shelter-registry's tables and every write (and every read a handler decides on), SQLAlchemy Core.

The database guards every count: a household takes its places with one conditional UPDATE
(``... WHERE status = 'open' AND occupied + :people <= capacity AND ...``), and CHECK constraints
(``occupied <= capacity``, accessible and pet places likewise) refuse whatever slips past, whatever
replica or operator raced for the last places. Personal data is stored protected: ID and phone
numbers only as keyed fingerprints (search) and masked (display).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import BigId, UTCDateTime, new_metadata, scene_of
from ecs.errors import Conflict, NotFound, StaleVersion

from .domain import (
    HOLDS_PLACE,
    Needs,
    RegistrationStatus,
    Room,
    ShelterStatus,
)

metadata = new_metadata()

shelters = Table(
    "shelters",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name_zh", String(200), nullable=False),
    Column("name_en", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("district", String(64), nullable=False),
    Column("address", String(300), nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("entrances", JSON, nullable=False),  # [{"lat", "lon", "name"}]
    Column("stay_class", String(16), nullable=False),
    Column("area_m2", Float, nullable=False),
    Column("m2_per_person", Float, nullable=False),
    Column("capacity", Integer, nullable=False),  # night: people who sleep there
    Column("day_capacity", Integer, nullable=False),
    Column("accessible_places", Integer, nullable=False),
    Column("pet_places", Integer, nullable=False),
    Column("facilities", JSON, nullable=False),
    Column("hotline", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("occupied", Integer, nullable=False),
    Column("accessible_used", Integer, nullable=False),
    Column("pets_used", Integer, nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("opened_for", String(32), nullable=True),  # the incident whose evacuation opened it
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    CheckConstraint("occupied >= 0 AND occupied <= capacity", name="occupied_within_capacity"),
    CheckConstraint("accessible_used >= 0 AND accessible_used <= accessible_places", name="accessible_within_places"),
    CheckConstraint("pets_used >= 0 AND pets_used <= pet_places", name="pets_within_places"),
    CheckConstraint("capacity >= 0 AND day_capacity >= capacity", name="capacity_sane"),
    CheckConstraint("status <> 'closed' OR occupied = 0", name="closed_is_empty"),
    Index("ix_shelters_status", "status", "exercise"),
)

registrations = Table(
    "registrations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("shelter_id", String(64), nullable=False),
    Column("incident_id", String(32), nullable=True),
    Column("status", String(16), nullable=False),
    Column("people", Integer, nullable=False),
    Column("wheelchairs", Integer, nullable=False),
    Column("pets", Integer, nullable=False),
    Column("origin_address", String(300), nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("moved_to", String(32), nullable=True),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    # A batch names each household (the zone's list); placing it again places it once.
    Column("household_ref", String(128), nullable=True),
    CheckConstraint("people >= 1 AND wheelchairs >= 0 AND wheelchairs <= people AND pets >= 0", name="needs_sane"),
    Index("ix_registrations_shelter", "shelter_id", "status"),
    Index("ix_registrations_incident", "incident_id", "status"),
    Index("uq_registrations_household_ref", "incident_id", "household_ref", unique=True),
)

persons = Table(
    "persons",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("registration_id", String(32), nullable=False),
    Column("name", String(100), nullable=False),
    Column("name_key", String(64), nullable=False),
    Column("id_key", String(64), nullable=True),
    Column("id_masked", String(24), nullable=True),
    Column("phone_key", String(64), nullable=True),
    Column("phone_masked", String(24), nullable=True),
    Column("wheelchair", Boolean, nullable=False),
    Column("consent_to_share", Boolean, nullable=False),
    Index("ix_persons_registration", "registration_id"),
    Index("ix_persons_name_phone", "name_key", "phone_key"),
    Index("ix_persons_name_id", "name_key", "id_key"),
)

history = Table(
    "registration_history",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("registration_id", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("from_shelter", String(64), nullable=True),
    Column("to_shelter", String(64), nullable=True),
    Column("actor", String(255), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_history_registration", "registration_id", "seq"),
    Index("ix_history_shelter_at", "to_shelter", "at"),
)

searches = Table(
    "reunification_searches",
    metadata,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("searcher", String(255), nullable=False),
    Column("by", String(8), nullable=False),  # phone | id
    Column("found", Boolean, nullable=False),
    Column("registration_id", String(32), nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_searches_searcher_at", "searcher", "at"),
)

# shelter-registry's own copy of the incident facts it acts on, kept from incident-intake's events.
incidents = Table(
    "incidents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("stage", String(24), nullable=False),
    Column("exercise", Boolean, nullable=False),
    Column("lat", Float, nullable=False),
    Column("lon", Float, nullable=False),
    Column("expected_evacuees", Integer, nullable=True),
    Column("settled", Boolean, nullable=True),  # the last settled fact published
    Column("version", Integer, nullable=False),
    Column("closed_at", UTCDateTime, nullable=True),
    Column("category", String(32), nullable=True),
    Column("level", Integer, nullable=True),
    # The response plan's evacuation radius at the incident's level (0: the plan does not
    # evacuate; null: not asked yet). The estimate of evacuees follows it.
    Column("evacuation_radius_m", Integer, nullable=True),
)

_HOLDS = sorted(s.value for s in HOLDS_PLACE)


# --- shelters -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shelter:
    """A shelter row: its facts, capacity and what it holds now."""

    id: str
    name_zh: str
    name_en: str
    kind: str
    district: str
    address: str
    lat: float
    lon: float
    entrances: list[dict[str, Any]]
    stay_class: str
    area_m2: float
    m2_per_person: float
    capacity: int
    day_capacity: int
    accessible_places: int
    pet_places: int
    facilities: list[str]
    hotline: str
    status: ShelterStatus
    occupied: int
    accessible_used: int
    pets_used: int
    exercise: bool
    opened_for: str | None
    version: int
    created_at: datetime
    changed_at: datetime

    def room(self) -> Room:
        """What the shelter can still take."""
        return Room(
            self.id,
            self.lat,
            self.lon,
            self.capacity - self.occupied,
            self.accessible_places - self.accessible_used,
            self.pet_places - self.pets_used,
        )


def to_shelter(row: Row[Any]) -> Shelter:
    d = dict(row._mapping)
    d["status"] = ShelterStatus(d["status"])
    return Shelter(**d)


async def insert_shelters(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Add shelters (all or none). Raises Conflict (409) when an id is taken."""
    try:
        await conn.execute(shelters.insert(), list(rows))
    except IntegrityError:
        raise Conflict("a shelter with one of these ids exists", field="id") from None


async def shelter(conn: AsyncConnection, shelter_id: str, for_update: bool = False) -> Shelter:
    """Raises NotFound (404)."""
    q = select(shelters).where(shelters.c.id == shelter_id)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = (await conn.execute(q)).first()
    if row is None:
        raise NotFound(f"no shelter {shelter_id!r}", field="shelter_id")
    return to_shelter(row)


async def set_status(
    conn: AsyncConnection,
    shelter_id: str,
    expected: ShelterStatus,
    target: ShelterStatus,
    version: int | None,
    now: datetime,
    opened_for: str | None = None,
) -> Shelter:
    """Move a shelter from ``expected`` to ``target`` in one conditional UPDATE (and, to ``closed``,
    only while empty). Raises StaleVersion (409) when it changed meanwhile."""
    c = shelters.c
    conds = [c.id == shelter_id, c.status == expected.value]
    if version is not None:
        conds.append(c.version == version)
    if target is ShelterStatus.closed:
        conds.append(c.occupied == 0)
    values: dict[str, Any] = {"status": target.value, "version": c.version + 1, "changed_at": now}
    if opened_for is not None:
        values["opened_for"] = opened_for
    row = (await conn.execute(update(shelters).where(*conds).values(**values).returning(*shelters.c))).first()
    if row is None:
        current = await shelter(conn, shelter_id)
        raise StaleVersion(
            f"shelter {shelter_id} changed meanwhile (now {current.status.value}, version {current.version},"
            f" {current.occupied} people)",
            version=current.version,
        )
    return to_shelter(row)


async def update_shelter(
    conn: AsyncConnection, shelter_id: str, version: int, changes: dict[str, Any], now: datetime
) -> Shelter:
    """Change a shelter's facts if it is still at ``version``. Raises StaleVersion (409), or
    Conflict (409) when a lower capacity would leave fewer places than people already there."""
    c = shelters.c
    stmt = (
        update(shelters)
        .where(c.id == shelter_id, c.version == version)
        .values(**changes, version=c.version + 1, changed_at=now)
        .returning(*shelters.c)
    )
    try:
        row = (await conn.execute(stmt)).first()
    except IntegrityError:
        raise Conflict("the change would leave fewer places than the people already there", field="capacity") from None
    if row is None:
        current = await shelter(conn, shelter_id)
        raise StaleVersion(f"shelter {shelter_id} is at version {current.version}", version=current.version)
    return to_shelter(row)


async def open_rooms(conn: AsyncConnection, exercise: bool, needs: Needs | None = None) -> list[Room]:
    """What every open shelter of the same world (live or exercise) can still take; with ``needs``,
    only the shelters that could take them now."""
    c = shelters.c
    free = c.capacity - c.occupied
    accessible, pets = c.accessible_places - c.accessible_used, c.pet_places - c.pets_used
    q = select(c.id, c.lat, c.lon, free, accessible, pets).where(
        c.status == ShelterStatus.open.value, c.exercise.is_(exercise), c.occupied < c.capacity
    )
    if needs is not None:
        q = q.where(free >= needs.people, accessible >= needs.wheelchairs, pets >= needs.pets)
    return [Room(*r) for r in await conn.execute(q)]


async def largest_room(conn: AsyncConnection, exercise: bool, needs: Needs) -> int:
    """The most people one open shelter of the same world could take with ``needs``' wheelchairs
    and pets (for the refusal of a household none takes)."""
    c = shelters.c
    q = select(func.max(c.capacity - c.occupied)).where(
        c.status == ShelterStatus.open.value,
        c.exercise.is_(exercise),
        c.accessible_places - c.accessible_used >= needs.wheelchairs,
        c.pet_places - c.pets_used >= needs.pets,
    )
    return int((await conn.execute(q)).scalar_one() or 0)


async def standby_rooms(conn: AsyncConnection, exercise: bool) -> list[Room]:
    """Standby shelters of the same world, as rooms (their whole capacity free)."""
    c = shelters.c
    q = select(shelters).where(c.status == ShelterStatus.standby.value, c.exercise.is_(exercise))
    return [to_shelter(r).room() for r in await conn.execute(q)]


async def take_places(conn: AsyncConnection, shelter_id: str, needs: Needs, exercise: bool, now: datetime) -> bool:
    """Take ``needs`` places in an open shelter of the same world, if they are all still free:
    one conditional UPDATE, so of two racing takers of the last places one gets False."""
    c = shelters.c
    stmt = (
        update(shelters)
        .where(
            c.id == shelter_id,
            c.status == ShelterStatus.open.value,
            c.exercise.is_(exercise),
            c.occupied + needs.people <= c.capacity,
            c.accessible_used + needs.wheelchairs <= c.accessible_places,
            c.pets_used + needs.pets <= c.pet_places,
        )
        .values(
            occupied=c.occupied + needs.people,
            accessible_used=c.accessible_used + needs.wheelchairs,
            pets_used=c.pets_used + needs.pets,
            changed_at=now,
        )
        .returning(c.id)
    )
    return (await conn.execute(stmt)).first() is not None


def _claim_nearest_statement() -> Any:
    """``UPDATE shelters SET occupied = occupied + :people, ... WHERE id = (the nearest open shelter
    of the world that takes the household, locked) AND <the same guards> RETURNING id``: built once.

    The subquery orders by the squared equirectangular distance (``nearest_first``'s order, ties
    by id) and locks the row it picks (``FOR UPDATE``, PostgreSQL; SQLite's writers are serialised
    anyway): a racing transaction that filled that shelter first makes PostgreSQL re-check the
    row and go on to the next nearest. The UPDATE repeats every guard, and the CHECKs stay the
    last word."""
    c = shelters.c
    people, wheelchairs, pets = (
        bindparam("b_people", type_=Integer),
        bindparam("b_wheelchairs", type_=Integer),
        bindparam("b_pets", type_=Integer),
    )
    lat, lon, k = bindparam("b_lat", type_=Float), bindparam("b_lon", type_=Float), bindparam("b_k", type_=Float)

    def guards() -> Any:
        return and_(
            c.status == ShelterStatus.open.value,
            c.exercise == bindparam("b_exercise", type_=Boolean),
            c.occupied + people <= c.capacity,
            c.accessible_used + wheelchairs <= c.accessible_places,
            c.pets_used + pets <= c.pet_places,
        )

    distance = (c.lat - lat) * (c.lat - lat) + k * (c.lon - lon) * (c.lon - lon)
    nearest = select(c.id).where(guards()).order_by(distance, c.id).limit(1).with_for_update()
    return (
        update(shelters)
        .where(c.id == nearest.scalar_subquery(), guards())
        .values(
            occupied=c.occupied + people,
            accessible_used=c.accessible_used + wheelchairs,
            pets_used=c.pets_used + pets,
            changed_at=bindparam("b_now", type_=UTCDateTime),
        )
        .returning(c.id)
    )


_CLAIM_NEAREST = _claim_nearest_statement()


async def claim_nearest(
    conn: AsyncConnection, lat: float, lon: float, needs: Needs, exercise: bool, now: datetime
) -> str | None:
    """Take ``needs`` places in the nearest open shelter of the same world (``exercise``) that
    takes the whole household, in one statement (one round trip): the shelter's id, or None when
    no open shelter took it. ``lat``/``lon`` are WGS-84 degrees; nearest is ``nearest_first``'s
    order (walking time, ties by id)."""
    params = {
        "b_people": needs.people,
        "b_wheelchairs": needs.wheelchairs,
        "b_pets": needs.pets,
        "b_lat": lat,
        "b_lon": lon,
        "b_k": math.cos(math.radians(lat)) ** 2,
        "b_exercise": exercise,
        "b_now": now,
    }
    return (await conn.execute(_CLAIM_NEAREST, params)).scalar_one_or_none()


_PLACE_NEAREST_PG = text(
    """
WITH claim AS (
    UPDATE shelters
    SET occupied = occupied + CAST(:people AS integer),
        accessible_used = accessible_used + CAST(:wheelchairs AS integer),
        pets_used = pets_used + CAST(:pets AS integer),
        changed_at = CAST(:now AS timestamptz)
    WHERE id = (
        SELECT id FROM shelters
        WHERE status = 'open' AND exercise = CAST(:exercise AS boolean)
            AND occupied + CAST(:people AS integer) <= capacity
            AND accessible_used + CAST(:wheelchairs AS integer) <= accessible_places
            AND pets_used + CAST(:pets AS integer) <= pet_places
        ORDER BY (lat - CAST(:lat AS float8)) * (lat - CAST(:lat AS float8))
            + CAST(:k AS float8) * (lon - CAST(:lon AS float8)) * (lon - CAST(:lon AS float8)), id
        LIMIT 1
        FOR UPDATE
    )
    AND status = 'open' AND exercise = CAST(:exercise AS boolean)
    AND occupied + CAST(:people AS integer) <= capacity
    AND accessible_used + CAST(:wheelchairs AS integer) <= accessible_places
    AND pets_used + CAST(:pets AS integer) <= pet_places
    RETURNING id
), registration AS (
    INSERT INTO registrations (id, shelter_id, incident_id, status, people, wheelchairs, pets, origin_address,
        exercise, moved_to, version, created_at, changed_at, household_ref)
    SELECT CAST(:registration_id AS varchar), claim.id, CAST(:incident_id AS varchar), 'planned',
        CAST(:people AS integer), CAST(:wheelchairs AS integer), CAST(:pets AS integer),
        CAST(:origin_address AS varchar), CAST(:exercise AS boolean), NULL, 1,
        CAST(:now AS timestamptz), CAST(:now AS timestamptz), NULL
    FROM claim
    RETURNING shelter_id
), placed AS (
    INSERT INTO registration_history (registration_id, action, from_status, to_status, from_shelter, to_shelter,
        actor, at)
    SELECT CAST(:registration_id AS varchar), CAST(:action AS varchar), NULL, 'planned', NULL,
        registration.shelter_id, CAST(:actor AS varchar), CAST(:now AS timestamptz)
    FROM registration
), people AS (
    INSERT INTO persons (registration_id, name, name_key, id_key, id_masked, phone_key, phone_masked, wheelchair,
        consent_to_share)
    SELECT CAST(:registration_id AS varchar), p.name, p.name_key, p.id_key, p.id_masked, p.phone_key,
        p.phone_masked, p.wheelchair, p.consent_to_share
    FROM registration, unnest(
        CAST(:names AS varchar[]), CAST(:name_keys AS varchar[]), CAST(:id_keys AS varchar[]),
        CAST(:id_masks AS varchar[]), CAST(:phone_keys AS varchar[]), CAST(:phone_masks AS varchar[]),
        CAST(:wheelchairs_each AS boolean[]), CAST(:consents AS boolean[])
    ) WITH ORDINALITY AS p(name, name_key, id_key, id_masked, phone_key, phone_masked, wheelchair,
        consent_to_share, n)
    ORDER BY p.n
)
SELECT shelter_id FROM registration
"""
)
"""``claim_nearest``'s UPDATE, the registration, its people and its history in one PostgreSQL
statement (data-modifying CTEs): nothing is written unless the claim took a shelter."""


async def place_nearest(
    conn: AsyncConnection,
    row: dict[str, Any],
    people: Sequence[dict[str, Any]],
    lat: float,
    lon: float,
    action: str,
    actor: str,
) -> str | None:
    """PostgreSQL: claim the nearest open shelter that takes the household (as ``claim_nearest``)
    and write its registration ``row`` (``shelter_id`` ignored), its ``people`` (persons rows,
    in order) and its history line, in one statement and one round trip. Returns the shelter's
    id, or None (nothing written) when no open shelter took the household."""
    params = {
        "people": row["people"],
        "wheelchairs": row["wheelchairs"],
        "pets": row["pets"],
        "exercise": row["exercise"],
        "lat": lat,
        "lon": lon,
        "k": math.cos(math.radians(lat)) ** 2,
        "now": row["created_at"],
        "registration_id": row["id"],
        "incident_id": row["incident_id"],
        "origin_address": row["origin_address"],
        "action": action,
        "actor": actor,
        "names": [p["name"] for p in people],
        "name_keys": [p["name_key"] for p in people],
        "id_keys": [p["id_key"] for p in people],
        "id_masks": [p["id_masked"] for p in people],
        "phone_keys": [p["phone_key"] for p in people],
        "phone_masks": [p["phone_masked"] for p in people],
        "wheelchairs_each": [p["wheelchair"] for p in people],
        "consents": [p["consent_to_share"] for p in people],
    }
    return (await conn.execute(_PLACE_NEAREST_PG, params)).scalar_one_or_none()


async def give_back_places(conn: AsyncConnection, shelter_id: str, needs: Needs, now: datetime) -> None:
    """Free ``needs`` places (a check-out, a move, a cancellation); the CHECKs refuse going below 0."""
    c = shelters.c
    await conn.execute(
        update(shelters)
        .where(c.id == shelter_id)
        .values(
            occupied=c.occupied - needs.people,
            accessible_used=c.accessible_used - needs.wheelchairs,
            pets_used=c.pets_used - needs.pets,
            changed_at=now,
        )
    )


# --- registrations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    """A household's registration at one shelter."""

    id: str
    shelter_id: str
    incident_id: str | None
    status: RegistrationStatus
    people: int
    wheelchairs: int
    pets: int
    origin_address: str
    exercise: bool
    moved_to: str | None
    version: int
    created_at: datetime
    changed_at: datetime
    household_ref: str | None

    @property
    def needs(self) -> Needs:
        """What the household holds in its shelter."""
        return Needs(self.people, self.wheelchairs, self.pets)


def _registration(row: Row[Any]) -> Registration:
    d = dict(row._mapping)
    d["status"] = RegistrationStatus(d["status"])
    return Registration(**d)


async def insert_registration(conn: AsyncConnection, row: dict[str, Any], people: Sequence[dict[str, Any]]) -> None:
    """A registration and its people."""
    await conn.execute(registrations.insert(), [row])
    if people:
        await conn.execute(persons.insert(), [{**p, "registration_id": row["id"]} for p in people])


async def insert_registrations(db: Any, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Many registrations at once (a batch), no people yet."""
    await db.insert_many(conn, registrations, rows)


async def placed_refs(conn: AsyncConnection, incident_id: str | None, refs: Sequence[str]) -> dict[str, str]:
    """Of these household references of an incident, those already placed: ``{ref: shelter}``."""
    r = registrations.c
    out: dict[str, str] = {}
    for i in range(0, len(refs), 1000):
        part = refs[i : i + 1000]
        q = select(r.household_ref, r.shelter_id).where(r.household_ref.in_(part))
        q = q.where(r.incident_id == incident_id) if incident_id is not None else q.where(r.incident_id.is_(None))
        out.update({ref: s for ref, s in await conn.execute(q)})
    return out


async def copy_people(conn: AsyncConnection, from_registration: str, to_registration: str) -> None:
    """The people of a moved household go with it to its new registration."""
    p = persons.c
    cols = [c for c in persons.c if c.name not in ("id", "registration_id")]
    src = (
        select(*cols, literal(to_registration).label("registration_id"))
        .where(p.registration_id == from_registration)
        .order_by(p.id)  # the household's order stays (PFIF record ids count on it)
    )
    await conn.execute(persons.insert().from_select([c.name for c in cols] + ["registration_id"], src))


async def registration(conn: AsyncConnection, registration_id: str) -> Registration:
    """Raises NotFound (404)."""
    row = (await conn.execute(select(registrations).where(registrations.c.id == registration_id))).first()
    if row is None:
        raise NotFound(f"no registration {registration_id!r}", field="registration_id")
    return _registration(row)


async def move_registration(
    conn: AsyncConnection,
    reg: Registration,
    target: RegistrationStatus,
    now: datetime,
    version: int | None = None,
    moved_to: str | None = None,
) -> Registration:
    """Change a registration's status if it is still what was loaded (and at ``version`` when
    given). Raises StaleVersion (409)."""
    r = registrations.c
    conds = [r.id == reg.id, r.status == reg.status.value]
    if version is not None:
        conds.append(r.version == version)
    stmt = (
        update(registrations)
        .where(*conds)
        .values(status=target.value, version=r.version + 1, changed_at=now, moved_to=moved_to)
        .returning(*registrations.c)
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        current = await registration(conn, reg.id)
        raise StaleVersion(
            f"registration {reg.id} changed meanwhile (now {current.status.value}, version {current.version})",
            version=current.version,
        )
    return _registration(row)


async def record_history(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Append to the registrations' history (never updated, never deleted)."""
    if rows:
        await conn.execute(history.insert(), list(rows))


async def holding(conn: AsyncConnection, incident_id: str) -> int:
    """People of an incident's registrations that still hold a place."""
    r = registrations.c
    q = select(func.coalesce(func.sum(r.people), 0)).where(r.incident_id == incident_id, r.status.in_(_HOLDS))
    return int((await conn.execute(q)).scalar_one())


# --- reunification ------------------------------------------------------------------------------


async def find_person(
    conn: AsyncConnection, name_key: str, phone_key: str | None, id_key: str | None
) -> list[tuple[str, bool, str, str, bool]]:
    """People matching the name and the phone or ID fingerprint, newest registration first:
    ``(registration id, consent, shelter id, registration status, exercise)``."""
    p, r = persons.c, registrations.c
    q = select(p.registration_id, p.consent_to_share, r.shelter_id, r.status, r.exercise).join(
        registrations, r.id == p.registration_id
    )
    q = q.where(p.name_key == name_key)
    q = q.where(p.phone_key == phone_key) if phone_key is not None else q.where(p.id_key == id_key)
    return [tuple(row) for row in await conn.execute(q.order_by(r.created_at.desc()))]  # type: ignore[misc]


async def searches_since(conn: AsyncConnection, searcher: str, since: datetime) -> int:
    """Searches a searcher made since ``since``: the rate limit counts them, across replicas."""
    s = searches.c
    q = select(func.count()).select_from(searches).where(s.searcher == searcher, s.at >= since)
    return int((await conn.execute(q)).scalar_one())


async def log_search(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Audit one search (who, when, by what, found or not; never the facts searched with)."""
    await conn.execute(searches.insert(), [row])


async def forget_people(conn: AsyncConnection, closed_before: datetime) -> int:
    """Delete the people (names, fingerprints, masked numbers) of the registrations of incidents
    closed before ``closed_before``; the counts, history and audit stay. Returns people deleted."""
    r, i = registrations.c, incidents.c
    expired = select(r.id).join(incidents, i.id == r.incident_id).where(i.closed_at < closed_before)
    result = await conn.execute(delete(persons).where(persons.c.registration_id.in_(expired)))
    return int(result.rowcount or 0)


# --- incidents ----------------------------------------------------------------------------------


async def move_incident_registrations(
    conn: AsyncConnection, from_incident: str, to_incident: str, now: datetime
) -> tuple[int, int]:
    """Every registration of ``from_incident`` belongs to ``to_incident`` from now on, as it
    stands (its shelter, status and people; its version goes up), except a household the absorbing
    incident already has under the same ``household_ref``: that one stays, so a reference names one
    household per incident. Returns (moved, stayed)."""
    r = registrations.c
    other = registrations.alias("other")
    taken = exists().where(other.c.incident_id == to_incident, other.c.household_ref == r.household_ref)
    moved = await conn.execute(
        update(registrations)
        .where(r.incident_id == from_incident, or_(r.household_ref.is_(None), ~taken))
        .values(incident_id=to_incident, version=r.version + 1, changed_at=now)
    )
    stayed = await conn.scalar(select(func.count()).select_from(registrations).where(r.incident_id == from_incident))
    return int(moved.rowcount), int(stayed or 0)


async def incident(conn: AsyncConnection, incident_id: str) -> Row[Any] | None:
    """shelter-registry's copy of an incident, or None."""
    return (await conn.execute(select(incidents).where(incidents.c.id == incident_id))).first()


async def upsert_incident(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    """Keep an incident's facts; an event older than the stored version changes nothing. True
    when the row changed."""
    c = incidents.c
    current = await incident(conn, row["id"])
    if current is None:
        await conn.execute(incidents.insert(), [row])
        return True
    if row["version"] < current.version:
        return False
    kept = ("id", "expected_evacuees", "settled")
    changes = {k: v for k, v in row.items() if k not in kept and (v is not None or k in _ALWAYS_SET)}
    await conn.execute(update(incidents).where(c.id == row["id"]).values(**changes))
    return True


_ALWAYS_SET = frozenset({"closed_at"})
"""Incident facts an event sets even to null; the others (category, level, the plan's radius) an
event leaves as they were when it does not carry them."""


async def follow_level(conn: AsyncConnection, incident_id: str, level: int, version: int, radius_m: int | None) -> bool:
    """Keep an incident's new level (and the plan's radius at it, when known) unless a newer event
    already changed the incident. True when the row changed."""
    c = incidents.c
    values: dict[str, Any] = {"level": level, "version": version}
    if radius_m is not None:
        values["evacuation_radius_m"] = radius_m
    stmt = update(incidents).where(c.id == incident_id, c.version <= version).values(**values).returning(c.id)
    return (await conn.execute(stmt)).first() is not None


async def follow_category(
    conn: AsyncConnection, incident_id: str, category: str, version: int, radius_m: int | None
) -> bool:
    """A medical-only incident became its scene (ecs.db.scene_of), with the scene plan's radius at
    its level when known, unless a newer event already changed the incident. True when the row
    changed."""
    c = incidents.c
    values: dict[str, Any] = {"category": scene_of(c.category, category), "version": version}
    if radius_m is not None:
        values["evacuation_radius_m"] = radius_m
    stmt = update(incidents).where(c.id == incident_id, c.version <= version).values(**values).returning(c.id)
    return (await conn.execute(stmt)).first() is not None


async def set_expected(conn: AsyncConnection, incident_id: str, expected: int) -> None:
    """The operator's estimate of an incident's evacuees."""
    await conn.execute(update(incidents).where(incidents.c.id == incident_id).values(expected_evacuees=expected))


async def mark_settled(conn: AsyncConnection, incident_id: str, settled: bool) -> bool:
    """Record the settled fact about to be published; False when it was already the last one."""
    c = incidents.c
    stmt = (
        update(incidents)
        .where(c.id == incident_id, (c.settled.is_(None)) | (c.settled.is_not(settled)))
        .values(settled=settled)
        .returning(c.id)
    )
    return (await conn.execute(stmt)).first() is not None


# --- exercise data ------------------------------------------------------------------------------


async def exercise_incident_ids(conn: AsyncConnection) -> list[str]:
    """The exercise incidents shelter-registry knows, by id."""
    rows = await conn.execute(select(incidents.c.id).where(incidents.c.exercise.is_(True)).order_by(incidents.c.id))
    return list(rows.scalars())


async def free_exercise_places(conn: AsyncConnection, now: datetime) -> int:
    """Give back every place exercise registrations hold, shelter by shelter (exercise shelters
    only: an exercise household never takes a live place); returns the people. The CHECKs refuse
    a count going below 0, so the caller's transaction rolls back rather than leave one wrong."""
    r = registrations.c
    rows = (
        await conn.execute(
            select(r.shelter_id, func.sum(r.people), func.sum(r.wheelchairs), func.sum(r.pets))
            .where(r.exercise.is_(True), r.status.in_(_HOLDS))
            .group_by(r.shelter_id)
            .order_by(r.shelter_id)
        )
    ).all()
    c = shelters.c
    freed = 0
    for shelter_id, people, wheelchairs, pets in rows:
        res = await conn.execute(
            update(shelters)
            .where(c.id == shelter_id, c.exercise.is_(True))
            .values(
                occupied=c.occupied - people,
                accessible_used=c.accessible_used - wheelchairs,
                pets_used=c.pets_used - pets,
                changed_at=now,
            )
        )
        if res.rowcount != 1:
            raise Conflict(
                f"exercise registrations hold places in shelter {shelter_id!r}, which is not an exercise shelter"
            )
        freed += int(people)
    return freed


async def delete_exercise_registrations(conn: AsyncConnection) -> int:
    """Forget every exercise registration with its people, history and the searches that found
    it (free their places first: free_exercise_places); returns how many registrations."""
    ids = select(registrations.c.id).where(registrations.c.exercise.is_(True))
    await conn.execute(delete(persons).where(persons.c.registration_id.in_(ids)))
    await conn.execute(delete(history).where(history.c.registration_id.in_(ids)))
    await conn.execute(delete(searches).where(searches.c.registration_id.in_(ids)))
    result = await conn.execute(delete(registrations).where(registrations.c.exercise.is_(True)))
    return int(result.rowcount or 0)


async def delete_exercise_incidents(conn: AsyncConnection) -> int:
    """Forget shelter-registry's copy of every exercise incident; an exercise shelter one opened
    no longer names it. Returns how many incidents."""
    ids = select(incidents.c.id).where(incidents.c.exercise.is_(True))
    await conn.execute(
        update(shelters).where(shelters.c.exercise.is_(True), shelters.c.opened_for.in_(ids)).values(opened_for=None)
    )
    result = await conn.execute(delete(incidents).where(incidents.c.exercise.is_(True)))
    return int(result.rowcount or 0)


async def delete_exercise_shelters(conn: AsyncConnection) -> int:
    """Forget every exercise shelter (its registrations must be gone:
    delete_exercise_registrations); returns how many."""
    result = await conn.execute(delete(shelters).where(shelters.c.exercise.is_(True)))
    return int(result.rowcount or 0)


__all__ = ["Registration", "Shelter", "metadata"]
