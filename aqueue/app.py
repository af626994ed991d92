"""`App`: the task registry, its settings, and its connections to a broker and a result store."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import (
    Any,
    Concatenate,
    Literal,
    ParamSpec,
    Protocol,
    Self,
    TypeVar,
    Unpack,
    cast,
    overload,
)

import anyio

from . import current, sending
from . import result as _result
from .beat.edits import BeatControl
from .config import DEFAULT_BROKER_URL, Settings
from .control import Control
from .drivers import create_backend, create_broker, default_backend
from .drivers.base import Broker, ResultBackend
from .exceptions import ConfigurationError, NotRegistered
from .options import ManySendOptions, SendOptions, TaskOptionArgs, TaskOptions
from .task import AsyncTask, SyncTask, Task, make_task
from .urls import redact

__all__ = ["App", "current_app", "shared_task"]

P = ParamSpec("P")
R = TypeVar("R")


class TaskDecorator(Protocol):
    """What `@app.task(...)` returns: a decorator that makes a typed task."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...


class BoundTaskDecorator(Protocol):
    """What `@app.task(bind=True)` returns: the function's first parameter is the task."""

    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> SyncTask[P, R]: ...


class App:
    """An aqueue application: `App("tasks")` uses the embedded SQLite default.

    `broker` and `backend` take URLs (`backend=False` turns results off); any other keyword is a
    setting of `app.conf`. The app connects on first use, or explicitly as an async context
    manager (`async with app:`), and `close()` releases its connections.
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | bool | None = None,
        *,
        set_as_current: bool = True,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        self.conf.from_environment()
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        self.conf.update(settings)
        #: Given to the constructor: config_from_object does not override these (as Celery).
        self._explicit = frozenset(settings)
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._stack: AsyncExitStack | None = None
        self._lock = anyio.Lock()
        self._state: Literal["unopened", "open", "closed"] = "unopened"
        current.add_app(self, current=set_as_current)

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}: {redact(self.broker_url)}>"

    @property
    def control(self) -> Control:
        """Remote control of this app's workers: `await app.control.ping()`."""
        return Control(self)

    @property
    def beat(self) -> BeatControl:
        """The periodic tasks of this app's beats, editable at runtime: `await app.beat.list()`."""
        return BeatControl(self)

    # -- configuration -----------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker URL in force: the setting, else the embedded SQLite default."""
        return self.conf.broker_url or DEFAULT_BROKER_URL

    @property
    def backend_url(self) -> str | None:
        """The result backend URL in force, or None when results are disabled."""
        setting = self.conf.result_backend
        if setting is False or setting in ("disabled", "disabled://"):
            return None
        if isinstance(setting, str) and setting:
            return setting
        broker = self.broker_url
        return default_backend(broker)

    def config_from_object(self, obj: object, namespace: str | None = None) -> None:
        """Read settings from a module, `"module"` / `"module:attr"`, or an object.

        Settings given to `App(...)` itself win over the object's, as in Celery.
        """
        self.conf.from_object(obj, namespace=namespace, keep=self._explicit)

    def autodiscover_tasks(self, packages: Iterable[str], related_name: str = "tasks") -> None:
        """Import `<package>.<related_name>` for each package that has one (as Celery does)."""
        for package in packages:
            name = f"{package}.{related_name}"
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise

    # -- tasks -------------------------------------------------------------------------------

    @overload
    def task(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncTask[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> SyncTask[P, R]: ...
    @overload
    def task(
        self, *, bind: Literal[True], **options: Unpack[TaskOptionArgs]
    ) -> BoundTaskDecorator: ...
    @overload
    def task(
        self, *, bind: Literal[False] = False, **options: Unpack[TaskOptionArgs]
    ) -> TaskDecorator: ...

    def task(
        self, fn: Callable[..., Any] | None = None, *, bind: bool = False, **options: Any
    ) -> Any:
        """Register a function as a task: `@app.task`, or `@app.task(name=..., bind=True)`.

        The options are `TaskOptions`' (`name`, `queue`, `priority`, `ignore_result`,
        `max_retries`, `autoretry_for`, `retry_backoff`, `time_limit`, ...).
        """
        parsed = TaskOptions.from_arguments(bind=bind, **options)
        if fn is not None:
            return self.register(fn, parsed)
        return lambda function: self.register(function, parsed)

    def register(self, fn: Callable[..., Any], options: TaskOptions) -> Task[Any, Any]:
        """Register `fn` under its task name; a second task with the same name is an error."""
        return self.add_task(make_task(self, fn, options))

    def add_task(self, task: Task[Any, Any]) -> Task[Any, Any]:
        """Register a task object made elsewhere (a shared task); return it."""
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise ConfigurationError(
                f"two tasks are named {task.name!r} ({existing.fn.__qualname__} and "
                f"{task.fn.__qualname__}); give one of them name=..."
            )
        self._tasks[task.name] = task
        return task

    @property
    def tasks(self) -> Mapping[str, Task[Any, Any]]:
        """The registered tasks, by name."""
        return self._tasks

    def get_task(self, name: str) -> Task[Any, Any]:
        """Return the task registered as `name`, or raise `NotRegistered`."""
        try:
            return self._tasks[name]
        except KeyError:
            raise NotRegistered(
                f"no task named {name!r} is registered on this app; import the module that "
                "defines it before starting the worker"
            ) from None

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[Any]:  # Celery's name
        """Return the result handle of a task sent earlier, by id."""
        return _result.AsyncResult(task_id, self)

    async def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Unpack[SendOptions],
    ) -> _result.AsyncResult[Any]:
        """Send a task by name (it need not be registered in this process).

        The call options are `apply_async`'s (`options.SendOptions`).
        """
        return await sending.send(self, name, args, kwargs, **options)

    async def send_many(
        self,
        name: str,
        calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]],
        *,
        task_ids: Sequence[str] | None = None,
        **options: Unpack[ManySendOptions],
    ) -> list[_result.AsyncResult[Any]]:
        """Send many invocations of one task, as `(args, kwargs)` pairs, in one publish.

        Every message is encoded (and refused, if it must be) before any is sent.
        """
        return await sending.send_many(self, name, calls, task_ids=task_ids, **options)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect the broker and the result backend; called on first use if not before."""
        async with self._lock:
            if self._state == "open":
                return
            async with AsyncExitStack() as stack:
                broker = create_broker(self.broker_url, self._broker_options())
                await broker.open()
                stack.push_async_callback(broker.close)
                backend = None
                if self.backend_url is not None:
                    backend = create_backend(self.backend_url, self._backend_options())
                    await backend.open()
                    stack.push_async_callback(backend.close)
                self._broker, self._backend = broker, backend
                self._stack = stack.pop_all()
                self._state = "open"

    async def close(self) -> None:
        """Close the connections; the app opens again on next use."""
        async with self._lock:
            stack, self._stack = self._stack, None
            self._broker = self._backend = None
            self._state = "closed"
            if stack is not None:
                await stack.aclose()

    def connected(self) -> tuple[Broker, ResultBackend | None] | None:
        """Return the broker and the result backend if the app is open now, else None (no I/O)."""
        if self._state != "open" or self._broker is None:
            return None
        return self._broker, self._backend

    async def connection(self) -> Broker:
        """Return the open broker, opening the app first if needed."""
        if self._state != "open":
            await self.open()
        assert self._broker is not None
        return self._broker

    async def result_backend(self) -> ResultBackend | None:
        """Return the open result backend (None when results are disabled)."""
        if self._state != "open":
            await self.open()
        return self._backend

    def _broker_options(self) -> dict[str, Any]:
        return {
            "visibility_timeout": self.conf.broker_visibility_timeout,
            "max_deliveries": self.conf.broker_max_deliveries,
            "heartbeat_interval": self.conf.broker_heartbeat_interval,
            "heartbeat_timeout": self.conf.broker_heartbeat_timeout,
            "dead_letter_max_bytes": self.conf.broker_dead_letter_max_bytes,
            **self.conf.broker_transport_options,
        }

    def _backend_options(self) -> dict[str, Any]:
        # rpc:// sends results over the broker's own connection settings.
        return {"broker_url": self.broker_url, **self.conf.result_backend_transport_options}

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def current_app() -> App:
    """Return the app created last (with `set_as_current=True`), the one shared tasks use."""
    return cast(App, current.current_app())


@overload
def shared_task(  # type: ignore[overload-overlap]
    fn: Callable[P, Coroutine[Any, Any, R]], /
) -> AsyncTask[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> SyncTask[P, R]: ...
@overload
def shared_task(
    *, bind: Literal[True], **options: Unpack[TaskOptionArgs]
) -> BoundTaskDecorator: ...
@overload
def shared_task(
    *, bind: Literal[False] = False, **options: Unpack[TaskOptionArgs]
) -> TaskDecorator: ...


def shared_task(fn: Callable[..., Any] | None = None, *, bind: bool = False, **options: Any) -> Any:
    """Declare a task for every app, present and future, as Celery's `shared_task`.

    Reusable libraries use it so they need not import a project's app; the task sends through
    the current app (`current_app()`).
    """
    parsed = TaskOptions.from_arguments(bind=bind, **options)

    def declare(function: Callable[..., Any]) -> Task[Any, Any]:
        task = make_task(None, function, parsed)
        current.add_shared_task(task)
        return task

    return declare(fn) if fn is not None else declare
