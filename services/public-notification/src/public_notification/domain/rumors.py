"""The rumor register: a rumor is reported, verified (true, false or unverifiable for now),
answered by a rebuttal statement or a CAP Update, and closed. Each answer is linked to the rumor."""

from __future__ import annotations

from enum import StrEnum

from ecs import errors

__all__ = ["RumorStatus", "RumorAction", "RUMOR_TRANSITIONS", "OPEN_RUMORS", "IllegalRumorStep", "next_rumor_status"]


class RumorStatus(StrEnum):
    reported = "reported"
    unverified = "unverified"  # looked at, neither confirmed nor refuted yet
    confirmed = "confirmed"  # true: not a rumor, nothing to rebut
    refuted = "refuted"  # false: to be answered
    answered = "answered"  # a rebuttal statement or an alert Update answered it
    closed = "closed"


class RumorAction(StrEnum):
    mark_unverified = "mark_unverified"
    confirm = "confirm"
    refute = "refute"
    answer = "answer"
    close = "close"


RUMOR_TRANSITIONS: dict[tuple[RumorStatus, RumorAction], RumorStatus] = {
    (RumorStatus.reported, RumorAction.mark_unverified): RumorStatus.unverified,
    (RumorStatus.reported, RumorAction.confirm): RumorStatus.confirmed,
    (RumorStatus.reported, RumorAction.refute): RumorStatus.refuted,
    (RumorStatus.unverified, RumorAction.confirm): RumorStatus.confirmed,
    (RumorStatus.unverified, RumorAction.refute): RumorStatus.refuted,
    (RumorStatus.unverified, RumorAction.answer): RumorStatus.answered,
    (RumorStatus.refuted, RumorAction.answer): RumorStatus.answered,
    (RumorStatus.confirmed, RumorAction.close): RumorStatus.closed,
    (RumorStatus.answered, RumorAction.close): RumorStatus.closed,
}
"""``RUMOR_TRANSITIONS[(status, action)] -> status``; a refuted rumor closes only once answered."""

OPEN_RUMORS: frozenset[RumorStatus] = frozenset(RumorStatus) - {RumorStatus.closed}


class IllegalRumorStep(errors.IllegalTransition):
    """The rumor machine has no such step (409), naming the actions that are allowed."""

    def __init__(self, status: RumorStatus, action: RumorAction) -> None:
        allowed = [a for (s, a) in RUMOR_TRANSITIONS if s == status]
        listed = ", ".join(allowed) if allowed else "none, the rumor is closed"
        super().__init__(
            f"cannot '{action!s}' a rumor that is '{status!s}'; allowed: {listed}",
            current=str(status),
            action=str(action),
            allowed=[str(a) for a in allowed],
        )


def next_rumor_status(status: RumorStatus, action: RumorAction) -> RumorStatus:
    """The status ``action`` leads to; raises IllegalRumorStep (409) otherwise."""
    try:
        return RUMOR_TRANSITIONS[(status, action)]
    except KeyError:
        raise IllegalRumorStep(status, action) from None
