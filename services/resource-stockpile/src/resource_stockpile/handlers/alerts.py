"""Minimums, and the periodic sweep: expiry warnings once per lot, and every minimum's alert checked
again (stock crosses a minimum with no document when a lot becomes short-dated). Several replicas
may sweep at once: the unique indexes decide who warns and who opens an alert."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ecs.contracts_stockpile import LotExpiring
from ecs.envelope import utcnow
from ecs.errors import NotFound, StaleVersion

from .. import store
from ..commands import SetMinimum
from ..context import Context
from ..domain import expiry_horizon, to_base
from .levels import check_levels, clear
from .tx import AUTOMATION, Tx, transaction

SWEEP_CHUNK = 500
"""(depot, item) pairs or lots per sweep transaction, so no transaction holds many locks long."""


@dataclass(frozen=True, slots=True)
class MinimumSet:
    depot_id: str
    item: str
    minimum: int
    version: int


async def set_minimum(ctx: Context, cmd: SetMinimum) -> MinimumSet:
    """Set a depot's minimum of an item; the alert opens or clears in the same transaction. Raises
    NotFound (depot, item), InvalidInput (minimum, unit) or StaleVersion (409)."""

    async def work(tx: Tx) -> MinimumSet:
        depot = await store.get_depot(tx.conn, cmd.depot_id)
        if depot is None:
            raise NotFound(f"depot {cmd.depot_id} not found", depot_id=cmd.depot_id)
        found = await store.get_items(tx.conn, [cmd.item])
        if cmd.item not in found:
            raise NotFound(f"item {cmd.item} not found", item=cmd.item)
        minimum = 0 if Decimal(cmd.minimum) == 0 else to_base(found[cmd.item], cmd.minimum, cmd.unit, "minimum")
        version = await store.put_minimum(tx.conn, depot.id, cmd.item, minimum, cmd.version, tx.actor, utcnow())
        if version is None:
            current = await store.get_minimum(tx.conn, depot.id, cmd.item)
            raise StaleVersion(
                f"the minimum of {cmd.item} at {depot.id} changed since version {cmd.version}",
                version=current.version if current is not None else 0,
            )
        if minimum == 0:
            await clear(tx, depot.id, cmd.item, 0, 0, depot.exercise)
        tx.touch(depot.id, cmd.item)
        await tx.commit()
        return MinimumSet(depot.id, cmd.item, minimum, version)

    return await transaction(ctx, work, cmd.actor)


async def sweep(ctx: Context) -> tuple[int, int]:
    """Warn once of every lot expiring within STOCKPILE_EXPIRY_WARNING_DAYS (or expired) and check
    every minimum's alert again; returns (warnings, pairs checked)."""
    warned = 0
    while True:
        seen, got = await transaction(ctx, _warn_expiring, AUTOMATION)
        warned += got
        if seen < SWEEP_CHUNK:
            break
    async with ctx.db.engine.connect() as conn:
        pairs = await store.minimum_pairs(conn)
    for start in range(0, len(pairs), SWEEP_CHUNK):
        chunk = pairs[start : start + SWEEP_CHUNK]

        async def check(tx: Tx, chunk: list[tuple[str, str]] = chunk) -> None:
            await check_levels(ctx, tx, chunk)
            await tx.commit()

        await transaction(ctx, check, AUTOMATION)
    return warned, len(pairs)


async def _warn_expiring(tx: Tx) -> tuple[int, int]:
    """One chunk of lots not warned of yet: (lots seen, warnings recorded)."""
    assert tx.ctx is not None
    now = utcnow()
    today = now.date()
    horizon = expiry_horizon(today, tx.ctx.settings.expiry_warning_days)
    lots = await store.expiring_lots(tx.conn, horizon, SWEEP_CHUNK)
    warned = 0
    for lot in lots:
        exercise = bool(lot.exercise)
        on_hand = int(lot.on_hand)
        warning_id = await store.warn_expiry(
            tx.conn, lot.depot_id, lot.item, lot.lot, lot.expiry, on_hand, exercise, now
        )
        if warning_id is None:  # another replica's sweep warned of it meanwhile
            continue
        tx.emit(
            LotExpiring(
                warning_id=warning_id,
                depot_id=lot.depot_id,
                item=lot.item,
                lot=lot.lot,
                expiry=lot.expiry,
                days_left=(lot.expiry - today).days,
                on_hand=on_hand,
            ),
            exercise=exercise,
        )
        warned += 1
    await tx.commit()
    return len(lots), warned
