"""Kits: made and broken only by ledger documents, like every other change of stock. An assembly
consumes a kit's parts from one depot's good, unexpired stock, earliest expiry first, and receives
the kits there, with the earliest expiry of the parts taken; a disassembly consumes kits and
receives their parts back. Each line is a conditional UPDATE with its ledger entry
(store.change_on_hand), on rows locked first (store.lock_depot_lines), so a document is whole or
refused and replaying the ledger still gives every balance. Reservations take assembled kits
only: nothing here runs unless an operator posts the document."""

from __future__ import annotations

from typing import Any

from ecs.envelope import utcnow
from ecs.errors import Conflict, InvalidInput

from .. import store
from ..commands import AssembleKits, DisassembleKits
from ..context import Context
from ..domain import Condition, DocumentKind, plan_assembly, plan_disassembly, to_base
from .stock import _change, _depot, _items, _posted
from .tx import Tx, transaction


async def assemble_kits(ctx: Context, cmd: AssembleKits) -> int:
    """Post an assembly; returns the document id. The kits go into lot ``A<document id>`` of the
    depot. Raises NotFound (depot, kit), InvalidInput (``item`` is not a kit; ``quantity`` or
    ``unit``) or PartsShort (409 naming each short part, the depot and how much is short)."""
    now = utcnow()

    async def work(tx: Tx) -> int:
        depot, kit, kits = await _kit_order(tx, cmd)
        lines = await store.lock_depot_lines(tx.conn, depot.id, kit.kit_of)
        takes, expiry = plan_assembly(kit, kits, depot.id, lines, now.date())
        doc = await store.new_document(tx.conn, DocumentKind.assembly, tx.actor, now, now, note=cmd.note)
        changes = await _take(tx, doc, depot.id, takes, now)
        made = await store.ensure_line(tx.conn, depot, kit.code, f"A{doc}", expiry, Condition.good)
        await store.change_on_hand(tx.conn, doc, made.id, kits, now)
        tx.touch(depot.id, kit.code)
        changes.append(_change(made, kits))
        tx.emit(_posted(doc, DocumentKind.assembly, None, changes, now, tx.actor), exercise=depot.exercise)
        await tx.commit()
        return doc

    return await transaction(ctx, work, cmd.actor)


async def disassemble_kits(ctx: Context, cmd: DisassembleKits) -> int:
    """Post a disassembly; returns the document id. Good kits not reserved are taken earliest
    expiry first; their parts go into lot ``D<document id>`` of the depot with the earliest
    expiry of the kits taken. Raises NotFound (depot, kit), InvalidInput (``item`` is not a kit;
    ``quantity`` or ``unit``) or PartsShort (409: too few kits available)."""
    now = utcnow()

    async def work(tx: Tx) -> int:
        depot, kit, kits = await _kit_order(tx, cmd)
        lines = await store.lock_depot_lines(tx.conn, depot.id, [kit.code])
        takes, expiry = plan_disassembly(kit, kits, depot.id, lines)
        doc = await store.new_document(tx.conn, DocumentKind.disassembly, tx.actor, now, now, note=cmd.note)
        changes = await _take(tx, doc, depot.id, takes, now)
        for part, per_kit in sorted(kit.kit_of.items()):
            back = await store.ensure_line(tx.conn, depot, part, f"D{doc}", expiry, Condition.good)
            await store.change_on_hand(tx.conn, doc, back.id, per_kit * kits, now)
            tx.touch(depot.id, part)
            changes.append(_change(back, per_kit * kits))
        tx.emit(_posted(doc, DocumentKind.disassembly, None, changes, now, tx.actor), exercise=depot.exercise)
        await tx.commit()
        return doc

    return await transaction(ctx, work, cmd.actor)


async def _kit_order(tx: Tx, cmd: AssembleKits | DisassembleKits) -> tuple[Any, Any, int]:
    """The depot, the kit and how many kits (base units) an assembly or disassembly names.
    Raises NotFound (depot, item), InvalidInput (``item`` is not a kit; ``quantity``, ``unit``)."""
    depot = await _depot(tx, cmd.depot_id)
    kit = (await _items(tx, [cmd.kit]))[cmd.kit]
    if not kit.kit_of:
        raise InvalidInput(f"{kit.code} is not a kit (it declares no kit_of)", field="item")
    return depot, kit, to_base(kit, cmd.quantity, cmd.unit)


async def _take(tx: Tx, doc: int, depot_id: str, takes: Any, now: Any) -> list[Any]:
    """Take ``takes`` ((locked line, base units) pairs) off their lines under document ``doc``;
    returns the ledger changes."""
    changes = []
    for line, q in takes:
        if not await store.change_on_hand(tx.conn, doc, line.id, -q, now):
            raise Conflict(f"stock line {line.id} changed meanwhile; try again")  # locked: never
        tx.touch(depot_id, line.item)
        changes.append(_change(line, -q))
    return changes
