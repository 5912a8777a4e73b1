"""The scenario clock of a drill: scenario time runs ``speed`` times faster than real time, and
stands still while the drill is paused."""

from __future__ import annotations

import asyncio
import time

__all__ = ["ScenarioClock"]


class ScenarioClock:
    """Scenario seconds since the drill started, at ``speed`` scenario seconds per real second.

    ``pause`` stops the clock (injects wait, measurements do not run on), ``resume`` restarts it.
    Raises ValueError for a speed outside 0.1 .. 10,000."""

    def __init__(self, speed: float) -> None:
        if not 0.1 <= speed <= 10_000:
            raise ValueError("speed must be between 0.1 and 10000")
        self.speed = speed
        self._base_s = 0.0  # scenario seconds banked before the current run
        self._since: float | None = None  # monotonic time the clock last (re)started
        self._real_start: float | None = None
        self._running = asyncio.Event()

    def start(self) -> None:
        """Start the clock at scenario second 0."""
        self._real_start = self._since = time.monotonic()
        self._running.set()

    @property
    def paused(self) -> bool:
        """True while the clock stands still."""
        return not self._running.is_set()

    def now_s(self) -> float:
        """Scenario seconds since the start (0 before it)."""
        if self._since is None:
            return self._base_s
        return self._base_s + (time.monotonic() - self._since) * self.speed

    def real_s(self) -> float:
        """Real seconds since the start, pauses included."""
        return 0.0 if self._real_start is None else time.monotonic() - self._real_start

    def pause(self) -> None:
        """Stop the scenario clock (no effect when paused already)."""
        if self._since is not None:
            self._base_s = self.now_s()
            self._since = None
        self._running.clear()

    def resume(self) -> None:
        """Restart a paused clock where it stood."""
        if self._since is None and self._real_start is not None:
            self._since = time.monotonic()
        self._running.set()

    async def sleep_until(self, scenario_s: float) -> None:
        """Wait until the scenario clock reaches ``scenario_s`` (pauses lengthen the wait)."""
        while True:
            await self._running.wait()
            left = scenario_s - self.now_s()
            if left <= 0:
                return
            await asyncio.sleep(min(left / self.speed, 0.25))

    async def sleep(self, scenario_s: float) -> None:
        """Wait ``scenario_s`` scenario seconds from now."""
        await self.sleep_until(self.now_s() + scenario_s)
