"""Concurrent publishes on RabbitMQ coalesce (`publisher.Pipeline`), on a real RabbitMQ.

Many callers share a write; each still returns once its own messages are confirmed, and gets
the errors of its own messages only: a cancelled caller, an unroutable message, a dropped
connection or a closed broker leave the others' messages as they were. To hold callers between
queueing and writing, a test takes the publishing channel's lock, which the writer needs: no
sleeping. Every test has a name prefix of its own, deleted at the end.
"""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pamqp.frame
import pytest
from pamqp import commands as spec
from pamqp import encode
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from aqueue import BrokerError, OutgoingMessage
from aqueue.drivers import create_broker
from aqueue.drivers.amqp import broker as amqp
from aqueue.drivers.amqp.broker import AMQPBroker
from aqueue.drivers.amqp.publisher import (
    ALONE,
    Outgoing,
    Pipeline,
    TaskProperties,
    _Encoder,
    field_table,
)
from tests.helpers import service_amqp
from tests.helpers.consuming import drain
from tests.helpers.drivers import service_unavailable

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_amqp.cleanup(url)


@pytest.fixture
async def broker(url: str) -> AsyncIterator[AMQPBroker]:
    broker = create_broker(url, {})
    assert isinstance(broker, AMQPBroker)
    async with broker:
        yield broker


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def message(queue: str, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body)


async def pipeline(broker: AMQPBroker, queue: str) -> Pipeline:
    """Declare `queue` and open the publishing channel; return the broker's pipeline."""
    await broker.publish([message(queue, b"first")])
    assert await broker.purge(queue) == 1
    publisher = broker._publisher
    assert publisher is not None
    return publisher


async def bodies(broker: AMQPBroker, queue: str) -> list[bytes]:
    """Every message of `queue`, taken off it (acknowledged)."""
    got = await drain(broker, [queue], credit=1000)
    for delivery in got:
        await delivery.ack()
    return sorted(delivery.body for delivery in got)


async def test_concurrent_publishes_share_writes_and_each_is_delivered_once(
    broker: AMQPBroker, queue: str
) -> None:
    publisher = await pipeline(broker, queue)
    writes = publisher.writes
    sent = [str(i).encode() for i in range(1000)]
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for body in sent:
                group.start_soon(broker.publish, [message(queue, body)])
    # 1,000 callers in one turn of the loop: a write or two, not 1,000.
    assert publisher.writes - writes <= 5
    assert await bodies(broker, queue) == sorted(sent)  # every one, once


async def test_a_large_message_is_written_in_a_buffer_of_its_own(
    broker: AMQPBroker, queue: str
) -> None:
    # Joined to the others', a 1 MB dead letter was copied once more per write: up to 9 MB
    # more in a worker refusing 1 MB bodies (issue 19, finding 8). Small ones still share.
    publisher = await pipeline(broker, queue)
    large = ALONE
    sent = [b"a", b"b", b"C" * large, b"d", b"E" * large, b"F" * large, b"g", b"h"]
    with anyio.fail_after(30):
        async with (
            anyio.create_task_group() as group,
            publisher.channel.lock,
        ):  # the writer waits: the callers queue up, then go in one batch
            writes = publisher.writes
            for body in sent:
                group.start_soon(broker.publish, [message(queue, body)])
            await anyio.wait_all_tasks_blocked()
    assert publisher.writes - writes == 6  # a b | C | d | E | F | g h
    assert await bodies(broker, queue) == sorted(sent)  # every one, once, in order of tags


async def test_large_messages_are_encoded_one_at_a_time(broker: AMQPBroker, queue: str) -> None:
    # Each is encoded once the one before it went to the socket: encoded all at once, six
    # concurrent dead letters of 1 MB were six more megabytes (issue 19, finding 8).
    publisher = await pipeline(broker, queue)
    size = 1 << 20
    sent = [bytes([65 + i]) * size for i in range(6)]
    tracemalloc.start()
    try:
        with anyio.fail_after(30):
            async with (
                anyio.create_task_group() as group,
                publisher.channel.lock,
            ):  # the writer waits: the callers queue up, then go in one batch
                for body in sent:
                    group.start_soon(broker.publish, [message(queue, body)])
                await anyio.wait_all_tasks_blocked()
                start = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
            peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak < 3.5 * size  # one encoded, the next being encoded: not six (and a join)
    assert await bodies(broker, queue) == sent


