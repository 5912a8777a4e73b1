"""Geodesy the services share: distances, China's GCJ-02 datum, and plain polygons.

Everything here works in decimal degrees, (lat, lon) order, WGS-84 unless a name says otherwise.
Polygons are treated as planar in degrees, which is accurate enough for city-scale perimeters
and wrong across the antimeridian or the poles; nothing in a city needs either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius: the best single sphere for haversine

# Krasovsky 1940 ellipsoid, which the GCJ-02 obfuscation is defined on.
_KRASOVSKY_A = 6_378_245.0
_KRASOVSKY_EE = 0.00669342162296594323

_INVERSE_TOLERANCE_DEG = 1e-7  # about 1 cm
_INVERSE_MAX_ITERATIONS = 30  # converges in 2-4 steps; the cap only guards against a bad input

Ring = Sequence[tuple[float, float]]


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


# --- GCJ-02 ---------------------------------------------------------------------------
# Maps published in mainland China (and many 110 gateways fed by them) use GCJ-02, a deliberately
# shifted datum. The forward shift is public; it has no closed-form inverse, so we iterate.


def out_of_china(lat: float, lon: float) -> bool:
    """True outside the rough bounding box where GCJ-02 applies (the conventional check)."""
    return not (72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271)


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    if out_of_china(lat, lon):
        return lat, lon
    dlat, dlon = _gcj02_shift(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """Invert the GCJ-02 shift by fixed-point iteration, to about 1 cm."""
    if out_of_china(lat, lon):
        return lat, lon
    wgs_lat, wgs_lon = lat, lon
    for _ in range(_INVERSE_MAX_ITERATIONS):
        # Shift unconditionally: a guess straying over the box edge must not fall back to identity.
        dlat, dlon = _gcj02_shift(wgs_lat, wgs_lon)
        err_lat = wgs_lat + dlat - lat
        err_lon = wgs_lon + dlon - lon
        wgs_lat -= err_lat
        wgs_lon -= err_lon
        if abs(err_lat) < _INVERSE_TOLERANCE_DEG and abs(err_lon) < _INVERSE_TOLERANCE_DEG:
            break
    return wgs_lat, wgs_lon


def _gcj02_shift(lat: float, lon: float) -> tuple[float, float]:
    x, y = lon - 105.0, lat - 35.0
    dlat = _shift_lat(x, y)
    dlon = _shift_lon(x, y)
    rad_lat = math.radians(lat)
    magic = 1 - _KRASOVSKY_EE * math.sin(rad_lat) ** 2
    sqrt_magic = math.sqrt(magic)
    dlat = (dlat * 180.0) / ((_KRASOVSKY_A * (1 - _KRASOVSKY_EE)) / (magic * sqrt_magic) * math.pi)
    dlon = (dlon * 180.0) / (_KRASOVSKY_A / sqrt_magic * math.cos(rad_lat) * math.pi)
    return dlat, dlon


def _shift_lat(x: float, y: float) -> float:
    pi = math.pi
    ret = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
    ret += (160.0 * math.sin(y / 12.0 * pi) + 320.0 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
    return ret


def _shift_lon(x: float, y: float) -> float:
    pi = math.pi
    ret = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    ret += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    ret += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
    ret += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
    return ret


# --- Polygons -------------------------------------------------------------------------


def _open_ring(ring: Ring) -> list[tuple[float, float]]:
    """Accept rings given closed (first point repeated at the end) or open."""
    points = [(float(lat), float(lon)) for lat, lon in ring]
    if len(points) > 1 and points[0] == points[-1]:
        points.pop()
    return points


def point_in_polygon(lat: float, lon: float, ring: Ring) -> bool:
    """Even-odd ray casting with lon as x and lat as y."""
    points = _open_ring(ring)
    inside = False
    j = len(points) - 1
    for i in range(len(points)):
        lat_i, lon_i = points[i]
        lat_j, lon_j = points[j]
        if (lat_i > lat) != (lat_j > lat):
            lon_cross = lon_i + (lat - lat_i) * (lon_j - lon_i) / (lat_j - lat_i)
            if lon < lon_cross:
                inside = not inside
        j = i
    return inside


def first_crossing(ring: Ring) -> tuple[int, int] | None:
    """The first two edges of ``ring`` (closed or open; edge i joins point i to point i+1) that
    cross or touch although they are not neighbours, as (i, j) with i < j; None for a simple
    ring. A ring that crosses itself (a bow-tie) has no inside that means anything: its even-odd
    inside is not what was drawn, and its shoelace area can be zero. O(n²) in the points: rings
    here have at most a few hundred."""
    points = _open_ring(ring)
    n = len(points)
    edges = [(points[i], points[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # the last edge ends where the first begins
            if _segments_meet(*edges[i], *edges[j]):
                return i, j
    return None


FLAT_DEG2 = 1e-10
"""Below this area (square degrees, about a square metre) a ring is flat: what rounding leaves of
points on one line."""


def ring_fault(ring: Ring) -> str | None:
    """Why ``ring`` (closed or open) cannot bound an area, as the end of a sentence about "the
    polygon": it crosses itself (naming the two edges that meet, ``first_crossing``) or has no
    area; None for a ring that can. The one rule every service applies to the polygons it takes."""
    crossing = first_crossing(ring)
    if crossing is not None:
        i, j = crossing
        return (
            f"crosses itself: its edge from point {i} and its edge from point {j} meet; "
            "give the points in order around the area"
        )
    if polygon_area_deg2(ring) < FLAT_DEG2:
        return "has no area: its points are on one line"
    return None


def _orientation(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> int:
    cross = (b[1] - a[1]) * (c[0] - a[0]) - (b[0] - a[0]) * (c[1] - a[1])
    return (cross > 0) - (cross < 0)


def _on_segment(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> bool:
    """c, collinear with a and b, lies between them."""
    return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])


def _segments_meet(
    p1: tuple[float, float], p2: tuple[float, float], q1: tuple[float, float], q2: tuple[float, float]
) -> bool:
    o1, o2 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
    o3, o4 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
    if o1 != o2 and o3 != o4:
        return True
    return (
        (o1 == 0 and _on_segment(p1, p2, q1))
        or (o2 == 0 and _on_segment(p1, p2, q2))
        or (o3 == 0 and _on_segment(q1, q2, p1))
        or (o4 == 0 and _on_segment(q1, q2, p2))
    )


def polygon_area_deg2(ring: Ring) -> float:
    """Unsigned shoelace area in square degrees: only good for "is it degenerate?"."""
    points = _open_ring(ring)
    return abs(_signed_area(points))


def polygon_centroid(ring: Ring) -> tuple[float, float]:
    """Area-weighted centroid (lat, lon); the vertex mean when the ring has no area."""
    points = _open_ring(ring)
    if not points:
        raise ValueError("polygon has no points")
    area = _signed_area(points)
    if area == 0.0:
        return (
            sum(lat for lat, _ in points) / len(points),
            sum(lon for _, lon in points) / len(points),
        )
    c_lat = c_lon = 0.0
    for (lat0, lon0), (lat1, lon1) in zip(points, points[1:] + points[:1], strict=True):
        cross = lon0 * lat1 - lon1 * lat0
        c_lon += (lon0 + lon1) * cross
        c_lat += (lat0 + lat1) * cross
    return c_lat / (6.0 * area), c_lon / (6.0 * area)


def _signed_area(points: list[tuple[float, float]]) -> float:
    total = 0.0
    for (lat0, lon0), (lat1, lon1) in zip(points, points[1:] + points[:1], strict=True):
        total += lon0 * lat1 - lon1 * lat0
    return total / 2.0
