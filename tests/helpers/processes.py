"""Child processes for tests: output read line by line, free ports, Redis servers of a test's own.

`spawn(command)` starts a process whose stdout and stderr threads read into `Lines`, so tests
wait on what it prints (`await lines.wait_line("ready.")`), never on a clock, and no pipe fills.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from tests.helpers import service_redis
from tests.helpers.drivers import service_unavailable

#: The longest any single step may take before the test fails.
STEP = 30.0


class Lines:
    """The lines a child process prints, read by threads so that no pipe fills up."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._eof = 0
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (proc.stdout, proc.stderr)
            if stream is not None
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof += 1
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for line in self.lines)

    def _wait(self, text: str, count: int, timeout: float) -> None:
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    sum(text in line for line in self.lines) >= count
                    or self._eof == len(self._readers)
                ),
                timeout,
            )
            found = sum(text in line for line in self.lines)
        if found < count:
            raise AssertionError(f"no {count} lines with {text!r} ({found}):\n{self.output}")

    async def wait_line(self, text: str, *, count: int = 1, within: float = STEP) -> None:
        """Wait (bounded) until `count` lines contain `text`."""
        await anyio.to_thread.run_sync(self._wait, text, count, within)

    def block_until_line(self, text: str, *, count: int = 1, within: float = STEP) -> None:
        """`wait_line` for code without an event loop (a session fixture): blocks the thread."""
        self._wait(text, count, within)

    def stop(self, sig: int = signal.SIGKILL) -> int:
        """Signal the process (if it runs), reap it, and join the readers."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=STEP)
        for reader in self._readers:
            reader.join(timeout=STEP)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def spawn(command: list[str], **options: Any) -> Lines:
    """Start a process whose output is read line by line."""
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options
    )
    return Lines(proc)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisServer:
    """A `redis-server` of the test's own, without persistence, on a free port."""

    def __init__(self, password: str | None = None, unix_socket: Path | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.unix_socket = unix_socket
        self.process: Lines | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.unix_socket:
            command += ["--unixsocket", str(self.unix_socket)]
        self.process = spawn(command)
        await self.process.wait_line("Ready to accept connections")

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None


@pytest.fixture
def redis_servers() -> Iterator[Callable[..., RedisServer]]:
    """Make servers of the test's own; every one is killed at the end."""
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not on PATH")
    if importlib.util.find_spec("redis") is None:
        service_unavailable(service_redis.MISSING)
    made: list[RedisServer] = []

    def make(password: str | None = None, unix_socket: Path | None = None) -> RedisServer:
        server = RedisServer(password, unix_socket)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


def child_env() -> dict[str, str]:
    """The environment for child processes: no broker or backend URL from the caller's."""
    env = dict(os.environ)
    env.pop("AQUEUE_BROKER_URL", None)
    env.pop("AQUEUE_RESULT_BACKEND", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env
