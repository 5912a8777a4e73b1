"""Area targeting through the grid index gives exactly what testing every target would, for
polygons of up to 100 vertices (convex and not) and circles, across bucket sizes."""

from __future__ import annotations

import math
import random

import pytest

from public_notification.domain import EARTH_RADIUS_M, Target, TargetIndex, inside_polygon

CENTRE = (31.2304, 121.4737)


def city(n: int, rng: random.Random, spread: float = 0.2) -> list[Target]:
    return [
        Target(f"cell-{i}", "cell", CENTRE[0] + rng.uniform(-spread, spread), CENTRE[1] + rng.uniform(-spread, spread))
        for i in range(n)
    ]


def star(vertices: int, rng: random.Random, radius: float = 0.05) -> list[tuple[float, float]]:
    """A closed, non-convex ring around the centre: ``vertices`` points, the first repeated."""
    ring = []
    for k in range(vertices - 1):
        a = 2 * math.pi * k / (vertices - 1)
        r = radius * rng.uniform(0.3, 1.0)
        ring.append((CENTRE[0] + r * math.sin(a), CENTRE[1] + r * math.cos(a)))
    return [*ring, ring[0]]


@pytest.mark.parametrize("bucket", [0.001, 0.005, 0.02])
@pytest.mark.parametrize("seed", range(5))
def test_polygon_targeting_matches_testing_every_target(bucket: float, seed: int):
    rng = random.Random(seed)
    targets = city(5000, rng)
    index = TargetIndex(targets, bucket)
    for vertices in (4, 5, 30, 100):
        ring = star(vertices, rng, radius=rng.uniform(0.005, 0.1))
        expected = {t.id for t in targets if inside_polygon(t.lat, t.lon, ring)}
        assert {t.id for t in index.in_polygon(ring)} == expected


@pytest.mark.parametrize("bucket", [0.001, 0.005, 0.02])
def test_circle_targeting_matches_testing_every_target(bucket: float):
    rng = random.Random(7)
    targets = city(5000, rng)
    index = TargetIndex(targets, bucket)
    m_lat = math.radians(1) * EARTH_RADIUS_M
    for radius_m in (50, 400, 3000, 15000):
        lat, lon = CENTRE[0] + rng.uniform(-0.05, 0.05), CENTRE[1] + rng.uniform(-0.05, 0.05)
        m_lon = m_lat * math.cos(math.radians(lat))
        expected = {t.id for t in targets if math.hypot((t.lat - lat) * m_lat, (t.lon - lon) * m_lon) <= radius_m}
        assert {t.id for t in index.in_circle(lat, lon, radius_m)} == expected


def test_a_square_holds_what_it_should():
    targets = [Target("in", "cell", 31.0, 121.0), Target("out", "district", 31.2, 121.0)]
    ring = [(30.9, 120.9), (30.9, 121.1), (31.1, 121.1), (31.1, 120.9), (30.9, 120.9)]
    assert [t.id for t in TargetIndex(targets).in_polygon(ring)] == ["in"]
    assert TargetIndex().in_polygon(ring) == []


def test_points_on_a_vertexs_latitude_and_on_an_edge_are_decided_as_the_plain_ray_cast_decides():
    # A notch on the left side whose vertex lies exactly on the centre line of a row of buckets:
    # the row's scanline and the boundary points both meet the vertex itself.
    size = 0.01
    lat = (3100 + 0.5) * size
    ring = [(30.9, 121.0), (lat, 121.05), (31.1, 121.0), (31.1, 121.3), (30.9, 121.3), (30.9, 121.0)]
    targets = [
        Target("left-of-notch", "cell", lat, 121.045),  # outside, in a boundary bucket
        Target("on-notch", "cell", lat, 121.05),  # the vertex: on the left edge counts as inside
        Target("middle", "cell", lat, 121.155),  # inside, a bucket decided by its centre line
        Target("right", "cell", lat, 121.35),
    ]
    expected = ["on-notch", "middle"]
    assert [t.id for t in targets if inside_polygon(t.lat, t.lon, ring) is True] == expected
    assert inside_polygon(lat, 121.045, ring) is False
    assert inside_polygon(lat, 121.35, ring) is False  # no edge crossed at all
    assert sorted(t.id for t in TargetIndex(targets, size).in_polygon(ring)) == sorted(expected)


def test_a_polygon_with_no_area_reaches_nobody():
    flat = [(31.0, 121.0), (31.0, 121.1), (31.0, 121.2), (31.0, 121.0)]
    assert TargetIndex([Target("on", "cell", 31.0, 121.05)]).in_polygon(flat) == []


def test_a_bucket_is_taken_whole_only_when_all_four_of_its_corners_are_inside_the_circle():
    # The circle's centre is near the bucket's north-west corner: three corners (and the corner of
    # the bucket to the west) are inside, the south-east one is not; a target near it is outside.
    size = 0.01
    y0, x0 = 3120 * size, 12147 * size
    lat, lon = y0 + size, x0 - 0.1 * size
    near_corner = Target("near-corner", "cell", y0 + 0.001 * size, x0 + 0.999 * size)
    near_centre = Target("near-centre", "cell", y0 + 0.9 * size, x0 + 0.1 * size)
    index = TargetIndex([near_corner, near_centre], size)
    assert index.count == 2
    assert [t.id for t in index.in_circle(lat, lon, 1465.0)] == ["near-centre"]


def test_a_target_exactly_on_the_circle_is_reached():
    size = 0.01
    lat, lon = 31.2345, 121.4567
    west_border = (math.floor(lon / size) + 1) * size  # the next bucket's west border, due east
    m_per_deg_lon = math.radians(1) * EARTH_RADIUS_M * math.cos(math.radians(lat))
    radius_m = (west_border - lon) * m_per_deg_lon
    on_circle = Target("on", "cell", lat, west_border)
    assert [t.id for t in TargetIndex([on_circle], size).in_circle(lat, lon, radius_m)] == ["on"]
