"""One handler transaction: its unit of work, who acts, the message that caused it, and the
events it emits (contract models, put in envelopes here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from ecs.contracts import ParticipantSettled, StatementPublished
from ecs.contracts_notification import AlertEnded, AlertPublished, RumorChanged
from ecs.db import UnitOfWork
from ecs.envelope import Envelope, make_event
from ecs.retry import retrying
from ecs.vocabulary import Participant

from ..context import Context
from ..domain import SERVICE

T = TypeVar("T")

SUBJECTS: dict[type[BaseModel], str] = {
    AlertPublished: "notification.alert.published",
    AlertEnded: "notification.alert.ended",
    StatementPublished: "notification.statement.published",
    RumorChanged: "notification.rumor.changed",
    ParticipantSettled: f"{Participant.notification}.incident.settled",
}
"""The subject of each event with a model of its own; clock events name theirs (CLOCK_SUBJECT)."""

CLOCK_SUBJECT = "notification.clock.{}"
AUTOMATION = "automation"
"""The actor of what the service does by itself (clocks, settlement)."""


def incident_lock(incident_id: str) -> str:
    """The lock every replica takes before it changes what the service holds for an incident."""
    return f"notification:incident:{incident_id}"


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

    def emit(self, event: BaseModel, incident_id: str, exercise: bool, subject: str | None = None) -> None:
        """Publish ``event`` about the incident with the transaction: into the outbox at commit."""
        cause = self.cause
        self.uow.emit(
            make_event(
                subject or SUBJECTS[type(event)],
                event,
                source=SERVICE,
                incident_id=incident_id,
                exercise=exercise,
                correlation_id=cause.correlation_id if cause is not None and cause.correlation_id else incident_id,
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
