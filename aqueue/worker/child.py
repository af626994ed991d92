"""A child of the worker's process pool: `python -m aqueue.worker.child module:app`.

With `--quarantine` (`python -m aqueue.worker.child module:app --quarantine`) it runs any task
of the app, coroutine tasks on a loop of its own: the worker's redelivered messages
(`aqueue.worker.quarantine`). Without it, only the tasks declared `executor="process"`.

The child imports the app the way `aqueue worker` does (`aqueue.loader.load_app`), so it runs
only the tasks registered on that app, and only those declared `executor="process"`. Nothing
named in a request is ever imported.

Its original stdin and stdout are the protocol channel: frames of a 4-byte big-endian length
and a msgpack body (`aqueue.codec`, the same allow-listed types as messages). The task's own
prints go to stderr, and its stdin reads /dev/null, at the file-descriptor level too, so neither
a `print()` nor a C extension writing to fd 1 can corrupt a frame.

    child -> parent  {"ready": True, "pid": N}  once the app is loaded (or "ready": False and
                     the error, then it exits)
    parent -> child  {"task", "args", "kwargs", "request", "soft"}, one at a time
    child -> parent  {"ok": True, "result"} or {"ok": False, "exc_type", "exc_message",
                     "traceback", "retry"}

A reader thread takes the requests off stdin; when stdin ends (the pool closed it, or the worker
died) the child exits: normally if it is idle, at once (`os._exit`) in the middle of a task, so a
worker killed with SIGKILL leaves no orphan spinning. SIGINT and SIGTERM are ignored: the worker
owns its children's lifetime (Ctrl-C in a terminal reaches the whole process group, and a warm
shutdown lets running tasks finish). A soft time limit raises `SoftTimeLimitExceeded` in the
task from a SIGALRM timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from .. import codec
from ..exceptions import Retry, SerializationError, SoftTimeLimitExceeded
from ..hooks import WorkerContext, current_worker
from ..limits import run_coroutine
from ..loader import import_from_cwd, load_app
from ..request import Request, current_request
from ..result_meta import ResultMeta
from ..task import Task
from .processes import FRAME_HEADER

__all__ = ["main", "read_frame", "write_frame"]


def read_frame(stream: IO[bytes]) -> bytes | None:
    """Read one length-prefixed frame; None at the end of the stream."""
    header = _read_exactly(stream, FRAME_HEADER.size)
    if header is None:
        return None
    return _read_exactly(stream, FRAME_HEADER.unpack(header)[0])


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def write_frame(stream: IO[bytes], body: bytes) -> None:
    """Write one length-prefixed frame and flush it."""
    stream.write(FRAME_HEADER.pack(len(body)) + body)
    stream.flush()


class _Channel:
    """The protocol channel: the original stdin and stdout, moved off fds 0 and 1."""

    def __init__(self) -> None:
        self.input = os.fdopen(os.dup(0), "rb", buffering=0)
        self.output = os.fdopen(os.dup(1), "wb")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)  # what the task prints goes to the worker's stderr
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
        sys.stdout = sys.stderr
        self._requests: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = self._ended = False
        threading.Thread(target=self._read, name="aqueue-procworker-reader", daemon=True).start()

    def _read(self) -> None:
        while (frame := read_frame(self.input)) is not None:
            self._requests.put(frame)
        # The pool closed stdin, or the worker is gone. Idle, the main thread ends normally;
        # in the middle of a task (which may never end by itself), the process leaves now.
        with self._lock:
            self._ended, busy = True, self._busy
        if busy:
            sys.stderr.flush()
            os._exit(1)
        self._requests.put(None)

    def receive(self) -> Any:
        """Return the next request (blocking until there is one); None once stdin has ended."""
        frame = self._requests.get()
        with self._lock:
            if frame is None or self._ended:
                return None
            self._busy = True
        return codec.unpack(frame)

    def done(self) -> None:
        """Say the request taken last is finished (its reply sent)."""
        with self._lock:
            self._busy = False

    def send(self, reply: Mapping[str, Any]) -> None:
        """Send a reply; one that cannot be encoded becomes a failure saying why."""
        try:
            body = codec.pack(reply, where="result")
        except SerializationError as exc:
            body = codec.pack(_failure(exc))
        try:
            write_frame(self.output, body)
        except BrokenPipeError:  # the worker died (a task killed it): nobody to reply to
            with contextlib.suppress(OSError):
                self.output.close()  # its buffer is dropped, not flushed again at exit
            raise _WorkerGone from None


class _WorkerGone(Exception):
    """The worker that started this child is gone: its end of the channel is closed."""


def _failure(exc: BaseException) -> dict[str, Any]:
    meta = ResultMeta.failure("", exc, "".join(traceback.format_exception(exc)))
    reply: dict[str, Any] = {
        "ok": False,
        "exc_type": meta.exc_type,
        "exc_message": meta.exc_message,
        "traceback": meta.traceback,
        "retry": None,
    }
    if isinstance(exc, Retry):
        reply["retry"] = exc.countdown
        inner = _failure(exc.exc) if exc.exc is not None else {}
        reply.update({key: inner.get(key) for key in ("exc_type", "exc_message", "traceback")})
    return reply


class _SoftLimit:
    """Raises `SoftTimeLimitExceeded` in the main thread, where tasks run, after `seconds`."""

    def __init__(self) -> None:
        self.armed: str | None = None  # the task name, while its timer runs
        self.seconds = 0.0
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        name, self.armed = self.armed, None
        if name is not None:
            raise SoftTimeLimitExceeded(
                f"task {name} passed its soft time limit ({self.seconds:g}s)"
            )

    def arm(self, name: str, seconds: float | None) -> None:
        """Start the timer for a task (none if `seconds` is None)."""
        if seconds:
            self.armed, self.seconds = name, seconds
            signal.setitimer(signal.ITIMER_REAL, seconds)

    def disarm(self) -> None:
        """Stop the timer; a signal already on its way does nothing."""
        self.armed = None
        signal.setitimer(signal.ITIMER_REAL, 0)


def _task(tasks: Mapping[str, Task[Any, Any]], name: Any, quarantine: bool) -> Task[Any, Any]:
    task = tasks.get(name) if isinstance(name, str) else None
    if task is None:
        raise LookupError(f"no task named {name!r} is registered on the app in this process")
    if not quarantine and (task.options.executor != "process" or task.is_async):
        raise LookupError(f"task {name} is not a process task (executor='process', a plain def)")
    return task


def _run(tasks: Mapping[str, Task[Any, Any]], request: Mapping[str, Any], child: _Runs) -> Any:
    task = _task(tasks, request.get("task"), child.quarantine)
    args, kwargs = request.get("args") or (), request.get("kwargs") or {}
    fields = dict(request.get("request") or {}, args=args, kwargs=kwargs, called_directly=False)
    token = current_request.set(Request(**fields))
    try:
        if task.is_async:  # a quarantined coroutine task: on this process's loop
            coroutine = task.invoke(args, kwargs)
            soft_limit = request.get("soft")
            limited = run_coroutine(coroutine, soft=soft_limit, hard=None, name=task.name)
            return child.loop.run_until_complete(limited)
        child.soft.arm(task.name, request.get("soft"))
        try:
            return task.invoke(args, kwargs)
        finally:
            child.soft.disarm()
    except Exception as exc:
        # autoretry_for is checked here, where the task's own exception types exist: the
        # worker sees only their names. Out of retries, task.retry raises exc itself.
        autoretry = task.options.autoretry_for
        if autoretry and isinstance(exc, autoretry) and not isinstance(exc, Retry):
            task.retry(exc=exc, countdown=task.backoff(int(fields.get("retries") or 0)))
        raise
    finally:
        current_request.reset(token)


@dataclass
class _Runs:
    """What a child runs tasks with: its loop, its soft limit, and whether it runs any task."""

    loop: asyncio.AbstractEventLoop
    soft: _SoftLimit
    #: Started with `--quarantine`: it runs any task of the app, a coroutine one too (the
    #: worker's redelivered messages, `aqueue.worker.quarantine`), not only process tasks.
    quarantine: bool


def _handle(
    tasks: Mapping[str, Task[Any, Any]], request: Mapping[str, Any], child: _Runs
) -> dict[str, Any]:
    try:
        return {"ok": True, "result": _run(tasks, request, child)}
    except BaseException as exc:  # SystemExit, KeyboardInterrupt too: every outcome is data
        return _failure(exc)


def main(argv: list[str] | None = None) -> int:
    """Load the app at argv[0], then run requests from stdin until it closes."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    channel = _Channel()
    args = sys.argv[1:] if argv is None else argv
    loop = asyncio.new_event_loop()  # for the app's async worker hooks, if it has any
    context = WorkerContext(f"aqueue-process@{os.getpid()}", process=True)
    # The current directory stays importable for the child's life, as for the worker's:
    # task modules, and a framework's own lazy imports (Django's), come from it.
    with import_from_cwd():
        try:
            quarantine = args[1:] == ["--quarantine"]
            if len(args) != 1 and not quarantine:
                raise ValueError("usage: python -m aqueue.worker.child module:app [--quarantine]")
            app = load_app(args[0])
            app.setup_worker()  # Django's set-up (DJANGO_SETTINGS_MODULE), the task modules
            tasks = app.tasks
            current_worker.set(context)  # the tasks reach what the start hooks opened
            loop.run_until_complete(app.hooks.start_worker(context))
        except Exception as exc:
            loop.close()
            with contextlib.suppress(_WorkerGone):
                channel.send({"ready": False, **_failure(exc)})
            return 1
        runs = _Runs(loop, _SoftLimit(), quarantine)
        try:
            channel.send({"ready": True, "pid": os.getpid()})
            while (request := channel.receive()) is not None:
                channel.send(_handle(tasks, request, runs))
                channel.done()
        except _WorkerGone:
            pass  # a quiet end: the worker's own exit was logged by its supervisor
        finally:
            loop.run_until_complete(app.hooks.stop_worker(context))
            loop.close()
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process
    sys.exit(main())
