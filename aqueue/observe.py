"""What watches a worker's tasks run: its hooks, events, metrics and traces, behind one seam.

The worker calls `received` for a task that waits before it starts (a rate limit, a place, a
thread), and the runner a `Watch` at each step of a task (begin, end, revoked, rejected),
and awaits its hooks (`watch.hooks`, None without task hooks) after `begin` and before `end`.
Exactly one of `end` and `interrupted` follows each `begin`, whatever fails in between: a run
whose outcome could not be stored ends in FAILURE with that error (its message goes back).
The worker gives the runner one only when something watches, so with every feature off the
cost per task is one attribute check. Observers are plain synchronous calls: no coroutine per
task unless there are hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .hooks import Hooks, TaskRun

if TYPE_CHECKING:
    from .drivers.base import Delivery
    from .interfaces import RunnableTask
    from .message import Envelope

__all__ = ["Observer", "Watch"]


class Observer(Protocol):
    """A synchronous watcher of tasks: the event emitter, the metrics, the tracer.

    The runner calls it with what it has at hand (no object is built per task for it).
    """

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Note a message that may run was taken (it may wait for a slot or a rate limit)."""

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Note the task starts now (a task run at once was not `received` first: note both)."""

    def finished(
        self, task: RunnableTask, envelope: Envelope, state: str, runtime: float, outcome: Any
    ) -> None:
        """Note the task ended in `state` (SUCCESS, FAILURE, RETRY); `outcome`: value, error."""

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Note the task was cancelled: terminated (`revoked`), or by a shutdown."""

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Note a task `received` went back to the broker (or was settled) without starting."""

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Note a task was settled without running (revoked, expired)."""

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Note a message was dead-lettered."""


class Watch:
    """The hooks and observers of one worker; the runner calls it around every task.

    Its steps are attributes holding callables: with a single observer and no hooks (events
    alone, say) they are that observer's own methods, so each step is one call.
    """

    def __init__(self, hooks: Hooks | None, observers: list[Observer]) -> None:
        self.hooks = hooks if hooks is not None and hooks.per_task else None
        self.observers = observers
        self.received: Callable[[RunnableTask, Envelope, Delivery], None] = self._received
        self.begin: Callable[[RunnableTask, Envelope, Delivery], TaskRun | None] = self._begin
        self.end: Callable[[RunnableTask, Envelope, str, float, Any], None] = self._end
        self.interrupted: Callable[[RunnableTask, Envelope, bool], None] = self._interrupted
        if len(observers) == 1 and self.hooks is None:
            (only,) = observers
            self.received, self.end = only.received, only.finished
            self.interrupted = only.interrupted
            self.begin = only.started  # returns None: no hooks' record

    def __bool__(self) -> bool:
        return self.hooks is not None or bool(self.observers)

    def _received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Tell the observers a message was taken."""
        for observer in self.observers:
            observer.received(task, envelope, delivery)

    def _begin(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> TaskRun | None:
        """Tell the observers the task starts; return the hooks' record of it (None: no hooks)."""
        for observer in self.observers:
            observer.started(task, envelope, delivery)
        if self.hooks is None:
            return None
        args, kwargs, retries = envelope.args, envelope.kwargs, envelope.retries
        return TaskRun(task, envelope.id, args, kwargs, delivery.queue, retries)

    def _end(
        self, task: RunnableTask, envelope: Envelope, state: str, runtime: float, outcome: Any
    ) -> None:
        """Tell the observers the task ended (after the runner awaited the hooks)."""
        for observer in reversed(self.observers):
            observer.finished(task, envelope, state, runtime, outcome)

    def _interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Tell the observers the task was cancelled."""
        for observer in reversed(self.observers):
            observer.interrupted(task, envelope, revoked)

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Tell the observers a task received went back (or was settled) without starting."""
        for observer in self.observers:
            observer.returned(task, envelope)

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Tell the observers a task was settled without running."""
        for observer in self.observers:
            observer.revoked(task_name, task_id, why)

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Tell the observers a message was dead-lettered."""
        for observer in self.observers:
            observer.rejected(task_name, task_id, reason, detail)