async def test_a_caller_cancelled_before_the_write_takes_its_message_out_of_it(
    broker: AMQPBroker, queue: str
) -> None:
    publisher = await pipeline(broker, queue)
    done: list[bytes] = []

    async def publish(body: bytes) -> None:
        await broker.publish([message(queue, body)])
        done.append(body)

    with anyio.fail_after(30):
        async with (
            anyio.create_task_group() as group,
            publisher.channel.lock,
        ):  # the writer waits: callers queue up
            scopes = {}
            for i in range(10):
                scope = scopes[i] = anyio.CancelScope()
                group.start_soon(_in_scope, scope, publish, str(i).encode())
            await anyio.wait_all_tasks_blocked()
            scopes[3].cancel()
            await anyio.wait_all_tasks_blocked()
    expected = sorted(str(i).encode() for i in range(10) if i != 3)
    assert sorted(done) == expected  # the other nine returned, confirmed
    assert await bodies(broker, queue) == expected  # and the cancelled one was never sent


async def test_a_caller_cancelled_while_waiting_for_its_confirm_leaves_the_others_confirmed(
    broker: AMQPBroker, queue: str
) -> None:
    publisher = await pipeline(broker, queue)
    done: list[bytes] = []

    async def publish(body: bytes) -> None:
        await broker.publish([message(queue, body)])
        done.append(body)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            scopes = {}
            for i in range(200):
                scope = scopes[i] = anyio.CancelScope()
                group.start_soon(_in_scope, scope, publish, str(i).encode())
            writes = publisher.writes
            while publisher.writes == writes:  # until the writer wrote them: one turn
                await anyio.wait_all_tasks_blocked()
            scopes[7].cancel()  # written: its confirmation is read and dropped
    assert len(done) in (199, 200)  # the 7th returned if its confirm came first
    assert set(done) >= {str(i).encode() for i in range(200) if i != 7}
    got = await bodies(broker, queue)
    assert got == sorted(str(i).encode() for i in range(200))  # written: it went, once


async def test_an_unroutable_message_fails_its_caller_alone(broker: AMQPBroker, queue: str) -> None:
    publisher = await pipeline(broker, queue)
    gone = f"{queue}-gone"
    await broker.publish([message(gone, b"declared")])
    channel = await broker.topology.admin()
    await channel.queue_delete(broker.topology.queue(gone))  # behind the broker's back
    outcomes: dict[bytes, str] = {}

    async def publish(target: str, body: bytes) -> None:
        try:
            await broker.publish([message(target, body)])
        except BrokerError as exc:
            outcomes[body] = str(exc)
        else:
            outcomes[body] = "ok"

    writes = publisher.writes
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group, publisher.channel.lock:  # all in one write
            for i in range(20):
                target = gone if i % 5 == 0 else queue
                group.start_soon(publish, target, str(i).encode())
            await anyio.wait_all_tasks_blocked()
    assert publisher.writes - writes == 1
    for i in range(20):
        outcome = outcomes[str(i).encode()]
        if i % 5 == 0:
            assert "could not route" in outcome
        else:
            assert outcome == "ok"
    assert await bodies(broker, queue) == sorted(str(i).encode() for i in range(20) if i % 5)
    await broker.publish([message(queue, b"after")])  # the channel is as good as before
    assert await bodies(broker, queue) == [b"after"]
    assert not publisher.channel.confirmations  # the returned ones' markers too


