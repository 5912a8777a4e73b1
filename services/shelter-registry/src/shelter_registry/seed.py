"""A small realistic seed for trying the service out: ten emergency shelters of the kinds Shanghai
designates (避难场所: parks, squares, university campuses, stadiums, sports halls), at their real
places, with effective areas of a plausible size (not official figures).

The shelters are exercise shelters by default (``drill-`` ids, standby): live incidents never take
their places, drills do, and the seed never mixes with live data. ``--live`` seeds live shelters
instead, for a local system with no real data. Everything goes through the operator API, as a
shelter manager would enter it; running it twice changes nothing (a 409 is skipped).

    .venv/bin/shelter-registry-seed --token "$(make -s token ROLE=shelter_manager)"
"""

from __future__ import annotations

from typing import Any

import httpx

from ecs.seeding import run_seed

# (id, 中文名, English name, kind, district, lat, lon (WGS-84), effective area m², stay class,
#  accessible places, pet places, facilities)
SHELTERS: list[tuple[str, str, str, str, str, float, float, float, str, int, int, list[str]]] = [
    (
        "century-park",
        "世纪公园",
        "Century Park",
        "park",
        "pudong",
        31.2156,
        121.5507,
        60_000,
        "long_term",
        400,
        200,
        ["water", "toilets", "power", "medical_post", "broadcast"],
    ),
    (
        "peoples-square",
        "人民广场",
        "People's Square",
        "square",
        "huangpu",
        31.2304,
        121.4737,
        12_000,
        "short_term",
        80,
        40,
        ["water", "toilets", "broadcast"],
    ),
    (
        "zhongshan-park",
        "中山公园",
        "Zhongshan Park",
        "park",
        "changning",
        31.2208,
        121.4172,
        15_000,
        "medium_term",
        100,
        60,
        ["water", "toilets", "power"],
    ),
    (
        "changfeng-park",
        "长风公园",
        "Changfeng Park",
        "park",
        "putuo",
        31.2273,
        121.3978,
        20_000,
        "medium_term",
        120,
        80,
        ["water", "toilets", "power", "helipad"],
    ),
    (
        "luxun-park",
        "鲁迅公园",
        "Lu Xun Park",
        "park",
        "hongkou",
        31.2736,
        121.4826,
        10_000,
        "short_term",
        60,
        40,
        ["water", "toilets"],
    ),
    (
        "fudan-handan",
        "复旦大学邯郸校区",
        "Fudan University, Handan campus",
        "school",
        "yangpu",
        31.2977,
        121.5033,
        9_000,
        "medium_term",
        120,
        20,
        ["water", "toilets", "power", "beds", "kitchen", "medical_post"],
    ),
    (
        "sjtu-xuhui",
        "上海交通大学徐汇校区",
        "Shanghai Jiao Tong University, Xuhui campus",
        "school",
        "xuhui",
        31.2005,
        121.4367,
        6_000,
        "medium_term",
        80,
        10,
        ["water", "toilets", "power", "beds", "kitchen"],
    ),
    (
        "shanghai-stadium",
        "上海体育场",
        "Shanghai Stadium",
        "stadium",
        "xuhui",
        31.1830,
        121.4373,
        18_000,
        "short_term",
        300,
        60,
        ["water", "toilets", "power", "broadcast", "medical_post"],
    ),
    (
        "oriental-sports-centre",
        "东方体育中心",
        "Oriental Sports Centre",
        "sports_hall",
        "pudong",
        31.1557,
        121.4870,
        8_000,
        "short_term",
        150,
        30,
        ["water", "toilets", "power", "beds"],
    ),
    (
        "xujiahui-park",
        "徐家汇公园",
        "Xujiahui Park",
        "park",
        "xuhui",
        31.2005,
        121.4407,
        4_500,
        "short_term",
        30,
        20,
        ["water", "toilets"],
    ),
]


def shelters(live: bool) -> list[dict[str, Any]]:
    """The seed's shelters as the API takes them (exercise shelters, ``drill-`` ids, unless ``live``)."""
    out = []
    for sid, zh, en, kind, district, lat, lon, area, stay, accessible, pets, facilities in SHELTERS:
        out.append(
            {
                "id": sid if live else f"drill-{sid}",
                "name_zh": zh if live else f"{zh}（演练）",
                "name_en": en if live else f"{en} (drill)",
                "kind": kind,
                "district": district,
                "location": {"lat": lat, "lon": lon},
                "area_m2": area,
                "stay_class": stay,
                "accessible_places": accessible,
                "pet_places": pets,
                "facilities": facilities,
                "hotline": "12345",  # Shanghai's citizen service hotline
                "status": "standby",
                "exercise": not live,
            }
        )
    return out


def seed(url: str, token: str, live: bool = False) -> list[str]:
    """Load the seed through the API at ``url``; returns what was done, one line each. Raises
    RuntimeError with the answer when the service refuses something other than a repeat."""
    headers = {"Authorization": f"Bearer {token}"}
    done: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for s in shelters(live):
            r = client.post("/v1/shelters", json=s)
            if r.status_code == 409:
                done.append(f"shelter {s['id']}: already there")
            elif r.status_code >= 300:
                raise RuntimeError(f"shelter {s['id']}: {r.status_code} {r.text}")
            else:
                done.append(f"shelter {s['id']}: done ({r.json()['capacity']:,} places)")
    return done


def run() -> None:
    """The ``shelter-registry-seed`` console script."""
    run_seed("shelter", __doc__, "shelter manager's or commander", "shelters", seed)
