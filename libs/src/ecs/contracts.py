"""Message contracts shared by the services: the 110 gateway contract v1 and the event payloads.

proto-schemas/ is generated from these models (``make schemas``); a test fails when it drifts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from .vocabulary import Category, Level, Participant, Stage

# The shared vocabulary, re-exported under the names the contracts have always used.
CategoryName = Category
CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)
StageName = Stage
STAGES: tuple[str, ...] = tuple(s.value for s in Stage)

ALARM_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
GATEWAY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_ALARM_BYTES = 64 * 1024
MAX_BATCH = 500

Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False, strict=True)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False, strict=True)]


MAX_VERSION = 2**31 - 1
"""The largest version any service stores (a 32-bit integer column, as the operator APIs bound it)."""

Version = Annotated[int, Field(ge=1, le=MAX_VERSION, description="the version after this change")]
"""An incident version in an event: refused (dead letter) outside 1..MAX_VERSION, never a
database overflow retried again and again."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- 110 gateway contract v1 (DESIGN §7): keep exactly; a change is a new version -----------


class AlarmLocation(_Strict):
    lat: Latitude
    lon: Longitude
    crs: Literal["wgs84", "cgcs2000", "gcj02"] = Field(
        default="wgs84", description="gcj02 is converted to WGS-84; cgcs2000 is taken as WGS-84 (they differ by cm)"
    )
    accuracy_m: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)] | None = None
    address: Annotated[str, Field(max_length=500)] | None = None


class AlarmCaller(_Strict):
    number: Annotated[str, Field(min_length=1, max_length=32)]
    name: Annotated[str, Field(max_length=100)] | None = None


_RFC3339_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ]")


def _rfc3339_text(value: Any) -> Any:
    """``received_at`` as the contract gives it, an RFC 3339 text (DESIGN §7): a JSON number, or a
    text of digits, would otherwise be read as unix seconds."""
    if isinstance(value, str) and not _RFC3339_DATE.match(value):
        raise ValueError("must be an RFC 3339 date and time with an offset, e.g. 2026-05-01T08:30:00+08:00")
    if not isinstance(value, str | datetime):
        raise ValueError("must be an RFC 3339 date and time text with an offset")
    return value


class GatewayAlarm(_Strict):
    """One alarm as a 110 gateway sends it, over HTTP or on ``alarm.in.<gateway_id>``."""

    model_config = ConfigDict(extra="forbid", title="GatewayAlarmV1")

    alarm_id: Annotated[str, Field(pattern=ALARM_ID_PATTERN, description="unique per gateway: the idempotency key")]
    received_at: Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)] = Field(description="RFC 3339 with an offset")
    category: CategoryName
    location: AlarmLocation
    caller: AlarmCaller | None = None
    description: Annotated[str, Field(max_length=2000)]
    casualties: Annotated[StrictInt, Field(ge=0, le=1_000_000)] | None = None
    exercise: StrictBool = False


class AlarmReceipt(_Strict):
    alarm_id: str
    incident_id: str
    duplicate: bool
    correlated: bool


class BatchItemError(_Strict):
    index: int
    alarm_id: str | None = None
    status: int
    title: str
    detail: str
    errors: list[dict[str, str]] = Field(default_factory=list)


class BatchItemResult(_Strict):
    index: int
    status: int
    receipt: AlarmReceipt | None = None
    error: BatchItemError | None = None


class BatchReceipt(_Strict):
    accepted: int
    rejected: int
    results: list[BatchItemResult]


# --- incident-intake events -----------------------------------------------------------------


class IncidentCreated(_Strict):
    incident_id: str
    category: CategoryName
    level: Level
    lat: float
    lon: float
    first_alarm_at: datetime
    alarm_id: str
    gateway_id: str
    exercise: bool


class AlarmLinked(_Strict):
    incident_id: str
    alarm_id: str
    gateway_id: str
    category: CategoryName
    received_at: datetime
    lat: float
    lon: float
    alarm_count: int
    caller_count: int
    casualties: int
    new_incident: bool


class LevelChanged(_Strict):
    incident_id: str
    from_level: Level
    to_level: Level
    reason: str
    actor: str
    version: Version


