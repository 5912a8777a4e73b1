"""Ledger documents: receipts, adjustments and transfers change stock on hand, each line with its
ledger entry, all or none. A decrease is one conditional UPDATE (store.change_on_hand); a
back-dated one is checked against the line's history first (domain.check_history)."""

from __future__ import annotations

from datetime import date, datetime

from ecs.contracts_stockpile import StockDocumentPosted, StockLineChange
from ecs.envelope import utcnow
from ecs.errors import Conflict, InvalidInput, NotFound

from .. import store
from ..commands import AdjustStock, ReceiveStock, TransferStock
from ..context import Context
from ..domain import Condition, Depot, DocumentKind, Item, NegativeBalance, StockLine, check_history, to_base
from .tx import Tx, transaction


async def receive_stock(ctx: Context, cmd: ReceiveStock) -> int:
    """Post a receipt; returns the document id. Raises NotFound (depot, item), InvalidInput
    (quantity, unit, a future date) or Conflict (``lines.<i>.expiry``: a lot already held with
    another expiry; nothing of the document is written)."""
    now = utcnow()
    at = _effective(cmd.effective_at, now)

    async def work(tx: Tx) -> int:
        depot = await _depot(tx, cmd.depot_id)
        catalogue = await _items(tx, [line.item for line in cmd.lines])
        quantities = [
            to_base(catalogue[line.item], line.quantity, line.unit, f"lines.{i}.quantity")
            for i, line in enumerate(cmd.lines)
        ]
        doc = await store.new_document(tx.conn, DocumentKind.receipt, tx.actor, at, now, note=cmd.note)
        changes = []
        for i, (line, q) in enumerate(zip(cmd.lines, quantities, strict=True)):
            await _one_expiry(tx, depot.id, line.item, line.lot, line.expiry, f"lines.{i}.expiry")
            stock = await store.ensure_line(tx.conn, depot, line.item, line.lot, line.expiry, line.condition)
            await store.change_on_hand(tx.conn, doc, stock.id, q, at)
            tx.touch(depot.id, line.item)
            changes.append(_change(stock, q))
        tx.emit(_posted(doc, DocumentKind.receipt, None, changes, at, tx.actor), exercise=depot.exercise)
        await tx.commit()
        return doc

    return await transaction(ctx, work, cmd.actor)


async def adjust_stock(ctx: Context, cmd: AdjustStock) -> int:
    """Post an adjustment of one lot; returns the document id. Raises NotFound (depot, item, the
    lot), InvalidInput (quantity, unit) or NegativeBalance (409, with the item and the date)."""
    now = utcnow()
    at = _effective(cmd.effective_at, now)
    if cmd.delta == 0:
        raise InvalidInput("delta must not be 0", field="delta")

    async def work(tx: Tx) -> int:
        depot = await _depot(tx, cmd.depot_id)
        item = (await _items(tx, [cmd.item]))[cmd.item]
        size = to_base(item, abs(cmd.delta), cmd.unit, "delta")
        delta = size if cmd.delta > 0 else -size
        if delta > 0:
            stock = await store.ensure_line(tx.conn, depot, cmd.item, cmd.lot, None, cmd.condition)
        else:
            stock = await _lot(tx, depot, item, cmd.lot, cmd.condition)
        doc = await store.new_document(
            tx.conn, DocumentKind.adjustment, tx.actor, at, now, reason=cmd.reason, note=cmd.note
        )
        await _apply(tx, doc, stock, delta, at, now)
        tx.touch(depot.id, cmd.item)
        tx.emit(
            _posted(doc, DocumentKind.adjustment, cmd.reason, [_change(stock, delta)], at, tx.actor),
            exercise=depot.exercise,
        )
        await tx.commit()
        return doc

    return await transaction(ctx, work, cmd.actor)


