"""Dispatch rules: units and their status, response plans, recommendation, and what a stage or
level change, a status report or an operator's choice does to the units an incident holds.

Pure domain: no I/O, no framework. Functions take what the handlers loaded and return their
decision (and the events it publishes, as contract models); refusals raise ecs.errors.

One module per job, each importing only those before it:

- ``roster``: agencies, unit types, the unit status machine, and what may be done to a unit;
- ``response_plans``: the plan model, reading and publishing a plan, the units a plan asks for;
- ``recommendation``: arrival estimates, district cover, and the UnitIndex that picks units;
- ``incidents``: the units an incident holds, as its stage, level and operators change them.
"""

from __future__ import annotations

from typing import Final

from ecs.vocabulary import Participant

from . import incidents, recommendation, response_plans, roster
from .incidents import *  # noqa: F403 (each module names its public rules in __all__)
from .recommendation import *  # noqa: F403 (each module names its public rules in __all__)
from .response_plans import *  # noqa: F403 (each module names its public rules in __all__)
from .roster import *  # noqa: F403 (each module names its public rules in __all__)

SERVICE: Final = Participant.dispatch.service
"""The service's name: the source of its events."""

__all__ = ["SERVICE", *roster.__all__, *response_plans.__all__, *recommendation.__all__, *incidents.__all__]
