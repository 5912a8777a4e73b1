"""What every handler and view of one shelter-registry process shares."""

from __future__ import annotations

from dataclasses import dataclass

from ecs.db import Database

from .settings import ShelterSettings


@dataclass(frozen=True)
class Context:
    """The database and the settings of this process; built once by main.py."""

    db: Database
    settings: ShelterSettings

    @property
    def pii_key(self) -> bytes:
        """The key personal values are fingerprinted with."""
        return self.settings.pii_key.encode()
