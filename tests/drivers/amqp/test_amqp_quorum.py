"""The broker contract and key worker tests again, on RabbitMQ quorum queues.

`broker_url` here overrides the conftest one: every test imported below runs on a URL with
`queue_type=quorum`. Left out: the priority tests, as quorum queues in RabbitMQ 3.x have no
priorities (they deliver in FIFO order).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import pytest

from aqueue.drivers import create_broker
from aqueue.drivers.amqp.broker import AMQPBroker
from tests.contract.test_broker import (  # noqa: F401 - the contract, rerun here
    Credit,
    broker,
    drain,
    message,
    queue,
    test_a_past_eta_is_ready_at_once,
    test_an_idle_consumer_wakes_on_publish,
    test_credit_bounds_what_is_taken,
    test_dead_letter_keeps_reason_and_detail,
    test_delayed_message_arrives_when_due,
    test_max_deliveries_dead_letters_a_looping_message,
    test_nack_returns_the_message,
    test_nack_with_delay_holds_it_back,
    test_publish_consume_ack,
    test_purge_counts_waiting_messages,
    test_queues_are_separate,
)
from tests.helpers import service_amqp
from tests.helpers.drivers import service_unavailable
from tests.test_throttle import (  # noqa: F401 - held tasks: new consumers lift the limit
    test_concurrency_limit_holds_the_rest,
)
from tests.worker.test_worker import (  # noqa: F401 - worker tests, rerun here
    test_countdown_runs_when_due,
    test_refused_messages_are_dead_lettered_and_the_worker_goes_on,
    test_stop_past_the_grace_period_returns_the_message,
)


@pytest.fixture
async def broker_url() -> AsyncIterator[str]:
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10], queue_type="quorum")
    yield url
    await service_amqp.cleanup(url)


async def test_rabbitmq_dead_letters_past_the_delivery_limit(
    broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A queue declared with x-delivery-limit = 1, then consumed by a broker that would allow
    # 10 deliveries; its consumer's connection drops twice (as a crashing worker's would):
    # RabbitMQ's own limit dead-letters the message, with x-death saying why.
    name = f"q-{uuid.uuid4().hex[:8]}"
    async with create_broker(broker_url, {"max_deliveries": 1}) as strict:
        await strict.publish([message(name, b"loop")])
    lax = create_broker(broker_url, {"max_deliveries": 10})
    assert isinstance(lax, AMQPBroker)
    async with lax:
        with caplog.at_level(logging.WARNING, "aqueue.amqp"):
            (first,) = await drain(lax, [name])
        assert first.delivery_count == 1
        assert "already exists with other arguments" in caplog.text
        await (await lax.link.connection()).close()  # unacked: RabbitMQ counts a return
        (second,) = await drain(lax, [name])
        assert second.delivery_count == 2  # x-delivery-count, kept by RabbitMQ
        await (await lax.link.connection()).close()
        assert await drain(lax, [name]) == []
        (letter,) = await lax.dead_letters(name)
    assert (letter.body, letter.reason) == (b"loop", "max-deliveries")
    assert "delivery_limit" in letter.detail
