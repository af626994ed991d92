"""Confirmed publishing, coalesced: concurrent callers share writes; each awaits its confirms.

Every publish of a broker goes through one `Pipeline`, on the broker's confirming channel. A
caller queues its messages and waits for their confirmations; the pipeline's writer task takes
everything queued since its last write and writes the frames of all of it in one buffer (one
system call; a caller's messages of a frame's size or more go in a buffer of their own, one at
a time), registering a confirmation per message on aiormq's own bookkeeping (the channel's
`delivery_tag`, `confirmations` and `message_id_delivery_tag`, so confirms, nacks and returns
resolve them as for `basic_publish`; `_Confirmation` says why it is not a future). It does not
wait for confirmations between writes, and never waits for company: a lone message is written
as soon as the writer runs; messages queued while it writes (or while the connection's frame
buffer is full) go together in its next write. So 100 concurrent `delay()` calls cost a few
writes, not 100.

Each caller gets the outcome of its own messages only: a return (unroutable) or a nack fails
that caller; a channel that closes leaves the messages it did not confirm to their callers,
who send them again. A caller cancelled before its messages were written takes them out of the
next write; once written, their confirmations are read and dropped. The writer task belongs to
the pipeline: `close` stops it (the broker closes its pipeline when it closes, and replaces it
when the channel closed).
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from aiormq.channel import Returning
from pamqp import commands as spec
from pamqp import encode
from pamqp.header import ContentHeader

from ...exceptions import BrokerError

__all__ = ["Outgoing", "Pipeline", "TaskProperties"]

#: The most messages one write takes (whole submissions; a larger one goes alone).
MAX_WRITE = 5000
#: A submission of this many bytes (a frame's worth, by default) is written alone.
ALONE = 1 << 17


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4 object.__setattr__
class Outgoing:
    """One message to publish: where to, and what (not changed once made)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: spec.Basic.Properties


class TaskProperties(spec.Basic.Properties):
    """The properties of a task message (persistent; headers, priority, message id), made fast.

    pamqp's constructor sets all 14 properties and validates them (1.3 µs); this sets the four
    aqueue gives a message, and the others read as their defaults from the class until one is
    set. pamqp marshals it as the equal `spec.Basic.Properties`, and `_Encoder` encodes it
    without pamqp (tests/drivers/amqp/test_amqp_publish.py).
    """

    __slots__ = ()
    content_type = content_encoding = correlation_id = reply_to = expiration = None
    timestamp = message_type = user_id = app_id = None
    cluster_id = ""

    def __init__(
        self, headers: dict[str, Any] | None, priority: int | None, message_id: str | None
    ) -> None:
        self.headers = headers
        self.delivery_mode = 2
        self.priority = priority
        self.message_id = message_id


# pamqp walks `__slots__` to marshal, compare and iterate properties: give it the names of all
# 14 (set after the class is made, so that the instances keep the slots of their parent only).
TaskProperties.__slots__ = spec.Basic.Properties.__slots__  # type: ignore[assignment]


_FRAME_END = b"\xce"
#: A content header frame up to its property flags: type, channel, size; class, weight, body size.
_HEADER = struct.Struct(">BHIHHQH")
_BODY = struct.Struct(">BHI")  # a body frame's type, channel and size
_HEADERS, _DELIVERY_MODE, _PRIORITY, _MESSAGE_ID = (
    spec.Basic.Properties.flags[name]
    for name in ("headers", "delivery_mode", "priority", "message_id")
)
#: The most `Basic.Publish` frames a pipeline keeps encoded (delay routing keys are many).
PUBLISH_FRAMES = 1024


_TABLE_SIZE = struct.Struct(">I")
_LONG_LONG = struct.Struct(">q")
#: Field names encoded as pamqp encodes them (a length byte, UTF-8), by name; bounded.
_FIELD_NAMES: dict[str, bytes] = {}


