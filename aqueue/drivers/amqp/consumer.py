"""The consuming side of the RabbitMQ broker.

One channel per `consume()` call, and deliveries settled on the channel that delivered them.

A `Session` owns a channel with `basic.qos` set to the worker's free slots, two consumers per
queue (the queue, and its due queue where delayed messages arrive, see `topology`), and a
buffer of what RabbitMQ pushed but the generator has not yielded yet: the best first (priority,
then the oldest first publish), so that a due message does not wait behind the backlog. It outlives
the generator until every delivery it yielded is settled, then closes its channel. A session
whose channel died (a dropped connection) is abandoned: RabbitMQ gives its unacknowledged
messages to another consumer by itself, and settling one of its deliveries is a no-op.

Deliveries are read off the socket by the connection's own frame reader (`frames.tap`)
or, with an aiormq that reader does not know, off the channel's frames as they arrive
(`tap_deliveries`). The acks of one turn of the event loop go out in one write, as one ack with
`multiple` for the tags below every unsettled one.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import aiormq
import anyio
import anyio.lowlevel
from aiormq.abc import AbstractChannel, ChannelFrame, DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from ..base import Delivery
from .connection import amqp_errors, released
from .frames import tap
from .headers import FIRST_PUBLISHED, header_number

if TYPE_CHECKING:
    from .connection import AMQPSettings
    from .topology import Topology

__all__ = ["AMQPDelivery", "Session", "SessionHost"]

logger = logging.getLogger("aqueue.amqp")

#: basic.qos takes a 16-bit prefetch count.
MAX_PREFETCH = 65535
#: Burst mode: how long to wait for messages RabbitMQ reports ready before looking again
#: (another consumer may have taken them, so no delivery would come to say so).
BURST_RECHECK = 0.5


class SessionHost(Protocol):
    """What a `Session` and its deliveries need of their broker (`AMQPBroker` is one)."""

    settings: AMQPSettings
    topology: Topology

    async def begin_run(self, delivery: AMQPDelivery) -> None:
        """Record a run of `delivery` before its task starts (`Delivery.begin`)."""
        ...

    async def give_back(self, delivery: AMQPDelivery, delay: float, counted: bool = True) -> None:
        """Put `delivery` back on its queue, due after `delay` (`Delivery.nack`).

        Not counted as a delivery if not `counted` (`Delivery.release`).
        """
        ...

    async def bury(self, delivery: AMQPDelivery, reason: str, detail: str) -> None:
        """Dead-letter `delivery` (`Delivery.dead_letter`)."""
        ...


def _tag(message: DeliveredMessage) -> int:
    delivery = message.delivery
    assert isinstance(delivery, spec.Basic.Deliver | spec.Basic.GetOk)
    return delivery.delivery_tag or 0


class AMQPDelivery(Delivery):
    """A message delivered on a session's channel; settled once, on that channel.

    Once begun on a classic queue, it stands for the copy that `begin` holds on the running
    channel (`running`): settling it settles the copy.
    """

    __slots__ = ("_copy", "_session", "_settled", "message")

    def __init__(
        self,
        session: Session,
        queue: str,
        message: DeliveredMessage,
        delivery_count: int,
        runs: int = 0,
    ) -> None:
        super().__init__(message.body, queue, delivery_count, runs)
        self._session = session
        self._settled = False
        self._copy: tuple[AbstractChannel, int] | None = None
        self.message = message

    @property
    def begun(self) -> bool:
        """Whether `begin` replaced the message by a copy with one more run."""
        return self._copy is not None

    async def settled(self) -> None:
        """Return once RabbitMQ has processed the settlement of the original message."""
        await self._session.sync()

    def hold_copy(self, channel: AbstractChannel, copy: DeliveredMessage) -> None:
        """Stand for `copy`, held on `channel`, from now on (the original was acknowledged)."""
        self._copy = (channel, _tag(copy))

    @property
    def tag(self) -> int:
        """The delivery tag, meaningful on the session's channel only."""
        return _tag(self.message)

    @property
    def consumer_tag(self) -> str:
        """The consumer that received the message."""
        delivery = self.message.delivery
        return (delivery.consumer_tag if isinstance(delivery, spec.Basic.Deliver) else "") or ""

    @property
    def stale(self) -> bool:
        """Whether the delivering channel is gone (RabbitMQ has the message back)."""
        if self._copy is not None:
            return self._copy[0].is_closed
        return self._session.channel.is_closed

    def _settle(self) -> bool:
        first, self._settled = not self._settled, True
        return first

    async def ack(self) -> None:
        """Acknowledge: RabbitMQ deletes the message."""
        if self._settle():
            await self.settle(requeue=None)

    async def nack(self, *, delay: float = 0.0) -> None:
        """Give the message back, counted as a delivery, after `delay` seconds."""
        if self._settle():
            await self._session.broker.give_back(self, delay)

    async def release(self) -> None:
        """Give the message back as it was: this delivery is not counted."""
        if self._settle():
            await self._session.broker.give_back(self, 0.0, counted=False)

    async def dead_letter(self, reason: str, detail: str = "") -> None:
        """Publish the message to its queue's dead letters with the reason, then ack it."""
        if self._settle():
            await self._session.broker.bury(self, str(reason), detail)

    async def begin(self) -> None:
        """Record a run: on a classic queue, hold a copy with one more run instead."""
        if not self._settled and self._copy is None:
            await self._session.broker.begin_run(self)

    async def settle(self, *, requeue: bool | None) -> None:
        """Ack (`requeue=None`) or reject on the delivering channel; for the broker's use."""
        if self._copy is None:
            await self._session.settle(self, requeue=requeue)
            return
        channel, tag = self._copy
        if channel.is_closed:
            return  # RabbitMQ has the copy back: it goes on to its queue
        with released("settle a running copy"):
            if requeue is None:
                await channel.basic_ack(tag)
            else:
                await channel.basic_reject(tag, requeue=requeue)


