"""What every peer adapter shares: the tally its worker's tasks keep, the task bodies, the
base producer, and the constants of the scenarios.

The worker process (`compare.py --worker JSON`) runs one system's worker until killed. Its tasks
stamp the first start and count completions in memory; every REPORT_EVERY completions, and at
the target, one line goes to stdout: "@@bench <count> <first start> <now>" (time.monotonic(),
which every process on the machine shares).

Nothing here imports a peer (or aqueue) at module level: each peer's environment imports this
package without the others installed.
"""

from __future__ import annotations

import asyncio
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

REPORT_EVERY = 1000  # the worker process reports its count this often
BULK_CHUNK = 1000  # tasks per bulk call
FANOUT = 50  # concurrent enqueues when pre-enqueueing for a system without a bulk API
SLEEP = 0.01  # S2's task body
KINDS = ("noop", "sleep")  # the tasks, registered as "bench.<kind>"

Body = Callable[[], Awaitable[None]]


class Tally:
    """Completions counted in the worker process, reported in batches on stdout."""

    __slots__ = ("count", "first", "profile", "profiler", "target")

    def __init__(self, target: int, profile: str | None) -> None:
        self.count = 0
        self.first = 0.0
        self.target = target
        self.profile = profile
        self.profiler: Any = None

    def begin(self) -> None:
        if not self.first:
            self.first = time.monotonic()
            if self.profile:
                import cProfile

                self.profiler = cProfile.Profile()
                self.profiler.enable()

    def end(self) -> None:
        self.count += 1
        count = self.count
        if count % REPORT_EVERY == 0 or count == self.target:
            now = time.monotonic()
            if count == self.target and self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile)
            os.write(1, f"@@bench {count} {self.first!r} {now!r}\n".encode())


def bodies(tally: Tally) -> dict[str, Body]:
    """The worker's task bodies, by kind: they count on `tally`."""

    async def noop() -> None:
        tally.begin()
        tally.end()

    async def sleep() -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)  # as every system's S2 task does
        tally.end()

    return {"noop": noop, "sleep": sleep}


def bodies_with_context(tally: Tally) -> dict[str, Callable[[Any], Awaitable[None]]]:
    """The same, for the peers that pass each task a context first (arq, SAQ)."""

    async def noop(ctx: Any) -> None:
        tally.begin()
        tally.end()

    async def sleep(ctx: Any) -> None:
        tally.begin()
        await asyncio.sleep(SLEEP)
        tally.end()

    return {"noop": noop, "sleep": sleep}


def no_op() -> Body:
    """A new task body for the producer side, which registers the tasks but never runs them."""

    async def body() -> None:
        return None

    return body


def chunks(n: int, size: int) -> Iterator[int]:
    """n split into calls of at most `size`: how many go in each."""
    for start in range(0, n, size):
        yield min(size, n - start)


def run_on(loop: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run `main` on the stock asyncio loop or on uvloop."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())  # type: ignore[arg-type]
    else:
        asyncio.run(main())  # type: ignore[arg-type]


class Producer(ABC):
    """What the benchmark drives in its own process, for one system.

    One is made from the run's configuration (a dict, as passed on the command line), then
    opened in the producer process's event loop.
    """

    #: The system's own bulk enqueue, if it has one: (kind, how many) -> None.
    bulk: Callable[[str, int], Awaitable[None]] | None = None
    #: Round trips whose result was there but whose waiter was never told (SAQ).
    missed = 0

    async def open(self) -> None:  # noqa: B027 (optional: SAQ's producer has nothing to open)
        """Connect, where that needs the running loop."""

    @abstractmethod
    async def one(self, kind: str) -> None:
        """Enqueue one task of `kind`."""

    @abstractmethod
    async def round_trip(self) -> None:
        """Enqueue a no-op task and wait for its result."""

    @abstractmethod
    async def aclose(self) -> None:
        """Disconnect."""
