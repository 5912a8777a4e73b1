"""When public-notification holds nothing more for an incident (``notification.incident.settled``):
the incident is in aftermath (or finished), its alerts are cancelled, expired, superseded or
withdrawn, its statements published or withdrawn, and its rumors closed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ecs.vocabulary import Stage

from .alerts import TERMINAL, AlertStatus, MsgType
from .rumors import RumorStatus
from .statements import StatementStatus

__all__ = ["Holdings", "SETTLING_STAGES", "unsettled_reasons"]

SETTLING_STAGES: frozenset[Stage] = frozenset({Stage.aftermath, Stage.closed, Stage.cancelled})


@dataclass(frozen=True, slots=True)
class Holdings:
    """What the service holds for one incident: the status (and CAP msgType) of each alert, the
    status of each statement and rumor."""

    stage: Stage
    alerts: tuple[tuple[AlertStatus, MsgType], ...] = ()
    statements: tuple[StatementStatus, ...] = ()
    rumors: tuple[RumorStatus, ...] = ()


def _count(statuses: Iterable[object], what: str) -> list[str]:
    n = sum(1 for _ in statuses)
    return [f"{n} {what}"] if n else []


def unsettled_reasons(h: Holdings) -> list[str]:
    """What still keeps the incident unsettled; empty when settled."""
    reasons: list[str] = []
    if h.stage not in SETTLING_STAGES:
        reasons.append(f"the incident is in {h.stage!s}, not yet in aftermath")
    # A published Cancel is the all-clear itself: it ends its alert and is final.
    live = [s for s, m in h.alerts if s is AlertStatus.published and m is not MsgType.Cancel]
    reasons += _count(live, "alert(s) still live: publish the all-clear")
    reasons += _count(
        (s for s, _ in h.alerts if s not in TERMINAL and s is not AlertStatus.published), "alert(s) unpublished"
    )
    reasons += _count(
        (s for s in h.statements if s not in (StatementStatus.published, StatementStatus.withdrawn)),
        "statement(s) not published",
    )
    reasons += _count((s for s in h.rumors if s is not RumorStatus.closed), "rumor(s) open")
    return reasons
