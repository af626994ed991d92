"""The process executor: `@app.task(executor="process")` runs in child processes of the worker.

Most tests run the Worker in this process on the memory broker, with the tasks module written
into tmp_path under a unique name and `app_path` naming it, so the children import the same
module from the current directory. One test runs `aqueue worker --processes 2` as a process.
Tasks that must be caught mid-run report to a TCP listener of the test (`Gate`) with their name
and pid, then block until the test releases them: the tests synchronise on those reports and on
the worker's log, never on a clock.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from aqueue import App, ConfigurationError, Settings, TaskError, TaskRevoked, Worker
from aqueue.exceptions import Retry
from aqueue.worker import child
from aqueue.worker.processes import ProcessPool
from tests.helpers.worker_project import STEP

pytestmark = [pytest.mark.slow, pytest.mark.both_loops]

TASKS = """
    import datetime as dt
    import os
    import pathlib
    import socket

    from aqueue import App, SoftTimeLimitExceeded

    HERE = pathlib.Path(__file__).resolve().parent

    app = App("tasks", {broker}, set_as_current=False)


    class Custom(Exception):
        pass


    @app.task(executor="process")
    def squares(n):
        return sum(i * i for i in range(n)), os.getpid()


    @app.task(executor="process")
    def noop():
        return None


    @app.task(executor="process")
    def shift(when, amount, pair, tags):
        # Every argument arrives as its own type, and the result goes back the same way.
        kinds = [type(value).__name__ for value in (when, amount, pair, tags)]
        return when + dt.timedelta(days=1), amount * 2, pair[::-1], tags | {{"x"}}, kinds


    @app.task(executor="process")
    def fail(kind):
        if kind == "value":
            raise ValueError("bad value")
        raise Custom("mine")


    @app.task(executor="process")
    def unsendable():
        return object()


    @app.task(executor="process", time_limit=0.5)
    def spin():
        (HERE / "spin.pid").write_text(str(os.getpid()))
        while True:
            pass


    @app.task(executor="process", soft_time_limit=0.2)
    def careful():
        try:
            while True:
                pass
        except SoftTimeLimitExceeded:
            return "cleaned up"


    @app.task(executor="process")
    def hold(name):
        # Tell the test's Gate this task runs (its name and pid); wait until it is released.
        port = int((HERE / "port").read_text())
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(f"{{name}} {{os.getpid()}}\\n".encode())
            sock.recv(1)
        return os.getpid()


    @app.task(executor="process", bind=True, max_retries=2)
    def whoami(self, x):
        print("a print goes to stderr, not into the protocol")
        if self.request.retries == 0:
            self.retry(countdown=0, exc=ValueError("once more"))
        r = self.request
        return [r.id, r.task, r.args, r.retries, r.queue, r.called_directly]


    @app.task(
        executor="process", bind=True, autoretry_for=(Custom,), max_retries=1,
        default_retry_delay=0,
    )
    def stubborn(self, succeed_at):
        # Custom exists only in the child: autoretry_for is checked there.
        if self.request.retries < succeed_at:
            raise Custom(f"attempt {{self.request.retries}}")
        return self.request.retries


    @app.task
    async def on_the_loop():
        return os.getpid()
"""


def gone(pid: int) -> bool:
    """Whether `pid` is neither running nor a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The tasks module, under a name of its own, importable here and in the children."""
    name = f"proctasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TASKS).format(broker='broker="memory://"'))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
async def app(tasks: ModuleType) -> AsyncIterator[App]:
    app: App = tasks.app
    yield app
    await app.close()


def worker_for(tasks: ModuleType, **options: Any) -> Worker:
    return Worker(tasks.app, app_path=f"{tasks.__name__}:app", **options)


async def burst(tasks: ModuleType, **options: Any) -> Worker:
    worker = worker_for(tasks, burst=True, **options)
    with anyio.fail_after(STEP):
        await worker.run()
    return worker


@dataclass
class Arrival:
    """A `hold` task that reported in: its name, its child's pid, and its connection."""

    name: str
    pid: int
    stream: SocketStream

    async def release(self) -> None:
        await self.stream.send(b"x")
        await self.stream.aclose()


class Gate:
    """The TCP listener `hold` tasks report to; its port is in the file `port`."""

    def __init__(self) -> None:
        self._send, self.arrivals = anyio.create_memory_object_stream[Arrival](10)

    async def _handle(self, stream: SocketStream) -> None:
        line = await BufferedByteReceiveStream(stream).receive_until(b"\n", 100)
        name, pid = line.decode().split()
        await self._send.send(Arrival(name, int(pid), stream))

    async def arrival(self) -> Arrival:
        """The next task to report in."""
        with anyio.fail_after(STEP):
            return await self.arrivals.receive()


