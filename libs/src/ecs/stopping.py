"""Shutdown that always ends: background tasks stopped and shutdown steps awaited within a bound.

A cancelled task does not always end. nats-py turns a cancellation that reaches ``publish_async``
while it waits for a place among the pending publishes into ``TooManyStalledMsgsError``; Python
3.11's ``asyncio.wait_for`` returns the inner result and drops the cancellation when both arrive
together; a ``while True`` loop that logs every ``Exception`` and goes on then runs forever, and
a shutdown that awaits it hangs with the event loop idle. So loops also check a stop flag, a task
being stopped is cancelled again until it ends, and every wait of a shutdown has a bound past
which the stuck step is logged, with where it waits, and abandoned.
"""

from __future__ import annotations

import asyncio
import linecache
from collections.abc import Awaitable
from typing import Any

import structlog

log = structlog.get_logger("ecs.stopping")

TASK_STOP_S = 10.0
"""How long a cancelled background task may take to end."""

STEP_S = 15.0
"""How long one shutdown step (a runner's stop, the NATS drain, the engine's dispose) may take."""

_RECANCEL_S = 0.5


def where(task: asyncio.Task[Any]) -> list[str]:
    """Where ``task`` waits: each coroutine it is suspended in, outermost first (file, line,
    function and source line), then the future it waits for (its callbacks name whom it wakes)."""
    lines: list[str] = []
    obj: Any = task.get_coro()
    depth = 0
    while obj is not None and depth < 200:
        depth += 1
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            source = linecache.getline(code.co_filename, frame.f_lineno).strip()
            lines.append(f'  File "{code.co_filename}", line {frame.f_lineno}, in {code.co_name}')
            if source:
                lines.append(f"    {source}")
        elif isinstance(obj, asyncio.Future):
            break
        elif type(obj).__name__ not in ("FutureIter", "generator"):
            lines.append(f"  in {obj!r}"[:500])
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            nxt = getattr(obj, "ag_await", None)
        obj = nxt
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is not None:
        lines.append(f"  waiting for {waiter!r}"[:2000])
    return lines


async def stop_task(task: asyncio.Task[Any] | None, what: str, within_s: float = TASK_STOP_S) -> bool:
    """Cancel ``task`` and wait until it has ended, cancelling it again every half second (a
    cancellation swallowed once is not swallowed twice in the same place); True once it has.

    After ``within_s`` seconds the task is logged (``stop.task_stuck``, with where it waits) and
    abandoned: False. The task's own failure, if any, is not raised (it is stopping anyway); a
    cancellation of the caller is.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error("stop.task_stuck", task=what, waited_s=within_s, where="\n".join(where(task)))
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RECANCEL_S, remaining))
    if not task.cancelled():
        task.exception()  # retrieved: a failure while stopping is no news
    return True


async def step(aw: Awaitable[Any], what: str, within_s: float = STEP_S) -> bool:
    """Await one shutdown step for at most ``within_s`` seconds; True when it ended.

    A step that fails is logged (``stop.step_failed``) and the shutdown goes on; one still
    running after ``within_s`` is logged (``stop.step_stuck``, with where it waits), cancelled
    and abandoned without waiting for it. A cancellation of the caller cancels the step too.
    """
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait({task}, timeout=within_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        log.error("stop.step_stuck", step=what, waited_s=within_s, where="\n".join(where(task)))
        task.cancel()
        return False
    if task.cancelled():
        log.warning("stop.step_failed", step=what, error="cancelled")
        return False
    exc = task.exception()
    if exc is not None:
        text = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        log.warning("stop.step_failed", step=what, error=text)
        return False
    return True
