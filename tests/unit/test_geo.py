import pytest

from ecs.geo import (
    first_crossing,
    gcj02_to_wgs84,
    haversine_m,
    out_of_china,
    point_in_polygon,
    polygon_area_deg2,
    polygon_centroid,
    ring_fault,
    wgs84_to_gcj02,
)

SHANGHAI_PEOPLES_SQUARE = (31.2304, 121.4737)
BEIJING_TIANANMEN = (39.9087, 116.3975)

# Published reference pairs (WGS-84 -> GCJ-02) used by the common open implementations.
REFERENCE_PAIRS = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),  # Shanghai
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),  # Shenzhen
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),  # Beijing
]


def test_one_degree_of_latitude_is_about_111_2_km():
    assert haversine_m(30.0, 121.0, 31.0, 121.0) == pytest.approx(111_195, abs=100)


def test_haversine_is_zero_for_the_same_point_and_symmetric():
    assert haversine_m(*SHANGHAI_PEOPLES_SQUARE, *SHANGHAI_PEOPLES_SQUARE) == 0.0
    there = haversine_m(*SHANGHAI_PEOPLES_SQUARE, *BEIJING_TIANANMEN)
    back = haversine_m(*BEIJING_TIANANMEN, *SHANGHAI_PEOPLES_SQUARE)
    assert there == pytest.approx(back)
    assert 1_000_000 < there < 1_100_000  # Shanghai to Beijing is about 1,070 km


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE_PAIRS)
def test_forward_shift_matches_reference_values(wgs, gcj):
    lat, lon = wgs84_to_gcj02(*wgs)
    assert lat == pytest.approx(gcj[0], abs=1e-9)
    assert lon == pytest.approx(gcj[1], abs=1e-9)


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE_PAIRS)
def test_inverse_recovers_reference_wgs84(wgs, gcj):
    lat, lon = gcj02_to_wgs84(*gcj)
    assert lat == pytest.approx(wgs[0], abs=1e-6)
    assert lon == pytest.approx(wgs[1], abs=1e-6)


@pytest.mark.parametrize("point", [SHANGHAI_PEOPLES_SQUARE, BEIJING_TIANANMEN])
def test_round_trip_wgs_gcj_wgs_within_a_micro_degree(point):
    lat, lon = gcj02_to_wgs84(*wgs84_to_gcj02(*point))
    assert abs(lat - point[0]) < 1e-6
    assert abs(lon - point[1]) < 1e-6


@pytest.mark.parametrize("point", [SHANGHAI_PEOPLES_SQUARE, BEIJING_TIANANMEN])
def test_gcj_shift_in_chinese_cities_is_a_few_hundred_metres(point):
    shifted = wgs84_to_gcj02(*point)
    assert 100 <= haversine_m(*point, *shifted) <= 700


@pytest.mark.parametrize(
    "point",
    [
        (51.5007, -0.1246),  # London
        (40.7580, -73.9855),  # New York
        (-33.8568, 151.2153),  # Sydney
        (35.6586, 139.7454),  # Tokyo: east of the box
    ],
)
def test_outside_china_both_directions_are_identity(point):
    assert out_of_china(*point)
    assert wgs84_to_gcj02(*point) == point
    assert gcj02_to_wgs84(*point) == point


SQUARE = [(31.0, 121.0), (31.0, 121.2), (31.2, 121.2), (31.2, 121.0)]


@pytest.mark.parametrize("ring", [SQUARE, SQUARE + SQUARE[:1]], ids=["open", "closed"])
def test_point_in_polygon_accepts_open_and_closed_rings(ring):
    assert point_in_polygon(31.1, 121.1, ring)
    assert not point_in_polygon(31.3, 121.1, ring)
    assert not point_in_polygon(31.1, 121.3, ring)


def test_point_in_concave_polygon_respects_the_notch():
    # A "U" open to the north: the notch between the arms is outside.
    u_shape = [
        (0.0, 0.0), (0.0, 3.0), (3.0, 3.0), (3.0, 2.0),
        (1.0, 2.0), (1.0, 1.0), (3.0, 1.0), (3.0, 0.0),
    ]  # fmt: skip
    assert point_in_polygon(2.0, 0.5, u_shape)  # west arm
    assert point_in_polygon(2.0, 2.5, u_shape)  # east arm
    assert not point_in_polygon(2.0, 1.5, u_shape)  # the notch


def test_centroid_of_a_square_is_its_centre():
    lat, lon = polygon_centroid(SQUARE)
    assert lat == pytest.approx(31.1)
    assert lon == pytest.approx(121.1)