class CategoryChanged(_Strict):
    """A medical-only incident became the scene a scene alarm near it reports (a medical call that
    came first): its plan is the scene's from now on. Categories only ever move that way
    (``ecs.vocabulary.scene_of``), so a copy applies it whatever order the events arrive in."""

    incident_id: str
    from_category: Category
    to_category: Category
    level: Level = Field(description="the incident's level with the new category")
    alarm_id: str = Field(description="the alarm that reported the scene")
    reason: str
    actor: str
    version: Version

    @model_validator(mode="after")
    def _medical_to_scene(self) -> CategoryChanged:
        if self.from_category is not Category.medical or self.to_category is Category.medical:
            raise ValueError("a category changes only from medical to a scene")
        return self


class StageChanged(_Strict):
    """Carries what downstream services need to act on the new stage without asking back."""

    incident_id: str
    from_stage: StageName
    to_stage: StageName
    actor: str
    version: Version
    category: CategoryName
    level: Level
    lat: float
    lon: float
    perimeter: dict[str, object] | None = None
    reason: str | None = None


class IncidentVerified(_Strict):
    incident_id: str
    actor: str
    automatic: bool
    version: Version


class PerimeterSet(_Strict):
    incident_id: str
    perimeter: dict[str, object]
    actor: str
    version: Version


class IncidentMerged(_Strict):
    incident_id: str = Field(description="the incident that absorbed the other")
    merged_incident_id: str
    alarms_moved: int
    actor: str


class IncidentSplit(_Strict):
    incident_id: str = Field(description="the incident the alarms left")
    new_incident_id: str
    alarm_ids: list[str]
    actor: str
    state_of: str | None = Field(
        default=None,
        description="the incident merged into incident_id earlier whose alarms these exactly are: the new "
        "incident takes back its state (stage, verification, perimeter, facts, level) and dispatch its units",
    )


class FactRecorded(_Strict):
    incident_id: str
    fact: Literal["hazard_under_control", "after_action_report"]
    actor: str
    version: Version


# --- facts other services publish about an incident (lifecycle guards) -----------------------


class ParticipantSettled(_Strict):
    """``<service>.incident.settled``: the participant holds nothing more for this incident
    (units released, reservations returned, evacuees checked out, all-clear published); a later
    ``settled: false`` reopens it."""

    incident_id: str
    participant: Participant = Field(description="the subject prefix of the settled participant")
    settled: bool
    detail: str = ""


class PerimeterSecured(_Strict):
    """``dispatch.incident.perimeter_secured``: the isolation units are (or no longer are) on scene."""

    incident_id: str
    on_scene: bool
    detail: str = ""


class StatementPublished(_Strict):
    """``notification.statement.published``: an official statement about the incident is out."""

    incident_id: str
    statement_id: str


# --- dispatch events --------------------------------------------------------------------------

UnitId = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="also the last token of its location subject")
]
UnitTypeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", examples=["fire_engine", "ambulance"])]
UnitStatusName = Literal["available", "assigned", "en_route", "on_scene", "returning", "out_of_service"]
LevelName = Literal["I", "II", "III", "IV"]


class VehicleLocation(_Strict):
    """A position report from a unit's vehicle on ``vehicle.location.<unit_id>`` (not enveloped)."""

    model_config = ConfigDict(extra="forbid", title="VehicleLocationV1")

    lat: Latitude
    lon: Longitude
    at: AwareDatetime = Field(description="when the position was fixed, RFC 3339 with an offset")
    speed_kmh: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)] | None = None
    heading_deg: Annotated[float, Field(ge=0, lt=360, allow_inf_nan=False)] | None = None
    accuracy_m: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class UnitRegistered(_Strict):
    """``dispatch.unit.registered``: a unit joined the roster (or was updated: ``dispatch.unit.updated``)."""

    unit_id: UnitId
    callsign: str
    agency: str
    unit_type: UnitTypeName
    capabilities: list[str]
    home_station: str
    district: str
    exercise: bool
    lent_to_drill: str | None = None
    actor: str


class UnitStatusChanged(_Strict):
    """``dispatch.unit.status.changed``: a unit reported a new status (or dispatch set one)."""

    unit_id: UnitId
    unit_type: UnitTypeName
    from_status: UnitStatusName
    to_status: UnitStatusName
    incident_id: str | None = None
    actor: str


