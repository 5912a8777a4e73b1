"""This replica's index of units, the cache recommendations are made from.

The database stays the truth: a stale index costs a retry (a unit another replica took is simply
not claimed), never a wrong assignment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Gauge

from ecs.db import Database
from ecs.envelope import utcnow

from . import store
from .domain import (
    Agency,
    CoverPolicy,
    RecommendationResult,
    StraightLineEstimator,
    UnitIndex,
    UnitStatus,
    UnitType,
    UnitView,
)
from .settings import DispatchSettings

INDEXED_UNITS = Gauge("dispatch_indexed_units", "Units in this replica's recommendation index")


def unit_view(row: Any) -> UnitView:
    """What recommendation needs of a unit (a domain Unit, or a row of store.units)."""
    return UnitView(
        id=row.id,
        agency=Agency(row.agency),
        unit_type=UnitType(row.unit_type),
        capabilities=frozenset(row.capabilities or ()),
        district=row.district,
        lat=row.lat,
        lon=row.lon,
        status=UnitStatus(row.status),
        exercise=row.exercise,
        borrowed_for=row.lent_to_drill,
    )


OVERLAP = timedelta(seconds=5)  # re-read a little of the past: commits land out of timestamp order


class UnitDirectory:
    """This replica's index of units, kept close to the database.

    Its own changes apply at once; other replicas' changes arrive by re-reading units whose
    ``changed_at`` moved (every ``refresh_interval_s``), positions every ``location_sweep_s``, and
    everything every ``full_reload_s``.
    """

    def __init__(self, db: Database, settings: DispatchSettings) -> None:
        self.db = db
        self.settings = settings
        self.index = UnitIndex()
        self.lent: set[str] = set()
        self.fixed_at: dict[str, datetime] = {}
        self.estimator = StraightLineEstimator(settings.road_factor)
        self.cover: int | CoverPolicy = (
            CoverPolicy(settings.min_cover, settings.min_cover_by_district)
            if settings.min_cover_by_district
            else settings.min_cover
        )
        self._changes_since: datetime | None = None
        self._positions_since: datetime | None = None
        self._last_sweep = 0.0
        self._last_full = 0.0

    def __contains__(self, unit_id: str) -> bool:
        return unit_id in self.index

    async def reload(self) -> None:
        """Rebuild the index from every unit, a thousand rows at a time so that the event loop
        keeps serving; what changed meanwhile is re-read right after the swap."""
        started = utcnow()
        index, lent, fixed = UnitIndex(), set(), {}
        async with self.db.engine.connect() as conn:
            async for rows in store.stream_units(conn, 1000):
                for row in rows:
                    index.upsert(unit_view(row))
                    fixed[row.id] = row.location_at
                    if row.lent_to_drill and not row.exercise:
                        lent.add(row.id)
                await asyncio.sleep(0)
        self.index, self.lent, self.fixed_at = index, lent, fixed
        self._changes_since = self._positions_since = started - OVERLAP
        self._last_full = self._last_sweep = time.monotonic()
        INDEXED_UNITS.set(len(index))

    async def refresh(self) -> None:
        """Catch up with other replicas: the units changed since the last look, positions every
        sweep, everything every full reload."""
        if self._changes_since is None:
            await self.reload()
            return
        if time.monotonic() - self._last_full >= self.settings.full_reload_s:
            await self.reload()  # then catch up below with what changed while it ran
        started = utcnow()
        async with self.db.engine.connect() as conn:
            rows = await store.units_changed_since(conn, self._changes_since)
            sweep = time.monotonic() - self._last_sweep >= self.settings.location_sweep_s
            positions = await store.positions_since(conn, self._positions_since) if sweep else ()
        self.apply(rows)
        self._changes_since = started - OVERLAP
        if sweep:
            self.move(positions)
            self._positions_since = started - OVERLAP
            self._last_sweep = time.monotonic()

    async def reload_units(self, unit_ids: Iterable[str]) -> None:
        """Read these units again from the database (gone ones are forgotten)."""
        ids = list(unit_ids)
        if not ids:
            return
        async with self.db.engine.connect() as conn:
            rows = await store.get_units(conn, ids)
        for uid in ids:
            if uid in rows:
                self.apply([rows[uid]])
            else:
                self.forget(uid)

    def apply(self, rows: Iterable[Any]) -> None:
        """Take units as stored; a position older than the one known here is kept out."""
        for row in rows:
            view = unit_view(row)
            known_at = self.fixed_at.get(row.id)
            if known_at is not None and row.location_at < known_at:
                old = self.index.get(row.id)
                if old is not None:  # keep the newer position this replica already has
                    view = dataclasses.replace(view, lat=old.lat, lon=old.lon)
            else:
                self.fixed_at[row.id] = row.location_at
            self.index.upsert(view)
            if row.lent_to_drill and not row.exercise:
                self.lent.add(row.id)
            else:
                self.lent.discard(row.id)
        INDEXED_UNITS.set(len(self.index))

    def forget(self, unit_id: str) -> None:
        """The unit left the roster."""
        self.index.remove(unit_id)
        self.lent.discard(unit_id)
        self.fixed_at.pop(unit_id, None)

    def mark_taken(self, unit_ids: Iterable[str]) -> None:
        """Units no longer available (claimed here, or found taken by someone else)."""
        for uid in unit_ids:
            view = self.index.get(uid)
            if view is not None and view.status is UnitStatus.AVAILABLE:
                self.index.upsert(dataclasses.replace(view, status=UnitStatus.ASSIGNED))

    def move(self, positions: Iterable[tuple[str, float, float, datetime]]) -> None:
        """Position reports (unit id, lat, lon, fixed at); an older one than known is ignored."""
        for uid, lat, lon, at in positions:
            view = self.index.get(uid)
            if view is None:
                continue
            known = self.fixed_at.get(uid)
            if known is not None and at <= known:
                continue
            self.fixed_at[uid] = at
            if view.lat != lat or view.lon != lon:
                self.index.upsert(dataclasses.replace(view, lat=lat, lon=lon))

    def recommend(self, requirement: Mapping[UnitType, int], incident: Any) -> RecommendationResult:
        """Units for ``requirement`` near ``incident``, by this process's cover and estimator; an
        exercise incident may also take the live units lent to drills."""
        return self.index.recommend(
            requirement,
            incident.lat,
            incident.lon,
            incident.level,
            incident.exercise,
            self.cover,
            self.estimator,
            borrowed_ids=self.lent if incident.exercise else (),
        )

    def eta_s(self, unit: Any, incident: Any) -> float:
        """Estimated seconds for ``unit`` to reach ``incident`` from where it is now."""
        return self.estimator.eta_s(unit.lat, unit.lon, incident.lat, incident.lon, UnitType(unit.unit_type))
