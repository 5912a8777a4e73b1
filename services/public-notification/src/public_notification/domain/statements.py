"""Official statements and their release clocks (国办发〔2016〕80号: for a major emergency,
authoritative information within 5 hours and a press conference within 24 hours).

A statement is drafted (from the plan's ``official_statement`` or ``rumor_rebuttal`` template, or
by hand), approved by a second person like an alert, and published. The clocks start when an
incident is level II or I; the first published statement meets the first-information clock, a
published press-conference statement the press-conference clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from ecs import errors
from ecs.vocabulary import Level

__all__ = [
    "StatementStatus",
    "StatementAction",
    "StatementKind",
    "STATEMENT_TRANSITIONS",
    "IllegalStatementStep",
    "next_statement_status",
    "ClockKind",
    "ClockState",
    "Clock",
    "CLOCK_LEVELS",
    "starts_clocks",
    "clock_due",
    "clock_state",
    "clocks_met_by",
]


class StatementStatus(StrEnum):
    draft = "draft"
    pending_approval = "pending_approval"
    approved = "approved"
    published = "published"
    withdrawn = "withdrawn"


class StatementAction(StrEnum):
    submit = "submit"
    approve = "approve"
    reject = "reject"
    publish = "publish"
    withdraw = "withdraw"


class StatementKind(StrEnum):
    """What a statement is: information, a press conference's statement, or a rumor's rebuttal."""

    information = "information"
    press_conference = "press_conference"
    rebuttal = "rebuttal"


STATEMENT_TRANSITIONS: dict[tuple[StatementStatus, StatementAction], StatementStatus] = {
    (StatementStatus.draft, StatementAction.submit): StatementStatus.pending_approval,
    (StatementStatus.pending_approval, StatementAction.approve): StatementStatus.approved,
    (StatementStatus.pending_approval, StatementAction.reject): StatementStatus.draft,
    (StatementStatus.approved, StatementAction.publish): StatementStatus.published,
    (StatementStatus.draft, StatementAction.withdraw): StatementStatus.withdrawn,
    (StatementStatus.pending_approval, StatementAction.withdraw): StatementStatus.withdrawn,
    (StatementStatus.approved, StatementAction.withdraw): StatementStatus.withdrawn,
}
"""``STATEMENT_TRANSITIONS[(status, action)] -> status``; a published statement is final."""


class IllegalStatementStep(errors.IllegalTransition):
    """The statement machine has no such step (409), naming the actions that are allowed."""

    def __init__(self, status: StatementStatus, action: StatementAction) -> None:
        allowed = [a for (s, a) in STATEMENT_TRANSITIONS if s == status]
        listed = ", ".join(allowed) if allowed else "none, the statement is final"
        super().__init__(
            f"cannot '{action!s}' a statement that is '{status!s}'; allowed: {listed}",
            current=str(status),
            action=str(action),
            allowed=[str(a) for a in allowed],
        )


def next_statement_status(status: StatementStatus, action: StatementAction) -> StatementStatus:
    """The status ``action`` leads to; raises IllegalStatementStep (409) otherwise."""
    try:
        return STATEMENT_TRANSITIONS[(status, action)]
    except KeyError:
        raise IllegalStatementStep(status, action) from None


class ClockKind(StrEnum):
    first_information = "first_information"  # authoritative information, 5 h
    press_conference = "press_conference"  # a press conference, 24 h


class ClockState(StrEnum):
    running = "running"
    due_soon = "due_soon"
    met = "met"
    missed = "missed"


CLOCK_LEVELS: frozenset[Level] = frozenset({Level.I, Level.II})
"""The levels of a major emergency (重大, 特别重大), whose statements run on the clocks."""


def starts_clocks(level: Level) -> bool:
    """True when an incident of ``level`` runs the release clocks (level II or I)."""
    return level in CLOCK_LEVELS


@dataclass(frozen=True, slots=True)
class Clock:
    """One release clock of an incident: started and due (UTC), when it was met, warned or missed."""

    incident_id: str
    kind: ClockKind
    started_at: datetime
    due_at: datetime
    met_at: datetime | None = None
    warned_at: datetime | None = None
    missed_at: datetime | None = None


def clock_due(kind: ClockKind, started_at: datetime, first_information_s: float, press_conference_s: float) -> datetime:
    """When a clock started at ``started_at`` is due (durations in seconds)."""
    seconds = first_information_s if kind is ClockKind.first_information else press_conference_s
    return started_at + timedelta(seconds=seconds)


def clock_state(clock: Clock, now: datetime, warning_s: float) -> ClockState:
    """Met if a statement met it in time (or late: then it is missed), missed once due, due soon
    within ``warning_s`` seconds of the due time, else running."""
    if clock.met_at is not None:
        return ClockState.met if clock.met_at <= clock.due_at else ClockState.missed
    if now >= clock.due_at:
        return ClockState.missed
    if now >= clock.due_at - timedelta(seconds=warning_s):
        return ClockState.due_soon
    return ClockState.running


def clocks_met_by(kind: StatementKind) -> tuple[ClockKind, ...]:
    """The clocks a published statement of ``kind`` meets: any statement is authoritative
    information; a press conference's statement also meets the press-conference clock."""
    if kind is StatementKind.press_conference:
        return (ClockKind.first_information, ClockKind.press_conference)
    return (ClockKind.first_information,)
