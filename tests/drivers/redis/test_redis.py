"""The Redis driver on a real Redis: URLs, keys, leases and fencing, delays, waiters, errors.

The contract suite and the worker tests run on Redis too (see conftest); these cover what is
particular to Redis. Each test has a key prefix of its own, deleted at the end.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import msgpack
import pytest

from tests.helpers import service_redis

service_redis.require_client_library()  # before anything imports redis-py

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from aqueue import (  # noqa: E402
    App,
    BrokerError,
    ConfigurationError,
    DeadLetterStats,
    OutgoingMessage,
    Worker,
    states,
)
from aqueue.drivers import create_backend, create_broker  # noqa: E402
from aqueue.drivers.base import UNSTARTED_FACTOR  # noqa: E402
from aqueue.drivers.redis.broker import RedisBroker  # noqa: E402
from aqueue.drivers.redis.client import Batcher, parse_redis_url  # noqa: E402
from aqueue.drivers.redis.consumer import Consumer  # noqa: E402
from aqueue.drivers.redis.results import RedisBackend  # noqa: E402
from tests.helpers.consuming import Credit, drain  # noqa: E402
from tests.helpers.drivers import service_unavailable  # noqa: E402

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


@pytest.fixture
async def broker(url: str) -> AsyncIterator[RedisBroker]:
    broker = create_broker(url, {"visibility_timeout": 30.0, "max_deliveries": 3})
    assert isinstance(broker, RedisBroker)
    async with broker:
        yield broker


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def message(queue: str, body: bytes = b"x", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body, **fields)


# -- URLs and options -----------------------------------------------------------------------


def test_url_parts_and_a_redacted_repr() -> None:
    settings = parse_redis_url("redis://user:s3cret@example.com:6380/4?prefix=app", {})
    kwargs = settings.kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("example.com", 6380, 4)
    assert (kwargs["username"], kwargs["password"]) == ("user", "s3cret")
    assert settings.prefix == "app"
    assert settings.url == "redis://user:***@example.com:6380/4?prefix=app"
    broker = RedisBroker("redis://:s3cret@localhost/0", {})
    assert "s3cret" not in repr(broker) + repr(settings) + repr(broker.settings)


def test_defaults() -> None:
    settings = parse_redis_url("redis://localhost", {})
    assert (settings.kwargs["port"], settings.kwargs["db"], settings.prefix) == (6379, 0, "aqueue")
    assert settings.kwargs["socket_connect_timeout"] <= 5


def test_tls_checks_certificates_unless_told_otherwise() -> None:
    strict = parse_redis_url("rediss://cache.example.com:6380/0", {})
    assert strict.connection_class is SSLConnection
    assert strict.kwargs["ssl_cert_reqs"] == "required"
    assert strict.kwargs["ssl_check_hostname"] is True
    relaxed = parse_redis_url(
        "rediss://cache.example.com/0?ssl_cert_reqs=CERT_NONE", {"ssl_ca_certs": "/ca.pem"}
    )
    assert relaxed.kwargs["ssl_cert_reqs"] == "none"
    assert relaxed.kwargs["ssl_check_hostname"] is False
    assert relaxed.kwargs["ssl_ca_certs"] == "/ca.pem"
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        parse_redis_url("rediss://h/0?ssl_cert_reqs=maybe", {})


def test_unix_socket_urls() -> None:
    settings = parse_redis_url("unix:///run/redis/redis.sock?db=3&prefix=p", {})
    assert settings.connection_class is UnixDomainSocketConnection
    assert (settings.kwargs["path"], settings.kwargs["db"]) == ("/run/redis/redis.sock", 3)
    with_password = parse_redis_url("unix://:pw@/run/redis.sock", {})
    assert with_password.kwargs["password"] == "pw"
    assert "pw" not in with_password.url


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("redis://h/0?password=hunter2", {}, "user part"),
        ("redis://h/0?colour=blue", {}, "unknown Redis option.*colour"),
        ("redis://h/0", {"socket_timeout": "soon"}, "socket_timeout"),
        ("redis://h/zero", {}, "database must be a number"),
        ("redis://h:port/0", {}, "not a valid Redis URL"),
        ("redis://h/0?prefix={x}", {}, "without braces"),
        ("unix://", {}, "names no socket"),
    ],
)
def test_bad_urls_and_options_say_what_is_wrong(
    url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as caught:
        parse_redis_url(url, options)
    assert "hunter2" not in str(caught.value)


def test_broker_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        RedisBroker("redis://h/0", {"visibility_timeout": 0})
    with pytest.raises(ConfigurationError, match="max_deliveries"):
        RedisBroker("redis://h/0", {"max_deliveries": 0})
    broker = RedisBroker("redis://h/0", {"visibility_timeout": 9.0, "prefix": "p"})
    assert broker.renew_interval == 3.0
    assert broker.settings.prefix == "p"


def test_the_keys_of_a_queue_share_one_cluster_slot() -> None:
    broker = RedisBroker("redis://h/0?prefix=app", {})
    for queue in ("default", "emails", "odd{name}", "a:b"):
        keys = broker.keys(queue)
        every = [*keys.streams, keys.delayed, keys.wake, keys.dead]
        assert all(key.startswith("app:") for key in every)
        assert len({key_slot(key.encode()) for key in every}) == 1
    assert broker.keys("default").stream(9) == "app:{default}:p9"
    slots = {key_slot(broker.keys(f"queue-{i}").dead.encode()) for i in range(20)}
    assert len(slots) > 1  # queues spread over the cluster


def test_the_app_keeps_results_in_the_broker_redis() -> None:
    app = App(broker="redis://localhost:6379/1", set_as_current=False)
    assert app.backend_url == "redis://localhost:6379/1"


# -- errors ---------------------------------------------------------------------------------


async def test_a_producer_without_redis_fails_fast_and_says_no_password() -> None:
    port = _closed_port()
    app = App(broker=f"redis://:t0psecret@127.0.0.1:{port}/0", set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    started = time.perf_counter()
    with anyio.fail_after(10), pytest.raises(BrokerError) as caught:
        await add.delay(1, 2)
    elapsed = time.perf_counter() - started
    assert elapsed < 5
    assert "redis://:***@127.0.0.1" in str(caught.value)
    assert "t0psecret" not in str(caught.value) + repr(caught.value)
    await app.close()
    backend = create_backend(f"redis://:t0psecret@127.0.0.1:{port}/0", {"retries": 0})
    with anyio.fail_after(10), pytest.raises(BrokerError) as caught:
        await backend.open()
    assert "t0psecret" not in str(caught.value)
    await backend.close()


async def test_tls_to_a_plain_server_is_refused(url: str) -> None:
    tls = url.replace("redis://", "rediss://", 1)
    with anyio.fail_after(10), pytest.raises(BrokerError):
        async with create_broker(tls, {"socket_connect_timeout": 0.5, "retries": 0}):
            pass


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_not_open_is_an_error(url: str) -> None:
    broker = create_broker(url, {})
    with pytest.raises(BrokerError, match="not open"):
        await broker.publish([message("q")])
    backend = create_backend(url, {})
    with pytest.raises(BrokerError, match="not open"):
        await backend.fetch("x")
    await broker.close()  # idempotent, even unopened
    async with broker:
        await broker.open()
    await broker.close()


# -- leases, fencing, giving back -----------------------------------------------------------


async def _set_idle(broker: RedisBroker, queue: str, entry_id: str, owner: str) -> None:
    """Make a pending entry look idle for a minute (as if its worker had died)."""
    client = broker.redis_client()
    await client.xclaim(
        broker.keys(queue).stream(0), "aqueue", owner, 0, [entry_id], idle=60_000, justid=True
    )


async def test_a_dead_consumers_message_is_reclaimed_and_its_ack_fenced(
    broker: RedisBroker, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    await broker.publish([message(queue, b"job")])
    (first,) = await drain(broker, [queue])
    await _set_idle(broker, queue, first._claimed.id, first._consumer)
    (second,) = await drain(broker, [queue])  # another consumer's sweep reclaims it
    assert second.body == b"job"
    assert second.delivery_count == 2
    with caplog.at_level(logging.WARNING):
        await first.ack()  # too late: fenced off
        await first.renew()
    assert "lease ran out" in caplog.text
    await second.renew()
    await second.ack()
    assert await drain(broker, [queue]) == []
    assert await broker.dead_letters(queue) == []


async def test_a_message_that_keeps_killing_workers_is_dead_lettered(
    broker: RedisBroker, queue: str
) -> None:
    await broker.publish([message(queue, b"poison")])
    for attempt in (1, 2, 3):  # max_deliveries is 3
        (delivery,) = await drain(broker, [queue])
        assert (delivery.delivery_count, delivery.runs) == (attempt, attempt - 1)
        await delivery.begin()  # it starts...
        await _set_idle(broker, queue, delivery._claimed.id, delivery._consumer)  # and "dies"
    assert await drain(broker, [queue]) == []
    (letter,) = await broker.dead_letters(queue)
    assert (letter.body, letter.reason) == (b"poison", "max-deliveries")
    assert letter.detail == "started 3 times without being acknowledged"
    assert not await broker.redis_client().exists(broker.keys(queue).runs)


async def test_a_message_held_by_dying_workers_is_dead_lettered_only_as_a_backstop(
    broker: RedisBroker, queue: str
) -> None:
    await broker.publish([message(queue, b"held")])
    for attempt in range(1, 3 * UNSTARTED_FACTOR + 1):  # never started: not blamed...
        (delivery,) = await drain(broker, [queue])
        assert (delivery.delivery_count, delivery.runs) == (attempt, 0)
        await _set_idle(broker, queue, delivery._claimed.id, delivery._consumer)
    assert await drain(broker, [queue]) == []  # ...until it looks like a loop
    (letter,) = await broker.dead_letters(queue)
    assert letter.detail == f"delivered {3 * UNSTARTED_FACTOR} times without a recorded start"


async def test_closing_the_consumer_gives_back_what_it_did_not_hand_out(
    broker: RedisBroker, queue: str
) -> None:
    await broker.publish([message(queue, str(i).encode()) for i in range(5)])
    consumer = broker.consume([queue], Credit(5))
    with anyio.fail_after(10):
        first = await consumer.__anext__()
    await consumer.aclose()  # four claimed, never handed out
    rest = await drain(broker, [queue])
    assert sorted(d.body for d in rest) == [b"1", b"2", b"3", b"4"]
    assert {d.delivery_count for d in rest} == {1}  # giving back is not a delivery
    for delivery in [first, *rest]:
        await delivery.ack()


async def test_a_cancelled_consumer_gives_back_a_claim_it_never_saw(
    broker: RedisBroker, queue: str
) -> None:
    # Claim one message under a consumer's name behind its back, as if a reply was cut off.
    consumer = broker.consume([queue], Credit(1))
    await broker.publish([message(queue, b"orphan")])
    with anyio.fail_after(10):
        seen = await consumer.__anext__()
    await broker.publish([message(queue, b"cut-off")])
    await broker.redis_client().xreadgroup(
        "aqueue", seen._consumer, {broker.keys(queue).stream(0): ">"}, count=1
    )
    await consumer.aclose()
    (back,) = await drain(broker, [queue])
    assert (back.body, back.delivery_count) == (b"cut-off", 1)
    await back.ack()
    await seen.ack()


async def test_purge_leaves_delivered_messages_alone(broker: RedisBroker, queue: str) -> None:
    await broker.publish([message(queue, b"taken")])
    (taken,) = await drain(broker, [queue])
    await broker.publish([message(queue, b"waiting"), message(queue, priority=7)])
    await broker.publish([message(queue, eta=time.time() + 86_400)])  # a day away
    assert await broker.purge(queue) == 3
    await taken.ack()
    assert await drain(broker, [queue]) == []


async def test_dead_letters_are_read_oldest_first_up_to_a_limit(
    broker: RedisBroker, queue: str
) -> None:
    await broker.publish([message(queue, str(i).encode()) for i in range(4)])
    for delivery in await drain(broker, [queue]):
        await delivery.dead_letter("undecodable", f"body {delivery.body.decode()}")
    letters = await broker.dead_letters(queue, limit=2)
    assert [letter.detail for letter in letters] == ["body 0", "body 1"]


# -- waking up: publishes, delays, lost groups ----------------------------------------------


async def test_idle_wake_up_latency(broker: RedisBroker, queue: str) -> None:
    latencies: list[float] = []

    async def consume(received: anyio.Event) -> None:
        async with aclosing(broker.consume([queue], Credit())) as deliveries:
            async for delivery in deliveries:
                await delivery.ack()
                received.set()
                return

    for _ in range(20):
        received = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(consume, received)
            await anyio.wait_all_tasks_blocked()
            sent = time.perf_counter()
            await broker.publish([message(queue)])
            with anyio.fail_after(5):
                await received.wait()
            latencies.append(time.perf_counter() - sent)
    p50 = statistics.median(latencies) * 1000
    print(f"\nidle consumer wake-up: p50 {p50:.2f} ms, max {max(latencies) * 1000:.2f} ms")
    assert p50 < 50


async def test_each_consumer_blocks_on_a_connection_of_its_own(
    broker: RedisBroker, queue: str
) -> None:
    """Two idle consumers both wait in Redis: neither one's read queues behind the other's."""
    got: list[str] = []

    async def consume(name: str) -> None:
        async with aclosing(broker.consume([queue], Credit(1))) as deliveries:
            async for delivery in deliveries:
                got.append(name)
                await delivery.ack()
                return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(consume, "a")
            group.start_soon(consume, "b")
            await anyio.wait_all_tasks_blocked()
            assert len(broker._readers) == 2
            await broker.publish([message(queue)])
            await broker.publish([message(queue)])
    assert sorted(got) == ["a", "b"]
    assert not broker._readers  # each one's connection went with it


async def test_closing_the_broker_ends_a_blocked_consumer(url: str, queue: str) -> None:
    broker = create_broker(url, {})
    assert isinstance(broker, RedisBroker)
    await broker.open()
    ended = anyio.Event()

    async def consume() -> None:
        async for _ in broker.consume([queue], Credit()):
            pass
        ended.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await broker.close()
            await ended.wait()
    assert not broker._readers


async def test_an_earlier_delayed_message_wakes_a_sleeping_consumer(
    broker: RedisBroker, queue: str
) -> None:
    await broker.publish([message(queue, b"in a day", eta=time.time() + 86_400)])
    got: list[bytes] = []
    received = anyio.Event()

    async def consume() -> None:
        async with aclosing(broker.consume([queue], Credit())) as deliveries:
            async for delivery in deliveries:
                got.append(delivery.body)
                await delivery.ack()
                received.set()
                return

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await anyio.wait_all_tasks_blocked()  # asleep until tomorrow (or the next sweep)
        due = time.time() + 0.2
        await broker.publish([message(queue, b"soon", eta=due)])
        with anyio.fail_after(5):
            await received.wait()
    assert got == [b"soon"]
    assert time.time() >= due
    delayed = await broker.redis_client().zrange(broker.keys(queue).delayed, 0, -1, withscores=True)
    assert len(delayed) == 1
    assert delayed[0][1] == pytest.approx(time.time() + 86_400, abs=60)  # still waiting


async def test_a_consumer_recreates_lost_groups(broker: RedisBroker, queue: str) -> None:
    await broker.publish([message(queue, b"before")])
    (before,) = await drain(broker, [queue])
    await before.ack()
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
        keys = broker.keys(queue)
        await broker.redis_client().delete(*keys.streams, keys.wake)  # as a restarted Redis would
        await broker.publish([message(queue, b"after")])
        with anyio.fail_after(10):
            await received.wait()


async def test_refused_entries_are_dead_lettered_after_one_delivery(url: str) -> None:
    app = App("tests", broker=url, set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    def envelope(task: str, args: list[Any]) -> bytes:
        fields = {"v": 1, "id": uuid.uuid4().hex, "task": task, "args": args, "kwargs": {}}
        return bytes(msgpack.packb(fields))

    async with app:
        broker = await app.broker()
        assert isinstance(broker, RedisBroker)
        stream = broker.keys("default").stream(0)
        client = broker.redis_client()
        await client.xadd(stream, {"b": b"\xc1 not msgpack"})
        await client.xadd(stream, {"b": envelope("tasks.nope", [])})
        await client.xadd(stream, {"b": envelope(add.name, [1, 2, 3])})
        await client.xadd(stream, {"something": b"else"})  # no body at all
        async with anyio.create_task_group() as group:
            worker = await group.start(Worker(app).run)
            good = await add.delay(2, 2)
            assert await good.get(timeout=10) == 4
            later = await add.delay(3, 3)  # still consuming after refusing
            assert await later.get(timeout=10) == 6
            worker.stop()
        letters = await broker.dead_letters("default")
        assert sorted(letter.reason for letter in letters) == [
            "bad-arguments",
            "undecodable",
            "undecodable",
            "unknown-task",
        ]
        assert worker.stats()["refused"] == 3  # the broker dead-letters the bodiless entry
        assert await broker.purge("default") == 0


# -- results --------------------------------------------------------------------------------


async def test_results_expire_and_are_forgotten(url: str) -> None:
    async with create_backend(url, {}) as backend:
        assert isinstance(backend, RedisBackend)
        await backend.store("t1", states.SUCCESS, b"v", ttl=30)
        ttl = await backend._redis().pttl(f"{backend.settings.prefix}:result:t1")
        assert 29_000 < ttl <= 30_000
        await backend.forget("t1")
        assert await backend.fetch("t1") is None


async def test_ten_thousand_waiters_use_two_connections_and_leave_nothing(url: str) -> None:
    count = 10_000
    name = f"aqueue-waiters-{uuid.uuid4().hex[:8]}"
    ids = [uuid.uuid4().hex for _ in range(count)]
    got: dict[str, bytes] = {}
    async with (
        create_backend(url, {"client_name": name}) as backend,
        create_backend(url, {}) as writer,
    ):
        assert isinstance(backend, RedisBackend)
        admin = writer._redis()  # not the waiters' own connections
        for task_id in ids[:10]:  # some results are there before anyone waits
            await writer.store(task_id, states.SUCCESS, task_id.encode(), ttl=60)

        async def waiter(task_id: str) -> None:
            got[task_id] = (await backend.wait(task_id)).payload

        started = time.perf_counter()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for task_id in ids:
                    group.start_soon(waiter, task_id)
                await anyio.wait_all_tasks_blocked()
                clients = [c for c in await admin.client_list() if c["name"] == name]
                assert count - 10 <= backend.waiting <= count
                for task_id in ids[10:]:
                    group.start_soon(writer.store, task_id, states.SUCCESS, task_id.encode(), 60)
        elapsed = time.perf_counter() - started
        assert got == {task_id: task_id.encode() for task_id in ids}
        assert len(clients) <= 2, clients

        # One more wait: once its subscription is confirmed, every earlier UNSUBSCRIBE on
        # that connection has been processed by the server.
        await writer.store("last", states.SUCCESS, b"", ttl=60)
        await backend.wait("last")
        numsub = await admin.pubsub_numsub(*(backend._channel(t) for t in ids[::97]))
        assert all(n == 0 for _, n in numsub)
        # Pattern subscriptions of our own connections only: other clients of the shared
        # server may hold patterns of their own.
        mine = [c for c in await admin.client_list() if c["name"] == name]
        assert all(int(c["psub"]) == 0 for c in mine), mine
        assert backend.waiting == 0
    print(f"\n{count} concurrent waiters: {len(clients)} connections, resolved in {elapsed:.2f} s")


async def test_scripts_a_restarted_redis_forgot_are_loaded_again(
    broker: RedisBroker, queue: str
) -> None:
    await broker.redis_client().script_flush()
    await broker.publish([message(queue, b"a"), message(queue, b"later", eta=time.time() + 60)])
    await broker.redis_client().script_flush()
    (delivery,) = await drain(broker, [queue])
    await broker.redis_client().script_flush()
    await delivery.ack()
    assert await broker.purge(queue) == 1


async def test_a_waiter_survives_a_dropped_pubsub_connection(url: str) -> None:
    name = f"aqueue-drop-{uuid.uuid4().hex[:8]}"
    async with (
        create_backend(url, {"client_name": name}) as backend,
        create_backend(url, {}) as writer,
    ):
        assert isinstance(writer, RedisBackend)
        admin = writer._redis()
        got: list[bytes] = []
        done = anyio.Event()

        async def waiter() -> None:
            got.append((await backend.wait("t-drop")).payload)
            done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            for each in await admin.client_list():
                if each["name"] == name and "P" in each["flags"]:  # the pub/sub connection
                    await admin.client_kill_filter(_id=each["id"])
            await writer.store("t-drop", states.SUCCESS, b"after the drop", ttl=60)
            with anyio.fail_after(10):
                await done.wait()
        assert got == [b"after the drop"]
        subscriptions = backend._subscriptions
        assert subscriptions is not None
        assert subscriptions.generation == 2  # it connected again


async def test_waiting_on_a_closed_backend_is_an_error(url: str) -> None:
    backend = create_backend(url, {})
    await backend.open()
    errors: list[Exception] = []

    async def waiter() -> None:
        try:
            await backend.wait("never")
        except BrokerError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        await backend.close()
    assert len(errors) == 1


async def test_batcher_coalesces_and_shares_failures() -> None:
    from aqueue.drivers.redis.client import Batcher

    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await anyio.lowlevel.checkpoint()
        if 13 in items:
            raise ValueError("unlucky")
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(flush, max_size=10)
    results: dict[int, Any] = {}

    async def submit(item: int) -> None:
        try:
            results[item] = await batcher.submit(item)
        except ValueError as exc:
            results[item] = exc

    async with anyio.create_task_group() as group:
        for item in range(30):
            group.start_soon(submit, item)
    assert batches[0] == [0]  # the first goes at once
    assert max(len(batch) for batch in batches) == 10
    failed = next(batch for batch in batches if 13 in batch)
    assert all(isinstance(results[item], ValueError) for item in failed)
    assert all(results[item] == item * 2 for item in range(30) if item not in failed)


def _gated_batcher(
    max_size: int = 1000,
) -> tuple[Batcher[int, int], anyio.Event, list[list[int]], dict[int, Any]]:
    """A batcher whose first flush stays in flight until the gate is set; 5 fails a flush.

    Returns it, the gate, the batches flushed and the unwaited items' outcomes.
    """
    gate = anyio.Event()
    batches: list[list[int]] = []
    outcomes: dict[int, Any] = {}

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        if len(batches) == 1:
            await gate.wait()  # the first flush stays in flight until the test lets it go
        if 5 in items:
            raise ValueError("unlucky")
        return [item * 2 for item in items]

    batcher: Batcher[int, int] = Batcher(
        flush, max_size, on_unwaited=lambda item, outcome: outcomes.__setitem__(item, outcome)
    )
    return batcher, gate, batches, outcomes


async def test_batcher_send_does_not_wait_for_a_flush_in_flight() -> None:
    batcher, gate, batches, outcomes = _gated_batcher()
    returned: list[int] = []

    async def send(item: int) -> None:
        await batcher.send(item)
        returned.append(item)

    async with anyio.create_task_group() as group:
        group.start_soon(send, 0)  # the leader: its flush is in flight
        await anyio.wait_all_tasks_blocked()
        for item in (1, 2, 3):
            await batcher.send(item)  # returns at once, before any of them is sent
        assert batches == [[0]]
        assert returned == []
        assert outcomes == {}
        gate.set()
    assert batches == [[0], [1, 2, 3]]  # the leader sent what queued behind it, in one flush
    assert outcomes == {0: 0, 1: 2, 2: 4, 3: 6}
    await batcher.send(5)  # nothing in flight: it waits, and its failure goes to the hook
    assert isinstance(outcomes[5], ValueError)


async def test_batcher_queues_without_a_coroutine_only_while_a_flush_is_in_flight() -> None:
    """`queue_unwaited` (what an ack tries first): True only when the item joins a flush."""
    batcher, gate, batches, outcomes = _gated_batcher(max_size=3)
    assert not batcher.queue_unwaited(1)  # nothing in flight: the caller must flush it
    async with anyio.create_task_group() as group:
        group.start_soon(batcher.send, 0)
        await anyio.wait_all_tasks_blocked()
        assert [batcher.queue_unwaited(item) for item in (1, 2, 3, 4)] == [True, True, True, False]
        gate.set()
    assert batches == [[0], [1, 2, 3]]
    assert outcomes == {0: 0, 1: 2, 2: 4, 3: 6}  # 4 was refused: never sent, no outcome


async def test_batcher_gives_each_item_its_own_outcome_in_a_mixed_flush() -> None:
    """Items sent without waiting share a flush with waiting callers: each gets its own
    result, and a failed flush reaches the hook for every unwaited item in it."""
    from aqueue.drivers.redis.client import Batcher

    gate = anyio.Event()
    calls = 0
    outcomes: dict[int, Any] = {}

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await gate.wait()
        if 99 in items:
            raise ValueError("unlucky")
        return [item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher(
        flush, on_unwaited=lambda item, outcome: outcomes.__setitem__(item, outcome)
    )
    got: dict[int, Any] = {}

    async def submit(item: int) -> None:
        try:
            got[item] = await batcher.submit(item)
        except ValueError as exc:
            got[item] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(submit, 1)  # the leader: in flight until the gate opens
        await anyio.wait_all_tasks_blocked()
        await batcher.send(2)
        group.start_soon(submit, 3)  # waits behind the flush in flight
        await anyio.wait_all_tasks_blocked()
        await batcher.send(4)
        gate.set()
    assert got == {1: 10, 3: 30}
    assert outcomes == {2: 20, 4: 40}

    gate = anyio.Event()
    calls = 0
    async with anyio.create_task_group() as group:
        group.start_soon(submit, 7)
        await anyio.wait_all_tasks_blocked()
        await batcher.send(99)  # fails the next flush
        await batcher.send(8)
        group.start_soon(submit, 9)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert got[7] == 70
    assert isinstance(got[9], ValueError)
    assert isinstance(outcomes[99], ValueError)
    assert isinstance(outcomes[8], ValueError)


async def test_a_burst_worker_leaves_nothing_pending(url: str) -> None:
    """Acks that travel after their task returned all land before the worker stops."""
    app = App("tests", broker=url, backend=False, set_as_current=False)
    ran = 0

    @app.task
    async def noop() -> None:
        nonlocal ran
        ran += 1

    async with app:
        await noop.delay_many([()] * 2_000)
        await Worker(app, concurrency=200, burst=True).run()
        broker = await app.broker()
        assert isinstance(broker, RedisBroker)
        client = broker.redis_client()
        stream = broker.keys("default").stream(0)
        assert ran == 2_000
        assert await client.xlen(stream) == 0  # every entry acknowledged and deleted
        pending: Any = await client.xpending(stream, "aqueue")
        assert pending["pending"] == 0


async def test_a_closing_consumer_gives_back_nothing_acknowledged_meanwhile(
    broker: RedisBroker, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message whose ack lands while `give_back` asks what is pending is not given back.

    Simulated: right after the XPENDING reply, one of the two yielded messages leaves `held`,
    as its landed ack makes it do (here it is still pending, so giving it back would show).
    """
    await broker.publish([message(queue, b"a"), message(queue, b"b")])
    consumer = Consumer(broker, [broker.keys(queue)], burst=True)
    claimed = await consumer.next_batch(10)
    assert claimed is not None
    assert len(claimed) == 2
    consumer.held.update(each.id for each in claimed)  # both yielded, as consume() does
    client = broker.redis_client()
    pipeline = client.pipeline

    def acked_meanwhile(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def execute_then_ack(*args: Any, **kwargs: Any) -> Any:
            replies = await execute(*args, **kwargs)
            consumer.held.discard(claimed[0].id)
            return replies

        pipe.execute = execute_then_ack
        return pipe

    monkeypatch.setattr(client, "pipeline", acked_meanwhile)
    await consumer.give_back()
    monkeypatch.undo()
    pending: Any = await client.xpending(broker.keys(queue).stream(0), "aqueue")
    assert pending["pending"] == 2  # neither was taken back from this consumer
    assert await client.xlen(broker.keys(queue).stream(0)) == 2


async def test_dead_letters_an_older_aqueue_kept_are_counted_once(
    broker: RedisBroker, queue: str
) -> None:
    """A dead-letter stream from before the byte count: its letters count, and drop, as others."""
    dead = broker.keys(queue).dead
    for body in (b"a" * 100, b"b" * 100):  # as an older aqueue wrote them: no count beside
        await broker.redis_client().xadd(dead, {"b": body, "r": "undecodable", "d": "d", "t": "1"})
    await broker.publish([message(queue, b"c" * 100)])
    (delivery,) = await drain(broker, [queue])
    await delivery.dead_letter("undecodable", "d")
    stats = await broker.dead_letter_stats(queue)
    assert stats == DeadLetterStats(3, 3 * 112, 0)
    await broker.purge_dead_letters(queue, [(await broker.dead_letters(queue))[0].id])
    assert await broker.dead_letter_stats(queue) == DeadLetterStats(2, 2 * 112, 0)
