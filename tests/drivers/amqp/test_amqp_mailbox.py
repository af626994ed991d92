"""The RabbitMQ mailbox beyond the contract: across connections, durability, compaction."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue.drivers import create_broker
from aqueue.drivers.amqp import mailbox as _amqp_mailbox
from aqueue.drivers.amqp.broker import AMQPBroker
from aqueue.drivers.amqp.mailbox import AMQPMailbox, Subscription
from aqueue.exceptions import BrokerError
from tests.helpers import service_amqp
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


async def settings_count(broker: AMQPBroker) -> int:
    mailbox = broker.mailbox()
    channel = await broker.link.channel(confirms=False)
    try:
        declared = await channel.queue_declare(mailbox.settings_queue, passive=True)
    finally:
        await channel.close()
    return declared.message_count or 0


async def test_topics_match_exactly_across_connections(url: str) -> None:
    async with (
        create_broker(url, {}) as one,
        create_broker(url, {}) as two,
        two.mailbox().subscribe("control.reply.*") as star,
        two.mailbox().subscribe("control.#") as hash_,
        two.mailbox().subscribe("control.reply.abc") as exact,
    ):
        await one.mailbox().publish("control.reply.abc", b"exact")
        await one.mailbox().publish("control.reply.*", b"star")
        await one.mailbox().publish("control.#", b"hash")
        with anyio.fail_after(10):
            assert await anext(exact) == b"exact"
            assert await anext(star) == b"star"
            # With wildcards, "exact" (published first) would have come first to both.
            assert await anext(hash_) == b"hash"


async def test_a_subscription_comes_back_after_a_dropped_connection(url: str) -> None:
    async with create_broker(url, {}) as one, create_broker(url, {}) as two:
        assert isinstance(two, AMQPBroker)
        async with two.mailbox().subscribe("control.broadcast") as messages:
            assert isinstance(messages, Subscription)
            await (await two.link.connection()).close()
            assert not messages.live.is_set()
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    got: list[bytes] = []

                    async def read() -> None:
                        got.append(await messages.receive())

                    group.start_soon(read)
                    await messages.live.wait()  # consumed again on a new connection
                    await one.mailbox().publish("control.broadcast", b"again")
            assert got == [b"again"]


async def test_a_subscription_ends_when_the_broker_closes(url: str) -> None:
    broker = create_broker(url, {})
    assert isinstance(broker, AMQPBroker)
    async with broker, broker.mailbox().subscribe("t") as messages:
        await broker.close()
        with pytest.raises(BrokerError, match="closed"):
            await anext(messages)


async def test_settings_survive_a_restart(url: str) -> None:
    async with create_broker(url, {}) as broker:
        await broker.mailbox().put("rate_limit.a", b"10/m")
        await broker.mailbox().put("revoked.x", b"1", ttl=3600)
        await broker.mailbox().put("revoked.y", b"1")
        await broker.mailbox().delete("revoked.y")
    async with create_broker(url, {}) as broker:
        mailbox = broker.mailbox()
        assert await mailbox.items("") == {"rate_limit.a": b"10/m", "revoked.x": b"1"}
        assert await mailbox.items("revoked.") == {"revoked.x": b"1"}  # read twice: requeued


async def test_items_compacts_the_queue(broker: AMQPBroker) -> None:
    mailbox = broker.mailbox()
    for n in range(50):
        await mailbox.put("rate_limit.a", str(n).encode())
    await mailbox.put("rate_limit.b", b"kept")
    for n in range(10):
        await mailbox.put(f"revoked.{n}", b"1")
        await mailbox.delete(f"revoked.{n}")
    assert await settings_count(broker) == 71
    assert await mailbox.items("rate_limit.") == {"rate_limit.a": b"49", "rate_limit.b": b"kept"}
    assert await settings_count(broker) == 2
    assert await mailbox.items("revoked.") == {}


async def test_expiry_and_overwrites(broker: AMQPBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    mailbox = broker.mailbox()
    assert isinstance(mailbox, AMQPMailbox)
    await mailbox.put("a", b"for good")
    await mailbox.put("a", b"for a minute", ttl=60)  # the newer one wins, and then expires
    await mailbox.put("b", b"for an hour", ttl=3600)
    await mailbox.put("c", b"gone", ttl=0)
    assert await mailbox.items("") == {"a": b"for a minute", "b": b"for an hour"}

    class Later:
        @staticmethod
        def time() -> float:
            return time.time() + 120

    monkeypatch.setattr(_amqp_mailbox, "time", Later)
    assert await mailbox.items("") == {"b": b"for an hour"}
    assert await settings_count(broker) == 1


async def test_leaving_a_topic_deletes_its_queue_without_a_warning(
    broker: AMQPBroker, caplog: pytest.LogCaptureFixture
) -> None:
    async with broker.mailbox().subscribe("t") as messages:
        assert isinstance(messages, Subscription)
        queue = messages._queue
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    channel = await broker.link.channel(confirms=False)
    with pytest.raises(Exception, match="NOT_FOUND"):
        await channel.queue_declare(queue, passive=True)


async def test_readers_at_the_same_moment_each_see_every_setting(url: str) -> None:
    """Workers starting together read the revocations at once: none may see only a part."""
    brokers = [create_broker(url, {}) for _ in range(4)]
    async with brokers[0], brokers[1], brokers[2], brokers[3]:
        for n in range(100):
            await brokers[0].mailbox().put(f"revoked.{n}", b"1")
        seen: list[int] = []

        async def read(broker: object) -> None:
            assert isinstance(broker, AMQPBroker)
            seen.append(len(await broker.mailbox().items("revoked.")))

        for _ in range(3):
            async with anyio.create_task_group() as group:
                for broker in [*brokers, brokers[0]]:  # two readers on one connection too
                    group.start_soon(read, broker)
        assert seen == [100] * 15
