"""One function per command or event, each of one shape: load → decide (a pure domain function)
→ save → emit → commit.

``COMMANDS`` gives each command its one handler (the routes in api.py send commands through
``handle``); ``EVENTS`` gives each incident event its handlers (consumers.py calls them in order).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import commands
from ..context import Context
from . import alerts, automation, catalogue, edxl, exercise, kits, reservations, stock

Handler = Callable[[Context, Any], Awaitable[Any]]
EventHandler = Callable[[Context, Any, Any, str], Awaitable[None]]
"""``(context, envelope, payload, consumer)``: the consumer's name keys the inbox."""

COMMANDS: dict[type, Handler] = {
    commands.AddItems: catalogue.add_items,
    commands.AddDepots: catalogue.add_depots,
    commands.ReceiveStock: stock.receive_stock,
    commands.AdjustStock: stock.adjust_stock,
    commands.TransferStock: stock.transfer_stock,
    commands.AssembleKits: kits.assemble_kits,
    commands.DisassembleKits: kits.disassemble_kits,
    commands.Reserve: reservations.reserve,
    commands.ReserveMany: reservations.reserve_many,
    commands.ActOnReservation: reservations.act_on_reservation,
    commands.PurgeExercise: exercise.purge_exercise,
    commands.SetMinimum: alerts.set_minimum,
    commands.ImportEdxlRequest: edxl.import_request,
}

EVENTS: dict[str, tuple[EventHandler, ...]] = {
    "incident.created": (automation.remember_incident,),
    "incident.stage.changed": (automation.follow_stage,),
    "incident.level.changed": (automation.follow_level,),
    "incident.category.changed": (automation.follow_category,),
    "incident.merged": (automation.follow_merge,),
}


async def handle(ctx: Context, command: Any) -> Any:
    """Run ``command`` through its handler; returns what the handler returns."""
    return await COMMANDS[type(command)](ctx, command)


__all__ = ["COMMANDS", "EVENTS", "EventHandler", "Handler", "handle"]
