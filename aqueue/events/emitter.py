"""The worker's side of events: `EventEmitter` buffers them and publishes them in batches.

Nothing is sent when an event happens: each is a tuple appended to a buffer, and a task's
steps are tuples of the values at hand, in the wire format itself (`event.STEPS`): a task that
starts at once is one entry for its received and started events, its end one more. Every
`CHUNK` entries, the buffer is encoded (msgpack, one call) while its tuples are still in the
processor's caches, and emptied; the flush loop, woken by the first entry of a batch, waits
`FLUSH_INTERVAL` for more to gather, then publishes the encoded chunks (and what is left in the
buffer) in one mailbox publish per `BATCH` entries, the batch's head written once. A busy
worker pays a few encodes and one publish per tick, nothing per event but a tuple. The emitter
keeps no record per task, only the ids of tasks received and waiting to start. A heartbeat
every `HEARTBEAT_INTERVAL` seconds says the worker lives; `worker-online` and `worker-offline`
bracket its life. A failed encode or publish is logged and its events dropped: events are
best-effort news, never a reason to slow or stop the worker.

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
import msgpack
from anyio.abc import TaskStatus

from .._version import __version__
from .event import (
    BEGUN,
    ENDED,
    RAN,
    RECEIVED,
    STARTED,
    TOPIC,
    Raw,
    array_head,
    batch_head,
    encode_batch,
    shown,
)

if TYPE_CHECKING:
    from ..drivers.base import Broker, Delivery, Mailbox
    from ..interfaces import RunnableTask
    from ..message import Envelope, OutgoingMessage

__all__ = [
    "BATCH",
    "CHUNK",
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
BATCH = 4096
#: Entries encoded together as they come (while their tuples are still in the caches).
CHUNK = 256
#: Seconds between worker-heartbeat events (Celery's is 2 s too).
HEARTBEAT_INTERVAL = 2.0

#: A task-received event carries the task's arguments when its message is no larger than
#: this many bytes (else the string "<too large>").
ARGS_BYTES = 4096
_TOO_LARGE = "<too large>"

_EMPTY: Mapping[str, Any] = {}

_now = time.time


def short_repr(value: Any, limit: int) -> str:
    """Return `repr(value)` cut to `limit` characters (events carry reprs, never objects)."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return _cut(text, limit)


#: Results of these types travel as they are; any other as its repr, cut to 200 characters.
_PLAIN = frozenset({type(None), bool, int, float})


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _array_head_size(count: int) -> int:
    """Return the size of the head of a msgpack array of `count` items."""
    return 1 if count < 16 else 3 if count < 0x10000 else 5


