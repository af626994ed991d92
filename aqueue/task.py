"""Tasks: typed handles on registered functions.

`@app.task` on `async def add(x: int, y: int) -> int` gives an `AsyncTask[[int, int], int]`:
`await add.delay(4, 4)` is checked by mypy and returns `AsyncResult[int]`, and `add(4, 4)` still
runs the function in-process, as in Celery. A plain `def` gives a `SyncTask`, run by workers in a
thread. Call options never share a namespace with task arguments: they go to `apply_async`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import difflib
import inspect
import random
from collections.abc import Callable, Container, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NoReturn,
    ParamSpec,
    TypedDict,
    TypeVar,
)

from . import result as _result
from .exceptions import ConfigurationError, MaxRetriesExceeded, Retry
from .throttle import parse_rate

if TYPE_CHECKING:
    from .app import App

__all__ = [
    "AsyncTask",
    "Request",
    "SyncTask",
    "Task",
    "TaskOptions",
    "current_request",
    "current_revocations",
    "running_request",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Request:
    """What a bound task (`bind=True`) sees of the invocation it is running: `self.request`."""

    id: str | None = None
    task: str = ""
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    hostname: str | None = None
    delivery_count: int = 0
    called_directly: bool = True


#: The request of the task running in this context (each worker task has its own context): a
#: `Request`, or a function that builds it, for the worker to build it only if the task asks.
current_request: contextvars.ContextVar[Request | Callable[[], Request] | None] = (
    contextvars.ContextVar("aqueue_request", default=None)
)


def running_request() -> Request | None:
    """Return the request of the task running in this context (None outside a worker)."""
    request = current_request.get()
    if request is None or isinstance(request, Request):
        return request
    built = request()
    current_request.set(built)  # the same object on every call; the worker resets the var
    return built


#: The task ids revoked on the worker running this context (set once per worker slot).
current_revocations: contextvars.ContextVar[Container[str]] = contextvars.ContextVar(
    "aqueue_revocations", default=frozenset()
)


class TaskOptionArgs(TypedDict, total=False):
    """The keyword options `@app.task(...)` takes (see `TaskOptions`)."""

    name: str
    ignore_result: bool
    queue: str
    priority: int
    max_retries: int | None
    default_retry_delay: float
    autoretry_for: tuple[type[Exception], ...]
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    time_limit: float
    soft_time_limit: float
    rate_limit: str | float | None
    concurrency: int | None
    executor: Literal["auto", "thread", "process"]


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """Per-task options given to `@app.task(...)`; None means "use the app's setting".

    Retries (Celery's names): `max_retries` (3; None retries for ever), `default_retry_delay`
    (seconds, 180), `autoretry_for` (exception types that retry by themselves),
    `retry_backoff` (True, or a base in seconds: the delay doubles with each retry, up to
    `retry_backoff_max`, 600) and `retry_jitter` (True: a random delay up to the computed one).
    Time limits: `soft_time_limit` and `time_limit`, in seconds. Throttles: `rate_limit`
    ("10/m": across all workers where the app has Redis, else per worker) and `concurrency`
    (at most this many running at once, counted the same way).
    Executor: "auto" (an `async def` on the event loop, a `def` in a thread), "thread" (a `def`
    only), or "process" (a `def` in a child process of the worker's pool: for CPU-bound code,
    and code that must be killable at its hard `time_limit`).

    `task_annotations` (`{"tasks.add": {"rate_limit": "10/m"}, "*": {...}}`) override these
    for tasks by name, "*" for all, as in Celery.
    """

    name: str | None = None
    bind: bool = False
    ignore_result: bool | None = None
    queue: str | None = None
    priority: int | None = None
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[Exception], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | float | None = None
    concurrency: int | None = None
    executor: Literal["auto", "thread", "process"] = "auto"

    def __post_init__(self) -> None:
        parse_rate(self.rate_limit)  # a malformed rate fails where it is written
        if self.executor not in ("auto", "thread", "process"):
            raise ConfigurationError(
                f"executor must be 'auto', 'thread' or 'process', not {self.executor!r}"
            )
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {self.concurrency!r}"
            )

    @classmethod
    def from_arguments(cls, **options: Any) -> TaskOptions:
        """Build options from keyword arguments; an unknown name names the closest one."""
        _check_names(options, "task option", identity=True)
        return cls(**options)

    def annotated(self, annotations: Any, name: str) -> TaskOptions:
        """Return these options with `task_annotations` for task `name` applied ("*" first)."""
        if not annotations:
            return self
        if not isinstance(annotations, Mapping):
            raise ConfigurationError("task_annotations must be a mapping of task names to options")
        changes: dict[str, Any] = {}
        for key in ("*", name):
            found = annotations.get(key) or {}
            _check_names(found, f"task_annotations[{key!r}] option")
            changes.update(found)
        return dataclasses.replace(self, **changes) if changes else self


def _check_names(options: Mapping[str, Any], what: str, *, identity: bool = False) -> None:
    # A task's name and binding are the decorator's to set, not an annotation's.
    known = TaskOptions.__dataclass_fields__
    for name in options:
        if name not in known or (not identity and name in ("name", "bind")):
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(f"unknown {what} {name!r}{hint}")


class Task(Generic[P, R]):
    """A registered task. Use `AsyncTask` and `SyncTask` in annotations."""

    def __init__(self, app: App | None, fn: Callable[..., Any], options: TaskOptions) -> None:
        self._app = app
        self.fn = fn
        self.declared = options
        self._annotations: Any = None
        self._options = options
        self.name = options.name or _default_name(fn, app)
        self.bind = options.bind
        self.is_async = inspect.iscoroutinefunction(fn)
        _check_executor(fn, options.executor, is_async=self.is_async)
        self.signature = _call_signature(fn, bind=options.bind)
        #: For a signature of plain positional parameters, how many it takes: a fast check.
        self.arity = _plain_arity(self.signature)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    @property
    def options(self) -> TaskOptions:
        """The options in force: as declared, with the app's `task_annotations` applied."""
        app = self._app or _current_or_none()
        annotations = app.conf.task_annotations if app is not None else None
        if annotations is not self._annotations:  # recomputed when the setting is replaced
            self._options = self.declared.annotated(annotations, self.name)
            self._annotations = annotations
        return self._options

    @property
    def app(self) -> App:
        """The app this task sends through: its own, or the current one for a shared task."""
        if self._app is not None:
            return self._app
        from .app import current_app

        return current_app()

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
            self.signature.bind(*args, **kwargs)

    @property
    def ignore_result(self) -> bool:
        """Whether workers store this task's results (the option, else `task_ignore_result`)."""
        if self.options.ignore_result is not None:
            return self.options.ignore_result
        return self.app.conf.task_ignore_result

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> _result.AsyncResult[R]:
        """Send the task to a worker with these arguments; return its result handle."""
        return await self.app.send_task(self.name, args, kwargs)

    async def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        countdown: float | None = None,
        eta: dt.datetime | float | None = None,
        expires: dt.datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> _result.AsyncResult[R]:
        """Send the task with call options, as Celery's `apply_async`.

        `countdown` (seconds) or `eta` (an aware datetime, or a POSIX timestamp) delays it;
        `expires` (seconds from now, or a datetime) drops it if no worker started it in time.
        """
        return await self.app.send_task(
            self.name,
            args,
            kwargs,
            task_id=task_id,
            countdown=countdown,
            eta=eta,
            expires=expires,
            queue=queue,
            priority=priority,
            headers=headers,
        )

    async def delay_many(
        self, calls: Iterable[Sequence[Any]], **options: Any
    ) -> list[_result.AsyncResult[R]]:
        """Send one invocation per tuple of positional arguments, all in one publish.

        For producers that fan out: `await add.delay_many([(1, 2), (3, 4)])`. `options` are
        `apply_async`'s (`countdown`, `queue`, `priority`, ...), shared by every invocation.
        """
        results = await self.app.send_many(self.name, [(args, {}) for args in calls], **options)
        return [
            _result.AsyncResult(r.id, self.app, task_name=self.name, ignored=self.ignore_result)
            for r in results
        ]

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[R]:  # Celery's name
        """Return the result handle of an invocation of this task sent earlier."""
        return _result.AsyncResult(
            task_id, self.app, task_name=self.name, ignored=self.ignore_result
        )

    def _call(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return self.fn(self, *args, **kwargs) if self.bind else self.fn(*args, **kwargs)


class AsyncTask(Task[P, R]):
    """A task defined with `async def`: workers run it on their event loop."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Run the task here, now, as a plain coroutine call (as Celery's `task()` does)."""
        coroutine: Coroutine[Any, Any, R] = self._call(args, kwargs)
        return coroutine


class SyncTask(Task[P, R]):
    """A task defined with `def`: workers run it in a thread of their bounded pool."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here, now, as a plain function call."""
        result: R = self._call(args, kwargs)
        return result


def _default_name(fn: Callable[..., Any], app: App | None) -> str:
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


def _current_or_none() -> App | None:
    from .app import current_app

    try:
        return current_app()
    except ConfigurationError:
        return None


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
