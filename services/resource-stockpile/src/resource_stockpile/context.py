"""What every handler and view of one resource-stockpile process shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ecs.db import Database

from .settings import StockpileSettings


@dataclass
class Context:
    """The database and the settings of this process, and where the response plans' supplies come
    from (``await plan_supplies("fire")`` → ``{"I": {"foam_concentrate_litre": 2000, ...}, ...}``,
    asked of dispatch); built once by main.py."""

    db: Database
    settings: StockpileSettings
    plan_supplies: Callable[[str], Awaitable[dict[str, dict[str, int]]]]