def test_centroid_is_area_weighted_not_the_vertex_mean():
    # Extra vertices bunched on one edge must not pull the centroid towards them.
    ring = [
        (0.0, 0.0),
        (0.0, 1.0),
        (0.0, 1.01),
        (0.0, 1.02),
        (0.0, 2.0),
        (2.0, 2.0),
        (2.0, 0.0),
    ]
    lat, lon = polygon_centroid(ring)
    assert lat == pytest.approx(1.0)
    assert lon == pytest.approx(1.0)


SIMPLE_SQUARE = [(31.0, 121.0), (31.0, 121.1), (31.1, 121.1), (31.1, 121.0)]
BOW_TIE = [(31.0, 121.0), (31.1, 121.1), (31.0, 121.1), (31.1, 121.0)]  # two triangles tip to tip


@pytest.mark.parametrize("closed", [False, True])
def test_a_simple_ring_has_no_crossing_closed_or_open(closed):
    ring = SIMPLE_SQUARE + SIMPLE_SQUARE[:1] if closed else SIMPLE_SQUARE
    assert first_crossing(ring) is None
    assert first_crossing([(31.0, 121.0), (31.0, 121.1), (31.1, 121.05)]) is None  # a triangle
    concave = [(31.0, 121.0), (31.0, 121.2), (31.2, 121.2), (31.1, 121.1), (31.2, 121.0)]
    assert first_crossing(concave) is None


@pytest.mark.parametrize("closed", [False, True])
def test_a_bow_tie_crosses_itself_and_says_which_edges(closed):
    ring = BOW_TIE + BOW_TIE[:1] if closed else BOW_TIE
    assert first_crossing(ring) == (0, 2)


def test_a_ring_that_comes_back_to_a_point_of_its_own_touches_itself():
    figure_eight = [(31.0, 121.0), (31.1, 121.0), (31.05, 121.05), (31.1, 121.1), (31.0, 121.1), (31.05, 121.05)]
    assert first_crossing(figure_eight) == (1, 4)
    spike_on_an_edge = [(31.0, 121.0), (31.0, 121.2), (31.2, 121.2), (31.0, 121.1)]  # the last point on edge 0
    assert first_crossing(spike_on_an_edge) == (0, 2)


def test_one_degree_of_longitude_on_the_equator_is_as_long_as_one_of_latitude():
    # On a sphere both are R * pi / 180.
    assert haversine_m(0.0, 100.0, 0.0, 101.0) == pytest.approx(111_195.08, abs=0.01)


@pytest.mark.parametrize(
    ("point", "outside"),
    [
        ((30.0, 72.004), False),  # the west edge of the box belongs to it
        ((30.0, 72.5), False),
        ((30.0, 72.0039), True),
        ((30.0, 137.8347), False),  # the east edge
        ((30.0, 137.8348), True),
        ((30.0, 138.0), True),
        ((0.8293, 100.0), False),  # the south edge
        ((1.0, 100.0), False),
        ((0.8292, 100.0), True),
        ((55.8271, 100.0), False),  # the north edge
        ((55.8272, 100.0), True),
        ((56.0, 100.0), True),
    ],
)
def test_out_of_china_box_edges_count_as_inside(point, outside):
    assert out_of_china(*point) is outside


def test_point_in_polygon_returns_a_bool_outside_too():
    assert point_in_polygon(31.3, 121.1, SQUARE) is False
    assert point_in_polygon(31.1, 121.1, SQUARE) is True


TRIANGLE = [(30.0, 120.0), (32.0, 120.0), (30.0, 122.0)]  # its hypotenuse runs from (32, 120) to (30, 122)


@pytest.mark.parametrize(
    ("point", "inside"),
    [
        ((31.0, 120.9), True),
        ((31.0, 121.1), False),  # just past the hypotenuse, which crosses lat 31 at lon 121
        ((30.5, 121.4), True),
        ((30.5, 121.6), False),
        ((31.5, 120.4), True),
        ((31.5, 120.6), False),
    ],
)
def test_point_in_polygon_follows_a_slanted_edge(point, inside):
    assert point_in_polygon(*point, TRIANGLE) is inside


def test_a_ray_along_a_horizontal_edge_is_not_a_crossing():
    # West of the square, level with its bottom edge: the ray runs along that edge.
    unit_square = [(0.0, 0.0), (0.0, 2.0), (2.0, 2.0), (2.0, 0.0)]
    assert point_in_polygon(0.0, -1.0, unit_square) is False
    assert point_in_polygon(2.0, -1.0, unit_square) is False


def test_a_point_on_an_edge_shared_by_two_squares_belongs_to_exactly_one():
    west = [(31.0, 120.8), (31.0, 121.0), (31.2, 121.0), (31.2, 120.8)]
    on_the_shared_edge = (31.1, 121.0)
    assert point_in_polygon(*on_the_shared_edge, SQUARE) is True
    assert point_in_polygon(*on_the_shared_edge, west) is False