def field_table(table: dict[str, Any]) -> bytes:
    """Encode a field table as pamqp's `encode.field_table` does; faster for a time stamp.

    Every `delay()` carries one header, when it was published (`stamp`: microseconds, which
    pamqp writes as a long-long, `l`, as it does every int above 2**32 - 1 whichever
    RabbitMQ it targets). That table is encoded here in 1 µs; pamqp's generic way took 6.
    Anything else goes to pamqp.
    """
    if len(table) == 1:
        ((key, value),) = table.items()
        if type(value) is int and 4294967295 < value <= 9223372036854775807:
            name = _FIELD_NAMES.get(key)
            if name is None:
                if len(_FIELD_NAMES) >= 64:
                    _FIELD_NAMES.clear()
                name = _FIELD_NAMES[key] = encode.short_string(key)  # checks its length
            size = len(name) + 9
            return _TABLE_SIZE.pack(size) + name + b"l" + _LONG_LONG.pack(value)
    return encode.field_table(table)


class _Encoder:
    """The frames of messages, for one channel, as pamqp marshals them but faster.

    pamqp's marshalling is generic (validating constructors, a test of each of 14 properties, a
    type dispatch for each value): 10 µs a message. This keeps each destination's
    `Basic.Publish` frame once encoded, and encodes the content header itself when a message
    has only the properties aqueue sets (`headers`, `delivery_mode`, `priority`, `message_id`;
    any other goes to pamqp). tests/drivers/amqp/test_amqp_publish.py checks the bytes are pamqp's.
    """

    def __init__(self, number: int, max_content_size: int) -> None:
        self.number = number
        self.max_content_size = max_content_size
        self.publish_frames: dict[tuple[str, str], bytes] = {}

    def message(self, item: Outgoing) -> bytes:
        """Return the frames of one message: publish, content header, body."""
        publish = self.publish_frames.get((item.exchange, item.routing_key))
        if publish is None:
            if len(self.publish_frames) >= PUBLISH_FRAMES:
                self.publish_frames.clear()
            method = spec.Basic.Publish(
                exchange=item.exchange, routing_key=item.routing_key, mandatory=True
            )
            publish = pamqp.frame.marshal(method, self.number)
            self.publish_frames[item.exchange, item.routing_key] = publish
        body = item.body
        size = self.max_content_size
        header = self.content_header(item.properties, len(body))
        if len(body) <= size:
            bodies = _BODY.pack(3, self.number, len(body)) + body + _FRAME_END if body else b""
            return publish + header + bodies
        # A body of several frames: cut into views, copied once, in the one join (slicing,
        # framing and joining it copied a 1 MB body four times over: issue 19, finding 8).
        view = memoryview(body)
        parts: list[bytes | memoryview] = [publish, header]
        for start in range(0, len(body), size):
            chunk = view[start : start + size]
            parts += (_BODY.pack(3, self.number, len(chunk)), chunk, _FRAME_END)
        return b"".join(parts)

    def content_header(self, properties: spec.Basic.Properties, body_size: int) -> bytes:
        """Return a content header frame, as pamqp marshals it."""
        p = properties
        if (  # pamqp leaves out None and "" (the default cluster_id): so does this
            p.content_type
            or p.content_encoding
            or p.correlation_id
            or p.reply_to
            or p.expiration
            or p.timestamp
            or p.message_type
            or p.user_id
            or p.app_id
            or p.cluster_id
        ):
            header = ContentHeader(properties=p, body_size=body_size)
            return pamqp.frame.marshal(header, self.number)
        flags = 0
        parts: list[bytes] = []
        # In the order of the flags, highest first; None and "" are left out, as pamqp does.
        if p.headers is not None:
            flags |= _HEADERS
            parts.append(field_table(p.headers))
        if p.delivery_mode is not None:
            flags |= _DELIVERY_MODE
            parts.append(encode.octet(p.delivery_mode))
        if p.priority is not None:
            flags |= _PRIORITY
            parts.append(encode.octet(p.priority))
        if p.message_id:
            flags |= _MESSAGE_ID
            parts.append(encode.short_string(p.message_id))
        values = b"".join(parts)
        size = _HEADER.size - 7 + len(values)  # the payload: after type, channel and size
        return _HEADER.pack(2, self.number, size, 60, 0, body_size, flags) + values + _FRAME_END

    def payload(self, items: Sequence[Outgoing]) -> bytes:
        """Return the frames of `items` (each given a message id if it had none)."""
        for item in items:
            if not item.properties.message_id:  # aiormq maps returns by message id
                item.properties.message_id = uuid.uuid4().hex
        if len(items) == 1:  # a `delay()`
            return self.message(items[0])
        return b"".join([self.message(item) for item in items])


