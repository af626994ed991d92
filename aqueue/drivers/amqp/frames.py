"""Reading a consuming connection's frames in bulk, deliveries assembled where they are read.

aiormq reads each frame with three awaited `readexactly` calls under a lock, has pamqp build
it (validating constructors, a generic decoder per field), logs it and routes it through its
reader loop: for a delivery, three times over, about a third of what a delivered task costs a
worker. `FrameReader` replaces `get_frame` on the one `FrameReceiver` of a connection (never
aiormq's classes: other connections in the process are untouched). It reads whatever the
socket has in one await, cuts frames out of its own buffer, and for the channels tapped with
`tap` decodes Basic.Deliver, the content header and the body frames itself and hands the
assembled message to the channel's callback without going back to aiormq. Every other frame is
returned to aiormq as pamqp makes it, and anything unusual on a tapped channel is decoded by
pamqp too, so what aiormq sees is what it would have read itself.

The receiver is not kept by the connection: it is an argument of the connection's running
reader coroutine. Where that is not so (another aiormq), `tap` changes nothing and returns
False, and the caller uses its slower way.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

import pamqp.decode
import pamqp.frame
from aiormq.abc import AbstractChannel, AbstractConnection, DeliveredMessage
from aiormq.connection import Connection, FrameReceiver
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError
from pamqp import commands as spec
from pamqp.exceptions import PAMQPException
from pamqp.frame import FrameTypes
from pamqp.header import ContentHeader

__all__ = ["FrameReader", "parse_deliver", "parse_header", "tap"]

#: The aiormq releases whose reader this was written against (its coroutine, its receiver).
SUPPORTED = ("7.2.",)
#: How much one read may take off the socket: many frames for one await.
READ_SIZE = 65536

OnDelivery = Callable[[DeliveredMessage], None]
ReceivedFrame = tuple[int, int, FrameTypes]

_FRAME = struct.Struct(">BHI")  # type, channel, payload size
_FRAME_HEADER_SIZE = 7
_FRAME_END = 0xCE
_METHOD, _HEADER, _BODY = 1, 2, 3
_INDEX = struct.Struct(">I")
_DELIVER = spec.Basic.Deliver.index
_TAG_BITS = struct.Struct(">qB")  # delivery tag (signed, as pamqp reads it), redelivered bit
_CONTENT = struct.Struct(">HHQH")  # class id, weight, body size, first property flags
#: Basic's properties in wire order: (name, flag, AMQP type), from pamqp's own definition.
_PROPERTIES = tuple(
    (name, spec.Basic.Properties.flags[name], spec.Basic.Properties.amqp_type(name))
    for name in spec.Basic.Properties.__slots__
)
#: The order `_properties` assigns them in: if pamqp's differs, nothing is installed.
_ORDER = (
    "content_type", "content_encoding", "headers", "delivery_mode", "priority",
    "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
    "message_type", "user_id", "app_id", "cluster_id",
)  # fmt: skip
#: What pamqp's constructor leaves in a property the frame does not carry.
_DEFAULTS = [value for _, value in spec.Basic.Properties()]


class _LeaveToPamqp(Exception):
    """A frame this module does not decode itself: pamqp decodes it."""


# -- decoding ---------------------------------------------------------------------------------


def _shortstr(data: bytes, at: int, end: int) -> tuple[str, int]:
    """Decode a short string at `at`; the string and where the next field starts."""
    stop = at + 1 + data[at]
    if stop > end:
        raise _LeaveToPamqp("short string past the frame")
    return data[at + 1 : stop].decode(), stop


def parse_deliver(data: bytes, start: int, end: int) -> spec.Basic.Deliver:
    """Decode a Basic.Deliver method payload (after its class and method ids) in data[start:end].

    pamqp builds its frames through their constructors, which validate, then sets each field;
    the object here carries the same fields, set directly.
    """
    consumer_tag, at = _shortstr(data, start, end)
    if at + _TAG_BITS.size > end:
        raise _LeaveToPamqp("delivery tag past the frame")
    delivery_tag, bits = _TAG_BITS.unpack_from(data, at)
    exchange, at = _shortstr(data, at + _TAG_BITS.size, end)
    routing_key, at = _shortstr(data, at, end)
    deliver: spec.Basic.Deliver = object.__new__(spec.Basic.Deliver)
    deliver.consumer_tag = consumer_tag
    deliver.delivery_tag = delivery_tag
    deliver.redelivered = bool(bits & 1)
    deliver.exchange = exchange
    deliver.routing_key = routing_key
    return deliver


@cache
def _present(flags: int) -> tuple[tuple[int, str], ...]:
    """List the properties a flag word says are there: (index in `_PROPERTIES`, AMQP type)."""
    return tuple((i, kind) for i, (_, flag, kind) in enumerate(_PROPERTIES) if flags & flag)


def _properties(values: list[Any]) -> spec.Basic.Properties:
    """Build Basic.Properties from its values in wire order, all set as pamqp sets them."""
    p: spec.Basic.Properties = object.__new__(spec.Basic.Properties)
    (
        p.content_type, p.content_encoding, p.headers, p.delivery_mode, p.priority,
        p.correlation_id, p.reply_to, p.expiration, p.message_id, p.timestamp,
        p.message_type, p.user_id, p.app_id, p.cluster_id,
    ) = values  # fmt: skip
    return p


def parse_header(data: bytes, start: int, end: int) -> ContentHeader:
    """Decode a content header frame payload in data[start:end] into pamqp's objects.

    Short strings and octets are decoded here; tables and timestamps (aqueue sets only the
    headers table) by pamqp's decoders.
    """
    if start + _CONTENT.size > end:
        raise _LeaveToPamqp("content header too short")
    class_id, weight, body_size, flags = _CONTENT.unpack_from(data, start)
    if flags & 1:
        raise _LeaveToPamqp("more than one property flag word")  # Basic needs one
    at = start + _CONTENT.size
    values = _DEFAULTS.copy()
    for i, kind in _present(flags):
        if kind == "shortstr":
            values[i], at = _shortstr(data, at, end)
        elif kind == "octet":
            if at >= end:
                raise _LeaveToPamqp("octet past the frame")
            values[i], at = data[at], at + 1
        else:
            consumed, values[i] = pamqp.decode.by_type(data[at:end], kind)
            at += consumed
    header: ContentHeader = object.__new__(ContentHeader)
    header.class_id = class_id
    header.weight = weight
    header.body_size = body_size
    header.properties = _properties(values)
    return header


def unmarshal(frame: bytes) -> ReceivedFrame:
    """Have pamqp decode one whole frame, its errors told as aiormq tells them."""
    try:
        return pamqp.frame.unmarshal(frame)
    except PAMQPException as exc:
        raise InvalidFrameError(str(exc)) from exc


def _read_error(exc: BaseException) -> AMQPConnectionError:
    """Word a failed read as aiormq does (aiormq/connection.py, FrameReceiver.get_frame)."""
    if isinstance(exc, asyncio.IncompleteReadError):
        return AMQPConnectionError(
            "Server connection unexpectedly closed. "
            f"Read {len(exc.partial)} bytes but {exc.expected} bytes expected",
        )
    if isinstance(exc, ConnectionRefusedError):
        return AMQPConnectionError(f"Server connection refused: {exc!r}")
    if isinstance(exc, ConnectionResetError):
        return AMQPConnectionError(f"Server connection reset: {exc!r}")
    if isinstance(exc, ConnectionError):
        return AMQPConnectionError(f"Server connection error: {exc!r}")
    return AMQPConnectionError(f"Server communication error: {exc!r}")


def _truncated(rest: bytes) -> asyncio.IncompleteReadError:
    """Tell what aiormq's `readexactly` calls raise when the stream ends with `rest` unread.

    aiormq reads one byte, then six, then the payload and the frame end: the error names the
    read that came up short.
    """
    if len(rest) < _FRAME_HEADER_SIZE:
        return asyncio.IncompleteReadError(rest[1:], 6 if rest else 1)
    _, _, size = _FRAME.unpack_from(rest)
    return asyncio.IncompleteReadError(rest[_FRAME_HEADER_SIZE:], size + 1)


# -- reading ----------------------------------------------------------------------------------


class _Tap:
    """A channel whose deliveries go to `take`, with the one it is assembling."""

    __slots__ = ("channel", "chunks", "deliver", "header", "size", "take")

    def __init__(self, channel: AbstractChannel, take: OnDelivery) -> None:
        self.channel = channel
        self.take = take
        self.deliver: spec.Basic.Deliver | None = None
        self.header: ContentHeader | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    def reset(self, deliver: spec.Basic.Deliver | None = None) -> None:
        self.deliver, self.header, self.chunks, self.size = deliver, None, [], 0

    def finish(self) -> None:
        assert self.deliver is not None
        assert self.header is not None
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = DeliveredMessage(self.deliver, self.header, body, self.channel)
        self.reset()
        self.take(message)


class FrameReader:
    """The `get_frame` of one connection's FrameReceiver, reading many frames per await."""

    def __init__(self, connection: AbstractConnection, receiver: FrameReceiver) -> None:
        self.connection = connection
        self.receiver = receiver
        #: Channel number -> its tap; frames of other channels go to aiormq.
        self.taps: dict[int, _Tap] = {}
        self._data = b""
        self._pos = 0
        self._loop = asyncio.get_running_loop()

    def untap(self, number: int, entry: _Tap) -> None:
        """Stop tapping channel `number`, unless a newer channel took the number since."""
        if self.taps.get(number) is entry:
            del self.taps[number]

    async def get_frame(self) -> ReceivedFrame:
        """Return the next frame that is not a tapped delivery's, as aiormq's own method does."""
        while True:
            frame = self._next()
            if frame is not None:
                return frame
            await self._fill()

    def _next(self) -> ReceivedFrame | None:
        """Consume the buffered frames up to one for aiormq; None when more must be read."""
        data, taps = self._data, self.taps
        available = len(data)
        while available - self._pos >= _FRAME_HEADER_SIZE:
            start = self._pos
            kind, number, size = _FRAME.unpack_from(data, start)
            end = start + _FRAME_HEADER_SIZE + size  # where the frame-end byte is
            if end >= available:
                return None
            self._pos = end + 1
            entry = taps.get(number)
            if entry is None or not size or data[end] != _FRAME_END:
                return unmarshal(data[start : end + 1])
            if not self._tapped(entry, kind, start, end):
                return unmarshal(data[start : end + 1])
        return None

    def _tapped(self, entry: _Tap, kind: int, start: int, end: int) -> bool:
        """OnDelivery a frame of a tapped channel into its delivery; False to give it to aiormq.

        As `tap_deliveries` does: a frame that does not continue a delivery ends it, and goes
        to aiormq.
        """
        data, payload = self._data, start + _FRAME_HEADER_SIZE
        if entry.deliver is None:
            if kind != _METHOD or end - payload < _INDEX.size:
                return False
            if _INDEX.unpack_from(data, payload)[0] != _DELIVER:
                return False
            deliver = self._decode(parse_deliver, start, end, payload + _INDEX.size)
            if not isinstance(deliver, spec.Basic.Deliver):
                return False
            entry.reset(deliver)
        elif kind == _HEADER and entry.header is None:
            header = self._decode(parse_header, start, end, payload)
            if not isinstance(header, ContentHeader):
                entry.reset()
                return False
            entry.header = header
            if not header.body_size:
                entry.finish()
        elif kind == _BODY and entry.header is not None:
            entry.chunks.append(data[payload:end])
            entry.size += end - payload
            if entry.size >= entry.header.body_size:
                entry.finish()
        else:
            entry.reset()
            return False
        return True

    def _decode(
        self, parse: Callable[[bytes, int, int], Any], start: int, end: int, at: int
    ) -> Any:
        """Decode a frame with `parse`, or with pamqp when it is not the usual shape."""
        try:
            return parse(self._data, at, end)
        except (_LeaveToPamqp, ValueError, struct.error, IndexError):
            return unmarshal(self._data[start : end + 1])[2]

    async def _fill(self) -> None:
        """Read what the socket has (at least one byte) onto what is left of the buffer."""
        receiver = self.receiver
        rest = self._data[self._pos :]
        reader = receiver.reader
        if not rest and reader.at_eof():
            del receiver.reader  # as aiormq does: the connection is over
            raise StopAsyncIteration
        async with receiver.lock:
            try:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    raise _truncated(rest)
            except (asyncio.IncompleteReadError, OSError) as exc:
                raise _read_error(exc) from exc
        self._data, self._pos = (rest + chunk if rest else chunk), 0
        # aiormq takes a connection that reads nothing for a while for stuck: frames the reader
        # keeps to itself count as read.
        setattr(self.connection, _LAST_FRAME_TIME, self._loop.time())


