"""One handler transaction: its unit of work, who acts, the message that caused it, and the events
it emits (contract models, put in envelopes here)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from ecs.contracts import ParticipantSettled
from ecs.contracts_stockpile import (
    LotExpiring,
    LowStock,
    ReservationChanged,
    ReservationMade,
    ReturnsRequested,
    StockDocumentPosted,
    StockRecovered,
)
from ecs.db import UnitOfWork
from ecs.envelope import Envelope, make_event
from ecs.retry import retrying
from ecs.vocabulary import Participant

from ..context import Context
from ..domain import SERVICE
from .levels import check_levels

T = TypeVar("T")

SUBJECTS: dict[type[BaseModel], str] = {
    ReservationMade: "stockpile.reservation.made",
    ReservationChanged: "stockpile.reservation.changed",
    ReturnsRequested: "stockpile.returns.requested",
    StockDocumentPosted: "stockpile.document.posted",
    LowStock: "stockpile.stock.low",
    StockRecovered: "stockpile.stock.recovered",
    LotExpiring: "stockpile.lot.expiring",
    ParticipantSettled: f"{Participant.stockpile}.incident.settled",
}
"""The subject of each event resource-stockpile publishes."""

AUTOMATION = "automation"
"""The actor of what resource-stockpile does by itself, following the incident's stage and level."""


def incident_lock(incident_id: str) -> str:
    """The lock every replica takes before it changes what an incident holds."""
    return f"stockpile:incident:{incident_id}"


@dataclass
class Tx:
    """One transaction of a handler."""

    uow: UnitOfWork
    actor: str = ""
    cause: Envelope | None = None
    ctx: Context | None = None
    touched: set[tuple[str, str]] = field(default_factory=set)
    """The (depot, item) pairs whose stock this transaction changed: their low-stock alerts are
    checked at commit (handlers.levels)."""

    @property
    def conn(self) -> Any:
        """The transaction's connection, for the store's functions."""
        return self.uow.conn

    def touch(self, depot_id: str, item: str) -> None:
        """This transaction changed what ``depot_id`` holds of ``item``."""
        self.touched.add((depot_id, item))

    async def commit(self) -> None:
        """Open or clear the low-stock alerts of what was touched, then commit, in one transaction."""
        if self.touched and self.ctx is not None:
            await check_levels(self.ctx, self, self.touched)
            self.touched = set()
        await self.uow.commit()

    def emit(self, event: BaseModel, incident_id: str | None = None, exercise: bool = False) -> None:
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
            return await work(Tx(uow, actor, cause, ctx))

    return await retrying(attempt)
