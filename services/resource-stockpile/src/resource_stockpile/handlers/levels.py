"""Low stock: one alert per (depot, item) while what it could reserve is below its minimum, opened
and cleared in the transaction that moved the stock. The database decides: the minimum's row is
locked so two transactions check a pair one after the other, the open alert is a partial unique
index (INSERT ... ON CONFLICT DO NOTHING) and clearing is a conditional UPDATE — so one event on
entering and one on clearing, whatever races, never a storm."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from ecs.contracts_stockpile import LowStock, StockRecovered
from ecs.envelope import utcnow

from .. import store
from ..context import Context
from ..domain import is_below

if TYPE_CHECKING:
    from .tx import Tx


async def check_levels(ctx: Context, tx: Tx, pairs: Iterable[tuple[str, str]]) -> None:
    """Open the low-stock alert of each (depot, item) now below its minimum and clear it for each
    at or above (or without a minimum any more), emitting LowStock / StockRecovered once each."""
    pairs = sorted(set(pairs))
    minimums = await store.lock_minimums(tx.conn, pairs)
    if not minimums:
        # No minimum: nothing to open; an alert left open by a minimum since set to 0 is cleared
        # by set_minimum itself, so nothing to clear either.
        return
    now = utcnow()
    not_before = now.date() + timedelta(days=ctx.settings.min_shelf_life_days)
    levels = await store.available_levels(tx.conn, minimums, not_before)
    exercise = await store.depots_exercise(tx.conn, [d for d, _ in minimums])
    for (depot_id, item), minimum in minimums.items():
        available = levels[(depot_id, item)]
        if is_below(available, minimum):
            alert_id = await store.open_low_stock(
                tx.conn, depot_id, item, minimum, available, exercise.get(depot_id, False), now
            )
            if alert_id is not None:
                tx.emit(
                    LowStock(alert_id=alert_id, depot_id=depot_id, item=item, minimum=minimum, available=available),
                    exercise=exercise.get(depot_id, False),
                )
        else:
            await clear(tx, depot_id, item, minimum, available, exercise.get(depot_id, False))


async def clear(tx: Tx, depot_id: str, item: str, minimum: int, available: int, exercise: bool) -> None:
    """Clear the (depot, item)'s open alert, if there is one, and say so once."""
    cleared = await store.clear_low_stock(tx.conn, depot_id, item, available, utcnow())
    if cleared is not None:
        tx.emit(
            StockRecovered(
                alert_id=int(cleared.id),
                depot_id=depot_id,
                item=item,
                minimum=minimum,
                available=max(available, 0),
                raised_at=cleared.raised_at,
            ),
            exercise=exercise,
        )
