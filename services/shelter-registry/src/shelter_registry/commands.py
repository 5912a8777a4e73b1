"""What operators (through the API) and the automation ask shelter-registry to do: one command, one
handler (handlers.COMMANDS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .domain import Needs, RegistrationAction, ShelterAction


@dataclass(frozen=True, slots=True)
class RegisterShelters:
    """Add shelters, all or none; ``shelters`` are rows as the store keeps them, capacity included."""

    shelters: Sequence[Mapping[str, Any]]
    actor: str


@dataclass(frozen=True, slots=True)
class UpdateShelter:
    """Change a shelter's facts if it is still at ``version`` (capacity re-derived from the area)."""

    shelter_id: str
    version: int
    changes: Mapping[str, Any]
    actor: str


@dataclass(frozen=True, slots=True)
class ChangeShelterStatus:
    """Make ready, open, begin closing, close or take out of service."""

    shelter_id: str
    action: ShelterAction
    version: int | None
    actor: str


@dataclass(frozen=True, slots=True)
class Person:
    """One person of a household as registered (GB/T 33744's form): the numbers already checked."""

    name: str
    id_number: str | None = None
    phone: str | None = None
    wheelchair: bool = False
    consent_to_share: bool = False


@dataclass(frozen=True, slots=True)
class PlaceHousehold:
    """Place one household whole in the nearest open shelter that takes it, near (lat, lon)."""

    lat: float
    lon: float
    needs: Needs
    people: Sequence[Person]
    origin_address: str
    incident_id: str | None
    exercise: bool
    actor: str
    shelter_id: str | None = None  # the operator's choice instead of the nearest


@dataclass(frozen=True, slots=True)
class PlaceBatch:
    """Place many households (an evacuation zone) whole, nearest first; ``refs`` name them so a
    repeated batch places each once. Split a household only when ``allow_split``."""

    lat: float
    lon: float
    households: Sequence[Needs]
    refs: Sequence[str]
    incident_id: str | None
    exercise: bool
    actor: str
    allow_split: bool = False


@dataclass(frozen=True, slots=True)
class ChangeRegistration:
    """Check in, check out or cancel a registration; ``move`` needs ``to_shelter``."""

    registration_id: str
    action: RegistrationAction
    version: int | None
    actor: str
    to_shelter: str | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """A relative's search: a full name and a phone or ID number, never a list."""

    searcher: str
    name: str
    phone: str | None
    id_number: str | None


@dataclass(frozen=True, slots=True)
class SetExpectedEvacuees:
    """The operator's estimate of an incident's evacuees (the automation opens shelters for it)."""

    incident_id: str
    expected: int
    actor: str
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PurgeExercise:
    """Forget the exercise incidents and registrations (their places given back first); with
    ``shelters_too``, the exercise shelters as well."""

    actor: str
    shelters_too: bool = False