def test_centroid_of_a_ring_without_points_is_refused_by_name():
    with pytest.raises(ValueError, match="^polygon has no points$"):
        polygon_centroid([])


@pytest.mark.parametrize("ring", [[(31.0, 121.0)], [(31.0, 121.0), (31.0, 121.0)]], ids=["one", "closed-one"])
def test_centroid_of_a_single_point_is_that_point(ring):
    assert polygon_centroid(ring) == (31.0, 121.0)


def test_centroid_of_a_ring_with_no_area_is_the_vertex_mean():
    assert polygon_centroid([(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)]) == (1.5, 1.5)
    assert polygon_centroid([(30.0, 120.0), (30.0, 121.0), (30.0, 125.0)]) == (30.0, 122.0)


def test_a_concave_ring_whose_notch_lies_in_an_edges_box_is_simple():
    # The fourth point sits inside the bounding box of the first edge, though not on it.
    notch = [(0.0, 0.0), (0.2, 0.2), (0.2, 0.0), (0.1, 0.05)]
    assert first_crossing(notch) is None
    assert first_crossing(list(reversed(notch))) is None


def test_a_ring_folding_back_along_its_own_edge_touches_itself():
    # Edge 0 runs east along lat 0 to (0, 0.2); edge 3 comes back west along the same line to (0, 0.2).
    fold = [(0.0, 0.0), (0.0, 0.2), (0.1, 0.3), (0.0, 0.4), (0.0, 0.2), (-0.1, 0.1)]
    assert first_crossing(fold) == (0, 3)
    # The same along a meridian.
    fold_ns = [(lon, lat) for lat, lon in fold]
    assert first_crossing(fold_ns) == (0, 3)


NOTCH = [(0.0, 0.0), (0.2, 0.2), (0.2, 0.0), (0.1, 0.05)]


def _variants(ring):
    """The ring turned a quarter at a time (lat and lon swapped and mirrored), forwards and backwards."""
    out = []
    for turned in (
        ring,
        [(lon, -lat) for lat, lon in ring],
        [(-lat, -lon) for lat, lon in ring],
        [(-lon, lat) for lat, lon in ring],
    ):
        out += [turned, list(reversed(turned))]
    return out


@pytest.mark.parametrize("offset", [(0.0, 0.0), (31.0, 121.0), (51.5, 0.1)])
@pytest.mark.parametrize("start", range(4))
def test_a_notch_inside_an_edges_box_is_simple_whatever_the_start_and_direction(offset, start):
    for variant in _variants(NOTCH):
        ring = [(lat + offset[0], lon + offset[1]) for lat, lon in variant[start:] + variant[:start]]
        assert first_crossing(ring) is None, ring


FOLD = [(0.0, 0.0), (0.0, 0.2), (0.1, 0.3), (0.0, 0.4), (0.0, 0.2), (-0.1, 0.1)]


@pytest.mark.parametrize("offset", [(0.0, 0.0), (31.0, 121.0), (51.5, 0.1)])
def test_a_fold_back_along_an_edge_touches_it_whatever_the_direction(offset):
    # Edges 0 and 3 lie on one line and share the point (0, 0.2); edges 1 and 4 share it too, later.
    for variant in _variants(FOLD)[::2]:
        ring = [(lat + offset[0], lon + offset[1]) for lat, lon in variant]
        assert first_crossing(ring) == (0, 3), ring


@pytest.mark.parametrize(
    "ring", [SQUARE, SQUARE + SQUARE[:1], list(reversed(SQUARE))], ids=["open", "closed", "clockwise"]
)
def test_polygon_area_is_unsigned_square_degrees_closed_or_open(ring):
    assert polygon_area_deg2(ring) == pytest.approx(0.04, abs=1e-12)  # 0.2 by 0.2 degrees


def test_polygon_area_of_a_bow_tie_is_zero():
    # Its two triangles wind opposite ways, which is why first_crossing exists.
    assert polygon_area_deg2(BOW_TIE) == pytest.approx(0.0, abs=1e-12)


def test_the_fault_of_a_ring_is_said_once_for_every_service():
    assert ring_fault(SIMPLE_SQUARE) is None and ring_fault(SIMPLE_SQUARE + SIMPLE_SQUARE[:1]) is None
    assert ring_fault(BOW_TIE) == (
        "crosses itself: its edge from point 0 and its edge from point 2 meet; give the points in order around the area"
    )
    assert ring_fault([(31.0, 121.0), (31.1, 121.0), (31.2, 121.0)]) == "has no area: its points are on one line"