class Session:
    """One channel consuming `queues` for one `consume()` call."""

    def __init__(
        self,
        broker: SessionHost,
        channel: AbstractChannel,
        queues: Sequence[str],
        prefetch: int,
    ) -> None:
        self.broker = broker
        self.channel = channel
        self.queues = list(queues)
        #: The limit RabbitMQ applies now: channel-wide on classic queues (basic.qos changes
        #: it at once), per consumer on quorum queues (new consumers are needed to change it).
        self.limit = max(1, min(prefetch, MAX_PREFETCH))
        self.shared = broker.settings.queue_type == "classic"
        self.outstanding = 0  # yielded, not settled yet
        self.stopped = False
        self.cancelled = False
        self._tags: dict[str, str] = {}  # consumer tag -> aqueue queue
        self._current: list[str] = []  # the consumer tags in use (quorum: the latest ones)
        self._load: collections.Counter[str] = collections.Counter()  # tag -> unsettled
        #: What RabbitMQ pushed and was not yielded yet: from the queues, from the due queues.
        self._heap: list[tuple[int, float, int, str, DeliveredMessage]] = []
        self._due: list[tuple[int, float, int, str, DeliveredMessage]] = []
        #: One queue (as a rule): RabbitMQ delivers each consumer's messages in order, so
        #: the two buffers are FIFOs, no heap and no header read per message.
        self._ordered = len(self.queues) > 1
        self._ready_fifo: deque[tuple[int, float, int, str, DeliveredMessage]] = deque()
        self._due_fifo: deque[tuple[int, float, int, str, DeliveredMessage]] = deque()
        self._due_tags: set[str] = set()  # the consumers of due queues
        self._due_turn = True  # both waiting at one priority: they take turns
        self._seq = itertools.count()
        self._changed = anyio.Event()
        self._rejects: list[spec.Basic.Reject] = []  # to send with the next write, in order
        self._acks: list[int] = []  # delivery tags to acknowledge with the next write
        #: Delivery tags received and not settled yet: an ack with `multiple` may cover every
        #: tag below the lowest of them (tags only grow on a channel).
        self._unsettled: set[int] = set()
        self._flushing = False
        self._closing = channel.closing
        self._closing.add_done_callback(lambda _: self._notify())
        cast(aiormq.Channel, channel).on_consumer_cancel_callbacks.add(self._on_cancel)
        #: Deliveries decoded straight off the socket (`frames`), else off aiormq's frames.
        self.fast = tap(channel, self._take)
        self.tapped = self.fast or tap_deliveries(channel, self._take)

    # -- state --------------------------------------------------------------------------------

    @property
    def broken(self) -> bool:
        """Whether the channel is gone (its deliveries went back to RabbitMQ) or a consumer."""
        return self.cancelled or self.channel.is_closed

    def _on_cancel(self, frame: spec.Basic.Cancel) -> None:
        """RabbitMQ cancelled a consumer (its queue was deleted): consume anew."""
        if frame.consumer_tag in self._tags:
            self.cancelled = True
            self._notify()

    def __len__(self) -> int:
        return len(self._heap) + len(self._due) + len(self._ready_fifo) + len(self._due_fifo)

    def _notify(self) -> None:
        self._changed.set()

    async def wait(self) -> None:
        """Wait for a delivery, a settlement or the channel closing."""
        await self._changed.wait()
        self._changed = anyio.Event()

    # -- consuming ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Set the prefetch, start one consumer per queue, and let the first deliveries in."""
        # A channel-wide limit keeps several queues within the credit and can change as the
        # worker holds tasks back; quorum queues refuse it (each consumer has its own limit,
        # so with several quorum queues each may hold up to the credit).
        async with amqp_errors(self.broker.settings, "start consuming"):
            await self.channel.basic_qos(prefetch_count=self.limit, global_=self.shared)
            await self._consume()
            # A round trip after the consumers started: what RabbitMQ had ready for them is in
            # the buffer now, so the first message yielded is the best across the queues.
            await self.ready_counts()

    async def _consume(self) -> None:
        tags = []
        for queue in self.queues:
            for name, due in zip(self.broker.topology.consumed(queue), (False, True), strict=True):
                tag = f"aqueue-{uuid.uuid4().hex}"
                self._tags[tag] = queue
                if due:
                    self._due_tags.add(tag)
                tags.append(tag)
                await self.channel.basic_consume(name, self._on_message, consumer_tag=tag)
        self._current = tags

    async def fit(self, free: int) -> None:
        """Let RabbitMQ send up to `free` more, however many deliveries are still unsettled.

        A worker holds some tasks back (rate limits, concurrency limits) with their messages
        unacknowledged and their slots freed; the limit follows, so the credit stays the credit.
        """
        async with amqp_errors(self.broker.settings, "change the prefetch"):
            with _whole(self):
                await self._fit(free)

    async def _fit(self, free: int) -> None:
        if self.shared:
            want = max(1, min(self.outstanding + free, MAX_PREFETCH))
            if want != self.limit:
                await self.channel.basic_qos(prefetch_count=want, global_=True)
                self.limit = want
            return
        if self._budget() <= 0 < free - len(self):
            # The consumers' own limits are used up by held deliveries: new consumers, with
            # a limit of their own, take over (the old ones' deliveries stay valid).
            old, self.limit = self._current, min(free - len(self), MAX_PREFETCH)
            await self.channel.basic_qos(prefetch_count=self.limit)
            await self._consume()
            for tag in old:
                await self.channel.basic_cancel(tag)

    def _budget(self) -> int:
        """How many more RabbitMQ may send now."""
        if self.shared:
            return self.limit - self.outstanding - len(self)
        return self.limit - sum(self._load[tag] for tag in self._current)

    async def _on_message(self, message: DeliveredMessage) -> None:
        self._take(message)

    def _take(self, message: DeliveredMessage) -> None:
        delivery = message.delivery
        self._unsettled.add(_tag(message))  # even if dropped below: no ack may cover it
        tag = delivery.consumer_tag if isinstance(delivery, spec.Basic.Deliver) else None
        queue = self._tags.get(tag or "")
        if queue is None or self.stopped:
            return  # a consumer being cancelled: the message goes back when the channel closes
        self._load[tag or ""] += 1
        properties = message.header.properties
        priority = properties.priority or 0
        due = tag in self._due_tags
        if self._ordered:
            at = header_number(properties.headers, FIRST_PUBLISHED)
            entry = (-priority, at, next(self._seq), queue, message)
            heapq.heappush(self._due if due else self._heap, entry)
        else:
            (self._due_fifo if due else self._ready_fifo).append(
                (-priority, 0.0, 0, queue, message)
            )
        self._notify()

    def next(self) -> tuple[str, DeliveredMessage] | None:
        """Pop the best buffered message, or None.

        The highest priority first, then the oldest first publish across queues; a due message
        (its delay over: it comes from a due queue) and one from the queues take turns at the
        same priority. Not by age: the backlog, older than what came due, would hold a due
        message back as long as it lasts; nor due messages first: retries with a delay could
        then hold the queues back.
        """
        ordered = self._ordered
        ready: Sequence[tuple[int, float, int, str, DeliveredMessage]]
        ready, due = (self._heap, self._due) if ordered else (self._ready_fifo, self._due_fifo)
        if due and (
            not ready or due[0][0] < ready[0][0] or (due[0][0] == ready[0][0] and self._due_turn)
        ):
            buffer, self._due_turn = due, False
        elif ready:
            buffer, self._due_turn = ready, True
        else:
            return None
        if ordered:
            _, _, _, queue, message = heapq.heappop(cast("list[Any]", buffer))
        else:
            _, _, _, queue, message = cast("deque[Any]", buffer).popleft()
        return queue, message

    async def ready_counts(self) -> list[int]:
        """How many messages wait in each queue and due queue (one round trip each)."""
        counts = []
        for queue in self.queues:
            for name in self.broker.topology.consumed(queue):
                result = await self.channel.queue_declare(name, passive=True)
                counts.append(result.message_count or 0)
        return counts

    async def drained(self) -> bool:
        """Burst mode, with an empty buffer: True once no message is ready in the queues."""
        if self._budget() <= 0:  # RabbitMQ holds back until something settles
            await self.wait()
            return False
        async with amqp_errors(self.broker.settings, "look for ready messages"):
            with _whole(self):
                ready = any(await self.ready_counts())
            if ready:
                with anyio.move_on_after(BURST_RECHECK):
                    await self.wait()
                return False
            # One more round trip: anything RabbitMQ dispatched before it counted has arrived.
            with _whole(self):
                await self.channel.queue_declare(
                    self.broker.topology.queue(self.queues[0]), passive=True
                )
        return not len(self)

    # -- settling -----------------------------------------------------------------------------

    def yielded(self) -> None:
        """Count a delivery handed to the consumer."""
        self.outstanding += 1

    async def settle(self, delivery: AMQPDelivery, *, requeue: bool | None) -> None:
        """Ack (`requeue=None`) or reject a delivery of this session, if its channel lives.

        The delivery counts as outstanding until its ack is on its way: the worker frees its
        slot right after, so outstanding + free (the prefetch `fit` asks for) never dips in
        between (it did, and every dip cost two basic.qos round trips: 18 per 5,000 tasks).
        """
        self._load[delivery.consumer_tag] -= 1
        try:
            await self._settle(delivery.tag, requeue)
        finally:
            self.outstanding -= 1
            self._notify()
        if self.stopped and not self.outstanding:
            await self.close()

    async def _settle(self, tag: int, requeue: bool | None) -> None:
        """Queue an ack or reject; one writer sends what piled up in one write."""
        if self.channel.is_closed:
            return  # RabbitMQ already gave the message back: nothing to settle
        self._unsettled.discard(tag)
        if requeue is None:
            self._acks.append(tag)
        else:
            self._rejects.append(spec.Basic.Reject(delivery_tag=tag, requeue=requeue))
        if self._flushing:
            return  # the writer at work takes this one too
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # the tasks finishing this turn add theirs
                await self._flush()
        finally:
            self._flushing = False

    async def _flush(self) -> None:
        channel = cast(aiormq.Channel, self.channel)
        while (self._rejects or self._acks) and not channel.is_closed:
            rejects, self._rejects = self._rejects, []
            frames = [*rejects, *self._ack_frames()]
            with released("settle deliveries"):
                await channel.write_queue.put(ChannelFrame.marshall(channel.number, frames))

    def _ack_frames(self) -> list[spec.Basic.Ack]:
        """Acks for the queued tags: one with `multiple` for all those below every unsettled one.

        That ack covers only tags settled here: any tag below it that is not being acknowledged
        now was settled before (acked or rejected in an earlier or this same write), and tags
        RabbitMQ sent that have not arrived yet are higher than any tag received.
        """
        acks, self._acks = self._acks, []
        floor = min(self._unsettled, default=None)
        if floor is None:
            below, above = acks, []
        else:
            below = [tag for tag in acks if tag < floor]
            above = [tag for tag in acks if tag > floor]
        frames = [spec.Basic.Ack(delivery_tag=tag) for tag in above]
        if len(below) == 1:
            frames.append(spec.Basic.Ack(delivery_tag=below[0]))
        elif below:
            frames.append(spec.Basic.Ack(delivery_tag=max(below), multiple=True))
        return frames

    async def sync(self) -> None:
        """Return once RabbitMQ processed what this channel sent so far (a round trip).

        A closed channel returns at once: closing it was a round trip after what it sent.
        """
        if self.channel.is_closed:
            return
        async with amqp_errors(self.broker.settings, "settle a delivery"):
            with _whole(self):
                await self._flush()
                await self.channel.queue_declare(
                    self.broker.topology.queue(self.queues[0]), passive=True
                )

    # -- stopping -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel the consumers and give back what was not yielded (the generator closed)."""
        if self.stopped:
            return
        if not self.channel.is_closed:
            with released("cancel a consumer"):  # what came before a cancel-ok is in
                for tag in self._tags:
                    await self.channel.basic_cancel(tag)
        self.stopped = True
        returned = False
        while (entry := self.next()) is not None:
            await self._settle(_tag(entry[1]), True)
            returned = True
        if returned and not self.channel.is_closed:
            # A round trip to each queue after the rejects: they are back in their queues
            # now, for the next consumer to see (a burst worker looks again right away).
            with released("confirm the return of messages"):
                await self._flush()
                await self.ready_counts()
        if not self.outstanding:
            await self.close()

    async def close(self) -> None:
        """Close the channel (messages still unacknowledged on it go back to their queues)."""
        self._closing.cancel()
        await self._flush()  # acks still waiting for the writer go before the close
        if not self.channel.is_closed:
            with released("close a consumer channel"):
                await self.channel.close()


