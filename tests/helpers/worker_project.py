"""A worker project on the SQLite default: `tasks.py` in a temporary directory, worker processes.

`project(visibility=...)` writes `tasks.py` into the test's directory; `workers(*args)` starts
`python -m aqueue worker tasks:app` there (killed and reaped afterwards), and `WorkerProcess`
reads its log line by line, so tests wait on what it logs, never on a clock.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from tests.helpers.processes import STEP, child_env

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


class WorkerProcess:
    """`python -m aqueue worker tasks:app ...`; its stdout (the banner) and stderr (the log)
    are read line by line by two threads, so neither pipe ever fills up."""

    def __init__(self, cwd: Path, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", *args],
            cwd=cwd,
            env=child_env(),
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
