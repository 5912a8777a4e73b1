"""Which available units to send: arrival estimates, the minimum cover each district keeps, and
the UnitIndex that finds the nearest units by estimated arrival.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from ecs.errors import InvalidInput
from ecs.geo import haversine_m
from ecs.vocabulary import Level

from .roster import Agency, UnitStatus, UnitType

__all__ = [
    "CoverPolicy",
    "InvalidLocation",
    "MinCover",
    "Recommendation",
    "RecommendationResult",
    "Shortfall",
    "StraightLineEstimator",
    "TravelEstimator",
    "UnitIndex",
    "UnitView",
    "recommend",
]


# --------------------------------------------------------------------------------------------
# Errors


class InvalidLocation(InvalidInput):
    """A position outside -90..90 latitude, -180..180 longitude (422)."""

    code, title = "invalid_location", "Location out of range"


# --------------------------------------------------------------------------------------------
# Arrival estimates


class TravelEstimator(Protocol):
    """Estimates a unit's travel time to a place."""

    def eta_s(self, unit_lat: float, unit_lon: float, dest_lat: float, dest_lon: float, unit_type: UnitType) -> float:
        """Seconds for a unit of ``unit_type`` to drive from the unit's position to the destination."""
        ...


class StraightLineEstimator:
    """Great-circle distance times a road factor, at the unit type's typical speed."""

    def __init__(self, road_factor: float = 1.4) -> None:
        if road_factor < 1.0:
            raise ValueError("road_factor below 1 would make roads shorter than a straight line")
        self.road_factor = road_factor

    def eta_s(self, unit_lat: float, unit_lon: float, dest_lat: float, dest_lon: float, unit_type: UnitType) -> float:
        """Seconds: great-circle metres times the road factor, at the unit type's speed."""
        metres = haversine_m(unit_lat, unit_lon, dest_lat, dest_lon) * self.road_factor
        return metres / (UnitType(unit_type).speed_kmh / 3.6)


# --------------------------------------------------------------------------------------------
# Recommendation


