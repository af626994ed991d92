"""The event model: `Event`, its types, and the wire format of a batch of events.

Events travel on the mailbox topic `events` (see `aqueue.drivers.base.Mailbox`), in batches:
one msgpack map per publish,

    {"v": 3, "hostname": str, "pid": int | None,
     "events": [[type, timestamp, task_id, task_name, fields], ...]}

where `task_id` and `task_name` are None for worker events, and `fields` is the event type's
own fields (below): for a task event, an array of their values in the order of `FIELDS` (a
map's keys would cost more than the rest of the event); for a worker event, a map. A worker
sends its tasks' received, started and ended events as step entries instead (`STEPS`, a
number first), which the receiver expands into those events: a task that starts as soon as
it is received costs two entries, not three events, and the worker builds no more than the
entries themselves. A receiver skips what it cannot read, and ignores values past those it
knows. A later version may add entries, steps and values, never change what these mean: a
receiver reads a batch of a version newer than its own (`VERSION`) as far as it knows it,
after a one-line warning (once per worker and version) that it may miss events.

    [1, task_id, task_name, timestamp, queue, retries, eta, args, kwargs]    task-received
    [2, task_id, task_name, timestamp, queue, retries, eta, args, kwargs]    received, started
    [3, task_id, task_name, timestamp, queue]                                task-started
    [4, task_id, task_name, timestamp, state, runtime, result, exc_type,     succeeded, failed,
        exc_message, retries]                                                or retried
    [5, task_id, task_name, timestamp, queue, retries, eta, args, kwargs,    received, started,
        runtime, result]                                                     and succeeded

where `args` and `kwargs` are None when there are none (cheaper to encode than an empty array
or map), and `state` is SUCCESS, FAILURE or RETRY.

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

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .. import codec

__all__ = [
    "BEGUN",
    "ENDED",
    "EVENT_TYPES",
    "FIELDS",
    "RAN",
    "RECEIVED",
    "STARTED",
    "STEPS",
    "TOPIC",
    "VERSION",
    "Event",
    "Raw",
    "array_head",
    "batch_head",
    "decode_batch",
    "encode_batch",
    "shown",
]

logger = logging.getLogger("aqueue.events")

#: The mailbox topic events are published on.
TOPIC = "events"
#: The version of the batches written here (`decode_batch` reads this one and older ones).
VERSION = 3

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

#: A worker's task steps, by the number that starts their entry: the names of the values
#: after it (`retries` of an ended step comes with FAILURE and RETRY only).
RECEIVED, BEGUN, STARTED, ENDED, RAN = 1, 2, 3, 4, 5
_BEGIN = ("task_id", "task_name", "timestamp", "queue", "retries", "eta", "args", "kwargs")
STEPS: dict[int, tuple[str, ...]] = {
    RECEIVED: _BEGIN,
    BEGUN: _BEGIN,
    RAN: (*_BEGIN, "runtime", "result"),
    STARTED: ("task_id", "task_name", "timestamp", "queue"),
    ENDED: (
        "task_id",
        "task_name",
        "timestamp",
        "state",
        "runtime",
        "result",
        "exc_type",
        "exc_message",
        "retries",
    ),
}

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
    batch = {"v": VERSION, "hostname": hostname, "pid": pid, "events": events}
    packed: bytes = msgpack.packb(batch, use_bin_type=True, default=shown)
    return packed


def batch_head(hostname: str, pid: int | None) -> bytes:
    """Return the start of a batch, up to its events (their array's head, then the events).

    `batch_head(h, p) + array_head(len(events)) + each event encoded` is `encode_batch`'s.
    """
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(4)]
    for key, value in (("v", VERSION), ("hostname", hostname), ("pid", pid)):
        parts += [packer.pack(key), packer.pack(value)]
    parts.append(packer.pack("events"))
    return b"".join(parts)


def array_head(count: int) -> bytes:
    """Return the msgpack head of an array of `count` items."""
    head: bytes = msgpack.Packer().pack_array_header(count)
    return head


def shown(value: object) -> str:
    """Stand in for a value msgpack cannot encode (a datetime among the arguments): its repr."""
    return repr(value)


def decode_batch(data: bytes) -> list[Event]:
    """Decode one batch; raise ValueError if it is not one."""
    batch = codec.unpack(data)
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
        raise ValueError("not an event batch")
    hostname = str(batch.get("hostname") or "?")
    version = batch.get("v")
    if not isinstance(version, int) or version > VERSION:
        _newer(hostname, version)
    events: list[Event] = []
    pid = batch.get("pid")
    for item in batch["events"]:
        if isinstance(item, list) and item and type(item[0]) is int:
            events.extend(_step_events(hostname, pid, item))
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


def _succeeded(received: Event, entry: dict[str, Any]) -> list[Event]:
    """Return the task-succeeded event of a run's step (`RAN`), timed by its runtime."""
    runtime = entry.get("runtime")
    if not isinstance(runtime, int | float):
        return []
    fields = {"runtime": runtime, "result": entry.get("result")}
    stamp = received.timestamp + runtime
    return [
        Event(
            "task-succeeded", stamp, received.hostname, received.task_id, received.task_name, fields
        )
    ]


#: The (hostname, version) pairs of batches newer than this module, warned about once each.
_WARNED: set[tuple[str, str]] = set()


def _newer(hostname: str, version: object) -> None:
    """Warn, once per sender and version, of a batch newer than this receiver reads."""
    key = (hostname, repr(version)[:20])
    if key in _WARNED:
        return
    _WARNED.add(key)
    logger.warning(
        "Events from %s come in batch format v%s, newer than this aqueue reads (v%d): "
        "showing the events it knows; upgrade aqueue to see them all",
        hostname,
        key[1],
        VERSION,
    )


def _step_events(hostname: str, pid: Any, item: list[Any]) -> list[Event]:
    """Expand a task step (`STEPS`) into its events; [] if it cannot be read."""
    step = item[0]
    entry = dict(zip(STEPS.get(step, ()), item[1:], strict=False))
    task_id, name, stamp = entry.get("task_id"), entry.get("task_name"), entry.get("timestamp")
    if not isinstance(task_id, str) or not isinstance(stamp, int | float):
        return []
    name = name if isinstance(name, str) else None

    def event(kind: str, fields: dict[str, Any]) -> Event:
        return Event(kind, float(stamp), hostname, task_id, name, fields)

    if step in (RECEIVED, BEGUN, RAN):
        fields = {key: entry.get(key) for key in FIELDS["task-received"]}
        if fields["args"] is None:  # none: sent as None, cheaper to encode
            fields["args"] = []
        if fields["kwargs"] is None:
            fields["kwargs"] = {}
        received = event("task-received", fields)
        if step == RECEIVED:
            return [received]
        started = event("task-started", {"queue": entry.get("queue"), "pid": pid})
        ran = _succeeded(received, entry) if step == RAN else []
        return [received, started, *ran]
    if step == STARTED:
        return [event("task-started", {"queue": entry.get("queue"), "pid": pid})]
    state = entry.get("state")
    if state == "SUCCESS":
        kind = "task-succeeded"
    else:
        kind = "task-retried" if state == "RETRY" else "task-failed"
    fields = {key: entry.get(key) for key in FIELDS[kind] if key != "retries"}
    if kind == "task-retried":
        fields["retries"] = int(entry.get("retries") or 0) + 1
    return [event(kind, fields)]
