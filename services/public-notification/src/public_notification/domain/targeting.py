"""Area targeting: which cells (cell-broadcast sites), districts or subscriber groups fall inside
an alert's polygon or circle, through a grid index over their positions (WGS-84 degrees).

A polygon query walks only the grid buckets of its bounding box. The buckets its edges pass
through are the boundary: their points are tested one by one (ray casting). Every other bucket
lies wholly inside or wholly outside, decided once per bucket by a scanline at the bucket's
centre. A circle query takes the buckets wholly within the radius at once and tests the points of
the buckets it cuts. Distances use the equirectangular approximation, good to well under 0.1 %
over a city's few tens of kilometres.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "TargetIndex", "Reach", "reach_of_area", "reach_of_perimeter", "inside_polygon", "EARTH_RADIUS_M"]

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
DEFAULT_BUCKET_DEG = 0.005  # about 550 m of latitude


@dataclass(frozen=True, slots=True)
class Target:
    """Something an alert can reach at a position: a cell site, a district's centre, a subscriber
    group's centre. ``kind`` says which."""

    id: str
    kind: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Reach:
    """An area to target: a circle (lat, lon, radius in metres) or a closed ring of (lat, lon)."""

    circle: tuple[float, float, float] | None = None
    ring: tuple[tuple[float, float], ...] | None = None


