"""Task and worker events: what workers emit, how they travel, and how to receive them.

`event` holds the model (`Event`) and the wire format, `emitter` the worker's side (buffered,
published in batches on the broker's mailbox), `receiver` the reading side
(`app.events.receive()`). Workers emit them with `-E` / `worker_send_task_events = True`;
producers emit task-sent with `task_send_sent_event = True`. `aqueue events MODULE:app` tails
them.
"""

from .emitter import EventEmitter as EventEmitter
from .event import EVENT_TYPES as EVENT_TYPES
from .event import TOPIC as TOPIC
from .event import Event as Event
from .receiver import Events as Events

__all__ = ["EVENT_TYPES", "TOPIC", "Event", "EventEmitter", "Events"]
