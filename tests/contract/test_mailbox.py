"""The mailbox contract: fan-out topics and durable settings, on every driver that has one."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import Broker
from aqueue.drivers import create_broker
from aqueue.drivers.base import Mailbox

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)

#: Drivers whose broker has a mailbox yet; each server driver joins when it gets one.
MAILBOX_DRIVERS = ("memory", "sqlite", "redis", "amqp")


@pytest.fixture
async def broker(broker_url: str) -> AsyncIterator[Broker]:
    if not broker_url.startswith(MAILBOX_DRIVERS):
        pytest.skip("this driver has no mailbox yet")
    async with create_broker(broker_url, {}) as broker:
        yield broker


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def receive(messages: AsyncIterator[bytes], count: int) -> list[bytes]:
    got: list[bytes] = []
    with anyio.fail_after(10):
        async for data in messages:
            got.append(data)
            if len(got) == count:
                break
    return got


async def test_every_subscriber_gets_every_message(broker: Broker, topic: str) -> None:
    mailbox = broker.mailbox()
    async with mailbox.subscribe(topic) as first, mailbox.subscribe(topic) as second:
        await mailbox.publish(topic, b"one")
        await mailbox.publish(f"{topic}-other", b"elsewhere")
        await mailbox.publish(topic, b"two")
        assert await receive(first, 2) == [b"one", b"two"]
        assert await receive(second, 2) == [b"one", b"two"]


async def test_nothing_is_kept_for_later_subscribers(broker: Broker, topic: str) -> None:
    mailbox = broker.mailbox()
    await mailbox.publish(topic, b"before")
    async with mailbox.subscribe(topic) as messages:
        await mailbox.publish(topic, b"after")
        assert await receive(messages, 1) == [b"after"]


async def test_a_subscriber_in_another_connection_hears_it(broker_url: str, topic: str) -> None:
    if not broker_url.startswith(MAILBOX_DRIVERS) or broker_url.startswith("memory"):
        pytest.skip("needs a mailbox shared between connections")
    async with (
        create_broker(broker_url, {}) as one,
        create_broker(broker_url, {}) as two,
        two.mailbox().subscribe(topic) as messages,
    ):
        await one.mailbox().publish(topic, b"across")
        assert await receive(messages, 1) == [b"across"]


async def test_settings_put_items_delete(broker: Broker) -> None:
    mailbox: Mailbox = broker.mailbox()
    prefix = f"s-{uuid.uuid4().hex[:8]}."
    await mailbox.put(f"{prefix}a", b"1")
    await mailbox.put(f"{prefix}b", b"2", ttl=60)
    await mailbox.put(f"{prefix}gone", b"3", ttl=0)
    await mailbox.put(f"other.{prefix}", b"4")
    assert await mailbox.items(prefix) == {f"{prefix}a": b"1", f"{prefix}b": b"2"}
    await mailbox.put(f"{prefix}a", b"changed")
    await mailbox.delete(f"{prefix}b")
    assert await mailbox.items(prefix) == {f"{prefix}a": b"changed"}
    await mailbox.delete(f"{prefix}a")
    await mailbox.delete(f"other.{prefix}")
    assert await mailbox.items(prefix) == {}
