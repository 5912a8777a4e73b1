"""ecs.db's pure pieces: UTC timestamps, advisory lock keys and constraint names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, String, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from ecs.db import NAMING_CONVENTION, UTCDateTime, lock_key, new_metadata

BEIJING = timezone(timedelta(hours=8))


def test_a_timestamp_is_stored_in_utc_and_a_naive_one_is_refused():
    column = UTCDateTime()
    stored = column.process_bind_param(datetime(2026, 12, 1, 18, 30, tzinfo=BEIJING), None)
    assert stored == datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert stored.tzinfo is UTC and stored.hour == 10
    assert column.process_bind_param(None, None) is None
    with pytest.raises(ValueError, match="^naive datetime$"):
        column.process_bind_param(datetime(2026, 12, 1, 10, 30), None)


def test_a_timestamp_comes_back_aware_and_in_utc_whether_the_store_kept_a_zone_or_not():
    column = UTCDateTime()
    naive = column.process_result_value(datetime(2026, 12, 1, 10, 30), None)  # SQLite keeps no zone
    assert naive == datetime(2026, 12, 1, 10, 30, tzinfo=UTC) and naive.tzinfo is UTC
    aware = column.process_result_value(datetime(2026, 12, 1, 18, 30, tzinfo=BEIJING), None)
    assert aware.tzinfo is UTC and aware.hour == 10 and aware == datetime(2026, 12, 1, 10, 30, tzinfo=UTC)
    assert column.process_result_value(None, None) is None


def test_lock_keys_are_stable_positive_32_bit_and_tell_names_apart():
    names = [f"incident-{i}" for i in range(2000)]
    keys = [lock_key(n) for n in names]
    assert keys == [lock_key(n) for n in names]
    assert all(0 <= k <= 0x7FFFFFFF for k in keys)  # pg_advisory_xact_lock's bigint, kept in int4
    assert len(set(keys)) >= 1995  # crc32: a collision only makes two names share a lock


def test_a_service_metadata_names_its_constraints_by_the_convention_and_has_the_platform_tables():
    md = new_metadata()
    assert md.naming_convention == NAMING_CONVENTION
    assert {"outbox", "inbox", "idempotency_keys"} <= set(md.tables)
    things = Table("things", md, Column("id", Integer, primary_key=True), Column("code", String(8), unique=True))
    ddl = str(CreateTable(things).compile(dialect=postgresql.dialect()))
    assert "CONSTRAINT pk_things PRIMARY KEY" in ddl
    assert "CONSTRAINT uq_things_code UNIQUE" in ddl


async def test_sql_parameters_never_reach_an_error_and_a_sqlite_file_s_folders_are_created(tmp_path):
    from sqlalchemy import text

    from ecs.db import Database

    db = Database(f"sqlite:///{tmp_path}/a/b/store.db")
    try:
        async with db.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE callers (number TEXT PRIMARY KEY)"))
            await conn.execute(text("INSERT INTO callers VALUES (:n)"), {"n": "13800138000"})
        with pytest.raises(Exception) as refused:
            async with db.engine.begin() as conn:
                await conn.execute(text("INSERT INTO callers VALUES (:n)"), {"n": "13800138000"})
        assert "UNIQUE" in str(refused.value) and "13800138000" not in str(refused.value)
        assert (tmp_path / "a" / "b" / "store.db").exists()
    finally:
        await db.dispose()


def test_a_postgresql_engine_pools_as_told_recycles_its_sessions_and_hides_parameters():
    from ecs.db import Database

    db = Database("postgresql://u:p@127.0.0.1:1/none", pool_size=4, pool_timeout_s=2.5)
    pool = db.engine.sync_engine.pool
    # A fixed size: no overflow session opened and closed again for each unit of work past it.
    assert (pool.size(), pool._max_overflow, pool._recycle, pool._timeout) == (4, 0, 1800, 2.5)  # noqa: SLF001
    assert db.engine.sync_engine.hide_parameters is True
    assert Database("sqlite:///:memory:").engine.sync_engine.hide_parameters is True
    default = Database("postgresql://u:p@127.0.0.1:1/none").engine.sync_engine.pool
    assert (default.size(), default._max_overflow, default._timeout) == (10, 0, 30.0)  # noqa: SLF001


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/ecs", "postgresql+asyncpg://u:p@db:5432/ecs"),
        ("postgres://u:p@db/ecs", "postgresql+asyncpg://u:p@db/ecs"),
        ("postgresql+psycopg2://u:p@db/ecs", "postgresql+asyncpg://u:p@db/ecs"),
        ("postgresql+psycopg://u:p@db/ecs", "postgresql+asyncpg://u:p@db/ecs"),
        ("postgresql+asyncpg://u:p@db/ecs", "postgresql+asyncpg://u:p@db/ecs"),
        ("sqlite:///var/data/a.db", "sqlite+aiosqlite:///var/data/a.db"),
        ("sqlite+pysqlite:///var/data/a.db", "sqlite+aiosqlite:///var/data/a.db"),
        ("sqlite+aiosqlite:///var/data/a.db", "sqlite+aiosqlite:///var/data/a.db"),
    ],
)
def test_a_database_url_gets_its_async_driver_and_keeps_its_password(given, used):
    from ecs.db import normalise_url

    assert normalise_url(given) == used


def test_a_database_url_of_another_kind_is_refused_naming_its_scheme():
    from ecs.db import normalise_url

    with pytest.raises(ValueError, match="^unsupported database URL scheme 'mysql\\+aiomysql': use postgresql"):
        normalise_url("mysql+aiomysql://u:p@db/ecs")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
async def test_an_in_memory_sqlite_database_creates_no_folder_and_works(url, tmp_path, monkeypatch):
    from sqlalchemy import text

    from ecs.db import Database

    monkeypatch.chdir(tmp_path)
    db = Database(url)
    try:
        async with db.uow() as uow:
            assert await uow.conn.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()
    assert list(tmp_path.iterdir()) == []


async def test_a_rollback_that_fails_keeps_the_error_on_its_way_and_drops_the_connection(tmp_path, monkeypatch):
    """A unit of work left by an error rolls back; when that rollback fails too (on a connection
    the server cut mid-statement: "another operation is in progress"), the error on its way is the
    one that propagates (a lost database is a 503; the rollback's failure was a 500) and the
    connection is dropped. With no error on its way, the rollback's failure is the error."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ecs.db import Database

    async def broken_rollback(self: AsyncConnection) -> None:
        raise RuntimeError("cannot switch to state 12; another operation (2) is in progress")

    invalidate = AsyncConnection.invalidate
    dropped: list[bool] = []

    async def dropping(self: AsyncConnection, exception: BaseException | None = None) -> None:
        dropped.append(True)
        await invalidate(self, exception)

    db = Database(f"sqlite:///{tmp_path}/store.db")
    try:
        with monkeypatch.context() as patched:
            patched.setattr(AsyncConnection, "rollback", broken_rollback)
            patched.setattr(AsyncConnection, "invalidate", dropping)
            with pytest.raises(ConnectionResetError, match="^cut mid-statement$"):
                async with db.uow() as uow:
                    await uow.conn.execute(text("SELECT 1"))
                    raise ConnectionResetError("cut mid-statement")
            assert dropped == [True]
            with pytest.raises(RuntimeError, match="another operation"):
                async with db.uow() as uow:
                    await uow.conn.execute(text("SELECT 1"))  # left without a commit
        async with db.uow() as uow:  # the engine goes on with sound connections
            assert await uow.conn.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()
