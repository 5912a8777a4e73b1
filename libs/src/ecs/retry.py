"""The one retry policy for database transactions, used by every service's handlers.

A deadlock or a serialisation failure (PostgreSQL SQLSTATE 40P01, 40001, 55P03) or a busy SQLite
is worth running the whole transaction again, after a short random pause that doubles each time;
a lost database is ``Transient`` (the consumer retries the message later, the API answers 503);
anything else is the caller's to handle.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .errors import Transient

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
"""deadlock_detected, serialization_failure, lock_not_available (PostgreSQL Appendix A)."""


def db_error_text(exc: BaseException) -> str:
    """The first line of a database error, at most 200 characters, without SQL or parameters."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def is_retryable(exc: DBAPIError) -> bool:
    """Deadlocks and serialisation failures (PostgreSQL) or a busy SQLite: try the work again."""
    orig = exc.orig
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in RETRYABLE_SQLSTATES:
        return True
    return "database is locked" in str(orig)


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached, the connection broke mid-way, or no pooled connection
    came free in time (the pool's wait, ``sqlalchemy.exc.TimeoutError``: under a load the database
    cannot keep up with, which a caller should retry as it would a lost database)."""
    if isinstance(exc, OSError | ConnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc.orig, OSError | ConnectionError)
    return False


def refused_input(exc: BaseException) -> bool:
    """Whether the database (or the driver, binding parameters) refused what it was given, as
    opposed to being unreachable: the same input would be refused again (SQLSTATE class 22, data
    exception, PostgreSQL Appendix A: a value too long, out of range, U+0000 in text)."""
    if is_unavailable(exc):
        return False
    if isinstance(exc, DBAPIError):
        return isinstance(exc, DataError) or _sqlstate(exc.orig).startswith("22")
    if isinstance(exc, StatementError):
        return True  # binding the parameters failed: the input, not the database
    return _sqlstate(exc).startswith("22")  # a driver's own error (bulk inserts go to it directly)


def _sqlstate(exc: BaseException | None) -> str:
    """The SQLSTATE of a driver error, or ""."""
    return str(getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None) or "")


async def retrying(
    work: Callable[[], Awaitable[T]],
    attempts: int = 6,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """Run one transaction (``work`` opens and commits it), again after a deadlock or a busy lock.

    Raises Transient when the database is unreachable or the conflict outlives ``attempts``;
    IntegrityError and every other error propagate unchanged. ``on_retry`` runs before each new
    attempt (e.g. to drop a cache the failed transaction may have left half-updated).
    """
    for attempt in range(attempts):
        try:
            return await work()
        except IntegrityError:
            raise
        except (DBAPIError, OSError, ConnectionError, PoolTimeout) as exc:
            if is_unavailable(exc):
                raise Transient(f"database unavailable: {db_error_text(exc)}") from exc
            if not isinstance(exc, DBAPIError) or not is_retryable(exc):
                raise
            if attempt == attempts - 1:
                raise Transient(f"gave up after {attempts} attempts: {db_error_text(exc)}") from exc
            if on_retry is not None:
                on_retry()
            await asyncio.sleep(random.uniform(0.01, 0.05) * 2**attempt)
    raise AssertionError("unreachable")