def _whole(session: Session) -> anyio.CancelScope:
    """Return a scope in which the consumer's RPCs finish even if the worker stops meanwhile.

    aiormq closes a channel whose RPC is cancelled, and RabbitMQ then gives every delivery of
    that channel to another consumer, those of tasks still running too: they would run twice.
    The wait is bounded (`connect_timeout`): past it the channel goes, as before.
    """
    scope = anyio.CancelScope(shield=True)
    scope.deadline = anyio.current_time() + session.broker.settings.connect_timeout
    return scope


class _Assembling:
    """A delivery whose content frames are still arriving."""

    __slots__ = ("chunks", "deliver", "header", "size")

    def __init__(self, deliver: spec.Basic.Deliver) -> None:
        self.deliver = deliver
        self.header: ContentHeader | None = None
        self.chunks: list[bytes] = []
        self.size = 0


def tap_deliveries(channel: AbstractChannel, take: Callable[[DeliveredMessage], None]) -> bool:
    """Hand the channel's deliveries to `take` as their frames arrive; True if it could.

    aiormq passes every frame of a channel through an asyncio.Queue to the channel's reader
    task, which starts one task per delivered message: two thirds of what a delivery costs the
    client. The connection's reader puts each frame with `channel.frames.put`; this wraps that
    one method so that the three frames of a delivery (Basic.Deliver, the content header, the
    body) become one message right there, and every other frame goes on to aiormq as before.
    With an aiormq that works otherwise, nothing is changed and the consumer callback is used.
    """
    frames = getattr(channel, "frames", None)
    if not isinstance(frames, asyncio.Queue):
        return False
    put = frames.put
    assembling: _Assembling | None = None

    def finish(message: _Assembling) -> None:
        assert message.header is not None
        body = message.chunks[0] if len(message.chunks) == 1 else b"".join(message.chunks)
        take(DeliveredMessage(message.deliver, message.header, body, channel))

    async def tapped(item: tuple[int, Any]) -> None:
        nonlocal assembling
        frame = item[1]
        if assembling is not None:
            if assembling.header is None and isinstance(frame, ContentHeader):
                assembling.header = frame
            elif assembling.header is not None and isinstance(frame, ContentBody):
                assembling.chunks.append(frame.value)
                assembling.size += len(frame.value)
            else:
                assembling = None  # not a delivery's content: aiormq decides what it means
                await put(item)
                return
            if assembling.header.body_size <= assembling.size:
                done, assembling = assembling, None
                finish(done)
            return
        if isinstance(frame, spec.Basic.Deliver):
            assembling = _Assembling(frame)
            return
        await put(item)

    frames.put = tapped  # type: ignore[method-assign]
    return True
