"""ecs.stopping: a shutdown that always ends — a task that swallows its cancellation is cancelled
again, and a step that never ends is logged with where it waits and abandoned."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from ecs.stopping import step, stop_task, where


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends():
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # as a library turning it into an error would
                swallowed += 1
                if swallowed == 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_task(task, "stubborn", within_s=5)
    assert task.cancelled() and swallowed == 3


async def test_a_task_that_never_ends_is_logged_where_it_waits_and_abandoned():
    never = asyncio.Event()
    released = False

    async def deaf() -> None:
        while not released:
            with contextlib.suppress(asyncio.CancelledError):
                await never.wait()

    task = asyncio.create_task(deaf(), name="deaf")
    await asyncio.sleep(0)
    with structlog.testing.capture_logs() as logs:
        assert not await stop_task(task, "deaf", within_s=0.3)
    [entry] = logs
    assert entry["event"] == "stop.task_stuck" and entry["task"] == "deaf"
    assert "in deaf" in entry["where"] and "never.wait()" in entry["where"]
    released = True  # the test's own clean-up
    never.set()
    await task


async def test_a_step_that_hangs_is_abandoned_and_one_that_fails_does_not_stop_the_shutdown():
    async def hangs() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise OSError("server gone")

    with structlog.testing.capture_logs() as logs:
        assert not await step(hangs(), "hang", within_s=0.2)
        assert not await step(fails(), "fail")
        assert await step(asyncio.sleep(0), "quick")
    assert [(e["event"], e["step"]) for e in logs] == [("stop.step_stuck", "hang"), ("stop.step_failed", "fail")]
    assert "in hangs" in logs[0]["where"] and logs[1]["error"] == "server gone"


async def test_where_names_every_coroutine_down_to_the_future():
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer())
    await asyncio.sleep(0)
    text = "\n".join(where(task))
    assert text.index("in outer") < text.index("in inner") < text.index("in wait") < text.index("waiting for <Future")
    gate.set()
    await task
