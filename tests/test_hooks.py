"""Worker and task hooks on every executor: coroutine, thread and process (aqueue/hooks.py).

The tasks module is written into tmp_path under a unique name, so the process-pool children
import it as the worker does; the worker runs in burst mode on the memory broker.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from types import ModuleType

import anyio
import pytest

from aqueue import App, Worker, WorkerContext, worker_context

TASKS = """
    import os
    import threading

    import aqueue
    from aqueue import App

    app = App("hooks", broker="memory://", set_as_current=False)
    seen = []


    @app.on_worker_start
    async def open_pool(ctx):
        ctx.pool = {"pid": os.getpid(), "opened": True}
        seen.append(("start", ctx.hostname))


    @app.on_worker_start
    def second(ctx):
        ctx.order = ["second", ctx.pool["opened"]]  # start hooks run in order


    @app.on_worker_stop
    async def close_pool(ctx):
        seen.append(("stop", ctx.pool["opened"]))


    @app.before_task
    async def before(run):
        seen.append(("before", run.task.name, list(run.args), run.state))


    @app.after_task
    def after(run):
        seen.append(("after", run.task.name, run.id, run.state, run.runtime >= 0))


    @app.on_failure
    async def failed(run):
        seen.append(("failure", run.task.name, type(run.error).__name__, str(run.error)))


    @app.task
    async def on_loop(x):
        return aqueue.worker_context().pool["pid"], x


    @app.task
    def in_thread(x):
        assert threading.current_thread() is not threading.main_thread()
        return aqueue.worker_context().pool["pid"], x


    @app.task(executor="process")
    def in_process(x):
        ctx = aqueue.worker_context()
        return ctx.pool["pid"], ctx.process, x


    @app.task
    async def broken():
        raise ValueError("no good")


    @app.task(executor="process")
    def broken_in_process():
        raise KeyError("gone")
"""


@pytest.fixture
def tasks(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    name = f"hooktasks_{uuid.uuid4().hex[:8]}"
    path = f"{tmp_path}/{name}.py"
    with open(path, "w") as file:
        file.write(textwrap.dedent(TASKS))
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
async def app(tasks: ModuleType) -> AsyncIterator[App]:
    app: App = tasks.app
    yield app
    await app.close()


async def burst(tasks: ModuleType) -> Worker:
    worker = Worker(tasks.app, burst=True, app_path=f"{tasks.__name__}:app", processes=1)
    with anyio.fail_after(30):
        await worker.run()
    return worker


async def test_hooks_run_around_tasks_on_every_executor(tasks: ModuleType, app: App) -> None:
    results = [
        await tasks.on_loop.delay(1),
        await tasks.in_thread.delay(2),
        await tasks.in_process.delay(3),
    ]
    worker = await burst(tasks)
    here = os.getpid()
    assert list(await results[0].get(timeout=5)) == [here, 1]
    assert list(await results[1].get(timeout=5)) == [here, 2]
    child_pid, in_child, x = await results[2].get(timeout=5)
    assert worker.context.order == ["second", True]
    assert (child_pid != here, in_child, x) == (True, True, 3)  # the child ran the start hooks
    seen = tasks.seen
    assert seen[0] == ("start", worker.hostname)
    assert seen[-1] == ("stop", True)
    for name, args, ident in zip(
        ("on_loop", "in_thread", "in_process"), ([1], [2], [3]), results, strict=True
    ):
        full = f"{tasks.__name__}.{name}"
        before = seen.index(("before", full, args, None))
        assert seen.index(("after", full, ident.id, "SUCCESS", True)) > before
    assert not [entry for entry in seen if entry[0] == "failure"]


async def test_on_failure_gets_the_error_on_every_executor(tasks: ModuleType, app: App) -> None:
    on_loop = await tasks.broken.delay()
    in_process = await tasks.broken_in_process.delay()
    await burst(tasks)
    with pytest.raises(ValueError, match="no good"):
        await on_loop.get(timeout=5)
    with pytest.raises(KeyError):
        await in_process.get(timeout=5)
    failures = [entry for entry in tasks.seen if entry[0] == "failure"]
    assert ("failure", f"{tasks.__name__}.broken", "ValueError", "no good") in failures
    assert ("failure", f"{tasks.__name__}.broken_in_process", "KeyError", "'gone'") in failures
    after = [entry[3] for entry in tasks.seen if entry[0] == "after"]
    assert after == ["FAILURE", "FAILURE"]


async def test_a_failing_task_hook_is_logged_and_the_task_still_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("broken-hooks", broker="memory://", set_as_current=False)

    @app.before_task
    def explode(run: object) -> None:
        raise RuntimeError("hook bug")

    @app.task
    async def fine() -> int:
        return 7

    try:
        result = await fine.delay()
        with anyio.fail_after(10):
            await Worker(app, burst=True).run()
        assert await result.get(timeout=5) == 7
        assert "before_task hook" in caplog.text
        assert "hook bug" in caplog.text
    finally:
        await app.close()


async def test_a_failing_start_hook_stops_the_worker_and_stop_hooks_still_run() -> None:
    app = App("bad-start", broker="memory://", set_as_current=False)
    stopped: list[bool] = []

    @app.on_worker_start
    def fail(ctx: object) -> None:
        raise OSError("database down")

    @app.on_worker_stop
    def stop(ctx: object) -> None:
        stopped.append(True)

    try:
        with pytest.raises(OSError, match="database down"), anyio.fail_after(10):
            await Worker(app, burst=True).run()
    finally:
        await app.close()
    assert stopped == []  # the worker never started: nothing to close


def test_worker_context_outside_a_worker_says_so() -> None:
    with pytest.raises(RuntimeError, match="no worker is running"):
        worker_context()


def test_a_missing_context_attribute_names_the_hook() -> None:
    with pytest.raises(AttributeError, match="on_worker_start"):
        _ = WorkerContext("w").db
