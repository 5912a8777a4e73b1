"""What gateways and operators ask incident-intake to do: one frozen dataclass per command, each
with exactly one handler (``handlers.COMMANDS``). The routes and consumers build them from what
they parsed; nothing here checks a rule (the domain does)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ecs.contracts import GatewayAlarm

from .domain import AlarmKey, CommanderFact, Level, Perimeter, Stage


@dataclass(frozen=True)
class ReportAlarms:
    """Alarms from 110 gateways, each as (gateway_id, alarm), arrived ``via`` http or nats."""

    alarms: Sequence[tuple[str, GatewayAlarm]]
    via: str


@dataclass(frozen=True)
class Verify:
    """A dispatcher confirms incident ``incident_id``, seen at ``version``."""

    incident_id: str
    version: int
    actor: str


@dataclass(frozen=True)
class SetPerimeter:
    """Set the incident's cordon."""

    incident_id: str
    version: int
    perimeter: Perimeter
    actor: str


@dataclass(frozen=True)
class ChangeStage:
    """Move the incident to ``stage`` (guarded)."""

    incident_id: str
    version: int
    stage: Stage
    actor: str
    reason: str | None = None


@dataclass(frozen=True)
class ChangeLevel:
    """Raise or lower the incident's level."""

    incident_id: str
    version: int
    level: Level
    actor: str
    reason: str


@dataclass(frozen=True)
class RecordFact:
    """A commander records a lifecycle fact, with an optional note."""

    incident_id: str
    version: int
    fact: CommanderFact
    actor: str
    note: str = ""


@dataclass(frozen=True)
class MergeIncident:
    """Merge incident ``source_id`` (seen at ``source_version``) into ``incident_id``."""

    incident_id: str
    version: int
    source_id: str
    source_version: int
    actor: str


@dataclass(frozen=True)
class SplitAlarms:
    """Move these alarms (gateway_id, alarm_id) out of the incident into a new one."""

    incident_id: str
    version: int
    alarms: Sequence[AlarmKey]
    actor: str


@dataclass(frozen=True)
class PurgeExercise:
    """Delete every exercise incident and its alarms (DESIGN §8); live data stays."""
