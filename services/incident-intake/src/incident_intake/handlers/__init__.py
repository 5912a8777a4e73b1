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

from ..commands import (
    ChangeLevel,
    ChangeStage,
    MergeIncident,
    PurgeExercise,
    RecordFact,
    ReportAlarms,
    SetPerimeter,
    SplitAlarms,
    Verify,
)
from ..domain import Participant
from . import alarms, facts, incidents
from .context import Context

__all__ = ["COMMANDS", "EVENTS", "Context", "handle"]

COMMANDS: dict[type, Callable[[Any, Context], Awaitable[Any]]] = {
    ReportAlarms: alarms.report,
    Verify: incidents.verify,
    SetPerimeter: incidents.set_perimeter,
    ChangeStage: incidents.change_stage,
    ChangeLevel: incidents.change_level,
    RecordFact: incidents.record_fact,
    MergeIncident: incidents.merge,
    SplitAlarms: incidents.split,
    PurgeExercise: incidents.purge_exercise,
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