class UnitAssigned(_Strict):
    """``dispatch.unit.assigned``: the unit now serves the incident."""

    incident_id: str
    assignment_id: int
    unit_id: UnitId
    unit_type: UnitTypeName
    agency: str
    stage: Literal[Stage.isolation, Stage.handling]
    source: Literal["automatic", "recommended", "override", "reassigned"]
    actor: str
    eta_s: float | None = None
    distance_m: float | None = None
    reason: str = ""


class UnitReleased(_Strict):
    """``dispatch.unit.released``: the unit no longer serves the incident."""

    incident_id: str
    assignment_id: int
    unit_id: UnitId
    unit_type: UnitTypeName
    status: UnitStatusName = Field(description="the unit's status after the release")
    reason: str
    actor: str


class PlanSupply(_Strict):
    item: str
    quantity: int


class PlanLevel(_Strict):
    isolation_radius_m: int
    evacuate: bool
    evacuation_radius_m: int
    isolation_units: dict[str, int]
    handling_units: dict[str, int]
    supplies: list[PlanSupply]
    notification_templates: dict[str, str] = Field(
        description="str.format templates; placeholders: incident_id, category, level, address, time, "
        "isolation_radius_m, evacuation_radius_m, shelter, hotline"
    )
    approval_required: list[str]


class PlanPublished(_Strict):
    """``dispatch.plan.published``: the active response plan of a category, in full.

    The same document answers a request on ``rpc.dispatch.plan.get`` (outside every stream) with
    ``{"category": "<name>"}``."""

    category: CategoryName
    version: Version
    levels: dict[LevelName, PlanLevel]
    actor: str
    published_at: datetime


@dataclass(frozen=True)
class MessageSpec:
    subject: str
    model: type[BaseModel]
    publisher: str
    summary: str
    enveloped: bool = True


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec(
        "alarm.in.{gateway_id}", GatewayAlarm, "110 gateway", "An alarm from a 110 gateway (not enveloped)", False
    ),
    MessageSpec("incident.created", IncidentCreated, "incident-intake", "An alarm opened a new incident"),
    MessageSpec("incident.alarm.linked", AlarmLinked, "incident-intake", "An alarm was linked to an incident"),
    MessageSpec(
        "incident.level.changed", LevelChanged, "incident-intake", "The incident's level was raised or lowered"
    ),
    MessageSpec("incident.stage.changed", StageChanged, "incident-intake", "The incident moved to another stage"),
    MessageSpec(
        "incident.category.changed", CategoryChanged, "incident-intake", "A medical-only incident became its scene"
    ),
    MessageSpec("incident.verified", IncidentVerified, "incident-intake", "The incident was verified"),
    MessageSpec("incident.perimeter.set", PerimeterSet, "incident-intake", "A perimeter was set for the incident"),
    MessageSpec("incident.merged", IncidentMerged, "incident-intake", "Another incident was merged into this one"),
    MessageSpec("incident.split", IncidentSplit, "incident-intake", "Alarms were split out into a new incident"),
    MessageSpec("incident.fact.recorded", FactRecorded, "incident-intake", "An operator recorded a lifecycle fact"),
    MessageSpec("{participant}.incident.settled", ParticipantSettled, "any participant", "A participant is settled"),
    MessageSpec("dispatch.incident.perimeter_secured", PerimeterSecured, "dispatch", "Perimeter units on scene"),
    MessageSpec("notification.statement.published", StatementPublished, "public-notification", "Statement out"),
    MessageSpec(
        "vehicle.location.{unit_id}",
        VehicleLocation,
        "vehicle location feed",
        "A unit's position (not enveloped)",
        False,
    ),
    MessageSpec("dispatch.unit.registered", UnitRegistered, "dispatch", "A unit joined the roster"),
    MessageSpec("dispatch.unit.updated", UnitRegistered, "dispatch", "A unit's roster entry changed"),
    MessageSpec("dispatch.unit.removed", UnitRegistered, "dispatch", "A unit left the roster"),
    MessageSpec("dispatch.unit.status.changed", UnitStatusChanged, "dispatch", "A unit's status changed"),
    MessageSpec("dispatch.unit.assigned", UnitAssigned, "dispatch", "A unit was assigned to an incident"),
    MessageSpec("dispatch.unit.released", UnitReleased, "dispatch", "A unit was released from an incident"),
    MessageSpec("dispatch.plan.published", PlanPublished, "dispatch", "A response plan version became active"),
)
