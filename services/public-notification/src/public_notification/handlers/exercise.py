"""The purge of exercise data (DESIGN §8): what drills left in public-notification goes, in one
transaction, and nothing live is touched — an exercise incident's alerts, statements, rumors and
clocks are exercise ones, and an exercise alert is delivered to exercise channels only.

Deliveries go first, so a pending one of an exercise alert is never sent after the purge (one the
worker leased already ends at its exercise channel; recording its outcome then finds nothing), and
the clocks with their incidents, so no ``notification.clock.*`` event follows. Exercise channels
stay unless asked (like dispatch's exercise units). No event is published: nothing of it is live,
and a ``notification.incident.settled`` about an incident intake's own purge forgot would be
dead-lettered.
"""

from __future__ import annotations

import structlog

from .. import store
from ..commands import PurgeExercise
from ..context import Context
from .tx import Tx, incident_lock, transaction

log = structlog.get_logger("public-notification")

EXERCISE_PURGE_LOCK = "notification:exercise-purge"


async def purge_exercise(ctx: Context, cmd: PurgeExercise) -> dict[str, int]:
    """Forget every exercise incident, alert, delivery, statement, rumor and clock (and, with
    ``channels_too``, every exercise channel); returns how many of each. A second purge purges
    nothing."""

    async def work(tx: Tx) -> dict[str, int]:
        await tx.uow.lock(EXERCISE_PURGE_LOCK)
        for incident_id in await store.exercise_incident_ids(tx.conn):
            await tx.uow.lock(incident_lock(incident_id))
        deliveries = await store.delete_exercise_deliveries(tx.conn, cmd.channels_too)
        alerts, statements, rumors, clocks = await store.delete_exercise_documents(tx.conn)
        incidents = await store.delete_exercise_incidents(tx.conn)
        channels = await store.delete_exercise_channels(tx.conn) if cmd.channels_too else 0
        await tx.uow.commit()
        purged = {
            "incidents_purged": incidents,
            "alerts_purged": alerts,
            "deliveries_purged": deliveries,
            "statements_purged": statements,
            "rumors_purged": rumors,
            "clocks_purged": clocks,
            "channels_purged": channels,
        }
        log.info("exercise.purged", **purged)
        return purged

    return await transaction(ctx, work, cmd.actor)
