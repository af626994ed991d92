"""Recording the start of a run on a RabbitMQ classic queue: a copy held while the task runs.

RabbitMQ counts no deliveries on classic queues, and a delivered message cannot be changed: a
message that kills its worker comes back as it was, forever. So `begin` (the worker calls it
before running a redelivered message alone, see `aqueue.worker.isolation`) replaces the message by a
copy whose `aqueue-runs` header says one more run:

1. the copy is published to a running queue of this connection's own, `<queue>.running.<id>`,
   whose messages have a TTL of 0 and dead-letter to the message's queue;
2. the running queue's consumer (on a channel of its own) takes the copy at once, and keeps it
   unacknowledged while the task runs; then the original is acknowledged;
3. settling the delivery settles the copy: an ack deletes it. If the worker dies instead, its
   connection closes, the copy goes back to the running queue, expires there at once and is
   dead-lettered to its queue: delivered again, with its count of runs.

The copy must not wait behind the backlog there (issue 19, the kill -9 storm: a suspect whose
worker was killed while it ran started again only once every task queued before its return
had started, 3.7-6.0 s after the kill at 3,000 tasks while the kill's other orphans started
within 1.8 s, which RabbitMQ requeues in their place). So it goes first, as a message given
back does (`AMQPBroker.give_back`): the copy carries the queue's top priority, its own kept in
the `PRIORITY` header for any later copy. Without priorities (`max_priority` 0), the running
queue dead-letters to the queue's due queue instead (through the default exchange), which its
consumers take in turn with the queue (`consumer.Session.next`).

A running queue is deleted by RabbitMQ a minute after its consumer went (`x-expires`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp import commands as spec

from ...exceptions import BrokerError
from .connection import amqp_errors, released
from .headers import COPY_NONCE, PRIORITY, RUNS, header_number
from .publisher import Outgoing

if TYPE_CHECKING:
    from .connection import AMQPSettings, Link
    from .consumer import AMQPDelivery
    from .topology import Topology

__all__ = ["RunningCopies", "RunningHost"]

logger = logging.getLogger("aqueue.amqp")

#: How long `begin` waits for its copy to come back from the running queue.
COPY_TIMEOUT = 10.0
#: A running queue without its consumer is deleted after this long (ms).
RUNNING_EXPIRES_MS = 60_000


class RunningHost(Protocol):
    """What the running queues need of their broker (`AMQPBroker` is one)."""

    settings: AMQPSettings
    topology: Topology
    link: Link

    async def send(self, outgoing: Sequence[Outgoing]) -> None:
        """Publish with confirms."""
        ...


class RunningCopies:
    """The running queues of one broker, and the copies they hold."""

    def __init__(self, broker: RunningHost) -> None:
        self.broker = broker
        self.id = uuid.uuid4().hex[:12]
        self._channel: AbstractChannel | None = None
        self._queues: set[str] = set()
        self._waiting: dict[str, asyncio.Future[DeliveredMessage]] = {}
        self._lock = anyio.Lock()

    def name(self, queue: str) -> str:
        """Return the running queue of `queue` for this broker."""
        return f"{self.broker.topology.queue(queue)}.running.{self.id}"

    async def hold(self, delivery: AMQPDelivery) -> tuple[AbstractChannel, DeliveredMessage]:
        """Publish a copy of the delivery with one more run; return it, held unacknowledged."""
        channel = await self._ready(delivery.queue)
        nonce = uuid.uuid4().hex
        future: asyncio.Future[DeliveredMessage] = asyncio.get_running_loop().create_future()
        self._waiting[nonce] = future
        original = delivery.message.header.properties
        headers: dict[str, Any] = dict(original.headers or {})
        headers.pop("x-death", None)
        headers.update({RUNS: delivery.runs + 1, COPY_NONCE: nonce})
        # At the top priority, should it come back (see the module): its own in a header.
        own = original.priority or 0
        if PRIORITY in headers:  # raised before (given back, or a copy): its own is there
            own = int(header_number(headers, PRIORITY))
        priority = own
        top = self.broker.settings.max_priority
        if top > own:
            headers[PRIORITY] = own
            priority = top
        properties = spec.Basic.Properties(
            delivery_mode=2,
            priority=priority or None,
            headers=headers,
            message_id=original.message_id,
        )
        try:
            await self.broker.send(
                [Outgoing("", self.name(delivery.queue), delivery.body, properties)]
            )
            with anyio.fail_after(COPY_TIMEOUT):
                return channel, await future
        except TimeoutError:
            raise BrokerError(
                f"the copy of a message of {delivery.queue!r} did not come back from its "
                f"running queue within {COPY_TIMEOUT:g} s; it runs from its queue instead"
            ) from None
        finally:
            self._waiting.pop(nonce, None)

    async def _ready(self, queue: str) -> AbstractChannel:
        """Return the running channel, with a consumer on the running queue of `queue`."""
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self.broker.link.channel(confirms=False)
                self._queues.clear()
            channel = self._channel
            if queue not in self._queues:
                topology = self.broker.topology
                if self.broker.settings.max_priority:  # to the queue, at the top priority
                    back = (topology.exchange, topology.queue(queue))
                else:  # to the due queue: the default exchange routes by queue name
                    back = ("", topology.due_queue(queue))
                arguments: dict[str, Any] = {
                    "x-queue-type": "classic",
                    "x-message-ttl": 0,
                    "x-expires": RUNNING_EXPIRES_MS,
                    "x-dead-letter-exchange": back[0],
                    "x-dead-letter-routing-key": back[1],
                }
                async with amqp_errors(self.broker.settings, "declare a running queue"):
                    await topology.ensure_queues([queue])
                    await channel.queue_declare(self.name(queue), durable=True, arguments=arguments)
                    await channel.basic_consume(self.name(queue), self._on_message)
                self._queues.add(queue)
            return channel

    async def _on_message(self, message: DeliveredMessage) -> None:
        headers = message.header.properties.headers or {}
        nonce = headers.get(COPY_NONCE)
        future = self._waiting.get(nonce.decode() if isinstance(nonce, bytes) else str(nonce))
        if future is not None and not future.done():
            future.set_result(message)
            return
        # Nobody waits for it (its `begin` gave up): back first, through the dead letters.
        assert isinstance(message.delivery, spec.Basic.Deliver)
        with released("return a copy"):
            await message.channel.basic_reject(message.delivery.delivery_tag or 0, requeue=False)

    async def close(self) -> None:
        """Close the running channel (copies still held go back, and on to their queues)."""
        channel, self._channel = self._channel, None
        self._queues.clear()
        if channel is not None and not channel.is_closed:
            with anyio.CancelScope(shield=True), released("close the running channel"):
                await channel.close()
