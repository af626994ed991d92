"""Concurrent calls go to the database as one write, with no timer and no background task.

The first caller flushes at once (no added latency); callers that arrive while a flush is in
flight queue up and go together in the next one, flushed by the first of them. A flush is
shielded from cancellation: a stored result is never half written. `flush` returns one
result per item, in order (None for stores; a chord step for a chord's records).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class _Slot(Generic[T]):
    __slots__ = ("done", "error", "event", "item", "result", "taken")

    def __init__(self, item: T) -> None:
        self.item = item
        self.event = anyio.Event()
        self.taken = False
        self.done = False
        self.error: Exception | None = None
        self.result: Any = None


class Batcher(Generic[T, R]):
    """Coalesces concurrent `submit` calls into one call of `flush`, `max_size` items at most."""

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[Sequence[R]]], max_size: int = 500
    ) -> None:
        self._flush = flush
        self._max = max_size
        self._queue: list[_Slot[T]] = []
        self._busy = False

    async def submit(self, item: T) -> R:
        """Write `item` with whatever else is waiting; return its result or raise its error."""
        slot = _Slot(item)
        self._queue.append(slot)
        try:
            while not slot.done:
                if not self._busy:
                    await self._flush_next()
                    continue
                if slot.event.is_set():
                    slot.event = anyio.Event()
                await slot.event.wait()
        finally:
            if not slot.taken:  # cancelled before its flush: it was never written
                self._queue.remove(slot)
                self._wake_next()
        if slot.error is not None:
            raise slot.error
        result: R = slot.result
        return result

    async def _flush_next(self) -> None:
        batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        for slot in batch:
            slot.taken = True
        self._busy = True
        try:
            with anyio.CancelScope(shield=True):
                try:
                    results = await self._flush([slot.item for slot in batch])
                    for slot, result in zip(batch, results, strict=True):
                        slot.result = result
                except Exception as exc:
                    for slot in batch:
                        slot.error = exc
        finally:
            self._busy = False
            for slot in batch:
                slot.done = True
                slot.event.set()
            self._wake_next()

    def _wake_next(self) -> None:
        """Wake the first queued caller, to flush the next batch."""
        if not self._busy and self._queue:
            self._queue[0].event.set()
