"""The event model: `Event`, its types, and the wire format of a batch of events.

Events travel on the mailbox topic `events` (see `aqueue.drivers.base.Mailbox`), in batches:
one msgpack map per publish,

    {"v": 1, "hostname": str, "pid": int | None,
     "events": [[type, timestamp, task_id, task_name, fields], ...]}

where `task_id` and `task_name` are None for worker events, and `fields` is the event type's
own fields (below): for a task event, an array of their values in the order of `FIELDS` (a
map's keys would cost more than the rest of the event); for a worker event, a map. A worker
sends its tasks' received, started and ended events as one entry per task and flush instead
(`TASK_ENTRY`), which the receiver expands into those events: a task that ran within one
flush interval costs one entry, not three events. A receiver skips what it cannot read, and
ignores values past those it knows.

    task-sent        queue, eta, retries                  (the producer's hostname)
    task-received    queue, retries, eta, args, kwargs    (the values; "<too large>" for a
                                                          message over 4 KiB; a type msgpack
                                                          lacks, such as datetime, as its repr)
    task-started     queue, pid
    task-succeeded   runtime (seconds), result            (a repr, cut to 200 characters)
    task-failed      runtime, exc_type, exc_message
    task-retried     runtime, exc_type, exc_message, retries
    task-revoked     reason, terminated
    task-rejected    reason, detail                        (dead-lettered)
    worker-online    pid, concurrency, queues, sw_ver, freq
    worker-heartbeat active, processed, freq, loadavg, pid
    worker-offline   processed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .. import codec

__all__ = ["EVENT_TYPES", "FIELDS", "TOPIC", "Event", "Raw", "decode_batch", "encode_batch"]

#: The mailbox topic events are published on.
TOPIC = "events"

EVENT_TYPES = frozenset(
    {
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
        "task-failed",
        "task-retried",
        "task-revoked",
        "task-rejected",
        "worker-online",
        "worker-heartbeat",
        "worker-offline",
    }
)

#: The fields of each task event type, in the order of their values on the wire.
FIELDS: dict[str, tuple[str, ...]] = {
    "task-sent": ("queue", "eta", "retries"),
    "task-received": ("queue", "retries", "eta", "args", "kwargs"),
    "task-started": ("queue", "pid"),
    "task-succeeded": ("runtime", "result"),
    "task-failed": ("runtime", "exc_type", "exc_message"),
    "task-retried": ("runtime", "exc_type", "exc_message", "retries"),
    "task-revoked": ("reason", "terminated"),
    "task-rejected": ("reason", "detail"),
}

#: A worker's entry for one task: its events of the stages after `from` up to `to` (1
#: received, 2 started, 3 ended), with the ended part (from `ended` on) only when `to` is 3.
TASK_ENTRY = (
    "task",
    "task_id",
    "task_name",
    "from",
    "to",
    "queue",
    "retries",
    "eta",
    "args",
    "kwargs",
    "received",
    "started",
    "ended",
    "state",
    "runtime",
    "result",
    "exc_type",
    "exc_message",
)

#: One event as the emitter buffers it: (type, timestamp, task_id, task_name, fields), the
#: fields a tuple of values (task events, see FIELDS) or a map (worker events).
Raw = tuple[str, float, str | None, str | None, "tuple[Any, ...] | Mapping[str, Any]"]


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened on a worker (or a producer), as `app.events.receive()` gives it.

    `type` is one of `EVENT_TYPES` ("task-succeeded", "worker-heartbeat", ...); `timestamp` a
    POSIX time taken where it happened; `hostname` the worker's name (or the producer's);
    `task_id` and `task_name` are None for worker events; `fields` holds the type's own fields
    (see this module's docstring), also readable as `event["runtime"]`.
    """

    type: str
    timestamp: float
    hostname: str
    task_id: str | None = None
    task_name: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        """Return one of the event's own fields: `event["runtime"]`."""
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        """Return one of the event's own fields, or `default`."""
        return self.fields.get(name, default)

    @property
    def is_task(self) -> bool:
        """Whether this is a task's event (task-*), not a worker's."""
        return self.type.startswith("task-")


def encode_batch(hostname: str, events: list[Any], pid: int | None = None) -> bytes:
    """Encode buffered events and task entries as one batch."""
    batch = {"v": 1, "hostname": hostname, "pid": pid, "events": events}
    packed: bytes = msgpack.packb(batch, use_bin_type=True, default=_shown)
    return packed


def _shown(value: object) -> str:
    """Stand in for a value msgpack cannot encode (a datetime among the arguments): its repr."""
    return repr(value)


def decode_batch(data: bytes) -> list[Event]:
    """Decode one batch; raise ValueError if it is not one."""
    batch = codec.unpack(data)
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
        raise ValueError("not an event batch")
    hostname = str(batch.get("hostname") or "?")
    events: list[Event] = []
    pid = batch.get("pid")
    for item in batch["events"]:
        if isinstance(item, list) and item and item[0] == "task":
            events.extend(_task_events(hostname, pid, item))
            continue
        if not isinstance(item, list | tuple) or len(item) < 5:
            continue
        kind, stamp, task_id, task_name, fields = item[:5]
        if not isinstance(kind, str) or not isinstance(stamp, int | float):
            continue
        if isinstance(fields, list | tuple):
            fields = dict(zip(FIELDS.get(kind, ()), fields, strict=False))
        events.append(
            Event(
                kind,
                float(stamp),
                hostname,
                task_id if isinstance(task_id, str) else None,
                task_name if isinstance(task_name, str) else None,
                fields if isinstance(fields, dict) else {},
            )
        )
    return events


def _task_events(hostname: str, pid: Any, item: list[Any]) -> list[Event]:
    """Expand a task entry (`TASK_ENTRY`) into its events; [] if it cannot be read."""
    entry = dict(zip(TASK_ENTRY, item, strict=False))
    task_id, name = entry.get("task_id"), entry.get("task_name")
    low, high = entry.get("from"), entry.get("to")
    if not isinstance(task_id, str) or not isinstance(low, int) or not isinstance(high, int):
        return []
    name = name if isinstance(name, str) else None
    events: list[Event] = []

    def add(kind: str, stamp: Any, fields: dict[str, Any]) -> None:
        if isinstance(stamp, int | float):
            events.append(Event(kind, float(stamp), hostname, task_id, name, fields))

    queue = entry.get("queue")
    if low < 1 <= high:
        fields = {key: entry.get(key) for key in FIELDS["task-received"]}
        add("task-received", entry.get("received"), fields)
    if low < 2 <= high:
        add("task-started", entry.get("started"), {"queue": queue, "pid": pid})
    if low < 3 <= high:
        state = entry.get("state")
        if state == "SUCCESS":
            kind = "task-succeeded"
        else:
            kind = "task-retried" if state == "RETRY" else "task-failed"
        fields = {key: entry.get(key) for key in FIELDS[kind] if key != "retries"}
        if kind == "task-retried":
            fields["retries"] = int(entry.get("retries") or 0) + 1
        add(kind, entry.get("ended"), fields)
    return events
