"""The storage-touching behaviour of dispatch that matters most, end to end against the service as
a real process on PostgreSQL: the very tests of tests/integration/test_dispatch_service.py (plans,
the location feed, lending, merge, purge, dead letters), with ``dispatch_app`` here starting the
console script and speaking HTTP to it over a socket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from ecs.testing import ServiceProcess
from tests.integration.test_dispatch_service import (  # noqa: F401 - the tests and their fixture run here
    test_exercise_data_is_purged_without_touching_live_data,
    test_exercise_incidents_take_exercise_units_or_lent_live_ones,
    test_location_feed_keeps_the_newest_position_and_dead_letters_bad_reports,
    test_malformed_incident_events_go_to_the_dead_letter_subject_with_the_reason,
    test_merge_moves_the_units_and_a_returning_unit_leaves_its_incident,
    test_plans_are_versioned_and_a_bad_one_changes_nothing,
    wired,
)


@pytest.fixture
def db_url(pg_url: str) -> str:
    """Production's store only: SQLite is covered in process."""
    return pg_url


@pytest.fixture
def dispatch_app(dispatch_factory: Callable[..., ServiceProcess]) -> Callable[..., object]:
    """``async with dispatch_app(database_url, **settings) as (process, client)``: dispatch as a
    process, ``client`` an httpx client speaking to it over TCP."""

    @contextlib.asynccontextmanager
    async def run(
        database_url: str, nats_url: str | None = None, **settings: object
    ) -> AsyncIterator[tuple[ServiceProcess, httpx.AsyncClient]]:
        proc = dispatch_factory(database_url, nats_url, **{k: str(v) for k, v in settings.items()})
        try:
            async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
                yield proc, client
        finally:
            proc.stop()

    return run
