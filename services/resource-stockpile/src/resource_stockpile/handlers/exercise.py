"""The purge of exercise data (DESIGN §8): what drills left in resource-stockpile goes, in one
transaction, and nothing live is touched — exercise reservations only ever hold stock of exercise
depots, and stock never moves between exercise and live depots.

What the drill's reservations still hold goes back to its stock lines first, so an exercise depot
that stays (the default, like dispatch's exercise units) is whole again for the next drill; what
was issued stays issued, as the ledger says. No event is published: nothing of it is live, and a
``stockpile.incident.settled`` about an incident intake's own purge forgot would be dead-lettered.
"""

from __future__ import annotations

import structlog

from .. import store
from ..commands import PurgeExercise
from ..context import Context
from .tx import Tx, incident_lock, transaction

log = structlog.get_logger("resource-stockpile")

EXERCISE_PURGE_LOCK = "stockpile:exercise-purge"


async def purge_exercise(ctx: Context, cmd: PurgeExercise) -> dict[str, int]:
    """Forget every exercise incident and reservation (and, with ``depots_too``, every exercise
    depot with its stock, ledger and documents); returns how many of each, and the base units
    released. A second purge purges nothing."""

    async def work(tx: Tx) -> dict[str, int]:
        await tx.uow.lock(EXERCISE_PURGE_LOCK)
        for incident_id in await store.exercise_incident_ids(tx.conn):
            await tx.uow.lock(incident_lock(incident_id))  # no reservation of it is made meanwhile
        released = await store.release_exercise_holds(tx.conn)
        reservations = await store.delete_exercise_reservations(tx.conn)
        incidents = await store.delete_exercise_incidents(tx.conn)
        depots = lines = documents = 0
        if cmd.depots_too:
            depots, lines, documents = await store.delete_exercise_depots(tx.conn)
        await tx.commit()
        purged = {
            "incidents_purged": incidents,
            "reservations_purged": reservations,
            "released": released,
            "depots_purged": depots,
            "stock_lines_purged": lines,
            "documents_purged": documents,
        }
        log.info("exercise.purged", **purged)
        return purged

    return await transaction(ctx, work, cmd.actor)
