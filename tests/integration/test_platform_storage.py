"""The persistence platform in libs/ on both stores: migrations, the unit of work, timestamps,
and the database-side guards the services rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, func, inspect, select, text, update
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ecs.db import (
    COPY_FROM_ROWS,
    IDEMPOTENCY_KEYS,
    INBOX,
    OUTBOX,
    BigId,
    Database,
    DriverConnectionLost,
    UTCDateTime,
    chunks,
    new_metadata,
    normalise_url,
    on_driver,
    scene_of,
    take_scene,
)
from ecs.envelope import make_event
from ecs.errors import Transient
from ecs.migrations import upgrade
from ecs.retry import is_retryable, is_unavailable, retrying
from ecs.testing import eventually
from incident_intake.main import MIGRATIONS, VERSION_TABLE

PLATFORM_TABLES = {"outbox", "inbox", "idempotency_keys"}
INTAKE_TABLES = {"incidents", "alarms", "incident_callers", "timeline", "correlation_clock"}

md = new_metadata()
COUNTERS = Table(
    "counters",
    md,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=True),
)
SCENES = Table(
    "scenes",
    md,
    Column("id", String(32), primary_key=True),
    Column("category", String(32), nullable=False),
    Column("level", Integer, nullable=False),
)


@pytest.fixture
async def db(db_url) -> AsyncIterator[Database]:
    database = Database(db_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(md.create_all)
    yield database
    await database.dispose()


async def count(db: Database, table: Table) -> int:
    async with db.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)))


# --- migrations -----------------------------------------------------------------------------


async def tables_and_version(db: Database) -> tuple[set[str], list[str]]:
    async with db.engine.connect() as conn:
        names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        versions = [r[0] for r in await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    return names, versions


async def test_migrations_create_the_schema_and_a_second_run_changes_nothing(db_url):
    await upgrade(db_url, MIGRATIONS, VERSION_TABLE)
    db = Database(db_url)
    try:
        names, versions = await tables_and_version(db)
        assert PLATFORM_TABLES | INTAKE_TABLES | {VERSION_TABLE} <= names
        assert len(versions) == 1
        async with db.uow() as uow:
            uow.emit(make_event("thing.happened", {"n": 1}, source="test"))
            await uow.first_time("worker", "m-1")
            await uow.commit()

        await upgrade(db_url, MIGRATIONS, VERSION_TABLE)

        assert await tables_and_version(db) == (names, versions)
        assert await count(db, OUTBOX) == 1 and await count(db, INBOX) == 1
    finally:
        await db.dispose()


async def test_replicas_starting_together_migrate_once(pg_url):
    """Replicas share PostgreSQL (DESIGN §10); each runs the migrations at start, at the same moment."""
    await asyncio.gather(*(upgrade(pg_url, MIGRATIONS, VERSION_TABLE) for _ in range(3)))
    db = Database(pg_url)
    try:
        names, versions = await tables_and_version(db)
        assert names >= INTAKE_TABLES and len(versions) == 1
    finally:
        await db.dispose()


# --- the unit of work -----------------------------------------------------------------------


async def test_unit_of_work_without_commit_rolls_back_writes_and_events(db):
    async with db.uow() as uow:
        await uow.conn.execute(COUNTERS.insert().values(name="units", value=1))
        uow.emit(make_event("thing.happened", {"n": 1}, source="test"))
        await uow.flush_events()
        await uow.first_time("worker", "m-1")
        # no commit: the caller returned early
    assert await count(db, COUNTERS) == 0
    assert await count(db, OUTBOX) == 0
    assert await count(db, INBOX) == 0


async def test_unit_of_work_rolls_back_when_the_work_raises(db):
    with pytest.raises(ZeroDivisionError):
        async with db.uow() as uow:
            await uow.conn.execute(COUNTERS.insert().values(name="units", value=1))
            uow.emit(make_event("thing.happened", {"n": 1}, source="test"))
            1 / 0  # noqa: B018
    assert await count(db, COUNTERS) == 0 and await count(db, OUTBOX) == 0


async def test_committed_unit_of_work_keeps_writes_and_events_together(db):
    events = [make_event("thing.happened", {"n": n}, source="test") for n in range(3)]
    async with db.uow() as uow:
        await uow.conn.execute(COUNTERS.insert().values(name="units", value=3))
        uow.emit(*events)
        await uow.commit()
    assert await count(db, COUNTERS) == 1
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(OUTBOX).order_by(OUTBOX.c.seq))).all()
    assert [r.msg_id for r in rows] == [e.id for e in events]
    assert all(r.headers["Nats-Msg-Id"] == r.msg_id for r in rows)
    assert db.outbox_written.is_set()  # the relay is woken up


async def test_a_failed_commit_leaves_nothing_behind(db):
    async with db.uow() as uow:
        await uow.conn.execute(COUNTERS.insert().values(name="units", value=1))
        await uow.commit()
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        async with db.uow() as uow:
            uow.emit(make_event("thing.happened", {"n": 1}, source="test"))
            await uow.flush_events()
            await uow.conn.execute(COUNTERS.insert().values(name="units", value=2))
            await uow.commit()
    assert await count(db, OUTBOX) == 0
    async with db.engine.connect() as conn:
        assert await conn.scalar(select(COUNTERS.c.value)) == 1


async def test_concurrent_units_of_work_guarded_by_the_database_never_lose_an_update(db):
    """A count guarded by a conditional update stays exact under concurrent writers (DESIGN §5)."""
    async with db.uow() as uow:
        await uow.conn.execute(COUNTERS.insert().values(name="beds", value=20))
        await uow.commit()

    async def take_bed() -> bool:
        async with db.uow() as uow:
            res = await uow.conn.execute(
                update(COUNTERS)
                .where(COUNTERS.c.name == "beds", COUNTERS.c.value > 0)
                .values(value=COUNTERS.c.value - 1)
            )
            await uow.commit()
            return res.rowcount == 1

    taken = await asyncio.gather(*(take_bed() for _ in range(30)))
    assert taken.count(True) == 20
    async with db.engine.connect() as conn:
        assert await conn.scalar(select(COUNTERS.c.value)) == 0


async def test_lock_serialises_units_of_work_across_connections(db):
    async with db.uow() as uow:
        await uow.conn.execute(COUNTERS.insert().values(name="seq", value=0))
        await uow.commit()
    order: list[tuple[int, int]] = []

    async def bump(worker: int) -> None:
        async with db.uow() as uow:
            await uow.lock("seq")
            value = await uow.conn.scalar(select(COUNTERS.c.value).where(COUNTERS.c.name == "seq"))
            await asyncio.sleep(0.01)  # a read-then-write that only the lock makes safe
            await uow.conn.execute(update(COUNTERS).where(COUNTERS.c.name == "seq").values(value=value + 1))
            await uow.commit()
            order.append((worker, value))

    await asyncio.gather(*(bump(i) for i in range(8)))
    assert sorted(v for _, v in order) == list(range(8))


# --- inserts and timestamps -----------------------------------------------------------------


async def test_insert_ignore_skips_a_duplicate_key(db):
    row = {
        "principal": "alice",
        "key": "k-1",
        "fingerprint": "f",
        "status": 0,
        "body": "",
        "created_at": datetime.now(UTC),
    }
    async with db.uow() as uow:
        first = await uow.conn.execute(db.insert_ignore(IDEMPOTENCY_KEYS).values(**row))
        second = await uow.conn.execute(db.insert_ignore(IDEMPOTENCY_KEYS).values(**{**row, "fingerprint": "g"}))
        await uow.commit()
    assert (first.rowcount, second.rowcount) == (1, 0)
    async with db.engine.connect() as conn:
        assert await conn.scalar(select(IDEMPOTENCY_KEYS.c.fingerprint)) == "f"


async def test_timestamps_come_back_aware_and_in_utc(db):
    beijing = timezone(timedelta(hours=8))
    when = datetime(2025, 1, 1, 8, 30, 15, 123456, tzinfo=beijing)
    async with db.uow() as uow:
        await uow.conn.execute(COUNTERS.insert().values(name="t", value=0, at=when))
        await uow.commit()
    async with db.engine.connect() as conn:
        back = await conn.scalar(select(COUNTERS.c.at))
        # Comparisons in SQL see the same instant, whatever offset it was written with.
        earlier = await conn.scalar(
            select(func.count()).select_from(COUNTERS).where(COUNTERS.c.at < datetime(2025, 1, 1, 0, 31, tzinfo=UTC))
        )
    assert back == when and back.utcoffset() == timedelta(0)
    assert back == datetime(2025, 1, 1, 0, 30, 15, 123456, tzinfo=UTC)
    assert earlier == 1


async def test_a_naive_timestamp_is_refused(db):
    with pytest.raises(Exception, match="naive"):
        async with db.uow() as uow:
            await uow.conn.execute(COUNTERS.insert().values(name="t", value=0, at=datetime(2025, 1, 1, 8, 0)))
            await uow.commit()
    assert await count(db, COUNTERS) == 0


async def test_ping_tells_whether_the_database_answers(db_url, tmp_path):
    db = Database(db_url)
    try:
        assert await db.ping() is True
    finally:
        await db.dispose()
    unreachable = Database("postgresql://nobody@127.0.0.1:1/none")
    try:
        assert await unreachable.ping() is False
    finally:
        await unreachable.dispose()


async def test_pooled_connections_the_server_ended_are_replaced_before_a_unit_of_work_uses_them(pg_url):
    db = Database(pg_url)
    admin = Database(pg_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.create_all)
        held = [db.uow() for _ in range(3)]  # three sessions, back in the pool afterwards
        pids, drivers = [], []
        for uow in held:
            await uow.__aenter__()
            pids.append(int(await uow.conn.scalar(text("SELECT pg_backend_pid()"))))
            drivers.append((await uow.conn.get_raw_connection()).driver_connection)
        for uow in held:
            await uow.__aexit__(None, None, None)
        async with admin.engine.connect() as conn:  # the server ends them, as a restart does
            await conn.execute(
                text("SELECT pg_terminate_backend(p) FROM unnest(CAST(:pids AS int[])) AS p"), {"pids": pids}
            )
            await conn.commit()

        async def ended() -> bool | None:
            # A fresh transaction each look: pg_stat_activity is a snapshot held for a transaction.
            async with admin.engine.connect() as look:
                alive = await look.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(CAST(:pids AS int[]))"), {"pids": pids}
                )
            return True if alive == 0 else None

        await eventually(ended, "the terminated sessions gone")

        async def told() -> bool:  # the client read each session's goodbye, as an idle one does
            return all(d.is_closed() for d in drivers)

        await eventually(told, "the clients told their sessions ended")
        for i in range(3):  # each pooled session in turn: replaced, not failed
            async with db.uow() as uow:
                await uow.conn.execute(COUNTERS.insert().values(name=f"after-{i}", value=i))
                await uow.commit()
        assert await count(db, COUNTERS) == 3
    finally:
        await admin.dispose()
        await db.dispose()


async def test_more_units_of_work_than_the_pool_holds_wait_for_its_sessions_instead_of_opening_new_ones(pg_url):
    """A load of more concurrent units of work than the pool's size shares the pool's sessions:
    before, each unit of work past the size opened a session of its own and closed it on return
    (SQLAlchemy's overflow), so a steady load paid a new server process, its set-up and asyncpg's
    type introspection for nearly every request."""
    from sqlalchemy import event

    db = Database(pg_url, pool_size=3)
    opened = 0

    @event.listens_for(db.engine.sync_engine, "connect")
    def count_connect(*_: Any) -> None:
        nonlocal opened
        opened += 1

    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.create_all)
        sessions: set[int] = set()

        async def work(i: int) -> None:
            async with db.uow() as uow:
                sessions.add(int(await uow.conn.scalar(text("SELECT pg_backend_pid() FROM pg_sleep(0.01)"))))
                await uow.conn.execute(COUNTERS.insert().values(name=f"w-{i}", value=i))
                await uow.commit()

        for round_ in range(4):  # 12 at once, four times
            await asyncio.gather(*(work(round_ * 12 + i) for i in range(12)))
        assert await count(db, COUNTERS) == 48
        assert opened <= 3 and len(sessions) <= 3, (opened, sessions)
    finally:
        await db.dispose()


async def test_a_unit_of_work_that_finds_no_session_free_in_time_is_unavailable(pg_url):
    db = Database(pg_url, pool_size=1, pool_timeout_s=0.2)
    try:
        async with db.uow() as holding:
            await holding.conn.execute(text("SELECT 1"))

            async def work() -> None:
                async with db.uow() as uow:
                    await uow.conn.execute(text("SELECT 1"))

            with pytest.raises(Transient, match="^database unavailable: "):
                await retrying(work)
    finally:
        await db.dispose()


async def test_a_statement_on_a_session_the_client_has_not_yet_seen_end_is_a_lost_database(pg_url, monkeypatch):
    """A pooled session the server ended before the client read its goodbye answers its next
    statement with asyncpg's client-state error, which SQLAlchemy alone took for a defect (a 500).
    It is a lost database: Transient through ecs.retry, and the connection is not used again."""
    import asyncpg

    db = Database(pg_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.create_all)
        fetch = asyncpg.Connection.fetch
        calls = 0

        async def ended_unread(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise asyncpg.exceptions.InternalClientError(
                    "cannot switch to state 15; another operation (2) is in progress"
                )
            return await fetch(self, *args, **kwargs)

        async def work() -> None:
            async with db.uow() as uow:
                await uow.conn.execute(COUNTERS.insert().values(name="once", value=1))
                await uow.commit()

        async with db.engine.connect() as conn:
            first = (await conn.get_raw_connection()).driver_connection
        monkeypatch.setattr(asyncpg.Connection, "fetch", ended_unread)
        monkeypatch.setattr(asyncpg.prepared_stmt.PreparedStatement, "fetch", ended_unread)
        with pytest.raises(Transient, match="^database unavailable: "):
            await retrying(work)
        monkeypatch.undo()
        await work()  # a sound connection now
        async with db.engine.connect() as conn:
            assert (await conn.get_raw_connection()).driver_connection is not first
        assert await count(db, COUNTERS) == 1
    finally:
        await db.dispose()


async def test_a_medical_call_becomes_the_scene_once_and_a_scene_never_turns_back(db):
    """take_scene and scene_of: only a still-medical incident takes the scene's category (and the
    values given with it); a scene, or an incident not known here, is left as it is."""
    async with db.uow() as uow:
        await uow.conn.execute(
            SCENES.insert(),
            [
                {"id": "med", "category": "medical", "level": 4},
                {"id": "fire", "category": "fire", "level": 3},
                {"id": "med2", "category": "medical", "level": 4},
                {"id": "fire2", "category": "fire", "level": 3},
            ],
        )
        assert await take_scene(uow.conn, SCENES, "med", "crowd_crush", level=2) is True
        assert await take_scene(uow.conn, SCENES, "med", "fire", level=1) is False  # already a scene
        assert await take_scene(uow.conn, SCENES, "fire", "crowd_crush", level=1) is False
        assert await take_scene(uow.conn, SCENES, "nobody", "fire") is False
        for incident_id in ("med2", "fire2"):
            await uow.conn.execute(
                SCENES.update()
                .where(SCENES.c.id == incident_id)
                .values(category=scene_of(SCENES.c.category, "traffic_accident"))
            )
        await uow.commit()
    async with db.engine.connect() as conn:
        rows = {r.id: (r.category, r.level) for r in await conn.execute(select(SCENES))}
    assert rows == {
        "med": ("crowd_crush", 2),
        "fire": ("fire", 3),
        "med2": ("traffic_accident", 4),
        "fire2": ("fire", 3),
    }
    with pytest.raises(ValueError):
        scene_of(SCENES.c.category, "not-a-category")


def test_chunks_keep_every_item_in_order_in_lists_of_at_most_the_size():
    assert list(chunks([], 3)) == []
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunks((1, 2), 2)) == [[1, 2]]
    assert [len(c) for c in chunks(list(range(1001)))] == [500, 500, 1]


def _end_worker_thread(driver_connection) -> None:
    """End an aiosqlite connection's worker thread without closing the connection, as happens when
    the event loop it answered to goes away."""
    from aiosqlite.core import _STOP_RUNNING_SENTINEL

    driver_connection._tx.put_nowait((None, lambda: _STOP_RUNNING_SENTINEL))
    driver_connection._thread.join()


@pytest.mark.parametrize("when", ["in use", "pooled"])
async def test_a_sqlite_connection_whose_worker_thread_ended_does_not_hang_the_engine(tmp_path, when):
    """Every call on such a connection used to wait forever (it is queued to the dead thread), the
    pool's rollback and the engine's dispose among them, and a service's stop with them: now the
    connection counts as lost, is dropped, and its write lock goes with it."""
    from sqlalchemy.exc import DBAPIError

    db = Database(f"sqlite:///{tmp_path}/worker.db")
    try:
        async with db.engine.connect() as conn:
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.commit()
            raw = (await conn.get_raw_connection()).driver_connection
            if when == "in use":
                await conn.execute(text("INSERT INTO t VALUES (1)"))  # holds the write lock
                _end_worker_thread(raw)
                with pytest.raises(DBAPIError) as lost:
                    await conn.execute(text("SELECT count(*) FROM t"))
                assert lost.value.connection_invalidated
        if when == "pooled":
            _end_worker_thread(raw)
        assert not raw._thread.is_alive()
        await db.dispose()
        async with db.engine.begin() as conn:  # a new connection, not blocked by the lost one's lock
            await conn.execute(text("INSERT INTO t VALUES (2)"))
        async with db.engine.connect() as conn:
            assert await conn.scalar(text("SELECT sum(x) FROM t")) == 2
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgresql://u:p@h/db", "postgresql+asyncpg"),
        ("postgres://u:p@h/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+asyncpg"),
        ("sqlite:///var/x.db", "sqlite+aiosqlite"),
    ],
)
def test_plain_database_urls_get_the_async_drivers(given, driver):
    assert normalise_url(given).split("://")[0] == driver


def test_other_databases_are_refused():
    with pytest.raises(ValueError, match="unsupported"):
        normalise_url("mysql://u:p@h/db")


def test_platform_tables_come_with_every_service_metadata():
    fresh = new_metadata()
    assert set(fresh.tables) >= PLATFORM_TABLES
    assert isinstance(fresh, MetaData) and fresh is not md


async def test_a_failure_to_close_an_orphaned_sqlite_connection_is_logged_and_does_not_stop_the_engine(tmp_path):
    """A sqlite3 connection that refuses to close once its worker thread ended is left to the
    collector: the engine's dispose still ends, and the log says which error it was."""
    import sqlite3

    from structlog.testing import capture_logs

    class RefusesToClose:
        def close(self) -> None:
            raise sqlite3.ProgrammingError("cannot close it now")

    db = Database(f"sqlite:///{tmp_path}/stuck.db")
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        raw = (await conn.get_raw_connection()).driver_connection
    _end_worker_thread(raw)
    real, raw._connection = raw._connection, RefusesToClose()
    try:
        with capture_logs() as logs:
            await db.dispose()
    finally:
        real.close()
    assert raw._connection is None
    assert [(e["event"], e["log_level"], e["error"]) for e in logs if e["event"].startswith("db.")] == [
        ("db.sqlite_orphan_not_closed", "warning", "cannot close it now")
    ]


