"""shelter-registry's pure rules: the shelter and registration state machines, capacity from area,
placing households whole, identity-document and phone checks, masking. No I/O.

Sources:
- GB 21734-2008 《地震应急避难场所 场址及配套设施》 §5.4: more than 1.5 m² of living area a person;
  shelters classed by the length of stay (≤ 10 days, 10–30 days, > 30 days).
- GB 11643-1999 《公民身份号码》: the 18-character resident ID number and its ISO 7064 MOD 11-2
  check character.
- GB/T 33744 (registration of people at emergency shelters): the registration form's fields.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from ecs.errors import AppError, Conflict, IllegalTransition, InvalidInput
from ecs.geo import haversine_m

SERVICE = "shelter-registry"

GB21734_M2_PER_PERSON = 1.5
"""GB 21734-2008 §5.4: living area a person, in m², at the least."""
WALKING_SPEED_M_S = 1.2
"""A walking evacuee with children or elders, in metres a second (the usual planning figure)."""
ROAD_FACTOR = 1.3
"""A straight line times this factor approximates the walking route in a city grid."""


class ShelterKind(StrEnum):
    """What the shelter is (避难场所 types in Shanghai's shelter planning)."""

    park = "park"
    square = "square"
    school = "school"
    stadium = "stadium"
    sports_hall = "sports_hall"
    community_centre = "community_centre"
    other = "other"


class StayClass(StrEnum):
    """GB 21734-2008 classes a shelter by how long people may stay."""

    short_term = "short_term"  # ≤ 10 days
    medium_term = "medium_term"  # 10–30 days
    long_term = "long_term"  # > 30 days


class ShelterStatus(StrEnum):
    """planned → standby → open → (full) → closing → closed; ``out_of_service`` takes no new people
    while the current ones stay. ``full`` is derived from the occupancy, never stored."""

    planned = "planned"
    standby = "standby"
    open = "open"
    full = "full"
    closing = "closing"
    closed = "closed"
    out_of_service = "out_of_service"


class ShelterAction(StrEnum):
    """What an operator (or the automation) does to a shelter's status."""

    make_ready = "make_ready"
    open = "open"
    begin_closing = "begin_closing"
    close = "close"
    take_out_of_service = "take_out_of_service"


S, A = ShelterStatus, ShelterAction

TRANSITIONS: dict[tuple[ShelterStatus, ShelterAction], ShelterStatus] = {
    (S.planned, A.make_ready): S.standby,
    (S.closed, A.make_ready): S.standby,
    (S.standby, A.open): S.open,
    (S.closing, A.open): S.open,
    (S.out_of_service, A.open): S.open,
    (S.open, A.begin_closing): S.closing,
    (S.full, A.begin_closing): S.closing,
    (S.out_of_service, A.begin_closing): S.closing,
    (S.closing, A.close): S.closed,
    (S.standby, A.take_out_of_service): S.out_of_service,
    (S.open, A.take_out_of_service): S.out_of_service,
    (S.full, A.take_out_of_service): S.out_of_service,
    (S.closing, A.take_out_of_service): S.out_of_service,
}
"""The shelter's status machine: ``TRANSITIONS[(status, action)]`` is the next status. ``full``
behaves as ``open`` (it is ``open`` with no place left)."""

TAKES_PEOPLE: frozenset[ShelterStatus] = frozenset({S.open})
"""Only an open shelter takes new people (a full one is open in the store)."""
CHECKS_IN: frozenset[ShelterStatus] = frozenset({S.open, S.closing})
"""A household already placed checks in at an open or closing shelter; not at a closed or
out-of-service one."""


def next_status(status: ShelterStatus, action: ShelterAction, occupied: int = 0) -> ShelterStatus:
    """The status after ``action``.

    Raises IllegalTransition (409) naming the actions allowed from ``status``, or, for ``close``
    with people in the shelter, naming how many (a shelter closes only when it is empty).
    """
    target = TRANSITIONS.get((status, action))
    if target is None:
        allowed = sorted(a.value for (s, a) in TRANSITIONS if s == status)
        raise IllegalTransition(
            f"a shelter that is {status.value} cannot {action.value}; allowed: {', '.join(allowed) or 'nothing'}",
            shelter_status=status.value,
            allowed=allowed,
        )
    if target is S.closed and occupied > 0:
        raise IllegalTransition(
            f"the shelter still holds {occupied} people; check them out or move them first", occupied=occupied
        )
    return target


def shown_status(status: ShelterStatus, occupied: int, capacity: int) -> ShelterStatus:
    """The status an operator sees: an open shelter with no place left is ``full``."""
    return S.full if status is S.open and occupied >= capacity else status


# --- capacity ----------------------------------------------------------------------------------


def capacity_from_area(area_m2: float, m2_per_person: float = GB21734_M2_PER_PERSON) -> int:
    """People a shelter of ``area_m2`` effective living area (m²) holds at ``m2_per_person``
    (GB 21734-2008 §5.4: 1.5 m² at the least), rounded down."""
    if area_m2 < 0 or m2_per_person <= 0:
        raise ValueError("area must be ≥ 0 and the area a person > 0")
    return math.floor(area_m2 / m2_per_person + 1e-9)


def effective_capacity(area_m2: float, m2_per_person: float, set_by_hand: int | None) -> int:
    """The shelter's (night) capacity: from the area, or lower when set by hand.

    Raises InvalidInput (422, field ``capacity``) when the hand-set capacity exceeds what the area
    allows.
    """
    derived = capacity_from_area(area_m2, m2_per_person)
    if set_by_hand is None:
        return derived
    if set_by_hand > derived:
        raise InvalidInput(
            f"capacity {set_by_hand} exceeds the {derived} people {area_m2:g} m² allows"
            f" at {m2_per_person:g} m² a person",
            field="capacity",
        )
    return set_by_hand


# --- households and placing them ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Needs:
    """A household's needs: people, wheelchair users among them, pets."""

    people: int
    wheelchairs: int = 0
    pets: int = 0

    def __post_init__(self) -> None:
        if self.people < 1 or self.wheelchairs < 0 or self.pets < 0 or self.wheelchairs > self.people:
            raise ValueError("a household has ≥ 1 person, 0..people wheelchair users and ≥ 0 pets")


@dataclass(frozen=True, slots=True)
class Room:
    """What an open shelter can still take, and where it is (WGS-84 degrees)."""

    shelter_id: str
    lat: float
    lon: float
    free: int
    accessible_free: int
    pet_free: int

    def fits(self, needs: Needs) -> bool:
        """True when the whole household fits with its needs."""
        return self.free >= needs.people and self.accessible_free >= needs.wheelchairs and self.pet_free >= needs.pets


def walking_time_s(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Walking time in seconds: straight-line distance × ROAD_FACTOR at WALKING_SPEED_M_S."""
    return haversine_m(lat1, lon1, lat2, lon2) * ROAD_FACTOR / WALKING_SPEED_M_S


def nearest_first(rooms: Iterable[Room], lat: float, lon: float) -> list[Room]:
    """Rooms by walking time from (lat, lon), nearest first; ties by shelter id.

    Walking time is proportional to distance, so the order is the distances' order; within a
    city (tens of km) the equirectangular projection orders distances as the haversine does,
    at a fraction of its cost."""
    k = math.cos(math.radians(lat)) ** 2
    return sorted(rooms, key=lambda r: ((r.lat - lat) ** 2 + k * (r.lon - lon) ** 2, r.shelter_id))


def choose_shelter(rooms: Sequence[Room], needs: Needs) -> Room | None:
    """The first room of ``rooms`` (nearest first) that takes the whole household, else None."""
    return next((r for r in rooms if r.fits(needs)), None)


def refuse_household(rooms: Sequence[Room], needs: Needs) -> Conflict:
    """The 409 for a household no open shelter takes: names the largest household one could take
    with the same wheelchair and pet needs (0 when none could)."""
    able = [r.free for r in rooms if r.accessible_free >= needs.wheelchairs and r.pet_free >= needs.pets]
    return no_shelter_takes(needs, max(able, default=0))


def no_shelter_takes(needs: Needs, largest: int) -> Conflict:
    """The 409 for a household no open shelter takes, naming ``largest``: the most people one
    open shelter could take with the same wheelchair and pet needs."""
    return Conflict(
        f"no open shelter takes a household of {needs.people} ({needs.wheelchairs} wheelchair users, "
        f"{needs.pets} pets); the largest such household one could take is {largest}",
        largest_household=largest,
    )


@dataclass(slots=True)
class Plan:
    """Households placed by ``place_households``: ``placed[i]`` is household i's shelter or None."""

    placed: list[str | None]
    taken: dict[str, Needs] = field(default_factory=dict)


def split_household(needs: Needs, parts: int) -> list[Needs]:
    """A household split into ``parts`` groups as even as possible (only when the operator allows):
    wheelchair users and pets go with the first groups."""
    parts = max(1, min(parts, needs.people))
    base, extra = divmod(needs.people, parts)
    sizes = [base + (1 if i < extra else 0) for i in range(parts)]
    out: list[Needs] = []
    wheel, pets = needs.wheelchairs, needs.pets
    for size in sizes:
        w = min(wheel, size)
        out.append(Needs(size, w, pets if not out else 0))
        wheel -= w
    return out


def place_households(rooms: Sequence[Room], lat: float, lon: float, households: Sequence[Needs]) -> Plan:
    """Place each household whole in the nearest room that takes it, in order, counting down the
    rooms' free places as it goes. ``taken`` sums what each shelter receives (one conditional
    update per shelter in the store). Unplaced households are None."""
    ordered = nearest_first(rooms, lat, lon)
    free = {r.shelter_id: [r.free, r.accessible_free, r.pet_free] for r in ordered}
    placed: list[str | None] = []
    taken: dict[str, list[int]] = {}
    for needs in households:
        chosen = None
        for r in ordered:
            f = free[r.shelter_id]
            if f[0] >= needs.people and f[1] >= needs.wheelchairs and f[2] >= needs.pets:
                chosen = r.shelter_id
                f[0] -= needs.people
                f[1] -= needs.wheelchairs
                f[2] -= needs.pets
                t = taken.setdefault(chosen, [0, 0, 0])
                t[0] += needs.people
                t[1] += needs.wheelchairs
                t[2] += needs.pets
                break
        placed.append(chosen)
    return Plan(placed, {k: Needs(*v) for k, v in taken.items() if v[0] > 0})


def shelters_to_open(standby: Sequence[Room], lat: float, lon: float, expected: int, free_now: int) -> list[str]:
    """Standby shelters, nearest first, to open until ``expected`` people fit beside the
    ``free_now`` places already open (the evacuation automation; the caller counts the
    incident's evacuees already placed in ``free_now``)."""
    out: list[str] = []
    room = free_now
    for r in nearest_first(standby, lat, lon):
        if room >= expected:
            break
        out.append(r.shelter_id)
        room += r.free
    return out


def estimate_evacuees(radius_m: int, density_per_km2: float) -> int:
    """People expected to leave their homes when the plan evacuates ``radius_m`` metres around
    the scene: the circle's area (km²) times ``density_per_km2`` people a km², rounded up."""
    if radius_m < 0 or density_per_km2 < 0:
        raise ValueError("radius and density must be ≥ 0")
    return math.ceil(math.pi * (radius_m / 1000) ** 2 * density_per_km2 - 1e-9)


def expected_evacuees(operator: int | None, radius_m: int | None, density_per_km2: float, fallback: int) -> int:
    """The number the automation opens shelters for: the operator's figure when one was set, else
    the estimate from the plan's evacuation radius, else ``fallback`` (no radius known)."""
    if operator is not None:
        return operator
    if radius_m:
        return estimate_evacuees(radius_m, density_per_km2)
    return fallback


# --- registrations -------------------------------------------------------------------------------


class RegistrationStatus(StrEnum):
    """planned (a place is held) → checked_in → checked_out; ``moved`` when the household went to
    another shelter (a new registration there), ``cancelled`` when it never came."""

    planned = "planned"
    checked_in = "checked_in"
    checked_out = "checked_out"
    moved = "moved"
    cancelled = "cancelled"


class RegistrationAction(StrEnum):
    check_in = "check_in"
    check_out = "check_out"
    move = "move"
    cancel = "cancel"


R, RA = RegistrationStatus, RegistrationAction

REGISTRATION_TRANSITIONS: dict[tuple[RegistrationStatus, RegistrationAction], RegistrationStatus] = {
    (R.planned, RA.check_in): R.checked_in,
    (R.planned, RA.cancel): R.cancelled,
    (R.planned, RA.move): R.moved,
    (R.checked_in, RA.check_out): R.checked_out,
    (R.checked_in, RA.move): R.moved,
}
"""A registration's machine: ``REGISTRATION_TRANSITIONS[(status, action)]`` is the next status."""

HOLDS_PLACE: frozenset[RegistrationStatus] = frozenset({R.planned, R.checked_in})
"""Statuses that count in the shelter's occupancy."""


def next_registration_status(status: RegistrationStatus, action: RegistrationAction) -> RegistrationStatus:
    """Raises IllegalTransition (409) naming the actions allowed from ``status``."""
    target = REGISTRATION_TRANSITIONS.get((status, action))
    if target is None:
        allowed = sorted(a.value for (s, a) in REGISTRATION_TRANSITIONS if s == status)
        raise IllegalTransition(
            f"a registration that is {status.value} cannot {action.value}; allowed: {', '.join(allowed) or 'nothing'}",
            registration_status=status.value,
            allowed=allowed,
        )
    return target


class TooManySearches(AppError):
    """429: a searcher went over the reunification search limit."""

    status, code, title = 429, "too_many_searches", "Too many searches"


# --- personal data ------------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_ID_PATTERN = re.compile(r"^[0-9]{17}[0-9X]$")
_MOBILE = re.compile(r"^1[3-9][0-9]{9}$")
_LANDLINE = re.compile(r"^0[0-9]{2,3}[0-9]{7,8}$")


def id_check_character(first17: str) -> str:
    """GB 11643-1999: the check character of the first 17 digits (ISO 7064 MOD 11-2)."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def normalise_id_number(value: str, field_name: str = "id_number") -> str:
    """A PRC resident ID number (GB 11643-1999), upper-cased, spaces removed.

    Raises InvalidInput (422, naming ``field_name``) for a wrong length or character, an
    impossible birth date, or a wrong check character.
    """
    v = value.replace(" ", "").upper()
    if not _ID_PATTERN.match(v):
        raise InvalidInput(f"{field_name} must be 17 digits and a check digit or X", field=field_name)
    try:
        date(int(v[6:10]), int(v[10:12]), int(v[12:14]))
    except ValueError:
        raise InvalidInput(f"{field_name} holds an impossible birth date", field=field_name) from None
    if id_check_character(v[:17]) != v[17]:
        raise InvalidInput(f"{field_name} has a wrong check character (GB 11643-1999)", field=field_name)
    return v


def normalise_phone(value: str, field_name: str = "phone") -> str:
    """A PRC mobile (11 digits, 1[3-9]…) or landline number with its area code, digits only;
    ``+86``/``0086`` and separators are dropped.

    Raises InvalidInput (422, naming ``field_name``) for anything else.
    """
    v = re.sub(r"[\s()-]", "", value)
    for prefix in ("+86", "0086"):
        if v.startswith(prefix):
            v = v[len(prefix) :]
    if not (_MOBILE.match(v) or _LANDLINE.match(v)):
        raise InvalidInput(f"{field_name} is not a PRC mobile or landline number", field=field_name)
    return v


def normalise_name(value: str) -> str:
    """A person's name as searched: inner whitespace collapsed, case folded."""
    return " ".join(value.split()).casefold()


def protect(value: str, key: bytes, kind: str) -> str:
    """The searchable fingerprint of a personal value: HMAC-SHA256 under the service's key, the
    kind (``name``, ``id``, ``phone``) mixed in so equal values of two kinds differ. Hex, 64 chars."""
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def mask_id_number(v: str) -> str:
    """``310101********123X``: the region and the last four, as on a receipt."""
    return v[:6] + "*" * (len(v) - 10) + v[-4:]


def mask_phone(v: str) -> str:
    """``138****5678``: the first three and the last four."""
    return v[:3] + "*" * (len(v) - 7) + v[-4:]


def mask_name(v: str) -> str:
    """``张*``, ``欧阳**``… the first character and a star for each other one."""
    v = v.strip()
    return v[:1] + "*" * max(0, len(v) - 1)


__all__ = [
    "GB21734_M2_PER_PERSON",
    "CHECKS_IN",
    "HOLDS_PLACE",
    "REGISTRATION_TRANSITIONS",
    "SERVICE",
    "TAKES_PEOPLE",
    "TRANSITIONS",
    "Needs",
    "Plan",
    "RegistrationAction",
    "RegistrationStatus",
    "Room",
    "ShelterAction",
    "ShelterKind",
    "ShelterStatus",
    "StayClass",
    "TooManySearches",
    "capacity_from_area",
    "choose_shelter",
    "effective_capacity",
    "estimate_evacuees",
    "expected_evacuees",
    "id_check_character",
    "mask_id_number",
    "mask_name",
    "mask_phone",
    "nearest_first",
    "next_registration_status",
    "next_status",
    "no_shelter_takes",
    "normalise_id_number",
    "normalise_name",
    "normalise_phone",
    "place_households",
    "protect",
    "refuse_household",
    "shelters_to_open",
    "shown_status",
    "split_household",
    "walking_time_s",
]
