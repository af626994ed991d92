"""Quarantine: a redelivered message runs in a child process of the worker (`worker_quarantine_
processes`), so a task that kills its process kills a child, not the worker running the test.

On SQLite (the quarantine is the worker's, the same on every broker; `test_poison` runs it on
every durable broker with real worker processes). The "dead worker" is a broker connection
dropped with its delivery unsettled, as in `test_redelivery`; the worker here runs in this
process, with an app path its children load from the test's directory.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from aqueue import App, AsyncResult, Broker, TaskError, Worker
from aqueue.drivers import create_broker
from tests.helpers.consuming import Credit
from tests.helpers.processes import STEP, child_env, spawn

MODULE = """
    import asyncio
    import os

    from aqueue import App

    app = App(
        "qtasks",
        broker={url!r},
        broker_visibility_timeout=0.3,
        broker_max_deliveries=3,
        set_as_current=False,
    )


    @app.task
    async def where():
        return os.getpid()


    @app.task
    def where_sync():
        return os.getpid()


    @app.task
    async def crash():
        os._exit(1)


    @app.task
    async def maybe_crash(crash):
        if crash:
            os._exit(1)
        return os.getpid()


    @app.task
    async def blocked(path):
        while not os.path.exists(path):  # until the test lets it go
            await asyncio.sleep(0.02)
        return "let go"


    @app.task
    async def blocked_said(path):
        print("blocked_said started in", os.getpid(), flush=True)  # the worker's stderr
        while not os.path.exists(path):  # until the test lets it go
            await asyncio.sleep(0.02)
        return "let go"
"""


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The task module, importable here and in the worker's children (from the directory)."""
    name = f"qtasks_{os.getpid()}_{id(tmp_path)}"
    url = f"sqlite:///{tmp_path / 'aqueue.db'}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE).format(url=url))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


async def die_holding(app: App) -> None:
    """Take the next message on a connection of its own and drop it: its worker died."""
    broker: Broker = create_broker(app.broker_url, app._broker_options())
    async with broker:
        with anyio.fail_after(10):
            async with aclosing(broker.consume(["default"], Credit(1))) as deliveries:
                await anext(deliveries)


async def give_back_counted(app: App) -> None:
    """Take the next message and give it back counted: it comes back a suspect, at once."""
    broker: Broker = create_broker(app.broker_url, app._broker_options())
    async with broker:
        with anyio.fail_after(10):
            async with aclosing(broker.consume(["default"], Credit(1))) as deliveries:
                await (await anext(deliveries)).nack(delay=0.0)


async def run_worker_until(app: App, path: str, done: anyio.Event) -> None:
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, app_path=path, concurrency=4).run)
        await done.wait()
        worker.stop()


@asynccontextmanager
async def worker_running(tasks: ModuleType) -> AsyncIterator[None]:
    """Run a worker of the task module's app (with its app path) while the block runs."""
    done = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(run_worker_until, tasks.app, f"{tasks.__name__}:app", done)
        try:
            yield
        finally:
            done.set()


async def suspect_then_first(tasks: ModuleType, crash: bool) -> tuple[AsyncResult, AsyncResult]:
    """Queue a suspect `maybe_crash(crash)`, and a first delivery of the task behind it."""
    app: App = tasks.app
    suspect = await app.send_task(tasks.maybe_crash.name, [crash])
    await give_back_counted(app)  # a suspect now, at the head of the queue
    return suspect, await app.send_task(tasks.maybe_crash.name, [False])


@pytest.mark.parametrize("task_name", ["where", "where_sync"])
async def test_a_redelivered_message_runs_in_a_child_process(
    tasks: ModuleType, task_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    app: App = tasks.app
    async with app:
        result = await app.send_task(getattr(tasks, task_name).name)
        first = await app.send_task(tasks.where.name)  # a first delivery: in the worker
        await die_holding(app)
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker_until, app, f"{tasks.__name__}:app", done)
            pid = await result.get(timeout=30)
            assert await first.get(timeout=30) == os.getpid()
            done.set()
    assert pid != os.getpid()  # its quarantine process's
    assert "running it in a quarantine process" in caplog.text


