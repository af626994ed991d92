"""The worker connection's own frame reader (`aqueue.drivers.amqp.frames`).

Its decoders against pamqp's unmarshal on frames pamqp marshalled; the reader against aiormq's
own `FrameReceiver.get_frame` on the same bytes (frames, errors, end of stream), at every read
size; and, on a real RabbitMQ, that a worker's sessions do use it with the installed aiormq.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import anyio
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from aiormq.connection import FrameReceiver
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from aqueue import OutgoingMessage
from aqueue.drivers import create_broker
from aqueue.drivers.amqp import frames as frames
from aqueue.drivers.amqp.broker import AMQPBroker
from aqueue.drivers.amqp.consumer import Session
from tests.helpers import service_amqp
from tests.helpers.consuming import Credit
from tests.helpers.drivers import service_unavailable

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)

TAPPED, OTHER = 3, 5

EVERY_PROPERTY = spec.Basic.Properties(
    content_type="application/x-msgpack",
    content_encoding="gzip",
    headers={
        "aqueue-at": 1_763_725_000_123_456,
        "négatif": -(2**40),
        "small": 7,
        "pi": 3.25,
        "yes": True,
        "no": False,
        "raw": bytearray(b"\x00\xffbytes"),
        "texte": "ünïcødé ✓",
        "nothing": None,
        "price": decimal.Decimal("12.34"),
        "when": datetime.datetime(2026, 11, 21, 12, 0, tzinfo=datetime.UTC),
        "nested": {"list": [1, "two", 3.5, [True, {"deep": bytearray(b"x")}]], "empty": {}},
        "array": [],
    },
    delivery_mode=2,
    priority=9,
    correlation_id="corr-ïd",
    reply_to="amq.rabbitmq.reply-to.g1h2",
    expiration="60000",
    message_id=uuid.uuid4().hex,
    timestamp=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    message_type="tâche",
    user_id="guest",
    app_id="aqueue ✓",
)
NO_PROPERTY = spec.Basic.Properties()
AQUEUE_PROPERTIES = spec.Basic.Properties(
    delivery_mode=2, headers={"aqueue-at": 1_763_725_000_000_000}, message_id=uuid.uuid4().hex
)


def shape(value: Any) -> Any:
    """A value with its types, pamqp's objects as their attributes: `==` that tells 1 from True."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [shape(item) for item in value]
    if type(value).__module__.startswith("pamqp."):
        names = {name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())}
        attributes = {name: getattr(value, name) for name in names if hasattr(value, name)}
        attributes.update(getattr(value, "__dict__", {}))
        return type(value).__qualname__, shape(attributes)
    return type(value).__name__, value


def deliver(tag: int = 1, **fields: Any) -> spec.Basic.Deliver:
    return spec.Basic.Deliver(
        **{
            "consumer_tag": "aqueue-ctag-ü",
            "delivery_tag": tag,
            "redelivered": False,
            "exchange": "",
            "routing_key": "t1-q",
            **fields,
        }
    )


def marshal(channel: int, *frames: Any) -> bytes:
    return b"".join(pamqp.frame.marshal(frame, channel) for frame in frames)


def content(body: bytes, properties: spec.Basic.Properties, split: int = 0) -> list[Any]:
    """A content header and the body frames (`split` bytes each, or one)."""
    size = split or max(len(body), 1)
    pieces = [ContentBody(body[at : at + size]) for at in range(0, len(body), size)]
    return [ContentHeader(0, len(body), properties), *pieces]


# -- the decoders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        deliver(),
        deliver(2**63 - 1, redelivered=True, exchange="amq.direct", routing_key="clé ✓"),
        deliver(5, consumer_tag="", routing_key=""),
        deliver(6, consumer_tag="x" * 255, routing_key="r" * 255),
    ],
)
def test_deliver_decodes_as_pamqp_does(frame: spec.Basic.Deliver) -> None:
    data = marshal(TAPPED, frame)
    ours = frames.parse_deliver(data, 11, len(data) - 1)
    assert shape(ours) == shape(pamqp.frame.unmarshal(data)[2])


