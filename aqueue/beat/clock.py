"""The clock beat reads and sleeps on: the system's, or one a test moves by hand."""

from __future__ import annotations

import time
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """Wall-clock time (POSIX seconds) and a sleep that a change can cut short."""

    def now(self) -> float:
        """Return the time now."""
        ...

    async def sleep_until(self, when: float, wake: anyio.Event) -> None:
        """Return at `when`, or as soon as `wake` is set."""
        ...


class SystemClock:
    """`time.time()`, and the event loop's timers to sleep."""

    def now(self) -> float:
        """Return `time.time()`."""
        return time.time()

    async def sleep_until(self, when: float, wake: anyio.Event) -> None:
        """Sleep on the loop's monotonic timer until `when` (by the wall clock) or `wake`."""
        with anyio.move_on_after(max(0.0, when - time.time())):
            await wake.wait()


class ManualClock:
    """A clock that moves only when `advance` is called: tests run a day in no time.

    `await clock.advance(seconds)` moves it and wakes every sleeper whose time came;
    `await clock.sleepers(n)` waits until `n` sleepers wait again (every beat handled the tick).
    """

    def __init__(self, start: float) -> None:
        self._now = start
        self._moved = anyio.Event()
        self._waiting = 0  # sleepers that went to sleep since the last advance
        self._changed = anyio.Event()

    def now(self) -> float:
        """Return the time the clock was set to."""
        return self._now

    async def sleep_until(self, when: float, wake: anyio.Event) -> None:
        """Wait until the clock reaches `when`, or `wake` is set."""
        while self._now < when and not wake.is_set():
            moved = self._moved
            self._waiting += 1
            self._notify()
            try:
                async with anyio.create_task_group() as group:

                    async def on_wake() -> None:
                        await wake.wait()
                        group.cancel_scope.cancel()

                    group.start_soon(on_wake)
                    await moved.wait()
                    group.cancel_scope.cancel()
            finally:
                if moved is self._moved:  # left before the clock moved (woken by a change)
                    self._waiting -= 1

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def advance(self, seconds: float) -> None:
        """Move the clock forward and wake the sleepers."""
        self._now += seconds
        moved, self._moved = self._moved, anyio.Event()
        self._waiting = 0
        moved.set()
        await anyio.lowlevel.checkpoint()

    async def sleepers(self, count: int) -> None:
        """Wait until `count` sleepers went to sleep since the last `advance` (ticks handled)."""
        while self._waiting < count:
            await self._changed.wait()
