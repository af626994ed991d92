"""The event model: `Event`, its types, and the wire format of a batch of events.

Events travel on the mailbox topic `events` (see `aqueue.drivers.base.Mailbox`), in batches:
one msgpack map per publish,

    {"v": 1, "hostname": str, "events": [[type, timestamp, task_id, task_name, fields], ...]}

where `task_id` and `task_name` are None for worker events and `fields` is a map of the event
type's own fields (below). A receiver skips what it cannot read, and a newer version's extra
fields come through in `fields`.

    task-sent        queue, eta, retries                  (the producer's hostname)
    task-received    queue, retries, eta, args, kwargs    (reprs, cut to 1,000 characters)
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

from .. import codec

__all__ = ["EVENT_TYPES", "TOPIC", "Event", "decode_batch", "encode_batch"]

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

#: One event as the emitter buffers it: (type, timestamp, task_id, task_name, fields).
Raw = tuple[str, float, str | None, str | None, Mapping[str, Any]]


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


def encode_batch(hostname: str, events: list[Raw]) -> bytes:
    """Encode buffered events as one batch."""
    return codec.pack(
        {"v": 1, "hostname": hostname, "events": [list(raw) for raw in events]}, where="events"
    )


def decode_batch(data: bytes) -> list[Event]:
    """Decode one batch; raise ValueError if it is not one."""
    batch = codec.unpack(data)
    if not isinstance(batch, dict) or not isinstance(batch.get("events"), list):
        raise ValueError("not an event batch")
    hostname = str(batch.get("hostname") or "?")
    events: list[Event] = []
    for item in batch["events"]:
        if not isinstance(item, list | tuple) or len(item) < 5:
            continue
        kind, stamp, task_id, task_name, fields = item[:5]
        if not isinstance(kind, str) or not isinstance(stamp, int | float):
            continue
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
