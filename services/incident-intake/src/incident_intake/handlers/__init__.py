"""One function per command or event, registered in two plain dicts the routes and consumers use:
``COMMANDS`` (command type → its one handler) and ``EVENTS`` (subject → its handlers).

- ``alarms``: gateway alarms through the micro-batcher into correlation;
- ``incidents``: operator commands on incidents;
- ``facts``: other services' facts about incidents.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ecs.envelope import Envelope

from .. import commands as c
from ..domain import Participant
from . import alarms, facts, incidents
from .context import Context

__all__ = ["COMMANDS", "EVENTS", "Context", "handle"]

COMMANDS: dict[type, Callable[[Any, Context], Awaitable[Any]]] = {
    c.ReportAlarms: alarms.report,
    c.Verify: incidents.verify,
    c.SetPerimeter: incidents.set_perimeter,
    c.ChangeStage: incidents.change_stage,
    c.ChangeLevel: incidents.change_level,
    c.RecordFact: incidents.record_fact,
    c.MergeIncident: incidents.merge,
    c.SplitAlarms: incidents.split,
    c.PurgeExercise: incidents.purge_exercise,
}

EventHandler = Callable[[Envelope, Context, str], Awaitable[None]]
"""``handler(envelope, context, consumer)``; raises Poison for a message that can never succeed."""

EVENTS: dict[str, list[EventHandler]] = {
    **{f"{p}.incident.settled": [facts.participant_settled] for p in Participant},
    f"{Participant.dispatch}.incident.perimeter_secured": [facts.perimeter_secured],
    f"{Participant.notification}.statement.published": [facts.statement_published],
}


async def handle(command: Any, ctx: Context) -> Any:
    """Run ``command``'s handler and return its answer."""
    return await COMMANDS[type(command)](command, ctx)