async def test_a_redelivered_message_that_kills_its_process_is_dead_lettered(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    app: App = tasks.app
    async with app:
        doomed = await app.send_task(tasks.crash.name)
        good = await app.send_task(tasks.where.name)
        await die_holding(app)  # its first run, never recorded, "killed" its worker
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker_until, app, f"{tasks.__name__}:app", done)
            with pytest.raises(TaskError, match="the process running this task died 3 times") as e:
                await doomed.get(timeout=30)
            assert await good.get(timeout=30) == os.getpid()  # the worker lives on
            done.set()
        broker = await app.broker()
        (letter,) = await broker.dead_letters("default")
    assert e.value.type_name == "aqueue.exceptions.WorkerLostError"
    assert letter.reason == "max-deliveries"
    # Two quarantine runs, each recorded: the first gives it back, the second buries it.
    assert "killed its quarantine process (start 2 of at most 3)" in caplog.text
    assert "killed its quarantine process (start 3 of at most 3)" in caplog.text


@asynccontextmanager
async def after_quarantine_kills(tasks: ModuleType) -> AsyncIterator[None]:
    """Run a worker once a suspect `maybe_crash` killed its quarantine process 3 times."""
    app: App = tasks.app
    doomed = await app.send_task(tasks.maybe_crash.name, [True])
    await die_holding(app)
    async with worker_running(tasks):
        with pytest.raises(TaskError, match="died 3 times"):
            await doomed.get(timeout=30)
        yield


async def test_a_task_that_killed_its_quarantine_process_runs_there_next_time_too(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 19, the poison mix: each crasher's first delivery killed a worker and the tasks
    # running in it. Once a task has killed a quarantine process, its worker runs the task's
    # first deliveries in quarantine too, for a while: the next crasher kills a child.
    app: App = tasks.app
    async with app:
        async with after_quarantine_kills(tasks):
            again = await app.send_task(tasks.maybe_crash.name, [False])  # a first delivery
            other = await app.send_task(tasks.where.name)
            assert await again.get(timeout=30) != os.getpid()  # in a quarantine process
            assert await other.get(timeout=30) == os.getpid()  # another task: in the worker
        # A worker that starts within the window learns it from the broker, as does one
        # running (told by the first: `test_a_worker_told_of_a_suspect_quarantines_it`).
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker_until, app, f"{tasks.__name__}:app", done)
            later = await app.send_task(tasks.maybe_crash.name, [False])
            assert await later.get(timeout=30) != os.getpid()
            done.set()
    assert "the workers run " + tasks.maybe_crash.name + " in quarantine" in caplog.text


