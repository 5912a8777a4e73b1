"""One function per command or event, each of one shape: load → decide (a pure domain function,
which returns its decision and its events) → save → emit → commit.

``COMMANDS`` gives each command its one handler (the routes in api.py send commands through
``handle``); ``EVENTS`` gives each incident event its handlers (consumers.py calls them in order).
Handlers share one Context (context.py): the database, the settings, the plans and the unit
directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import commands
from ..context import Context
from . import assignments, automation, plans, units

Handler = Callable[[Context, Any], Awaitable[Any]]
EventHandler = Callable[[Context, Any, Any, str], Awaitable[None]]
"""``(context, envelope, payload, consumer)``: the consumer's name keys the inbox, so an event
with several handlers gives each of them its own consumer name."""

COMMANDS: dict[type, Handler] = {
    commands.RegisterUnits: units.register_units,
    commands.UpdateUnit: units.update_unit,
    commands.RemoveUnit: units.remove_unit,
    commands.ReportStatus: units.change_status,
    commands.MoveUnit: units.move_unit,
    commands.RecordPositions: units.record_positions,
    commands.LendUnit: units.lend_unit,
    commands.ReclaimUnit: units.reclaim_unit,
    commands.AssignUnits: assignments.assign_units,
    commands.AcceptRecommendation: assignments.accept_recommendation,
    commands.ReleaseAssignment: assignments.release_assignment,
    commands.Reassign: assignments.reassign,
    commands.PurgeExercise: assignments.purge_exercise,
    commands.PublishPlan: plans.publish_plan,
}

EVENTS: dict[str, tuple[EventHandler, ...]] = {
    "incident.created": (automation.remember_incident,),
    "incident.stage.changed": (automation.follow_stage,),
    "incident.level.changed": (automation.follow_level,),
    "incident.category.changed": (automation.follow_category,),
    "incident.merged": (automation.take_over_merged,),
    "incident.split": (automation.give_back_split,),
}


async def handle(ctx: Context, command: Any) -> Any:
    """Run ``command`` through its handler; returns what the handler returns."""
    return await COMMANDS[type(command)](ctx, command)


__all__ = ["COMMANDS", "EVENTS", "Handler", "EventHandler", "handle"]
