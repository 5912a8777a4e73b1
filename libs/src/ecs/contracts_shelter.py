"""Message contracts of shelter-registry: the events it publishes on `shelter.>` (stream of the same
domain). proto-schemas/ is generated from `MESSAGES` with the rest (`ecs.catalogue`).

No event carries personal data: households are counted (people, wheelchair users, pets), never named.
Its lifecycle fact is ``shelter.incident.settled`` (``ecs.contracts.ParticipantSettled``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .contracts import MessageSpec, Version


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShelterStatusChanged(_Strict):
    """``shelter.status.changed``: a shelter was made ready, opened, closed or taken out of service."""

    shelter_id: str
    from_status: str
    to_status: str
    capacity: int = Field(description="people it sleeps")
    occupied: int
    actor: str
    version: Version
    incident_id: str | None = Field(default=None, description="the incident whose evacuation opened it")


class RegistrationChanged(_Strict):
    """``shelter.registration.changed``: a household was placed, checked in, checked out, moved or
    cancelled. Counts only: no names, numbers or addresses."""

    registration_id: str
    shelter_id: str
    incident_id: str | None
    action: str = Field(description="placed, check_in, check_out, move or cancel")
    from_status: str | None
    to_status: str
    people: int
    wheelchairs: int
    pets: int
    actor: str


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec("shelter.status.changed", ShelterStatusChanged, "shelter-registry", "A shelter changed status"),
    MessageSpec(
        "shelter.registration.changed", RegistrationChanged, "shelter-registry", "A household's registration changed"
    ),
)
