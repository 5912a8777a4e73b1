"""The lifecycle fact: ``shelter.incident.settled`` once an incident in aftermath holds no place in
any shelter (every evacuee checked out, moved out or cancelled); ``settled: false`` again if one
is placed after."""

from __future__ import annotations

from ecs.contracts import ParticipantSettled
from ecs.vocabulary import Participant, Stage

from .. import store
from .tx import Tx

SETTLING: frozenset[Stage] = frozenset({Stage.aftermath, Stage.closed, Stage.cancelled})
"""Stages from which shelter-registry tells the lifecycle whether it still holds evacuees."""


async def settle_if_done(tx: Tx, incident_id: str) -> None:
    """Publish the settled fact of ``incident_id`` when it changed (inside the caller's transaction)."""
    row = await store.incident(tx.conn, incident_id)
    if row is None:
        return
    settling = Stage(row.stage) in SETTLING
    if not settling and not row.settled:
        return
    held = await store.holding(tx.conn, incident_id)
    settled = settling and held == 0
    if await store.mark_settled(tx.conn, incident_id, settled):
        detail = "no evacuee holds a place" if settled else f"{held} evacuees still hold places"
        tx.emit(
            ParticipantSettled(
                incident_id=incident_id, participant=Participant.shelter, settled=settled, detail=detail
            ),
            incident_id,
            bool(row.exercise),
        )
