"""``public-notification-seed``: a small realistic seed for the embedded default, kept apart from
live data — exercise channels only (an SMS, a cell-broadcast and a post channel, all writing to
the local channel outbox) and Shanghai's 16 districts as targets (their government seats, WGS-84
degrees, to about 100 m). Run it once after ``make up``; running it again adds nothing.

Reads NOTIFICATION_DATABASE_URL like the service and migrates first, so it also works before the
service's first start."""

from __future__ import annotations

import argparse
import asyncio

from ecs.db import Database
from ecs.migrations import upgrade
from ecs.vocabulary import Participant

from . import commands, store
from .context import Context
from .domain import ChannelKind
from .handlers import handle
from .main import MIGRATIONS, VERSION_TABLE
from .settings import NotificationSettings

DISTRICTS: dict[str, tuple[str, float, float]] = {
    "310101": ("黄浦区 Huangpu", 31.2317, 121.4846),
    "310104": ("徐汇区 Xuhui", 31.1885, 121.4365),
    "310105": ("长宁区 Changning", 31.2204, 121.4241),
    "310106": ("静安区 Jing'an", 31.2290, 121.4480),
    "310107": ("普陀区 Putuo", 31.2491, 121.3976),
    "310109": ("虹口区 Hongkou", 31.2646, 121.5050),
    "310110": ("杨浦区 Yangpu", 31.2595, 121.5260),
    "310112": ("闵行区 Minhang", 31.1129, 121.3816),
    "310113": ("宝山区 Baoshan", 31.4052, 121.4896),
    "310114": ("嘉定区 Jiading", 31.3747, 121.2655),
    "310115": ("浦东新区 Pudong", 31.2215, 121.5447),
    "310116": ("金山区 Jinshan", 30.7417, 121.3420),
    "310117": ("松江区 Songjiang", 31.0322, 121.2277),
    "310118": ("青浦区 Qingpu", 31.1508, 121.1240),
    "310120": ("奉贤区 Fengxian", 30.9181, 121.4740),
    "310151": ("崇明区 Chongming", 31.6229, 121.3975),
}
"""GB/T 2260 code → name and the district government's position."""

EXERCISE_CHANNELS = (
    (ChannelKind.sms, "演练短信 drill SMS"),
    (ChannelKind.cell_broadcast, "演练小区广播 drill cell broadcast"),
    (ChannelKind.social, "演练政务微博 drill official post"),
)
SEEDER = "seed"


async def seed(settings: NotificationSettings) -> dict[str, int]:
    """Add what is missing of the seed; returns how many channels and targets were added."""
    await upgrade(settings.database_url, MIGRATIONS, VERSION_TABLE)
    db = Database(settings.database_url)
    try:
        ctx = Context(db, settings)
        async with db.engine.connect() as conn:
            have = await store.channel_names(conn)
        added = 0
        for kind, name in EXERCISE_CHANNELS:
            if name not in have:
                await handle(ctx, commands.RegisterChannel(kind, name, True, SEEDER))
                added += 1
        targets = [
            {"id": f"district-{code}", "kind": "district", "name": name, "lat": lat, "lon": lon, "district": code}
            for code, (name, lat, lon) in DISTRICTS.items()
        ]
        new_targets = await handle(ctx, commands.RegisterTargets(targets, SEEDER))
        return {"exercise_channels": added, "targets": new_targets}
    finally:
        await db.dispose()


def run() -> None:
    """The ``public-notification-seed`` console script (no arguments; ``--help`` says what it does)."""
    parser = argparse.ArgumentParser(
        prog="public-notification-seed",
        description="Add exercise channels and Shanghai's 16 districts as targets to public-notification's "
        "database (NOTIFICATION_DATABASE_URL); running it again adds nothing.",
    )
    parser.parse_args()
    added = asyncio.run(seed(NotificationSettings()))
    print(
        f"{Participant.notification.service} seed: added {added['exercise_channels']} exercise channels, "
        f"{added['targets']} district targets"
    )
