"""What every handler and view of one dispatch process shares."""

from __future__ import annotations

from dataclasses import dataclass

from ecs.db import Database

from .directory import UnitDirectory
from .plans import PlanBook
from .settings import DispatchSettings


@dataclass(frozen=True)
class Context:
    """The database, the settings, the active plans and the unit directory (the index
    recommendations are made from) of this process; built once by main.py."""

    db: Database
    settings: DispatchSettings
    plans: PlanBook
    directory: UnitDirectory
