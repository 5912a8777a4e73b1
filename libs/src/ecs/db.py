"""Persistence: one async engine per process chosen by DATABASE_URL (PostgreSQL via asyncpg or
SQLite via aiosqlite), a unit of work that rolls back unless told to commit and writes the outbox
in the same transaction, and the inbox for idempotent consumers. The relay that publishes the
outbox is ``ecs.outbox``; the retry policy for transactions is ``ecs.retry``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import asyncpg
import orjson
import structlog
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    case,
    event,
    exc,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from .bus import msg_id_headers
from .envelope import Envelope
from .vocabulary import Category

log = structlog.get_logger("ecs.db")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Autoincrementing 64-bit keys: BIGSERIAL on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps always aware and in UTC, on SQLite too (which stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_platform = MetaData(naming_convention=NAMING_CONVENTION)

OUTBOX = Table(
    "outbox",
    _platform,
    Column("seq", BigId, primary_key=True, autoincrement=True),
    Column("msg_id", String(128), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
INBOX = Table(
    "inbox",
    _platform,
    Column("consumer", String(128), primary_key=True),
    Column("msg_id", String(255), primary_key=True),
    Column("processed_at", UTCDateTime, nullable=False),
)
IDEMPOTENCY_KEYS = Table(
    "idempotency_keys",
    _platform,
    Column("principal", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("content_type", String(100), nullable=False, server_default="application/json"),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)


def new_metadata() -> MetaData:
    """A service's MetaData, with the platform tables (outbox, inbox, idempotency) already on it."""
    md = MetaData(naming_convention=NAMING_CONVENTION)
    for table in _platform.tables.values():
        table.to_metadata(md)
    return md


def scene_of(column: Any, told: str) -> Any:
    """SQL for ``ecs.vocabulary.scene_of``: the value to SET a category column to when an event
    says ``told`` (a medical-only incident becomes the scene; any other category stays), so a
    late or repeated event never turns a scene back into a medical call."""
    return case((column == Category.medical.value, Category(told).value), else_=column)


async def take_scene(conn: AsyncConnection, incidents: Table, incident_id: str, told: str, **values: Any) -> bool:
    """A service's copy of an incident (``incidents``: columns ``id`` and ``category``) becomes
    the scene ``told`` if it is still a medical call, with ``values`` set too; False when it
    changed nothing (not known here, or already a scene). ``scene_of`` as one conditional UPDATE."""
    c = incidents.c
    stmt = (
        incidents.update()
        .where(c.id == incident_id, c.category == Category.medical.value)
        .values(category=Category(told).value, **values)
    )
    return (await conn.execute(stmt)).rowcount == 1


def normalise_url(url: str) -> str:
    """Accept plain postgresql:// and sqlite:// URLs and pick the async drivers."""
    u = make_url(url)
    if u.drivername in (
        "postgresql",
        "postgres",
        "postgresql+psycopg2",
        "postgresql+psycopg",
    ):
        u = u.set(drivername="postgresql+asyncpg")
    elif u.drivername in ("sqlite", "sqlite+pysqlite"):
        u = u.set(drivername="sqlite+aiosqlite")
    if u.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise ValueError(f"unsupported database URL scheme {u.drivername!r}: use postgresql:// or sqlite://")
    return u.render_as_string(hide_password=False)


def chunks(items: Sequence[Any], size: int = 500) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size``: keeps an ``IN (...)`` list under the drivers' limits
    on bound parameters (32,767 for asyncpg, 32,766 for SQLite 3.32+)."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


COPY_FROM_ROWS = 16
"""Database.insert_many uses COPY on PostgreSQL from this many rows on."""


def lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


POOL_SIZE = 10
"""Connections a service process keeps to PostgreSQL, at most (``<PREFIX>DB_POOL_SIZE``)."""

POOL_TIMEOUT_S = 30.0
"""Seconds a unit of work waits for a pooled connection before it fails as unavailable (503)."""


