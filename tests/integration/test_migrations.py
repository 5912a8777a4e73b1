"""Each service's Alembic history builds exactly the schema its models describe, on both stores,
and running it again (a second replica starting) changes nothing."""

from __future__ import annotations

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from ecs.db import Database
from ecs.migrations import upgrade
from ecs.testing import missing

SERVICES = ["incident_intake", "dispatch", "shelter_registry", "resource_stockpile"]


def _service(name: str):
    try:
        main = importlib.import_module(f"{name}.main")
        store = importlib.import_module(f"{name}.store")
    except ImportError:
        missing(f"{name} is not installed")
    return main.MIGRATIONS, main.VERSION_TABLE, store.metadata


@pytest.mark.parametrize("service", SERVICES)
async def test_migrations_match_the_models(service: str, db_url: str) -> None:
    migrations, version_table, metadata = _service(service)
    await upgrade(db_url, migrations, version_table)
    await upgrade(db_url, migrations, version_table)  # idempotent
    db = Database(db_url)
    try:
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"version_table": version_table}), metadata
                )
            )
            heads = (await conn.execute(text(f"SELECT count(*) FROM {version_table}"))).scalar()
    finally:
        await db.dispose()
    assert diff == [], f"models and migrations differ: {diff}"
    assert heads == 1
