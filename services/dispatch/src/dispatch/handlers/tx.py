"""One handler transaction: its unit of work, who acts, the message that caused it, and the
events it emits (contract models, put in envelopes here)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from ecs.contracts import (
    ParticipantSettled,
    PerimeterSecured,
    UnitAssigned,
    UnitReleased,
    UnitStatusChanged,
)
from ecs.db import UnitOfWork
from ecs.envelope import Envelope, make_event
from ecs.retry import retrying
from ecs.vocabulary import Participant

from ..context import Context
from ..domain import SERVICE, Incident, Unit, roster_entry

T = TypeVar("T")

SUBJECTS: dict[type[BaseModel], str] = {
    UnitAssigned: "dispatch.unit.assigned",
    UnitReleased: "dispatch.unit.released",
    UnitStatusChanged: "dispatch.unit.status.changed",
    PerimeterSecured: "dispatch.incident.perimeter_secured",
    ParticipantSettled: f"{Participant.dispatch}.incident.settled",
}
"""The subject of each event dispatch publishes about an incident or a unit's work."""
UNIT_REGISTERED = "dispatch.unit.registered"
UNIT_UPDATED = "dispatch.unit.updated"
UNIT_REMOVED = "dispatch.unit.removed"
PLAN_PUBLISHED = "dispatch.plan.published"

AUTOMATION = "automation"
"""The actor of what dispatch does by itself, following the incident's stage and level."""


def incident_lock(incident_id: str) -> str:
    """The lock every replica takes before it changes what an incident holds."""
    return f"dispatch:incident:{incident_id}"


def envelope(
    subject: str,
    data: BaseModel,
    incident: Incident | None = None,
    cause: Envelope | None = None,
    exercise: bool = False,
) -> Envelope:
    """The envelope of an event: about ``incident`` (its id, its exercise flag, correlated by the
    cause's correlation id or else the incident id), or about nothing in particular (``exercise``)."""
    incident_id = incident.id if incident is not None else None
    return make_event(
        subject,
        data,
        source=SERVICE,
        incident_id=incident_id,
        exercise=incident.exercise if incident is not None else exercise,
        correlation_id=(cause.correlation_id if cause is not None and cause.correlation_id else incident_id),
        causation_id=cause.id if cause is not None else None,
    )


@dataclass
class Tx:
    """One transaction of a handler. ``touched`` collects the units it changed: the directory
    re-reads them once the transaction is over, committed or not."""

    uow: UnitOfWork
    actor: str = ""
    cause: Envelope | None = None
    touched: list[str] = field(default_factory=list)

    @property
    def conn(self) -> Any:
        """The transaction's connection, for the store's functions."""
        return self.uow.conn

    def emit(self, event: BaseModel, incident: Incident | None = None, exercise: bool = False) -> None:
        """Publish ``event`` (one of SUBJECTS) with the transaction: into the outbox at commit."""
        self.uow.emit(envelope(SUBJECTS[type(event)], event, incident, self.cause, exercise))

    def emit_roster(self, subject: str, unit: Unit) -> None:
        """Publish a roster change of ``unit`` (UNIT_REGISTERED, UNIT_UPDATED or UNIT_REMOVED)."""
        self.uow.emit(envelope(subject, roster_entry(unit, self.actor), exercise=unit.exercise))


async def transaction(
    ctx: Context, work: Callable[[Tx], Awaitable[T]], actor: str = "", cause: Envelope | None = None
) -> T:
    """Run ``work`` in a unit of work (it commits; anything else rolls back), again after a
    deadlock or a busy database (ecs.retry.retrying: a lost database is Transient)."""

    async def attempt() -> T:
        touched: list[str] = []
        try:
            async with ctx.db.uow() as uow:
                return await work(Tx(uow, actor, cause, touched))
        finally:
            if touched:
                # A cancelled caller must not leave the index believing in units it did not get.
                await asyncio.shield(ctx.directory.reload_units(touched))

    return await retrying(attempt)
