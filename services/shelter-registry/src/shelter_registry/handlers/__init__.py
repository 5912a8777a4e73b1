"""One function per command or event, each of one shape: load → decide (a pure domain function)
→ save → emit → commit.

``COMMANDS`` gives each command its one handler (the routes in api.py send commands through
``handle``); ``EVENTS`` gives each incident event its handlers (consumers.py calls them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .. import commands
from ..context import Context
from . import automation, exercise, households, shelters

Handler = Callable[[Context, Any], Awaitable[Any]]
EventHandler = Callable[..., Awaitable[None]]
"""``(context, envelope, payload, consumer)``: the consumer's name keys the inbox."""

COMMANDS: dict[type, Handler] = {
    commands.RegisterShelters: shelters.register_shelters,
    commands.UpdateShelter: shelters.update_shelter,
    commands.ChangeShelterStatus: shelters.change_status,
    commands.PlaceHousehold: households.place_household,
    commands.PlaceBatch: households.place_batch,
    commands.ChangeRegistration: households.change_registration,
    commands.Search: households.search,
    commands.SetExpectedEvacuees: automation.set_expected,
    commands.PurgeExercise: exercise.purge_exercise,
}

EVENTS: dict[str, tuple[EventHandler, ...]] = {
    "incident.stage.changed": (automation.follow_stage,),
    "incident.level.changed": (automation.follow_level,),
    "incident.category.changed": (automation.follow_category,),
    "incident.merged": (automation.follow_merge,),
}


async def handle(ctx: Context, command: Any) -> Any:
    """Run ``command`` through its handler; returns what the handler returns."""
    return await COMMANDS[type(command)](ctx, command)


__all__ = ["COMMANDS", "EVENTS", "EventHandler", "Handler", "handle"]
