"""Tasks: typed handles on registered functions.

`@app.task` on `async def add(x: int, y: int) -> int` gives an `AsyncTask[[int, int], int]`:
`await add.delay(4, 4)` is checked by mypy and returns `AsyncResult[int]`, and `add(4, 4)` still
runs the function in-process, as in Celery. A plain `def` gives a `SyncTask`, run by workers in a
thread. Call options never share a namespace with task arguments: they go to `apply_async`.
"""

from __future__ import annotations

import inspect
import random
import warnings
from collections.abc import (
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, Generic, Literal, NoReturn, ParamSpec, TypeVar, Unpack

from . import current, sending
from . import result as _result
from .canvas.node import SignatureOptions
from .canvas.signature import Signature
from .exceptions import ConfigurationError, MaxRetriesExceeded, Retry
from .interfaces import AppLike
from .options import ManySendOptions, SendOptions, TaskOptions
from .request import Request, current_request, current_revocations, running_request
from .sync import TaskSync

__all__ = [
    "AsyncTask",
    "Request",
    "Sending",
    "SyncTask",
    "Task",
    "TaskOptions",
    "current_request",
    "current_revocations",
    "make_task",
    "running_request",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Task(Generic[P, R]):
    """A registered task. Use `AsyncTask` and `SyncTask` in annotations."""

    def __init__(self, app: AppLike | None, fn: Callable[..., Any], options: TaskOptions) -> None:
        self._app = app
        self.fn = fn
        self.declared = options
        self._annotations: Any = None
        self._options = options
        self.name = options.name or _default_name(fn, app)
        self.bind = options.bind
        self.is_async = inspect.iscoroutinefunction(fn)
        _check_executor(fn, options.executor, is_async=self.is_async)
        #: The parameters a call takes (`inspect.Signature`; `signature()` is Celery's method).
        self.call_signature = _call_signature(fn, bind=options.bind)
        #: For a signature of plain positional parameters, how many it takes: a fast check.
        self.arity = _plain_arity(self.call_signature)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._sync: TaskSync[P, R] | None = None

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @property
    def options(self) -> TaskOptions:
        """The options in force: as declared, with the app's `task_annotations` applied."""
        app = self._app or current.current_app_or_none()
        annotations = app.conf.task_annotations if app is not None else None
        if annotations is not self._annotations:  # recomputed when the setting is replaced
            self._options = self.declared.annotated(annotations, self.name)
            self._annotations = annotations
        return self._options

    @property
    def app(self) -> AppLike:
        """The app this task sends through: its own, or the current one for a shared task."""
        return self._app if self._app is not None else current.current_app()

    @property
    def request(self) -> Request:
        """The invocation this task is running now; a direct call's request otherwise."""
        return running_request() or Request(task=self.name)

    def retry(
        self,
        exc: Exception | None = None,
        *,
        countdown: float | None = None,
        max_retries: int | Literal["default"] | None = "default",
    ) -> NoReturn:
        """Run this task again later (call it from a bound task, as Celery's `self.retry`).

        Raises `Retry`, which the worker handles, after `countdown` seconds (else
        `default_retry_delay`). Once `max_retries` retries were made, raises `exc` instead (or
        `MaxRetriesExceeded`), so the task fails with it. Outside a worker it raises `exc`.
        """
        request = running_request()
        if request is None or request.called_directly:
            raise exc or RuntimeError(f"{self.name}.retry() called outside a worker")
        limit = self.options.max_retries if max_retries == "default" else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceeded(
                f"task {self.name}[{request.id}] gave up after {request.retries} retries"
            )
        delay = self.options.default_retry_delay if countdown is None else countdown
        raise Retry(max(delay, 0.0), exc)

    def backoff(self, retries: int) -> float:
        """Return the countdown before retry number `retries + 1` under `autoretry_for`."""
        options = self.options
        if not options.retry_backoff:
            return options.default_retry_delay
        base = 1.0 if options.retry_backoff is True else float(options.retry_backoff)
        delay = min(options.retry_backoff_max, base * 2**retries)
        return random.uniform(0, delay) if options.retry_jitter else delay

    def is_revoked(self) -> bool:
        """Whether the invocation running now was revoked: the cooperative flag for `def` tasks.

        A thread cannot be interrupted, so `revoke(terminate=True)` cannot stop a `def` task; a
        long one can check this now and then and return early. (Coroutines are cancelled, and
        process tasks killed, so they need not ask.)
        """
        request = running_request()
        return (
            request is not None
            and request.id is not None
            and (request.id in current_revocations.get())
        )

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise `TypeError` (as a call would) if the task does not take these arguments."""
        if not (self.arity is not None and not kwargs and len(args) == self.arity):
            self.call_signature.bind(*args, **kwargs)

    @property
    def ignore_result(self) -> bool:
        """Whether workers store this task's results (the option, else `task_ignore_result`)."""
        ignore = self.options.ignore_result  # read once: every `delay()` asks
        return ignore if ignore is not None else self.app.conf.task_ignore_result

    def s(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """Return a signature of this call (Celery's `add.s(2, 2)`); typed like `delay`.

        In a chain the previous step's result goes before these arguments: a partial such as
        `add.s(2)` is Celery's, but mypy sees it as a call missing an argument; write
        `add.signature((2,))` for it (untyped).
        """
        return Signature(self.name, args, kwargs, app=self._app)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature[R]:
        """Return an immutable signature: in a chain it takes no previous result."""
        return Signature(self.name, args, kwargs, immutable=True, app=self._app)

    def signature(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Unpack[SignatureOptions],
    ) -> Signature[R]:
        """Return a signature with call options (Celery's `signature`); arguments unchecked."""
        return Signature(self.name, args or (), kwargs, options, immutable=immutable, app=self._app)

    def subtask(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        immutable: bool = False,
        **options: Unpack[SignatureOptions],
    ) -> Signature[R]:
        """Celery's older name for `signature`."""
        return self.signature(args, kwargs, immutable=immutable, **options)

    @property
    def sync(self) -> TaskSync[P, R]:
        """The sending methods for sync code: `add.sync.delay(4, 4).get(timeout=5)`."""
        sync = self._sync
        if sync is None:  # made once: subscripting the generic costs more than the call
            sync = self._sync = TaskSync[P, R](self)
        return sync

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Sending[_result.AsyncResult[R]]:
        """Send the task to a worker with these arguments; return its result handle.

        Await it: `await add.delay(4, 4)` (from sync code, `add.sync.delay(4, 4)`). One never
        awaited sends nothing, and warns when dropped.
        """
        app = self.app
        if app.conf.task_always_eager:
            return Sending(self._apply(args, kwargs, {}), self, "delay")
        # send_plain itself, with no coroutine of the task's around it: every delay() is one.
        sent: Coroutine[Any, Any, _result.AsyncResult[R]] = sending.send_plain(
            app, self.name, args, kwargs
        )
        return Sending(sent, self, "delay")

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> Sending[_result.AsyncResult[R]]:
        """Send the task with call options (`options.SendOptions`), as Celery's `apply_async`.

        `countdown` (seconds) or `eta` (an aware datetime, or a POSIX timestamp) delays it;
        `expires` (seconds from now, or a datetime) drops it if no worker started it in time.
        """
        return Sending(self._send(args, kwargs, options), self, "apply_async")

    def delay_many(
        self, calls: Iterable[Sequence[Any]], **options: Unpack[ManySendOptions]
    ) -> Sending[list[_result.AsyncResult[R]]]:
        """Send one invocation per tuple of positional arguments, all in one publish.

        For producers that fan out: `await add.delay_many([(1, 2), (3, 4)])`. `options` are
        `apply_async`'s (`countdown`, `queue`, `priority`, ...), shared by every invocation.
        """
        return Sending(self._send_many(calls, options), self, "delay_many")

    async def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> _result.AsyncResult[R]:
        """Run the task here and now through the worker's own runner; return its result.

        As a worker would run it: the arguments and the result round-trip through the codec,
        retries run again (at once: their countdown is not waited for), time limits hold.
        Nothing is sent and no worker is needed; the result lives in this process only.
        """
        return await self._apply(args, kwargs, options)

    async def _apply(
        self,
        args: Sequence[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: SendOptions,
    ) -> _result.AsyncResult[R]:
        from . import eager  # it imports the runner, which imports this module

        return await eager.apply(self, args or (), kwargs or {}, options.get("task_id"))

    async def _send(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: SendOptions
    ) -> _result.AsyncResult[R]:
        app = self.app
        if app.conf.task_always_eager:
            return await self._apply(args, kwargs, options)
        return await sending.send(app, self.name, args, kwargs, **options)

    async def _send_many(
        self, calls: Iterable[Sequence[Any]], options: ManySendOptions
    ) -> list[_result.AsyncResult[R]]:
        app = self.app
        if app.conf.task_always_eager:
            return [await self._apply(args, {}, {}) for args in calls]
        return await sending.send_many(app, self.name, [(args, {}) for args in calls], **options)

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[R]:  # Celery's name
        """Return the result handle of an invocation of this task sent earlier."""
        return _result.AsyncResult(
            task_id, self.app, task_name=self.name, ignored=self.ignore_result
        )

    def invoke(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Call the function with these arguments (and the task first, if bound); no checks."""
        return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)


class AsyncTask(Task[P, R]):
    """A task defined with `async def`: workers run it on their event loop."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Run the task here, now, as a plain coroutine call (as Celery's `task()` does)."""
        coroutine: Coroutine[Any, Any, R] = self.invoke(args, kwargs)
        return coroutine


class SyncTask(Task[P, R]):
    """A task defined with `def`: workers run it in a thread of their bounded pool."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here, now, as a plain function call."""
        result: R = self.invoke(args, kwargs)
        return result


class Sending(Coroutine[Any, Any, T]):
    """What `delay()` returns: the sending coroutine, which warns if it is dropped unawaited.

    A coroutine like any other (`await` it, or give it to `asyncio.create_task`); dropped
    without being awaited, it sent nothing, and a `RuntimeWarning` names the task.
    """

    __slots__ = ("_coroutine", "_method", "_started", "_task")

    def __init__(self, coroutine: Coroutine[Any, Any, T], task: Task[Any, Any], method: str):
        self._coroutine = coroutine
        self._task = task
        self._method = method
        self._started = False

    def __await__(self) -> Generator[Any, None, T]:
        self._started = True
        return self._coroutine.__await__()

    def send(self, value: Any) -> Any:
        """Run the coroutine on (what the event loop calls)."""
        self._started = True
        return self._coroutine.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """Raise into the coroutine (what the event loop calls)."""
        self._started = True
        return self._coroutine.throw(typ, val, tb)

    def close(self) -> None:
        """Close the coroutine: nothing is sent, and nothing warns."""
        self._started = True
        self._coroutine.close()

    def __del__(self) -> None:
        if not self._started:
            self._coroutine.close()
            name = self._task.fn.__name__
            warnings.warn(
                f"{name}.{self._method}() was never awaited, so task {self._task.name!r} was "
                f"not sent: write `await {name}.{self._method}(...)`, or "
                f"`{name}.sync.{self._method}(...)` in sync code",
                RuntimeWarning,
                stacklevel=1,
            )


def make_task(app: AppLike | None, fn: Callable[..., Any], options: TaskOptions) -> Task[Any, Any]:
    """Wrap `fn` in the task class that matches it (async or sync)."""
    cls: type[Task[Any, Any]] = AsyncTask if inspect.iscoroutinefunction(fn) else SyncTask
    return cls(app, fn, options)


def _default_name(fn: Callable[..., Any], app: AppLike | None) -> str:
    module = fn.__module__
    if module == "__main__" and app is not None and app.main:
        module = app.main
    return f"{module}.{fn.__name__}"  # as Celery: nested functions need name=


def _check_executor(fn: Callable[..., Any], executor: str, *, is_async: bool) -> None:
    # A coroutine runs on the worker's event loop only; threads and processes run plain defs.
    if is_async and executor != "auto":
        raise ConfigurationError(
            f"{fn.__qualname__} is an async def, which runs on the worker's event loop; "
            f"executor={executor!r} takes a plain def (drop executor=, or make it a def)"
        )


def _plain_arity(signature: inspect.Signature) -> int | None:
    plain = all(
        p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
        for p in signature.parameters.values()
    )
    return len(signature.parameters) if plain else None


def _call_signature(fn: Callable[..., Any], *, bind: bool) -> inspect.Signature:
    signature = inspect.signature(fn)
    if not bind:
        return signature
    parameters = list(signature.parameters.values())
    if not parameters:
        raise ConfigurationError(
            f"{fn.__qualname__} is bound (bind=True) but takes no arguments; "
            "give it a first parameter, self"
        )
    return signature.replace(parameters=parameters[1:])
