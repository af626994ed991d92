"""Testing helpers: an in-process worker, and what the pytest plugin (`aqueue_pytest`) uses.

The plugin's fixture `aqueue_worker` starts an in-process worker for the app of the fixture
`aqueue_app` (the current app unless a conftest overrides it) on the app's I/O thread, and
stops it after the test; `aqueue_worker.join()` waits until everything queued has run.
Override `aqueue_app` to give your own app, on `memory://` or on its own broker::

    @pytest.fixture
    def aqueue_app():
        return App("tests", broker="memory://")

    def test_add(aqueue_worker):
        assert add.sync.delay(2, 2).get(timeout=5) == 4

The worker runs on the app's I/O loop, the loop of the sync API: `memory://` keeps messages
per event loop, so with it send through `.sync` (or `await` in a coroutine on that loop). On a
server broker (SQLite, Redis, RabbitMQ) `await add.delay()` from an async test works as well.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .app import App
from .worker.lifecycle import Worker

__all__ = ["InProcessWorker"]


class InProcessWorker:
    """A worker of `app` running on the app's I/O thread: `start()`, `join()`, `stop()`."""

    def __init__(self, app: App, *, queues: Sequence[str] | None = None, **options: Any):
        self.app = app
        self.worker = Worker(app, queues=queues, hostname="aqueue-test@localhost", **options)
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<InProcessWorker {self.worker!r}>"

    def start(self, timeout: float = 30.0) -> None:
        """Start the worker; return once it consumes."""
        try:
            self.app.run_blocking(asyncio.wait_for(self._start(), timeout))
        except BaseException:
            self.stop()
            raise

    def join(self, timeout: float = 30.0) -> None:
        """Wait until every ready message was run, including those the tasks sent meanwhile.

        Delayed messages (a `countdown` not yet due) are not waited for. Past `timeout`
        seconds, `TimeoutError`.
        """
        self.app.run_blocking(asyncio.wait_for(self._join(), timeout))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker (running tasks get its `shutdown_timeout`) and wait for it."""
        self.app.run_blocking(asyncio.wait_for(self._stop(), timeout))

    async def _start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the in-process worker runs already")
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(started))
        await started

    async def _run(self, started: asyncio.Future[None]) -> None:
        try:
            await self.worker.run(task_status=_Started(started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    async def _join(self) -> None:
        worker = self.worker
        while True:
            before = _processed(worker)
            await worker.slots.wait_idle()
            # A burst worker beside it returns once the queues are empty and its tasks ran.
            sweep = Worker(
                self.app, queues=worker.queues, burst=True, hostname="aqueue-join@localhost"
            )
            await sweep.run()
            await worker.slots.wait_idle()
            if not _processed(sweep) and _processed(worker) == before:
                return

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.worker.stop()
        await task


class _Started:
    """The `task_status` `Worker.run` reports its start to."""

    def __init__(self, future: asyncio.Future[None]) -> None:
        self._future = future

    def started(self, value: Any = None) -> None:
        if not self._future.done():
            self._future.set_result(None)


def _processed(worker: Worker) -> int:
    runner = worker.runner
    if runner is None:
        return 0
    return runner.succeeded + runner.failed + runner.retried + runner.refused
