"""pytest plugin: a test about to hit its pytest-timeout writes where every asyncio task waits.

pytest-timeout's own dump shows the threads' stacks; a hung asyncio test shows little there (the
event loop idle in ``select``). A little before the timeout this plugin writes, to the real
stderr (around pytest's capture, so the CI log has it even when the timeout kills the process),
every unfinished task of each running event loop with the whole chain of coroutines it is
suspended in, down to the future it waits for, and the other threads' stacks.

One daemon thread serves the whole session; a test that ends in time costs two lock operations.
``ECS_HANG_DUMP_LEAD_S`` sets how many seconds before the timeout the dump is written (default:
a tenth of the timeout, at most 15 s, at least 1 s). Loaded by ``ecs.testing`` (``pytest_plugins``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO

import pytest

from .stopping import where


def lead_seconds(timeout: float) -> float:
    """How long before ``timeout`` the dump is written."""
    given = os.environ.get("ECS_HANG_DUMP_LEAD_S")
    if given:
        return min(float(given), timeout)
    return min(timeout, max(1.0, min(15.0, timeout / 10)))


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """The event loops running in this process's threads right now (found in their stacks)."""
    loops: list[asyncio.AbstractEventLoop] = []
    for frame in sys._current_frames().values():
        f: FrameType | None = frame
        while f is not None:
            candidate = f.f_locals.get("self") if f.f_code.co_name == "run_forever" else None
            if isinstance(candidate, asyncio.AbstractEventLoop) and candidate not in loops:
                loops.append(candidate)
            f = f.f_back
    if not loops:  # a loop written in C (uvloop) has no run_forever frame: ask its tasks
        for task in list(getattr(asyncio.tasks, "_all_tasks", ())):
            loop = task.get_loop()
            if loop.is_running() and loop not in loops:
                loops.append(loop)
    return loops


def describe_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Every unfinished task of ``loop``, each with the chain it waits in."""
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    except RuntimeError:  # the set changed while read from another thread; once more
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    lines = [f"{len(tasks)} unfinished asyncio tasks on {loop!r}:"]
    for task in sorted(tasks, key=lambda t: t.get_name()):
        lines.append(f"--- task {task.get_name()!r} ({task.get_coro()!r})")
        lines.extend(where(task))
    return "\n".join(lines)


def describe_threads() -> str:
    lines: list[str] = []
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        if ident == me or names.get(ident) == "ecs.hangdump":
            continue
        lines.append(f"--- thread {names.get(ident, ident)!r}")
        lines.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
    return "\n".join(lines)


def dump(nodeid: str, timeout: float, out: TextIO) -> None:
    """Write the tasks of every running loop and the threads' stacks to ``out``."""
    parts = [f"\n===== {nodeid}: still running {timeout:g} s after it started (ecs.hangdump) ====="]
    loops = running_loops()
    if not loops:
        parts.append("no event loop is running")
    for loop in loops:
        parts.append(describe_tasks(loop))
    parts.append("threads:")
    parts.append(describe_threads())
    parts.append("===== end of the hang dump =====\n")
    out.write("\n".join(parts))
    out.flush()


class Watchdog:
    """One daemon thread; ``arm(nodeid, after_s)`` before a test, ``disarm()`` after it."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._nodeid = ""
        self._armed_at = 0.0
        self._thread: threading.Thread | None = None

    def arm(self, nodeid: str, after_s: float) -> None:
        with self._cond:
            self._nodeid = nodeid
            self._armed_at = time.monotonic()
            self._deadline = self._armed_at + after_s
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="ecs.hangdump", daemon=True)
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._cond.notify()

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None or time.monotonic() < self._deadline:
                    wait = None if self._deadline is None else self._deadline - time.monotonic()
                    self._cond.wait(wait)
                nodeid, running_s = self._nodeid, time.monotonic() - self._armed_at
                self._deadline = None
            self._fire(nodeid, running_s)

    def _fire(self, nodeid: str, running_s: float) -> None:
        # Written in the loop's own thread where possible (the tasks are not moving under us, and
        # pytest's capture can be suspended there as its live logging does); a loop that does not
        # take the callback within 2 s is blocked, and the dump is written from here instead.
        done = threading.Event()

        def write() -> None:
            try:
                with self._uncaptured():
                    dump(nodeid, running_s, sys.stderr)
            finally:
                done.set()

        loops = running_loops()
        main_loop = next((lp for lp in loops if _loop_thread_is_main(lp)), None)
        if main_loop is not None:
            with contextlib.suppress(RuntimeError):
                main_loop.call_soon_threadsafe(write)
                if done.wait(2.0):
                    return
        dump(nodeid + " (event loop blocked: written from the watchdog thread)", running_s, sys.__stderr__)

    @contextlib.contextmanager
    def _uncaptured(self) -> Iterator[None]:
        capman = self.config.pluginmanager.getplugin("capturemanager")
        if capman is None or threading.current_thread() is not threading.main_thread():
            yield
            return
        with capman.global_and_fixture_disabled():
            yield


def _loop_thread_is_main(loop: asyncio.AbstractEventLoop) -> bool:
    return getattr(loop, "_thread_id", None) == threading.main_thread().ident


_WATCHDOG = pytest.StashKey[Watchdog]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_WATCHDOG] = Watchdog(config)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout arms its timer (for the whole test or its call only): arm ours a little
    earlier. Returns None, so pytest-timeout's own timer is set as well."""
    timeout = float(settings.timeout or 0)
    if timeout > 0:
        item.config.stash[_WATCHDOG].arm(item.nodeid, timeout - lead_seconds(timeout))


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    item.config.stash[_WATCHDOG].disarm()