async def test_a_connection_lost_under_a_batch_sends_it_again_on_a_new_one(
    broker: AMQPBroker, queue: str
) -> None:
    publisher = await pipeline(broker, queue)
    sent = [str(i).encode() for i in range(50)]
    with anyio.fail_after(30):
        async with (
            anyio.create_task_group() as group,
            publisher.channel.lock,
        ):  # queued, not written
            for body in sent:
                group.start_soon(broker.publish, [message(queue, body)])
            await anyio.wait_all_tasks_blocked()
            await (await broker.link.connection()).close()
    assert broker._publisher is not publisher  # a new channel, on a new connection
    assert publisher.is_closed
    assert await bodies(broker, queue) == sorted(sent)  # never written before: each once


async def test_closing_the_broker_under_a_batch_fails_its_callers(
    broker: AMQPBroker, queue: str
) -> None:
    publisher = await pipeline(broker, queue)
    failures: list[BaseException] = []

    async def publish(body: bytes) -> None:
        try:
            await broker.publish([message(queue, body)])
        except BrokerError as exc:
            failures.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group, publisher.channel.lock:
            for i in range(10):
                group.start_soon(publish, str(i).encode())
            await anyio.wait_all_tasks_blocked()
            await broker.close()
    assert len(failures) == 10
    assert all("closed" in str(failure) for failure in failures)
    assert publisher.is_closed
    await broker.open()
    assert await bodies(broker, queue) == []  # nothing was sent


async def test_a_channel_closed_under_written_messages_fails_their_callers(
    broker: AMQPBroker, queue: str
) -> None:
    publisher = await pipeline(broker, queue)
    admin = await broker.link.channel(confirms=False)
    failures: list[str] = []

    async def publish(body: bytes) -> None:
        try:
            await broker.publish([message(queue, body)])
        except BrokerError as exc:
            failures.append(str(exc))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:  # noqa: SIM117 (unlocked, then awaited)
            async with publisher.channel.lock:  # queued, to go in one write
                for i in range(10):
                    group.start_soon(publish, str(i).encode())
                await anyio.wait_all_tasks_blocked()
                # Behind the topology's back: RabbitMQ closes the channel at the first message,
                # and never confirms the others, written with it.
                await admin.exchange_delete(broker.topology.exchange)
    assert len(failures) == 10  # every caller heard of it; none waits for ever
    assert all("NOT_FOUND" in failure for failure in failures)
    assert publisher.is_closed
    await broker.publish([message(queue, b"after")])  # declared again, on a new channel
    assert await bodies(broker, queue) == [b"after"]


async def _in_scope(
    scope: anyio.CancelScope, publish: Callable[[bytes], Awaitable[None]], body: bytes
) -> None:
    with scope:
        await publish(body)