# -- installing -------------------------------------------------------------------------------

_LAST_FRAME_TIME = "_Connection__last_frame_time"
_READER = getattr(Connection, "_Connection__reader", None)


@cache
def _supported() -> bool:
    try:
        release = importlib.metadata.version("aiormq")
    except importlib.metadata.PackageNotFoundError:
        return False
    names = tuple(name for name, _, _ in _PROPERTIES)
    return release.startswith(SUPPORTED) and _READER is not None and names == _ORDER


def _receiver(connection: AbstractConnection) -> FrameReceiver | None:
    """Find the FrameReceiver the connection's running reader coroutine reads from."""
    task = getattr(connection, "_reader_task", None)
    if task is None or task.done():
        return None
    coroutine = task.get_coro()
    frame = getattr(coroutine, "cr_frame", None)
    if frame is None or frame.f_code is not getattr(_READER, "__code__", None):
        return None
    receiver = frame.f_locals.get("frame_receiver")
    return receiver if type(receiver) is FrameReceiver else None


def reader_of(connection: AbstractConnection) -> FrameReader | None:
    """Return the connection's FrameReader, installed now if need be; None if it cannot be."""
    if not _supported() or not hasattr(connection, _LAST_FRAME_TIME):
        return None
    receiver = _receiver(connection)
    if receiver is None:
        return None
    installed = getattr(vars(receiver).get("get_frame"), "__self__", None)
    if isinstance(installed, FrameReader):
        return installed
    if "get_frame" in vars(receiver) or not receiver.started:
        return None  # someone else replaced it, or the handshake is not over
    if not isinstance(getattr(receiver, "reader", None), asyncio.StreamReader):
        return None
    reader = FrameReader(connection, receiver)
    # A read in flight on aiormq's own method finishes with one whole frame; every read after
    # it comes here, and only the connection's reader task reads.
    receiver.get_frame = reader.get_frame  # type: ignore[method-assign]
    return reader


def tap(channel: AbstractChannel, take: OnDelivery) -> bool:
    """Hand the channel's deliveries to `take` straight from the socket; True if it could.

    The tap ends when the channel closes.
    """
    reader = reader_of(channel.connection)
    if reader is None:
        return False
    number = channel.number
    entry = _Tap(channel, take)
    reader.taps[number] = entry
    channel.closing.add_done_callback(lambda _: reader.untap(number, entry))
    return True
