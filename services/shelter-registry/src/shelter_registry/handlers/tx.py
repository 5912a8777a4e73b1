"""One handler transaction: its unit of work, who acts, the message that caused it, and the
events it emits (contract models, put in envelopes here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from ecs.contracts import ParticipantSettled
from ecs.contracts_shelter import RegistrationChanged, ShelterStatusChanged
from ecs.db import UnitOfWork
from ecs.envelope import Envelope, make_event
from ecs.retry import retrying
from ecs.vocabulary import Participant

from ..context import Context
from ..domain import SERVICE

T = TypeVar("T")

SUBJECTS: dict[type[BaseModel], str] = {
    ShelterStatusChanged: "shelter.status.changed",
    RegistrationChanged: "shelter.registration.changed",
    ParticipantSettled: f"{Participant.shelter}.incident.settled",
}
"""The subject of each event shelter-registry publishes."""

AUTOMATION = "automation"
"""The actor of what shelter-registry does by itself, following the incident's stage."""


def incident_lock(incident_id: str) -> str:
    """The lock every replica takes before it changes what an incident holds."""
    return f"shelter:incident:{incident_id}"


@dataclass
class Tx:
    """One transaction of a handler."""

    uow: UnitOfWork
    actor: str = ""
    cause: Envelope | None = None

    @property
    def conn(self) -> Any:
        """The transaction's connection, for the store's functions."""
        return self.uow.conn

    def emit(self, event: BaseModel, incident_id: str | None, exercise: bool) -> None:
        """Publish ``event`` (one of SUBJECTS) with the transaction: into the outbox at commit."""
        cause = self.cause
        self.uow.emit(
            make_event(
                SUBJECTS[type(event)],
                event,
                source=SERVICE,
                incident_id=incident_id,
                exercise=exercise,
                correlation_id=(cause.correlation_id if cause is not None and cause.correlation_id else incident_id),
                causation_id=cause.id if cause is not None else None,
            )
        )


async def transaction(
    ctx: Context, work: Callable[[Tx], Awaitable[T]], actor: str = "", cause: Envelope | None = None
) -> T:
    """Run ``work`` in a unit of work (it commits; anything else rolls back), again after a
    deadlock or a busy database (ecs.retry.retrying)."""

    async def attempt() -> T:
        async with ctx.db.uow() as uow:
            return await work(Tx(uow, actor, cause))

    return await retrying(attempt)
