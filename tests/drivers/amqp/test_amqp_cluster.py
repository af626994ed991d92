"""RabbitMQ URLs with several hosts (`amqp://u:p@h1:5672,h2:5672//`): tried in order.

Two TCP proxies of the test's own (tests/chaos/proxy.py) stand for two nodes of a cluster,
both in front of the shared RabbitMQ; cutting the first one (its connections reset, new ones
refused) is a node going down.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from aqueue import App, ConfigurationError, Worker
from aqueue.drivers.amqp.connection import parse_amqp_url
from tests.chaos.proxy import Proxy
from tests.helpers import service_amqp
from tests.helpers.drivers import service_unavailable


def test_a_url_with_several_hosts_lists_them_in_order() -> None:
    settings = parse_amqp_url(
        "amqp://u:secret@h1:5673,h2,[::1]:5674//?heartbeat=5", {"failover": ["h4:1"]}
    )
    assert settings.failover == (("h2", 5672), ("::1", 5674), ("h4", 1))
    assert (settings.host, settings.port, settings.heartbeat) == ("h1", 5673, 5)
    assert settings.display == "amqp://u:***@h1:5673,h2,[::1]:5674//?heartbeat=5"
    assert "secret" not in repr(settings)
    assert settings.aiormq_url("broker", ("h2", 5672)).startswith("amqp://u:secret@h2:5672/")
    with pytest.raises(ConfigurationError, match="not a valid AMQP URL"):
        parse_amqp_url("amqp://h1:x,h2//")
    with pytest.raises(ConfigurationError, match="'h3:x' is not host:port"):
        parse_amqp_url("amqp://h1,h2//", {"failover": ["h3:x"]})


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[str, Proxy, Proxy]]:
    """A broker URL naming two proxies of the shared RabbitMQ, and the proxies."""
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10])
    parts = urlsplit(url)
    first, second = Proxy(parts.port or 5672), Proxy(parts.port or 5672)
    await first.start()
    await second.start()
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{first.port},127.0.0.1:{second.port}"
    try:
        yield parts._replace(netloc=netloc).geturl(), first, second
    finally:
        await first.close()
        await second.close()
        await service_amqp.cleanup(url)


async def test_the_first_node_that_answers_is_used_and_a_lost_one_is_left(
    nodes: tuple[str, Proxy, Proxy],
) -> None:
    url, first, second = nodes
    async with App("cluster", broker=url, set_as_current=False, backend=False) as app:
        ran: list[int] = []

        @app.task
        async def record(i: int) -> None:
            ran.append(i)

        await record.delay(1)
        await Worker(app, burst=True).run()
        assert (first.connections, second.connections) == (1, 0)  # in order: the first

        first.cut()  # the first node goes down: its connection resets, it refuses new ones
        await record.delay(2)  # reconnects, to the second
        await Worker(app, burst=True).run()
        assert ran == [1, 2]
        assert second.connections >= 1


async def test_a_dead_first_host_is_skipped_when_connecting(
    nodes: tuple[str, Proxy, Proxy],
) -> None:
    url, first, second = nodes
    first.cut()
    async with App("cluster", broker=url, set_as_current=False, backend=False) as app:

        @app.task
        async def noop() -> None:
            pass

        await noop.delay()
        assert second.connections >= 1
