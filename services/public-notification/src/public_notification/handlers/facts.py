"""What every handler that changes an incident's holdings does before it commits: load the incident
(refusing a drill runner on a live one), and tell the lifecycle when settlement changed."""

from __future__ import annotations

from typing import Any

from ecs.contracts import ParticipantSettled
from ecs.errors import Conflict, Forbidden, NotFound
from ecs.vocabulary import TERMINAL_STAGES, Participant, Stage

from .. import store
from ..domain import SETTLING_STAGES, unsettled_reasons
from .tx import Tx


async def load_incident(tx: Tx, incident_id: str, drill_only: bool, new_work: bool = False) -> Any:
    """The incident as this service knows it; NotFound (404) if it never heard of it, Forbidden
    (403) when a drill runner reaches for a live one, and with ``new_work`` (a new alert, statement
    or rumor) Conflict (409) when it is closed or cancelled: nothing new is said about it, and its
    settlement stays. Takes the incident's lock."""
    await tx.uow.lock(f"notification:incident:{incident_id}")
    incident = await store.get_incident(tx.conn, incident_id)
    if incident is None:
        raise NotFound(f"no incident {incident_id!r} known to public-notification", field="incident_id")
    if drill_only and not incident.exercise:
        raise Forbidden("a drill runner acts on exercise incidents only")
    if new_work and Stage(incident.stage) in TERMINAL_STAGES:
        raise Conflict(f"incident {incident_id} is {incident.stage}: nothing new is said about it", field="incident_id")
    return incident


async def publish_settlement(tx: Tx, incident_id: str, incident: Any = None) -> None:
    """Publish ``notification.incident.settled`` when the incident's settlement changed (once per
    change: store.set_settled decides), with what still keeps it unsettled as the detail.
    ``incident``: its row as ``load_incident`` read it in this transaction, when nothing since
    changed it (saves reading it again under the lock)."""
    if incident is None or incident.id != incident_id:
        incident = await store.get_incident(tx.conn, incident_id)
    if incident is None:
        return
    if incident.settled is None and Stage(incident.stage) not in SETTLING_STAGES:
        return  # nothing to say before aftermath: the lifecycle does not ask yet (nor read the holdings)
    holdings = await store.holdings(tx.conn, incident_id)
    if holdings is None:
        return
    reasons = unsettled_reasons(holdings)
    settled = not reasons
    if await store.set_settled(tx.conn, incident_id, settled):
        detail = "; ".join(reasons) if reasons else "alerts ended, statements published, rumors closed"
        tx.emit(
            ParticipantSettled(
                incident_id=incident_id, participant=Participant.notification, settled=settled, detail=detail
            ),
            incident_id,
            incident.exercise,
        )