@pytest.mark.parametrize(
    "properties",
    [
        spec.Basic.Properties(
            delivery_mode=2, priority=5, headers={"n": 1, "s": "\u00e9t\u00e9"}, message_id="id"
        ),
        spec.Basic.Properties(
            delivery_mode=2, headers={"aqueue-at": 1_765_000_000_000_000}, message_id="id"
        ),
        spec.Basic.Properties(delivery_mode=2, headers={}),
        spec.Basic.Properties(headers=None, message_id=""),
        spec.Basic.Properties(content_type="text/plain", delivery_mode=2, message_id="m"),
    ],
    ids=["aqueue's", "a delay()'s", "empty headers", "none", "another property"],
)
@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 350])
def test_the_frames_of_a_message_are_those_pamqp_marshals(
    properties: spec.Basic.Properties, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = _Encoder(number=3, max_content_size=100)
    body = bytes(i % 256 for i in range(size))
    frames = [
        spec.Basic.Publish(exchange="ex", routing_key="key", mandatory=True),
        ContentHeader(properties=properties, body_size=len(body)),
        *(ContentBody(body[at : at + 100]) for at in range(0, len(body), 100)),
    ]
    expected = b"".join(pamqp.frame.marshal(frame, 3) for frame in frames)
    if not properties.content_type:  # only aqueue's properties: encoded without pamqp
        monkeypatch.setattr(ContentHeader, "marshal", None)
    for _ in range(2):  # the publish frame encoded, then kept
        assert encoder.message(Outgoing("ex", "key", body, properties)) == expected


@pytest.mark.parametrize(
    ("headers", "priority", "message_id"),
    [({"aqueue-at": 1_765_000_000_000_000}, None, "id"), ({"n": 1}, 9, "m"), (None, None, None)],
)
def test_task_properties_are_the_pamqp_properties_they_stand_for(
    headers: dict[str, Any] | None, priority: int | None, message_id: str | None
) -> None:
    fast = TaskProperties(headers, priority, message_id)
    slow = spec.Basic.Properties(
        delivery_mode=2, priority=priority, headers=headers, message_id=message_id
    )
    for name in spec.Basic.Properties.flags:
        assert getattr(fast, name) == getattr(slow, name), name
    body = b"x" * 150
    marshalled = pamqp.frame.marshal(ContentHeader(properties=fast, body_size=150), 3)
    assert marshalled == pamqp.frame.marshal(ContentHeader(properties=slow, body_size=150), 3)
    encoder = _Encoder(number=3, max_content_size=100)
    assert encoder.message(Outgoing("ex", "key", body, fast)) == encoder.message(
        Outgoing("ex", "key", body, slow)
    )
    fast.content_type = slow.content_type = "text/plain"  # set later: as pamqp's, again
    assert fast == slow
    assert pamqp.frame.marshal(ContentHeader(properties=fast, body_size=1), 3) == (
        pamqp.frame.marshal(ContentHeader(properties=slow, body_size=1), 3)
    )


@pytest.mark.parametrize(
    "table",
    [
        {"aqueue-at": 1_765_000_000_000_000},
        {"\u00e9t\u00e9": 2**32},
        {"n": 2**32 - 1},
        {"n": 2**63 - 1},
        {"n": True},
        {"n": 1, "m": 2**40},
        {},
    ],
)
def test_field_tables_are_encoded_as_pamqp_encodes_them(table: dict[str, Any]) -> None:
    assert field_table(table) == encode.field_table(table)


def test_a_field_table_pamqp_refuses_is_refused() -> None:
    with pytest.raises(TypeError):
        field_table({"n": 2**63})


def test_the_publish_frames_kept_are_bounded() -> None:
    encoder = _Encoder(number=1, max_content_size=1000)
    properties = spec.Basic.Properties(delivery_mode=2)
    for i in range(3000):  # a routing key per delay, say
        encoder.message(Outgoing("ex", f"key-{i}", b"x", properties))
    assert 0 < len(encoder.publish_frames) <= 1024


async def test_callers_not_confirmed_within_publish_timeout_fail_and_their_messages_stay_unsent(
    url: str, queue: str
) -> None:
    broker = create_broker(url, {"publish_timeout": 0.3})
    assert isinstance(broker, AMQPBroker)
    async with broker:
        publisher = await pipeline(broker, queue)
        failures: list[str] = []

        async def publish(body: bytes) -> None:
            try:
                await broker.publish([message(queue, body)])
            except BrokerError as exc:
                failures.append(str(exc))

        with anyio.fail_after(30):
            async with (
                publisher.channel.lock,  # the writer waits: nothing is written
                anyio.create_task_group() as group,
            ):
                for i in range(3):
                    group.start_soon(publish, str(i).encode())
            # One timer for the three: each caller failed at its own deadline.
            assert len(failures) == 3
            assert all("did not confirm 1 message(s) within 0.3 s" in f for f in failures)
            await broker.publish([message(queue, b"after")])  # the pipeline goes on
        assert await bodies(broker, queue) == [b"after"]  # the timed-out were never written


async def test_a_publish_larger_than_a_window_goes_in_windows(
    broker: AMQPBroker, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = await pipeline(broker, queue)
    monkeypatch.setattr(amqp, "WINDOW", 3)
    writes = publisher.writes
    sent = [str(i).encode() for i in range(10)]
    with anyio.fail_after(30):
        await broker.publish([message(queue, body) for body in sent])
    assert publisher.writes - writes == 4  # 3 + 3 + 3 + 1, each confirmed before the next
    assert await bodies(broker, queue) == sorted(sent)
