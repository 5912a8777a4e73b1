"""The purge of exercise data (DESIGN §8): what drills left in shelter-registry goes, in one
transaction, and nothing live is touched — an exercise household only ever takes places in an
exercise shelter (store.take_places), so giving its places back touches exercise shelters only.

The places exercise evacuees hold are given back first, so an exercise shelter that stays (the
default, like dispatch's exercise units) is empty again for the next drill. No event is published:
nothing of it is live, ``shelter.registration.changed`` has no reader, and a
``shelter.incident.settled`` about an incident intake's own purge forgot would be dead-lettered.
"""

from __future__ import annotations

import structlog

from ecs.envelope import utcnow

from .. import store
from ..commands import PurgeExercise
from ..context import Context
from .tx import Tx, incident_lock, transaction

log = structlog.get_logger("shelter-registry")

EXERCISE_PURGE_LOCK = "shelter:exercise-purge"


async def purge_exercise(ctx: Context, cmd: PurgeExercise) -> dict[str, int]:
    """Forget every exercise incident and registration (and, with ``shelters_too``, every exercise
    shelter); returns how many of each, and the evacuees whose places were given back. A second
    purge purges nothing."""

    async def work(tx: Tx) -> dict[str, int]:
        await tx.uow.lock(EXERCISE_PURGE_LOCK)
        for incident_id in await store.exercise_incident_ids(tx.conn):
            await tx.uow.lock(incident_lock(incident_id))  # nobody is placed for it meanwhile
        freed = await store.free_exercise_places(tx.conn, utcnow())
        registrations = await store.delete_exercise_registrations(tx.conn)
        incidents = await store.delete_exercise_incidents(tx.conn)
        shelters = await store.delete_exercise_shelters(tx.conn) if cmd.shelters_too else 0
        await tx.uow.commit()
        purged = {
            "incidents_purged": incidents,
            "registrations_purged": registrations,
            "evacuees_released": freed,
            "shelters_purged": shelters,
        }
        log.info("exercise.purged", **purged)
        return purged

    return await transaction(ctx, work, cmd.actor)
