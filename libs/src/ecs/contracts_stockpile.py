"""Message contracts of resource-stockpile: the events it publishes on `stockpile.>` (stream of the same
domain). proto-schemas/ is generated from `MESSAGES` with the rest (`ecs.catalogue`).

Quantities are whole numbers of the item's base unit; travel times are seconds. The lifecycle fact
``stockpile.incident.settled`` is the shared ``ecs.contracts.ParticipantSettled``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .contracts import MessageSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReservedPart(_Strict):
    """What one depot gives towards a reservation."""

    depot_id: str
    quantity: int = Field(ge=1, description="base units")
    travel_s: float = Field(ge=0, description="estimated travel time from the depot, seconds")


class ReservationMade(_Strict):
    """``stockpile.reservation.made``: supplies reserved for an incident, nearest depot first."""

    incident_id: str
    reservation_id: int
    item: str
    requested: int = Field(ge=1, description="base units")
    reserved: int = Field(ge=0, description="base units")
    missing: int = Field(ge=0, description="base units no depot could give")
    parts: list[ReservedPart]
    actor: str


class ReservationChanged(_Strict):
    """``stockpile.reservation.changed``: part of a reservation was issued (left the depot),
    returned (with its condition), consumed or released (back to stock)."""

    incident_id: str
    reservation_id: int
    item: str
    action: Literal["issue", "return", "consume", "release"]
    quantity: int = Field(ge=1, description="base units")
    condition: Literal["good", "damaged", "quarantined"] | None = None
    actor: str


class ReturnsRequested(_Strict):
    """``stockpile.returns.requested``: the incident reached aftermath; what is out should come back."""

    incident_id: str
    items: dict[str, int] = Field(description="item code -> base units still out")


class StockLineChange(_Strict):
    depot_id: str
    item: str
    lot: str
    condition: Literal["good", "damaged", "quarantined"]
    delta: int = Field(description="change of the quantity on hand, base units")


class StockDocumentPosted(_Strict):
    """``stockpile.document.posted``: a ledger document (receipt, issue, return, transfer,
    adjustment, assembly of kits from their parts, disassembly of kits into them) changed stock
    on hand."""

    document_id: int
    kind: Literal["receipt", "issue", "return", "transfer", "adjustment", "assembly", "disassembly"]
    reason: str | None = None
    lines: list[StockLineChange]
    effective_at: datetime
    actor: str


class LowStock(_Strict):
    """``stockpile.stock.low``: what a depot could reserve of an item fell below its minimum. One
    per (depot, item) while it stays below; ``stockpile.stock.recovered`` ends it."""

    alert_id: int
    depot_id: str
    item: str
    minimum: int = Field(ge=1, description="base units")
    available: int = Field(ge=0, description="base units reservable now (good, not short-dated)")


class StockRecovered(_Strict):
    """``stockpile.stock.recovered``: a depot's low-stock alert for an item is cleared (back at or
    above its minimum, or the minimum was lowered)."""

    alert_id: int
    depot_id: str
    item: str
    minimum: int = Field(ge=0, description="base units")
    available: int = Field(ge=0, description="base units")
    raised_at: datetime


class LotExpiring(_Strict):
    """``stockpile.lot.expiring``: a lot with stock on hand expires within the warning horizon
    (or has expired). Once per lot (depot, item, lot)."""

    warning_id: int
    depot_id: str
    item: str
    lot: str
    expiry: date
    days_left: int = Field(description="days from today to the expiry date; negative: expired")
    on_hand: int = Field(ge=1, description="base units on hand of the lot, any condition")


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec(
        "stockpile.reservation.made", ReservationMade, "resource-stockpile", "Supplies were reserved for an incident"
    ),
    MessageSpec(
        "stockpile.reservation.changed",
        ReservationChanged,
        "resource-stockpile",
        "Part of a reservation was issued, returned, consumed or released",
    ),
    MessageSpec(
        "stockpile.returns.requested",
        ReturnsRequested,
        "resource-stockpile",
        "An incident in aftermath should return what was issued to it",
    ),
    MessageSpec(
        "stockpile.document.posted", StockDocumentPosted, "resource-stockpile", "A ledger document changed stock"
    ),
    MessageSpec(
        "stockpile.stock.low", LowStock, "resource-stockpile", "A depot's stock of an item fell below its minimum"
    ),
    MessageSpec(
        "stockpile.stock.recovered",
        StockRecovered,
        "resource-stockpile",
        "A depot's low-stock alert for an item was cleared",
    ),
    MessageSpec("stockpile.lot.expiring", LotExpiring, "resource-stockpile", "A lot with stock on hand expires soon"),
)
