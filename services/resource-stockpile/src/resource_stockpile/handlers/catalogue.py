"""The catalogue and the depots: added all or none."""

from __future__ import annotations

from ecs.envelope import utcnow
from ecs.errors import Conflict, InvalidInput

from .. import store
from ..commands import AddDepots, AddItems
from ..context import Context
from ..domain import Depot, Item, check_item, check_kits
from .tx import Tx, transaction


async def add_items(ctx: Context, cmd: AddItems) -> list[Item]:
    """Put items in the catalogue, all or none. Raises InvalidInput (a bad code or pack; a kit
    with an unknown part, a part quantity below 1, or containing itself: ``items.<i>.kit_of.<part>``)
    or Conflict naming the codes already there; a code listed twice is InvalidInput naming
    ``items.<i>.code``."""
    _listed_once([item.code for item in cmd.items], "items", "code")
    for item in cmd.items:
        check_item(item)

    async def work(tx: Tx) -> list[Item]:
        parts = {p for item in cmd.items for p in item.kit_of}
        if parts:
            known = await store.get_items(tx.conn, parts)
            # A part's own parts, so a kit containing itself through another kit is seen.
            more = {p for item in known.values() for p in item.kit_of} - set(known)
            while more:
                found = await store.get_items(tx.conn, more)
                known.update(found)
                more = {p for item in found.values() for p in item.kit_of} - set(known)
            check_kits(cmd.items, known)
        existing = await store.insert_items(tx.conn, cmd.items, utcnow())
        if existing:
            raise Conflict(f"items already in the catalogue: {', '.join(sorted(existing))}", codes=sorted(existing))
        await tx.commit()
        return list(cmd.items)

    return await transaction(ctx, work, cmd.actor)


async def add_depots(ctx: Context, cmd: AddDepots) -> list[Depot]:
    """Register depots, all or none. Raises Conflict naming the ids already there; an id listed
    twice is InvalidInput naming ``depots.<i>.id``."""
    _listed_once([depot.id for depot in cmd.depots], "depots", "id")

    async def work(tx: Tx) -> list[Depot]:
        existing = await store.insert_depots(tx.conn, cmd.depots, utcnow())
        if existing:
            raise Conflict(f"depots already registered: {', '.join(sorted(existing))}", ids=sorted(existing))
        await tx.commit()
        return list(cmd.depots)

    return await transaction(ctx, work, cmd.actor)


def _listed_once(keys: list[str], name: str, key: str) -> None:
    """InvalidInput naming ``<name>.<i>.<key>`` for the first key listed twice in one batch (the
    database's unique key would refuse it as a defect)."""
    seen: set[str] = set()
    for i, k in enumerate(keys):
        if k in seen:
            raise InvalidInput(f"{k} is listed twice", field=f"{name}.{i}.{key}")
        seen.add(k)
