"""The sync API: `add.sync.delay(4, 4)` from a plain `def` (a Django view, a script, a thread).

Every sync call runs the matching coroutine on the app's I/O thread: one daemon thread per app
with an event loop of its own, started on first use. A thousand sync calls from any number of
threads share that loop's connections, as async calls share theirs. The thread stops at
`app.close()` / `app.sync.close()`, or at interpreter exit (an `atexit` hook closes the
connections first; being a daemon, the thread never keeps the process alive).

`add.sync.delay()` skips the hop to that loop when the broker lends a `BlockingPublisher`
(SQLite, plain Redis): the callers' threads build their messages, and a writer thread of
the sync path's own publishes them in batches (`_WriterSender`).

Called from a thread that runs an event loop, a sync method raises at once (it would block the
loop, or deadlock it): `await add.delay()` is the call to make there.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import datetime as dt
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, Unpack

from .options import ManySendOptions, SendOptions

if TYPE_CHECKING:
    from .drivers.base import BlockingPublisher, ResultBackend
    from .interfaces import AppLike
    from .message import OutgoingMessage
    from .result import AsyncResult

__all__ = [
    "IOThread",
    "SyncApp",
    "SyncResult",
    "SyncableTask",
    "TaskSync",
    "block",
    "check_no_loop",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

logger = logging.getLogger("aqueue")

#: How long stopping the I/O thread waits for its connections to close, then for the thread.
_STOP_TIMEOUT = 10.0

#: What a sync caller is told when the writer failed in a way no publish error explains.
_UNKNOWN = "the sync path's writer failed: the task may or may not have been sent"


class IOThread:
    """A daemon thread running an event loop of its own, for one app's sync calls."""

    def __init__(self, name: str, closing: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._closing = closing
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sender: _Sender | None = None
        _io_threads.add(self)

    def _forget(self) -> None:
        """In a forked child: the thread, its loop and its writer stayed in the parent.

        Their connections are the parent's too: they are dropped, not closed (closing them
        would close them for the parent), and the next sync call starts all anew.
        """
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self._thread is not None:
            atexit.unregister(self.stop)
        # Kept, never collected here: collected, the sender's SQLite connection would be
        # closed by the child, and SQLite warns against any use of a connection inherited
        # over fork() (its lock state is the parent's).
        _left_to_parent.append((self._loop, self._sender))
        self._loop = self._thread = self._sender = None

    @property
    def running(self) -> bool:
        """Whether the thread was started and not stopped."""
        return self._thread is not None

    def owns_running_loop(self) -> bool:
        """Whether the caller runs on this thread's loop."""
        loop = self._loop
        return loop is not None and asyncio._get_running_loop() is loop

    def loop(self) -> asyncio.AbstractEventLoop:
        """Return the thread's loop, starting the thread on first use."""
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_forever, args=(loop,), name=self.name, daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                atexit.register(self.stop)
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the thread's loop and wait for its outcome."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # an interrupt (Ctrl-C) while waiting: stop the call too
            raise

    def send(self, app: AppLike, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Send one task from a sync caller; calls from many threads at once go as one batch."""
        sender = self._sender
        if sender is None:
            sender = self._start_sender(app)
        return sender.send(name, args, kwargs)

    def _start_sender(self, app: AppLike) -> _Sender:
        loop = self.loop()
        # Open the app on the I/O loop first: its broker may let the callers publish
        # themselves (`Broker.blocking_publisher`).
        publisher, backend = self.run(_blocking_publisher(app))
        with self._lock:
            sender = self._sender
            if sender is None and self._loop is loop:
                if publisher is None:
                    sender = _Sender(app, loop)
                else:
                    sender = _WriterSender(app, loop, publisher, backend, self.name)
                    publisher = None
                self._sender = sender
        if publisher is not None:  # another caller's sender won, or the thread stopped
            publisher.close()
        if sender is None:
            raise RuntimeError("the app's I/O thread stopped")
        return sender

    def stop(self) -> None:
        """Close the app's connections on the thread's loop, stop the loop, join the thread."""
        with self._lock:
            loop, thread, sender = self._loop, self._thread, self._sender
            self._loop = self._thread = self._sender = None
        if loop is None or thread is None:
            return
        atexit.unregister(self.stop)
        if thread is threading.current_thread():
            raise RuntimeError("the app's I/O thread cannot stop itself")
        try:
            asyncio.run_coroutine_threadsafe(self._closing(), loop).result(_STOP_TIMEOUT)
        except Exception:
            logger.exception("closing the connections of the sync I/O thread failed")
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT)
            if sender is not None:
                sender.fail_waiting(RuntimeError("the app's I/O thread stopped"))
                sender.close()

    async def astop(self) -> None:
        """`stop`, awaited from another event loop (in a worker thread of that loop)."""
        await asyncio.to_thread(self.stop)


#: This process's I/O threads, for `_after_fork`.
_io_threads: weakref.WeakSet[IOThread] = weakref.WeakSet()

#: In a forked child, what its I/O threads held in the parent (see `IOThread._forget`).
_left_to_parent: list[tuple[asyncio.AbstractEventLoop | None, _Sender | None]] = []


def _after_fork() -> None:
    """In a forked child, which has none of the parent's threads: forget its I/O threads.

    Else a sync call in the child (`multiprocessing` with fork, a server that forks its
    workers after the app was used) would wait forever for a thread that is not there.
    """
    for io in list(_io_threads):
        io._forget()


os.register_at_fork(after_in_child=_after_fork)


async def _blocking_publisher(
    app: AppLike,
) -> tuple[BlockingPublisher | None, ResultBackend | None]:
    broker = await app.broker()
    backend = await app.result_backend()
    return broker.blocking_publisher(), backend


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class _Waiter:
    """How a sync caller waits for the I/O loop: a lock it blocks on, and the outcome.

    The lock is held while no outcome is there: the caller blocks acquiring it, the loop (or
    the writer, `_WriterSender`) releases it once it set the outcome (one futex wake, where a
    `concurrent.futures.Future` takes a condition, its lock and a lock of its own per wait).
    Each thread keeps one (a thread makes one sync call at a time); one interrupted while
    waiting is dropped, as the loop may release it later.
    """

    __slots__ = ("abandoned", "busy", "error", "lock", "result")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.busy = False  # a call is under way (a signal handler's call gets another waiter)
        self.abandoned = False  # its caller was interrupted: not sent if not taken yet
        self.result: Any = None
        self.error: BaseException | None = None

    def wait(self) -> None:
        """Block until the outcome is there; an interrupted caller abandons its call."""
        try:
            self.lock.acquire()
        except BaseException:
            self.abandoned = True  # an interrupt while waiting: not sent, if not taken yet
            if getattr(_waiters, "waiter", None) is self:
                _waiters.waiter = None  # the loop (or the writer) may still release its lock
            raise
        self.busy = False

    def settle(self, result: Any, error: BaseException | None = None) -> None:
        """Give the caller its outcome and wake it (on the I/O loop)."""
        self.result, self.error = result, error
        self.lock.release()


_waiters = threading.local()


def _waiter() -> _Waiter:
    waiter: _Waiter | None = getattr(_waiters, "waiter", None)
    if waiter is None or waiter.busy:
        waiter = _Waiter()
        if getattr(_waiters, "waiter", None) is None:
            _waiters.waiter = waiter
    return waiter


#: A sync caller's call waiting for the I/O loop: task name, args, kwargs, and its waiter.
_Call = tuple[str, Sequence[Any], Mapping[str, Any], _Waiter]


class _Sender:
    """Sync `delay()` calls from any number of threads, sent from the I/O loop in batches.

    A caller queues its call and, if no wake-up of the loop is pending, asks for one; the
    loop takes everything queued by then and sends it with `send_many` (one publish per task
    name) in a task of its own, without waiting for the batch before: batches overlap as
    concurrent `delay()` calls do, and the driver coalesces them further (RabbitMQ's publish
    pipeline, SQLite's group commit). So 8 threads calling `add.sync.delay()` make few
    publishes of several messages, one wake-up of the loop each, as `delay_many` would.
    """

    def __init__(self, app: AppLike, loop: asyncio.AbstractEventLoop) -> None:
        self._app = app
        self._loop = loop
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._woken = False  # a wake-up of the loop is pending
        self._sending: set[asyncio.Task[None]] = set()

    def send(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        waiter = _waiter()
        waiter.busy = True
        with self._lock:
            self._waiting.append((name, args, kwargs, waiter))
            wake, self._woken = not self._woken, True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._take)
            except RuntimeError:  # the loop closed (the I/O thread stopped meanwhile)
                with self._lock:
                    self._waiting = [call for call in self._waiting if call[3] is not waiter]
                    self._woken = False
                waiter.busy = False
                raise
        waiter.wait()
        result, error = waiter.result, waiter.error
        waiter.result = waiter.error = None
        if error is not None:
            raise error
        return result

    def fail_waiting(self, error: Exception) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for *_, waiter in waiting:
            waiter.settle(None, error)

    def close(self) -> None:
        """Release what the sender holds (the I/O thread stopped)."""

    def _take(self) -> None:
        """Send what is queued, in a task per task name (on the I/O loop)."""
        with self._lock:
            calls, self._waiting = self._waiting, []
            self._woken = False
        groups: dict[str, list[_Call]] = {}
        for call in calls:
            if not call[3].abandoned:
                groups.setdefault(call[0], []).append(call)
        for name, group in groups.items():
            task = self._loop.create_task(self._send(name, group))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, name: str, group: list[_Call]) -> None:
        from . import sending

        settled = 0
        try:
            try:
                sent = await sending.send_many(self._app, name, [(a, k) for _, a, k, _ in group])
            except Exception as exc:
                if len(group) == 1:
                    settled = 1
                    group[0][3].settle(None, exc)
                    return
                for _, args, kwargs, waiter in group:  # one by one: each gets its own outcome
                    try:
                        result = await sending.send(self._app, name, args, kwargs)
                    except Exception as error:
                        settled += 1
                        waiter.settle(None, error)
                    else:
                        settled += 1
                        waiter.settle(result)
            else:
                for (*_, waiter), result in zip(group, sent, strict=True):
                    settled += 1
                    waiter.settle(result)
        except BaseException:  # cancelled as the I/O thread stops
            stopped = RuntimeError("the app's I/O thread stopped")
            for *_, waiter in group[settled:]:
                waiter.settle(None, stopped)
            raise


class _WriterSender(_Sender):
    """Sync `delay()` calls handed to a thread of the sender's own, which publishes them.

    For a broker with a `BlockingPublisher` (SQLite: a connection of its own; plain Redis: a
    blocking connection). A caller builds its message in its own thread, queues it, rings the
    writer if it sleeps, and waits on its own lock; the writer publishes everything queued by
    then in one batch (one transaction, one pipelined write), gives each caller its outcome
    and wakes it: a failed publish fails each caller of its batch, a message refused alone
    (a Redis error reply) fails its caller alone. No hop to the I/O loop and back; one wake-up
    a caller, made by a thread that does nothing else (callers that published for each other
    in turn, a leader waking its group as a chain, made 0.7x the calls a second on Redis).
    Calls this path cannot take (tracing, `task_send_sent_event`) go through the loop.
    """

    def __init__(
        self,
        app: AppLike,
        loop: asyncio.AbstractEventLoop,
        publisher: BlockingPublisher,
        backend: ResultBackend | None,
        name: str,
    ) -> None:
        from . import sending, tracing

        super().__init__(app, loop)
        self._publisher = publisher
        self._backend = backend
        self._plain_message = sending.plain_message
        self._plain_result = sending.plain_result
        self._tracer_for = tracing.tracer_for if tracing.AVAILABLE else None
        self._queue: list[tuple[OutgoingMessage, _Waiter]] = []
        self._sleeping = False  # the writer waits for its bell (rung once per sleep)
        self._bell = threading.Lock()
        self._bell.acquire()
        self._stopped = False
        self._writer = threading.Thread(target=self._write, name=f"{name} writer", daemon=True)
        self._writer.start()

    def send(self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        app = self._app
        tracer_for = self._tracer_for
        if app.conf.task_send_sent_event or (tracer_for and tracer_for(app.conf) is not None):
            return super().send(name, args, kwargs)
        message, task = self._plain_message(app, self._backend, name, args, kwargs)
        waiter = _waiter()
        waiter.busy = True
        with self._lock:
            if self._stopped:
                waiter.busy = False
                raise RuntimeError("the app's I/O thread stopped")
            self._queue.append((message, waiter))
            ring, self._sleeping = self._sleeping, False
        if ring:
            self._bell.release()
        waiter.wait()
        error, waiter.error = waiter.error, None
        if error is not None:
            raise error
        return self._plain_result(app, name, message.id, task)

    def _write(self) -> None:
        """Publish what the callers queue, batch after batch, until stopped and drained."""
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    if self._stopped:
                        return
                    self._sleeping = True
            if not batch:
                self._bell.acquire()
                continue
            live = [(message, waiter) for message, waiter in batch if not waiter.abandoned]
            try:
                errors = self._publish(live) if live else ()
                if errors.count(None) != len(live):  # some failed (most often none did)
                    for (_, waiter), error in zip(live, errors, strict=True):
                        waiter.error = error
            except Exception as exc:  # outcomes that do not match the batch: a driver's bug
                logger.exception("the sync path's writer could not give its batch's outcomes")
                for _, waiter in live:
                    waiter.error = RuntimeError(f"{_UNKNOWN} ({exc!r})")
            finally:  # whatever happened, nobody is left waiting (and the writer goes on)
                for _, waiter in batch:
                    waiter.lock.release()

    def _publish(
        self, live: list[tuple[OutgoingMessage, _Waiter]]
    ) -> Sequence[BaseException | None]:
        """Publish a batch's messages; return each one's outcome."""
        try:
            return self._publisher.publish([message for message, _ in live])
        except Exception as exc:  # each caller raises its own copy (its own traceback)
            return [exc if index == 0 else _copied(exc) for index in range(len(live))]
        except BaseException as exc:  # not expected in this thread: fail the batch, go on
            return [RuntimeError(f"{_UNKNOWN} ({exc!r})") for _ in live]

    def fail_waiting(self, error: Exception) -> None:
        with self._lock:
            self._stopped = True
            ring, self._sleeping = self._sleeping, False
        if ring:
            self._bell.release()
        super().fail_waiting(error)

    def close(self) -> None:
        """Let the writer publish what is queued and stop, then close the publisher."""
        self.fail_waiting(RuntimeError("the app's I/O thread stopped"))
        if self._writer is not threading.current_thread():
            self._writer.join(_STOP_TIMEOUT)
        self._publisher.close()  # waits for a batch being published; later ones fail


def _copied(error: Exception) -> Exception:
    """Return a copy of `error` for another thread to raise, else `error` itself."""
    try:
        copied = copy.copy(error)
    except Exception:
        return error
    copied.__cause__ = error.__cause__
    return copied


def check_no_loop(call: str, instead: str) -> None:
    """Raise the one-line error of a sync call made from a thread that runs an event loop."""
    if asyncio._get_running_loop() is not None:
        raise RuntimeError(
            f"{call} blocks, and this thread runs an event loop: use `await {instead}` here"
        )


def block(app: AppLike, coroutine: Coroutine[Any, Any, T], call: str, instead: str) -> T:
    """Run `coroutine` on `app`'s I/O thread; refuse (in one line) inside a running loop."""
    try:
        check_no_loop(call, instead)
    except RuntimeError:
        coroutine.close()
        raise
    return app.run_blocking(coroutine)


class SyncResult(Generic[R]):
    """A task's result for sync code, with Celery's names: `r.get(timeout=5)`, `r.state`."""

    def __init__(self, result: AsyncResult[R]) -> None:
        self.async_result = result
        self.id = result.id

    @property
    def task_id(self) -> str:
        """The task id (Celery's other name for `id`)."""
        return self.id

    @property
    def app(self) -> AppLike:
        """The app the result belongs to."""
        return self.async_result.app

    def __repr__(self) -> str:
        return f"<SyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _run(self, coroutine: Coroutine[Any, Any, T], name: str) -> T:
        return block(self.app, coroutine, f"result.{name}()", f"result.{name}()")

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the task to finish and return its result (`AsyncResult.get`'s rules)."""
        return self._run(self.async_result.get(timeout, propagate=propagate), "get")

    def ready(self) -> bool:
        """Return whether the task has finished (succeeded, failed or was revoked)."""
        return self._run(self.async_result.ready(), "ready")

    def successful(self) -> bool:
        """Return whether the task finished and succeeded."""
        return self._run(self.async_result.successful(), "successful")

    def failed(self) -> bool:
        """Return whether the task finished with a failure."""
        return self._run(self.async_result.failed(), "failed")

    @property
    def state(self) -> str:
        """The task's state now: PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        return self._run(self.async_result.state(), "state")

    @property
    def status(self) -> str:
        """The same as `state` (Celery's other name)."""
        return self.state

    @property
    def result(self) -> Any:
        """The return value once succeeded, the exception once failed, else None."""
        return self._run(self.async_result.meta(), "meta").result

    @property
    def info(self) -> Any:
        """The same as `result` (Celery's other name)."""
        return self.result

    @property
    def traceback(self) -> str | None:
        """The formatted remote traceback of a failed task, or None."""
        return self._run(self.async_result.meta(), "meta").traceback

    @property
    def date_done(self) -> dt.datetime | None:
        """When the task finished (an aware UTC datetime), or None."""
        return self._run(self.async_result.meta(), "meta").date_done

    def forget(self) -> None:
        """Delete the stored result."""
        self._run(self.async_result.forget(), "forget")

    def revoke(self, terminate: bool = False) -> None:
        """Stop the task from running on any worker (`AsyncResult.revoke`)."""
        self._run(self.async_result.revoke(terminate=terminate), "revoke")


class SyncableTask(Protocol[R]):
    """What `TaskSync` needs of a task (`Task` is one): its names and its async methods."""

    @property
    def name(self) -> str:
        """The task's registered name."""
        ...

    @property
    def fn(self) -> Callable[..., Any]:
        """The decorated function."""
        ...

    @property
    def app(self) -> AppLike:
        """The app the task sends through."""
        ...

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Coroutine[Any, Any, AsyncResult[R]]:
        """Send the task with call options."""
        ...

    def delay_many(
        self, calls: Iterable[Sequence[Any]], **options: Unpack[ManySendOptions]
    ) -> Coroutine[Any, Any, list[AsyncResult[R]]]:
        """Send one invocation per tuple of positional arguments."""
        ...

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Coroutine[Any, Any, AsyncResult[R]]:
        """Run the task here, through the worker's runner."""
        ...

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # Celery's name
        """Return the result of an invocation sent earlier."""
        ...


class TaskSync(Generic[P, R]):
    """`task.sync`: the task's sending methods for sync code, typed like the async ones."""

    def __init__(self, task: SyncableTask[R]) -> None:
        self.task = task

    def __repr__(self) -> str:
        return f"<sync @task: {self.task.name}>"

    def _run(self, coroutine: Coroutine[Any, Any, T], method: str) -> T:
        name = self.task.fn.__name__
        return block(self.task.app, coroutine, f"{name}.sync.{method}()", f"{name}.{method}(...)")

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
        """Send the task with these arguments (`Task.delay`); return its sync result.

        Calls from many threads at once are sent together, in batches.
        """
        task = self.task
        app = task.app
        if app.conf.task_always_eager:
            return SyncResult(self._run(task.apply_async(args, kwargs), "delay"))
        if asyncio._get_running_loop() is not None:  # the error's words only when it is one
            name = task.fn.__name__
            check_no_loop(f"{name}.sync.delay()", f"{name}.delay(...)")
        result: AsyncResult[R] = app.send_blocking(task.name, args, kwargs)
        return SyncResult(result)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> SyncResult[R]:
        """Send the task with call options (`Task.apply_async`)."""
        coroutine = self.task.apply_async(args, kwargs, **options)
        return SyncResult(self._run(coroutine, "apply_async"))

    def delay_many(
        self, calls: Iterable[Sequence[Any]], **options: Unpack[ManySendOptions]
    ) -> list[SyncResult[R]]:
        """Send one invocation per tuple of positional arguments, in one publish."""
        sent = self._run(self.task.delay_many(calls, **options), "delay_many")
        return [SyncResult(result) for result in sent]

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> SyncResult[R]:
        """Run the task here, through the worker's runner (`Task.apply`)."""
        return SyncResult(self._run(self.task.apply(args, kwargs, **options), "apply"))

    def AsyncResult(self, task_id: str) -> SyncResult[R]:  # Celery's name
        """Return the sync result of an invocation of this task sent earlier."""
        return SyncResult(self.task.AsyncResult(task_id))


class SyncApp:
    """`app.sync`: the app's methods for sync code (`send_task`, `AsyncResult`, `close`)."""

    def __init__(self, app: AppLike) -> None:
        self.app = app

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> SyncResult[Any]:
        """Send a task by name (`App.send_task`); return its sync result."""
        from . import sending

        coroutine = sending.send(self.app, name, args, kwargs, **options)
        result = block(self.app, coroutine, "app.sync.send_task()", "app.send_task(...)")
        return SyncResult(result)

    def AsyncResult(self, task_id: str) -> SyncResult[Any]:  # Celery's name
        """Return the sync result handle of a task sent earlier, by id."""
        from .result import AsyncResult

        return SyncResult(AsyncResult(task_id, self.app))

    def close(self) -> None:
        """Close the I/O thread's connections and stop it (it starts again on next use)."""
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                "app.sync.close() blocks, and this thread runs an event loop: "
                "use `await app.close()` here"
            )
        self.app.stop_io_thread()
