"""The loop watch: a warning, naming the task, when something blocks the worker's event loop.

A coroutine that runs CPU-bound code (or calls a blocking function) without awaiting holds the
event loop: no other task runs, no lease is renewed, no message is taken. Nothing can preempt
it, but the worker can say so. The loop pets the watch from a timer callback every
`threshold / 2` seconds; a thread of the watch's own waits for each pet and, when one is late
by more than `threshold` (`worker_loop_block_warning`), logs a warning naming the task(s)
running, while the loop is still blocked. When the loop runs again, the late pet logs how long
the block lasted.

The thread only reads: `describe` (given by the worker) names the running tasks from another
thread, so it must copy what it reads and tolerate a change under it. `run()` is a task of the
worker's task group; when it is cancelled (the worker stops), it cancels the timer, stops the
thread and joins it (the thread waits on an event, so it wakes at once).

A thread holding the GIL for the whole block (C code that never releases it) keeps the watch's
thread from running too: then only the late pet reports the block, once it ended.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

if TYPE_CHECKING:
    from ..drivers.base import Delivery
    from .runner import Active

__all__ = ["LoopWatch", "blocking_tasks"]

#: How many running tasks a warning names when it cannot tell which one blocks the loop.
NAMED = 5

logger = logging.getLogger("aqueue.worker")


class LoopWatch:
    """Warns when the running event loop is blocked longer than `threshold` seconds (0: off).

    `describe()` returns the task(s) to name; it runs in the watch's thread.
    """

    def __init__(self, threshold: float, describe: Callable[[], str]) -> None:
        self.threshold = threshold
        self.interval = threshold / 2
        self.describe = describe
        #: How many blocks the watch warned about (while they lasted).
        self.warnings = 0
        self._last = 0.0  # time.monotonic() of the latest pet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled: a task of the worker's task group (returns at once if off)."""
        if self.threshold <= 0:
            task_status.started()
            return
        with self:
            task_status.started()
            await anyio.sleep_forever()

    def __enter__(self) -> LoopWatch:
        """Start watching the running loop (`run` enters only when `threshold` is above 0)."""
        self._loop = asyncio.get_running_loop()
        self._last = time.monotonic()
        self._timer = self._loop.call_later(self.interval, self._pet)
        self._thread = threading.Thread(target=self._watch, name="aqueue-loopwatch", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # waiting on _stop: it returns at once
            self._thread = None

    def _pet(self) -> None:
        """On the loop: record that it runs, report a block that just ended, pet again later."""
        assert self._loop is not None
        now = time.monotonic()
        late = now - self._last - self.interval
        self._last = now
        if late > self.threshold:
            logger.warning(
                "The event loop was blocked for %.2fs (worker_loop_block_warning=%gs): tasks "
                "must await, or run blocking code with executor='thread' or 'process'",
                late,
                self.threshold,
            )
        self._timer = self._loop.call_later(self.interval, self._pet)

    def _watch(self) -> None:
        """In the thread: warn once per block, when a pet is `threshold` late."""
        warned = 0.0
        while True:
            last = self._last
            due = last + self.interval + self.threshold
            wait = self.interval if warned == last else due - time.monotonic()
            if self._stop.wait(max(wait, 0.0)):
                return
            if self._last == last != warned and time.monotonic() >= due:
                warned = last
                self.warnings += 1
                logger.warning(
                    "The event loop has been blocked for %.2fs (worker_loop_block_warning=%gs) "
                    "by %s",
                    time.monotonic() - last - self.interval,
                    self.threshold,
                    self._described(),
                )

    def _described(self) -> str:
        try:
            return self.describe()
        except Exception:  # a change under our feet: say less rather than nothing
            logger.debug("Could not name the running tasks", exc_info=True)
            return "a task (could not name it)"


def blocking_tasks(
    loop: asyncio.AbstractEventLoop,
    active: Mapping[str, Active],
    running: Mapping[Delivery, asyncio.Task[Any]],
) -> str:
    """Name the task blocking `loop`, else the tasks running (from the watch's thread).

    `active` is the runner's tasks by id, `running` the asyncio task running each delivery:
    the loop's current task, found in `running`, is the culprit.
    """
    current = asyncio.current_task(loop)
    tasks = dict(running)  # copies, made in one step each: the loop's thread may change them
    entries = list(active.values())
    for entry in entries:
        if current is not None and tasks.get(entry.delivery) is current:
            return f"task {_name(entry)}"
    if not entries:
        return "no task (the worker itself or a driver)"
    named = ", ".join(_name(entry) for entry in entries[:NAMED])
    more = f" and {len(entries) - NAMED} more" if len(entries) > NAMED else ""
    return f"the worker or a driver, not a task; running: {named}{more}"


def _name(entry: Active) -> str:
    return f"{entry.envelope.task}[{entry.envelope.id}]"
