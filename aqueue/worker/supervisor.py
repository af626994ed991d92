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
- With `standby` K (`--standby K`), K more children are started and loaded but not serving
  (aqueue/worker/standby.py): a serving child that dies or retires is replaced by one of them
  at once (its slot's name and beat written on the standby's pipe), and another standby is
  started in the background. A child that dies before it is ready still backs off (a crash
  loop is not fed standbys); so does a standby that dies while it waits.
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
from .standby import STANDBY_FD, Assignment, inherited_pipe

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

    index: int  # its slot, 1..count; 0 for a standby not yet assigned one
    name: str
    process: Process
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False  # asked to stop (reload, shutdown): its exit is expected
    ready: bool = False  # it said it was ready (`tell_ready`): it was serving
    heard: anyio.Event = field(default_factory=anyio.Event)  # its pipe was read to the end
    assign: int | None = None  # a standby's end of the pipe its assignment goes on

    def ran(self) -> float:
        """Seconds since it started (or, for a standby, since it took its slot)."""
        return time.monotonic() - self.started


@dataclass(frozen=True)
class _Exited:
    child: Child
    status: int


@dataclass(frozen=True)
class _Start:
    index: int  # 0: a standby


Event = _Exited | _Start | int  # an int is a signal number


class Supervisor:
    """Runs `count` worker processes, each `command(name, beat)`, until SIGTERM/SIGINT.

    `beat`: slot 1's child runs the beat too. `standby`: how many loaded children wait to
    replace one that dies (none in burst mode).
    """

    def __init__(
        self,
        command: Callable[[str, bool], Sequence[str]],
        count: int,
        *,
        hostname: str,
        burst: bool = False,
        beat: bool = False,
        standby: int = 0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.command = command
        self.count = count
        self.hostname = hostname
        self.burst = burst
        self.beat = beat
        self.standby = 0 if burst else standby
        self.env = env
        self.cwd = cwd
        #: The child serving each slot (index 1..count), once started.
        self.current: dict[int, Child] = {}
        self.live: set[Child] = set()
        #: The standbys waiting for a slot, oldest first.
        self.standbys: list[Child] = []
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
            for _ in range(self.standby):
                await self._start(0, group, send)
            logger.info(
                "supervisor (pid %d): %d worker process(es)%s",
                os.getpid(),
                self.count,
                f", {self.standby} standby" if self.standby else "",
            )
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
        name = child_name(self.hostname, index) if index else f"{self.hostname}-standby"
        readable, writable = os.pipe()
        env = {**(os.environ if self.env is None else self.env), READY_FD: str(writable)}
        passed = [writable]  # the child's ends, closed here once it started
        assign = None
        if not index:  # a standby: a pipe for its assignment too
            wait_on, assign = os.pipe()
            env[STANDBY_FD] = str(wait_on)
            passed.append(wait_on)
        try:
            process = await anyio.open_process(
                list(self.command(name, self._beat(index))),
                stdin=subprocess.PIPE,  # held open: its end tells the child the supervisor died
                stdout=None,
                stderr=None,
                env=env,
                cwd=self.cwd,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor alone
                pass_fds=passed,
            )
        except BaseException:
            os.close(readable)
            if assign is not None:
                os.close(assign)
            raise
        finally:
            for fd in passed:
                os.close(fd)  # the child's now: its exit closes the pipe
        child = Child(index, name, process, assign=assign)
        if index:
            self.current[index] = child
        else:
            self.standbys.append(child)
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
        _stand_down(child)
        what = describe_status(status)
        if child.retiring or self._stopping:
            logger.info("%s (pid %d) %s", child.name, child.process.pid, what)
            return
        if child in self.standbys:  # it died waiting: the app does not load, as a rule
            self.standbys.remove(child)
            self._restart_later(child, 0, what, group, send)
            return
        if self.current.get(child.index) is not child:
            return
        if status == EXIT_RECYCLE:
            logger.info(
                "%s (pid %d) retired; starting a replacement", child.name, child.process.pid
            )
            self.restarts += 1
            if not self._promote(child.index, send):
                send.send_nowait(_Start(child.index))
            return
        if self.burst and status == 0:
            logger.info("%s (pid %d) finished (burst)", child.name, child.process.pid)
            self._done.add(child.index)
            return
        if child.ready:  # a task killed it, not its start: a standby may take over at once
            self._failures[child.index] = 0
            if self._promote(child.index, send, f"{what} after {child.ran():.1f} s"):
                self.restarts += 1
                return
        self._restart_later(child, child.index, what, group, send)

    def _restart_later(
        self,
        child: Child,
        index: int,
        what: str,
        group: TaskGroup,
        send: MemoryObjectSendStream[Event],
    ) -> None:
        """Start slot `index` (0: a standby) again after its backoff, and say so."""
        ran = child.ran()
        serving = child.ready or ran >= BACKOFF_RESET_AFTER  # a task killed it, not its start
        failures = 0 if serving else self._failures.get(index, 0)
        self._failures[index] = 0 if child.ready else failures + 1
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
        group.start_soon(_start_later, index, delay, send.clone())

    def _promote(
        self, index: int, send: MemoryObjectSendStream[Event], why: str | None = None
    ) -> bool:
        """Give slot `index` to a waiting standby, and start another; False if none is left."""
        previous = self.current.get(index)
        while self.standbys:
            standby = self.standbys.pop(0)
            name = child_name(self.hostname, index)
            order = Assignment(name, self._beat(index)).encode()
            try:
                assert standby.assign is not None
                os.write(standby.assign, order)  # a pipe's buffer holds it: never blocks
            except OSError:  # it died meanwhile: its waiter reports it
                _stand_down(standby)
                continue
            _stand_down(standby)
            standby.index, standby.name, standby.started = index, name, time.monotonic()
            self.current[index] = standby
            if previous is not None and why is not None:
                logger.warning(
                    "%s (pid %d) %s; standby pid %d takes its place",
                    previous.name,
                    previous.process.pid,
                    why,
                    standby.process.pid,
                )
            else:
                logger.info("standby pid %d takes the place of %s", standby.process.pid, name)
            if not self._stopping:
                send.send_nowait(_Start(0))  # another standby, in the background
            return True
        return False

    def _beat(self, index: int) -> bool:
        return self.beat and index == 1

    def _on_signal(
        self, signum: int, group: TaskGroup, send: MemoryObjectSendStream[Event]
    ) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if self._stopping:
                return
            logger.warning("SIGHUP: reloading (new worker processes; the old ones warm-stop)")
            old = [child for child in self.live if not child.retiring]
            self.standbys.clear()
            for child in old:
                child.retiring = True
                _stop(child, signal.SIGTERM)
            for index in range(1, self.count + 1):
                if index not in self._done:
                    send.send_nowait(_Start(index))
            for _ in range(self.standby):
                send.send_nowait(_Start(0))
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
        self.standbys.clear()
        for child in self.live:
            child.retiring = True
            _stop(child, signum)

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
    return inherited_pipe(READY_FD)


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


def _stop(child: Child, signum: int) -> None:
    """Stop `child`: a standby that waits by ending its pipe (it exits 0), others by `signum`."""
    if child.assign is not None:
        _stand_down(child)
        return
    with contextlib.suppress(ProcessLookupError):  # it exited already: its waiter reports it
        child.process.send_signal(signal.Signals(signum))


def _stand_down(child: Child) -> None:
    """Close the supervisor's end of a standby's pipe (once assigned, or to let it go)."""
    if child.assign is not None:
        with contextlib.suppress(OSError):
            os.close(child.assign)
        child.assign = None


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
