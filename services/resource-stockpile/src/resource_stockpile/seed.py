"""A small realistic seed for trying the service out: the catalogue of every item the shipped
response plans name, four district depots in Shanghai, and stock in each.

The depots are exercise depots by default (``drill-`` ids): live incidents never take their stock,
drills do, and the seed never mixes with live data. ``--live`` seeds live depots instead, for a
local system with no real data. Everything goes through the operator API, as a supply officer
would enter it, so it is ledgered like any receipt; running it twice changes nothing (409s are
skipped).

    .venv/bin/resource-stockpile-seed --token "$(make -s token ROLE=commander)"
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ecs.seeding import run_seed

# (code, English name, Chinese name, base unit, packs, shelf life in days or None)
ITEMS: list[tuple[str, str, str, str, dict[str, int], int | None]] = [
    ("absorbent_boom", "absorbent boom, 3 m", "吸油围栏", "piece", {}, None),
    ("blanket", "cotton blanket", "棉被", "piece", {"bale": 10}, None),
    ("breathing_apparatus_cylinder", "breathing apparatus cylinder, 6.8 L", "空气呼吸器气瓶", "cylinder", {}, None),
    ("crowd_barrier", "crowd barrier, 2 m", "隔离护栏", "piece", {}, None),
    ("decontamination_kit", "decontamination kit", "洗消包", "kit", {}, 1095),
    ("drinking_water_bottle", "drinking water, 550 ml bottle", "瓶装饮用水", "bottle", {"case": 24}, 365),
    ("explosion_proof_fan", "explosion-proof smoke fan", "防爆排烟机", "piece", {}, None),
    ("face_mask", "protective face mask", "防护口罩", "piece", {"box": 50}, 1095),
    ("first_aid_kit", "first-aid kit", "急救包", "kit", {"carton": 10}, 730),
    ("foam_concentrate_litre", "fire-fighting foam concentrate", "泡沫灭火剂", "litre", {"drum": 200}, 1825),
    ("folding_bed", "folding bed", "折叠床", "piece", {}, None),
    ("gas_detector", "portable gas detector", "便携式气体检测仪", "piece", {}, None),
    ("generator", "mobile generator, 30 kW", "移动发电机", "piece", {}, None),
    ("instant_food_ration", "instant food ration", "方便食品", "ration", {"case": 20}, 365),
    ("life_jacket", "life jacket", "救生衣", "piece", {}, None),
    ("lighting_tower", "mobile lighting tower", "移动照明灯塔", "piece", {}, None),
    ("portable_loudspeaker", "portable loudspeaker", "手持扩音器", "piece", {}, None),
    ("protective_suit", "chemical protective suit", "防化服", "piece", {}, 1825),
    ("rubber_boat", "inflatable rescue boat", "橡皮艇", "piece", {}, None),
    ("sandbag", "sandbag", "沙袋", "piece", {"bundle": 50}, None),
    ("shoring_timber_set", "shoring timber set", "支撑木套件", "set", {}, None),
    ("stretcher", "folding stretcher", "折叠担架", "piece", {}, None),
    ("tent", "disaster relief tent, 12 m²", "救灾帐篷", "piece", {}, None),
    ("traffic_cone", "traffic cone", "交通锥", "piece", {}, None),
    ("water_pump", "portable water pump", "移动水泵", "piece", {}, None),
]

# (id, name, district, lat, lon) in WGS-84; each district depot holds a share of the stock.
DEPOTS: list[tuple[str, str, str, float, float]] = [
    ("huangpu", "黄浦区应急物资储备库", "huangpu", 31.2227, 121.4846),
    ("jingan", "静安区应急物资储备库", "jingan", 31.2486, 121.4480),
    ("xuhui", "徐汇区应急物资储备库", "xuhui", 31.1885, 121.4365),
    ("pudong", "浦东新区应急物资储备库", "pudong", 31.2215, 121.5447),
]

# Base units of each item per depot: about what a level II incident of the plans asks for.
STOCK: dict[str, int] = {
    "absorbent_boom": 60,
    "blanket": 300,
    "breathing_apparatus_cylinder": 60,
    "crowd_barrier": 200,
    "decontamination_kit": 20,
    "drinking_water_bottle": 2400,
    "explosion_proof_fan": 3,
    "face_mask": 2000,
    "first_aid_kit": 100,
    "foam_concentrate_litre": 2000,
    "folding_bed": 300,
    "gas_detector": 12,
    "generator": 3,
    "instant_food_ration": 2000,
    "life_jacket": 200,
    "lighting_tower": 5,
    "portable_loudspeaker": 30,
    "protective_suit": 80,
    "rubber_boat": 10,
    "sandbag": 5000,
    "shoring_timber_set": 15,
    "stretcher": 50,
    "tent": 60,
    "traffic_cone": 150,
    "water_pump": 15,
}


def catalogue() -> list[dict[str, Any]]:
    """The seed's catalogue entries as the API takes them."""
    return [
        {"code": c, "name_en": en, "name_zh": zh, "base_unit": unit, "packs": packs, "shelf_life_days": life}
        for c, en, zh, unit, packs, life in ITEMS
    ]


def depots(live: bool) -> list[dict[str, Any]]:
    """The seed's depots as the API takes them (exercise depots, ``drill-`` ids, unless ``live``)."""
    return [
        {
            "id": depot_id if live else f"drill-{depot_id}",
            "name": name if live else f"{name}（演练）",
            "district": district,
            "lat": lat,
            "lon": lon,
            "hours": "00:00-24:00",
            "contact": "",
            "exercise": not live,
        }
        for depot_id, name, district, lat, lon in DEPOTS
    ]


def receipt(depot_id: str, today: datetime) -> dict[str, Any]:
    """A receipt of the seed stock at one depot; what expires is dated from its shelf life."""
    lines = []
    life = {code: days for code, *_, days in ITEMS}
    for code, quantity in STOCK.items():
        line: dict[str, Any] = {"item": code, "lot": f"seed-{depot_id}-{code}"[:64], "quantity": quantity}
        if life[code]:
            line["expiry"] = (today + timedelta(days=life[code])).date().isoformat()
        lines.append(line)
    return {"depot_id": depot_id, "lines": lines, "note": "seed"}


def seed(url: str, token: str, live: bool = False) -> list[str]:
    """Load the seed through the API at ``url``; returns what was done, one line each. Raises
    RuntimeError with the answer when the service refuses something other than a repeat."""
    done: list[str] = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:

        def post(path: str, body: dict[str, Any], what: str) -> bool:
            r = client.post(path, json=body)
            if r.status_code == 409:
                done.append(f"{what}: already there")
                return False
            if r.status_code >= 300:
                raise RuntimeError(f"{what}: {r.status_code} {r.text}")
            done.append(f"{what}: done")
            return True

        post("/v1/items", {"items": catalogue()}, f"catalogue of {len(ITEMS)} items")
        new_depots = post("/v1/depots", {"depots": depots(live)}, f"{len(DEPOTS)} depots")
        if new_depots:  # stock only for depots this run created: a second run receives nothing twice
            today = datetime.now(UTC)
            for d in depots(live):
                post("/v1/documents/receipts", receipt(d["id"], today), f"stock at {d['id']}")
    return done


def run() -> None:
    """The ``resource-stockpile-seed`` console script."""
    run_seed("stockpile", __doc__, "commander's or supply officer", "depots", seed)