class _Confirmation:
    """One message's confirmation, where aiormq's channel keeps a future per delivery tag.

    aiormq settles `channel.confirmations[tag]` with `set_result` (an ack) or `set_exception`
    (a nack, a return), having asked `done()` (and `cancelled()`): this object answers those
    calls, and settles its message in its submission there and then. A future there would cost
    three callbacks scheduled on the loop per message (two of aiormq's future store, one to
    settle); as this is in no store, the pipeline fails those left when the channel closes.

    It lets go of its submission once settled: the submission keeps its confirmations, so
    the two would otherwise make a cycle that only the cyclic collector frees, and with it the
    submission's messages. A worker collects its young objects every 10,000 allocations
    (`gc_tuning`), and a RabbitMQ worker that dead-lettered 1 MB bodies kept up to 68 of them
    alive that way, their bodies with them (issue 19, finding 8).
    """

    __slots__ = ("channel", "error", "message_id", "settled", "submission", "tag")

    def __init__(
        self,
        submission: _Submission | None,
        channel: aiormq.Channel | None,
        message_id: str,
        tag: int,
    ) -> None:
        self.submission = submission  # None once settled (or born settled)
        self.channel = channel  # None: never registered (see `_Submission.fail`)
        self.message_id = message_id
        self.tag = tag
        self.settled = False
        self.error: BaseException | None = None  # None once settled: confirmed

    def done(self) -> bool:
        """Whether it was settled (asked by aiormq before it settles it)."""
        return self.settled

    def cancelled(self) -> bool:
        """Never: a caller that goes away leaves its confirmations to be read and dropped."""
        return False

    def set_result(self, _: object) -> None:
        """Settle it as confirmed (aiormq: an ack)."""
        self._settle(None)

    def set_exception(self, error: BaseException) -> None:
        """Settle it as refused (aiormq: a nack or a return) or lost (the channel closed)."""
        self._settle(error)

    def _settle(self, error: BaseException | None) -> None:
        if self.settled:
            return
        self.settled, self.error = True, error
        if self.channel is not None:
            tags = self.channel.message_id_delivery_tag  # kept by aiormq to match returns
            if tags.get(self.message_id) == self.tag:
                del tags[self.message_id]
        submission, self.submission = self.submission, None
        assert submission is not None  # set until settled
        submission.left -= 1
        if error is not None:
            submission.refused += 1
        if not submission.left and not submission.done.done():
            submission.done.set_result(None)


class _Submission:
    """One caller's messages: their confirmations, and the future the caller waits on."""

    __slots__ = (
        "confirmations",
        "deadline",
        "done",
        "error",
        "items",
        "left",
        "refused",
        "timed_out",
    )

    def __init__(self, items: Sequence[Outgoing], done: asyncio.Future[None]) -> None:
        self.items = items
        self.done = done  # cancelled: the caller went away
        self.confirmations: list[_Confirmation] = []
        self.left = len(items)  # not settled yet
        self.refused = 0  # settled with an error
        self.error: BaseException | None = None  # its messages could not be encoded
        self.deadline = 0.0  # loop time; 0: none
        self.timed_out = False

    def fail(self, reason: BaseException) -> None:
        """Mark every message not written as not sent (the caller sends them again)."""
        for _ in self.items[len(self.confirmations) :]:
            confirmation = _Confirmation(None, None, "", 0)  # settled: no submission
            confirmation.settled, confirmation.error = True, reason
            self.confirmations.append(confirmation)
        if not self.done.done():
            self.done.set_result(None)


