"""A consuming process's heartbeat, for the lease-based brokers (SQLite, Redis).

A worker killed with `kill -9` holds leased messages that nobody settles. Their leases
(`broker_visibility_timeout`, 30 s) bring them back in the end; the heartbeat brings them back
sooner without shortening the lease of a live long task: a broker that consumes records every
`interval` seconds that it is alive (its entry: an id and the time of its last beat), and a
consumer whose last beat is older than `timeout` is dead, so the messages it held are
reclaimed by the next claim of any other consumer.

The beats come from a thread of their own with its own event loop and connection, not from the
worker's loop: a task that blocks the loop (CPU-bound code in a coroutine) stops the lease
renewals, which still guard it, but not the heartbeat, so a live worker never looks dead. A
closing broker removes its entry; a missing entry means "unknown", never "dead" (its messages
come back when their leases run out).

Judging others needs a working heartbeat of one's own: a process declares others dead only
once its own beats have gone through, without a failure, for `timeout` seconds. After an outage
(Redis restarting, the SQLite file locked) every entry is old; that wait gives every live
process the time to beat again before anyone is judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Beats", "Heartbeat"]

logger = logging.getLogger("aqueue.heartbeat")


class Beats(Protocol):
    """What a driver records its beats with; used by the heartbeat thread only."""

    async def beat(self) -> None:
        """Record that this consumer is alive now (connecting first if needed)."""

    async def forget(self) -> None:
        """Remove this consumer's entry: it stopped cleanly."""

    async def aclose(self) -> None:
        """Close the connection."""


class Heartbeat:
    """The thread that beats every `interval` seconds until `stop`."""

    def __init__(
        self, beats: Callable[[], Beats], *, interval: float, timeout: float, name: str
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self._beats = beats
        self._name = name
        self._thread: threading.Thread | None = None
        self._first = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        #: Monotonic times: the first beat of the current run of successes, the last success.
        self._healthy_since: float | None = None
        self._last_beat = -math.inf
        self._failing = False

    @property
    def running(self) -> bool:
        """Whether the thread was started and not stopped."""
        return self._thread is not None and not self._stopping

    def start(self) -> None:
        """Start the thread, and wait (blocking: call it in a worker thread) for its first beat."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        self._first.wait(self.timeout)

    def stop(self) -> None:
        """Stop beating and remove the entry (blocking: call it in a worker thread)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._first.wait(self.timeout)
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(wake.set)
        thread.join()

    def judging_from(self) -> float:
        """Return the monotonic time from which this process may judge others (inf: never)."""
        if self._healthy_since is None or self._stopping:
            return math.inf
        return self._healthy_since + self.timeout

    def judging(self) -> bool:
        """Whether this process may declare others dead now (see the module)."""
        now = time.monotonic()
        return now >= self.judging_from() and now - self._last_beat < self.timeout

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        beats = self._beats()
        try:
            while not self._stopping:
                await self._beat(beats)
                self._first.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval)
            try:
                await asyncio.wait_for(beats.forget(), self.timeout)
            except Exception:
                logger.warning("could not remove this consumer's heartbeat entry", exc_info=True)
        finally:
            self._first.set()
            with contextlib.suppress(Exception):
                await beats.aclose()

    async def _beat(self, beats: Beats) -> None:
        try:
            await asyncio.wait_for(beats.beat(), self.timeout)
        except Exception as exc:
            self._healthy_since = None
            if not self._failing:
                logger.warning(
                    "heartbeat failed (%s: %s); this worker may look dead to the others, and "
                    "judges none itself until its beats go through again",
                    type(exc).__name__,
                    exc,
                )
            self._failing = True
            return
        now = time.monotonic()
        if self._healthy_since is None:
            self._healthy_since = now
        self._last_beat = now
        self._failing = False
