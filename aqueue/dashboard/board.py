"""The dashboard's memory of recent tasks and workers, built from the workers' events.

`Board.apply(event)` folds one event into the task (or worker) it is about; `Board.follow(app)`
applies every event of the app as it arrives and hands each changed task to the subscribers
(`Board.subscribe()`), which the live pages stream. The board keeps the newest `limit` tasks;
it knows only what happened since the dashboard started (events are not stored anywhere).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..events import Event

if TYPE_CHECKING:
    from ..app import App

__all__ = ["STATES", "Board", "TaskRow"]

#: The state each task event leaves its task in.
STATES = {
    "task-sent": "PENDING",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-rejected": "REJECTED",
}

#: How far back the rates in and out of a queue look, in seconds.
RATE_WINDOW = 60.0


@dataclass(slots=True)
class TaskRow:
    """What the events told of one task: its last state, arguments, timings and outcome."""

    id: str
    name: str = "?"
    state: str = "PENDING"
    queue: str | None = None
    hostname: str | None = None
    args: Any = None
    kwargs: Any = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    ended: float | None = None
    runtime: float | None = None
    result: str | None = None
    error: str | None = None
    retries: int = 0
    history: list[tuple[str, float, str]] = field(default_factory=list)

    @property
    def updated(self) -> float:
        """When anything last happened to it."""
        return self.history[-1][1] if self.history else 0.0


@dataclass(slots=True)
class _Queue:
    """Timestamps of the tasks a queue received and finished lately, for its rates."""

    received: deque[float] = field(default_factory=deque)
    done: deque[float] = field(default_factory=deque)


class Board:
    """Recent tasks (newest last, at most `limit`) and the workers' last heartbeats."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.tasks: OrderedDict[str, TaskRow] = OrderedDict()
        self.workers: dict[str, dict[str, Any]] = {}
        self._queues: dict[str, _Queue] = {}
        self._subscribers: set[MemoryObjectSendStream[TaskRow]] = set()
        #: Whether `follow` ever received: a dashboard that did keeps trying when it breaks.
        self.following = False

    def apply(self, event: Event) -> TaskRow | None:
        """Fold one event into the board; return the task it changed (None for a worker's)."""
        if not event.is_task:
            self._worker(event)
            return None
        if event.task_id is None or event.type not in STATES:
            return None
        row = self.tasks.get(event.task_id)
        if row is None:
            row = self.tasks[event.task_id] = TaskRow(event.task_id)
            while len(self.tasks) > self.limit:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(event.task_id)
        _fold(row, event)
        self._count(row, event)
        return row

    def _worker(self, event: Event) -> None:
        known = self.workers.setdefault(event.hostname, {})
        known.update(event.fields)
        known["seen"] = event.timestamp
        known["online"] = event.type != "worker-offline"

    def _count(self, row: TaskRow, event: Event) -> None:
        if row.queue is None:
            return
        queue = self._queues.setdefault(row.queue, _Queue())
        if event.type == "task-received":
            queue.received.append(event.timestamp)
        elif event.type in ("task-succeeded", "task-failed", "task-retried", "task-rejected"):
            queue.done.append(event.timestamp)

    def rates(self, queue: str, now: float | None = None) -> tuple[float, float]:
        """Return the tasks per minute `queue` received and finished over the last minute."""
        counts = self._queues.get(queue)
        if counts is None:
            return 0.0, 0.0
        since = (time.time() if now is None else now) - RATE_WINDOW
        for stamps in (counts.received, counts.done):
            while stamps and stamps[0] < since:
                stamps.popleft()
        per_minute = 60.0 / RATE_WINDOW
        return len(counts.received) * per_minute, len(counts.done) * per_minute

    def matching(self, name: str = "", state: str = "") -> list[TaskRow]:
        """Return the tasks whose name holds `name` and whose state is `state`, newest first."""
        rows = [
            row
            for row in reversed(self.tasks.values())
            if (not name or name in row.name) and (not state or row.state == state)
        ]
        return rows

    @asynccontextmanager
    async def subscribe(self, size: int = 256) -> AsyncIterator[MemoryObjectReceiveStream[TaskRow]]:
        """Receive every task the board changes from now on (a slow reader loses some)."""
        send, receive = anyio.create_memory_object_stream[TaskRow](size)
        self._subscribers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def _publish(self, row: TaskRow) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(row)
            except anyio.WouldBlock:
                pass  # a reader that far behind reloads the page to catch up
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(send)

    async def follow(
        self, app: App, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply the app's events as they come, until cancelled; started once receiving."""
        async with app.events.receive() as stream:
            self.following = True
            task_status.started()
            async for event in stream:
                row = self.apply(event)
                if row is not None:
                    self._publish(row)


def _fold(row: TaskRow, event: Event) -> None:
    fields = event.fields
    row.history.append((event.type, event.timestamp, event.hostname))
    if event.task_name:
        row.name = event.task_name
    if fields.get("queue"):
        row.queue = str(fields["queue"])
    kind = event.type
    if kind == "task-sent":
        row.sent = event.timestamp
    else:
        row.hostname = event.hostname
    if kind == "task-received":
        row.received = event.timestamp
        row.args, row.kwargs = fields.get("args"), fields.get("kwargs")
        row.retries = int(fields.get("retries") or 0)
    elif kind == "task-started":
        row.started = event.timestamp
    elif kind in ("task-succeeded", "task-failed", "task-retried"):
        row.ended = event.timestamp
        runtime = fields.get("runtime")
        row.runtime = float(runtime) if isinstance(runtime, int | float) else None
        if kind == "task-succeeded":
            row.result = str(fields.get("result"))
        else:
            row.error = f"{fields.get('exc_type')}: {fields.get('exc_message')}"
    elif kind in ("task-revoked", "task-rejected"):
        row.ended = event.timestamp
        row.error = " ".join(str(fields.get(key) or "") for key in ("reason", "detail")).strip()
    row.state = STATES[kind]