class Pipeline:
    """Publishes on one confirming channel, coalescing concurrent callers (see the module)."""

    def __init__(self, channel: aiormq.Channel, timeout: float = 0.0) -> None:
        """`timeout`: how long `confirm` waits for confirmations (0: as long as it takes)."""
        self.channel = channel
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._queued: deque[_Submission] = deque()
        #: The submissions with a deadline, oldest first (so, as all share the timeout, the
        #: first deadline first); one timer, at the first deadline, for all of them.
        self._timed: deque[_Submission] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._wakeup = asyncio.Event()
        self._closed: BaseException | None = None
        #: How many writes it made (each one system call at most): for tests and benchmarks.
        self.writes = 0
        self._encoder = _Encoder(channel.number, channel.max_content_size)
        channel.closing.add_done_callback(self._channel_closed)
        #: A return was read: aiormq put a `Returning` back at the end of `confirmations`,
        #: out of tag order, so acknowledgements walk every tag until none is left.
        self._returned = False
        self._on_return_frame = channel._on_return_frame
        # The channel's reader calls these by name: confirmations take `_on_confirm`'s way.
        setattr(channel, "_on_confirm_frame", self._on_confirm)  # noqa: B010
        setattr(channel, "_on_return_frame", self._on_return)  # noqa: B010
        self._writer = self._loop.create_task(self._run(), name="aqueue amqp publisher")

    @property
    def is_closed(self) -> bool:
        """True once `close` was called or the channel closed."""
        return self._closed is not None or self.channel.is_closed

    async def confirm(
        self, batch: Sequence[Outgoing]
    ) -> tuple[list[Outgoing], BaseException | None]:
        """Publish `batch` (mandatory, confirmed).

        Return what a closed channel left unconfirmed, and why the channel closed. An unroutable
        message or a negative confirmation raises `BrokerError`; no confirmation of every
        message within `timeout`, `TimeoutError` (those not written yet are not).
        """
        submission = self.submit(batch)
        try:
            await submission.done  # cancelled: it is dropped if not written yet
        finally:
            self.release()
        return self.outcome(submission)

    def submit(self, batch: Sequence[Outgoing]) -> _Submission:
        """Queue `batch` for the next write; await its `done`, then call `release`, `outcome`.

        `confirm` in three steps, for a caller that would otherwise be one coroutine more.
        """
        submission = _Submission(batch, self._loop.create_future())
        if self.is_closed:
            submission.fail(self._closed or _channel_closed())
        else:
            self._queued.append(submission)
            self._wakeup.set()
            if self.timeout:
                self._time(submission)
        return submission

    def release(self) -> None:
        """Let go of the timed submissions answered (call it once a submission is done)."""
        timed = self._timed
        while timed and timed[0].done.done():
            timed.popleft()

    @staticmethod
    def outcome(submission: _Submission) -> tuple[list[Outgoing], BaseException | None]:
        """Return what `confirm` returns for a submission that is done (or raise, as it does)."""
        if submission.timed_out:
            raise TimeoutError
        return _outcome(submission)

    def _time(self, submission: _Submission) -> None:
        """Give `submission` its deadline; the timer runs at the first of them."""
        submission.deadline = self._loop.time() + self.timeout
        self._timed.append(submission)
        if self._timer is None:
            self._timer = self._loop.call_at(submission.deadline, self._expire)

    def _expire(self) -> None:
        """Time out the submissions past their deadline (their callers raise TimeoutError)."""
        self._timer = None
        timed, now = self._timed, self._loop.time()
        while timed:
            submission = timed[0]
            if submission.done.done():
                timed.popleft()
            elif submission.deadline <= now:
                timed.popleft()
                submission.timed_out = True  # not written yet: `_take` leaves it out
                submission.done.set_result(None)
            else:
                self._timer = self._loop.call_at(submission.deadline, self._expire)
                return

    async def close(self) -> None:
        """Stop the writer; messages queued and not written are left to their callers."""
        if self._closed is None:
            self._closed = aiormq.exceptions.ChannelInvalidStateError("the publisher was closed")
        if self._timer is not None:  # callers still waiting fail with the channel
            self._timer.cancel()
            self._timer = None
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)

    async def _run(self) -> None:
        batch: list[_Submission] = []
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._queued and self._closed is None:
                    batch = self._take()
                    await self._write(batch)
                    batch = []
        finally:
            self._closed = self._closed or _channel_closed()
            for submission in [*batch, *self._queued]:
                submission.fail(self._closed)
            self._queued.clear()

    def _take(self) -> list[_Submission]:
        """Take the queued submissions (of callers still waiting), up to `MAX_WRITE` messages."""
        queued = self._queued
        taken: list[_Submission] = []
        count = 0
        while queued and (not taken or count + len(queued[0].items) <= MAX_WRITE):
            submission = queued.popleft()
            if not submission.done.done():
                taken.append(submission)
                count += len(submission.items)
        return taken

    async def _write(self, batch: list[_Submission]) -> None:
        """Write the batch in one frame buffer, each message with its confirmation future.

        A submission of `ALONE` bytes or more is encoded once what came before it is written,
        and written in a buffer of its own, which the connection's writer hands to the socket
        before the next one is encoded. Joined to the others', a large message was copied once
        more, and a batch's were all encoded at once: a worker refusing 1 MB bodies held a copy
        of each dead letter in flight (issue 19, finding 8).
        """
        channel = self.channel
        async with channel.lock:
            batch = [s for s in batch if not s.done.done()]  # callers gone while it waited
            if channel.is_closed:
                for submission in batch:
                    submission.fail(_channel_closed())
                return
            payloads: list[bytes] = []  # of the small submissions, written together
            group: list[_Submission] = []  # those submissions
            first = channel.delivery_tag  # the tag before the group's
            for submission in batch:
                payload = self._encode(submission)
                if payload is None:
                    continue
                if len(payload) < ALONE:
                    if not group:
                        first = channel.delivery_tag
                    payloads.append(payload)
                    group.append(submission)
                    self._register(submission)
                    continue
                if group:
                    await self._put(payloads, group, first)
                    group = []
                alone = [payload]
                del payload  # `_put` lets go of it once handed over
                tag = channel.delivery_tag
                self._register(submission)
                await self._put(alone, [submission], tag, written=True)
            if group:
                await self._put(payloads, group, first)

    def _encode(self, submission: _Submission) -> bytes | None:
        """Return the frames of a submission's messages; None (it failed) if they cannot be."""
        try:
            return self._encoder.payload(submission.items)
        except Exception as exc:  # refused by the encoder: this caller's alone
            submission.error = exc
            submission.fail(exc)
            return None

    async def _put(
        self, payloads: list[bytes], group: list[_Submission], first: int, written: bool = False
    ) -> None:
        """Hand `payloads` to the connection's writer as one buffer (and empty the list).

        `group`: their submissions, registered from the tag after `first`. `written`: return
        once the writer has handed the buffer to the socket (or the channel closed).
        """
        channel = self.channel
        drained = self._loop.create_future() if written else None
        frame = ChannelFrame(payload=b"".join(payloads), should_close=False, drain_future=drained)
        payloads.clear()  # the frame has them now: let them go once written
        try:
            await channel.write_queue.put(frame)
            self.writes += 1
        except BaseException as exc:
            # Not written (the writer stopped while the frame buffer was full): take the tags
            # back, which RabbitMQ never saw, and leave the messages to their callers; those
            # written before wait for their confirmations.
            self._unregister(group, first, exc)
            raise
        del frame
        if drained is not None:
            await asyncio.wait([drained, channel.closing], return_when=asyncio.FIRST_COMPLETED)

    def _register(self, submission: _Submission) -> None:
        """Give each message of `submission` its delivery tag and confirmation."""
        channel = self.channel
        for item in submission.items:
            message_id = item.properties.message_id or ""
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            confirmation = _Confirmation(submission, channel, message_id, tag)
            channel.confirmations[tag] = cast("asyncio.Future[Any]", confirmation)  # see the class
            channel.message_id_delivery_tag[message_id] = tag
            submission.confirmations.append(confirmation)

    def _unregister(self, batch: list[_Submission], first: int, exc: BaseException) -> None:
        channel = self.channel
        for tag in range(first + 1, channel.delivery_tag + 1):
            channel.confirmations.pop(tag, None)
        channel.delivery_tag = first
        reason = exc if isinstance(exc, Exception) else _channel_closed()
        for submission in batch:
            for confirmation in submission.confirmations:
                confirmation.set_exception(reason)  # unless settled

    async def _on_confirm(self, frame: spec.Basic.Ack | spec.Basic.Nack) -> None:
        """Settle what an acknowledgement (or a nack) answers, oldest first, there and then.

        RabbitMQ acknowledges many messages at once (`multiple`). aiormq's handler walks every
        outstanding tag for each such frame, and schedules a callback per tag it answers: at
        1,000 in flight, a thousand steps an ack. Tags are kept in the order they were given,
        so this takes them from the front, up to the acknowledged one.
        """
        confirmations = self.channel.confirmations
        tag = frame.delivery_tag
        error = None
        if not isinstance(frame, spec.Basic.Ack):
            error = aiormq.exceptions.DeliveryError(None, frame)
        if not frame.multiple:
            _answer(confirmations.pop(tag, None), frame, error)
            return
        if self._returned:
            answered = [other for other in confirmations if other <= tag]
            self._returned = len(answered) < len(confirmations)
        else:
            answered = list(itertools.takewhile(tag.__ge__, confirmations))
        for other in answered:
            _answer(confirmations.pop(other), frame, error)

    async def _on_return(self, frame: spec.Basic.Return) -> None:
        """Let aiormq read a returned message and fail its confirmation (see `_returned`)."""
        self._returned = True
        await self._on_return_frame(frame)

    def _channel_closed(self, closing: asyncio.Future[Any]) -> None:
        """Fail the confirmations the channel left when it closed (as aiormq fails futures)."""
        reason = None if closing.cancelled() else closing.exception()
        reason = reason or _channel_closed()
        for confirmation in list(self.channel.confirmations.values()):
            if isinstance(confirmation, _Confirmation):
                confirmation.set_exception(reason)  # unless settled


