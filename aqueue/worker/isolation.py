"""Isolation: a redelivered message runs alone, so that only it is blamed if its worker dies.

Where the worker has quarantine processes (`aqueue.worker.quarantine`: the default when it
knows its app path) a suspect runs in one of them instead; this is for a worker without them
(`worker_quarantine_processes = 0`, a `Worker` made in code without an app path, or one whose
quarantine processes cannot start).

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
   worker dies now, this message is the only one whose count of runs went up. Both waits are
   bounded (`GRACE`, 0.5 s): a run that survived that moment is taken not to be the crasher,
   so a long task does not stall the worker; a crash past them may blame a suspect still
   running then. For the same reason a task that has run `GRACE` already is not waited for:
   the suspect waits at most until the youngest running task is that old. Once a suspect's
   window is over, its worker may take the next redelivery (`Dispatcher`, `Slots.suspects`),
   though the suspect still runs.

   (Issue 19, the kill -9 storm, lease 3 s, 2-5 s tasks among 10-200 ms ones: with `GRACE`
   2 s and no redelivery taken while a worker held one, each long orphan held back its
   worker's share of the other orphans for its whole run, and each orphan cost its worker up
   to 2 s of waiting and 2 s alone: the last orphan of a kill finished 11-16 s after it. The
   crashers of the poison scenario die at once, well within 0.5 s.)

First deliveries run side by side and record nothing (a durable write per task would halve a
worker's throughput): a worker that dies while running many of them blames none, and each
comes back as a suspect to be run alone.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

__all__ = ["GRACE", "Isolation"]

#: How long a run must survive to be taken not to be a crasher: a suspect waits for the
#: running tasks at most until the youngest has run this long, then runs with nothing else
#: starting for this long at most. It was 2 s (issue 19: see the module).
GRACE = 0.5


class Isolation:
    """Runs suspects alone: `async with gate.alone(): ...`; other tasks `enter` and `leave`.

    A suspect closes the gate: new tasks wait, and the suspect waits for the running ones to
    finish, for at most `grace` seconds; then it runs with the gate closed for at most `grace`
    seconds more. A crash comes early in a run, as a rule; bounding both waits keeps a long
    task (running, or the suspect itself) from stalling the worker, at the price of precision
    about what crashes past them. Suspects that arrive together go one after the other.
    """

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.running = 0  # tasks (suspects too) between their start and their end
        self._waiting = False  # a suspect waits for the running tasks: the gate is closed
        #: Suspects waiting for the window of the one before them to end: the gate stays
        #: closed, so that the next one starts then, with no young task to wait for.
        self._queued = 0
        self._until: float | None = None  # then it runs, the gate closed until then
        self._event: anyio.Event | None = None  # made when first awaited: it needs a loop
        #: When (the loop's clock) each running task (not the suspects) started, by its
        #: ticket: a suspect waits until the youngest still running has run `grace` seconds.
        #: (Before, the youngest ever started: a 10 ms task that had finished held a suspect
        #: back as long as a 2-5 s task kept running; issue 19.)
        self.starts: dict[int, float] = {}
        self._tickets = itertools.count()
        self._clock: Callable[[], float] | None = None  # the running loop's, once known

    @property
    def closed(self) -> bool:
        """Whether a task starting now has to wait."""
        return (
            self._waiting
            or self._queued > 0
            or (self._until is not None and anyio.current_time() < self._until)
        )

    @property
    def _busy(self) -> bool:
        """Whether another suspect waits for the running tasks or runs within its window."""
        return self._waiting or (self._until is not None and anyio.current_time() < self._until)

    def _notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def _changed(self, until: float | None) -> None:
        """Wait for a change, or until `until` (anyio's clock)."""
        if self._event is None:
            self._event = anyio.Event()
        with anyio.move_on_after(math.inf if until is None else until - anyio.current_time()):
            await self._event.wait()

    def try_enter(self) -> int | None:
        """Count a running task if the gate is open: its ticket for `leave`; else None.

        None: the task must `enter` (and wait).
        """
        if self._waiting or self._queued > 0 or (self._until is not None and self.closed):
            return None  # `closed`, spelled out for the common case: every task comes here
        self.running += 1
        ticket = next(self._tickets)
        clock = self._clock
        if clock is None:  # the loop's clock is anyio's: kept, as asking for the running loop
            clock = self._clock = asyncio.get_running_loop().time  # costs a getpid() (3.11)
        self.starts[ticket] = clock()
        return ticket

    async def enter(self) -> int:
        """Wait while the gate is closed, then count a running task; return its ticket."""
        await self._wait_open()
        self.running += 1
        ticket = next(self._tickets)
        self.starts[ticket] = anyio.current_time()
        return ticket

    async def _wait_open(self) -> None:
        while self.closed:
            await self._changed(None if self._waiting else self._until)

    def leave(self, ticket: int) -> None:
        """Count a running task done (`ticket`: what `try_enter` or `enter` returned)."""
        self.running -= 1
        del self.starts[ticket]
        if self._waiting or not self.running:  # a suspect waits for the young ones
            self._notify()

    @asynccontextmanager
    async def alone(self, over: Callable[[], None] | None = None) -> AsyncIterator[None]:
        """Run the body alone: see the class docstring for how alone.

        `over` is called when the body's window ends: once it has run `grace` seconds (from
        a timer, the body still running), or when it ends, whichever comes first; it may be
        called twice (it must ignore the second call), and is also called when the body
        never ran (cancelled while waiting).
        """
        self._queued += 1  # after the suspect before it (as long as its window is on)
        try:
            while self._busy:
                await self._changed(None if self._waiting else self._until)
        finally:
            self._queued -= 1
        until: float | None = None
        timer: asyncio.TimerHandle | None = None
        self._waiting = True
        try:
            deadline = anyio.current_time() + self.grace
            try:  # no task starts meanwhile: the youngest running one is as young as it gets
                while self.starts:
                    limit = min(deadline, max(self.starts.values()) + self.grace)
                    if anyio.current_time() >= limit:
                        break
                    await self._changed(limit)
            finally:
                self._waiting = False
            until = self._until = anyio.current_time() + self.grace
            self._notify()  # waiting tasks now wait for this time
            if over is not None:  # the loop's clock is anyio's on asyncio
                timer = asyncio.get_running_loop().call_at(until, over)
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1
        finally:
            if timer is not None:
                timer.cancel()
            if until is None or self._until == until:  # not a later suspect's window
                self._until = None
            self._notify()
            if over is not None:
                over()
