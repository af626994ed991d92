"""`amqp://` (also `amqps://`, `pyamqp://`): RabbitMQ, through aio-pika's protocol engine aiormq.

What it promises:

- **Publishing** is confirmed: `publish` returns once RabbitMQ confirmed every message
  (persistent, on durable queues). Publishes are pipelined and coalesced (`publisher`):
  one writer task writes what every concurrent caller queued since its last write in one go,
  without waiting for confirmations, and each caller awaits the confirmations of its own
  messages. An unroutable message (published `mandatory`) or a negative confirmation is a
  `BrokerError` for its caller alone. Messages left unconfirmed by a dropped connection are
  sent again on a new one (for up to 10 s), so a publish is at-least-once. A channel error
  (RabbitMQ closing the channel, as for a missing exchange) fails every caller whose messages
  were unconfirmed on that channel.
- **Queues** (see `topology`): one durable queue per aqueue queue behind a direct
  exchange, each with a dead-letter queue; `queue_type` "classic" (default, with
  `x-max-priority` = `max_priority`, 9 by default) or "quorum" (with `x-delivery-limit`).
- **Consuming**: manual acks after the task, and a `basic.qos` limit equal to the worker's free
  slots, plus the deliveries it still holds (tasks held back by a rate or concurrency limit keep
  their message but free their slot). On classic queues the limit is channel-wide and follows
  at once; quorum queues refuse that, so each consumer has its own limit (with several quorum
  queues, each may hold up to the credit) and new consumers take over when held tasks use it
  up. Acks and nacks go to the channel that delivered the message; after a reconnect they are
  no-ops, RabbitMQ having given the message to a consumer again. Closing the consumer gives
  back, at once, what it received and did not yield.
- **Delays** are held by RabbitMQ in TTL'd wait queues, a ladder of powers of two milliseconds
  (see `topology`): no plugin, and a delayed message survives a worker restart. Once due, a
  message goes to the queue's due queue, which the queue's consumers consume too, taking turns
  with the queue (`Session.next`): it waits for a free slot, not behind the backlog.
- **Priorities** 0-9 on classic queues. Quorum queues in RabbitMQ 3.x ignore priorities (FIFO).
- **Delivery limit.** Each message carries its delivery count: `x-delivery-count` (quorum
  queues) plus the `aqueue-deliveries` header aqueue sets when it republishes a message, plus
  one on a classic queue when RabbitMQ flags it redelivered (its holder died or lost its
  channel). `nack()` republishes the message with its count (RabbitMQ counts no requeues on
  classic queues) and acks the original. A message delivered more than `max_deliveries`
  times is dead-lettered with reason `max-deliveries` before it runs again.
- **Runs.** On classic queues, `begin` (the worker calls it before running a redelivered
  message alone, see `aqueue.worker.isolation`) replaces the message by a copy with one more
  `aqueue-runs`, held on a running queue while the task runs (`running`): a message
  that kills its worker comes back counted, and first (at the top priority, or through the
  due queue without priorities: not behind the backlog), and one merely held is not blamed.
  A message with `max_deliveries` runs is dead-lettered (the worker does it first, with a
  failure result).
  Quorum queues count every redelivery themselves (`x-delivery-limit`), held messages too.
- **Mailbox** (`mailbox()`, see `mailbox`): control-plane topics over the direct
  exchange `aqueue.mailbox`, durable settings in the classic queue `aqueue.settings`.
- **Reconnects**: a consumer whose connection dropped reconnects with backoff (capped at 3 s)
  and consumes again; publishers retry on the new connection.

`visibility_timeout` does not apply: a message stays with its consumer as long as its channel
lives, so nothing needs renewing. Queue arguments are fixed when RabbitMQ creates a queue: a
queue that already exists with other arguments is used as it is (with a warning).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from typing import Any, cast

import aiormq
import anyio
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from ...exceptions import BrokerError
from ...message import DeadLetterReason, OutgoingMessage
from ..base import Broker, Credit, DeadLetter, DeadLetterStats, Delayed, Delivery, QueueStats
from ..options import BrokerOptions
from .connection import Link, broker_error, parse_amqp_url
from .consumer import AMQPDelivery, Session
from .dead import DeadLetters
from .headers import (
    DEAD_DETAIL,
    DEAD_REASON,
    DELIVERIES,
    DUE_AT,
    FIRST_PUBLISHED,
    PRIORITY,
    RUNS,
    header_number,
    header_time,
    stamp,
)
from .mailbox import AMQPMailbox
from .publisher import Outgoing, Pipeline, TaskProperties
from .running import RunningCopies
from .topology import MAX_DELAY_MS, Topology, delay_levels, delay_routing_key

__all__ = ["AMQPBroker"]

logger = logging.getLogger("aqueue.amqp")

#: How long a publish keeps retrying on new connections before it fails.
PUBLISH_RETRY_FOR = 10.0
#: Publishes in flight at once within one batch.
WINDOW = 5000


class AMQPBroker(Broker):
    """RabbitMQ: `App("tasks", broker="amqp://guest:guest@localhost//")`."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.settings = parse_amqp_url(url, options)
        #: The options aqueue defines, checked; no leases here (see `aqueue.drivers.options`).
        self.broker_options = opts = BrokerOptions.parse(options, leases=False)
        self.max_deliveries = opts.max_deliveries
        self.link = Link(self.settings, "broker")
        self.topology = Topology(
            self.link, self.settings, self.max_deliveries, opts.dead_letter_max_bytes
        )
        self._dead = DeadLetters(self.link, self.topology, self._retry)
        self._publisher: Pipeline | None = None
        self._publisher_lock = anyio.Lock()
        self._mailbox: AMQPMailbox | None = None
        self._running: RunningCopies | None = None
        self._classic = self.settings.queue_type == "classic"

    def __repr__(self) -> str:
        return f"<AMQPBroker {self.settings.display}>"

    async def open(self) -> None:
        """Connect (fails fast with `BrokerError` when RabbitMQ is unreachable)."""
        await self.link.open()

    async def close(self) -> None:
        """Close the connection; running consumers end, unsettled messages go back."""
        with anyio.CancelScope(shield=True):
            running, self._running = self._running, None
            if running is not None:
                await running.close()
            await self.topology.close()
            mailbox, self._mailbox = self._mailbox, None
            if mailbox is not None:
                await mailbox.close()
            await self.link.close()  # first: a caller sending again finds the link closed
            async with self._publisher_lock:
                publisher, self._publisher = self._publisher, None
            if publisher is not None:
                await publisher.close()

    def mailbox(self) -> AMQPMailbox:
        """Return the mailbox on this RabbitMQ (see `mailbox`); open the broker first."""
        if self._mailbox is None:
            self._mailbox = AMQPMailbox(self.link, self.settings)
        return self._mailbox

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish persistent messages and return once RabbitMQ confirmed all of them."""
        if not messages:
            return
        if len(messages) == 1 and messages[0].eta is None:  # what every `delay()` sends
            m = messages[0]
            if self.topology.ready_one(m.queue):
                at = {FIRST_PUBLISHED: stamp(time.time())}
                one = (self._outgoing(m.queue, m.body, m.priority, at, m.id),)
                pipeline = self._publisher
                if pipeline is None or pipeline.is_closed:
                    await self.send(one)
                    return
                # The pipeline is open: straight to it (three coroutine layers fewer a call:
                # `send`, `_confirm` and the pipeline's `confirm`, whose steps these are).
                submission = pipeline.submit(one)
                try:
                    await submission.done  # cancelled: it is dropped if not written yet
                finally:
                    pipeline.release()
                try:
                    lost, reason = pipeline.outcome(submission)
                except TimeoutError:
                    raise self._unconfirmed(1) from None
                if lost:  # the channel closed under it
                    self._lost(lost, reason)
                    await self.send(lost)
                return
        queues = dict.fromkeys(m.queue for m in messages)
        now = time.time()
        at = {FIRST_PUBLISHED: stamp(now)}
        if self.topology.ready(queues) and all(m.eta is None or m.eta <= now for m in messages):
            # Declared, and nothing for the delay ladder: no round trip to wait for.
            outgoing = [self._outgoing(m.queue, m.body, m.priority, at, m.id) for m in messages]
        else:
            with self._patience(time.monotonic() + PUBLISH_RETRY_FOR):  # declaring: a few RTTs
                await self.topology.ensure_queues(queues)
                outgoing = [
                    await self._route(m.queue, m.body, m.priority, at, m.id, m.eta, now)
                    for m in messages
                ]
        await self.send(outgoing)

    @contextlib.contextmanager
    def _patience(self, deadline: float) -> Iterator[None]:
        """Fail with `BrokerError` if RabbitMQ stays unreachable until `deadline`."""
        try:
            with anyio.fail_after(max(deadline - time.monotonic(), 0)):
                yield
        except TimeoutError:
            raise BrokerError(
                f"could not publish to {self.settings.display}: no connection for "
                f"{PUBLISH_RETRY_FOR:.0f} s"
            ) from None

    async def _confirm(
        self, pipeline: Pipeline, batch: Sequence[Outgoing]
    ) -> tuple[list[Outgoing], BaseException | None]:
        """Publish through the pipeline; fail if nothing is confirmed for `publish_timeout` s.

        The pipeline keeps the time (one timer for every caller, not a cancel scope each):
        this is every `delay()`'s path.
        """
        try:
            return await pipeline.confirm(batch)
        except TimeoutError:
            raise self._unconfirmed(len(batch)) from None

    def _unconfirmed(self, count: int) -> BrokerError:
        timeout = self.settings.publish_timeout
        return BrokerError(
            f"RabbitMQ at {self.settings.display} did not confirm {count} message(s) "
            f"within {timeout:g} s: a memory or disk alarm blocks publishers (`rabbitmqctl "
            "status` shows alarms); they may still arrive once it accepts them again"
        )

    async def _route(
        self,
        queue: str,
        body: bytes,
        priority: int | None,
        headers: dict[str, Any],
        message_id: str | None,
        eta: float | None,
        now: float,
    ) -> Outgoing:
        """Address a message to its queue, or to the delay ladder if `eta` is ahead."""
        if eta is None or eta <= now:
            return self._outgoing(queue, body, priority, headers, message_id)
        topology = self.topology
        ms = math.ceil((eta - now) * 1000) + 1  # never early, whatever the rounding
        if ms > MAX_DELAY_MS:  # longer than one pass: the consumer sends it round again
            headers = {**headers, DUE_AT: stamp(eta)}
            ms = MAX_DELAY_MS
        levels = delay_levels(ms)
        await topology.ensure_delays(queue, levels)
        properties = spec.Basic.Properties(
            delivery_mode=2, priority=priority or None, headers=headers, message_id=message_id
        )
        routing_key = delay_routing_key(ms, topology.due_queue(queue))
        return Outgoing(topology.delay_exchange(levels[0]), routing_key, body, properties)

    def _outgoing(
        self,
        queue: str,
        body: bytes,
        priority: int | None,
        headers: dict[str, Any],
        message_id: str | None,
    ) -> Outgoing:
        """Address a message to its queue, now."""
        properties = TaskProperties(headers, priority or None, message_id)
        topology = self.topology
        return Outgoing(topology.exchange, topology.queue(queue), body, properties)

    async def _pipeline(self) -> Pipeline:
        """Return the publishing pipeline, on a new channel if its channel closed."""
        publisher = self._publisher
        if publisher is not None and not publisher.is_closed:
            return publisher
        async with self._publisher_lock:
            publisher = self._publisher
            if publisher is None or publisher.is_closed:
                self._publisher = None
                if publisher is not None:
                    await publisher.close()
                channel = await self.link.channel(confirms=True)
                publisher = self._publisher = Pipeline(
                    cast(aiormq.Channel, channel), self.settings.publish_timeout
                )
            return publisher

    async def send(self, outgoing: Sequence[Outgoing]) -> None:
        """Publish with confirms; resend what a dropped connection left unconfirmed."""
        pending = outgoing
        deadline = time.monotonic() + PUBLISH_RETRY_FOR
        while pending:
            pipeline = self._publisher
            if pipeline is None or pipeline.is_closed:
                with self._patience(deadline):
                    pipeline = await self._pipeline()
            if len(pending) <= WINDOW:  # one window (every `delay()`): no slicing
                lost, reason = await self._confirm(pipeline, pending)
            else:
                for start in range(0, len(pending), WINDOW):
                    lost, reason = await self._confirm(pipeline, pending[start : start + WINDOW])
                    if lost:
                        lost += pending[start + WINDOW :]
                        break
            pending = lost
            if not pending:
                return
            self._lost(pending, reason)

    def _lost(self, pending: Sequence[Outgoing], reason: BaseException | None) -> None:
        """Raise for messages a channel error left unconfirmed; else say they go again."""
        if isinstance(reason, aiormq.exceptions.AMQPChannelError):
            # RabbitMQ closed the channel over an error (a missing exchange...): declare
            # again on the next publish, and tell this caller.
            self.topology.forget()
            raise broker_error(self.settings, "publish", reason)
        logger.warning(
            "the connection closed before RabbitMQ confirmed %d message(s); publishing them again",
            len(pending),
        )

    # -- consuming ----------------------------------------------------------------------------

    async def consume(
        self, queues: Sequence[str], credit: Credit, *, burst: bool = False
    ) -> AsyncGenerator[Delivery, None]:
        """Yield what RabbitMQ pushes, holding at most `credit` unacknowledged messages."""
        queues = list(dict.fromkeys(queues))
        session: Session | None = None
        try:
            prefetch = await credit.wait()
            while True:
                free = await credit.wait()
                if session is None or session.broken:  # what it buffered went back: drop it
                    session = await self._session(queues, prefetch, session)
                    if session is None:
                        return  # the broker was closed
                entry = session.next()
                if entry is None:
                    if await self._idle(session, free, burst=burst):
                        return
                    continue
                delivery = await self._admit(session, *entry)
                entry = None  # nor kept while waiting for credit: the worker has it (issue 19)
                if delivery is not None:
                    yield delivery
                    delivery = None
        finally:
            if session is not None:
                with anyio.CancelScope(shield=True):
                    await session.stop()

    async def _session(
        self, queues: list[str], prefetch: int, old: Session | None
    ) -> Session | None:
        """Start consuming on a new channel, reconnecting first if the connection is gone."""
        if old is not None:
            await old.stop()
            if self.link.closed:
                return None
            if old.cancelled:  # RabbitMQ cancelled a consumer: its queue was deleted
                self.topology.forget(queues)
            logger.warning("consumer of %s lost its channel; consuming again", ", ".join(queues))
        while not self.link.closed:
            session: Session | None = None
            try:
                connection = await self.link.connection()
                await self.topology.ensure_queues(queues)
                session = Session(self, await self.link.channel(confirms=False), queues, prefetch)
                await session.start()
                return session
            except BrokerError:
                if session is not None:
                    await session.close()
                if self.link.closed:
                    return None
                if not connection.is_closed:
                    raise
                # The connection dropped while starting: reconnect and start again.
        return None

    async def _idle(self, session: Session, free: int, *, burst: bool) -> bool:
        """Wait for something to happen; True when a burst consumer should stop."""
        try:
            await session.fit(free)  # RabbitMQ may send `free` more: the wait cannot starve
            if not burst:
                await session.wait()
                return False
            return await session.drained()
        except BrokerError:
            if session.broken:
                return False  # the connection dropped: consume again on a new one
            raise

    async def _admit(
        self, session: Session, queue: str, message: DeliveredMessage
    ) -> AMQPDelivery | None:
        """Return the delivery to yield, or None when the message must not run (yet)."""
        headers = message.header.properties.headers
        count = 1 + int(header_number(headers, DELIVERIES))
        count += int(header_number(headers, "x-delivery-count"))
        deliver = message.delivery
        if self._classic and isinstance(deliver, spec.Basic.Deliver) and deliver.redelivered:
            count += 1  # its holder died (or lost its channel): a suspect, and counted so
        runs = int(header_number(headers, RUNS))
        delivery = AMQPDelivery(session, queue, message, count, runs)
        session.yielded()
        if count > self.max_deliveries or runs >= self.max_deliveries:
            detail = (
                f"started {runs} times without being acknowledged"
                if runs >= self.max_deliveries
                else f"delivered {count - 1} times without being acknowledged"
            )
            logger.error("message of %s %s; dead-lettered", queue, detail)
            await delivery.dead_letter(DeadLetterReason.MAX_DELIVERIES, detail)
            return None
        eta = header_time(headers, DUE_AT)
        if eta and eta > time.time():  # a delay longer than the ladder: once more round it
            delivery._settle()
            await self._republish(delivery, eta=eta, deliveries=count - 1, runs=runs)
            return None
        return delivery

    async def begin_run(self, delivery: AMQPDelivery) -> None:
        """`begin` on a classic queue: hold a copy with one more run, ack the original."""
        if not self._classic or delivery.stale:
            return  # quorum queues count deliveries themselves (`x-delivery-limit`)
        if self._running is None:
            self._running = RunningCopies(self)
        channel, copy = await self._running.hold(delivery)
        await delivery.settle(requeue=None)
        await delivery.settled()  # or, if the task kills the worker now, both come back
        delivery.hold_copy(channel, copy)

    # -- settling (called by AMQPDelivery) ----------------------------------------------------

    async def give_back(self, delivery: AMQPDelivery, delay: float, counted: bool = True) -> None:
        """`nack`: republish with the delivery count (and delay), then ack the original.

        Not a reject-requeue: RabbitMQ counts no requeues on classic queues, a delay needs the
        ladder anyway, and a confirmed publish is back in the queue when `nack` returns.
        `counted=False` (`release`): the copy carries the count this delivery came with.
        A copy given back at once to a classic queue with priorities goes first: it is
        published at the top priority, its own kept in a header (`PRIORITY`) for its next
        copy; otherwise it would wait behind the whole backlog (issue 19). Quorum queues
        (no priorities in RabbitMQ 3) put it at the tail.
        """
        if delivery.stale:
            return  # its channel is gone: RabbitMQ gives the message again by itself
        eta = time.time() + delay if delay > 0 else None
        runs = delivery.runs + delivery.begun
        deliveries = delivery.delivery_count - (0 if counted else 1)
        await self._republish(delivery, eta=eta, deliveries=deliveries, runs=runs, first=True)

    async def _republish(
        self,
        delivery: AMQPDelivery,
        *,
        eta: float | None,
        deliveries: int,
        runs: int,
        first: bool = False,
    ) -> None:
        properties = delivery.message.header.properties
        headers: dict[str, Any] = {
            FIRST_PUBLISHED: header_number(properties.headers, FIRST_PUBLISHED)
            or stamp(time.time()),
            DELIVERIES: deliveries,
        }
        if runs:
            headers[RUNS] = runs
        priority = properties.priority
        if properties.headers and PRIORITY in properties.headers:  # raised once: its own
            priority = int(header_number(properties.headers, PRIORITY)) or None
        top = self.settings.max_priority if self._classic else 0
        if first and eta is None and top and (priority or 0) < top:
            headers[PRIORITY] = priority or 0
            priority = top
        outgoing = await self._route(
            delivery.queue,
            delivery.body,
            priority,
            headers,
            properties.message_id,
            eta,
            time.time(),
        )
        await self._replace(delivery, outgoing)

    async def bury(self, delivery: AMQPDelivery, reason: str, detail: str) -> None:
        """`dead_letter`: publish to the dead-letter queue with the reason, then ack."""
        if delivery.stale:
            return  # RabbitMQ gives it again, and it is refused again
        headers: dict[str, Any] = {
            DEAD_REASON: reason,
            DEAD_DETAIL: detail,
            FIRST_PUBLISHED: stamp(time.time()),
            DELIVERIES: delivery.delivery_count,
        }
        properties = spec.Basic.Properties(
            delivery_mode=2,
            headers=headers,
            message_id=delivery.message.header.properties.message_id,
        )
        await self.topology.ensure_queues([delivery.queue])
        topology = self.topology
        outgoing = Outgoing(
            topology.dead_exchange, topology.queue(delivery.queue), delivery.body, properties
        )
        await self._replace(delivery, outgoing)

    async def _replace(self, delivery: AMQPDelivery, outgoing: Outgoing) -> None:
        """Publish the message's successor, then ack it; on failure, requeue it as it is."""
        try:
            await self.send([outgoing])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await delivery.settle(requeue=True)
            raise
        await delivery.settle(requeue=None)

    # -- administration -----------------------------------------------------------------------

    async def purge(self, queue: str) -> int:
        """Delete the queue's waiting and delayed messages (not those held by consumers)."""
        await self.link.connection()
        return await self.topology.purge(queue)

    async def delayed(self, queue: str, limit: int = 100) -> list[Delayed]:
        """Refuse: RabbitMQ cannot show what its delay queues hold without taking it."""
        raise BrokerError(
            "RabbitMQ keeps delayed messages in its delay queues, which cannot be read without "
            "taking them: `aqueue inspect scheduled` lists only what workers hold here"
        )

    async def queue_stats(self, queue: str) -> QueueStats:
        """Count the queue's ready, delayed and dead messages (RabbitMQ's counts)."""
        await self.link.connection()
        waiting, delayed = await self.topology.counts(queue)
        dead = (await self._dead.stats(queue)).kept
        return QueueStats(waiting=waiting, delayed=delayed, running=None, dead=dead)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Read (and leave in place) the oldest dead letters of `queue`."""
        return await self._dead.read(queue, limit)

    async def dead_letter_stats(self, queue: str) -> DeadLetterStats:
        """Count the dead letters of `queue` (RabbitMQ counts no bytes or drops for aqueue)."""
        return await self._dead.stats(queue)

    async def retry_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Publish dead letters to their queue (priority 0, never delivered), then drop them."""
        return await self._dead.take(queue, ids, retry=True)

    async def purge_dead_letters(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (those in `ids`, else all)."""
        if ids is None:
            return await self._dead.purge_all(queue)
        return await self._dead.take(queue, ids, retry=False)

    async def _retry(self, queue: str, messages: Sequence[DeliveredMessage]) -> None:
        """Publish dead letters to `queue` afresh, confirmed (`retry_dead_letters`)."""
        at = {FIRST_PUBLISHED: stamp(time.time())}
        await self.send(
            [
                self._outgoing(queue, m.body, None, at, m.header.properties.message_id)
                for m in messages
            ]
        )
