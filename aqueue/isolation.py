"""Isolation: a redelivered message runs alone, so that only it is blamed if its worker dies.

A message delivered again after its worker died (`Delivery.suspect`) may be the one that
killed it, or one that the worker merely held, or one whose task finished just before the
death. The runner (`Runner.check`) tells them apart:

1. a suspect whose task already finished (the result store holds a ready state for its id:
   the worker died after storing the result, before the ack landed) is acknowledged, not run
   again;
2. a suspect started `max_deliveries` times (its recorded runs, plus the first run, which is
   never recorded) gets a `WorkerLostError` failure as its result, so callers learn at once,
   and goes to the dead letters with reason `max-deliveries`;
3. any other suspect runs alone (`Isolation.alone`): the worker starts no other task, waits for
   the running ones to finish, records the start (`Delivery.begin`), and runs it. If the
   worker dies now, this message is the only one whose count of runs went up.

First deliveries run side by side and record nothing (a durable write per task would halve a
worker's throughput): a worker that dies while running many of them blames none, and each
comes back as a suspect to be run alone. A task that waits for another task's result should
not do so while a suspect waits for its turn: the suspect waits for it, and new tasks wait for
the suspect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

__all__ = ["Isolation"]


class Isolation:
    """Runs suspects one at a time, with nothing else running: `async with gate.alone()`.

    Other tasks call `enter()` before they start and `leave()` when they are done: `enter`
    waits while a suspect runs or waits for its turn (suspects go first, or a busy worker would
    never be idle long enough to run one).
    """

    def __init__(self) -> None:
        self.running = 0  # tasks between enter() and leave()
        self._alone = False
        self._waiting = 0  # suspects waiting for the running tasks to finish
        self._event: anyio.Event | None = None  # made when first awaited: it needs a loop

    @property
    def closed(self) -> bool:
        """Whether a task calling `enter` now has to wait."""
        return self._alone or self._waiting > 0

    def _notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def _changed(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    async def enter(self) -> None:
        """Wait until no suspect runs or waits, then count a running task."""
        while self.closed:
            await self._changed()
        self.running += 1

    def leave(self) -> None:
        """Count a running task done."""
        self.running -= 1
        if not self.running and self._waiting:
            self._notify()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Wait until nothing else runs, then run the body with nothing else starting."""
        self._waiting += 1
        try:
            while self._alone or self.running:
                await self._changed()
        except BaseException:
            self._waiting -= 1
            self._notify()
            raise
        self._waiting -= 1
        self._alone = True
        try:
            yield
        finally:
            self._alone = False
            self._notify()
