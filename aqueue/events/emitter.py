"""The worker's side of events: `EventEmitter` buffers them and publishes them in batches.

Nothing is encoded or sent when an event happens. A worker event is a tuple appended to a
buffer; a task has one record, its wire entry (`event.TASK_ENTRY`), made when it is received
(or, if it never waited, when it starts) and filled in place as it starts and ends. The flush
loop, woken by the first entry of a batch, waits `FLUSH_INTERVAL` for more to gather, then
publishes the buffer as it is in one mailbox publish (cut into batches of `BATCH` entries): a
busy worker pays one encode and one publish per tick, and a task that ran within one tick one
entry for its three events. A heartbeat every
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
    from ..drivers.base import Broker, Delivery, Mailbox
    from ..interfaces import RunnableTask
    from ..message import Envelope, OutgoingMessage

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
#: A task-received event carries the task's arguments when its message is no larger than
#: this many bytes (else the string "<too large>").
ARGS_BYTES = 4096
_TOO_LARGE = "<too large>"

_EMPTY: Mapping[str, Any] = {}


def short_repr(value: Any, limit: int) -> str:
    """Return `repr(value)` cut to `limit` characters (events carry reprs, never objects)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return _cut(text, limit)


# A task's record is its wire entry (`event.TASK_ENTRY`), filled in as the task goes: the
# flush encodes the buffer as it is, with no per-task work but a look at the unfinished.
(_KIND, _ID, _NAME, _FROM, _TO, _QUEUE, _RETRIES, _ETA, _ARGS, _KWARGS) = range(10)
(_RECEIVED, _STARTED, _ENDED, _STATE, _RUNTIME, _RESULT, _EXC_TYPE, _EXC_MESSAGE) = range(10, 18)
_QUEUED = 18  # whether it waits in the buffer (sent too: receivers ignore it)

#: Results of these types travel as they are; any other as its repr, cut to 200 characters.
_PLAIN = frozenset({type(None), bool, int, float})


def _published(buffer: list[Any]) -> None:
    """After a flush: what is unfinished goes on from the stage it reached, without arguments."""
    for item in buffer:
        if item.__class__ is list and item[_TO] < 3:
            item[_FROM] = item[_TO]
            item[_ARGS] = item[_KWARGS] = None
            item[_QUEUED] = False


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
        #: Events (tuples) and task records (lists: their wire entries) waiting for the flush.
        self._buffer: list[Any] = []
        #: The records of tasks received and not yet ended, by their envelope (each delivery
        #: decodes its own, alive while it runs): a retry of a task id may be received
        #: before the run that sent it has ended.
        self._open: dict[int, list[Any]] = {}
        self._wake: anyio.Event | None = None
        self.pid = os.getpid()
        #: Entries (an event, or a task's events since the last flush) published and dropped
        #: (a failed publish), for tests and stats.
        self.published = 0
        self.dropped = 0

    # -- emitting (no I/O) -------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        task_id: str | None = None,
        task_name: str | None = None,
        fields: tuple[Any, ...] | Mapping[str, Any] = _EMPTY,
    ) -> None:
        """Buffer one event; the flush loop publishes it within `flush_interval`.

        A task event's `fields` are a tuple of values in the order of `event.FIELDS`.
        """
        buffer = self._buffer
        buffer.append((kind, time.time(), task_id, task_name, fields))
        if len(buffer) == 1 and self._wake is not None:
            self._wake.set()

    # The Observer protocol of aqueue.observe: the runner calls these for every task. Each
    # task has one record (a list, see _Record) made when it is received and filled in as it
    # starts and ends; the flush turns it into the events of the stages reached since the
    # last flush. So the hot path stores a few values, and reprs and tuples are built once
    # per flush, off the task's way.

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Note task-received (its event is built at the flush)."""
        args: Any = envelope.args
        kwargs: Any = envelope.kwargs
        if len(delivery.body) > ARGS_BYTES:
            args = kwargs = _TOO_LARGE
        # The wire entry itself (_KIND ... _QUEUED), built inline: this runs for every task.
        record = [
            "task",
            envelope.id,
            task.name,
            0,
            1,
            delivery.queue,
            envelope.retries,
            envelope.eta,
            args,
            kwargs,
            time.time(),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            True,
        ]
        self._open[id(envelope)] = record
        buffer = self._buffer
        buffer.append(record)
        if len(buffer) == 1 and self._wake is not None:
            self._wake.set()

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Note task-started, and task-received at the same time if it never waited.

        The worker calls `received` only for the tasks that wait before they start.
        """
        record = self._open.get(id(envelope))
        if record is None:  # both at once, inline: this is every task's path
            now = time.time()
            args: Any = envelope.args
            kwargs: Any = envelope.kwargs
            if len(delivery.body) > ARGS_BYTES:
                args = kwargs = _TOO_LARGE
            record = [
                "task",
                envelope.id,
                task.name,
                0,
                2,
                delivery.queue,
                envelope.retries,
                envelope.eta,
                args,
                kwargs,
                now,
                now,
                None,
                None,
                None,
                None,
                None,
                None,
                True,
            ]
            self._open[id(envelope)] = record
            buffer = self._buffer
            buffer.append(record)
            if len(buffer) == 1 and self._wake is not None:
                self._wake.set()
            return
        record[_STARTED] = time.time()
        record[_TO] = 2
        if not record[_QUEUED]:
            record[_QUEUED] = True
            self._buffer.append(record)

    def finished(
        self,
        task: RunnableTask,
        envelope: Envelope,
        state: str,
        runtime: float,
        outcome: Any,
    ) -> None:
        """Note task-succeeded, task-failed or task-retried."""
        record = self._open.pop(id(envelope), None)
        if record is None:
            return
        # The end by the clock that timed the start: one clock read fewer per task.
        ended = record[_STARTED] + runtime if record[_STARTED] is not None else time.time()
        if state == "SUCCESS":
            result = outcome if outcome.__class__ in _PLAIN else short_repr(outcome, 200)
            record[_ENDED : _RESULT + 1] = (ended, state, runtime, result)
        else:
            error = outcome if isinstance(outcome, BaseException) else None
            record[_ENDED:] = (
                ended,
                state,
                runtime,
                None,
                type(error).__name__ if error is not None else None,
                _cut(str(error), 1000) if error is not None else None,
                record[_QUEUED],
            )
        record[_TO] = 3
        if not record[_QUEUED]:
            record[_QUEUED] = True
            self._buffer.append(record)

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Emit task-revoked for a terminated task (a shutdown's task comes back: no event)."""
        self._open.pop(id(envelope), None)
        if revoked:
            reason = ("terminated while running", True)
            self.emit("task-revoked", envelope.id, task.name, reason)

    def revoked(self, task_name: str, task_id: str, why: str) -> None:
        """Emit task-revoked for a task settled without running."""
        self.emit("task-revoked", task_id, task_name, (why, False))

    def rejected(self, task_name: str, task_id: str, reason: str, detail: str) -> None:
        """Emit task-rejected for a dead-lettered message."""
        self.emit("task-rejected", task_id, task_name, (reason, _cut(detail, 1000)))

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
        """Publish every buffered event now, in batches of `BATCH` entries."""
        entries, self._buffer = self._buffer, []
        if self._wake is not None and self._wake.is_set():
            self._wake = anyio.Event()
        for start in range(0, len(entries), BATCH):
            chunk = entries[start : start + BATCH]
            try:
                data = encode_batch(self.hostname, chunk, self.pid)
                _published(chunk)
                await self.mailbox.publish(TOPIC, data)
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
            (message.queue, message.eta, 0),
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
