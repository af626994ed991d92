"""The worker's side of events: `EventEmitter` buffers them and publishes them in batches.

Each event is a tuple appended to a list (no I/O, no encoding) at the moment it happens; the
emitter's flush loop, woken by the first event of a batch, waits `FLUSH_INTERVAL` for more to
gather, then publishes them all in one mailbox publish (cut into batches of `BATCH` events),
so a busy worker pays one publish per tick, not one per event. A heartbeat every
`HEARTBEAT_INTERVAL` seconds says the worker lives; `worker-online` and `worker-offline`
bracket its life. A failed publish is logged and its events dropped: events are best-effort
news, never a reason to slow or stop the worker.

    EventEmitter.run
    └── task group
        ├── flush loop       wait for the first event, gather for FLUSH_INTERVAL, publish
        └── heartbeat loop   worker-heartbeat every HEARTBEAT_INTERVAL seconds (a named loop)
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from .._version import __version__
from .event import TOPIC, Raw, encode_batch

if TYPE_CHECKING:
    from ..drivers.base import Broker, Mailbox
    from ..hooks import TaskRun
    from ..message import Envelope, OutgoingMessage
    from ..task import Task

__all__ = [
    "BATCH",
    "FLUSH_INTERVAL",
    "HEARTBEAT_INTERVAL",
    "EventEmitter",
    "announce_sent",
    "short_repr",
]

logger = logging.getLogger("aqueue.events")

#: How long the first event of a batch waits for others before they are published together.
FLUSH_INTERVAL = 0.1
#: Events per publish, at most.
BATCH = 2000
#: Seconds between worker-heartbeat events (Celery's is 2 s too).
HEARTBEAT_INTERVAL = 2.0

_EMPTY: Mapping[str, Any] = {}


def short_repr(value: Any, limit: int) -> str:
    """Return `repr(value)` cut to `limit` characters (events carry reprs, never objects)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return _cut(text, limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


class EventEmitter:
    """Buffers a worker's (or a producer's) events and publishes them on the mailbox.

    `status()` returns the worker's live counters for its heartbeats (`active`, `processed`,
    and whatever else it likes); `online` the fields of its worker-online event.
    """

    def __init__(
        self,
        mailbox: Mailbox,
        hostname: str,
        status: Callable[[], dict[str, Any]] = dict,
        online: Mapping[str, Any] = _EMPTY,
        *,
        flush_interval: float = FLUSH_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.mailbox = mailbox
        self.hostname = hostname
        self.status = status
        self.online = online
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self._buffer: list[Raw] = []
        self._wake: anyio.Event | None = None
        self.pid = os.getpid()
        #: Events published and dropped (a failed publish), for tests and stats.
        self.published = 0
        self.dropped = 0

    # -- emitting (no I/O) -------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        task_id: str | None = None,
        task_name: str | None = None,
        fields: Mapping[str, Any] = _EMPTY,
    ) -> None:
        """Buffer one event; the flush loop publishes it within `flush_interval`."""
        buffer = self._buffer
        buffer.append((kind, time.time(), task_id, task_name, fields))
        if len(buffer) == 1 and self._wake is not None:
            self._wake.set()

    # The Observer protocol of aqueue.observe: the runner calls these for every task.

    def received(self, task: Task[Any, Any], envelope: Envelope, queue: str) -> None:
        """Emit task-received, with the arguments' reprs."""
        self.emit(
            "task-received",
            envelope.id,
            task.name,
            {
                "queue": queue,
                "retries": envelope.retries,
                "eta": envelope.eta,
                "args": short_repr(envelope.args, 1000),
                "kwargs": short_repr(envelope.kwargs, 1000),
            },
        )

    def started(self, run: TaskRun, envelope: Envelope) -> None:
        """Emit task-started."""
        self.emit("task-started", run.id, run.task.name, {"queue": run.queue, "pid": self.pid})

    def finished(self, run: TaskRun) -> None:
        """Emit task-succeeded, task-failed or task-retried."""
        state, error = run.state, run.error
        if state == "SUCCESS":
            fields = {"runtime": run.runtime, "result": short_repr(run.result, 200)}
            self.emit("task-succeeded", run.id, run.task.name, fields)
            return
        fields = {
            "runtime": run.runtime,
            "exc_type": type(error).__name__ if error is not None else None,
            "exc_message": _cut(str(error), 1000) if error is not None else None,
        }
        if state == "RETRY":
            fields["retries"] = run.retries + 1
            self.emit("task-retried", run.id, run.task.name, fields)
        else:
            self.emit("task-failed", run.id, run.task.name, fields)

    def interrupted(self, run: TaskRun, revoked: bool) -> None:
        """Emit task-revoked for a terminated task (a shutdown's task comes back: no event)."""
        if revoked:
            self.emit(
                "task-revoked", run.id, run.task.name, {"reason": "terminated", "terminated": True}
            )

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Emit task-revoked for a task settled without running."""
        self.emit("task-revoked", task_id, task_name, {"reason": why, "terminated": False})

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Emit task-rejected for a dead-lettered message."""
        self.emit("task-rejected", task_id, task_name, {"reason": reason, "detail": detail[:1000]})

    # -- publishing ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Publish worker-online, then events and heartbeats until cancelled, then offline."""
        self._wake = anyio.Event()
        self.emit(
            "worker-online",
            fields={
                "pid": self.pid,
                "sw_ver": __version__,
                "freq": self.heartbeat_interval,
                **self.online,
            },
        )
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._flush_loop)
                group.start_soon(self._heartbeat_loop)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                self.emit("worker-offline", fields={"processed": self.status().get("processed")})
                await self.flush()

    async def flush(self) -> None:
        """Publish every buffered event now, in batches of `BATCH`."""
        events, self._buffer = self._buffer, []
        if self._wake is not None and self._wake.is_set():
            self._wake = anyio.Event()
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]
            try:
                await self.mailbox.publish(TOPIC, encode_batch(self.hostname, chunk))
            except Exception:
                self.dropped += len(chunk)
                logger.warning("Could not publish %d event(s); dropped", len(chunk), exc_info=True)
            else:
                self.published += len(chunk)

    async def _flush_loop(self) -> None:
        while True:
            assert self._wake is not None
            if not self._buffer:
                await self._wake.wait()
            await anyio.sleep(self.flush_interval)  # let the batch gather
            await self.flush()

    async def _heartbeat_loop(self) -> None:
        """Emit worker-heartbeat every `heartbeat_interval` seconds (a named, owned loop)."""
        while True:
            await anyio.sleep(self.heartbeat_interval)
            fields = {"pid": self.pid, "freq": self.heartbeat_interval, **self.status()}
            with contextlib.suppress(OSError):  # no load average on this system
                fields["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            self.emit("worker-heartbeat", fields=fields)


async def announce_sent(
    broker: Broker, task_name: str, messages: Sequence[OutgoingMessage]
) -> None:
    """Publish task-sent for messages just sent (`task_send_sent_event`), in one publish.

    A producer has no flush loop: its events go out at once. A broker without a mailbox, or
    a failed publish, is logged; the tasks were sent all the same.
    """
    now = time.time()
    events: list[Raw] = [
        (
            "task-sent",
            now,
            message.id,
            task_name,
            {"queue": message.queue, "eta": message.eta, "retries": 0},
        )
        for message in messages
    ]
    try:
        mailbox = broker.mailbox()
        for start in range(0, len(events), BATCH):
            batch = encode_batch(producer_name(), events[start : start + BATCH])
            await mailbox.publish(TOPIC, batch)
    except Exception:
        logger.warning("Could not publish task-sent events", exc_info=True)


def producer_name() -> str:
    """Return the hostname of a producer's events: this host and process."""
    return f"producer@{socket.gethostname()}:{os.getpid()}"
