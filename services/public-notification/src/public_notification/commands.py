"""What officers ask public-notification to do, through the API: one command, one handler
(handlers.COMMANDS). ``drill_only`` is set when the caller acts as a drill runner: the command
then applies to exercise incidents only (DESIGN §8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .domain import AlertAction, ChannelKind, MsgType, RumorAction, StatementAction, StatementKind

# --- alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AreaSpec:
    """The area an officer gives: a circle (centre in WGS-84 degrees, radius in metres) or a
    polygon (``[[lat, lon], ...]``, closed), or neither (the incident's perimeter circle)."""

    description: str = ""
    circle: tuple[float, float, float] | None = None
    polygon: Sequence[Sequence[float]] | None = None
    geocodes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DraftAlert:
    """Compose an alert for the incident from its plan's templates (or from the texts given),
    as an Alert, or an Update or Cancel of the published alert ``references``."""

    incident_id: str
    actor: str
    msg_type: MsgType = MsgType.Alert
    references: str | None = None
    area: AreaSpec = AreaSpec()
    values: Mapping[str, str] = field(default_factory=dict)
    description_zh: str | None = None
    description_en: str | None = None
    instruction_zh: str = ""
    instruction_en: str = ""
    expires: datetime | None = None
    drill_only: bool = False


@dataclass(frozen=True, slots=True)
class EditAlert:
    """Change a draft's texts, area or expiry, if it is still at ``version``."""

    alert_id: str
    version: int
    actor: str
    area: AreaSpec | None = None
    description_zh: str | None = None
    description_en: str | None = None
    instruction_zh: str | None = None
    instruction_en: str | None = None
    expires: datetime | None = None
    drill_only: bool = False


@dataclass(frozen=True, slots=True)
class StepAlert:
    """Submit, approve, reject, publish or withdraw an alert seen at ``version``."""

    alert_id: str
    action: AlertAction
    version: int
    actor: str
    drill_only: bool = False


# --- statements --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DraftStatement:
    """Draft a statement from the plan's template for ``kind`` (or from the texts given)."""

    incident_id: str
    kind: StatementKind
    actor: str
    text_zh: str | None = None
    text_en: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)
    answers_rumors: Sequence[str] = ()
    drill_only: bool = False


@dataclass(frozen=True, slots=True)
class StepStatement:
    """Submit, approve, reject, publish or withdraw a statement seen at ``version``."""

    statement_id: str
    action: StatementAction
    version: int
    actor: str
    drill_only: bool = False


# --- rumors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportRumor:
    """A rumor seen about the incident: where (source, link), what it says, when first seen
    (UTC), and how many people it is thought to have reached."""

    incident_id: str
    source: str
    text: str
    first_seen: datetime
    actor: str
    link: str | None = None
    reach: int | None = None
    drill_only: bool = False


@dataclass(frozen=True, slots=True)
class StepRumor:
    """Verify (confirm, refute, mark unverified), answer or close a rumor seen at ``version``;
    an answer names the published statement or alert that answered it."""

    rumor_id: str
    action: RumorAction
    version: int
    actor: str
    statement_id: str | None = None
    alert_id: str | None = None
    drill_only: bool = False


# --- the release clocks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpireAlerts:
    """Published alerts whose ``expires`` passed as of ``now`` (UTC) become expired."""

    now: datetime


@dataclass(frozen=True, slots=True)
class SweepClocks:
    """Warn of clocks due soon and record the ones missed, as of ``now`` (UTC)."""

    now: datetime


# --- channels and deliveries ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterChannel:
    """A channel: its kind, a name, whether it is an exercise channel, and a webhook's URL and key."""

    kind: ChannelKind
    name: str
    exercise: bool
    actor: str
    url: str | None = None
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class Republish:
    """Send a published alert again to every channel of its kind."""

    alert_id: str
    actor: str
    drill_only: bool = False


@dataclass(frozen=True, slots=True)
class DeliverDue:
    """Send up to ``limit`` deliveries that are due."""

    limit: int = 200


@dataclass(frozen=True, slots=True)
class RegisterTargets:
    """Cells, districts or subscriber groups at their positions (WGS-84 degrees), all at once."""

    targets: Sequence[Mapping[str, object]]
    actor: str


@dataclass(frozen=True, slots=True)
class PurgeExercise:
    """Forget the exercise incidents with their alerts (pending deliveries stop), statements,
    rumors and clocks; with ``channels_too``, the exercise channels as well."""

    actor: str
    channels_too: bool = False
