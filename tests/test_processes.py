"""Real processes on the SQLite default: producer, worker and caller apart, and no server.

Every worker here is `python -m aqueue worker tasks:app` in its own process, started in a
temporary directory where `tasks.py` and the default `aqueue.db` live. The tests synchronise on
what the worker logs (`ready.`, `received`, `warm shutdown`) and on files they create for the
tasks to see, never on a clock.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from aqueue import App, OutgoingMessage, TaskError

pytestmark = pytest.mark.slow

#: The longest any single step may take before the test fails (process start, a result...).
STEP = 30.0

TASKS = """
    import pathlib
    import time

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App("tasks", broker_visibility_timeout={visibility!r})


    @app.task
    async def add(x, y):
        return x + y


    @app.task
    def mul(x, y):
        return x * y


    @app.task
    def block_sync(name):
        # The same in a plain def task, which the worker runs in a thread.
        path = HERE / name
        while not path.exists():
            time.sleep(0.01)  # task body: waits for a file the test creates
        return "done"


    @app.task(bind=True)
    async def block(self, name):
        # Wait until the test creates the file `name`; return this delivery's count.
        path = HERE / name
        while not path.exists():
            await anyio.sleep(0.01)  # task body: waits for a file the test creates
        return self.request.delivery_count
"""

PRODUCER = """
import anyio

from tasks import add, app, mul


async def main():
    async with app:
        first = await add.delay(4, 4)
        second = await mul.delay(6, 7)
        print(first.id, second.id, flush=True)


