"""`wait` for result stores that look results up: one waiter reads for all.

The SQLite store and Django's stores use it. Every `wait` of one store shares one reader: the
waiter that reads waits for a reason to look (`Pause.next`: a notification such as SQLite's
wake-up socket, or the next tick of a poll), then looks up every awaited task id
in one query and wakes the waiters whose result is there. When the reader leaves (its result
came, or its caller gave up) it hands over to another waiter. No background task exists.

`Poll` is the pause where nothing notifies (Django caches, databases other than PostgreSQL): a
bounded backoff, each tick a tenth of the youngest waiter's wait so far, between `MIN_POLL`
and `MAX_POLL` seconds: a result that comes quickly is seen quickly, a long wait costs one
query a second.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

import anyio

from ..states import READY_STATES
from .base import StoredResult

__all__ = ["MAX_POLL", "MIN_POLL", "Pause", "Poll", "Waiters"]

MIN_POLL = 0.005
MAX_POLL = 1.0
POLL_FRACTION = 0.1


class Pause(Protocol):
    """What a reader waits on between two looks."""

    async def prepare(self) -> None:
        """Get ready to notice stores (LISTEN) before a waiter's first look."""
        ...

    async def next(self, youngest: float) -> Collection[str] | None:
        """Wait for a reason to look; return the task ids worth a look, or None for all.

        `youngest` is how long (seconds) the most recent waiter has waited.
        """
        ...


class Poll:
    """A bounded backoff: look every tenth of the youngest wait, 5 ms to 1 s apart."""

    async def prepare(self) -> None:
        """Nothing to prepare: every tick looks."""

    async def next(self, youngest: float) -> None:
        """Sleep one tick."""
        await anyio.sleep(min(max(youngest * POLL_FRACTION, MIN_POLL), MAX_POLL))


class _Waiter:
    """The `wait` calls on one task id: their result once found, and what wakes them."""

    __slots__ = ("count", "event", "result", "since")

    def __init__(self) -> None:
        self.count = 0
        self.event = anyio.Event()
        self.result: StoredResult | None = None
        self.since = time.monotonic()


class Waiters:
    """The waiters of one store; `wait` returns once a task is in a ready state."""

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[StoredResult | None]],
        fetch_ready: Callable[[list[str]], Awaitable[dict[str, StoredResult]]],
        pause: Pause,
    ) -> None:
        self._fetch = fetch
        self._fetch_ready = fetch_ready
        self.pause = pause
        self._waiters: dict[str, _Waiter] = {}
        self._reading = False
        #: Task ids a pause gave that nobody has looked up yet (`_due_all`: all of them).
        self._due: set[str] = set()
        self._due_all = False

    @property
    def waiting(self) -> int:
        """How many task ids are awaited now."""
        return len(self._waiters)

    async def wait(self, task_id: str) -> StoredResult:
        """Return once `task_id` is in a ready state."""
        waiter = self._waiters.get(task_id)
        if waiter is None:
            waiter = self._waiters[task_id] = _Waiter()
        waiter.count += 1
        try:
            await self.pause.prepare()  # before the first look, so no store goes unnoticed
            stored = await self._fetch(task_id)
            if stored is not None and stored.state in READY_STATES:
                return stored
            return await self._sleep(waiter)
        finally:
            waiter.count -= 1
            if waiter.count == 0 and self._waiters.get(task_id) is waiter:
                del self._waiters[task_id]

    async def _sleep(self, waiter: _Waiter) -> StoredResult:
        """Wait until a reader finds the waiter's result, becoming the reader when there is none."""
        while waiter.result is None:
            if self._reading:
                if waiter.event.is_set():
                    waiter.event = anyio.Event()
                await waiter.event.wait()
                continue
            self._reading = True
            try:
                while waiter.result is None:
                    await self._read()
            finally:
                self._reading = False
                self._hand_over(waiter)
        return waiter.result

    async def _read(self) -> None:
        """Wait for a reason to look, then look up the awaited tasks at once."""
        if not self._due_all and not self._due:
            youngest = time.monotonic() - max(w.since for w in self._waiters.values())
            ids = await self.pause.next(youngest)
            if ids is None:
                self._due_all = True
            else:
                self._due.update(ids)
        wanted = (
            list(self._waiters)
            if self._due_all
            else [task_id for task_id in self._due if task_id in self._waiters]
        )
        found = await self._fetch_ready(wanted) if wanted else {}
        self._due, self._due_all = set(), False  # a reader cancelled before this leaves them due
        for task_id, stored in found.items():
            waiter = self._waiters.get(task_id)
            if waiter is not None and waiter.result is None:
                waiter.result = stored
                waiter.event.set()

    def _hand_over(self, leaving: _Waiter) -> None:
        """Wake one other waiter still without a result, so that it becomes the reader."""
        for waiter in self._waiters.values():
            if waiter.result is None and (waiter is not leaving or waiter.count > 1):
                waiter.event.set()
                return
