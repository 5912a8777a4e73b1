"""The outbox relay: committed events leave the database for JetStream in batches, in commit order
(DESIGN §4, transactional outbox)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import orjson
import structlog
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .bus import Bus
from .db import OUTBOX, Database, lock_key
from .stopping import step, stop_task

log = structlog.get_logger("ecs.outbox")


class OutboxRelay:
    """Publishes committed outbox rows to JetStream in batches, in commit order, then deletes them.

    A crash between publish and delete republishes the batch; the Nats-Msg-Id header makes
    JetStream drop the copies. On PostgreSQL one replica at a time relays (advisory lock).
    After a round that relayed something, the next waits ``gather_s`` seconds (default 20 ms) so
    that events committed meanwhile go together; after a quiet spell an event goes at once.
    """

    def __init__(self, db: Database, bus: Bus, batch: int = 1000, gather_s: float = 0.02) -> None:
        self.db = db
        self.bus = bus
        self.batch = batch
        self.gather_s = gather_s
        self._task: asyncio.Task[None] | None = None
        self._leader_conn: AsyncConnection | None = None
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Stop relaying and give up the leadership; ends within ``ecs.stopping``'s bounds even
        when a library turned the cancellation into an error (ecs.stopping)."""
        self._stopping = True
        await stop_task(self._task, "outbox-relay")
        await step(self._release_leadership(), "outbox-relay: release the leadership")

    async def _release_leadership(self) -> None:
        conn, self._leader_conn = self._leader_conn, None
        if conn is not None:
            await _end_session(conn)

    async def _lead(self) -> bool:
        if self.db.is_sqlite:
            return True
        if self._leader_conn is not None:
            # Still the leader while its session lasts: the relay's statements go on that session
            # (relay_once), so a lost one fails the round, which gives the leadership up.
            return True
        conn = await self.db.engine.connect()
        try:
            got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key("outbox-relay")})
            await conn.commit()
        except BaseException:  # stopped or failed half-way: the lock may be held, so the session ends
            await asyncio.shield(_end_session(conn))
            raise
        if got:
            self._leader_conn = conn
            return True
        await conn.close()
        return False

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if not await self._lead():
                    await asyncio.sleep(1.0)
                    continue
                # Cleared before the rows are read: a commit from now on wakes the next round.
                self.db.outbox_written.clear()
                sent = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:  # the cancellation of stop(), turned into an error on its way
                    return
                log.warning(
                    "outbox.relay_failed",
                    error=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
                )
                await self._release_leadership()
                await asyncio.sleep(0.5)
                continue
            if sent < self.batch:
                if sent:
                    # Busy: let the next commits gather for a moment, so that under a steady stream
                    # of small transactions a round relays several events instead of one (a round
                    # costs several database round trips); the first event after a quiet spell
                    # still goes at once.
                    await asyncio.sleep(self.gather_s)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.db.outbox_written.wait(), timeout=0.2)

    async def relay_once(self) -> int:
        """Relay the oldest ``batch`` events; returns how many. On PostgreSQL on the leader's own
        session (any pooled one when not leading: a single round, as in tests), with statements on
        the driver, past SQLAlchemy: two plain round trips a round, which a steady stream of small
        transactions pays for every few events."""
        if self.db.is_sqlite:
            return await self._relay_on_sqlite()
        if self._leader_conn is not None:
            return await self._relay_on(self._leader_conn)
        async with self.db.engine.connect() as conn:
            return await self._relay_on(conn)

    async def _relay_on(self, conn: AsyncConnection) -> int:
        driver = (await conn.get_raw_connection()).driver_connection
        rows = await driver.fetch(_OLDEST, self.batch)
        if not rows:
            return 0
        await self.bus.publish_batch([(r[1], r[2], orjson.loads(r[3])) for r in rows])
        await driver.execute(_FORGET, [r[0] for r in rows])
        return len(rows)

    async def _relay_on_sqlite(self) -> int:
        outbox = OUTBOX
        async with self.db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        outbox.c.seq,
                        outbox.c.subject,
                        outbox.c.payload,
                        outbox.c.headers,
                    )
                    .order_by(outbox.c.seq)
                    .limit(self.batch)
                )
            ).all()
            await conn.rollback()
        if not rows:
            return 0
        headers = [r.headers if isinstance(r.headers, dict) else orjson.loads(r.headers) for r in rows]
        await self.bus.publish_batch([(r.subject, r.payload, h) for r, h in zip(rows, headers, strict=True)])
        await self._forget([r.seq for r in rows])
        return len(rows)

    async def _forget(self, seqs: Sequence[int]) -> None:
        outbox = OUTBOX
        async with self.db.engine.begin() as conn:
            await conn.execute(delete(outbox).where(outbox.c.seq.in_(seqs)))

    async def pending(self) -> int:
        outbox = OUTBOX
        async with self.db.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(outbox)) or 0)


_OLDEST = "SELECT seq, subject, payload, headers::text FROM outbox ORDER BY seq LIMIT $1"
_FORGET = "DELETE FROM outbox WHERE seq = ANY($1::bigint[])"


async def _end_session(conn: AsyncConnection) -> None:
    """Close the leader's database session itself: PostgreSQL frees a session's advisory lock
    only then, and a connection merely handed back to the pool would go on holding it, so that
    neither this replica (on another pooled connection) nor any other could lead again."""
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()