async def test_a_sqlite_connection_passes_keyword_arguments_to_its_worker(tmp_path):
    """The orphan-safe connection queues every call as aiosqlite does, keyword arguments included:
    a function created as deterministic may be used in an index."""
    db = Database(f"sqlite:///{tmp_path}/fn.db")
    try:
        async with db.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await raw.create_function("twice", 1, lambda x: 2 * x, deterministic=True)
            await conn.execute(text("CREATE TABLE t (x INTEGER)"))
            await conn.execute(text("CREATE INDEX ix_t_twice ON t (twice(x))"))
            await conn.execute(text("INSERT INTO t VALUES (21)"))
            assert await conn.scalar(text("SELECT twice(x) FROM t")) == 42
    finally:
        await db.dispose()


async def test_first_time_tells_a_new_message_from_one_the_consumer_already_processed(db):
    async with db.uow() as uow:
        assert await uow.first_time("worker", "m-1") is True
        assert await uow.first_time("worker", "m-1") is False
        assert await uow.first_time("worker", "m-2") is True
        assert await uow.first_time("auditor", "m-1") is True  # each consumer has its own inbox
        await uow.commit()
    async with db.uow() as uow:
        assert await uow.first_time("worker", "m-2") is False
    assert await count(db, INBOX) == 3