def _closed(points: Iterable[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    ring = tuple((float(p[0]), float(p[1])) for p in points)
    return ring if ring and ring[0] == ring[-1] else (*ring, ring[0])


def reach_of_area(area: Mapping[str, Any]) -> Reach | None:
    """An alert's stored area (``polygon`` [[lat, lon]...] closed, else ``circle`` [lat, lon, m])."""
    if area.get("polygon"):
        return Reach(ring=_closed(area["polygon"]))
    if area.get("circle"):
        lat, lon, radius = area["circle"]
        return Reach(circle=(lat, lon, radius))
    return None


def reach_of_perimeter(perimeter: Mapping[str, Any] | None) -> Reach | None:
    """incident-intake's perimeter (``{"kind": "circle", "lat", "lon", "radius_m"}`` or
    ``{"kind": "polygon", "points": [[lat, lon]...]}``, its ring stored open); None if none."""
    if not perimeter:
        return None
    if perimeter.get("kind") == "circle":
        return Reach(circle=(perimeter["lat"], perimeter["lon"], perimeter["radius_m"]))
    if perimeter.get("kind") == "polygon" and len(perimeter.get("points") or ()) >= 3:
        return Reach(ring=_closed(perimeter["points"]))
    return None


def inside_polygon(lat: float, lon: float, ring: Sequence[tuple[float, float]]) -> bool:
    """Ray casting: True when (lat, lon) is inside the closed ring of (lat, lon) points."""
    inside = False
    n = len(ring)
    for i in range(n - 1):
        (y1, x1), (y2, x2) = ring[i], ring[i + 1]
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


class TargetIndex:
    """A grid index of targets; queries return the targets inside a polygon or a circle."""

    def __init__(self, targets: Iterable[Target] = (), bucket_deg: float = DEFAULT_BUCKET_DEG) -> None:
        self.size = bucket_deg
        self.buckets: dict[tuple[int, int], list[Target]] = defaultdict(list)
        self.count = 0
        self.add(targets)

    def _key(self, lat: float, lon: float) -> tuple[int, int]:
        return math.floor(lat / self.size), math.floor(lon / self.size)

    def add(self, targets: Iterable[Target]) -> None:
        """Index more targets."""
        for t in targets:
            self.buckets[self._key(t.lat, t.lon)].append(t)
            self.count += 1

    def within(self, reach: Reach) -> list[Target]:
        """The targets inside the reach's ring or circle."""
        if reach.ring is not None:
            return self.in_polygon(reach.ring)
        if reach.circle is not None:
            return self.in_circle(*reach.circle)
        return []

    def in_polygon(self, ring: Sequence[tuple[float, float]]) -> list[Target]:
        """The targets inside a closed ring of (lat, lon) points."""
        lats = [p[0] for p in ring]
        lons = [p[1] for p in ring]
        r0, c0 = self._key(min(lats), min(lons))
        r1, c1 = self._key(max(lats), max(lons))
        boundary = self._edge_buckets(ring)
        # The edges reaching into each row of buckets: a point or a bucket centre in that row can
        # only be crossed by those (a handful, not the whole ring).
        rows: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)
        for i in range(len(ring) - 1):
            (y1, x1), (y2, x2) = ring[i], ring[i + 1]
            if y1 == y2:
                continue  # a horizontal edge is never crossed by a horizontal ray
            for r in range(self._key(min(y1, y2), 0)[0], self._key(max(y1, y2), 0)[0] + 1):
                rows[r].append((y1, x1, y2, x2))
        found: list[Target] = []
        for r in range(r0, r1 + 1):
            edges = rows.get(r, [])
            centre_lat = (r + 0.5) * self.size
            crossings = sorted(
                x1 + (centre_lat - y1) * (x2 - x1) / (y2 - y1)
                for y1, x1, y2, x2 in edges
                if (y1 > centre_lat) != (y2 > centre_lat)
            )
            for c in range(c0, c1 + 1):
                bucket = self.buckets.get((r, c))
                if not bucket:
                    continue
                if (r, c) in boundary:
                    found.extend(t for t in bucket if _crossed_odd(t.lat, t.lon, edges))
                elif bisect.bisect_right(crossings, (c + 0.5) * self.size) % 2 == 1:
                    found.extend(bucket)
        return found

    def in_circle(self, lat: float, lon: float, radius_m: float) -> list[Target]:
        """The targets within ``radius_m`` metres of (lat, lon)."""
        m_per_deg_lat = math.radians(1) * EARTH_RADIUS_M
        m_per_deg_lon = m_per_deg_lat * math.cos(math.radians(lat))
        dlat, dlon = radius_m / m_per_deg_lat, radius_m / m_per_deg_lon
        r0, c0 = self._key(lat - dlat, lon - dlon)
        r1, c1 = self._key(lat + dlat, lon + dlon)
        r2 = radius_m * radius_m

        def dist2(y: float, x: float) -> float:
            return ((y - lat) * m_per_deg_lat) ** 2 + ((x - lon) * m_per_deg_lon) ** 2

        found: list[Target] = []
        for r in range(r0, r1 + 1):
            for c in range(c0, c1 + 1):
                bucket = self.buckets.get((r, c))
                if not bucket:
                    continue
                y0, x0 = r * self.size, c * self.size
                corners = [(y0, x0), (y0 + self.size, x0), (y0, x0 + self.size), (y0 + self.size, x0 + self.size)]
                if all(dist2(y, x) <= r2 for y, x in corners):
                    found.extend(bucket)
                    continue
                ny, nx = min(max(lat, y0), y0 + self.size), min(max(lon, x0), x0 + self.size)
                if dist2(ny, nx) > r2:
                    continue
                found.extend(t for t in bucket if dist2(t.lat, t.lon) <= r2)
        return found

    def _edge_buckets(self, ring: Sequence[tuple[float, float]]) -> set[tuple[int, int]]:
        """Every bucket an edge of the ring passes through: sampled once a bucket along each
        edge, with the 3 x 3 buckets around each sample (a crossed bucket is always among them)."""
        cells: set[tuple[int, int]] = set()
        for i in range(len(ring) - 1):
            (y1, x1), (y2, x2) = ring[i], ring[i + 1]
            n = max(1, math.ceil(max(abs(y2 - y1), abs(x2 - x1)) / self.size))
            for k in range(n + 1):
                r, c = self._key(y1 + (y2 - y1) * k / n, x1 + (x2 - x1) * k / n)
                cells.update((r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
        return cells


def _crossed_odd(lat: float, lon: float, edges: Sequence[tuple[float, float, float, float]]) -> bool:
    """Ray casting over the given edges only."""
    inside = False
    for y1, x1, y2, x2 in edges:
        if (y1 > lat) != (y2 > lat) and lon < x1 + (lat - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside
