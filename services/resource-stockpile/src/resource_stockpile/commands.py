"""What operators (through the API) and the automation ask resource-stockpile to do: one command,
one handler (handlers.COMMANDS). Quantities are as entered (a number and a unit: the item's base
unit or one of its packs); the handlers turn them into base units."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from .domain import Action, AdjustmentReason, Condition, Depot, Item

REQUEST_KEY_CHARS = 255
"""The longest request key kept as written: it is a message id of the inbox (255 characters)."""


def request_key(*parts: str) -> str:
    """The key a request's effect is recorded under (handlers.reservations): its parts joined by
    ``:``, or when that is longer than REQUEST_KEY_CHARS ``sha256:<hex of the parts joined by
    NUL>``: never cut, since two keys that differ only past the cut would be taken for the same
    request."""
    joined = ":".join(parts)
    if len(joined) <= REQUEST_KEY_CHARS:
        return joined
    return "sha256:" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AddItems:
    """Put items in the catalogue, all or none."""

    items: Sequence[Item]
    actor: str


@dataclass(frozen=True, slots=True)
class AddDepots:
    """Register depots, all or none."""

    depots: Sequence[Depot]
    actor: str


@dataclass(frozen=True, slots=True)
class ReceiptLine:
    """Stock received: ``quantity`` of ``unit`` (None: the base unit) of one lot."""

    item: str
    lot: str
    quantity: Decimal
    unit: str | None = None
    expiry: date | None = None
    condition: Condition = Condition.good


@dataclass(frozen=True, slots=True)
class ReceiveStock:
    """A receipt document: stock arrives at a depot, effective at ``effective_at`` (UTC; None: now)."""

    depot_id: str
    lines: Sequence[ReceiptLine]
    actor: str
    effective_at: datetime | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class AdjustStock:
    """An adjustment document: one lot's quantity on hand changes by ``delta`` (signed, in
    ``unit``) for ``reason``."""

    depot_id: str
    item: str
    lot: str
    condition: Condition
    delta: Decimal
    reason: AdjustmentReason
    actor: str
    unit: str | None = None
    effective_at: datetime | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class TransferStock:
    """A transfer document: ``quantity`` of one good lot moves from one depot to another."""

    from_depot: str
    to_depot: str
    item: str
    lot: str
    quantity: Decimal
    actor: str
    unit: str | None = None
    effective_at: datetime | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Reserve:
    """``quantity`` of ``item`` near (lat, lon) for an incident" (default: the incident's position)."""

    incident_id: str
    item: str
    quantity: Decimal
    actor: str
    unit: str | None = None
    lat: float | None = None
    lon: float | None = None
    source: str = "operator"
    request_key: str | None = None


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One item of a multi-item request: ``quantity`` of ``unit`` (None: the base unit)."""

    item: str
    quantity: Decimal
    unit: str | None = None
    edxl_element_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReserveMany:
    """Several items for an incident near (lat, lon) (default: the incident's position), in one
    transaction: each a reservation of its own, all or none."""

    incident_id: str
    lines: Sequence[RequestLine]
    actor: str
    lat: float | None = None
    lon: float | None = None
    source: str = "operator"
    request_key: str | None = None
    edxl_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ImportEdxlRequest:
    """A neighbour's EDXL-RM 1.0 RequestResource (the XML as received) for an incident: one
    reservation per ResourceInformation, all or none, near the incident."""

    incident_id: str
    document: bytes
    actor: str


@dataclass(frozen=True, slots=True)
class ActOnReservation:
    """Issue, return (with the condition it came back in), consume or release part of a
    reservation (``quantity`` None: all there is), if it is still at ``version`` (None: any)."""

    reservation_id: int
    action: Action
    actor: str
    quantity: Decimal | None = None
    unit: str | None = None
    condition: Condition = Condition.good
    version: int | None = None
    request_key: str | None = None


@dataclass(frozen=True, slots=True)
class PurgeExercise:
    """Forget the exercise incidents and their reservations (what they hold released first); with
    ``depots_too``, the exercise depots with their stock lines, ledger and documents as well."""

    actor: str
    depots_too: bool = False


@dataclass(frozen=True, slots=True)
class SetMinimum:
    """The least ``depot_id`` should keep of ``item`` (``minimum`` of ``unit``; 0: no minimum),
    if the minimum is still at ``version`` (None: any; 0: only if there is none yet)."""

    depot_id: str
    item: str
    minimum: Decimal
    actor: str
    unit: str | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class AssembleKits:
    """An assembly document: ``quantity`` kits of ``kit`` (in ``unit``: the kit's base unit or
    one of its packs) made at a depot from its good, unexpired parts, earliest expiry first."""

    depot_id: str
    kit: str
    quantity: Decimal
    actor: str
    unit: str | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class DisassembleKits:
    """A disassembly document: ``quantity`` kits of ``kit`` at a depot broken back into their parts."""

    depot_id: str
    kit: str
    quantity: Decimal
    actor: str
    unit: str | None = None
    note: str = ""