@asynccontextmanager
async def open_gate(directory: Path, group: TaskGroup) -> AsyncIterator[Gate]:
    gate = Gate()
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        (directory / "port").write_text(str(listener.extra(SocketAttribute.local_port)))
        async with anyio.create_task_group() as serving:
            serving.start_soon(listener.serve, gate._handle, group)
            yield gate
            serving.cancel_scope.cancel()
    gate._send.close()
    gate.arrivals.close()


async def test_a_process_task_runs_cpu_bound_code_in_a_child(tasks: ModuleType, app: App) -> None:
    result = await tasks.squares.delay(10_000)
    worker = await burst(tasks)
    total, pid = await result.get(timeout=STEP)
    assert total == sum(i * i for i in range(10_000))
    assert pid != os.getpid()
    assert worker.runner is not None
    assert worker.runner.processes is not None
    assert worker.runner.processes.pids == []  # closed with the worker...
    assert gone(pid)  # ...and its child reaped


async def test_allowed_types_round_trip(tasks: ModuleType, app: App) -> None:
    when = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)
    result = await tasks.shift.delay(when, decimal.Decimal("1.10"), (1, "a"), frozenset({"t"}))
    unsendable = await tasks.unsendable.delay()
    await burst(tasks)
    later, amount, pair, tags, kinds = await result.get(timeout=STEP)
    assert kinds == ["datetime", "Decimal", "tuple", "frozenset"]
    assert later == when + dt.timedelta(days=1)
    assert later.tzinfo is not None
    assert amount == decimal.Decimal("2.20")
    assert isinstance(amount, decimal.Decimal)
    assert pair == ("a", 1)
    assert tags == frozenset({"t", "x"})
    with pytest.raises(TaskError, match=r"builtins\.object, which aqueue cannot send"):
        await unsendable.get(timeout=STEP)


async def test_an_exception_in_the_child_comes_back_typed(tasks: ModuleType, app: App) -> None:
    value, custom = await tasks.fail.delay("value"), await tasks.fail.delay("custom")
    await burst(tasks)
    with pytest.raises(ValueError, match="bad value") as info:
        await value.get(timeout=STEP)
    assert any('raise ValueError("bad value")' in note for note in info.value.__notes__)
    with pytest.raises(TaskError, match="mine") as caught:
        await custom.get(timeout=STEP)
    assert f"{tasks.__name__}.Custom" in str(caught.value)


async def test_the_pool_raises_what_the_task_raised(tasks: ModuleType) -> None:
    async with ProcessPool(f"{tasks.__name__}:app", 1) as pool:
        with pytest.raises(ValueError, match="bad value"):
            await pool.run(tasks.fail.name, ["value"], {})
        with pytest.raises(TaskError) as caught:
            await pool.run(tasks.fail.name, ["custom"], {})
        assert caught.value.type_name == f"{tasks.__name__}.Custom"
        assert caught.value.message == "mine"
        with pytest.raises(LookupError, match="not a process task"):
            await pool.run(tasks.on_the_loop.name, [], {})
        with pytest.raises(LookupError, match=r"no task named 'os\.system'"):
            await pool.run("os.system", ["true"], {})  # only registered tasks run
        (pid,) = pool.pids  # one child did all of it
    assert gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(tasks.noop.name, [], {})


async def test_a_hard_time_limit_kills_a_runaway_child(
    tasks: ModuleType, app: App, tmp_path: Path
) -> None:
    runaway = await tasks.spin.delay()
    after = await tasks.squares.delay(10)
    started = time.monotonic()
    await burst(tasks, processes=1)
    assert time.monotonic() - started < STEP
    with pytest.raises(TaskError, match="passed its time limit") as info:
        await runaway.get(timeout=STEP)
    assert "TimeLimitExceeded" in info.value.type_name
    assert "was killed and replaced" in str(info.value)
    killed = int((tmp_path / "spin.pid").read_text())
    assert gone(killed)
    _, pid = await after.get(timeout=STEP)
    assert pid != killed  # the next task ran on a new child


async def test_a_soft_time_limit_raises_inside_the_child(tasks: ModuleType, app: App) -> None:
    result = await tasks.careful.delay()
    await burst(tasks)
    assert await result.get(timeout=STEP) == "cleaned up"


