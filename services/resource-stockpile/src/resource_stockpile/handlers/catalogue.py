"""The catalogue and the depots: added all or none."""

from __future__ import annotations

from ecs.envelope import utcnow
from ecs.errors import Conflict

from .. import store
from ..commands import AddDepots, AddItems
from ..context import Context
from ..domain import Depot, Item, check_item
from .tx import Tx, transaction


async def add_items(ctx: Context, cmd: AddItems) -> list[Item]:
    """Put items in the catalogue, all or none. Raises InvalidInput (a bad code or pack) or
    Conflict naming the codes already there."""
    for item in cmd.items:
        check_item(item)

    async def work(tx: Tx) -> list[Item]:
        existing = await store.insert_items(tx.conn, cmd.items, utcnow())
        if existing:
            raise Conflict(f"items already in the catalogue: {', '.join(sorted(existing))}", codes=sorted(existing))
        await tx.commit()
        return list(cmd.items)

    return await transaction(ctx, work, cmd.actor)


async def add_depots(ctx: Context, cmd: AddDepots) -> list[Depot]:
    """Register depots, all or none. Raises Conflict naming the ids already there."""

    async def work(tx: Tx) -> list[Depot]:
        existing = await store.insert_depots(tx.conn, cmd.depots, utcnow())
        if existing:
            raise Conflict(f"depots already registered: {', '.join(sorted(existing))}", ids=sorted(existing))
        await tx.commit()
        return list(cmd.depots)

    return await transaction(ctx, work, cmd.actor)
