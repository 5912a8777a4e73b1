"""Alembic, one migration history per service, run at start-up from every replica safely."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from .db import lock_key, normalise_url


def alembic_config(url: str, script_location: str | Path, version_table: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    cfg.set_main_option("version_table", version_table)
    return cfg


async def upgrade(url: str, script_location: str | Path, version_table: str) -> None:
    """Bring the service's schema to head; on PostgreSQL replicas take turns (advisory lock)."""
    cfg = alembic_config(url, script_location, version_table)
    url = normalise_url(url)
    if url.startswith("sqlite"):
        await asyncio.to_thread(command.upgrade, cfg, "head")
        return
    engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
    try:
        async with engine.connect() as conn:
            await conn.execute(
                text("SELECT pg_advisory_lock(:k)"),
                {"k": lock_key("migrate:" + version_table)},
            )
            await conn.commit()
            try:
                await asyncio.to_thread(command.upgrade, cfg, "head")
            finally:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:k)"),
                    {"k": lock_key("migrate:" + version_table)},
                )
                await conn.commit()
    finally:
        await engine.dispose()


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py."""
    from alembic import context

    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    version_table = config.get_main_option("version_table") or "alembic_version"
    options = dict(
        target_metadata=target_metadata,
        version_table=version_table,
        render_as_batch=True,
    )

    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(connection: object) -> None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()

    async def online() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool, hide_parameters=True)
        async with engine.connect() as conn:
            await conn.run_sync(run)
            await conn.commit()
        await engine.dispose()

    asyncio.run(online())