async def test_first_deliveries_wait_for_the_verdict_on_a_suspect_of_their_task(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 19, the poison mix with its crashers sent together: a worker took suspect crashers
    # to quarantine and fresh ones with them, ran a fresh one itself and died of it before any
    # child had (9-12 worker incarnations in 3 s). First deliveries of a task now wait while
    # a suspect of it waits for its quarantine run: here the suspect kills its child, so the
    # task is suspected, and the first delivery claimed with it runs in quarantine too.
    caplog.set_level(logging.INFO, "aqueue.worker")
    app: App = tasks.app
    async with app:
        doomed, fresh = await suspect_then_first(tasks, crash=True)
        other = await app.send_task(tasks.where.name)
        async with worker_running(tasks):
            assert await fresh.get(timeout=30) != os.getpid()  # after the verdict: quarantined
            assert await other.get(timeout=30) == os.getpid()  # another task: in the worker
            with pytest.raises(TaskError, match="died 3 times"):
                await doomed.get(timeout=30)
    assert f"Task {tasks.maybe_crash.name}: holding its first deliveries" in caplog.text


async def test_first_deliveries_held_for_a_suspect_that_lives_run_in_the_worker(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aqueue.worker")
    app: App = tasks.app
    async with app:
        suspect, fresh = await suspect_then_first(tasks, crash=False)
        async with worker_running(tasks):
            assert await suspect.get(timeout=30) != os.getpid()  # in quarantine: no kill
            assert await fresh.get(timeout=30) == os.getpid()  # then here, as before
    assert f"Task {tasks.maybe_crash.name}: holding its first deliveries" in caplog.text
    assert "killed its quarantine process" not in caplog.text


async def test_with_no_suspect_window_only_redeliveries_are_quarantined(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    app: App = tasks.app
    app.conf.worker_suspect_window = 0
    async with app, after_quarantine_kills(tasks):
        again = await app.send_task(tasks.maybe_crash.name, [False])
        assert await again.get(timeout=30) == os.getpid()  # a first delivery: here
    assert "in quarantine for the next" not in caplog.text


async def test_a_worker_told_of_a_suspect_quarantines_it(tasks: ModuleType) -> None:
    app: App = tasks.app
    async with app:
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker_until, app, f"{tasks.__name__}:app", done)
            before = await app.send_task(tasks.maybe_crash.name, [False])
            assert await before.get(timeout=30) == os.getpid()  # the worker is up
            (reply,) = await app.control.broadcast(
                "suspect", {"task": tasks.maybe_crash.name, "until": time.time() + 30}
            )
            assert reply.ok, reply
            after = await app.send_task(tasks.maybe_crash.name, [False])
            assert await after.get(timeout=30) != os.getpid()
            (stats,) = (await app.control.inspect().stats()).values()
            assert 25 < stats["suspects"][tasks.maybe_crash.name] <= 30
            (bad,) = await app.control.broadcast(
                "suspect", {"task": tasks.where.name, "until": "soon"}
            )
            assert not bad.ok
            assert "until must be a time" in str(bad.error)
            (unknown,) = await app.control.broadcast("suspect", {"task": "x", "until": 1e10})
            assert not unknown.ok
            assert "no task named 'x'" in str(unknown.error)
            done.set()


async def test_a_suspect_is_not_blamed_for_a_worker_that_died_while_it_ran_in_quarantine(
    tasks: ModuleType, tmp_path: Path
) -> None:
    # Two workers killed while the suspect ran in their quarantine processes (another message
    # killed each, or an operator): its child died with them, of no doing of its own. Its
    # quarantine runs were recorded before they started, so with broker_max_deliveries = 3 the
    # third worker dead-lettered a task that kills nothing (issue 19: good tasks dead-lettered
    # when crashers killed worker after worker). A quarantine run now counts only when its own
    # child dies of it.
    app: App = tasks.app
    gate = tmp_path / "let-go"
    command = [sys.executable, "-m", "aqueue", "worker", f"{tasks.__name__}:app", "-l", "INFO"]
    async with app:
        result = await app.send_task(tasks.blocked_said.name, [str(gate)])
        await die_holding(app)  # now a suspect: quarantined by every worker that takes it
        for _ in range(2):
            worker = spawn(command, cwd=tmp_path, env=child_env())
            try:
                await worker.wait_line("blocked_said started in", within=STEP)
            finally:
                worker.stop(signal.SIGKILL)  # its quarantine child sees its pipe end and exits
        worker = spawn(command, cwd=tmp_path, env=child_env())
        try:
            await worker.wait_line("blocked_said started in", within=STEP)
            gate.write_text("")
            assert await result.get(timeout=STEP) == "let go"
        finally:
            worker.stop(signal.SIGTERM)
        broker = await app.broker()
        assert await broker.dead_letters("default") == []


async def test_without_quarantine_processes_a_suspect_runs_alone_in_the_worker(
    tasks: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    app: App = tasks.app
    app.conf.update({"worker_quarantine_processes": 0})
    async with app:
        result = await app.send_task(tasks.where.name)
        await die_holding(app)
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker_until, app, f"{tasks.__name__}:app", done)
            assert await result.get(timeout=30) == os.getpid()
            done.set()
    assert "running it alone" in caplog.text


async def test_a_long_suspect_frees_its_place_for_the_next(
    tasks: ModuleType, tmp_path: Path
) -> None:
    """With one place, a suspect that has run past the grace lets the next one start."""
    app: App = tasks.app
    app.conf.update({"worker_quarantine_processes": 1})
    gate = tmp_path / "let-go"
    async with app:
        long = await app.send_task(tasks.blocked.name, [str(gate)])
        quick = await app.send_task(tasks.where.name)
        await die_holding(app)
        await die_holding(app)
        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(run_worker_until, app, f"{tasks.__name__}:app", done)
            assert await quick.get(timeout=30) != os.getpid()  # while `long` still runs
            assert not await long.ready()
            gate.write_text("")
            assert await long.get(timeout=30) == "let go"
            done.set()
