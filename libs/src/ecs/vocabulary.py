"""The words every service shares, defined once: incident categories, severity levels, lifecycle
stages and the lifecycle's participants.

The contracts (``ecs.contracts``) and every service's domain use these enums; none spells a
category, level, stage or participant as a string literal or as an enum of its own.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Category(StrEnum):
    """What happened, as a 110 gateway reports it (gateway contract v1, DESIGN §7)."""

    fire = "fire"
    explosion = "explosion"
    hazmat = "hazmat"
    building_collapse = "building_collapse"
    crowd_crush = "crowd_crush"
    traffic_accident = "traffic_accident"
    flood = "flood"
    gas_leak = "gas_leak"
    public_security = "public_security"
    medical = "medical"
    other = "other"


def scene_of(held: Category | str, told: Category | str) -> Category:
    """The category a copy of an incident keeps when an event says ``told`` and it holds ``held``:
    a medical-only incident becomes the scene reported near it, and no other category ever
    changes (incident-intake's correlation, ``joined_category``). So an event arriving late or
    twice can never turn a scene back into a medical call."""
    held, told = Category(held), Category(told)
    return told if held is Category.medical else held


class Level(IntEnum):
    """National response levels for sudden public events (突发事件分级, the Emergency Response Law
    of the PRC, art. 42). A lower number is MORE severe, so the worse of two is ``min()``.

    I 特别重大 red, II 重大 orange, III 较大 yellow, IV 一般 blue.
    """

    I = 1  # noqa: E741
    II = 2
    III = 3
    IV = 4

    @property
    def colour(self) -> str:
        """The warning colour of the level: red, orange, yellow or blue."""
        return _COLOURS[self]

    @property
    def label_zh(self) -> str:
        """The level's Chinese name, e.g. ``特别重大`` for I."""
        return _LABELS_ZH[self]

    @classmethod
    def from_name(cls, name: str) -> Level:
        """``"II"`` → ``Level.II``; raises KeyError for anything else."""
        return cls[name]


_COLOURS = {Level.I: "red", Level.II: "orange", Level.III: "yellow", Level.IV: "blue"}
_LABELS_ZH = {Level.I: "特别重大", Level.II: "重大", Level.III: "较大", Level.IV: "一般"}


class Stage(StrEnum):
    """The incident lifecycle (DESIGN §3): ``reported → isolation → handling → opinion_control →
    aftermath → closed``, and ``cancelled`` (false alarm) from ``reported`` or ``isolation``."""

    reported = "reported"
    isolation = "isolation"  # 快速隔离 rapid isolation
    handling = "handling"  # 科学处置 scientific handling
    opinion_control = "opinion_control"  # 舆情管控 opinion control
    aftermath = "aftermath"  # 平稳善后 orderly aftermath
    closed = "closed"
    cancelled = "cancelled"  # false alarm

    @property
    def is_open(self) -> bool:
        """True until the incident is closed or cancelled."""
        return self not in TERMINAL_STAGES


TERMINAL_STAGES: frozenset[Stage] = frozenset({Stage.closed, Stage.cancelled})
OPEN_STAGES: frozenset[Stage] = frozenset(Stage) - TERMINAL_STAGES


class Participant(StrEnum):
    """A service whose facts guard the lifecycle. The value is the subject prefix it publishes
    under (``<participant>.incident.settled``); ``service`` is its service name."""

    dispatch = "dispatch"
    stockpile = "stockpile"
    shelter = "shelter"
    notification = "notification"

    @property
    def service(self) -> str:
        """The service's name, e.g. ``public-notification`` for ``notification``."""
        return _SERVICES[self]

    @classmethod
    def parse(cls, name: str) -> Participant:
        """Accept either spelling, the subject prefix or the service name.

        Raises ValueError naming the accepted spellings.
        """
        for p in cls:
            if name in (p.value, p.service):
                return p
        accepted = ", ".join(f"{p.value} ({p.service})" for p in cls)
        raise ValueError(f"unknown participant {name!r}; known: {accepted}")


_SERVICES = {
    Participant.dispatch: "dispatch",
    Participant.stockpile: "resource-stockpile",
    Participant.shelter: "shelter-registry",
    Participant.notification: "public-notification",
}