class Database:
    """Engine created once per process (kept in the app's lifespan state).

    On PostgreSQL the pool is of a fixed size: ``pool_size`` connections at most, opened as they
    are first needed and kept. A unit of work that finds them all in use waits for one (at most
    ``pool_timeout_s`` seconds, then ``sqlalchemy.exc.TimeoutError``, which ``ecs.retry`` takes
    for unavailable). There is no overflow on purpose: SQLAlchemy closes an overflow connection as
    soon as it is given back, so a load of more concurrent units of work than ``pool_size`` opened
    and closed a session (a server process, its set-up and asyncpg's type introspection) for
    nearly every request, and cost PostgreSQL more than the requests themselves."""

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, pool_timeout_s: float = POOL_TIMEOUT_S) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = make_url(self.url).database
            if path and path != ":memory:":
                import pathlib

                pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(self.url, connect_args={"timeout": 30}, hide_parameters=True)
            _sqlite_pragmas(self.engine)
        else:
            self.engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=0,
                pool_timeout=pool_timeout_s,
                pool_recycle=1800,
                # SQL parameter values (callers' numbers among them) never reach an error or a log.
                hide_parameters=True,
            )
            _drop_closed_connections(self.engine)
        self.outbox_written = asyncio.Event()

    def uow(self) -> UnitOfWork:
        return UnitOfWork(self)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def insert_many(self, conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        """Bulk insert in the caller's transaction: COPY on PostgreSQL (several times cheaper than
        an executemany of bound parameters), an executemany on SQLite. A few rows (fewer than
        ``COPY_FROM_ROWS``, e.g. one request's events) go on PostgreSQL as one
        ``INSERT ... SELECT * FROM unnest(...)`` of a column array each: COPY takes two round trips
        where an INSERT takes one. Both are sent on the driver (``on_driver``)."""
        if not rows:
            return
        if self.is_sqlite:
            await conn.execute(table.insert(), list(rows))
            return
        columns = list(rows[0])
        # JSON columns go as their text. None is the JSON null, as SQLAlchemy's INSERT writes it
        # (so the rows are the same whichever way they went), or SQL NULL where the column's type
        # says none_as_null.
        json_columns = {c.name: c.type.none_as_null for c in table.columns if isinstance(c.type, JSON)}
        records = [
            tuple(
                r[c] if c not in json_columns or (r[c] is None and json_columns[c]) else orjson.dumps(r[c]).decode()
                for c in columns
            )
            for r in rows
        ]
        async with on_driver(conn) as driver:
            if len(rows) < COPY_FROM_ROWS:
                await driver.execute(
                    _unnest_insert(table, tuple(columns)), *(list(c) for c in zip(*records, strict=True))
                )
            else:
                await driver.copy_records_to_table(table.name, records=records, columns=columns)

    def insert_ignore(self, table: Table) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING, in the dialect at hand."""
        ins = sqlite.insert(table) if self.is_sqlite else postgresql.insert(table)
        return ins.on_conflict_do_nothing()


_DRIVER_LOST = (
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)
"""What asyncpg raises when a connection broke under a call made on it directly: the client's own
state errors ("another operation is in progress" once the server ended the session while the
connection was idle), SQLSTATE class 08 (connection exception) and 57P01–57P03 (the server shut
down or is starting: PostgreSQL Appendix A)."""


@functools.lru_cache(maxsize=256)
def _unnest_insert(table: Table, columns: tuple[str, ...]) -> str:
    """``INSERT INTO table (columns) SELECT * FROM unnest($1::type[], ...)`` (PostgreSQL): rows
    given as one array per column, in one statement of a fixed text (the driver prepares it once
    per connection), however many rows. JSON columns take their values as text."""
    dialect = postgresql.dialect()
    names = ", ".join(f'"{c}"' for c in columns)
    arrays = ", ".join(f"${n}::{table.c[c].type.compile(dialect=dialect)}[]" for n, c in enumerate(columns, 1))
    return f'INSERT INTO "{table.name}" ({names}) SELECT * FROM unnest({arrays})'


class DriverConnectionLost(ConnectionError):
    """The database connection broke under a statement sent on the driver directly (COPY). A
    ``ConnectionError``, so ``ecs.retry`` reads it as a lost database (Transient)."""


@contextlib.asynccontextmanager
async def on_driver(conn: AsyncConnection) -> AsyncIterator[asyncpg.Connection]:
    """``async with on_driver(conn) as driver: await driver.fetch(...)``: statements sent on the
    asyncpg connection under ``conn`` (PostgreSQL only), in ``conn``'s transaction, past
    SQLAlchemy: no statement compiling, no result processing, a few times cheaper per statement
    for a hot path.

    What the driver raises is said as SQLAlchemy would say it, so that callers and ``ecs.retry``
    read it the same way: a broken connection is dropped from the pool and raised as
    DriverConnectionLost (a lost database: Transient); a PostgreSQL error as
    ``sqlalchemy.exc.IntegrityError`` (SQLSTATE class 23), ``DataError`` (class 22) or
    ``DBAPIError`` with the driver's error as ``orig`` (its SQLSTATE tells ``ecs.retry`` a
    deadlock or a serialisation failure, to be run again)."""
    driver = (await conn.get_raw_connection()).driver_connection
    if not driver.is_in_transaction():
        # The driver opens the transaction lazily on the first statement sent through it; a
        # statement sent first on the driver would run on its own, outside the unit of work.
        await conn.execute(text("SELECT 1"))
        if not driver.is_in_transaction():
            raise RuntimeError("statements on the driver need an open transaction")
    try:
        yield driver
    except _DRIVER_LOST as error:
        # A call on the driver itself passes SQLAlchemy by: it neither translates the error nor
        # learns that the connection is broken. Say both, so that the pool drops the connection
        # and the caller sees a lost database (Transient, a 503), not a 500.
        with contextlib.suppress(Exception):
            await conn.invalidate()
        raise DriverConnectionLost(f"the connection broke under a statement on the driver: {error}") from error
    except asyncpg.PostgresError as error:
        sqlstate = str(getattr(error, "sqlstate", "") or "")
        kind = {"23": exc.IntegrityError, "22": exc.DataError}.get(sqlstate[:2], exc.DBAPIError)
        raise kind(None, None, error, hide_parameters=True) from error


def _drop_closed_connections(engine: AsyncEngine) -> None:
    """A pooled connection whose server went away (a PostgreSQL restart closes every session's
    socket) is replaced at checkout, without a round trip: SQLAlchemy's ``pool_pre_ping`` costs
    three on asyncpg (BEGIN, a ping, ROLLBACK) on every checkout, the largest part of a small
    request. A connection that breaks while in use still invalidates the pool (SQLAlchemy's
    disconnect handling) and the transaction answers ``Transient`` (ecs.retry)."""

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        driver = getattr(dbapi_conn, "driver_connection", None)
        if driver is not None and driver.is_closed():
            raise exc.DisconnectionError("the database closed this connection")

    @event.listens_for(engine.sync_engine, "handle_error")
    def on_error(context: Any) -> None:
        # A session the server ended while the connection sat idle in the pool, before the client
        # read its goodbye: asyncpg answers its next statement with a client-state error ("cannot
        # switch to state ...; another operation is in progress"), which SQLAlchemy does not take
        # for a lost connection. It is one: the connection is dropped and the caller sees a lost
        # database (Transient, a 503), as on_driver says it for statements sent on the driver.
        orig = getattr(context.original_exception, "__cause__", None) or context.original_exception
        if isinstance(orig, _DRIVER_LOST):
            context.is_disconnect = True


class _OrphanSafeConnection(aiosqlite.Connection):
    """aiosqlite's connection, safe once its worker thread has ended.

    aiosqlite runs each connection on a worker thread and queues every call to it, the close
    included. When that thread has ended with the connection still open (the event loop it answered
    to went away), every later call, a pool's rollback on check-in or the engine's dispose among
    them, waits forever, and neither a timeout nor a cancellation ends the wait. Here such a call
    closes the orphaned sqlite3 connection at once (left to the collector it would keep its write
    lock against every other connection) and answers "Connection closed", which SQLAlchemy takes
    for a lost connection: it is dropped from the pool and replaced.
    """

    def _worker_gone(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def _close_orphan(self) -> None:
        orphan, self._connection, self._running = self._connection, None, False
        if orphan is not None:
            try:
                orphan.close()  # nothing else uses it: its thread is gone
            except Exception as error:
                log.warning("db.sqlite_orphan_not_closed", error=str(error))

    async def _execute(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._worker_gone():
            self._close_orphan()
            raise ValueError("Connection closed")
        return await super()._execute(fn, *args, **kwargs)

    async def close(self) -> None:
        if self._worker_gone():
            self._close_orphan()
            return
        await super().close()


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _: Any) -> None:
        if type(dbapi_conn.driver_connection) is aiosqlite.Connection:
            dbapi_conn.driver_connection.__class__ = _OrphanSafeConnection
        # Own the transactions ourselves so writers take the lock at BEGIN, not mid-way.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class UnitOfWork:
    """``async with db.uow() as uow: ...; await uow.commit()``: rolls back unless committed.

    Events emitted through it go into the outbox in the same transaction as the writes.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: AsyncConnection = None  # type: ignore[assignment]
        self._events: list[Envelope] = []
        self._committed = False
        self._wrote_outbox = False
        self._ctx: Any = None

    async def __aenter__(self) -> UnitOfWork:
        self._ctx = self.db.engine.connect()
        self.conn = await self._ctx.__aenter__()
        await self.conn.begin()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if not self._committed and self.conn.in_transaction():
                try:
                    await self.conn.rollback()
                except Exception:
                    if exc[0] is None:
                        raise
                    # The error on its way says what went wrong (a connection cut mid-statement is
                    # unavailable: a 503); the rollback's own failure on that broken connection
                    # ("another operation is in progress") must not replace it with a 500.
                    with contextlib.suppress(Exception):
                        await self.conn.invalidate()
        finally:
            await self._ctx.__aexit__(*exc)

    async def lock(self, name: str) -> None:
        """A transaction-scoped lock shared by every replica (SQLite's write lock already is one)."""
        if not self.db.is_sqlite:
            await self.conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})

    def emit(self, *events: Envelope) -> None:
        self._events.extend(events)

    async def first_time(self, consumer: str, msg_id: str) -> bool:
        """Record a message in the inbox; False if this consumer already processed it."""
        res = await self.conn.execute(
            self.db.insert_ignore(INBOX).values(consumer=consumer, msg_id=msg_id, processed_at=datetime.now(UTC))
        )
        return res.rowcount == 1

    async def flush_events(self) -> None:
        if not self._events:
            return
        now = datetime.now(UTC)
        rows = [
            {
                "msg_id": e.id,
                "subject": e.type,
                "payload": e.to_bytes(),
                "headers": msg_id_headers(e.id, e.correlation_id),
                "created_at": now,
            }
            for e in self._events
        ]
        await self.db.insert_many(self.conn, OUTBOX, rows)
        self._events.clear()
        self._wrote_outbox = True

    async def commit(self) -> None:
        await self.flush_events()
        await self.conn.commit()
        self._committed = True
        if self._wrote_outbox:
            self.db.outbox_written.set()
