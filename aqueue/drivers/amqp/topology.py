"""The queues and exchanges the RabbitMQ broker declares, and the delay ladder.

Every name starts with the `prefix` option. For an aqueue queue `q`:

    exchange  aqueue               direct: routing key `q` -> queue `q`
    queue     q                    durable; dead-letters to `aqueue.dead` with routing key `q`
    exchange  aqueue.dead          direct: routing key `q` -> queue `aqueue.dead.q`
    queue     aqueue.dead.q        the dead letters of `q`, at most `x-max-length-bytes`
                                   (`dead_letter_max_bytes`; the oldest dropped first)
    queue     aqueue.due.q         delayed messages of `q` once due; the arguments of `q`

Delays are held by RabbitMQ in a ladder of TTL'd wait queues (no plugin). A delay is a number
of milliseconds; its binary digits say which rungs the message waits on. Rung `i` of queue `q`
is the queue `aqueue.delay.<i>.q`, with a TTL of 2**i ms, which dead-letters into exchange
`aqueue.delay.<i-1>` (rung 0 into `aqueue.delayed`). A delayed message is published to rung
`top` (its highest digit) with the routing key `<digit 31>.<digit 30>....<digit 0>.q`; each
topic exchange `aqueue.delay.<i>` routes it into the wait queue of rung `i` when digit `i` is 1,
and on to exchange `i-1` when it is 0; `aqueue.delayed` finally routes it to its due queue. A
message therefore waits exactly its delay (rounded up to the millisecond), through at most 32
hops, in durable queues: it survives worker restarts, and broker restarts as any persistent
message does. Rungs are declared on first use; a delay longer than 2**32 - 1 ms (49.7 days) goes
around the ladder again when it reaches the consumer.

The due queue (issue 19): the last hop does not go to `q` itself, where a due message would wait
at the tail, behind the whole backlog (always on quorum queues, which have no priorities in
RabbitMQ 3; at its priority on classic ones). Every consumer of `q` also consumes `aqueue.due.q`,
on the same channel (one credit on classic queues), and takes from the two in turn at one priority
(`consumer.Session.next`): a due message waits for a free slot, not for the backlog. The routing
key's tail names the due queue, so wait queues declared by an older aqueue are used as they are
(they get one more binding), and a message an older aqueue delayed (its tail names `q`) still
ends in `q` through the binding older versions made, still declared: no message matches both.
Workers of an older aqueue do not consume due queues: a message a newer aqueue delayed waits
there for a newer worker. Purging and counting take the due queue as part of `q` (ready).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import anyio
from aiormq.abc import AbstractChannel
from aiormq.exceptions import ChannelNotFoundEntity, ChannelPreconditionFailed

from ...exceptions import ConfigurationError
from .connection import AMQPSettings, Link, amqp_errors, released

__all__ = ["LEVELS", "MAX_DELAY_MS", "Topology", "delay_levels", "delay_routing_key"]

logger = logging.getLogger("aqueue.amqp")

#: What to do about a dead-letter queue made without a cap (by an older aqueue) or another one.
_UNCAPPED = (
    "; its dead letters are capped only by a policy: rabbitmqctl set_policy aqueue-dead "
    "'^aqueue\\.dead\\.' '{\"max-length-bytes\": 67108864}' --apply-to queues"
)

#: Rungs of the delay ladder: delays up to 2**LEVELS - 1 milliseconds in one pass.
LEVELS = 32
MAX_DELAY_MS = (1 << LEVELS) - 1


def delay_levels(ms: int) -> list[int]:
    """Return the rungs a delay of `ms` milliseconds waits on, highest first."""
    return [level for level in range(LEVELS - 1, -1, -1) if ms >> level & 1]


def delay_routing_key(ms: int, amqp_queue: str) -> str:
    """Return the routing key that walks a message down the ladder to `amqp_queue`."""
    digits = ".".join("1" if ms >> level & 1 else "0" for level in range(LEVELS - 1, -1, -1))
    return f"{digits}.{amqp_queue}"


def _pattern(level: int, digit: str, tail: str) -> str:
    """Return a binding key: `digit` at rung `level` (any digit if level < 0), then `tail`."""
    words = ["*"] * LEVELS
    if level >= 0:
        words[LEVELS - 1 - level] = digit
    return ".".join([*words, tail])


class Topology:
    """Declares, once per connection, what publishing to and consuming from a queue needs."""

    def __init__(
        self,
        link: Link,
        settings: AMQPSettings,
        max_deliveries: int,
        dead_letter_max_bytes: int | None = None,
    ) -> None:
        self.link = link
        self.settings = settings
        self.max_deliveries = max_deliveries
        #: `x-max-length-bytes` of new dead-letter queues (None: none).
        self.dead_letter_max_bytes = dead_letter_max_bytes
        prefix = settings.prefix
        self.prefix = prefix
        self.exchange = f"{prefix}aqueue"
        self.dead_exchange = f"{prefix}aqueue.dead"
        self.delayed_exchange = f"{prefix}aqueue.delayed"
        self._done: set[str] = set()
        self._generation = -1
        self._lock = anyio.Lock()
        self._channel: AbstractChannel | None = None

    # -- names --------------------------------------------------------------------------------

    def queue(self, queue: str) -> str:
        """Return the AMQP name of an aqueue queue."""
        return f"{self.prefix}{queue}"

    def dead_queue(self, queue: str) -> str:
        """Return the AMQP name of the dead-letter queue of an aqueue queue."""
        return f"{self.prefix}aqueue.dead.{queue}"

    def due_queue(self, queue: str) -> str:
        """Return the AMQP name of the queue where the delayed messages of `queue` come due."""
        return f"{self.prefix}aqueue.due.{queue}"

    def consumed(self, queue: str) -> tuple[str, str]:
        """Return the AMQP queues a consumer of `queue` consumes: the queue, its due queue."""
        return self.queue(queue), self.due_queue(queue)

    def delay_exchange(self, level: int) -> str:
        """Return the topic exchange of rung `level` (-1: the last hop, into the target queue)."""
        return self.delayed_exchange if level < 0 else f"{self.prefix}aqueue.delay.{level}"

    def delay_queue(self, queue: str, level: int) -> str:
        """Return the wait queue of rung `level` for an aqueue queue."""
        return f"{self.prefix}aqueue.delay.{level}.{queue}"

    # -- arguments ----------------------------------------------------------------------------

    def _quorum(self, arguments: dict[str, Any], *, at_least_once: bool) -> dict[str, Any]:
        if self.settings.queue_type == "quorum":
            arguments["x-queue-type"] = "quorum"
            if at_least_once:
                arguments["x-dead-letter-strategy"] = "at-least-once"
                arguments["x-overflow"] = "reject-publish"
        return arguments

    def _dead_cap(self) -> dict[str, Any]:
        """Return a dead-letter queue's byte cap: RabbitMQ drops the oldest past it."""
        cap = self.dead_letter_max_bytes
        return {} if cap is None else {"x-max-length-bytes": cap}

    def queue_arguments(self, queue: str) -> dict[str, Any]:
        """Arguments of a task queue: dead-lettering, and priorities or a delivery limit."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-routing-key": self.queue(queue),
        }
        if self.settings.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.max_deliveries
        elif self.settings.max_priority:
            arguments["x-max-priority"] = self.settings.max_priority
        return self._quorum(arguments, at_least_once=True)

    # -- declaring ----------------------------------------------------------------------------

    def ready(self, keys: Iterable[str]) -> bool:
        """Whether everything under `keys` is declared on the current connection."""
        return self._generation == self.link.generation and all(k in self._done for k in keys)

    def ready_one(self, key: str) -> bool:
        """`ready` for one key (every `delay()` asks)."""
        return self._generation == self.link.generation and key in self._done

    async def _admin(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.link.channel(confirms=False)
        return self._channel

    async def admin(self) -> AbstractChannel:
        """Return a channel for declarations and queries (reopened after a channel error)."""
        async with self._lock:
            return await self._admin()

    def forget(self, keys: Iterable[str] | None = None) -> None:
        """Declare these again on next use (all of it with None): something deleted them."""
        if keys is None:
            self._done.clear()
        else:
            self._done.difference_update(keys)
            self._done.discard("")

    def _reset_if_reconnected(self) -> None:
        if self._generation != self.link.generation:
            self._done.clear()
            self._generation = self.link.generation

    async def _declare_queue(self, name: str, arguments: dict[str, Any]) -> None:
        channel = await self._admin()
        try:
            await channel.queue_declare(name, durable=True, arguments=arguments)
        except ChannelPreconditionFailed as exc:
            # The queue exists with other arguments (another queue type, no priorities...):
            # use it as it is, and say so once.
            logger.warning(
                "queue %r already exists with other arguments than aqueue would give it (%s); "
                "using it as it is (delete it, or set a policy, to change it)%s",
                name,
                exc,
                _UNCAPPED if "x-max-length-bytes" in str(exc) else "",
            )
            channel = await self._admin()
            await channel.queue_declare(name, durable=True, passive=True)

    async def _ensure(self, key: str, *steps: tuple[str, Any]) -> None:
        if key in self._done:
            return
        async with amqp_errors(self.settings, f"declare {key!r}"):
            for kind, args in steps:
                channel = await self._admin()
                if kind == "exchange":
                    name, exchange_type = args
                    await channel.exchange_declare(name, exchange_type=exchange_type, durable=True)
                elif kind == "queue":
                    await self._declare_queue(*args)
                elif kind == "bind":
                    await channel.queue_bind(*args)
                else:  # exchange-to-exchange
                    destination, source, routing_key = args
                    await channel.exchange_bind(destination, source, routing_key)
        self._done.add(key)

    async def ensure_queues(self, queues: Iterable[str]) -> None:
        """Declare the exchanges, the task queues and their dead-letter queues."""
        queues = list(queues)
        if self.ready(queues):
            return
        async with self._lock:
            self._reset_if_reconnected()
            await self._ensure(
                "",
                ("exchange", (self.exchange, "direct")),
                ("exchange", (self.dead_exchange, "direct")),
            )
            for queue in queues:
                name, dead = self.queue(queue), self.dead_queue(queue)
                dead_arguments = self._quorum(self._dead_cap(), at_least_once=False)
                arguments = self.queue_arguments(queue)
                await self._ensure(
                    queue,
                    ("queue", (name, arguments)),
                    ("bind", (name, self.exchange, name)),
                    ("queue", (self.due_queue(queue), arguments)),
                    ("queue", (dead, dead_arguments)),
                    ("bind", (dead, self.dead_exchange, name)),
                )

    async def ensure_delays(self, queue: str, levels: Iterable[int]) -> None:
        """Declare the ladder's exchanges and the wait queues of `queue` at `levels`."""
        keys = [f"delay {level} {queue}" for level in levels]
        if self.ready([*keys, f"delayed {queue}"]):
            return
        due = self.due_queue(queue)  # the routing key's tail
        if len(due) + 2 * LEVELS > 255 or {"*", "#"} & set(due.split(".")):
            raise ConfigurationError(
                f"queue {self.queue(queue)!r} cannot take delayed messages: the name of its due "
                f"queue {due!r} must be under {255 - 2 * LEVELS} bytes, without '*' or '#' words"
            )
        async with self._lock:
            self._reset_if_reconnected()
            await self._ensure_ladder()
            name = self.queue(queue)
            await self._ensure(
                f"delayed {queue}",
                ("queue", (due, self.queue_arguments(queue))),  # if it came before its queue
                ("bind", (due, self.delayed_exchange, _pattern(-1, "", due))),
                # What an older aqueue delayed (its tail names the queue) still arrives.
                ("bind", (name, self.delayed_exchange, _pattern(-1, "", name))),
            )
            for key, level in zip(keys, levels, strict=True):
                wait = self.delay_queue(queue, level)
                arguments = {
                    "x-message-ttl": 1 << level,
                    "x-dead-letter-exchange": self.delay_exchange(level - 1),
                }
                await self._ensure(
                    key,
                    ("queue", (wait, self._quorum(arguments, at_least_once=True))),
                    ("bind", (wait, self.delay_exchange(level), _pattern(level, "1", due))),
                )

    async def _ensure_ladder(self) -> None:
        steps: list[tuple[str, Any]] = [("exchange", (self.delayed_exchange, "topic"))]
        for level in range(LEVELS):
            exchange = self.delay_exchange(level)
            steps.append(("exchange", (exchange, "topic")))
            steps.append(
                ("e2e", (self.delay_exchange(level - 1), exchange, _pattern(level, "0", "#")))
            )
        await self._ensure("ladder", *steps)

    def _all(self, queue: str) -> list[str]:
        """Return the queues holding the messages of `queue`: ready ones (2), then waiting."""
        return [*self.consumed(queue), *(self.delay_queue(queue, n) for n in range(LEVELS))]

    async def purge(self, queue: str) -> int:
        """Purge a task queue, its due queue and its wait queues; return how many went."""
        async with self._lock, amqp_errors(self.settings, f"purge {queue!r}"):
            total = 0
            names = self._all(queue)
            for name in names:
                channel = await self._admin()
                try:
                    total += (await channel.queue_purge(name)).message_count or 0
                except ChannelNotFoundEntity:  # a rung never used: nothing waits there
                    continue
            return total

    async def counts(self, queue: str) -> tuple[int, int]:
        """Return how many messages are ready (queue and due queue), and wait (delay queues)."""
        async with self._lock, amqp_errors(self.settings, f"count {queue!r}"):
            counts: list[int] = []
            names = self._all(queue)
            for name in names:
                channel = await self._admin()
                try:
                    declared = await channel.queue_declare(name, durable=True, passive=True)
                except ChannelNotFoundEntity:  # never used (a passive declare closes the channel)
                    counts.append(0)
                    continue
                counts.append(declared.message_count or 0)
            return counts[0] + counts[1], sum(counts[2:])

    async def close(self) -> None:
        """Close the admin channel."""
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with anyio.CancelScope(shield=True), released("close the admin channel"):
                await channel.close()
