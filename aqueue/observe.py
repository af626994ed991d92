"""What watches a worker's tasks run: its hooks, events, metrics and traces, behind one seam.

The runner calls a `Watch` at each step of a task (received, started, finished, revoked,
rejected); the worker builds one only when something watches (`build_watch`), so with every
feature off the cost per task is one attribute check. Each part is optional and is called only
if present.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .hooks import Hooks, TaskRun

if TYPE_CHECKING:
    from .message import Envelope
    from .task import Task

__all__ = ["Observer", "Watch"]


class Observer(Protocol):
    """A synchronous watcher of tasks: the event emitter, the metrics, the tracer."""

    def received(self, task: Task[Any, Any], envelope: Envelope, queue: str) -> None:
        """Note a message that may run was taken (it may wait for a slot or a rate limit)."""

    def started(self, run: TaskRun, envelope: Envelope) -> None:
        """Note the task starts now."""

    def finished(self, run: TaskRun) -> None:
        """Note the task ended with `run.state` (SUCCESS, FAILURE, RETRY) after `run.runtime`."""

    def interrupted(self, run: TaskRun, revoked: bool) -> None:
        """Note the task was cancelled: terminated (`revoked`), or by a shutdown."""

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Note a task was settled without running (revoked, expired)."""

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Note a message was dead-lettered."""


class Watch:
    """The hooks and observers of one worker; the runner calls it around every task."""

    def __init__(self, hooks: Hooks | None, observers: list[Observer]) -> None:
        self.hooks = hooks if hooks is not None and hooks.per_task else None
        self.observers = observers

    def __bool__(self) -> bool:
        return self.hooks is not None or bool(self.observers)

    def received(self, task: Task[Any, Any], envelope: Envelope, queue: str) -> None:
        """Tell the observers a message was taken."""
        for observer in self.observers:
            observer.received(task, envelope, queue)

    async def started(self, task: Task[Any, Any], envelope: Envelope, queue: str) -> TaskRun:
        """Make the run's record, tell the observers, and run the before_task hooks."""
        run = TaskRun(task, envelope.id, envelope.args, envelope.kwargs, queue, envelope.retries)
        for observer in self.observers:
            observer.started(run, envelope)
        if self.hooks is not None:
            await self.hooks.before(run)
        return run

    async def finished(self, run: TaskRun) -> None:
        """Run the after_task (and on_failure) hooks, then tell the observers."""
        if self.hooks is not None:
            await self.hooks.after(run)
        for observer in reversed(self.observers):
            observer.finished(run)

    def interrupted(self, run: TaskRun, revoked: bool) -> None:
        """Tell the observers the task was cancelled."""
        for observer in reversed(self.observers):
            observer.interrupted(run, revoked)

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Tell the observers a task was settled without running."""
        for observer in self.observers:
            observer.revoked(task_name, task_id, why)

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Tell the observers a message was dead-lettered."""
        for observer in self.observers:
            observer.rejected(task_name, task_id, reason, detail)