def _check_location(lat: float, lon: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # also refuses NaN
        raise InvalidLocation(f"location ({lat}, {lon}) is out of range: lat -90..90, lon -180..180")


@dataclass(frozen=True, slots=True)
class UnitView:
    """What recommendation needs to know about a unit."""

    id: str
    agency: Agency
    unit_type: UnitType
    capabilities: frozenset[str]
    district: str
    lat: float
    lon: float
    status: UnitStatus
    exercise: bool = False
    borrowed_for: str | None = None  # the drill a live unit is lent to, for display

    def __post_init__(self) -> None:
        _check_location(self.lat, self.lon)
        if type(self.unit_type) is not UnitType:
            object.__setattr__(self, "unit_type", UnitType(self.unit_type))
        if type(self.status) is not UnitStatus:
            object.__setattr__(self, "status", UnitStatus(self.status))
        if type(self.agency) is not Agency:
            object.__setattr__(self, "agency", Agency(self.agency))


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A unit to send, with its arrival estimate (s), distance (m) and the reason it was chosen."""

    unit_id: str
    unit_type: UnitType
    eta_s: float
    distance_m: float
    district: str
    reason: str
    strips_cover: bool = False
    borrowed: bool = False


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Units of a type the recommendation could not find, and the districts that kept theirs for cover."""

    unit_type: UnitType
    needed: int
    found: int
    held_by_cover: tuple[str, ...]  # districts that have more units, kept back for their cover
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class RecommendationResult:
    """What a recommendation found: units to send, and what it could not find."""

    recommendations: list[Recommendation] = field(default_factory=list)
    shortfalls: list[Shortfall] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing is missing."""
        return not self.shortfalls


MinCover = int | Mapping[str, Mapping[UnitType, int]]


class CoverPolicy(Mapping[str, Mapping[UnitType, int]]):
    """Minimum available units per district and type: a default with per-district overrides
    (``{"<district>": {"<unit type>": n}}``)."""

    def __init__(self, default: int, overrides: Mapping[str, Mapping[str, int]]) -> None:
        self.default = default
        self.overrides = {d: {UnitType(t): int(n) for t, n in by_type.items()} for d, by_type in overrides.items()}

    def get(self, district: str, default: Any = None) -> Mapping[UnitType, int]:  # type: ignore[override]
        """The minimum of each unit type ``district`` keeps available."""
        return _DistrictCover(self.default, self.overrides.get(district, {}))

    def __getitem__(self, district: str) -> Mapping[UnitType, int]:
        return self.get(district)

    def __iter__(self) -> Any:
        return iter(self.overrides)

    def __len__(self) -> int:
        return len(self.overrides)


class _DistrictCover(dict[UnitType, int]):
    def __init__(self, default: int, overrides: Mapping[UnitType, int]) -> None:
        super().__init__(overrides)
        self.default = default

    def get(self, unit_type: UnitType, default: Any = None) -> int:  # type: ignore[override]
        return super().get(unit_type, self.default)


_M_PER_DEG: Final = 111_195.0  # metres per degree of latitude (mean Earth radius)
_Candidate = tuple[float, str, UnitView]  # (approximate squared distance in m², unit id, unit)


def _ordinal(n: int) -> str:
    if n == 1:
        return "nearest"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} nearest"


class UnitIndex:
    """Units kept ready for recommendation, updated one unit at a time.

    Available units are bucketed by (exercise, unit type) in a grid of square cells about
    `cell_m` wide, with available counts per district. A recommendation walks rings of cells
    outward from the incident, so it reads the few cells near the incident instead of every unit.
    """

    def __init__(self, cell_m: float = 2_000.0, reference_lat: float | None = None) -> None:
        if cell_m <= 0:
            raise ValueError("cell_m must be positive")
        self._cell_m = cell_m
        self._dlat = cell_m / _M_PER_DEG
        self._cos_ref = 0.0
        self._dlon = 0.0
        if reference_lat is not None:
            self._set_reference(reference_lat)
        self._units: dict[str, UnitView] = {}
        self._cells: dict[tuple[bool, UnitType], dict[tuple[int, int], dict[str, UnitView]]] = {}
        self._sizes: dict[tuple[bool, UnitType], int] = {}
        self._district_available: dict[tuple[bool, UnitType, str], int] = {}

    def _set_reference(self, lat: float) -> None:
        # Cells are square near the reference latitude; the search bound corrects for any other.
        self._cos_ref = max(0.01, math.cos(math.radians(lat)))
        self._dlon = self._cell_m / (_M_PER_DEG * self._cos_ref)

    def _cell_of(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self._dlat), math.floor(lon / self._dlon)

    def __len__(self) -> int:
        return len(self._units)

    def __contains__(self, unit_id: object) -> bool:
        return unit_id in self._units

    def get(self, unit_id: str) -> UnitView | None:
        """What the index knows of a unit, or None."""
        return self._units.get(unit_id)

    def available_count(self, unit_type: UnitType, district: str, exercise: bool = False) -> int:
        """Available units of a type in a district (exercise or live)."""
        return self._district_available.get((exercise, unit_type, district), 0)

    def upsert(self, unit: UnitView) -> None:
        """Add a unit, or replace what is known about it (location, status, district...)."""
        if not self._dlon:
            self._set_reference(unit.lat)
        old = self._units.get(unit.id)
        if old is not None and old.status is UnitStatus.AVAILABLE:
            self._unlist(old)
        self._units[unit.id] = unit
        if unit.status is UnitStatus.AVAILABLE:
            self._list(unit)

    def remove(self, unit_id: str) -> UnitView | None:
        """Forget a unit; returns what was known of it."""
        old = self._units.pop(unit_id, None)
        if old is not None and old.status is UnitStatus.AVAILABLE:
            self._unlist(old)
        return old

    def _list(self, unit: UnitView) -> None:
        key = (unit.exercise, unit.unit_type)
        self._cells.setdefault(key, {}).setdefault(self._cell_of(unit.lat, unit.lon), {})[unit.id] = unit
        self._sizes[key] = self._sizes.get(key, 0) + 1
        dkey = (unit.exercise, unit.unit_type, unit.district)
        self._district_available[dkey] = self._district_available.get(dkey, 0) + 1

    def _unlist(self, unit: UnitView) -> None:
        key = (unit.exercise, unit.unit_type)
        cells = self._cells[key]
        cell = self._cell_of(unit.lat, unit.lon)
        members = cells[cell]
        del members[unit.id]
        if not members:
            del cells[cell]
        self._sizes[key] -= 1
        dkey = (unit.exercise, unit.unit_type, unit.district)
        self._district_available[dkey] -= 1

    def _nearest(self, key: tuple[bool, UnitType], lat: float, lon: float) -> Iterator[_Candidate]:
        """Available units of one bucket, nearest first by an equirectangular distance."""
        cells = self._cells.get(key)
        total = self._sizes.get(key, 0)
        if not cells or not total:
            return
        cos_q = math.cos(math.radians(lat))
        kx = _M_PER_DEG * cos_q
        ky = _M_PER_DEG
        # Every unit outside rings 0..r is at least r * step away (see the cell geometry above).
        step = self._cell_m * min(1.0, cos_q / self._cos_ref)
        i0, j0 = self._cell_of(lat, lon)
        heap: list[_Candidate] = []
        push, pop = heapq.heappush, heapq.heappop
        seen = 0
        visited = 0
        r = 0
        while seen < total:
            if visited > 2 * len(cells) + 8:
                # Far from everything or a sparse type: reading the rest directly is cheaper.
                for (i, j), members in cells.items():
                    if max(abs(i - i0), abs(j - j0)) >= r:
                        for u in members.values():
                            dx = (u.lon - lon) * kx
                            dy = (u.lat - lat) * ky
                            push(heap, (dx * dx + dy * dy, u.id, u))
                break
            if r == 0:
                ring: Iterable[tuple[int, int]] = ((i0, j0),)
            else:
                ring = _ring(i0, j0, r)
            for cell in ring:
                visited += 1
                members = cells.get(cell)
                if members:
                    seen += len(members)
                    for u in members.values():
                        dx = (u.lon - lon) * kx
                        dy = (u.lat - lat) * ky
                        push(heap, (dx * dx + dy * dy, u.id, u))
            bound = r * step
            bound2 = bound * bound
            while heap and heap[0][0] <= bound2:
                yield pop(heap)
            r += 1
        while heap:
            yield pop(heap)

    def recommend(
        self,
        requirement: Mapping[UnitType, int],
        incident_lat: float,
        incident_lon: float,
        incident_level: int,
        incident_exercise: bool,
        min_cover: MinCover = 0,
        estimator: TravelEstimator | None = None,
        borrowed_ids: Iterable[str] = (),
    ) -> RecommendationResult:
        """Available units for `requirement`, nearest by estimated arrival first.

        A district keeps `min_cover` available units of each type unless the incident is level I.
        An exercise incident takes exercise units, and live units only when their id is in
        `borrowed_ids`; a borrowed live unit never takes its district below cover. A live incident
        never takes exercise units.
        """
        _check_location(incident_lat, incident_lon)
        level = Level(incident_level)
        estimator = estimator or StraightLineEstimator()
        borrowed: list[UnitView] = []
        if incident_exercise:
            for uid in dict.fromkeys(borrowed_ids):
                u = self._units.get(uid)
                if u is not None and not u.exercise and u.status is UnitStatus.AVAILABLE:
                    borrowed.append(u)

        if isinstance(min_cover, int):
            cover_all = min_cover

            def cover(district: str, unit_type: UnitType) -> int:
                return cover_all

        else:
            cover_map = min_cover

            def cover(district: str, unit_type: UnitType) -> int:
                return cover_map.get(district, {}).get(unit_type, 0)

        result = RecommendationResult()
        for unit_type, needed in requirement.items():
            unit_type = UnitType(unit_type)
            if needed < 0:
                raise ValueError(f"requirement for {unit_type} is negative: {needed}")
            if needed == 0:
                continue
            self._recommend_type(
                unit_type,
                needed,
                incident_lat,
                incident_lon,
                level,
                incident_exercise,
                borrowed,
                cover,
                estimator,
                result,
            )
        return result

    def _recommend_type(
        self,
        unit_type: UnitType,
        needed: int,
        lat: float,
        lon: float,
        level: Level,
        exercise: bool,
        borrowed: list[UnitView],
        cover: Callable[[str, UnitType], int],
        estimator: TravelEstimator,
        result: RecommendationResult,
    ) -> None:
        stream: Iterator[_Candidate] = self._nearest((exercise, unit_type), lat, lon)
        lent = [u for u in borrowed if u.unit_type is unit_type]
        if lent:
            kx = _M_PER_DEG * math.cos(math.radians(lat))
            ranked = sorted((((u.lon - lon) * kx) ** 2 + ((u.lat - lat) * _M_PER_DEG) ** 2, u.id, u) for u in lent)
            stream = heapq.merge(stream, ranked)

        # Pre-rank by straight-line distance within each district's allowance, then rank a few
        # more than needed by the estimator, whose order may differ slightly from the pre-rank.
        wanted = needed * 2
        taken: dict[tuple[bool, str], int] = {}
        shortlist: list[UnitView] = []
        held_by_cover: set[str] = set()
        for _, _, u in stream:
            dkey = (u.exercise, u.district)
            left = self._district_available[(u.exercise, unit_type, u.district)] - taken.get(dkey, 0) - 1
            may_strip = level is Level.I and u.exercise == exercise
            if left < cover(u.district, unit_type) and not may_strip:
                held_by_cover.add(u.district)
                continue
            taken[dkey] = taken.get(dkey, 0) + 1
            shortlist.append(u)
            if len(shortlist) >= wanted:
                break

        timed = sorted((estimator.eta_s(u.lat, u.lon, lat, lon, unit_type), u.id, u) for u in shortlist)[:needed]

        taken.clear()
        for rank, (eta, _, u) in enumerate(timed, start=1):
            dkey = (u.exercise, u.district)
            taken[dkey] = taken.get(dkey, 0) + 1
            keeps = self._district_available[(u.exercise, unit_type, u.district)] - taken[dkey]
            minimum = cover(u.district, unit_type)
            lent_unit = u.exercise != exercise
            what = f"{_ordinal(rank)} available {unit_type}"
            if lent_unit:
                what += f" (live unit lent to the exercise{f' {u.borrowed_for}' if u.borrowed_for else ''})"
            if keeps < minimum:
                where = (
                    f"district {u.district} left with {keeps} of its minimum {minimum}: "
                    f"cover stripped for a level I incident"
                )
            elif minimum:
                where = f"district {u.district} keeps {keeps} of its minimum {minimum}"
            else:
                where = f"district {u.district} keeps {keeps}"
            result.recommendations.append(
                Recommendation(
                    unit_id=u.id,
                    unit_type=unit_type,
                    eta_s=eta,
                    distance_m=haversine_m(u.lat, u.lon, lat, lon),
                    district=u.district,
                    reason=f"{what}, ETA {eta / 60:.1f} min, {where}",
                    strips_cover=keeps < minimum,
                    borrowed=lent_unit,
                )
            )

        found = len(timed)
        if found < needed:
            pool = " among exercise units and borrowed live units" if exercise else ""
            if held_by_cover:
                districts = sorted(held_by_cover)
                noun = "district" if len(districts) == 1 else "districts"
                message = (
                    f"need {needed} {unit_type}, only {found} available{pool} without stripping "
                    f"{noun} {', '.join(districts)} below cover"
                )
            else:
                message = f"need {needed} {unit_type}, only {found} available{pool}"
            result.shortfalls.append(Shortfall(unit_type, needed, found, tuple(sorted(held_by_cover)), message))


def _ring(i0: int, j0: int, r: int) -> Iterator[tuple[int, int]]:
    """Cells at Chebyshev distance exactly r from (i0, j0)."""
    for dj in range(-r, r + 1):
        yield i0 - r, j0 + dj
        yield i0 + r, j0 + dj
    for di in range(-r + 1, r):
        yield i0 + di, j0 - r
        yield i0 + di, j0 + r


def recommend(
    requirement: Mapping[UnitType, int],
    incident_lat: float,
    incident_lon: float,
    incident_level: int,
    incident_exercise: bool,
    units: Sequence[UnitView],
    min_cover: MinCover = 0,
    estimator: TravelEstimator | None = None,
    borrowed_ids: Iterable[str] = (),
) -> RecommendationResult:
    """Recommend from a plain list of units (builds a UnitIndex; keep one for repeated use)."""
    index = UnitIndex()
    for unit in units:
        index.upsert(unit)
    return index.recommend(
        requirement,
        incident_lat,
        incident_lon,
        incident_level,
        incident_exercise,
        min_cover,
        estimator,
        borrowed_ids,
    )
