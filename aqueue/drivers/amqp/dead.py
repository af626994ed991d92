"""The RabbitMQ broker's dead letters: read, counted, retried and purged.

The dead letters of queue `q` are the messages of the queue `aqueue.dead.q` (see
`topology`), put there by aqueue (with its reason headers) or by RabbitMQ (`x-death`, a
quorum queue's delivery limit). A queue has no random access: reading takes messages with
`basic.get` and gives back those it leaves (a requeue keeps their place); retrying publishes
the chosen ones to their queue, with confirms, before it acknowledges them, so a failure leaves
them dead letters. A dead letter's id is its `message_id` (the task id aqueue gives every
message), else a digest of its body.

Its bytes are capped by RabbitMQ itself: aqueue declares a new dead-letter queue with
`x-max-length-bytes` (oldest dropped first), and RabbitMQ counts neither the bytes nor the drops
for us, so `stats` gives only the count.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiormq
import anyio
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from ...message import DeadLetterReason
from ..base import DeadLetter, DeadLetterStats
from .connection import Link, amqp_errors, released
from .headers import DEAD_DETAIL, DEAD_REASON, FIRST_PUBLISHED, header_time
from .topology import Topology

__all__ = ["DeadLetters", "letter_id"]

#: RabbitMQ's reasons in `x-death`, as aqueue's dead-letter reasons.
_DEATH_REASONS = {"delivery_limit": DeadLetterReason.MAX_DELIVERIES.value}

#: Publish the bodies (and message ids) of dead letters to their queue, confirmed.
Republish = Callable[[str, Sequence[DeliveredMessage]], Awaitable[None]]


class DeadLetters:
    """The dead-letter queues of one broker's queues."""

    def __init__(self, link: Link, topology: Topology, republish: Republish) -> None:
        self.link = link
        self.topology = topology
        self.republish = republish

    async def read(self, queue: str, limit: int) -> list[DeadLetter]:
        """Read (and leave in place) the oldest dead letters of `queue`."""
        letters: list[DeadLetter] = []

        async def look(channel: aiormq.abc.AbstractChannel, name: str) -> None:
            last = 0
            for _ in range(limit):
                message = await channel.basic_get(name)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                letters.append(_letter(queue, message))
                last = message.delivery.delivery_tag or 0
            if last:
                await channel.basic_nack(last, multiple=True, requeue=True)

        await self._on_channel(queue, "read the dead letters of", look)
        return letters

    async def stats(self, queue: str) -> DeadLetterStats:
        """Count the dead letters of `queue` (RabbitMQ keeps no bytes or drops for us)."""
        counted: list[int] = []

        async def count(channel: aiormq.abc.AbstractChannel, name: str) -> None:
            declared = await channel.queue_declare(name, durable=True, passive=True)
            counted.append(declared.message_count or 0)

        await self._on_channel(queue, "count the dead letters of", count)
        return DeadLetterStats(counted[0], None, None)

    async def purge_all(self, queue: str) -> int:
        """Delete every dead letter of `queue`; return how many."""
        purged: list[int] = []

        async def purge(channel: aiormq.abc.AbstractChannel, name: str) -> None:
            purged.append((await channel.queue_purge(name)).message_count or 0)

        await self._on_channel(queue, "purge the dead letters of", purge)
        return purged[0]

    async def take(self, queue: str, ids: Sequence[str] | None, *, retry: bool) -> int:
        """Take out the dead letters of `queue` in `ids` (None: all there now); return how many.

        With `retry`, they are published to `queue` (fresh) before they are acknowledged.
        """
        wanted = None if ids is None else set(ids)
        taken: list[int] = []

        async def choose(channel: aiormq.abc.AbstractChannel, name: str) -> None:
            there = (await channel.queue_declare(name, durable=True, passive=True)).message_count
            chosen: list[DeliveredMessage] = []
            left = 0  # the last tag left in place: it and those before it go back
            for _ in range(there or 0):
                message = await channel.basic_get(name)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                if wanted is None or letter_id(message) in wanted:
                    chosen.append(message)
                else:
                    left = _tag(message)
            if chosen and retry:
                await self.republish(queue, chosen)
            for message in chosen:
                await channel.basic_ack(_tag(message))
            if left:
                await channel.basic_nack(left, multiple=True, requeue=True)
            taken.append(len(chosen))

        await self._on_channel(queue, "take dead letters of", choose)
        return taken[0]

    async def _on_channel(
        self,
        queue: str,
        doing: str,
        work: Callable[[aiormq.abc.AbstractChannel, str], Awaitable[None]],
    ) -> None:
        """Run `work` on a channel of its own (closing it gives back what it did not settle)."""
        await self.topology.ensure_queues([queue])
        channel = await self.link.channel(confirms=False)
        try:
            async with amqp_errors(self.topology.settings, f"{doing} {queue!r}"):
                await work(channel, self.topology.dead_queue(queue))
        finally:
            with anyio.CancelScope(shield=True), released("close a channel"):
                await channel.close()


def _tag(message: DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.GetOk)
    return delivery.delivery_tag or 0


def letter_id(message: DeliveredMessage) -> str:
    """Return a dead letter's id: its message id, else a digest of its body."""
    message_id = message.header.properties.message_id
    if message_id:
        return str(message_id)
    return "sha1:" + hashlib.sha1(message.body, usedforsecurity=False).hexdigest()[:20]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _letter(queue: str, message: DeliveredMessage) -> DeadLetter:
    """Read a dead letter from what aqueue (reason headers) or RabbitMQ (`x-death`) wrote on it."""
    headers = message.header.properties.headers or {}
    at = header_time(headers, FIRST_PUBLISHED)
    if DEAD_REASON in headers:
        reason, detail = _text(headers[DEAD_REASON]), _text(headers.get(DEAD_DETAIL))
    else:
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and isinstance(deaths[0], dict) else {}
        raw = _text(death.get("reason")) or "dead-lettered"
        reason = _DEATH_REASONS.get(raw, raw)
        detail = f"dead-lettered by RabbitMQ ({raw}) from {_text(death.get('queue'))}"
        when = death.get("time")
        if isinstance(when, dt.datetime):
            at = when.timestamp()
    return DeadLetter(queue, message.body, reason, detail, at or time.time(), letter_id(message))