def _answer(
    confirmation: Any, frame: spec.Basic.Ack | spec.Basic.Nack, error: BaseException | None
) -> None:
    """Settle one confirmation as aiormq would, unless already settled (or returned)."""
    if type(confirmation) is _Confirmation:
        confirmation._settle(error)
    elif confirmation is None or isinstance(confirmation, Returning) or confirmation.done():
        return
    elif error is None:
        confirmation.set_result(frame)
    else:
        confirmation.set_exception(error)


def _channel_closed() -> BaseException:
    return aiormq.exceptions.ChannelInvalidStateError("the publishing channel is closed")


def _outcome(submission: _Submission) -> tuple[list[Outgoing], BaseException | None]:
    """Raise for a refused message; return those a closed channel left unconfirmed, and why."""
    if submission.error is not None:
        raise BrokerError(
            f"could not encode a message for RabbitMQ: {submission.error}"
        ) from submission.error
    if not submission.left and not submission.refused:
        return [], None  # every one confirmed: the common case
    lost: list[Outgoing] = []
    reason: BaseException | None = None
    for item, confirmation in zip(submission.items, submission.confirmations, strict=True):
        error = confirmation.error if confirmation.settled else _channel_closed()
        if isinstance(error, aiormq.exceptions.PublishError):
            raise BrokerError(
                f"RabbitMQ could not route a message to {item.routing_key!r} "
                f"(exchange {item.exchange!r}): was its queue deleted?"
            )
        if isinstance(error, aiormq.exceptions.DeliveryError):
            raise BrokerError(f"RabbitMQ refused a message for {item.routing_key!r} (nack)")
        if error is not None:
            lost.append(item)  # the channel closed: neither confirmed nor refused
            reason = reason or error
    if lost:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
    return lost, reason
