"""One function per command or event, each of one shape: load → decide (a pure domain function)
→ save → emit → commit.

``COMMANDS`` gives each command its one handler (the routes in api.py send commands through
``handle``); ``EVENTS`` gives each event its handlers (consumers.py calls them in order).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import commands
from ..context import Context
from . import alerts, automation, deliveries, exercise, rumors, statements

Handler = Callable[[Context, Any], Awaitable[Any]]
EventHandler = Callable[[Context, Any, Any, str], Awaitable[None]]
"""``(context, envelope, payload, consumer)``: the consumer's name keys the inbox."""

COMMANDS: dict[type, Handler] = {
    commands.DraftAlert: alerts.draft_alert,
    commands.EditAlert: alerts.edit_alert,
    commands.StepAlert: alerts.step_alert,
    commands.ExpireAlerts: alerts.expire_alerts,
    commands.DraftStatement: statements.draft_statement,
    commands.StepStatement: statements.step_statement,
    commands.ReportRumor: rumors.report_rumor,
    commands.StepRumor: rumors.step_rumor,
    commands.SweepClocks: automation.sweep_clocks,
    commands.RegisterChannel: deliveries.register_channel,
    commands.Republish: deliveries.republish,
    commands.DeliverDue: deliveries.deliver_due,
    commands.RegisterTargets: deliveries.register_targets,
    commands.PurgeExercise: exercise.purge_exercise,
}

EVENTS: dict[str, tuple[EventHandler, ...]] = {
    "incident.created": (automation.remember_incident,),
    "incident.stage.changed": (automation.follow_stage,),
    "incident.level.changed": (automation.follow_level,),
    "incident.category.changed": (automation.follow_category,),
    "dispatch.plan.published": (automation.take_plan,),
}


async def handle(ctx: Context, command: Any) -> Any:
    """Run ``command`` through its handler; returns what the handler returns."""
    return await COMMANDS[type(command)](ctx, command)


__all__ = ["COMMANDS", "EVENTS", "Handler", "EventHandler", "handle"]
