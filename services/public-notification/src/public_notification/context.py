"""What every handler and view of one public-notification process shares."""

from __future__ import annotations

from dataclasses import dataclass

from ecs.db import Database

from .settings import NotificationSettings


@dataclass(frozen=True)
class Context:
    """The database and the settings of this process; built once by main.py."""

    db: Database
    settings: NotificationSettings