anyio.run(main)
"""


def clean_env() -> dict[str, str]:
    """The environment for child processes: the SQLite default, whatever the caller had set."""
    env = dict(os.environ)
    env.pop("AQUEUE_BROKER_URL", None)
    env.pop("AQUEUE_RESULT_BACKEND", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """`python -m aqueue worker tasks:app ...`; its stdout (the banner) and stderr (the log)
    are read line by line by two threads, so neither pipe ever fills up."""

    def __init__(self, cwd: Path, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", *args],
            cwd=cwd,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []  # stderr: the log
        self.stdout: list[str] = []  # the banner
        self._eof = False
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], into: list[str]) -> None:
        for line in stream:
            with self._changed:
                into.append(line.rstrip("\n"))
                self._changed.notify_all()
        if into is self.lines:
            with self._changed:
                self._eof = True
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join([*self.stdout, *self.lines])

    def _wait_line(self, text: str, count: int, timeout: float) -> list[str]:
        def found() -> list[str]:
            return [line for line in self.lines if text in line]

        with self._changed:
            self._changed.wait_for(lambda: len(found()) >= count or self._eof, timeout)
            hits = found()
        if len(hits) < count:
            state = "exited" if self._eof else f"no such line within {timeout} s"
            raise AssertionError(f"worker {state} before logging {text!r}:\n{self.output}")
        return hits

    async def wait_line(self, text: str, *, count: int = 1, within: float = STEP) -> list[str]:
        """Wait (bounded) until `count` lines of the log contain `text`; return those lines."""
        return await anyio.to_thread.run_sync(self._wait_line, text, count, within)

    async def wait_exit(self, within: float = STEP) -> int:
        """Wait (bounded) for the process to exit; return its exit code."""
        try:
            code = await anyio.to_thread.run_sync(self.proc.wait, within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running {within} s later:\n{self.output}") from None
        for reader in self._readers:
            await anyio.to_thread.run_sync(reader.join, within)
        return code

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """Kill and reap the process (the fixture's finalizer)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=STEP)
        for reader in self._readers:
            reader.join(timeout=STEP)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write `tasks.py` (with a given visibility timeout) into tmp_path, the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.delenv("AQUEUE_RESULT_BACKEND", raising=False)

    def write(visibility: float = 60.0) -> Path:
        (tmp_path / "tasks.py").write_text(
            textwrap.dedent(TASKS).format(visibility=float(visibility))
        )
        return tmp_path

    return write


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start worker processes in tmp_path; every one is killed and reaped afterwards."""
    started: list[WorkerProcess] = []

    async def start(*args: str, ready: bool = True) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, list(args))
        started.append(worker)
        if ready:
            await worker.wait_line("ready.")
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
async def caller(project: Callable[..., Path]) -> AsyncIterator[App]:
    """The test process's own app: a third process, on the same SQLite default."""
    async with App("caller", set_as_current=False) as app:
        yield app


async def test_producer_worker_and_caller_are_three_processes(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers()
    produced = await anyio.run_process(
        [sys.executable, "-c", PRODUCER], cwd=cwd, env=clean_env(), check=False
    )
    assert produced.returncode == 0, produced.stderr.decode()
    add_id, mul_id = produced.stdout.decode().split()

    assert await caller.AsyncResult(add_id).get(timeout=STEP) == 8
    assert await caller.AsyncResult(mul_id).get(timeout=STEP) == 42
    assert await caller.AsyncResult(add_id).state() == "SUCCESS"

    # The banner on stdout; Celery's log lines on stderr.
    assert "  . tasks.add" in worker.stdout
    assert ".> transport:   sqlite:///aqueue.db" in worker.stdout
    await worker.wait_line(f"Task tasks.add[{add_id}] received")
    (done,) = await worker.wait_line(f"Task tasks.add[{add_id}] succeeded in ")
    assert done.endswith("s: 8")
    (done,) = await worker.wait_line(f"Task tasks.mul[{mul_id}] succeeded in ")
    assert done.endswith("s: 42")
    assert (cwd / "aqueue.db").exists()

    # The caller can send by name too, without the task's code.
    again = await caller.send_task("tasks.add", [20, 22])
    assert await again.get(timeout=STEP) == 42

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
    await worker.wait_line("stopped.")


async def test_kill_9_mid_task_loses_nothing(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project(visibility=1.0)
    first = await workers()
    result = await caller.send_task("tasks.block", ["go"])
    await first.wait_line(f"Task tasks.block[{result.id}] received")

    first.signal(signal.SIGKILL)
    assert await first.wait_exit() == -signal.SIGKILL
    (cwd / "go").touch()  # the task finishes, the next time it runs

    # A fresh worker claims the message once the dead worker's lease (1 s) runs out. It is a
    # serving worker, not --burst: a burst worker would leave at once, seeing a leased message.
    second = await workers()
    assert await result.get(timeout=STEP) == 2  # the second delivery of the same message
    await second.wait_line(f"Task tasks.block[{result.id}] succeeded in ")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit() == 0

    broker = await caller.broker()
    assert await broker.dead_letters("default") == []
    assert pending_messages(cwd) == 0


async def test_sigint_lets_a_running_task_finish_within_the_timeout(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers("--shutdown-timeout", "60")
    result = await caller.send_task("tasks.block", ["go"])
    await worker.wait_line(f"Task tasks.block[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT: warm shutdown")
    await worker.wait_line("Waiting up to 60.0s for 1 running task(s)")
    assert worker.proc.poll() is None  # still finishing its task
    (cwd / "go").touch()

    assert await worker.wait_exit() == 0
    assert await result.get(timeout=STEP) == 1
    assert await result.state() == "SUCCESS"
    assert "interrupted by shutdown" not in worker.output
    assert pending_messages(cwd) == 0


async def test_sigint_past_the_timeout_returns_the_message_at_once(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project(visibility=60.0)
    worker = await workers("--shutdown-timeout", "0.5")
    result = await caller.send_task("tasks.block", ["go"])
    await worker.wait_line(f"Task tasks.block[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT: warm shutdown")
    assert await worker.wait_exit() == 0
    await worker.wait_line(f"Task tasks.block[{result.id}] interrupted by shutdown")
    assert await result.state() == "PENDING"

    # The message is back now, not when its 60 s lease would have run out: a burst worker,
    # which only takes ready messages, runs it, well within the lease.
    (cwd / "go").touch()
    with anyio.fail_after(STEP):  # STEP is half the visibility timeout
        burst = await workers("--burst", ready=False)
        assert await burst.wait_exit() == 0
        # Delivery 1 again: a shutdown is no crash, the interrupted delivery is not counted.
        assert await result.get(timeout=1) == 1
    await burst.wait_line(f"Task tasks.block[{result.id}] succeeded in ")
    assert pending_messages(cwd) == 0


async def test_sigint_past_the_timeout_does_not_wait_for_a_blocked_thread(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    """A plain def task cannot be cancelled: the worker abandons its thread and still exits."""
    cwd = project()
    worker = await workers("--shutdown-timeout", "0.5")
    result = await caller.send_task("tasks.block_sync", ["go"])
    await worker.wait_line(f"Task tasks.block_sync[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line(f"Task tasks.block_sync[{result.id}] interrupted by shutdown")
    await worker.wait_line("stopped.")
    assert await worker.wait_exit(within=10) == 0  # the thread is still blocked, and abandoned

    (cwd / "go").touch()
    burst = await workers("--burst", ready=False)
    assert await burst.wait_exit() == 0
    assert await result.get(timeout=1) == "done"


async def test_second_sigint_stops_at_once(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers("--shutdown-timeout", "60")
    result = await caller.send_task("tasks.block", ["go"])
    await worker.wait_line(f"Task tasks.block[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT: warm shutdown")
    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT again: stopping now")
    assert await worker.wait_exit(within=10) == 0  # not the 60 s grace period
    await worker.wait_line(f"Task tasks.block[{result.id}] interrupted by shutdown")

    # And the message went back: it runs to completion on the next worker.
    (cwd / "go").touch()
    burst = await workers("--burst", ready=False)
    assert await burst.wait_exit() == 0
    assert await result.get(timeout=1) == 1  # as it was: not counted (no crash)


async def test_refused_messages_are_dead_lettered_and_the_worker_goes_on(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers()
    broker = await caller.broker()

    missing = await caller.send_task("nope.missing", [1, 2])
    await broker.publish(
        [OutgoingMessage(id="garbage-1", queue="default", body=b"\xc1 this is not msgpack")]
    )
    wrong_args = await caller.send_task("tasks.add", [1])
    good = await caller.send_task("tasks.add", [4, 4])

    with pytest.raises(TaskError) as raised:
        await missing.get(timeout=STEP)
    assert "nope.missing" in str(raised.value)
    assert "NotRegistered" in raised.value.type_name
    with pytest.raises(TypeError, match="missing a required argument"):
        await wrong_args.get(timeout=STEP)
    assert await good.get(timeout=STEP) == 8
    assert worker.proc.poll() is None  # it carried on

    # Still taking work after refusing.
    later = await caller.send_task("tasks.mul", [3, 3])
    assert await later.get(timeout=STEP) == 9

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0  # every delivery settled before it exits
    letters = await broker.dead_letters("default")
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == ["bad-arguments", "undecodable", "unknown-task"]
    by_reason = {letter.reason: letter for letter in letters}
    assert "nope.missing" in by_reason["unknown-task"].detail
    assert by_reason["undecodable"].body == b"\xc1 this is not msgpack"
    assert by_reason["bad-arguments"].detail.startswith("tasks.add:")
    assert len([line for line in worker.lines if "Refused message" in line]) == 3
    assert pending_messages(cwd) == 0


def pending_messages(cwd: Path) -> int:
    """Messages still in the queue table of the SQLite default in `cwd`."""
    with sqlite3.connect(cwd / "aqueue.db") as db:
        (count,) = db.execute("SELECT count(*) FROM aqueue_messages").fetchone()
    db.close()
    return int(count)