async def transfer_stock(ctx: Context, cmd: TransferStock) -> int:
    """Move a good lot from one depot to another; returns the document id. Raises NotFound,
    InvalidInput (the same depot twice, between exercise and live depots, quantity, unit),
    NegativeBalance (409) or Conflict (409: the target holds the lot with another expiry)."""
    if cmd.from_depot == cmd.to_depot:
        raise InvalidInput("to_depot must differ from from_depot", field="to_depot")
    now = utcnow()
    at = _effective(cmd.effective_at, now)

    async def work(tx: Tx) -> int:
        source = await _depot(tx, cmd.from_depot)
        target = await _depot(tx, cmd.to_depot)
        if source.exercise != target.exercise:
            raise InvalidInput("stock does not move between exercise and live depots", field="to_depot")
        item = (await _items(tx, [cmd.item]))[cmd.item]
        q = to_base(item, cmd.quantity, cmd.unit)
        from_line = await _lot(tx, source, item, cmd.lot, Condition.good)
        doc = await store.new_document(tx.conn, DocumentKind.transfer, tx.actor, at, now, note=cmd.note)
        await _apply(tx, doc, from_line, -q, at, now)
        await _one_expiry(tx, target.id, cmd.item, cmd.lot, from_line.expiry, "lot")
        to_line = await store.ensure_line(tx.conn, target, cmd.item, cmd.lot, from_line.expiry, Condition.good)
        await store.change_on_hand(tx.conn, doc, to_line.id, q, at)
        tx.touch(source.id, cmd.item)
        tx.touch(target.id, cmd.item)
        changes = [_change(from_line, -q), _change(to_line, q)]
        tx.emit(_posted(doc, DocumentKind.transfer, None, changes, at, tx.actor), exercise=source.exercise)
        await tx.commit()
        return doc

    return await transaction(ctx, work, cmd.actor)


async def _one_expiry(tx: Tx, depot_id: str, item: str, lot: str, expiry: date | None, field: str) -> None:
    """A lot has one expiry: Conflict (409 naming ``field``) when ``depot_id`` holds ``lot`` of
    ``item`` with another one (a receipt, or a transfer in, would give stock the wrong date)."""
    held = await store.lot_expiries(tx.conn, depot_id, item, lot)
    if held and expiry not in held:
        said = ", ".join(sorted(str(d) if d else "no expiry" for d in held))
        raise Conflict(
            f"lot {lot} of {item} at {depot_id} is held with {said}; this stock has {expiry or 'no expiry'}: "
            "a lot has one expiry, so put this stock under a lot of its own",
            field=field,
            item=item,
            lot=lot,
        )


async def _apply(tx: Tx, doc: int, stock: StockLine, delta: int, at: datetime, now: datetime) -> None:
    """Change a line by ``delta`` at ``at``: a back-dated decrease must keep every later balance
    ≥ 0; any decrease must leave what is reserved (the conditional UPDATE decides)."""
    if delta < 0 and at < now:
        await store.lock_line(tx.conn, stock.id)
        check_history(await store.line_history(tx.conn, stock.id), at, delta, stock.item, stock.depot_id)
    if not await store.change_on_hand(tx.conn, doc, stock.id, delta, at):
        current = await store.get_line(tx.conn, stock.id)
        available = current.available if current is not None else 0
        raise NegativeBalance(stock.item, stock.depot_id, at, available + delta)


def _effective(at: datetime | None, now: datetime) -> datetime:
    if at is None:
        return now
    if at > now:
        raise InvalidInput("effective_at must not be in the future", field="effective_at")
    return at


async def _depot(tx: Tx, depot_id: str) -> Depot:
    depot = await store.get_depot(tx.conn, depot_id)
    if depot is None:
        raise NotFound(f"depot {depot_id} not found", depot_id=depot_id)
    return depot


async def _items(tx: Tx, codes: list[str]) -> dict[str, Item]:
    found = await store.get_items(tx.conn, codes)
    for code in codes:
        if code not in found:
            raise NotFound(f"item {code} not found", item=code)
    return found


async def _lot(tx: Tx, depot: Depot, item: Item, lot: str, condition: Condition) -> StockLine:
    stock = await store.find_line(tx.conn, depot.id, item.code, lot, condition)
    if stock is None:
        raise NotFound(f"depot {depot.id} holds no {condition} {item.code} of lot {lot}", item=item.code, lot=lot)
    return stock


def _change(stock: StockLine, delta: int) -> StockLineChange:
    return StockLineChange(
        depot_id=stock.depot_id, item=stock.item, lot=stock.lot, condition=stock.condition.value, delta=delta
    )


def _posted(
    doc: int, kind: DocumentKind, reason: str | None, changes: list[StockLineChange], at: datetime, actor: str
) -> StockDocumentPosted:
    return StockDocumentPosted(
        document_id=doc, kind=kind.value, reason=reason, lines=changes, effective_at=at, actor=actor
    )