def _begun(
    step: int, task: RunnableTask, envelope: Envelope, delivery: Delivery
) -> tuple[Any, ...]:
    """Return a task's received (or received-and-started) step (`event.STEPS`)."""
    args: Any = envelope.args or None  # none: None, cheaper to encode than [] or {}
    kwargs: Any = envelope.kwargs or None
    if len(delivery.body) > ARGS_BYTES:
        args = kwargs = _TOO_LARGE
    queue, retries, eta = delivery.queue, envelope.retries, envelope.eta
    return (step, envelope.id, task.name, _now(), queue, retries, eta, args, kwargs)


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
        #: Events and task steps (tuples: `event.STEPS`) not encoded yet.
        self._buffer: list[Any] = []
        #: Entries encoded, waiting for the flush: (how many, their msgpack without a head).
        self._chunks: list[tuple[int, bytes]] = []
        #: The begun step (`BEGUN`) last in the buffer, if the last entry is one: its task's
        #: end, if nothing came in between, makes it the task's whole run (`finished`).
        self._last_begun: tuple[Any, ...] | None = None
        self._packer = msgpack.Packer(use_bin_type=True, default=shown)
        #: Tasks received and waiting to start, by id(envelope) (the runner holds it).
        self._waiting: dict[int, str] = {}
        self._wake: anyio.Event | None = None
        self.pid = os.getpid()
        self._head = batch_head(hostname, self.pid)
        #: Entries (an event, or a task's step) published and dropped (a failed encode or
        #: publish), for tests and stats.
        self.published = 0
        self.dropped = 0

    @property
    def waiting(self) -> int:
        """How many tasks were received and have not started (nor gone back) yet."""
        return len(self._waiting)

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
        self._add((kind, _now(), task_id, task_name, fields))

    def _add(self, entry: tuple[Any, ...]) -> None:
        """Buffer an entry, waking the flush loop for the first of a batch (see `started`)."""
        buffer = self._buffer
        if not buffer:
            self._wake_up()
        buffer.append(entry)
        self._last_begun = None
        if len(buffer) >= CHUNK:
            self._pack()

    def _wake_up(self) -> None:
        """Wake the flush loop: the first entry of a batch is coming."""
        if self._wake is not None:
            self._wake.set()

    def _pack(self) -> None:
        """Encode the buffered entries (one msgpack call), and empty the buffer."""
        buffer = self._buffer
        count = len(buffer)
        try:
            data = self._packer.pack(buffer)[_array_head_size(count) :]
        except Exception:  # a value msgpack cannot take even as a repr (nested too deep)
            count, data = self._pack_each(buffer)
        buffer.clear()
        self._last_begun = None
        if count:
            self._chunks.append((count, data))

    def _pack_each(self, entries: list[Any]) -> tuple[int, bytes]:
        """Encode the entries one by one, dropping (and logging) those that cannot be."""
        kept: list[bytes] = []
        for entry in entries:
            try:
                kept.append(self._packer.pack(entry))
            except Exception:
                self.dropped += 1
                logger.warning("Could not encode a %r event; dropped", entry[0], exc_info=True)
        return len(kept), b"".join(kept)

    # The Observer protocol of aqueue.observe: the runner calls these for every task. Each
    # appends one tuple of the values at hand, as the wire carries it (`event.STEPS`); the
    # two of every task (`started`, `finished`) spell `_add` out, a call fewer each.

    def received(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Note task-received: the task waits before it starts (a rate limit, a thread)."""
        self._waiting[id(envelope)] = envelope.id
        self._add(_begun(RECEIVED, task, envelope, delivery))

    def started(self, task: RunnableTask, envelope: Envelope, delivery: Delivery) -> None:
        """Note task-started, and task-received at the same time if it never waited.

        The worker calls `received` only for the tasks that wait before they start.
        """
        waiting = self._waiting
        # A stale id's task (never started) is not this one: compare the ids.
        if waiting and waiting.pop(id(envelope), None) == envelope.id:
            self._add((STARTED, envelope.id, task.name, _now(), delivery.queue))
            return
        if len(delivery.body) <= ARGS_BYTES:  # this is every task's path
            # `finished` makes it the task's whole run if nothing comes in between.
            step = (
                BEGUN,
                envelope.id,
                task.name,
                _now(),
                delivery.queue,
                envelope.retries,
                envelope.eta,
                envelope.args or None,  # none: None, cheaper to encode than [] or {}
                envelope.kwargs or None,
            )
        else:
            step = _begun(BEGUN, task, envelope, delivery)
        buffer = self._buffer
        if not buffer:
            self._wake_up()
        buffer.append(step)
        self._last_begun = step
        if len(buffer) >= CHUNK:
            self._pack()

    def finished(
        self,
        task: RunnableTask,
        envelope: Envelope,
        state: str,
        runtime: float,
        outcome: Any,
    ) -> None:
        """Note task-succeeded, task-failed or task-retried."""
        buffer = self._buffer
        if state == "SUCCESS":
            result = outcome if outcome.__class__ in _PLAIN else short_repr(outcome, 200)
            last = self._last_begun
            # The task ran without a pause (no result stored, nothing awaited): its begun
            # step, still last, becomes its whole run, one entry for the three events.
            if last is not None and last[1] is envelope.id:
                _, ident, name, stamp, queue, retries, eta, args, kwargs = last
                buffer[-1] = (
                    RAN,
                    ident,
                    name,
                    stamp,
                    queue,
                    retries,
                    eta,
                    args,
                    kwargs,
                    runtime,
                    result,
                )
                self._last_begun = None
                return
            step: tuple[Any, ...] = (ENDED, envelope.id, task.name, _now(), state, runtime, result)
        else:
            error = outcome if isinstance(outcome, BaseException) else None
            exc_type = type(error).__name__ if error is not None else None
            message = _cut(str(error), 1000) if error is not None else None
            retries = envelope.retries
            step = (ENDED, envelope.id, task.name, _now(), state, runtime, None)
            step += (exc_type, message, retries)
        if not buffer:
            self._wake_up()
        buffer.append(step)
        self._last_begun = None
        if len(buffer) >= CHUNK:
            self._pack()

    def interrupted(self, task: RunnableTask, envelope: Envelope, revoked: bool) -> None:
        """Emit task-revoked for a terminated task (a shutdown's task comes back: no event)."""
        self._waiting.pop(id(envelope), None)
        if revoked:
            reason = ("terminated while running", True)
            self.emit("task-revoked", envelope.id, task.name, reason)

    def returned(self, task: RunnableTask, envelope: Envelope) -> None:
        """Forget a task received and handed back before it started (no event: it comes back)."""
        self._waiting.pop(id(envelope), None)

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
        """Publish every buffered event now, at most `BATCH` entries per publish."""
        if self._buffer:
            self._pack()
        chunks, self._chunks = self._chunks, []
        if self._wake is not None and self._wake.is_set():
            self._wake = anyio.Event()
        parts: list[bytes] = []
        count = 0
        for size, data in chunks:
            if parts and count + size > BATCH:
                await self._publish(count, parts)
                parts, count = [], 0
            parts.append(data)
            count += size
        if parts:
            await self._publish(count, parts)

    async def _publish(self, count: int, parts: list[bytes]) -> None:
        """Publish `count` encoded entries as one batch (`event.batch_head`)."""
        try:
            await self.mailbox.publish(TOPIC, b"".join([self._head, array_head(count), *parts]))
        except Exception:
            self.dropped += count
            logger.warning("Could not publish %d event(s); dropped", count, exc_info=True)
        else:
            self.published += count

    async def _flush_loop(self) -> None:
        while True:
            assert self._wake is not None
            if not self._buffer and not self._chunks:
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
