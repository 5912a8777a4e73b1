"""public-notification's Alembic history builds exactly the schema its models describe, on both
stores, and running it again (a second replica starting) changes nothing."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from ecs.db import Database
from ecs.migrations import upgrade
from public_notification.main import MIGRATIONS, VERSION_TABLE
from public_notification.store import metadata


async def test_migrations_match_the_models(db_url: str) -> None:
    await upgrade(db_url, MIGRATIONS, VERSION_TABLE)
    await upgrade(db_url, MIGRATIONS, VERSION_TABLE)  # idempotent
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"version_table": VERSION_TABLE}), metadata
                )
            )
            version = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalar_one()
    finally:
        await db.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert version == "0004"
