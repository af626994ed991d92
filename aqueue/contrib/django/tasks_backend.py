"""`TaskBackend`: Django's Tasks framework run by aqueue workers.

Django >= 6.0's `django.tasks`, or on older Django the `django_tasks` backport (same API).

    TASKS = {"default": {"BACKEND": "aqueue.contrib.django.TaskBackend",
                         "OPTIONS": {"APP": "proj.aqueue_app:app"}}}  # APP: else the current app

**Names.** Each `@task` this backend accepts becomes one aqueue task named
`django:<module path>` (`django:polls.tasks.send_mail`), registered when the module that
defines it is imported: on the app OPTIONS["APP"] names, else on every app (a shared task).
A worker therefore runs exactly the Django tasks of the modules it imported; a message for
any other is dead-lettered as `unknown-task`, like any unregistered aqueue task. Nothing is
imported by a name read from a message or a result.

**Records.** `enqueue` stores a record of the call under `<id>:django` in the app's result
backend (the task's path, arguments, backend alias, when it was enqueued), then sends the
message with `priority`, `queue_name` and `run_after` mapped onto aqueue's. The worker's run
updates that record (started, last attempted, the worker's hostname) and stores STARTED under
`<id>`; the outcome is aqueue's ordinary result under `<id>`. `get_result` reads both.

**Priorities.** Django's -100..100 (0 by default) onto aqueue's 0..9: 0 and below go at the
app's default priority (aqueue has none lower than its default of 0), 1..100 at 1..9.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import inspect
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from traceback import format_exception
from typing import TYPE_CHECKING, Any

from ... import states
from ...app import App, current_app, shared_task
from ...config import load_object
from ...drivers import create_backend
from ...drivers.base import ResultBackend, StoredResult
from ...exceptions import ConfigurationError
from ...request import Request, running_request
from ...result_meta import ResultMeta
from ...signing import open_result, sign_result

if TYPE_CHECKING:
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
else:
    try:  # Django >= 6.0
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
    except ImportError:  # the backport: pip install "aqueue-tasks[django-tasks]"
        try:
            from django_tasks.backends.base import BaseTaskBackend
            from django_tasks.base import (
                Task,
                TaskContext,
                TaskError,
                TaskResult,
                TaskResultStatus,
            )
            from django_tasks.exceptions import TaskResultDoesNotExist
            from django_tasks.signals import task_enqueued, task_finished, task_started
        except ImportError:
            raise ImportError(
                "aqueue.contrib.django.TaskBackend needs Django >= 6.0 or the django-tasks "
                'backport: pip install "aqueue-tasks[django-tasks]"'
            ) from None

__all__ = ["PREFIX", "TaskBackend", "aqueue_name", "aqueue_priority"]

#: The aqueue task name of a Django task is this prefix and the task's module path.
PREFIX = "django:"
_RECORD = ":django"

#: The Django tasks this process defined (module path -> the latest definition): the only
#: ones a worker runs, and the only ones `get_result` resolves.
_defined: dict[str, Task[..., Any]] = {}


def aqueue_name(task: Task[..., Any]) -> str:
    """Return the aqueue task name a Django task runs under."""
    return f"{PREFIX}{task.module_path}"


def aqueue_priority(priority: int) -> int | None:
    """Map a Django priority (-100..100) onto aqueue's (None: the app's default, 1..9)."""
    return None if priority <= 0 else max(1, min(9, math.ceil(priority * 9 / 100)))


def _record_key(task_id: str) -> str:
    return f"{task_id}{_RECORD}"


def _when(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)


def _register(task: Task[..., Any], app: App | None) -> None:
    """Define the aqueue task that runs `task` on `app` (None: on every app, as a shared task)."""
    path = task.module_path
    known = _defined.get(path)
    _defined[path] = task
    if known is not None and known.func is task.func:
        return  # `task.using(...)`: the same function, already registered
    runner = _runner(path, task.func)
    if app is None:
        shared_task(name=aqueue_name(task))(runner)
    else:
        app.task(name=aqueue_name(task))(runner)


def _runner(path: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Return the aqueue task function that runs the Django task at `path`."""
    if inspect.iscoroutinefunction(func):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            task = _defined[path]
            backend = task.get_backend()
            assert isinstance(backend, TaskBackend)
            context = await backend.started(task, running_request(), args, kwargs)
            call = (context, *args) if task.takes_context else args
            try:
                value = await task.func(*call, **kwargs)
            except Exception as exc:
                await task_finished.asend(type(backend), task_result=_finished(context, exc=exc))
                raise
            await task_finished.asend(type(backend), task_result=_finished(context, value=value))
            return value

        run_async.__qualname__ = run_async.__name__ = f"run_{func.__name__}"
        return run_async

    def run(*args: Any, **kwargs: Any) -> Any:
        import anyio.from_thread

        task = _defined[path]
        backend = task.get_backend()
        assert isinstance(backend, TaskBackend)
        request = running_request()  # here: the worker's thread carries the task's context
        context = anyio.from_thread.run(backend.started, task, request, args, kwargs)
        call = (context, *args) if task.takes_context else args
        try:
            value = task.func(*call, **kwargs)
        except Exception as exc:
            task_finished.send(type(backend), task_result=_finished(context, exc=exc))
            raise
        task_finished.send(type(backend), task_result=_finished(context, value=value))
        return value

    run.__qualname__ = run.__name__ = f"run_{func.__name__}"
    return run


