"""Concurrent publishes on Redis share writes (`aqueue.drivers.redis.resp`), on real Redis servers.

Each caller still returns once Redis answered its own XADD, and gets its own errors: a cancelled
caller leaves the connection in step and the others' messages as they were; a connection lost
under a batch fails the callers whose commands were in flight, and the next publish reconnects.
To hold commands in flight, tests pause a redis-server of their own (`CLIENT PAUSE ... WRITE`):
no sleeping, and the shared Redis is never paused.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import anyio
import pytest

from tests.helpers import service_redis

service_redis.require_client_library()  # before anything imports redis-py

import redis.asyncio as aioredis  # noqa: E402

from aqueue import App, BrokerError, OutgoingMessage  # noqa: E402
from aqueue.drivers import create_broker  # noqa: E402
from aqueue.drivers.redis.broker import RedisBroker  # noqa: E402
from aqueue.message import Envelope  # noqa: E402
from tests.helpers.consuming import drain  # noqa: E402
from tests.helpers.drivers import service_unavailable  # noqa: E402
from tests.helpers.processes import RedisServer  # noqa: E402

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


@pytest.fixture
async def private(
    redis_servers: Callable[..., RedisServer],
) -> AsyncIterator[tuple[RedisBroker, aioredis.Redis]]:
    """A broker on a redis-server of the test's own, and an admin client to pause it."""
    server = redis_servers()
    await server.start()
    broker = create_broker(server.url, {})
    assert isinstance(broker, RedisBroker)
    admin = aioredis.Redis.from_url(server.url)
    try:
        async with broker:
            yield broker, admin
    finally:
        await admin.aclose()


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def message(queue: str, body: bytes) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body)


async def bodies(broker: RedisBroker, queue: str) -> list[bytes]:
    got = await drain(broker, [queue], credit=1000)
    for delivery in got:
        await delivery.ack()
    return sorted(delivery.body for delivery in got)


async def test_a_thousand_concurrent_delays_are_each_delivered_once(url: str) -> None:
    app = App("publish", broker=url, backend=False, set_as_current=False)

    @app.task(name="publish.add")
    async def add(x: int) -> int:
        return x

    async with app:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for i in range(1000):
                    group.start_soon(add.delay, i)
        broker = await app.broker()
        got = await drain(broker, ["default"], credit=1000)
        for delivery in got:
            await delivery.ack()
    sent = sorted(Envelope.decode(delivery.body).args[0] for delivery in got)
    assert sent == list(range(1000))  # every one, once


async def test_a_caller_cancelled_in_flight_leaves_the_others_and_the_connection_in_step(
    private: tuple[RedisBroker, aioredis.Redis], queue: str
) -> None:
    broker, admin = private
    await broker.publish([message(queue, b"first")])  # connected
    done: list[bytes] = []

    async def publish(scope: anyio.CancelScope, body: bytes) -> None:
        with scope:
            await broker.publish([message(queue, body)])
            done.append(body)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            await admin.client_pause(30_000, all=False)  # XADD waits: replies do not come
            try:
                scopes = [anyio.CancelScope() for _ in range(20)]
                for i, scope in enumerate(scopes):
                    group.start_soon(publish, scope, str(i).encode())
                await anyio.wait_all_tasks_blocked()  # all written, all waiting
                scopes[5].cancel()
                await anyio.wait_all_tasks_blocked()
            finally:
                await admin.client_unpause()
    assert sorted(done) == sorted(str(i).encode() for i in range(20) if i != 5)
    await broker.publish([message(queue, b"after")])  # replies still match their commands
    # The cancelled caller's XADD was written: it ran, once; its reply was read and dropped.
    expected = sorted([b"first", b"after", *(str(i).encode() for i in range(20))])
    assert await bodies(broker, queue) == expected


async def test_a_connection_lost_under_a_batch_fails_those_callers_and_the_next_reconnects(
    private: tuple[RedisBroker, aioredis.Redis], queue: str
) -> None:
    broker, admin = private
    await broker.publish([message(queue, b"before")])
    hot = broker.hot_path()
    hot_id = await hot.execute("CLIENT", "ID")
    failures: list[BaseException] = []

    async def publish(body: bytes) -> None:
        try:
            await broker.publish([message(queue, body)])
        except BrokerError as exc:
            failures.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            await admin.client_pause(30_000, all=False)
            try:
                for i in range(50):
                    group.start_soon(publish, str(i).encode())
                await anyio.wait_all_tasks_blocked()  # all in flight
                await admin.client_kill_filter(_id=hot_id)
                await anyio.wait_all_tasks_blocked()
            finally:
                await admin.client_unpause()
    assert len(failures) == 50  # each caller in flight heard of it: none returned as sent
    assert all("lost" in str(failure) or "closed" in str(failure) for failure in failures)
    await broker.publish([message(queue, b"after")])  # a new connection
    got = await bodies(broker, queue)
    assert b"before" in got
    assert b"after" in got


async def test_one_ready_message_goes_to_the_stream_of_its_priority(url: str, queue: str) -> None:
    broker = create_broker(url, {})
    assert isinstance(broker, RedisBroker)
    async with broker:
        for priority in (0, 7, 7, 12, -3):  # out of range: clamped, as for many messages
            await broker.publish(
                [OutgoingMessage(id="m", queue=queue, body=b"p%d" % priority, priority=priority)]
            )
        keys = broker.keys(queue)
        lengths = [await broker.hot_path().execute("XLEN", keys.stream(p)) for p in range(10)]
        assert lengths == [2, 0, 0, 0, 0, 0, 0, 2, 0, 1]
        assert await bodies(broker, queue) == [b"p-3", b"p0", b"p12", b"p7", b"p7"]


async def test_a_refused_xadd_of_one_message_is_a_broker_error(url: str, queue: str) -> None:
    broker = create_broker(url, {})
    assert isinstance(broker, RedisBroker)
    async with broker:
        hot = broker.hot_path()
        stream = broker.keys(queue).stream(0)
        await hot.execute("SET", stream, "not a stream")
        with pytest.raises(BrokerError, match="while publishing: ResponseError: WRONGTYPE"):
            await broker.publish([message(queue, b"refused")])
        await hot.execute("DEL", stream)
        await broker.publish([message(queue, b"accepted")])  # the connection is in step
        assert await bodies(broker, queue) == [b"accepted"]
