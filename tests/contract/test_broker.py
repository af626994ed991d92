"""The broker contract: every driver passes these, on a real server where it has one."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio
import pytest

from aqueue import Broker, BrokerError, OutgoingMessage
from aqueue.drivers import create_broker
from tests.helpers.consuming import Credit, drain

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    broker = create_broker(broker_url, {"visibility_timeout": 30.0, "max_deliveries": 3})
    async with broker:
        yield broker


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def message(queue: str, body: bytes = b"x", **fields: object) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body, **fields)  # type: ignore[arg-type]


async def test_publish_consume_ack(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue, b"one"), message(queue, b"two")])
    got = await drain(broker, [queue])
    assert [d.body for d in got] == [b"one", b"two"]
    assert {d.queue for d in got} == {queue}
    assert [d.delivery_count for d in got] == [1, 1]
    for delivery in got:
        await delivery.ack()
    assert await drain(broker, [queue]) == []


async def test_queues_are_separate(broker: Broker, queue: str) -> None:
    other = f"{queue}-other"
    await broker.publish([message(queue, b"a"), message(other, b"b")])
    got = await drain(broker, [queue])
    assert [d.body for d in got] == [b"a"]
    for delivery in got + await drain(broker, [other]):
        await delivery.ack()


async def test_priority_nine_first_then_fifo(broker: Broker, queue: str) -> None:
    await broker.publish(
        [
            message(queue, b"low-1", priority=0),
            message(queue, b"high", priority=9),
            message(queue, b"low-2", priority=0),
            message(queue, b"mid", priority=5),
        ]
    )
    got = await drain(broker, [queue])
    assert [d.body for d in got] == [b"high", b"mid", b"low-1", b"low-2"]
    for delivery in got:
        await delivery.ack()


async def test_credit_bounds_what_is_taken(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue, str(i).encode()) for i in range(5)])
    iterator = broker.consume([queue], Credit(2))
    with anyio.fail_after(10):
        first = [await iterator.__anext__(), await iterator.__anext__()]
    await iterator.aclose()
    assert [d.body for d in first] == [b"0", b"1"]
    for delivery in first:
        await delivery.ack()
    rest = await drain(broker, [queue])
    assert [d.body for d in rest] == [b"2", b"3", b"4"]
    for delivery in rest:
        await delivery.ack()


async def test_nack_returns_the_message(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue, b"again")])
    (first,) = await drain(broker, [queue])
    await first.nack()
    await first.ack()  # settled already: a no-op, the message stays
    (second,) = await drain(broker, [queue])
    assert second.body == b"again"
    assert second.delivery_count == 2
    await second.ack()


async def test_nack_with_delay_holds_it_back(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue)])
    (first,) = await drain(broker, [queue])
    await first.nack(delay=60)
    assert await drain(broker, [queue]) == []
    assert await broker.purge(queue) == 1


async def test_delayed_message_arrives_when_due(broker: Broker, queue: str) -> None:
    due = time.time() + 0.3
    await broker.publish([message(queue, b"later", eta=due), message(queue, b"now")])
    assert [d.body for d in await drain(broker, [queue])] == [b"now"]
    with anyio.fail_after(5):
        async with aclosing(broker.consume([queue], Credit())) as deliveries:
            async for delivery in deliveries:
                assert delivery.body == b"later"
                break
    assert time.time() >= due
    await delivery.ack()


async def test_delayed_lists_what_is_not_due_yet(broker: Broker, queue: str) -> None:
    if broker.url.startswith(("amqp", "pyamqp")):
        with pytest.raises(BrokerError, match="delay queues"):
            await broker.delayed(queue)
        return
    now = time.time()
    await broker.publish(
        [
            message(queue, b"in-an-hour", eta=now + 3600, priority=3),
            message(queue, b"in-a-minute", eta=now + 60),
            message(queue, b"now"),
            message(f"{queue}-other", b"elsewhere", eta=now + 60),
        ]
    )
    delayed = await broker.delayed(queue)
    assert [(d.body, d.priority, d.queue) for d in delayed] == [
        (b"in-a-minute", 0, queue),
        (b"in-an-hour", 3, queue),
    ]
    assert abs(delayed[0].due - (now + 60)) < 1
    assert [d.body for d in await broker.delayed(queue, limit=1)] == [b"in-a-minute"]
    await broker.purge(queue)
    await broker.purge(f"{queue}-other")
    assert await broker.delayed(queue) == []


async def test_a_past_eta_is_ready_at_once(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue, b"late", eta=time.time() - 5)])
    (delivery,) = await drain(broker, [queue])
    await delivery.ack()


async def test_an_idle_consumer_wakes_on_publish(broker: Broker, queue: str) -> None:
    received = anyio.Event()

    async def consume() -> None:
        async with aclosing(broker.consume([queue], Credit())) as deliveries:
            async for delivery in deliveries:
                await delivery.ack()
                received.set()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        sent = time.perf_counter()
        await broker.publish([message(queue)])
        with anyio.fail_after(5):
            await received.wait()
        latency = time.perf_counter() - sent
    assert latency < 1.0  # honest bound for a loaded machine; the target is 50 ms


async def test_dead_letter_keeps_reason_and_detail(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue, b"bad")])
    (delivery,) = await drain(broker, [queue])
    await delivery.dead_letter("undecodable", "not msgpack")
    assert await drain(broker, [queue]) == []
    (letter,) = await broker.dead_letters(queue)
    assert (letter.queue, letter.body, letter.reason, letter.detail) == (
        queue,
        b"bad",
        "undecodable",
        "not msgpack",
    )
    assert letter.at == pytest.approx(time.time(), abs=60)


async def test_max_deliveries_dead_letters_a_looping_message(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue, b"poison")])
    for attempt in (1, 2, 3):  # the fixture's max_deliveries is 3
        (delivery,) = await drain(broker, [queue])
        assert delivery.delivery_count == attempt
        await delivery.nack()
    assert await drain(broker, [queue]) == []
    (letter,) = await broker.dead_letters(queue)
    assert (letter.body, letter.reason) == (b"poison", "max-deliveries")


async def test_purge_counts_waiting_messages(broker: Broker, queue: str) -> None:
    await broker.publish([message(queue) for _ in range(3)])
    await broker.publish([message(queue, eta=time.time() + 60)])
    assert await broker.purge(queue) == 4
    assert await drain(broker, [queue]) == []
    assert await broker.purge(queue) == 0


async def test_consume_several_queues_by_priority_then_age(broker: Broker, queue: str) -> None:
    other = f"{queue}-b"
    await broker.publish(
        [
            message(queue, b"a-old"),
            message(other, b"b-urgent", priority=9),
            message(other, b"b-new"),
        ]
    )
    got = await drain(broker, [queue, other])
    assert [d.body for d in got] == [b"b-urgent", b"a-old", b"b-new"]
    for delivery in got:
        await delivery.ack()
