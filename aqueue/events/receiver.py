"""The receiving side of events: `app.events.receive()` yields them as they happen.

    async with app.events.receive() as stream:
        async for event in stream:
            print(event.type, event.hostname, event.task_id, event.fields)

Receiving starts when the context is entered (the mailbox is pub/sub: nothing from before);
events come in the order each worker published them, batch by batch. A batch that cannot be
read is skipped with a warning; one of a newer format is read as far as this version knows it
(`event.decode_batch`). `types` keeps only the given event types.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from .event import TOPIC, Event, decode_batch

if TYPE_CHECKING:
    from ..interfaces import AppLike

__all__ = ["Events"]

logger = logging.getLogger("aqueue.events")


class Events:
    """The events of an app's workers: `app.events.receive()`."""

    def __init__(self, app: AppLike) -> None:
        self.app = app

    @asynccontextmanager
    async def receive(
        self, types: Collection[str] | None = None
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Subscribe to the events; the context yields an async iterator of `Event`."""
        mailbox = (await self.app.broker()).mailbox()
        async with mailbox.subscribe(TOPIC) as batches:
            yield _events(batches, frozenset(types) if types else None)


async def _events(
    batches: AsyncIterator[bytes], types: frozenset[str] | None
) -> AsyncIterator[Event]:
    async for data in batches:
        try:
            events = decode_batch(data)
        except Exception as exc:  # whatever a batch holds, the stream goes on
            logger.warning("Skipped an event batch that could not be read (%s)", exc)
            continue
        for event in events:
            if types is None or event.type in types:
                yield event