async def test_outbox_rows_carry_the_event_s_correlation_as_trace_context(db):
    from ecs.bus import msg_id_headers

    event = make_event("thing.happened", {"n": 1}, source="test", correlation_id="c" * 32)
    async with db.uow() as uow:
        uow.emit(event)
        await uow.commit()
    async with db.engine.connect() as conn:
        headers = await conn.scalar(select(OUTBOX.c.headers))
    assert headers == msg_id_headers(event.id, event.correlation_id)
    assert headers["traceparent"].startswith(f"00-{'c' * 32}-")


# --- insert_many on PostgreSQL: COPY from COPY_FROM_ROWS rows on -----------------------------

BULK = Table(
    "bulk",
    md,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("name", String(32), nullable=False),
    Column("n", Integer, nullable=False),
    Column("doc", JSON, nullable=True),
    Column("tags", JSON, nullable=False),
    Column("note", JSON(none_as_null=True), nullable=True),
)


def bulk_rows(count: int) -> list[dict]:
    """Keys in another order than the table's columns; every third ``doc`` and ``note`` is None."""
    return [
        {
            "note": None if i % 3 == 0 else [i],
            "tags": ["a", str(i)],
            "doc": None if i % 3 == 0 else {"i": i, "name": f"row {i}"},
            "n": i,
            "name": f"row-{i}",
        }
        for i in range(count)
    ]


