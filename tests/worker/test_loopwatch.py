"""The loop watch: a warning naming the task that blocks the worker's event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest

from aqueue import App, Worker
from aqueue.worker.loopwatch import LoopWatch, blocking_tasks

WATCH_THREAD = "aqueue-loopwatch"


class Warned(logging.Handler):
    """Collects the loop watch's warnings, for a blocked loop to wait on (from any thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.changed = threading.Condition()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.messages.append(record.getMessage())
            self.changed.notify_all()

    def block_until(self, text: str) -> str:
        """Hold the event loop (a blocking wait, not an await) until a warning says `text`.

        A warning of a load spike on a busy machine says something else, and is passed over.
        """

        def said() -> str | None:
            return next((m for m in self.messages if "has been blocked" in m and text in m), None)

        with self.changed:
            assert self.changed.wait_for(said, timeout=10), f"no warning said {text!r}"
            return said() or ""


@pytest.fixture
def warned() -> Iterator[Warned]:
    handler = Warned()
    logger = logging.getLogger("aqueue.worker")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App("tests", broker="memory://", set_as_current=False, worker_loop_block_warning=0.1)
    yield app
    await app.close()


def watch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WATCH_THREAD]


async def test_a_task_blocking_the_loop_is_named_while_it_blocks(
    app: App, warned: Warned, caplog: pytest.LogCaptureFixture
) -> None:
    threads: list[int] = []

    @app.task
    async def hog() -> str:
        threads.append(len(watch_threads()))
        warned.block_until(f"by task {hog.name}[")  # CPU-bound work holds the loop the same way
        await anyio.lowlevel.checkpoint()  # the loop runs again: the late pet reports the block
        return "done"

    result = await hog.delay()
    with anyio.fail_after(30):
        await Worker(app, burst=True).run()
    assert await result.get(timeout=5) == "done"
    assert threads == [1]
    assert not watch_threads()  # stopped and joined with the worker
    during = [r.getMessage() for r in caplog.records if "has been blocked" in r.getMessage()]
    assert [m for m in during if f"by task {hog.name}[{result.id}]" in m]
    assert "(worker_loop_block_warning=0.1s)" in during[0]
    after = [m for m in warned.messages if "was blocked for" in m]
    assert after
    assert "tasks must await, or run blocking code with executor=" in after[-1]


async def test_a_block_outside_the_tasks_names_the_running_ones(app: App, warned: Warned) -> None:
    started, release = anyio.Event(), anyio.Event()
    waiting = 0

    @app.task
    async def wait() -> None:
        nonlocal waiting
        waiting += 1
        if waiting == 7:
            started.set()
        await release.wait()

    ids = [(await wait.delay()).id for _ in range(7)]
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app).run)
        with anyio.fail_after(30):
            await started.wait()
        # This test's own task blocks the loop: not a task of the worker's.
        blocked = warned.block_until(" and 2 more")
        release.set()
        worker.stop()
    assert "by the worker or a driver, not a task; running: " in blocked
    assert sum(task_id in blocked for task_id in ids) == 5


async def test_zero_turns_the_watch_off(app: App, warned: Warned) -> None:
    app.conf.worker_loop_block_warning = 0
    threads: list[int] = []

    @app.task
    async def hog() -> None:
        threads.append(len(watch_threads()))
        time.sleep(0.3)  # noqa: ASYNC251 - blocks the loop on purpose

    await hog.delay()
    with anyio.fail_after(30):
        await Worker(app, burst=True).run()
    assert threads == [0]
    assert not [m for m in warned.messages if "blocked" in m]


async def test_a_failing_description_still_warns(warned: Warned) -> None:
    def broken() -> str:
        raise RuntimeError("dictionary changed size during iteration")

    async with anyio.create_task_group() as group:
        await group.start(LoopWatch(0.05, broken).run)
        warned.block_until("by a task (could not name it)")
        group.cancel_scope.cancel()


async def test_no_task_running() -> None:
    assert blocking_tasks(asyncio.get_running_loop(), {}, {}) == (
        "no task (the worker itself or a driver)"
    )