async def test_a_bound_task_sees_its_request_prints_and_retries(
    tasks: ModuleType, app: App
) -> None:
    result = await tasks.whoami.delay(7)
    await burst(tasks)
    expected = [result.id, tasks.whoami.name, [7], 1, "default", False]
    assert await result.get(timeout=STEP) == expected


async def test_autoretry_for_a_type_only_the_child_knows(tasks: ModuleType, app: App) -> None:
    once, never = await tasks.stubborn.delay(1), await tasks.stubborn.delay(5)
    await burst(tasks)
    assert await once.get(timeout=STEP) == 1  # failed once, retried, succeeded
    with pytest.raises(TaskError, match="attempt 1"):  # max_retries=1: the second failure stands
        await never.get(timeout=STEP)


async def test_a_child_killed_from_outside_fails_its_task_and_is_replaced(
    tasks: ModuleType, app: App, tmp_path: Path
) -> None:
    async with anyio.create_task_group() as group, open_gate(tmp_path, group) as gate:
        worker = await group.start(worker_for(tasks, processes=1).run)
        doomed = await tasks.hold.delay("doomed")
        arrival = await gate.arrival()
        os.kill(arrival.pid, signal.SIGKILL)
        with pytest.raises(TaskError, match=r"exited before it replied \(killed by signal 9"):
            await doomed.get(timeout=STEP)
        assert "WorkerLostError" in str(await doomed.traceback())
        await arrival.stream.aclose()

        _, pid = await (await tasks.squares.delay(10)).get(timeout=STEP)
        assert pid != arrival.pid
        assert gone(arrival.pid)
        worker.stop()


async def test_revoke_terminate_kills_the_child(
    tasks: ModuleType, app: App, tmp_path: Path
) -> None:
    """Unlike a thread, a process task can be stopped: revoke(terminate=True) kills its child."""
    async with anyio.create_task_group() as group, open_gate(tmp_path, group) as gate:
        worker = await group.start(worker_for(tasks, processes=1).run)
        result = await tasks.hold.delay("revoked")
        arrival = await gate.arrival()
        await result.revoke(terminate=True)
        with anyio.fail_after(STEP), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await arrival.stream.receive()  # the child's end closed: it was killed
        await arrival.stream.aclose()
        _, pid = await (await tasks.squares.delay(10)).get(timeout=STEP)
        with pytest.raises(TaskRevoked):
            await result.get(timeout=STEP)
        assert pid != arrival.pid
        worker.stop()
    assert await (await app.broker()).purge("default") == 0  # not given back


async def test_stopping_the_worker_kills_a_running_child(
    tasks: ModuleType, app: App, tmp_path: Path
) -> None:
    async with anyio.create_task_group() as group, open_gate(tmp_path, group) as gate:
        worker = await group.start(worker_for(tasks, shutdown_timeout=0).run)
        result = await tasks.hold.delay("stuck")
        arrival = await gate.arrival()
        worker.stop()  # no grace: the task is cancelled, its child killed, the message back
    await arrival.stream.aclose()
    assert gone(arrival.pid)
    assert await result.state() == "PENDING"


@pytest.fixture
def cli_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`tasks.py` for `aqueue worker tasks:app`, on the SQLite default in tmp_path."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS).format(broker="None"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)
    return tmp_path


async def test_processes_bounds_how_many_run_at_once(
    cli_project: Path, workers: Callable[..., Any]
) -> None:
    """`aqueue worker --processes 2`: two tasks run at once, a third waits for a child."""
    worker = await workers("--processes", "2")
    async with (
        App("caller", set_as_current=False) as caller,
        anyio.create_task_group() as group,
        open_gate(cli_project, group) as gate,
    ):
        sent = [await caller.send_task("tasks.hold", [name]) for name in "abc"]
        first, second = await gate.arrival(), await gate.arrival()
        assert first.pid != second.pid
        started = [r for r in sent if any(r.id in line for line in worker.lines)]
        assert len(started) == 2  # the third waits for a place in the pool, before it starts
        with pytest.raises(anyio.WouldBlock):
            gate.arrivals.receive_nowait()  # ...so it has not reached a child
        await first.release()
        third = await gate.arrival()
        assert third.pid == first.pid  # ...and runs on the one the first task freed
        assert {first.name, second.name, third.name} == set("abc")
        await second.release()
        await third.release()
        pids = {await result.get(timeout=STEP) for result in sent}
        assert pids == {first.pid, second.pid}
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
    assert gone(first.pid)
    assert gone(second.pid)