@pytest.mark.parametrize(
    "properties",
    [EVERY_PROPERTY, NO_PROPERTY, AQUEUE_PROPERTIES, spec.Basic.Properties(headers={})],
    ids=["every", "none", "aqueue", "empty-headers"],
)
@pytest.mark.parametrize("size", [0, 1, 2**40])
def test_content_header_decodes_as_pamqp_does(properties: spec.Basic.Properties, size: int) -> None:
    data = marshal(TAPPED, ContentHeader(0, size, properties))
    ours = frames.parse_header(data, 7, len(data) - 1)
    theirs = pamqp.frame.unmarshal(data)[2]
    assert isinstance(theirs, ContentHeader)
    assert shape(ours) == shape(theirs)
    assert ours.properties == theirs.properties
    assert ours.properties.headers == properties.headers


def test_a_millisecond_timestamp_decodes_as_pamqp_does() -> None:
    """pamqp reads timestamps past 2106 as milliseconds; so does the fast path (through pamqp)."""
    properties = spec.Basic.Properties(timestamp=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    data = bytearray(marshal(TAPPED, ContentHeader(0, 1, properties)))
    data[-9:-1] = (1_767_225_600_123).to_bytes(8, "big")
    ours = frames.parse_header(bytes(data), 7, len(data) - 1)
    assert shape(ours) == shape(pamqp.frame.unmarshal(bytes(data))[2])


# -- the reader against aiormq's ----------------------------------------------------------------


def receiver_of(data: bytes, *, eof: bool = True) -> FrameReceiver:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    receiver = FrameReceiver(reader)
    receiver.started = True  # after the handshake, as when the worker installs its reader
    return receiver


class FakeConnection:
    _Connection__last_frame_time = 0.0


async def read_all(get_frame: Any) -> list[Any]:
    """Every frame `get_frame` returns, then how it ended (stop, or the error's type and text)."""
    seen: list[Any] = []
    while True:
        try:
            weight, channel, frame = await get_frame()
        except StopAsyncIteration:
            return [*seen, "stop"]
        except Exception as exc:
            return [*seen, (type(exc), re.sub(" at 0x[0-9a-f]+", "", str(exc)))]
        seen.append((weight, channel, shape(frame)))


async def ours(data: bytes, taps: dict[int, list[DeliveredMessage]] | None = None) -> list[Any]:
    receiver = receiver_of(data)
    reader = frames.FrameReader(FakeConnection(), receiver)  # type: ignore[arg-type]
    for number, taken in (taps or {}).items():
        reader.taps[number] = frames._Tap(f"channel {number}", taken.append)  # type: ignore[arg-type]
    return await read_all(reader.get_frame)


async def aiormqs(data: bytes) -> list[Any]:
    return await read_all(receiver_of(data).get_frame)


@pytest.fixture(params=[1, 6, 7, 8, 13, 100, frames.READ_SIZE])
def read_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every way a read can cut a frame: in its header, at its end, in its payload."""
    monkeypatch.setattr(frames, "READ_SIZE", request.param)
    return int(request.param)


MIXED = b"".join(
    [
        marshal(0, spec.Connection.Blocked("memory ✓"), Heartbeat()),
        marshal(TAPPED, spec.Basic.QosOk(), spec.Basic.ConsumeOk("ctag")),
        marshal(OTHER, deliver(1), *content(b"other", EVERY_PROPERTY)),
        marshal(TAPPED, spec.Basic.Cancel("ctag"), spec.Channel.Close(404, "gone ✓", 60, 20)),
        marshal(0, spec.Connection.Close(320, "bye", 0, 0)),
    ]
)


@pytest.mark.usefixtures("read_size")
@pytest.mark.parametrize(
    "data",
    [
        MIXED,
        b"",
        MIXED[:-1],  # the stream ends in a frame's end byte
        MIXED[:3],  # in a frame header
        MIXED[:7],  # right after a frame header
        MIXED[:20],  # in a payload
        MIXED[:12] + b"\x00" + MIXED[13:],  # a bad frame end
        marshal(1, deliver())[:-1] + b"\x01",  # a bad frame end
        b"\x01\x00\x01\x00\x00\x00\x00\xce",  # no frame size
        b"\x09\x00\x00\x00\x00\x00\x01\x00\xce",  # an unknown frame type
        b"\x01\x00\x01\x00\x00\x00\x18\x00\x63\x00\x01" + b"\x00" * 20 + b"\xce",  # no such method
    ],
    ids=[
        "frames",
        "empty",
        "end-byte",
        "header",
        "no-payload",
        "payload",
        "bad-end",
        "bad-end-2",
        "no-size",
        "type",
        "method",
    ],
)
async def test_untapped_frames_and_errors_are_aiormqs(data: bytes) -> None:
    assert await ours(data) == await aiormqs(data)


@pytest.mark.usefixtures("read_size")
async def test_tapped_deliveries_are_assembled_and_the_rest_goes_to_aiormq() -> None:
    body = bytes(range(256)) * 40
    data = b"".join(
        [
            marshal(TAPPED, spec.Basic.ConsumeOk("ctag")),
            marshal(TAPPED, deliver(1), *content(b"one", AQUEUE_PROPERTIES)),
            marshal(TAPPED, deliver(2, redelivered=True), ContentHeader(0, 0, NO_PROPERTY)),
            # Frames of other channels between a delivery's frames, the body in four frames.
            marshal(TAPPED, deliver(3), content(body, EVERY_PROPERTY, 2600)[0]),
            marshal(OTHER, deliver(9), *content(b"not tapped", NO_PROPERTY)),
            marshal(TAPPED, *content(body, EVERY_PROPERTY, 2600)[1:3]),
            marshal(0, Heartbeat()),
            marshal(TAPPED, *content(body, EVERY_PROPERTY, 2600)[3:]),
            marshal(TAPPED, spec.Basic.CancelOk("ctag")),
        ]
    )
    taken: list[DeliveredMessage] = []
    seen = await ours(data, {TAPPED: taken})
    expected = await aiormqs(data)
    delivered = [(TAPPED, 1, b"one"), (TAPPED, 2, b""), (TAPPED, 3, body)]
    rest = [
        entry
        for entry in expected
        if entry == "stop" or entry[1] != TAPPED or entry[2][0] not in _DELIVERY_FRAMES
    ]
    assert seen == rest
    assert [(TAPPED, m.delivery.delivery_tag, m.body) for m in taken] == delivered  # type: ignore[union-attr]
    assert all(str(message.channel) == f"channel {TAPPED}" for message in taken)
    pamqps = [entry[2] for entry in expected if entry != "stop" and entry[1] == TAPPED]
    assert [shape(m.delivery) for m in taken] == [f for f in pamqps if f[0] == "Basic.Deliver"]
    assert [shape(m.header) for m in taken] == [f for f in pamqps if f[0] == "ContentHeader"]
    assert taken[1].delivery.redelivered  # type: ignore[union-attr]
    assert taken[2].header.properties == EVERY_PROPERTY


_DELIVERY_FRAMES = {"Basic.Deliver", "ContentHeader", "ContentBody"}


async def test_a_tapped_channel_that_breaks_off_a_delivery_hands_the_frame_to_aiormq() -> None:
    """As `tap_deliveries`: a frame that does not continue the delivery ends it, for aiormq."""
    data = marshal(
        TAPPED,
        deliver(1),
        spec.Basic.Cancel("ctag"),  # no content header: the delivery is dropped
        deliver(2),
        ContentBody(b"no header"),
        deliver(3),
        *content(b"three", NO_PROPERTY),
    )
    taken: list[DeliveredMessage] = []
    seen = await ours(data, {TAPPED: taken})
    assert [entry[2][0] for entry in seen[:-1]] == ["Basic.Cancel", "ContentBody"]
    assert [m.body for m in taken] == [b"three"]


def _spoilt(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


DELIVERY = marshal(TAPPED, deliver(1, consumer_tag="ok"), *content(b"x", AQUEUE_PROPERTIES))


@pytest.mark.parametrize(
    "data",
    [
        _spoilt(DELIVERY, 12, b"\xff\xfe"),  # not UTF-8 in the consumer tag
        _spoilt(DELIVERY, 11, b"\xff"),  # a consumer tag longer than the frame
        _spoilt(DELIVERY, len(marshal(TAPPED, deliver(1, consumer_tag="ok"))) - 1, b"\x00"),
        DELIVERY[:-1] + b"\x00",  # the body frame's end byte
    ],
    ids=["utf-8", "length", "method-end", "body-end"],
)
async def test_an_undecodable_tapped_frame_is_pamqps_error(data: bytes) -> None:
    """A delivery the fast path cannot read goes to pamqp, whose error aiormq would raise."""
    mine, theirs = await ours(data, {TAPPED: []}), await aiormqs(data)
    assert mine[-1] == theirs[-1]
    assert mine[-1][0] is aiormq.exceptions.InvalidFrameError


async def test_a_read_error_is_worded_as_aiormq_words_it() -> None:
    for error in [ConnectionResetError(104, "reset"), ConnectionRefusedError(), OSError(5, "io")]:
        theirs, mine = receiver_of(b"", eof=False), receiver_of(b"", eof=False)
        theirs.reader.set_exception(error)
        mine.reader.set_exception(error)
        reader = frames.FrameReader(FakeConnection(), mine)  # type: ignore[arg-type]
        assert await read_all(reader.get_frame) == await read_all(theirs.get_frame)


async def test_reading_counts_as_a_frame_for_the_stuck_connection_check() -> None:
    connection = FakeConnection()
    reader = frames.FrameReader(connection, receiver_of(marshal(0, Heartbeat())))  # type: ignore[arg-type]
    await reader.get_frame()
    assert connection._Connection__last_frame_time > 0


# -- on RabbitMQ --------------------------------------------------------------------------------


@pytest.fixture
async def broker() -> AsyncIterator[AMQPBroker]:
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10])
    broker = create_broker(url, {})
    assert isinstance(broker, AMQPBroker)
    async with broker:
        yield broker
    await service_amqp.cleanup(url)


async def test_the_worker_reads_its_deliveries_with_the_fast_reader(broker: AMQPBroker) -> None:
    """With the installed aiormq the fast reader is in use: an upgrade that breaks it fails here."""
    queues = [f"q-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    bodies = {queue: [f"{queue}-{i}".encode() * 100 for i in range(50)] for queue in queues}
    outgoing = [
        OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body)
        for queue in queues
        for body in bodies[queue]
    ]
    await broker.publish(outgoing)
    consumers = [broker.consume([queue], Credit(100)) for queue in queues]
    got: dict[str, list[bytes]] = {queue: [] for queue in queues}
    sessions: list[Session] = []
    with anyio.fail_after(10):
        for queue, consumer in zip(queues, consumers, strict=True):
            for _ in bodies[queue]:
                delivery = await consumer.__anext__()
                got[queue].append(delivery.body)
                await delivery.ack()
            sessions.append(delivery._session)  # type: ignore[attr-defined]
    assert got == bodies
    assert all(session.fast and session.tapped for session in sessions)
    connection = sessions[0].channel.connection
    assert sessions[1].channel.connection is connection
    reader = frames.reader_of(connection)
    assert reader is not None  # one reader for the connection, both channels tapped
    assert set(reader.taps) >= {session.channel.number for session in sessions}
    for consumer in consumers:
        await consumer.aclose()
    with anyio.fail_after(10):
        while any(session.channel.number in reader.taps for session in sessions):
            await anyio.wait_all_tasks_blocked()
    assert vars(FrameReceiver)["get_frame"].__qualname__ == "FrameReceiver.get_frame"


async def test_other_connections_keep_aiormqs_reader(broker: AMQPBroker) -> None:
    """Only the connections the worker taps change: a user's own aiormq connection does not."""
    own = await aiormq.connect(service_amqp.URL)
    try:
        receiver = frames._receiver(own)
        assert receiver is not None
        assert "get_frame" not in vars(receiver)
        channel = await own.channel()
        assert (await channel.queue_declare(exclusive=True)).queue
        assert "get_frame" not in vars(receiver)
    finally:
        await own.close()


async def test_without_a_reader_to_tap_the_channel_tap_is_used(
    broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(frames, "_supported", lambda: False)
    queue = f"q-{uuid.uuid4().hex[:8]}"
    await broker.publish([OutgoingMessage(id="1", queue=queue, body=b"slow")])
    consumer = broker.consume([queue], Credit(10))
    with anyio.fail_after(10):
        delivery = await consumer.__anext__()
    session = delivery._session  # type: ignore[attr-defined]
    assert delivery.body == b"slow"
    assert session.tapped
    assert not session.fast
    await delivery.ack()
    await consumer.aclose()
