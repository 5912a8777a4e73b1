"""Message contracts of public-notification: the events it publishes on `notification.>` (stream of the same
domain). proto-schemas/ is generated from `MESSAGES` with the rest (`ecs.catalogue`).

``notification.statement.published`` (``ecs.contracts.StatementPublished``) and
``notification.incident.settled`` (``ecs.contracts.ParticipantSettled``) are in the shared contracts,
because incident-intake's lifecycle guards read them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .contracts import MessageSpec
from .vocabulary import Level

AlertStatusName = Literal[
    "draft", "pending_approval", "approved", "published", "updated", "cancelled", "expired", "withdrawn"
]
ClockKindName = Literal["first_information", "press_conference"]
RumorStatusName = Literal["reported", "unverified", "confirmed", "refuted", "answered", "closed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertPublished(_Strict):
    """``notification.alert.published``: a CAP alert went out (an Alert, or an Update or Cancel of one)."""

    incident_id: str
    alert_id: str
    identifier: str = Field(description="the CAP <identifier>, stable for the alert's life")
    msg_type: Literal["Alert", "Update", "Cancel"]
    cap_status: Literal["Actual", "Exercise"]
    references: str | None = Field(default=None, description="the CAP <identifier> of the alert it changes")
    sent: datetime = Field(description="the CAP <sent>, frozen at publication")
    level: Level
    author: str
    approver: str


class AlertEnded(_Strict):
    """``notification.alert.ended``: a published alert was superseded by an Update, cancelled or expired."""

    incident_id: str
    alert_id: str
    identifier: str
    status: Literal["updated", "cancelled", "expired"]
    by_alert_id: str | None = Field(default=None, description="the Update or Cancel that ended it")


class ClockEvent(_Strict):
    """``notification.clock.{started,due_soon,met,missed}``: a release clock of the incident (UTC times)."""

    incident_id: str
    kind: ClockKindName
    started_at: datetime
    due_at: datetime
    met_at: datetime | None = None
    statement_id: str | None = Field(default=None, description="the statement that met it")


class RumorChanged(_Strict):
    """``notification.rumor.changed``: a rumor was reported, verified, answered or closed."""

    incident_id: str
    rumor_id: str
    from_status: RumorStatusName | None = None
    to_status: RumorStatusName
    actor: str
    answered_by: str | None = Field(default=None, description="the statement or alert id that answered it")


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec("notification.alert.published", AlertPublished, "public-notification", "A CAP alert went out"),
    MessageSpec("notification.alert.ended", AlertEnded, "public-notification", "A published alert ended"),
    MessageSpec("notification.clock.started", ClockEvent, "public-notification", "A release clock started"),
    MessageSpec("notification.clock.due_soon", ClockEvent, "public-notification", "A release clock is due soon"),
    MessageSpec("notification.clock.met", ClockEvent, "public-notification", "A statement met a release clock"),
    MessageSpec("notification.clock.missed", ClockEvent, "public-notification", "A release clock was missed"),
    MessageSpec("notification.rumor.changed", RumorChanged, "public-notification", "A rumor moved on"),
)