async def test_a_worker_killed_with_sigkill_leaves_no_child_running(
    cli_project: Path, workers: Callable[..., Any]
) -> None:
    """The child sees its stdin end and leaves, even in the middle of a task."""
    worker = await workers("--processes", "1")
    async with (
        App("caller", set_as_current=False) as caller,
        anyio.create_task_group() as group,
        open_gate(cli_project, group) as gate,
    ):
        await caller.send_task("tasks.hold", ["orphan"])
        arrival = await gate.arrival()
        worker.signal(signal.SIGKILL)
        assert await worker.wait_exit() == -signal.SIGKILL
        with anyio.fail_after(STEP), pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await arrival.stream.receive()  # the child's end closed: it has exited
        await arrival.stream.aclose()


async def test_process_tasks_need_the_app_path(tasks: ModuleType, app: App) -> None:
    with pytest.raises(ConfigurationError, match="start it with `aqueue worker module:app`"):
        await Worker(app, burst=True).run()


async def test_an_app_without_process_tasks_starts_no_pool() -> None:
    plain = App("plain", broker="memory://", set_as_current=False)

    @plain.task
    def mul(x: int, y: int) -> int:
        return x * y

    async with plain:
        result = await mul.delay(6, 7)
        worker = Worker(plain, burst=True)  # no app path needed
        with anyio.fail_after(STEP):
            await worker.run()
        assert await result.get(timeout=STEP) == 42
        assert worker.runner is not None
        assert worker.runner.processes is None


async def test_a_child_that_cannot_load_the_app_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with ProcessPool("no_such_module_here:app", 1) as pool:
        with pytest.raises(ConfigurationError, match="could not load the app"):
            await pool.run("x.y", [], {})
        assert pool.pids == []


def test_executor_option_is_checked_where_it_is_written() -> None:
    app = App("checks", broker="memory://", set_as_current=False)
    with pytest.raises(ConfigurationError, match="executor must be"):
        app.task(executor="fork")  # type: ignore[call-overload]
    for executor in ("thread", "process"):
        with pytest.raises(ConfigurationError, match="async def"):

            @app.task(executor=executor)  # type: ignore[call-overload]
            async def coroutine() -> None:
                pass

    @app.task(executor="thread")
    def threaded() -> int:
        return 1

    assert threaded.options.executor == "thread"


def test_worker_processes_setting() -> None:
    assert Settings().worker_processes is None
    conf = Settings()
    conf.worker_processes = 3
    assert conf.worker_processes == 3
    with pytest.raises(ConfigurationError, match="worker_processes"):
        conf.worker_processes = 0
    app = App("sized", broker="memory://", set_as_current=False, worker_processes=3)
    assert Worker(app).processes == 3
    assert Worker(app, processes=5).processes == 5
    default = App("default", broker="memory://", set_as_current=False)
    assert Worker(default).processes == (os.cpu_count() or 1)


def test_the_child_protocol_in_process() -> None:
    """The child's frames and replies, run here: what the pool sees of every outcome."""
    stream = io.BytesIO()
    child.write_frame(stream, b"hello")
    child.write_frame(stream, b"")
    stream.seek(0)
    assert child.read_frame(stream) == b"hello"
    assert child.read_frame(stream) == b""
    assert child.read_frame(stream) is None
    assert child.read_frame(io.BytesIO(b"\x00\x00\x00\x09abc")) is None  # cut short

    retry = child._failure(Retry(2.0, KeyError("k")))
    assert (retry["retry"], retry["exc_type"], retry["exc_message"]) == (2.0, "KeyError", "k")
    bare = child._failure(Retry(0.0))
    assert (bare["retry"], bare["exc_type"]) == (0.0, None)
    interrupted = child._failure(KeyboardInterrupt())
    assert interrupted["exc_type"] == "KeyboardInterrupt"


def test_a_child_whose_worker_is_gone_ends_quietly(tmp_path: Path) -> None:
    # A worker killed by a task while its quarantine child was still loading: the child's
    # "ready" meets a closed pipe. It used to end with a BrokenPipeError traceback, status 1.
    (tmp_path / "gone_app.py").write_text(
        "from aqueue import App\napp = App('gone', 'memory://')\n"
    )
    readable, writable = os.pipe()
    os.close(readable)  # the worker's end, gone before the child says anything
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "aqueue.worker.child", "gone_app:app", "--quarantine"],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=writable,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(writable)
    _, stderr = process.communicate(timeout=STEP)
    assert "Traceback" not in stderr.decode(), stderr.decode()
    assert process.returncode == 0