@pytest.fixture
async def pg_db(pg_url) -> AsyncIterator[Database]:
    database = Database(pg_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(md.create_all)
    yield database
    await database.dispose()


async def stored_bulk(db: Database) -> tuple[list[dict], tuple[int, int]]:
    """The rows read back, and how many ``doc`` and ``note`` values are SQL NULL."""
    async with db.engine.connect() as conn:
        rows = [
            {"note": r.note, "tags": r.tags, "doc": r.doc, "n": r.n, "name": r.name}
            for r in await conn.execute(select(BULK).order_by(BULK.c.seq))
        ]
        nulls = [
            int(await conn.scalar(select(func.count()).select_from(BULK).where(column.is_(None))))
            for column in (BULK.c.doc, BULK.c.note)
        ]
    return rows, (nulls[0], nulls[1])


def expected_nulls(rows: list[dict]) -> tuple[int, int]:
    """None is the JSON null in a JSON column, SQL NULL in one that says none_as_null: as
    SQLAlchemy's INSERT writes them, so whether the rows were copied or inserted does not show."""
    return 0, len([r for r in rows if r["note"] is None])


@pytest.mark.parametrize("size", [COPY_FROM_ROWS - 1, COPY_FROM_ROWS, 40])
async def test_insert_many_stores_every_row_as_given_and_uses_copy_from_the_threshold_on(pg_db, size):
    statements: list[str] = []
    rows = bulk_rows(size)
    async with pg_db.uow() as uow:
        driver = (await uow.conn.get_raw_connection()).driver_connection

        def seen(logged) -> None:
            statements.append(logged.query)

        driver.add_query_logger(seen)
        try:
            await pg_db.insert_many(uow.conn, BULK, rows)
        finally:
            driver.remove_query_logger(seen)
        await uow.commit()
    assert await stored_bulk(pg_db) == (rows, expected_nulls(rows))
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
    # Below the threshold one INSERT of a column array each, whatever the number of rows.
    assert len(inserts) == (1 if size < COPY_FROM_ROWS else 0)
    assert all("unnest(" in s for s in inserts)


async def test_insert_many_copies_inside_the_unit_of_work_even_as_its_first_statement(pg_db):
    async with pg_db.uow() as uow:
        await pg_db.insert_many(uow.conn, BULK, bulk_rows(COPY_FROM_ROWS))
        assert await uow.conn.scalar(select(func.count()).select_from(BULK)) == COPY_FROM_ROWS
        # no commit: the copied rows go with the rollback
    assert await count(pg_db, BULK) == 0


@pytest.mark.parametrize("size", [COPY_FROM_ROWS - 1, COPY_FROM_ROWS])
async def test_insert_many_refuses_to_write_without_a_transaction(pg_db, size):
    async with pg_db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(RuntimeError, match="^statements on the driver need an open transaction$"):
            await pg_db.insert_many(autocommit, BULK, bulk_rows(size))
        await pg_db.insert_many(autocommit, BULK, [])  # nothing to insert: nothing asked of the driver
    assert await count(pg_db, BULK) == 0


@pytest.mark.parametrize("invalidate_fails", [False, True], ids=["dropped", "dropping-fails"])
async def test_a_copy_on_a_connection_the_server_ended_is_a_lost_database_and_the_connection_is_dropped(
    pg_db, invalidate_fails, monkeypatch
):
    """COPY goes to the driver directly, past SQLAlchemy: a connection the server ended mid-unit of
    work (its FATAL read while the connection was idle) made asyncpg answer "another operation is
    in progress", which reached the API as a 500. It must be a lost database (Transient through
    ecs.retry, a 503), and the pool must not hand the broken connection out again. Dropping it may
    fail in turn: the caller still learns that the database was lost."""
    if invalidate_fails:

        async def failing(self: AsyncConnection, exception: BaseException | None = None) -> None:
            raise RuntimeError("the pool could not drop the connection")

        monkeypatch.setattr(AsyncConnection, "invalidate", failing)
    admin = Database(pg_db.url)
    try:

        async def work() -> None:
            async with pg_db.uow() as uow:
                pid = int(await uow.conn.scalar(text("SELECT pg_backend_pid()")))
                async with admin.engine.connect() as conn:
                    await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    await conn.commit()

                async def ended() -> bool | None:
                    async with admin.engine.connect() as look:
                        alive = await look.scalar(
                            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                        )
                    return True if alive == 0 else None

                await eventually(ended, "the terminated session gone")
                await asyncio.sleep(0.05)  # let the client read the server's goodbye, as when idle
                await pg_db.insert_many(uow.conn, BULK, bulk_rows(COPY_FROM_ROWS))
                await uow.commit()

        with pytest.raises(DriverConnectionLost) as lost:
            await work()
        assert is_unavailable(lost.value)
        with pytest.raises(
            Transient, match="^database unavailable: the connection broke under a statement on the driver"
        ):
            await retrying(work)
        monkeypatch.undo()
        async with pg_db.uow() as uow:  # the next unit of work gets a sound connection
            await pg_db.insert_many(uow.conn, BULK, bulk_rows(COPY_FROM_ROWS))
            await uow.commit()
        assert await count(pg_db, BULK) == COPY_FROM_ROWS
    finally:
        await admin.dispose()


@pytest.mark.parametrize(
    ("statement", "kind", "retryable"),
    [
        (
            "INSERT INTO bulk (seq, n, name, tags, doc) VALUES (1, 1, 'a', '[]', '{}'), (1, 1, 'b', '[]', '{}')",
            IntegrityError,
            False,
        ),
        ("SELECT 1 / 0", DataError, False),
        ("DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END $$", DBAPIError, True),
        ("DO $$ BEGIN RAISE EXCEPTION 'serialisation' USING ERRCODE = '40001'; END $$", DBAPIError, True),
        ("SELEC 1", DBAPIError, False),
    ],
    ids=["integrity", "data", "deadlock", "serialisation", "syntax"],
)
async def test_an_error_on_the_driver_is_said_as_sqlalchemy_says_it_and_retried_only_when_worth_it(
    pg_db, statement, kind, retryable
):
    """Statements sent on the driver past SQLAlchemy (ecs.db.on_driver) must fail the way the
    same statement through SQLAlchemy would: a callers' ``except IntegrityError`` still catches a
    constraint violation, and ecs.retry runs a deadlock again instead of answering 500."""
    with pytest.raises(kind) as raised:
        async with pg_db.uow() as uow, on_driver(uow.conn) as driver:
            await driver.execute(statement)
    assert type(raised.value) is kind
    assert is_retryable(raised.value) is retryable
    assert not is_unavailable(raised.value)
    attempts = 0

    async def work() -> None:
        nonlocal attempts
        attempts += 1
        async with pg_db.uow() as uow, on_driver(uow.conn) as driver:
            await driver.execute(statement)

    with pytest.raises(Transient if retryable else kind):
        await retrying(work, attempts=3)
    assert attempts == (3 if retryable else 1)


async def test_insert_many_on_sqlite_inserts_every_row_whatever_their_number(tmp_path):
    db = Database(f"sqlite:///{tmp_path}/bulk.db")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(md.create_all)
        rows = bulk_rows(COPY_FROM_ROWS + 4)
        async with db.uow() as uow:
            await db.insert_many(uow.conn, BULK, rows)
            await uow.commit()
        assert await stored_bulk(db) == (rows, expected_nulls(rows))
    finally:
        await db.dispose()
