"""Worker and task hooks: `@app.on_worker_start`, `@app.before_task`, and their kin.

    @app.on_worker_start
    async def open_pool(worker: WorkerContext) -> None:
        worker.db = await asyncpg.create_pool(DSN)      # once per worker

    @app.on_worker_stop
    async def close_pool(worker: WorkerContext) -> None:
        await worker.db.close()

    @app.task
    async def lookup(user_id: int) -> str:
        db = aqueue.worker_context().db                 # from any task the worker runs
        ...

    @app.after_task
    def log_runtime(run: TaskRun) -> None:
        print(run.task.name, run.id, run.state, run.runtime)

A hook is a plain function or a coroutine function; both are called on the worker's event loop
(so a sync hook must be quick). `on_worker_start` hooks run in order once the worker has
connected, before it takes a message, and an error there stops the worker; `on_worker_stop`
hooks run in reverse order once the last task has ended, each even if another failed. A
process-pool child (`executor="process"`) runs the same start hooks when it starts and the
stop hooks when it ends, with a context of its own: resources are per process.

`before_task` hooks run before each task (its `TaskRun` has no state yet), `after_task` hooks
after it with its `state` (SUCCESS, FAILURE, RETRY) and `runtime`, and `on_failure` hooks after
a task that failed, with its `error`, on every executor (a process task's hooks run in the
worker around the call). An error raised by a task hook is logged and does not change the
task's outcome. With no task hooks registered, the worker does not build a `TaskRun` at all.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .interfaces import RunnableTask

__all__ = ["Hooks", "TaskRun", "WorkerContext", "add_hook", "current_worker", "worker_context"]

logger = logging.getLogger("aqueue.worker")

F = TypeVar("F", bound=Callable[..., Any])


class WorkerContext:
    """What a worker's hooks open once and its tasks share: set attributes on it freely.

    `hostname` names the worker (its process-pool children say so with `process=True`).
    """

    def __init__(self, hostname: str, *, process: bool = False) -> None:
        self.hostname = hostname
        self.process = process

    def __repr__(self) -> str:
        names = ", ".join(sorted(vars(self)))
        return f"<WorkerContext {self.hostname}: {names}>"

    def __getattr__(self, name: str) -> Any:
        """Only called for a missing attribute: say which hook was expected to set it."""
        raise AttributeError(
            f"the worker context has no {name!r}: set it in an @app.on_worker_start hook "
            f"(it has: {', '.join(sorted(vars(self)))})"
        )


#: The context of the worker running this code (its tasks and their threads inherit it).
current_worker: contextvars.ContextVar[WorkerContext | None] = contextvars.ContextVar(
    "aqueue_worker", default=None
)


def worker_context() -> WorkerContext:
    """Return the context of the worker running the current task (its hooks' resources)."""
    context = current_worker.get()
    if context is None:
        raise RuntimeError(
            "no worker is running here: worker_context() is for tasks run by a worker "
            "(and the worker's own hooks)"
        )
    return context


class TaskRun:
    """One run of a task, as the task hooks see it.

    `state` is None before the task runs, then SUCCESS, FAILURE or RETRY; `runtime` is in
    seconds (None before); `error` is the exception of a failure or a retry; `result` the
    value of a success.
    """

    __slots__ = (
        "args",
        "error",
        "id",
        "kwargs",
        "queue",
        "result",
        "retries",
        "runtime",
        "state",
        "task",
    )

    def __init__(
        self,
        task: RunnableTask,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        queue: str,
        retries: int = 0,
    ) -> None:
        self.task = task
        self.id = task_id
        self.args = args
        self.kwargs = kwargs
        self.queue = queue
        self.retries = retries
        self.state: str | None = None
        self.runtime: float | None = None
        self.error: BaseException | None = None
        self.result: Any = None

    def __repr__(self) -> str:
        return f"<TaskRun {self.task.name}[{self.id}] {self.state or 'running'}>"


class Hooks:
    """The hooks registered on an app (`app.hooks`); the `App` decorators fill it."""

    def __init__(self) -> None:
        self.worker_start: list[Callable[[WorkerContext], Any]] = []
        self.worker_stop: list[Callable[[WorkerContext], Any]] = []
        self.before_task: list[Callable[[TaskRun], Any]] = []
        self.after_task: list[Callable[[TaskRun], Any]] = []
        self.on_failure: list[Callable[[TaskRun], Any]] = []

    @property
    def per_task(self) -> bool:
        """Whether any hook runs around tasks (the worker skips all of this when not)."""
        return bool(self.before_task or self.after_task or self.on_failure)

    async def start_worker(self, context: WorkerContext) -> None:
        """Run the start hooks in order; an error propagates (the worker must not start)."""
        for hook in self.worker_start:
            await _call(hook, context)

    async def stop_worker(self, context: WorkerContext) -> None:
        """Run the stop hooks in reverse order; each runs even if another one failed."""
        for hook in reversed(self.worker_stop):
            try:
                await _call(hook, context)
            except Exception:
                logger.exception("The on_worker_stop hook %s failed", _name(hook))

    async def before(self, run: TaskRun) -> None:
        """Run the before_task hooks (errors logged)."""
        await _each(self.before_task, run, "before_task")

    async def after(self, run: TaskRun) -> None:
        """Run the after_task hooks, then the on_failure ones if the task failed."""
        await _each(self.after_task, run, "after_task")
        if run.state == "FAILURE":
            await _each(self.on_failure, run, "on_failure")


def add_hook(hooks: list[Any], fn: F) -> F:
    """Append `fn` to a list of hooks; return it unchanged (so it works as a decorator)."""
    if not callable(fn):
        raise TypeError(f"a hook must be a function, not {fn!r}")
    hooks.append(fn)
    return fn


async def _call(hook: Callable[[Any], Any], argument: Any) -> None:
    value = hook(argument)
    if inspect.isawaitable(value):
        await value


async def _each(hooks: list[Callable[[TaskRun], Any]], run: TaskRun, kind: str) -> None:
    for hook in hooks:
        try:
            value = hook(run)
            if inspect.isawaitable(value):
                await value
        except Exception:
            logger.exception("The %s hook %s failed for %r", kind, _name(hook), run)


def _name(hook: Callable[..., Any]) -> str:
    return getattr(hook, "__qualname__", repr(hook))
