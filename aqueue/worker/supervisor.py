"""`aqueue worker MODULE:app --workers N`: one supervisor process over N worker processes.

    Supervisor.run
    └── task group
        ├── signal watch       SIGTERM/SIGINT -> forwarded (warm, then cold); SIGHUP -> reload
        ├── one waiter per child process: blocks in `Process.wait()` (no polling), then reports
        │   the exit to the supervisor's loop
        └── restart timers     a child that died starts again after its backoff

Each child is a plain `aqueue worker` (`python -m aqueue worker ... --child`) with a node name
of its own (`NAME-1` .. `NAME-N`, or `%i` in the name replaced by the index). It runs in a
session of its own, so that a terminal's Ctrl-C reaches the supervisor alone, which forwards
it once: the children's two-phase shutdown (first signal warm, second cold) is the
supervisor's. A child whose supervisor died (kill -9) sees its stdin close and warm-stops.

- A child that dies (any exit but a stop asked for) is logged with its status or signal and
  started again after a backoff: 0.25 s, doubling up to 30 s, back to 0.25 s once a child of
  that slot has run for a minute. A child that had said it was ready (a byte on a pipe of its
  own, `READY_FD`) was serving: a task killed it (`os._exit`, a segfault, the OOM killer),
  not its start, and it is started again after 0.25 s, without doubling; only a child that
  dies before it is ready backs off further (a crash loop: an app that does not load). The
  messages it held come back through the broker (leases, heartbeats), as for any dead worker.
- A child that retires on `--max-tasks-per-child` / `--max-memory-per-child` exits with
  `EXIT_RECYCLE` after a warm stop; its replacement starts at once.
- SIGHUP starts a new generation of children (the code is imported afresh) and warm-stops the
  old one: running tasks finish, messages claimed ahead go back to the queue, nothing is lost.
- With `--burst`, a child that exits 0 is done; the supervisor ends when all are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .recycle import EXIT_RECYCLE

__all__ = ["READY_FD", "Supervisor", "child_name", "ready_pipe", "tell_ready", "watch_parent"]

logger = logging.getLogger("aqueue.supervisor")

#: The first restart delay of a child that died, doubled at each death in a row, up to MAX.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 30.0
#: A child that ran this long resets its slot's backoff.
BACKOFF_RESET_AFTER = 60.0
#: The environment variable that gives a child the pipe to say it is ready on.
READY_FD = "AQUEUE_READY_FD"
#: How long the supervisor waits, once a child exited, to read whether it had said it was ready.
HEAR_READY_AFTER_EXIT = 1.0


def child_name(base: str, index: int) -> str:
    """Return the node name of child `index` (1-based): `%i` in `base` replaced, or `base-index`."""
    return base.replace("%i", str(index)) if "%i" in base else f"{base}-{index}"


@dataclass(eq=False)
class Child:
    """One worker process of the supervisor."""

    index: int
    name: str
    process: Process
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False  # asked to stop (reload, shutdown): its exit is expected
    ready: bool = False  # it said it was ready (`tell_ready`): it was serving
    heard: anyio.Event = field(default_factory=anyio.Event)  # its pipe was read to the end


@dataclass(frozen=True)
class _Exited:
    child: Child
    status: int


@dataclass(frozen=True)
class _Start:
    index: int


Event = _Exited | _Start | int  # an int is a signal number


class Supervisor:
    """Runs `count` worker processes, each `command(name)`, until SIGTERM/SIGINT."""

    def __init__(
        self,
        command: Callable[[str], Sequence[str]],
        count: int,
        *,
        hostname: str,
        burst: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.command = command
        self.count = count
        self.hostname = hostname
        self.burst = burst
        self.env = env
        self.cwd = cwd
        #: The child serving each slot (index 1..count), once started.
        self.current: dict[int, Child] = {}
        self.live: set[Child] = set()
        self.restarts = 0
        self._failures: dict[int, int] = {}
        self._stopping = 0  # signals received: 1 warm, 2 cold
        self._done: set[int] = set()  # burst mode: slots whose child finished

    async def run(self) -> int:
        """Supervise until stopped; return the exit status for the supervisor's process."""
        send, receive = anyio.create_memory_object_stream[Event](math.inf)
        async with anyio.create_task_group() as group, send, receive:
            await group.start(self._watch_signals, send)
            for index in range(1, self.count + 1):
                await self._start(index, group, send)
            logger.info("supervisor (pid %d): %d worker process(es)", os.getpid(), self.count)
            async for event in receive:
                if isinstance(event, int):
                    self._on_signal(event, group, send)
                elif isinstance(event, _Start):
                    if not self._stopping:
                        await self._start(event.index, group, send)
                else:
                    self._on_exit(event, group, send)
                if self._finished():
                    break
            group.cancel_scope.cancel()  # pending restarts, the signal watch
        logger.info("supervisor stopped.")
        return 0

    def _finished(self) -> bool:
        if self.live:
            return False
        return bool(self._stopping) or len(self._done) == self.count

    async def _start(
        self, index: int, group: TaskGroup, send: MemoryObjectSendStream[Event]
    ) -> None:
        name = child_name(self.hostname, index)
        readable, writable = os.pipe()
        try:
            process = await anyio.open_process(
                list(self.command(name)),
                stdin=subprocess.PIPE,  # held open: its end tells the child the supervisor died
                stdout=None,
                stderr=None,
                env={**(os.environ if self.env is None else self.env), READY_FD: str(writable)},
                cwd=self.cwd,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor alone
                pass_fds=(writable,),
            )
        except BaseException:
            os.close(readable)
            raise
        finally:
            os.close(writable)  # the child's now: its exit closes the pipe
        child = Child(index, name, process)
        self.current[index] = child
        self.live.add(child)
        logger.info("started %s (pid %d)", name, process.pid)
        group.start_soon(self._wait, child, send.clone())
        group.start_soon(_hear_ready, child, readable)

    async def _wait(self, child: Child, send: MemoryObjectSendStream[Event]) -> None:
        async with send:
            try:
                status = await child.process.wait()
                # Whether it had said it was ready: its pipe ends with it (a bound, for a pipe
                # that some process of its own would hold open).
                with anyio.move_on_after(HEAR_READY_AFTER_EXIT):
                    await child.heard.wait()
            finally:
                if child.process.returncode is None:  # the supervisor is being torn down
                    with anyio.CancelScope(shield=True):
                        child.process.kill()
                        await child.process.wait()
                if child.process.stdin is not None:
                    with anyio.CancelScope(shield=True):
                        await child.process.stdin.aclose()
            await send.send(_Exited(child, status))

    def _on_exit(
        self, event: _Exited, group: TaskGroup, send: MemoryObjectSendStream[Event]
    ) -> None:
        child, status = event.child, event.status
        self.live.discard(child)
        what = describe_status(status)
        if child.retiring or self._stopping:
            logger.info("%s (pid %d) %s", child.name, child.process.pid, what)
            return
        if self.current.get(child.index) is not child:
            return
        if status == EXIT_RECYCLE:
            logger.info(
                "%s (pid %d) retired; starting a replacement", child.name, child.process.pid
            )
            self.restarts += 1
            send.send_nowait(_Start(child.index))
            return
        if self.burst and status == 0:
            logger.info("%s (pid %d) finished (burst)", child.name, child.process.pid)
            self._done.add(child.index)
            return
        ran = time.monotonic() - child.started
        serving = child.ready or ran >= BACKOFF_RESET_AFTER  # a task killed it, not its start
        failures = 0 if serving else self._failures.get(child.index, 0)
        self._failures[child.index] = 0 if child.ready else failures + 1
        delay = min(BACKOFF_FIRST * 2**failures, BACKOFF_MAX)
        logger.warning(
            "%s (pid %d) %s after %.1f s; restarting in %.2f s",
            child.name,
            child.process.pid,
            what,
            ran,
            delay,
        )
        self.restarts += 1
        group.start_soon(_start_later, child.index, delay, send.clone())

    def _on_signal(
        self, signum: int, group: TaskGroup, send: MemoryObjectSendStream[Event]
    ) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self._stopping:
                return
            logger.warning("SIGHUP: reloading (new worker processes; the old ones warm-stop)")
            old = [child for child in self.live if not child.retiring]
            for child in old:
                child.retiring = True
                _signal(child, signal.SIGTERM)
            for index in range(1, self.count + 1):
                if index not in self._done:
                    send.send_nowait(_Start(index))
            return
        self._stopping += 1
        if self._stopping == 1:
            logger.warning(
                "%s: warm shutdown of %d worker(s) (%s again to stop now)",
                name,
                len(self.live),
                name,
            )
        else:
            logger.warning("%s again: stopping the workers now", name)
        for child in self.live:
            child.retiring = True
            _signal(child, signum)

    async def _watch_signals(
        self, send: MemoryObjectSendStream[Event], *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        async with send.clone() as events:
            with anyio.open_signal_receiver(
                signal.SIGTERM, signal.SIGINT, signal.SIGHUP
            ) as signals:
                task_status.started()
                async for signum in signals:
                    await events.send(int(signum))


async def _hear_ready(child: Child, readable: int) -> None:
    """Note that `child` is ready once it writes to its pipe (its exit closes it: not ready).

    A blocking read in a worker thread (no polling), abandoned if the supervisor stops.
    """
    said = b""
    try:
        said = await anyio.to_thread.run_sync(os.read, readable, 1, abandon_on_cancel=True)
    finally:
        child.ready = bool(said)
        child.heard.set()
        with contextlib.suppress(OSError):
            os.close(readable)


def ready_pipe() -> int | None:
    """Take the pipe the supervisor gave this child to say it is ready on (None: no pipe).

    Called first thing: the variable is removed, so no process this child starts sees it.
    """
    value = os.environ.pop(READY_FD, None)
    if value is None or not value.isdigit():
        return None
    try:
        if not stat.S_ISFIFO(os.fstat(int(value)).st_mode):
            return None  # a stray variable: not a pipe of ours
    except OSError:
        return None
    return int(value)


def tell_ready(fd: int | None) -> None:
    """Tell the supervisor that this child is ready: a byte on the pipe of `ready_pipe`."""
    if fd is not None:
        with contextlib.suppress(OSError):  # the supervisor died meanwhile
            os.write(fd, b"1")
        with contextlib.suppress(OSError):
            os.close(fd)


async def _start_later(index: int, delay: float, send: MemoryObjectSendStream[Event]) -> None:
    async with send:
        await anyio.sleep(delay)  # the backoff itself, not a wait for something to happen
        await send.send(_Start(index))


def _signal(child: Child, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited already: its waiter reports it
        child.process.send_signal(signal.Signals(signum))


def describe_status(status: int) -> str:
    """Describe a process's exit for a log line: `exited with status 1`, `was killed by SIGKILL`."""
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


async def watch_parent(on_exit: Callable[[], None]) -> None:
    """Call `on_exit` when stdin reaches its end: the supervisor that holds it has gone.

    A child started by the supervisor runs this; a blocking read through the event loop (a
    pipe transport), no polling.
    """
    if not stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        return  # not the supervisor's pipe (a terminal, /dev/null): nothing to watch
    loop = asyncio.get_running_loop()
    closed = anyio.Event()

    class _Watch(asyncio.Protocol):
        def connection_lost(self, exc: Exception | None) -> None:
            closed.set()

    transport, _ = await loop.connect_read_pipe(_Watch, sys.stdin)
    try:
        await closed.wait()
        on_exit()
    finally:
        transport.close()
