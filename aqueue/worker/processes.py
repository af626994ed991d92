"""The process executor: `@app.task(executor="process")` runs in a pool of child processes.

For CPU-bound code, and for code that must be stoppable: past its hard `time_limit` a process
task's child is killed (SIGKILL) and replaced, and the task fails with `TimeLimitExceeded`.

There is no pickle here. Each child is `python -m aqueue.worker.child module:app`: it imports the
app by the path the worker was started with, so it runs only the tasks registered on that app,
and arguments and results cross its stdin and stdout as length-prefixed msgpack frames of the
same allow-listed types as messages (see `aqueue.worker.child` for the protocol). A failure comes
back as data and is rebuilt the way results are: a builtin exception type as itself, any other
as `TaskError`.

The pool has `size` places (`--processes`, `worker_processes`, else one per CPU), each empty or
holding an idle child; a task takes a place (waiting while none is free), starts a child there
if it is empty, and runs alone on it. So the places are the executor's concurrency budget. No
child starts before the first process task, and a child that died (a crash, SIGKILL, the time
limit) leaves its place empty for the next task to start a new one. `aclose()` (or leaving
`async with`) ends the children and reaps every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import os
import signal
import struct
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio

from .. import codec
from ..exceptions import ConfigurationError, Retry, TimeLimitExceeded, WorkerLostError
from ..request import Request
from ..result_meta import ResultMeta, rebuild_exception

__all__ = ["FRAME_HEADER", "ProcessDied", "ProcessPool"]


class ProcessDied(Exception):
    """The child running a task died before it replied (not one that failed to start).

    The worker turns it into a `WorkerLostError` for a process task, into a recorded death
    for a quarantined one (`aqueue.worker.quarantine`).
    """


#: Every frame: this header (the body's length, 4 bytes big-endian), then a msgpack body.
FRAME_HEADER = struct.Struct(">I")

#: How long a closing child may take to exit after its stdin closes, before it is killed.
CLOSE_GRACE = 5.0


@dataclass(eq=False)
class _Child:
    proc: asyncio.subprocess.Process
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    reaped: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid


class ProcessPool:
    """Child processes that run the process tasks of the app at `app_path`, one task each.

    Use `async with ProcessPool(...) as pool` (or call `aclose()`): `await pool.run(...)`.
    """

    def __init__(
        self,
        app_path: str,
        size: int,
        *,
        start_timeout: float = 60.0,
        quarantine: bool = False,
        keep: int | None = None,
    ) -> None:
        if size < 1:
            raise ConfigurationError(f"a process pool needs at least 1 process, not {size}")
        self.app_path = app_path
        self.size = size
        #: How many idle children it keeps (`size` unless fewer): a child that ends a task
        #: while as many others are idle exits.
        self.keep = size if keep is None else keep
        self._busy = 0  # children taken (`_take`) and not given back
        #: Its children run any task of the app (`aqueue.worker.quarantine`), not only the
        #: process tasks.
        self.quarantine = quarantine
        self.start_timeout = start_timeout
        #: The free places: idle children first (the latest used first, so few children
        #: start under a light load), then empty ones (None: no child yet, or it died).
        self._free: asyncio.PriorityQueue[tuple[int, int, _Child | None]]
        self._free = asyncio.PriorityQueue()
        self._order = itertools.count()
        for _ in range(size):
            self._put(None)
        self._children: dict[int, _Child] = {}
        self._closed = False
        #: Tasks waiting for a free place now.
        self.waiting = 0

    def __repr__(self) -> str:
        return f"<ProcessPool {self.app_path} size={self.size} children={len(self._children)}>"

    @property
    def pids(self) -> list[int]:
        """The process ids of the live children."""
        return list(self._children)

    async def __aenter__(self) -> ProcessPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def run(
        self,
        task_name: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        request: Request | None = None,
        *,
        hard_limit: float | None = None,
        soft_limit: float | None = None,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        """Run the registered task `task_name` in a child; return its result or raise its error.

        Past `hard_limit` seconds the child is killed and `TimeLimitExceeded` raised; past
        `soft_limit`, `SoftTimeLimitExceeded` is raised inside the task. A child that dies
        mid-task raises `ProcessDied`. Cancelling the call kills the child too.
        `before` is awaited once a child is ready for the task, before it is sent (a child
        that cannot start raises before it).
        """
        frame = _frame(
            {
                "task": task_name,
                "args": list(args),
                "kwargs": dict(kwargs),
                "request": _request_fields(request),
                "soft": soft_limit,
            },
            where="the process task's request",
        )
        child = await self._take()
        if before is not None:
            try:
                await before()
            except BaseException:
                await self._give_back(child, healthy=True)
                raise
        healthy = False
        try:
            reply = await self._call(child, frame, task_name, hard_limit)
            healthy = True
        finally:
            await self._give_back(child, healthy=healthy)
        return _outcome(task_name, reply)

    async def warm(self) -> None:
        """Start a child unless an idle one waits: a child that cannot start raises here."""
        child = await self._take()
        await self._give_back(child, healthy=True)

    async def aclose(self) -> None:
        """Stop every child (idle ones by closing their stdin, busy ones by SIGKILL); reap them."""
        self._closed = True
        idle: set[_Child] = set()
        while not self._free.empty():
            entry = self._free.get_nowait()[2]
            if entry is not None:
                idle.add(entry)
        for _ in range(self.size):  # wakes the waiters, who find the pool closed
            self._put(None)
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as group:
                for child in list(self._children.values()):
                    group.start_soon(functools.partial(self._reap, child, kill=child not in idle))

    async def _take(self) -> _Child:
        if self._closed:
            raise RuntimeError("the process pool is closed")
        self.waiting += 1
        try:
            entry = (await self._free.get())[2]
        finally:
            self.waiting -= 1
        if self._closed:
            self._put(entry)
            raise RuntimeError("the process pool is closed")
        if entry is not None:
            self._busy += 1
            return entry
        try:
            child = await self._spawn()
        except BaseException:
            self._put(None)
            raise
        self._busy += 1
        return child

    async def _give_back(self, child: _Child, *, healthy: bool) -> None:
        self._busy -= 1
        idle = len(self._children) - self._busy - 1  # the others
        if healthy and not self._closed and idle < self.keep:
            self._put(child)
            return
        with anyio.CancelScope(shield=True):
            await self._reap(child, kill=not healthy or self._closed)
        self._put(None)  # an empty place: the next task starts a new child

    def _put(self, entry: _Child | None) -> None:
        order = next(self._order)
        self._free.put_nowait((0, -order, entry) if entry is not None else (1, order, None))

    async def _spawn(self) -> _Child:
        with anyio.CancelScope(shield=True):  # never lose the handle of a started process
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aqueue.worker.child",
                self.app_path,
                *(["--quarantine"] if self.quarantine else []),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        child = _Child(proc)
        self._children[child.pid] = child
        try:
            with anyio.fail_after(self.start_timeout):
                hello = await _read_frame(child)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):  # an end of stdout: it is gone or going
                await self._reap(child, kill=not isinstance(exc, asyncio.IncompleteReadError))
            if isinstance(exc, asyncio.IncompleteReadError | ValueError | TimeoutError):
                raise WorkerLostError(
                    f"the process for {self.app_path} exited before it was ready "
                    f"({_how(child, exc)}); its error, if any, is in the worker's log"
                ) from None
            raise
        if not hello.get("ready"):
            with anyio.CancelScope(shield=True):  # it exits by itself after saying why
                await self._reap(child, kill=False)
            raise ConfigurationError(
                f"the process pool could not load the app {self.app_path!r}: "
                f"{hello.get('exc_type')}: {hello.get('exc_message')}"
            )
        return child

    async def _call(
        self, child: _Child, frame: bytes, task_name: str, hard_limit: float | None
    ) -> dict[str, Any]:
        stdin = child.proc.stdin
        assert stdin is not None
        with anyio.move_on_after(hard_limit):
            try:
                stdin.write(frame)
                await stdin.drain()
                return await _read_frame(child)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
                with anyio.CancelScope(shield=True):  # its pipes closed: it is gone or going
                    await self._reap(child, kill=isinstance(exc, ValueError))
                raise ProcessDied(
                    f"the process running task {task_name} (pid {child.pid}) exited before "
                    f"it replied ({_how(child, exc)}); a new process takes its place"
                ) from None
        assert hard_limit is not None
        raise TimeLimitExceeded(
            f"task {task_name} passed its time limit ({hard_limit:g}s); its process "
            f"(pid {child.pid}) was killed and replaced"
        )

    async def _reap(self, child: _Child, *, kill: bool) -> None:
        """End `child` (SIGKILL if `kill`, else close its stdin and wait) and reap it."""
        async with child.lock:
            if not child.reaped:
                proc = child.proc
                if kill:
                    _kill(proc)
                if proc.stdin is not None:
                    proc.stdin.close()  # the child leaves at the end of its stdin
                with anyio.move_on_after(CLOSE_GRACE):
                    await proc.communicate()  # reads stdout to its end, then waits
                if proc.returncode is None:
                    _kill(proc)
                    await proc.communicate()
                child.reaped = True
            self._children.pop(child.pid, None)


def _kill(proc: asyncio.subprocess.Process) -> None:
    # os.kill, not proc.kill(): Popen.kill() polls first, and a poll that reaps a child which
    # just died steals its exit status from asyncio's child watcher (which then reports 255).
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


def _frame(message: Mapping[str, Any], *, where: str) -> bytes:
    body = codec.pack(message, where=where)
    return FRAME_HEADER.pack(len(body)) + body


async def _read_frame(child: _Child) -> dict[str, Any]:
    """Read one reply; raise IncompleteReadError at the end, ValueError if it is garbled."""
    stdout = child.proc.stdout
    assert stdout is not None
    (size,) = FRAME_HEADER.unpack(await stdout.readexactly(FRAME_HEADER.size))
    reply = codec.unpack(await stdout.readexactly(size))
    if not isinstance(reply, dict):
        raise ValueError("the child sent a reply that is not a map")
    return reply


def _request_fields(request: Request | None) -> dict[str, Any]:
    if request is None:
        return {}
    fields = {
        item.name: getattr(request, item.name)
        for item in dataclasses.fields(Request)
        if item.name not in ("args", "kwargs", "called_directly")
    }
    fields["headers"] = dict(fields["headers"])
    return fields


def _outcome(task_name: str, reply: Mapping[str, Any]) -> Any:
    if reply.get("ok"):
        return reply.get("result")
    error: Exception | None = None
    if reply.get("exc_type"):
        meta = ResultMeta(
            task=task_name,
            exc_type=str(reply["exc_type"]),
            exc_message=str(reply.get("exc_message") or ""),
            traceback=reply.get("traceback"),
        )
        error = rebuild_exception(meta)
    countdown = reply.get("retry")
    if countdown is not None:
        raise Retry(float(countdown), error)
    raise error or WorkerLostError(
        f"task {task_name}: the child replied with neither result nor error"
    )


def _how(child: _Child, exc: BaseException) -> str:
    code = child.proc.returncode
    if isinstance(exc, ValueError):
        return f"it sent an unreadable reply: {exc}"
    if isinstance(exc, TimeoutError):
        return "it did not start in time"
    if code is None:
        return "its pipes closed"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by signal {-code} ({name})"
    return f"exit code {code}"
