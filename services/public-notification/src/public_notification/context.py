"""What every handler and view of one public-notification process shares."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ecs.db import Database

from .domain import ChannelKind
from .settings import NotificationSettings
from .targets import TargetDirectory


@dataclass(frozen=True)
class Context:
    """The database, the settings and the channel adapters of this process; built once by main.py.
    ``deliveries_due`` is set when this process queued deliveries, so the worker goes at once."""

    db: Database
    settings: NotificationSettings
    adapters: Mapping[ChannelKind, Any] = field(default_factory=dict)
    targets: TargetDirectory | None = None
    deliveries_due: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_deliveries(self) -> None:
        """Tell this process's delivery worker that deliveries were queued."""
        self.deliveries_due.set()
