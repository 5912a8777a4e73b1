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
