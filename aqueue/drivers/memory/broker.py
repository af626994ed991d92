"""`memory://`: an in-process broker for tests and scripts.

Messages live in this process only: a producer and a worker must share the `App`. It honours
priorities (9 first), delays, dead letters and `max_deliveries` like the durable drivers, so the
contract suite holds it to the same rules.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from ...message import DeadLetterReason, OutgoingMessage
from ..base import (
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_COUNT,
    Broker,
    Credit,
    DeadLetter,
    DeadLetterStats,
    Delayed,
    Delivery,
    Mailbox,
    QueueStats,
)
from ..options import MAX_DELIVERIES
from .mailbox import MemoryMailbox

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Item:
    body: bytes
    queue: str
    priority: int
    deliveries: int = 0


#: A ready message in its queue's heap: (-priority, arrival number, item).
_Ready = tuple[int, int, _Item]


class _MemoryDelivery(Delivery):
    __slots__ = ("_broker", "_item", "_settled")

    def __init__(self, broker: MemoryBroker, item: _Item) -> None:
        super().__init__(item.body, item.queue, item.deliveries)
        self._broker = broker
        self._item = item
        self._settled = False

    def _settle(self) -> bool:
        first, self._settled = not self._settled, True
        return first

    async def ack(self) -> None:
        self._settle()

    async def nack(self, *, delay: float = 0.0) -> None:
        if self._settle():
            self._broker._put(self._item, time.time() + delay if delay > 0 else None)

    async def release(self) -> None:
        if self._settle():
            self._item.deliveries -= 1  # not counted
            self._broker._put(self._item, None)

    async def dead_letter(self, reason: str, detail: str = "") -> None:
        if self._settle():
            self._broker._bury(self._item, reason, detail)


class MemoryBroker(Broker):
    """An in-process broker: `App("t", broker="memory://")`."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.max_deliveries = int(options.get("max_deliveries", MAX_DELIVERIES))
        self._ready: dict[str, list[_Ready]] = {}
        self._delayed: list[tuple[float, int, _Item]] = []
        self.dead_letter_max_bytes = int(
            options.get("dead_letter_max_bytes") or DEAD_LETTER_MAX_BYTES
        )
        self._dead: dict[str, _Dead] = {}
        self._counter = itertools.count()
        self._changed = anyio.Event()
        self._mailbox = MemoryMailbox()

    async def open(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release; messages stay for the next open, as on a server."""

    def _notify(self) -> None:
        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    def _put(self, item: _Item, eta: float | None) -> None:
        seq = next(self._counter)
        if eta is not None and eta > time.time():
            heapq.heappush(self._delayed, (eta, seq, item))
        else:
            heapq.heappush(self._ready.setdefault(item.queue, []), (-item.priority, seq, item))
        self._notify()

    def _bury(self, item: _Item, reason: str, detail: str) -> None:
        seq = str(next(self._counter))
        letter = DeadLetter(item.queue, item.body, reason, detail, time.time(), seq)
        dead = self._dead.setdefault(item.queue, _Dead())
        dead.letters[seq] = letter
        dead.bytes += letter.size
        while len(dead.letters) > 1 and (
            dead.bytes > self.dead_letter_max_bytes or len(dead.letters) > DEAD_LETTER_MAX_COUNT
        ):
            dead.bytes -= dead.letters.pop(next(iter(dead.letters))).size  # the oldest
            dead.dropped += 1

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Queue the messages in this process."""
        for message in messages:
            item = _Item(message.body, message.queue, message.priority)
            self._put(item, message.eta)

    def _promote_due(self) -> float:
        """Move due delayed messages to their queues; return seconds to the next one."""
        now = time.time()
        while self._delayed and self._delayed[0][0] <= now:
            _, seq, item = heapq.heappop(self._delayed)
            heapq.heappush(self._ready.setdefault(item.queue, []), (-item.priority, seq, item))
        return self._delayed[0][0] - now if self._delayed else math.inf

    def _take(self, queues: Sequence[str], limit: int) -> list[_Item]:
        """Pop up to `limit` ready items: highest priority first, then oldest, across queues."""
        taken: list[_Item] = []
        heads = [ready for queue in queues if (ready := self._ready.get(queue))]
        while heads and len(taken) < limit:
            best = min(heads, key=lambda ready: ready[0])
            item = heapq.heappop(best)[2]
            if not best:
                heads.remove(best)
            item.deliveries += 1
            if item.deliveries > self.max_deliveries:
                detail = f"delivered {item.deliveries - 1} times without being acknowledged"
                self._bury(item, DeadLetterReason.MAX_DELIVERIES, detail)
                continue
            taken.append(item)
        return taken

    async def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        """Yield deliveries as they become ready; wait on publishes, not on a clock."""
        while True:
            limit = await credit.wait()
            changed = self._changed
            wait = self._promote_due()
            items = self._take(queues, limit)
            if not items:
                if burst:
                    return
                with anyio.move_on_after(wait):
                    await changed.wait()
                continue
            for item in items:
                yield _MemoryDelivery(self, item)

    def mailbox(self) -> Mailbox:
        """Return this broker's in-process mailbox."""
        return self._mailbox

    async def purge(self, queue: str) -> int:
        """Drop the queue's waiting and delayed messages."""
        count = len(self._ready.pop(queue, []))
        kept = [entry for entry in self._delayed if entry[2].queue != queue]
        count += len(self._delayed) - len(kept)
        self._delayed = kept
        heapq.heapify(self._delayed)
        return count

    async def delayed(self, queue: str, limit: int = 100) -> list[Delayed]:
        """Return the messages of `queue` not due yet, the soonest first."""
        due = sorted((eta, seq) for eta, seq, item in self._delayed if item.queue == queue)
        items = {seq: item for _, seq, item in self._delayed}
        return [
            Delayed(queue, items[seq].body, eta, items[seq].priority) for eta, seq in due[:limit]
        ]

    async def queue_stats(self, queue: str) -> QueueStats:
        """Count the queue's waiting, delayed and dead messages (running ones are not kept)."""
        now = time.time()
        due = sum(1 for eta, _, item in self._delayed if item.queue == queue and eta <= now)
        delayed = sum(1 for _, _, item in self._delayed if item.queue == queue)
        waiting = len(self._ready.get(queue, ())) + due
        dead = len(self._dead.get(queue, _Dead()).letters)
        return QueueStats(waiting=waiting, delayed=delayed - due, running=None, dead=dead)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Return the queue's dead letters, oldest first."""
        letters = self._dead.get(queue, _Dead()).letters.values()
        return list(itertools.islice(letters, limit))

    async def dead_letter_stats(self, queue: str) -> DeadLetterStats:
        """Return how many dead letters `queue` keeps, their bytes, and how many were dropped."""
        dead = self._dead.get(queue, _Dead())
        return DeadLetterStats(len(dead.letters), dead.bytes, dead.dropped)

    def _unbury(self, queue: str, ids: Sequence[str] | None) -> list[DeadLetter]:
        dead = self._dead.get(queue, _Dead())
        chosen = list(dead.letters) if ids is None else [i for i in ids if i in dead.letters]
        taken = [dead.letters.pop(seq) for seq in dict.fromkeys(chosen)]
        dead.bytes -= sum(letter.size for letter in taken)
        return taken

    async def retry_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on their queue, at priority 0 and never delivered."""
        taken = self._unbury(queue, ids)
        for letter in taken:
            self._put(_Item(letter.body, queue, 0), None)
        return len(taken)

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters."""
        return len(self._unbury(queue, ids))


@dataclass(slots=True)
class _Dead:
    """The dead letters of one queue, oldest first, by id; what they weigh; how many dropped."""

    letters: dict[str, DeadLetter] = field(default_factory=dict)
    bytes: int = 0
    dropped: int = 0
