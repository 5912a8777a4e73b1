"""The seed of the embedded default, on both stores: exercise channels and Shanghai's districts
only (nothing live), and a second run adds nothing."""

from __future__ import annotations

from ecs.db import Database
from public_notification import store
from public_notification.seed import DISTRICTS, seed
from public_notification.settings import NotificationSettings


async def test_the_seed_holds_exercise_channels_and_districts_only_and_runs_once(db_url: str):
    settings = NotificationSettings(database_url=db_url)
    assert await seed(settings) == {"exercise_channels": 3, "targets": len(DISTRICTS)}
    assert await seed(settings) == {"exercise_channels": 0, "targets": 0}
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            channels = (await conn.execute(store.channels.select())).all()
            targets = (await conn.execute(store.targets.select())).all()
    finally:
        await db.dispose()
    assert len(channels) == 3 and all(c.exercise for c in channels)
    assert {t.id for t in targets} == {f"district-{code}" for code in DISTRICTS}
    assert all(30.6 < t.lat < 31.9 and 120.8 < t.lon < 122.1 for t in targets)  # inside Shanghai