class TaskBackend(BaseTaskBackend):
    """Django Tasks on aqueue: `enqueue` sends, `aqueue worker` runs, `get_result` reads."""

    supports_defer = True  # run_after -> the message's eta
    supports_async_task = True  # async def tasks run on the worker's event loop
    supports_priority = True  # see aqueue_priority

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self._app_path: str | None = self.options.get("APP")
        self._app: App | None = None

    @property
    def app(self) -> App:
        """The aqueue app: OPTIONS["APP"] ("module:attribute"), else the current app."""
        return self._named_app() or current_app()

    def _named_app(self) -> App | None:
        """Return the app OPTIONS["APP"] names (imported on first use), or None."""
        if self._app is None:
            if self._app_path is None:
                return None
            app = load_object(self._app_path)
            if not isinstance(app, App):
                raise ConfigurationError(
                    f"TASKS[{self.alias!r}]['OPTIONS']['APP'] = {self._app_path!r} is a "
                    f"{type(app).__name__}, not an aqueue App"
                )
            self._app = app
        return self._app

    @property
    def supports_get_result(self) -> bool:  # type: ignore[override]
        """Whether results can be read back: the app stores them where every process sees."""
        url = self.app.backend_url
        return url is not None and type(create_backend(url, {})).shared

    def validate_task(self, task: Task[..., Any]) -> None:
        """Check `task` as Django does, then define the aqueue task that runs it.

        On the app OPTIONS["APP"] names; without one, on every app (a shared task), since the
        current app may not exist yet when a tasks module is imported.
        """
        super().validate_task(task)
        _register(task, self._named_app())

    # -- sending -----------------------------------------------------------------------------

    def enqueue(
        self, task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult[Any, Any]:
        """Send the task from sync code (on the app's I/O thread); return its READY result."""
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                "Task.enqueue() blocks, and this thread runs an event loop: "
                "use `await task.aenqueue(...)` here"
            )
        return self.app.run_blocking(self.aenqueue(task, args, kwargs))

    async def aenqueue(
        self, task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> TaskResult[Any, Any]:
        """Store the call's record, then send the message; return its READY result."""
        app = self.app
        task_id = uuid.uuid4().hex
        now = time.time()
        record = {
            "path": task.module_path,
            "args": list(args),
            "kwargs": dict(kwargs),
            "backend": self.alias,
            "enqueued_at": now,
            "started_at": None,
            "last_attempted_at": None,
            "worker_ids": [],
        }
        backend = await app.result_backend()
        if backend is not None:
            await self._put_record(backend, task_id, states.PENDING, record)
        await app.send_task(
            aqueue_name(task),
            list(args),
            dict(kwargs),
            task_id=task_id,
            queue=task.queue_name,
            priority=aqueue_priority(task.priority),
            eta=task.run_after,
        )
        result = self._result(task, task_id, record, None)
        await task_enqueued.asend(type(self), task_result=result)
        return result

    # -- the worker's side -------------------------------------------------------------------

    async def started(
        self,
        task: Task[Any, Any],
        request: Request | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> TaskContext[Any, Any]:
        """Record a run starting (RUNNING, the worker); return the task's context."""
        app = self.app
        backend = await app.result_backend()
        task_id = request.id if request is not None and request.id else uuid.uuid4().hex
        record: dict[str, Any] = {
            "path": task.module_path,
            "args": list(args),
            "kwargs": dict(kwargs),
            "backend": self.alias,
            "enqueued_at": None,
            "started_at": None,
            "worker_ids": [],
        }
        if backend is not None:
            stored = await backend.fetch(_record_key(task_id))
            if stored is not None:
                record.update(self._read_record(stored))
            now = time.time()
            record["started_at"] = record.get("started_at") or now
            record["last_attempted_at"] = now
            hostname = request.hostname if request is not None else None
            record["worker_ids"] = [*record.get("worker_ids", []), hostname or "?"]
            await self._put_record(backend, task_id, states.STARTED, record)
            payload = sign_result(app.conf, ResultMeta(task=aqueue_name(task)).encode())
            await backend.store(task_id, states.STARTED, payload, app.conf.result_expires)
        running = self._result(task, task_id, record, StoredResult(states.STARTED, b""))
        await task_started.asend(type(self), task_result=running)
        return TaskContext(task_result=running)

    # -- results -----------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult[Any, Any]:
        """Return the task's result as stored now (sync: on the app's I/O thread)."""
        if asyncio._get_running_loop() is not None:
            raise RuntimeError(
                "get_result() blocks, and this thread runs an event loop: "
                "use `await backend.aget_result(...)` (or `await result.arefresh()`) here"
            )
        return self.app.run_blocking(self.aget_result(result_id))

    async def aget_result(self, result_id: str) -> TaskResult[Any, Any]:
        """Return the task's result as stored now; `TaskResultDoesNotExist` if none is."""
        backend = await self.app.result_backend()
        if backend is None:
            raise TaskResultDoesNotExist(
                f"{result_id}: the aqueue app stores no results (result_backend is disabled)"
            )
        stored_record = await backend.fetch(_record_key(result_id))
        if stored_record is None:
            raise TaskResultDoesNotExist(result_id)
        record = self._read_record(stored_record)
        task = _defined.get(str(record.get("path")))
        if task is None:
            raise TaskResultDoesNotExist(
                f"{result_id}: its task {record.get('path')!r} is not defined in a module this "
                "process imported"
            )
        return self._result(task, result_id, record, await backend.fetch(result_id))

    def _read_record(self, stored: StoredResult) -> dict[str, Any]:
        meta = ResultMeta.decode(open_result(self.app.conf, stored.payload))
        record = meta.result
        if not isinstance(record, dict):
            raise ValueError(f"the Django task record is a {type(record).__name__}, not a map")
        return record

    async def _put_record(
        self, backend: ResultBackend, task_id: str, state: str, record: dict[str, Any]
    ) -> None:
        conf = self.app.conf
        meta = ResultMeta(task=f"{PREFIX}{record['path']}", result=record)
        payload = sign_result(conf, meta.encode())
        await backend.store(_record_key(task_id), state, payload, conf.result_expires)

    def _result(
        self,
        task: Task[Any, Any],
        task_id: str,
        record: Mapping[str, Any],
        stored: StoredResult | None,
    ) -> TaskResult[Any, Any]:
        state = states.PENDING if stored is None else stored.state
        meta = (
            ResultMeta.decode(open_result(self.app.conf, stored.payload))
            if stored is not None and state in states.READY_STATES
            else None
        )
        errors = []
        if meta is not None and state != states.SUCCESS:
            errors.append(
                TaskError(
                    exception_class_path=_class_path(meta.exc_type),
                    traceback=meta.traceback or f"{meta.exc_type}: {meta.exc_message}",
                )
            )
        result: TaskResult[Any, Any] = TaskResult(
            task=task,
            id=task_id,
            status=_STATUS.get(state, TaskResultStatus.READY),
            enqueued_at=_when(record.get("enqueued_at")),
            started_at=_when(record.get("started_at")),
            finished_at=_when(meta.date_done) if meta is not None else None,
            last_attempted_at=_when(record.get("last_attempted_at")),
            args=list(record.get("args", [])),
            kwargs=dict(record.get("kwargs", {})),
            backend=self.alias,
            errors=errors,
            worker_ids=list(record.get("worker_ids", [])),
        )
        if meta is not None and state == states.SUCCESS:
            object.__setattr__(result, "_return_value", meta.result)
        return result


def _finished(
    context: TaskContext[Any, Any], *, value: Any = None, exc: Exception | None = None
) -> TaskResult[Any, Any]:
    """Return the running result of `context`, finished (what `task_finished` receivers get)."""
    errors = []
    if exc is not None:
        kind = type(exc)
        path = f"{kind.__module__}.{kind.__qualname__}"
        errors.append(
            TaskError(exception_class_path=path, traceback="".join(format_exception(exc)))
        )
    result = dataclasses.replace(
        context.task_result,
        status=TaskResultStatus.SUCCESSFUL if exc is None else TaskResultStatus.FAILED,
        finished_at=dt.datetime.now(dt.UTC),
        errors=errors,
    )
    if exc is None:
        object.__setattr__(result, "_return_value", value)
    return result


def _class_path(exc_type: str | None) -> str:
    """Return a stored exception type name as an `exception_class_path` (builtins named)."""
    name = exc_type or "Exception"
    return name if "." in name else f"builtins.{name}"


_STATUS: dict[str, TaskResultStatus] = {
    states.PENDING: TaskResultStatus.READY,
    states.RETRY: TaskResultStatus.READY,  # to be run again
    states.STARTED: TaskResultStatus.RUNNING,
    states.SUCCESS: TaskResultStatus.SUCCESSFUL,
    states.FAILURE: TaskResultStatus.FAILED,
    states.REVOKED: TaskResultStatus.FAILED,
}
