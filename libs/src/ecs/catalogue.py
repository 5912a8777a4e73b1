"""Every message of the system, one catalogue: the gateway contract, incident-intake's and
dispatch's events (``ecs.contracts``) and each later service's own contracts module. proto-schemas/
is generated from ``ALL_MESSAGES``; a test fails when they drift."""

from __future__ import annotations

from . import contracts, contracts_notification, contracts_shelter, contracts_stockpile
from .contracts import MessageSpec

ALL_MESSAGES: tuple[MessageSpec, ...] = (
    *contracts.MESSAGES,
    *contracts_stockpile.MESSAGES,
    *contracts_shelter.MESSAGES,
    *contracts_notification.MESSAGES,
)
