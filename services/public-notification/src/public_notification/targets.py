"""The process's target index (domain.TargetIndex) kept in step with the targets table: loaded at
start, then whatever any replica registered since, every ``targets_refresh_s`` seconds."""

from __future__ import annotations

from ecs.db import Database

from . import store
from .domain import Target, TargetIndex


class TargetDirectory:
    """The index every area query of this process uses."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.index = TargetIndex()
        self.seq = 0

    async def refresh(self) -> int:
        """Index the targets registered since the last refresh; returns how many."""
        async with self.db.engine.connect() as conn:
            rows = await store.targets_after(conn, self.seq)
        self.index.add(Target(r.id, r.kind, r.lat, r.lon) for r in rows)
        if rows:
            self.seq = rows[-1].seq
        return len(rows)
