"""The dead-letter contract: every driver lists, counts, caps, retries and purges them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from aqueue import Broker, DeadLetterStats, OutgoingMessage
from aqueue.drivers import create_broker
from tests.helpers.consuming import drain


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    broker = create_broker(broker_url, {"visibility_timeout": 30.0, "max_deliveries": 3})
    async with broker:
        yield broker


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def message(queue: str, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body)


async def bury(broker: Broker, queue: str, *bodies: bytes) -> None:
    """Dead-letter one message per body, in order, with the reason `undecodable`."""
    for body in bodies:  # one at a time: their order in the dead letters is the bodies' order
        await broker.publish([message(queue, body)])
        (delivery,) = await drain(broker, [queue])
        await delivery.dead_letter("undecodable", "d")


def is_amqp(broker: Broker) -> bool:
    return broker.url.startswith("amqp")


async def test_dead_letters_have_ids_and_are_counted(broker: Broker, queue: str) -> None:
    await bury(broker, queue, b"one", b"two")
    letters = await broker.dead_letters(queue)
    assert [letter.body for letter in letters] == [b"one", b"two"]
    assert len({letter.id for letter in letters}) == 2
    assert all(letter.id for letter in letters)
    stats = await broker.dead_letter_stats(queue)
    assert stats.kept == 2
    if not is_amqp(broker):  # RabbitMQ does not say what a queue's messages weigh
        assert stats == DeadLetterStats(2, sum(letter.size for letter in letters), 0)


async def test_retry_by_id_puts_one_back_fresh(broker: Broker, queue: str) -> None:
    await bury(broker, queue, b"one", b"two", b"three")
    one, two, three = await broker.dead_letters(queue)
    assert await broker.retry_dead_letters(queue, [two.id, "no-such-id", "1-1"]) == 1
    (back,) = await drain(broker, [queue])
    assert (back.body, back.delivery_count) == (b"two", 1)
    await back.ack()
    assert [letter.body for letter in await broker.dead_letters(queue)] == [b"one", b"three"]
    stats = await broker.dead_letter_stats(queue)
    assert stats.kept == 2
    if not is_amqp(broker):
        assert stats.bytes == one.size + three.size


async def test_retry_all_then_nothing_is_left(broker: Broker, queue: str) -> None:
    await bury(broker, queue, b"one", b"two")
    assert await broker.retry_dead_letters(queue) == 2
    back = await drain(broker, [queue])
    assert sorted(d.body for d in back) == [b"one", b"two"]
    for delivery in back:
        await delivery.ack()
    assert await broker.dead_letters(queue) == []
    assert (await broker.dead_letter_stats(queue)).kept == 0
    assert await broker.retry_dead_letters(queue) == 0


async def test_purge_by_id_and_all(broker: Broker, queue: str) -> None:
    await bury(broker, queue, b"one", b"two", b"three")
    one, _, three = await broker.dead_letters(queue)
    assert await broker.purge_dead_letters(queue, [one.id, three.id, "nope"]) == 2
    assert [letter.body for letter in await broker.dead_letters(queue)] == [b"two"]
    assert await broker.purge_dead_letters(queue) == 1
    assert await broker.dead_letters(queue) == []
    stats = await broker.dead_letter_stats(queue)
    assert stats.kept == 0
    if not is_amqp(broker):
        assert stats.bytes == 0
    assert await drain(broker, [queue]) == []  # purged, not put back


async def test_the_oldest_go_first_past_the_cap_in_bytes(broker_url: str, queue: str) -> None:
    options = {"max_deliveries": 3, "dead_letter_max_bytes": 350}
    async with create_broker(broker_url, options) as broker:
        bodies = [bytes([65 + i]) * 100 for i in range(6)]  # 100 + 11 ("undecodable", "d")
        await bury(broker, queue, *bodies)
        letters = await broker.dead_letters(queue)
        assert [letter.body for letter in letters] == bodies[3:]  # 3 x 112 = 336 <= 350
        if is_amqp(broker):  # RabbitMQ counts bodies alone (300 <= 350), and no drops for us
            assert (await broker.dead_letter_stats(queue)).kept == 3
            return
        assert await broker.dead_letter_stats(queue) == DeadLetterStats(3, 336, 3)
        assert await broker.purge_dead_letters(queue, [letters[0].id]) == 1
        assert await broker.dead_letter_stats(queue) == DeadLetterStats(2, 224, 3)
        await bury(broker, queue, b"x" * 1000)  # alone over the cap: the newest is kept
        assert [letter.body for letter in await broker.dead_letters(queue)] == [b"x" * 1000]
        assert await broker.dead_letter_stats(queue) == DeadLetterStats(1, 1012, 5)


async def test_the_cap_holds_for_messages_past_max_deliveries(broker_url: str, queue: str) -> None:
    """Dead-lettered while claimed (max-deliveries), not refused: the same cap applies."""
    options = {"max_deliveries": 3, "dead_letter_max_bytes": 500}
    async with create_broker(broker_url, options) as broker:
        bodies = [bytes([65 + i]) * 300 for i in range(3)]
        for body in bodies:
            await broker.publish([message(queue, body)])
            for _ in range(3):
                (delivery,) = await drain(broker, [queue])
                await delivery.nack()
            assert await drain(broker, [queue]) == []  # the fourth delivery: dead-lettered
        letters = await broker.dead_letters(queue)
        assert [(letter.body, letter.reason) for letter in letters] == [
            (bodies[-1], "max-deliveries")
        ]
        stats = await broker.dead_letter_stats(queue)
        assert stats.kept == 1
        if not is_amqp(broker):
            assert stats == DeadLetterStats(1, letters[0].size, 2)
