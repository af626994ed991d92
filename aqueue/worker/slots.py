"""The worker's slots: how many tasks it may run, and the hand-off of messages to them.

A worker runs a fixed set of slot coroutines, one per unit of `--concurrency`, each taking
deliveries from the `Inbox`. Handing a message to an idle slot costs a deque append and, only
when a slot is asleep, resolving one future: about 2 µs, against about 15 µs for spawning a
task per message. `Slots` is the `Credit` the broker sees: free = size + ahead - (queued +
running). `ahead` lets a worker whose broker takes a round trip per claim keep that many
messages claimed before a slot asks for them, so a slot that frees up finds its next message
waiting instead of waiting for a claim (Redis, S2 of the benchmarks: 10 ms tasks at
concurrency 500). The worker renews their leases and gives them back first when it stops.

Claiming ahead never weakens the isolation of redelivered messages (`isolation`): while
a suspect is in the worker (`suspects`: queued, or running within its window of running
alone), nothing is claimed ahead, so the worker holds no more than it would without `ahead`;
and the worker gives back, unstarted, the messages queued beyond the slots when a slot takes
a suspect (`excess`).

Both run on asyncio, as the worker does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox", "InboxClosed", "Slots"]

T = TypeVar("T")

#: How many woken consumers may be on their way to the inbox at once.
WAKE_AHEAD = 8


class InboxClosed(Exception):
    """Raised by `Inbox.get` once the inbox is closed and empty: the slot should end."""


class Inbox(Generic[T]):
    """A FIFO hand-off from one producer to many consumers.

    It wakes a few sleeping consumers at a time (at most `WAKE_AHEAD` not yet running), and a
    consumer that takes an item while more wait wakes others. A task that never suspends leaves
    its consumer free for the next item at once, so a batch of quick tasks no longer wakes a
    consumer per item that then finds the inbox empty (measured: 69k to 81k no-op tasks/s on
    the memory broker), while a batch of tasks that wait still spreads over many consumers.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._sleepers: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # consumers woken that have not taken their item yet
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Queue an item; wake a sleeping consumer unless one is waking already."""
        self._items.append(item)
        if self._waking < WAKE_AHEAD:
            self._wake()

    def put_front(self, item: T) -> None:
        """Queue an item before those queued (it was given back: it runs next)."""
        self._items.appendleft(item)
        if self._waking < WAKE_AHEAD:
            self._wake()

    def _wake(self) -> None:
        """Wake sleepers until as many are waking as there are items (at most WAKE_AHEAD)."""
        sleepers = self._sleepers
        while sleepers and self._waking < min(len(self._items), WAKE_AHEAD):
            sleeper = sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                self._waking += 1

    async def get(self) -> T:
        """Return the next item, waiting for one; raise `InboxClosed` once closed and empty."""
        while not self._items:
            if self._closed:
                raise InboxClosed
            sleeper = asyncio.get_running_loop().create_future()
            self._sleepers.append(sleeper)
            try:
                await sleeper
            except BaseException:
                if sleeper.done() and not sleeper.cancelled():
                    self._waking -= 1  # woken, then cancelled: another takes its turn
                    self._wake()
                raise
            self._waking -= 1
        item = self._items.popleft()
        if self._items and self._waking < WAKE_AHEAD:  # more to do: others join in
            self._wake()
        return item

    def queued(self) -> list[T]:
        """Return the queued items (they stay queued)."""
        return list(self._items)

    def take_last(self, count: int) -> list[T]:
        """Remove and return up to `count` items from the end of the queue (the newest)."""
        items = self._items
        taken = [items.pop() for _ in range(min(count, len(items)))]
        taken.reverse()
        return taken

    def take_all(self) -> list[T]:
        """Remove and return every queued item."""
        items = list(self._items)
        self._items.clear()
        return items

    def close(self) -> None:
        """Let consumers end once the queued items are gone."""
        self._closed = True
        for sleeper in self._sleepers:
            if not sleeper.done():
                sleeper.set_result(None)
                self._waking += 1
        self._sleepers.clear()


class Slots:
    """Counts the slots in use, and lets the broker wait for a free one (its `Credit`)."""

    def __init__(self, size: int, held_limit: int | None = None, *, ahead: int = 0) -> None:
        self.size = size
        #: How many messages may wait in the inbox beyond the slots (claimed ahead).
        self.ahead = ahead
        #: Messages taken: waiting in the inbox (`queued`) or running.
        self.used = 0
        self.queued = 0
        #: Tasks held outside the slots (waiting for a rate limit or a place), and how many
        #: may be: at the limit, the worker takes no more messages until one moves on.
        self.held = 0
        self.held_limit = held_limit
        #: Redelivered messages taken whose window of running alone is not over yet: while
        #: there are any, none is claimed ahead (and Redis hands out no other redelivery).
        self.suspects = 0
        self._waiter: asyncio.Future[None] | None = None

    @property
    def running(self) -> int:
        """The tasks running in slots now."""
        return self.used - self.queued

    async def wait(self) -> int:
        """Wait until a message may be taken (and the held are under their limit).

        Return how many may: the free slots, plus the messages that may wait ahead (none
        while a suspect is in the worker).
        """
        while True:
            limit = self.size + (0 if self.suspects else self.ahead)
            if self.used < limit and (self.held_limit is None or self.held < self.held_limit):
                return limit - self.used
            await self._wait_change()

    @property
    def excess(self) -> int:
        """How many messages are taken beyond the slots (queued ahead of them)."""
        return max(0, min(self.used - self.size, self.queued))

    async def wait_slot(self) -> None:
        """Wait for a free slot, whatever the held count or the queue (for a held task)."""
        while self.used - self.queued >= self.size:
            await self._wait_change()

    async def wait_idle(self) -> None:
        """Wait until no slot is in use and no task is held."""
        while self.used or self.held:
            await self._wait_change()

    async def _wait_change(self) -> None:
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)  # shared by every waiter: one cancelled waiter
        # must not cancel it for the others

    def take(self, suspect: bool = False) -> None:
        """Count a message taken for the inbox (queued until a slot starts it)."""
        self.used += 1
        self.queued += 1
        if suspect:
            self.suspects += 1

    def suspect_done(self) -> None:
        """Count a suspect settled or given back: claiming ahead may resume once none is left."""
        self.suspects -= 1
        self._wake()

    def start(self) -> None:
        """Count a queued message that a slot starts now."""
        self.queued -= 1

    def occupy(self) -> None:
        """Occupy a slot's place at once.

        For a held task whose turn came, or a first delivery waiting for a verdict
        (`aqueue.worker.verdicts`).
        """
        self.used += 1

    def hold(self) -> None:
        """Count a task held outside the slots."""
        self.held += 1

    def unhold(self) -> None:
        """Count a held task gone (to a slot, or back to the broker)."""
        self.held -= 1
        self._wake()

    def give_back(self) -> None:
        """Count a queued message returned to the broker unstarted."""
        self.queued -= 1
        self.release()

    def release(self) -> None:
        """Free a slot, waking whoever waits for one."""
        self.used -= 1
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
