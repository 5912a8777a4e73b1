"""What every handler works with (``Context``), and the steps their "load → decide → save → emit →
commit" shape shares: load an incident under the correlation clock, save a decision, commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ecs.batching import MicroBatcher
from ecs.contracts import MESSAGES
from ecs.db import Database, UnitOfWork
from ecs.envelope import Envelope, make_event, utcnow
from ecs.errors import NotFound, StaleVersion

from .. import store
from ..correlation import IncomingAlarm, IngestResult
from ..domain import Change, Event, Incident
from ..settings import IntakeSettings

SOURCE = "incident-intake"

SUBJECTS: dict[type, str] = {m.model: m.subject for m in MESSAGES if m.publisher == SOURCE}
"""The subject each event model of ours is published on (from the contracts' catalogue)."""


@dataclass(frozen=True)
class Context:
    """The service's handles, built once by ``main``: the database, the settings, and the
    micro-batcher every alarm goes through to correlation."""

    db: Database
    settings: IntakeSettings
    alarms: MicroBatcher[IncomingAlarm, IngestResult]


def envelope(event: Event) -> Envelope:
    """A domain event as the message the outbox relays: on its model's subject, about its incident
    (also the correlation id), flagged as a drill's or not."""
    data = event.data
    return make_event(
        SUBJECTS[type(data)],
        # Our event models are flat (no nested models), so their field values are the payload
        # and orjson writes them (datetimes, enums) itself: a dump per alarm would cost the hot
        # path a tenth of its time for the same JSON.
        dict(data.__dict__),
        source=SOURCE,
        incident_id=data.incident_id,
        exercise=event.exercise,
        correlation_id=data.incident_id,
        causation_id=event.cause,
        id=event.id,
    )


async def load(uow: UnitOfWork, incident_id: str, version: int | None = None) -> tuple[Incident, int]:
    """Bump the correlation clock (serialising with correlation and other commands until commit),
    then load the incident; returns it with the clock's new revision.

    Raises NotFound (404), and when ``version`` is given, what ``Incident.expect`` raises.
    """
    rev = await store.tick(uow.conn)
    incident = await store.load_incident(uow.conn, incident_id)
    if incident is None:
        raise NotFound(f"incident {incident_id} not found", incident_id=incident_id)
    if version is not None:
        incident.expect(version)
    return incident, rev


async def save(uow: UnitOfWork, change: Change, version: int, rev: int) -> None:
    """Write a decision made on ``version`` of its incident, and emit its event (in the same
    transaction, through the outbox). Raises StaleVersion (409) if the incident moved on."""
    if not await store.apply_change(uow.conn, change, version, rev, utcnow()):
        raise StaleVersion(f"incident {change.incident_id} changed meanwhile: reload it and decide again")
    if change.event is not None:
        uow.emit(envelope(change.event))


async def commit(uow: UnitOfWork, incident_id: str) -> Any:
    """Commit, and return the incident's row as the transaction left it (for the answer)."""
    row = await store.get_incident(uow.conn, incident_id)
    await uow.commit()
    return row
