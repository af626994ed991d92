"""`App`: the task registry, its settings, and its connections to a broker and a result store."""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Mapping, Sequence
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

from . import current, sending, signing
from . import result as _result
from .beat.edits import BeatControl
from .canvas.group_result import GroupResult as _GroupResult
from .config import DEFAULT_BROKER_URL, Settings
from .control import Control
from .discovery import Discovery
from .drivers import create_backend, create_broker, default_backend
from .drivers.base import Broker, ResultBackend
from .events.receiver import Events
from .exceptions import ConfigurationError, NotRegistered
from .fixups import FixupHooks, install_fixups
from .hooks import Hooks, TaskRun, WorkerContext, add_hook
from .options import ManySendOptions, SendOptions, TaskOptionArgs, TaskOptions
from .sync import IOThread, SyncApp
from .task import AsyncTask, SyncTask, Task, make_task
from .urls import redact

__all__ = ["App", "current_app", "shared_task"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
WorkerHook = TypeVar("WorkerHook", bound=Callable[[WorkerContext], Any])
TaskHook = TypeVar("TaskHook", bound=Callable[[TaskRun], Any])


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


#: Every app of this process, for `_after_fork`.
_made: weakref.WeakSet[App] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child: make each app's lock anew (a parent thread may have held it)."""
    for app in list(_made):
        app._loops_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


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
        #: The task modules still to import (`autodiscover_tasks`), and the fix-ups' hooks.
        self.discovery = Discovery()
        self.fixup_hooks = FixupHooks()
        #: The connections of each event loop that used the app, by loop.
        self._loops: dict[asyncio.AbstractEventLoop, _LoopConnections] = {}
        self._loops_lock = threading.Lock()
        _made.add(self)  # the lock is made anew in a forked child (`_after_fork`)
        #: The thread whose loop runs `app.sync` calls, started on first use.
        self._io: IOThread | None = None
        #: The worker and task hooks (`@app.on_worker_start`, ...): see aqueue/hooks.py.
        self.hooks = Hooks()
        current.add_app(self, current=set_as_current)
        install_fixups(self)  # Django's, when DJANGO_SETTINGS_MODULE is set

    def __repr__(self) -> str:
        return f"<App {self.main or '__main__'}: {redact(self.broker_url)}>"

    @property
    def sync(self) -> SyncApp:
        """The app's methods for sync code: `app.sync.send_task(...)`, `app.sync.AsyncResult`."""
        return SyncApp(self)

    def run_blocking(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the app's I/O thread (started on first use) and wait for it.

        What the sync API (`add.sync.delay`) calls; never call it from inside an event loop.
        """
        return self._io_thread().run(coroutine)

    def send_blocking(
        self, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> _result.AsyncResult[Any]:
        """Send task `name` from the I/O thread and wait for it to be sent (`add.sync.delay`).

        Calls from many threads at once go out together, as one `send_many`.
        """
        result: _result.AsyncResult[Any] = self._io_thread().send(self, name, args, kwargs)
        return result

    def _io_thread(self) -> IOThread:
        io = self._io
        if io is None:
            with self._loops_lock:
                io = self._io
                if io is None:
                    name = f"aqueue-io-{self.main or '__main__'}"
                    io = self._io = IOThread(name, self._close_io)
        return io

    def stop_io_thread(self) -> None:
        """Close the I/O thread's connections and stop it (`app.sync.close()`); blocking."""
        io, self._io = self._io, None
        if io is not None:
            io.stop()

    async def _close_io(self) -> None:
        """Close the connections of the loop this runs on (the I/O thread's, as it stops)."""
        here = self._here()
        async with here.lock:
            await here.aclose()

    @property
    def control(self) -> Control:
        """Remote control of this app's workers: `await app.control.ping()`."""
        return Control(self)

    @property
    def events(self) -> Events:
        """The events of this app's workers: `async with app.events.receive() as stream:`."""
        return Events(self)

    @property
    def beat(self) -> BeatControl:
        """The periodic tasks of this app's beats, editable at runtime: `await app.beat.list()`."""
        return BeatControl(self)

    # -- hooks (aqueue/hooks.py) -------------------------------------------------------------

    def on_worker_start(self, fn: WorkerHook) -> WorkerHook:
        """Run `fn(context)` (sync or async) once when a worker starts, before any task."""
        return add_hook(self.hooks.worker_start, fn)

    def on_worker_stop(self, fn: WorkerHook) -> WorkerHook:
        """Run `fn(context)` (sync or async) once when a worker stops, after its last task."""
        return add_hook(self.hooks.worker_stop, fn)

    def before_task(self, fn: TaskHook) -> TaskHook:
        """Run `fn(run)` (sync or async) before each task a worker runs."""
        return add_hook(self.hooks.before_task, fn)

    def after_task(self, fn: TaskHook) -> TaskHook:
        """Run `fn(run)` (sync or async) after each task, with its state and runtime."""
        return add_hook(self.hooks.after_task, fn)

    def on_failure(self, fn: TaskHook) -> TaskHook:
        """Run `fn(run)` (sync or async) after each task that failed, with its error."""
        return add_hook(self.hooks.on_failure, fn)

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

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | None = None,
        related_name: str = "tasks",
        *,
        force: bool = False,
    ) -> None:
        """Import `<package>.<related_name>` of each package that has one, as Celery does.

        Lazily, when the app is finalized (first use of `app.tasks`, or a worker's start), or
        now with `force=True`. Without packages: every installed app's, under Django (app
        config entries such as `"polls.apps.PollsConfig"` included), once Django is ready.
        """
        self.discovery.add(packages, related_name)
        if force:
            self.finalize()

    def finalize(self) -> None:
        """Import the modules of `imports`, `include` and `autodiscover_tasks` (once)."""
        self.discovery.finalize(self.conf)

    def setup_worker(self) -> None:
        """Prepare this process to run tasks: the fix-ups' set-up (Django's), then `finalize`."""
        self.fixup_hooks.setup_worker()
        self.finalize()

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
        """The registered tasks, by name (finalizing the app on first use)."""
        if not self.discovery.finalized:
            self.discovery.finalize(self.conf)
        return self._tasks

    def get_task(self, name: str) -> Task[Any, Any]:
        """Return the task registered as `name`, or raise `NotRegistered`."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"no task named {name!r} is registered on this app; import the module that "
                "defines it before starting the worker"
            ) from None

    def AsyncResult(self, task_id: str) -> _result.AsyncResult[Any]:  # Celery's name
        """Return the result handle of a task sent earlier, by id."""
        return _result.AsyncResult(task_id, self)

    def GroupResult(self, group_id: str) -> _GroupResult[Any]:  # Celery's name
        """Return the result of a group (or a chord's header) sent earlier, by id.

        Its members are read from the result store on first use (`await result.load()`).
        """
        return _GroupResult(group_id, None, self)

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
        """Connect the broker and the result backend for the running event loop.

        Called on first use if not before. Connections belong to the loop that opened them:
        another loop (a second `asyncio.run()`, a thread with a loop of its own) opens its own,
        and they close when that loop shuts its async generators down, as `asyncio.run` does.
        """
        here = self._here()
        async with here.lock:
            if here.broker is not None:
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
                here.stack = stack.pop_all()
                here.broker, here.backend = broker, backend
            here.closer = _close_at_loop_end(here)
            await here.closer.__anext__()  # started: the loop finalises it at shutdown_asyncgens

    async def close(self) -> None:
        """Close this event loop's connections (and stop the app's sync I/O thread, if any).

        The app opens again on next use. Connections other running loops opened stay theirs,
        closed when those loops end; those of loops already closed are dropped.
        """
        here = self._here()
        async with here.lock:
            await here.aclose()
        with self._loops_lock:
            if self._loops.get(here.loop) is here:
                del self._loops[here.loop]
        io = self._io
        if io is not None and not io.owns_running_loop():
            self._io = None
            await io.astop()

    def connected(self) -> tuple[Broker, ResultBackend | None] | None:
        """Return the broker and the result backend if open in this loop, else None (no I/O)."""
        here = self._loops.get(asyncio._get_running_loop())  # type: ignore[arg-type]
        if here is None or here.broker is None:
            return None
        return here.broker, here.backend

    async def broker(self) -> Broker:
        """Return this loop's open broker, opening the app first if needed."""
        opened = self.connected()
        if opened is None:
            await self.open()
            opened = self.connected()
            assert opened is not None
        return opened[0]

    async def result_backend(self) -> ResultBackend | None:
        """Return this loop's open result backend (None when results are disabled)."""
        opened = self.connected()
        if opened is None:
            await self.open()
            opened = self.connected()
            assert opened is not None
        return opened[1]

    def _here(self) -> _LoopConnections:
        """Return this loop's connections (made on first use; closed loops' are pruned)."""
        loop = _running_loop()
        here = self._loops.get(loop)
        if here is None:
            with self._loops_lock:
                for other in [other for other in self._loops if other.is_closed()]:
                    del self._loops[other]
                here = self._loops.setdefault(loop, _LoopConnections(loop))
        return here

    def _broker_options(self) -> dict[str, Any]:
        return {
            "visibility_timeout": self.conf.broker_visibility_timeout,
            "max_deliveries": self.conf.broker_max_deliveries,
            "heartbeat_interval": self.conf.broker_heartbeat_interval,
            "heartbeat_timeout": self.conf.broker_heartbeat_timeout,
            "dead_letter_max_bytes": self.conf.broker_dead_letter_max_bytes,
            "message_max_bytes": self.conf.message_max_bytes
            + (signing.OVERHEAD if self.conf.task_message_key is not None else 0),
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


class _LoopConnections:
    """The broker and result backend one event loop opened, and what closes them."""

    __slots__ = ("backend", "broker", "closer", "lock", "loop", "stack")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = anyio.Lock()
        self.broker: Broker | None = None
        self.backend: ResultBackend | None = None
        self.stack: AsyncExitStack | None = None
        #: Started in the loop and kept here: the loop closes it when it shuts down.
        self.closer: AsyncGenerator[None, None] | None = None

    async def aclose(self) -> None:
        stack, self.stack = self.stack, None
        self.broker = self.backend = None
        closer, self.closer = self.closer, None
        if closer is not None:
            await closer.aclose()
        if stack is not None:
            await stack.aclose()


async def _close_at_loop_end(here: _LoopConnections) -> AsyncGenerator[None, None]:
    """Yield once; closing the generator (the loop's `shutdown_asyncgens`) closes `here`."""
    try:
        yield
    finally:
        stack, here.stack = here.stack, None
        here.broker = here.backend = None
        here.closer = None
        if stack is not None:
            await stack.aclose()


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "an App connects from inside an event loop: await its methods in async code, "
            "or use the sync API (add.sync.delay(...), app.sync.send_task(...))"
        ) from None


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
