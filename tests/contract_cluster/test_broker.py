"""tests/contract/test_broker.py, on a Redis Cluster (see conftest.py)."""

from __future__ import annotations

from aqueue import Broker
from tests.helpers.consuming import drain

from ..contract.test_broker import *  # noqa: F403 - the same tests, another broker_url
from ..contract.test_broker import message


async def test_consume_several_queues_by_priority_then_age(broker: Broker, queue: str) -> None:
    """As the contract's, but published one after the other.

    One batch goes to each node at once, so across queues on different nodes its messages
    have no order: age across nodes is each node's clock, in milliseconds.
    """
    other = f"{queue}-b"
    await broker.publish([message(queue, b"a-old")])
    await broker.publish([message(other, b"b-urgent", priority=9)])
    await broker.publish([message(other, b"b-new")])
    got = await drain(broker, [queue, other])
    assert [d.body for d in got] == [b"b-urgent", b"a-old", b"b-new"]
    for delivery in got:
        await delivery.ack()
