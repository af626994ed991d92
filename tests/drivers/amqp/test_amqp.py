"""The RabbitMQ driver on a real RabbitMQ, in one process.

The contract suite and the worker tests run on RabbitMQ too (see conftest); quorum queues in
`test_amqp_quorum.py`; the rpc:// backend in `test_amqp_rpc.py`; worker processes (kill -9,
restarts, dropped connections) in `test_amqp_processes.py`. Every test has a name prefix of
its own, deleted at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any

import aiormq
import anyio
import msgpack
import pytest
from pamqp import commands as spec

from aqueue import App, BrokerError, ConfigurationError, OutgoingMessage, Worker
from aqueue.drivers import create_broker
from aqueue.drivers.amqp.broker import AMQPBroker
from aqueue.drivers.amqp.connection import Link, parse_amqp_url
from aqueue.drivers.amqp.consumer import AMQPDelivery
from aqueue.drivers.amqp.headers import stamp
from aqueue.drivers.amqp.publisher import Outgoing
from aqueue.drivers.amqp.topology import LEVELS, delay_levels, delay_routing_key
from tests.helpers import service_amqp
from tests.helpers.consuming import Credit, drain
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
    broker = create_broker(url, {"max_deliveries": 3})
    assert isinstance(broker, AMQPBroker)
    async with broker:
        yield broker


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def message(queue: str, body: bytes = b"x", **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body, **fields)


async def ready_count(broker: AMQPBroker, queue: str) -> int:
    channel = await broker.topology.admin()
    declared = await channel.queue_declare(broker.topology.queue(queue), passive=True)
    return declared.message_count or 0


# -- URLs and settings (no server) ------------------------------------------------------------


def test_url_parts_vhosts_and_a_redacted_repr() -> None:
    settings = parse_amqp_url("amqp://user:s3cret@rabbit:5673//?heartbeat=15&name=web-1")
    assert (settings.host, settings.port, settings.vhost) == ("rabbit", 5673, "/")
    assert (settings.heartbeat, settings.name, settings.tls) == (15, "web-1", False)
    assert "s3cret" not in repr(settings)
    assert settings.display == "amqp://user:***@rabbit:5673//?heartbeat=15&name=web-1"
    assert parse_amqp_url("amqp://h").vhost == "/"
    assert parse_amqp_url("amqp://h/").vhost == "/"
    assert parse_amqp_url("amqp://h/%2F").vhost == "/"
    assert parse_amqp_url("amqp://h/staging").vhost == "staging"
    assert parse_amqp_url("amqp://h").port == 5672
    assert (parse_amqp_url("amqp://h").username, parse_amqp_url("amqp://h").password) == (
        "guest",
        "guest",
    )
    # Celery's pyamqp:// is an alias of amqp://.
    assert parse_amqp_url("pyamqp://guest@h//").tls is False
    assert App(broker="pyamqp://guest@h//", set_as_current=False).backend_url == "rpc://"


def test_options_and_their_defaults() -> None:
    settings = parse_amqp_url("amqp://h//?prefix=a-&queue_type=quorum", {"prefix": "b-"})
    assert (settings.prefix, settings.queue_type, settings.max_priority) == ("b-", "quorum", 9)
    settings = parse_amqp_url("amqp://h//", {"max_priority": 0, "visibility_timeout": 30})
    assert (settings.prefix, settings.queue_type, settings.max_priority) == ("", "classic", 0)


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("amqp://h//?heartbeet=5", {}, "unknown option 'heartbeet'"),
        ("amqp://h//", {"queue_type": "stream"}, "queue_type must be"),
        ("amqp://h//?heartbeat=soon", {}, "heartbeat must be a number"),
        ("amqp://h//", {"max_priority": 256}, "max_priority must be at most 255"),
        ("amqp://u:pw@h:port//", {}, "not a valid AMQP URL"),
    ],
)
def test_bad_urls_and_options_say_what_is_wrong(
    url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        parse_amqp_url(url, options)
    assert "pw" not in str(info.value)


def test_amqps_checks_certificates() -> None:
    context = parse_amqp_url("amqps://u:p@rabbit//").tls_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert parse_amqp_url("amqps://rabbit//").port == 5671
    assert parse_amqp_url("amqp://rabbit//").tls_context() is None
    mine = ssl.create_default_context()
    assert parse_amqp_url("amqps://rabbit//", {"ssl_context": mine}).tls_context() is mine


def test_max_deliveries_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_deliveries must be at least 1"):
        AMQPBroker("amqp://h//", {"max_deliveries": 0})


def test_the_delay_ladder_spells_the_delay_in_binary() -> None:
    assert delay_levels(0b1011) == [3, 1, 0]
    assert delay_levels((1 << LEVELS) - 1) == list(range(LEVELS - 1, -1, -1))
    key = delay_routing_key(0b101, "q.with.dots")
    assert key.split(".")[: LEVELS - 3] == ["0"] * (LEVELS - 3)
    assert key.endswith(".1.0.1.q.with.dots")


async def test_an_unreachable_server_fails_fast_without_the_password() -> None:
    broker = AMQPBroker("amqp://user:s3cret@127.0.0.1:1//?connect_timeout=5", {})
    with pytest.raises(BrokerError, match=r"amqp://user:\*\*\*@127\.0\.0\.1:1//") as info:
        await broker.open()
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(broker)
    await broker.close()


# -- the broker -------------------------------------------------------------------------------


async def test_wrong_credentials_are_a_broker_error(url: str) -> None:
    wrong = url.replace("guest:guest@", "guest:n0t-the-password@")
    broker = create_broker(wrong, {})
    with pytest.raises(BrokerError) as info:
        await broker.open()
    assert "n0t-the-password" not in str(info.value)
    await broker.close()


async def test_a_publish_of_10k_is_pipelined_and_confirmed(broker: AMQPBroker, queue: str) -> None:
    body = msgpack.packb({"v": 1, "id": "x", "task": "t", "args": [1, 2], "kwargs": {}})
    messages = [message(queue, body) for _ in range(10_000)]
    await broker.publish(messages[:1])  # declares the queue
    started = time.perf_counter()
    await broker.publish(messages[1:])
    elapsed = time.perf_counter() - started
    print(f"\npublished 9,999 confirmed messages in {elapsed:.2f} s: {9999 / elapsed:,.0f}/s")
    assert await ready_count(broker, queue) == 10_000
    assert await broker.purge(queue) == 10_000


async def test_an_unroutable_publish_is_an_error(broker: AMQPBroker, queue: str) -> None:
    await broker.publish([message(queue)])
    channel = await broker.topology.admin()
    await channel.queue_delete(broker.topology.queue(queue))  # behind the broker's back
    with pytest.raises(BrokerError, match="could not route"):
        await broker.publish([message(queue)])


async def test_messages_are_persistent_on_durable_queues(broker: AMQPBroker, queue: str) -> None:
    await broker.publish([message(queue, b"keep", priority=3)])
    (delivery,) = await drain(broker, [queue])
    properties = delivery.message.header.properties
    assert (properties.delivery_mode, properties.priority) == (2, 3)
    await delivery.ack()
    channel = await broker.topology.admin()
    # Declaring again with durable=False would fail if RabbitMQ had it as non-durable.
    await channel.queue_declare(
        broker.topology.queue(queue),
        durable=True,
        arguments=broker.topology.queue_arguments(queue),
    )


async def test_prefetch_is_the_credit_no_hoarding(broker: AMQPBroker, queue: str) -> None:
    await broker.publish([message(queue) for _ in range(25)])
    consumer = broker.consume([queue], Credit(10))
    with anyio.fail_after(10):
        held = [await consumer.__anext__() for _ in range(10)]
    # RabbitMQ handed out 10 and keeps 15: the consumer holds no more than its credit.
    assert await ready_count(broker, queue) == 15
    await consumer.aclose()
    for delivery in held:
        await delivery.nack()
    assert await ready_count(broker, queue) == 25
    assert await broker.purge(queue) == 25


async def test_closing_the_consumer_gives_back_what_it_did_not_yield(
    broker: AMQPBroker, queue: str
) -> None:
    await broker.publish([message(queue, str(i).encode()) for i in range(5)])
    consumer = broker.consume([queue], Credit(5))
    with anyio.fail_after(10):
        first = await consumer.__anext__()
    await consumer.aclose()  # four were prefetched and not yielded: back at once
    await first.ack()
    assert await ready_count(broker, queue) == 4
    assert sorted(d.body for d in await drain(broker, [queue])) == [b"1", b"2", b"3", b"4"]


async def test_settling_after_the_connection_dropped_is_a_no_op(
    broker: AMQPBroker, queue: str
) -> None:
    await broker.publish([message(queue, b"again")])
    (stale,) = await drain(broker, [queue])
    connection = await broker.link.connection()
    await connection.close()  # its channels, and their delivery tags, are gone
    await stale.ack()  # no error: RabbitMQ gives the message to a consumer again
    (fresh,) = await drain(broker, [queue])
    assert fresh.body == b"again"
    assert fresh.message.delivery.redelivered
    await fresh.ack()
    assert await drain(broker, [queue]) == []


async def test_a_consumer_resumes_after_the_connection_dropped(
    broker: AMQPBroker, queue: str
) -> None:
    got: list[bytes] = []
    first = anyio.Event()

    async def consume() -> None:
        async with aclosing(broker.consume([queue], Credit())) as deliveries:
            async for delivery in deliveries:
                got.append(delivery.body)
                await delivery.ack()
                first.set()
                if len(got) == 2:
                    return

    with anyio.fail_after(15):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await broker.publish([message(queue, b"before")])
            await first.wait()
            await (await broker.link.connection()).close()
            await broker.publish([message(queue, b"after")])  # reconnects the publisher too
    assert got == [b"before", b"after"]


async def test_delays_wait_in_rabbitmq_not_in_the_consumer(broker: AMQPBroker, queue: str) -> None:
    sent = time.time()
    await broker.publish([message(queue, b"in 1.5 s", eta=sent + 1.5)])
    assert await ready_count(broker, queue) == 0
    # 1.5 s is 0b101_1101_1100 ms or so: it waits on rung 10 (1.024 s) first.
    channel = await broker.topology.admin()
    rung = await channel.queue_declare(broker.topology.delay_queue(queue, 10), passive=True)
    assert rung.message_count == 1
    consumer = broker.consume([queue], Credit())
    with anyio.fail_after(10):
        delivery = await consumer.__anext__()
    await consumer.aclose()
    assert time.time() >= sent + 1.5
    assert delivery.delivery_count == 1
    await delivery.ack()


async def test_a_delay_beyond_the_ladder_goes_round_again(broker: AMQPBroker, queue: str) -> None:
    await broker.topology.ensure_queues([queue])
    far = time.time() + 60 * 86400  # more than one pass of the ladder holds
    outgoing = await broker._route(queue, b"x", 0, {}, "id", far, time.time())
    assert outgoing.properties.headers == {"aqueue-eta": round(far * 1_000_000)}
    assert outgoing.routing_key.startswith("1." * LEVELS)  # the longest one pass holds
    # Arriving before its time (as after such a pass), it goes round once more, unrun.
    early = Outgoing(
        broker.topology.exchange,
        broker.topology.queue(queue),
        b"early",
        spec.Basic.Properties(delivery_mode=2, headers={"aqueue-eta": stamp(time.time() + 3600)}),
    )
    await broker.send([early])
    assert await drain(broker, [queue]) == []
    assert await ready_count(broker, queue) == 0
    assert await broker.purge(queue) == 1  # waiting on the ladder


async def test_nack_counts_deliveries_on_classic_queues(broker: AMQPBroker, queue: str) -> None:
    await broker.publish([message(queue, b"n", priority=7)])
    (first,) = await drain(broker, [queue])
    await first.nack()
    (second,) = await drain(broker, [queue])
    headers = second.message.header.properties.headers
    assert headers["aqueue-deliveries"] == 1
    # Given back at once: it goes first (top priority), its own kept in a header.
    assert second.message.header.properties.priority == 9
    assert headers["aqueue-priority"] == 7
    assert second.delivery_count == 2
    await second.nack(delay=0.05)
    consumer = broker.consume([queue], Credit())
    with anyio.fail_after(10):
        third = await consumer.__anext__()
    await consumer.aclose()
    assert third.delivery_count == 3
    assert third.message.header.properties.priority == 7  # a delay: its own again
    await third.ack()


async def test_foreign_messages_published_straight_to_the_queue_are_dead_lettered(
    url: str,
) -> None:
    app = App("tests", broker=url, set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    def envelope(task: str, args: list[Any]) -> bytes:
        fields = {"v": 1, "id": uuid.uuid4().hex, "task": task, "args": args, "kwargs": {}}
        return msgpack.packb(fields)

    broker = await app.broker()
    assert isinstance(broker, AMQPBroker)
    await broker.topology.ensure_queues(["default"])
    raw = {
        "undecodable": b"\xc1 not msgpack",
        "unknown-task": envelope("tasks.nope", []),
        "bad-arguments": envelope(add.name, [1, 2, 3]),
    }
    settings = parse_amqp_url(url)
    async with aiormq.connect(settings.aiormq_url("foreign")) as connection:
        channel = await connection.channel()
        for body in raw.values():  # another producer, straight to the queue
            await channel.basic_publish(
                body,
                routing_key=broker.topology.queue("default"),
                properties=spec.Basic.Properties(delivery_mode=2),
            )
    async with app:
        async with anyio.create_task_group() as group:
            worker = await group.start(Worker(app).run)
            good = await add.delay(2, 3)
            assert await good.get(timeout=10) == 5  # the worker kept going
            worker.stop()
        letters = await broker.dead_letters("default")
    assert sorted(letter.reason for letter in letters) == sorted(raw)
    assert {letter.body for letter in letters} == set(raw.values())
    assert all(letter.detail for letter in letters)
    assert worker.stats()["refused"] == 3


async def test_dead_letters_stay_and_come_oldest_first(broker: AMQPBroker, queue: str) -> None:
    await broker.publish([message(queue, str(i).encode()) for i in range(5)])
    for delivery in await drain(broker, [queue]):
        await delivery.dead_letter("unknown-task", f"no task {delivery.body.decode()}")
    letters = await broker.dead_letters(queue, limit=3)
    assert [letter.body for letter in letters] == [b"0", b"1", b"2"]
    assert [letter.detail for letter in letters] == ["no task 0", "no task 1", "no task 2"]
    assert len(await broker.dead_letters(queue)) == 5  # reading leaves them in place


async def test_a_dead_lettered_body_is_not_kept_for_the_cyclic_collector(
    broker: AMQPBroker, queue: str
) -> None:
    # Issue 19, finding 8: the publish of a dead letter (any confirmed publish) left a cycle,
    # its submission <-> its confirmations, that held the message, body and all, until the
    # cyclic collector ran; a worker collects every 10,000 allocations (`gc_tuning`), and a
    # RabbitMQ worker refusing 1 MB bodies had up to 68 of them alive at once. With the
    # collector off, the body must be held by the delivery alone once it is dead-lettered.
    await broker.publish([message(queue, b"x" * 300_000)])
    (delivery,) = await drain(broker, [queue])
    body = delivery.body
    gc.collect()
    gc.disable()
    try:
        held = sys.getrefcount(body)
        await delivery.dead_letter("oversized", "300000 bytes")
        await broker.publish([message(queue, b"after")])  # and a publish of its own
        assert sys.getrefcount(body) == held
    finally:
        gc.enable()
    (letter,) = await broker.dead_letters(queue)
    assert (letter.reason, letter.body) == ("oversized", body)


async def test_several_queues_on_one_channel_share_the_credit(
    broker: AMQPBroker, queue: str
) -> None:
    other = f"{queue}-b"
    await broker.publish([message(queue) for _ in range(6)] + [message(other) for _ in range(6)])
    consumer = broker.consume([queue, other], Credit(4))
    with anyio.fail_after(10):
        held = [await consumer.__anext__() for _ in range(4)]
    assert await ready_count(broker, queue) + await ready_count(broker, other) == 8
    await consumer.aclose()
    for delivery in held:
        await delivery.ack()
    assert len(await drain(broker, [queue, other])) == 8


async def test_a_deleted_exchange_fails_one_publish_then_is_declared_again(
    broker: AMQPBroker, queue: str
) -> None:
    await broker.publish([message(queue)])
    channel = await broker.topology.admin()
    await channel.exchange_delete(broker.topology.exchange)  # behind the broker's back
    with pytest.raises(BrokerError, match="NOT_FOUND"):
        await broker.publish([message(queue)])
    await broker.publish([message(queue)])  # declared again: routed as before
    assert await broker.purge(queue) == 2


async def test_a_consumer_whose_queue_was_deleted_declares_it_again(
    broker: AMQPBroker, queue: str
) -> None:
    got = anyio.Event()

    async def consume() -> None:
        async with aclosing(broker.consume([queue], Credit())) as deliveries:
            async for delivery in deliveries:
                await delivery.ack()
                got.set()
                return

    with anyio.fail_after(15):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await broker.topology.ensure_queues([queue])
            await anyio.wait_all_tasks_blocked()
            channel = await broker.topology.admin()
            await channel.queue_delete(broker.topology.queue(queue))  # RabbitMQ cancels it
            await anyio.wait_all_tasks_blocked()
            broker.topology.forget([queue])
            await broker.publish([message(queue)])
            await got.wait()


async def test_a_publish_cut_off_by_a_dropped_connection_is_sent_again(
    broker: AMQPBroker, queue: str
) -> None:
    messages = [message(queue, str(i).encode()) for i in range(20_000)]
    await broker.publish(messages[:1])
    async with anyio.create_task_group() as group:
        group.start_soon(broker.publish, messages[1:])
        await anyio.wait_all_tasks_blocked()  # written, waiting for confirms
        await (await broker.link.connection()).close()
    # At least once: anything unconfirmed went again on the new connection.
    assert await ready_count(broker, queue) >= 20_000
    await broker.purge(queue)


async def test_reconnecting_backs_off_until_rabbitmq_answers(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    link = Link(parse_amqp_url(url), "tests")
    await link.open()
    stale = await link.connection()
    good = link.settings
    link.settings = dataclasses.replace(good, port=1)  # as if RabbitMQ were down
    failures = 0
    two_failed = anyio.Event()
    connect = link._connect

    async def counting() -> Any:
        nonlocal failures
        try:
            return await connect()
        except BrokerError:
            failures += 1
            if failures == 2:
                two_failed.set()
                link.settings = good  # RabbitMQ is back
            raise

    link._connect = counting  # type: ignore[method-assign]
    await stale.close()
    with caplog.at_level(logging.WARNING, "aqueue.amqp"), anyio.fail_after(10):
        fresh = await link.connection()
    assert two_failed.is_set()
    assert fresh is not stale
    assert not fresh.is_closed
    assert "retrying in 0.1 s" in caplog.text
    assert "reconnected to" in caplog.text
    await link.close()
    with pytest.raises(BrokerError, match="is closed"):
        await link.connection()


async def test_acks_cover_only_settled_messages(broker: AMQPBroker, queue: str) -> None:
    """Acks go out together (one with `multiple` where it may), never over an unsettled one."""
    await broker.publish([message(queue, str(i).encode()) for i in range(10)])
    consumer = broker.consume([queue], Credit(10))
    with anyio.fail_after(10):
        held = [await consumer.__anext__() for _ in range(10)]
    session = held[0]._session  # type: ignore[attr-defined]
    assert session.tapped  # deliveries are read straight off the frames with this aiormq
    by_body = {delivery.body: delivery for delivery in held}
    keep = {b"3", b"7"}  # unsettled while the others are acknowledged together
    async with anyio.create_task_group() as group:
        for body, delivery in by_body.items():
            if body not in keep:
                group.start_soon(delivery.ack)
    assert not session._acks  # written: the acks go before the close below
    await consumer.aclose()
    connection = await broker.link.connection()
    await connection.close()  # what is not acknowledged goes back to the queue
    back = sorted(delivery.body for delivery in await drain(broker, [queue]))
    assert back == [b"3", b"7"]


def _rabbitmqctl(*args: str) -> str:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        pytest.skip("rabbitmqctl is not on PATH: cannot raise a resource alarm")
    done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


@contextlib.contextmanager
def memory_alarm() -> Iterator[None]:
    """Raise RabbitMQ's memory alarm (it blocks every publisher) and clear it afterwards."""
    watermark = _rabbitmqctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
    _rabbitmqctl("set_vm_memory_high_watermark", "0.000001")
    try:
        yield
    finally:
        _rabbitmqctl("set_vm_memory_high_watermark", watermark.strip())


async def test_a_publish_blocked_by_a_resource_alarm_fails_after_publish_timeout(
    url: str, queue: str
) -> None:
    broker = create_broker(url, {"publish_timeout": 1})
    assert isinstance(broker, AMQPBroker)
    async with broker:
        await broker.publish([message(queue, b"before")])  # declared, connected, confirmed
        with memory_alarm():
            started = time.monotonic()
            with anyio.fail_after(20), pytest.raises(BrokerError, match="did not confirm 1 "):
                await broker.publish([message(queue, b"blocked")])
            assert 0.9 < time.monotonic() - started < 10
        # Once the alarm is cleared, RabbitMQ takes what waited: nothing was lost.
        with anyio.fail_after(20):
            await broker.publish([message(queue, b"after")])
        bodies = sorted(delivery.body for delivery in await drain(broker, [queue]))
        assert bodies == [b"after", b"before", b"blocked"]


async def test_a_stop_during_a_prefetch_change_keeps_the_channel(
    broker: AMQPBroker, queue: str
) -> None:
    """aiormq closes a channel whose RPC is cancelled, which would hand its deliveries, those
    of running tasks too, to another consumer: the consumer's RPCs finish first."""
    await broker.publish([message(queue, b"a")])
    with anyio.fail_after(10):
        consumer = broker.consume([queue], Credit(2))
        delivery = await consumer.__anext__()
        assert isinstance(delivery, AMQPDelivery)
        session = delivery._session
        qos = session.channel.basic_qos
        entered, gate = anyio.Event(), anyio.Event()

        async def slow_qos(*args: Any, **kwargs: Any) -> Any:
            entered.set()
            await gate.wait()
            return await qos(*args, **kwargs)

        session.channel.basic_qos = slow_qos  # type: ignore[method-assign]
        async with anyio.create_task_group() as group:
            with anyio.CancelScope() as stop:

                async def stop_in_the_middle() -> None:
                    await entered.wait()
                    stop.cancel()
                    gate.set()

                group.start_soon(stop_in_the_middle)
                await session.fit(4)  # 1 unsettled + 4 free: a new prefetch of 5
        assert stop.cancel_called
        assert session.limit == 5
        assert not session.channel.is_closed
        await delivery.ack()
        await consumer.aclose()
    assert await ready_count(broker, queue) == 0


async def test_the_prefetch_stays_put_while_tasks_are_acknowledged(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only held tasks change the prefetch: an ack and the slot it frees are one change."""
    prefetches: list[int] = []
    basic_qos = aiormq.Channel.basic_qos

    async def counted(self: aiormq.Channel, *args: Any, **kwargs: Any) -> Any:
        prefetches.append(kwargs.get("prefetch_count", 0))
        return await basic_qos(self, *args, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_qos", counted)
    app = App("tests", broker=url, backend=False, set_as_current=False)
    done = 0

    @app.task
    async def step() -> None:
        nonlocal done
        done += 1
        await anyio.sleep(0.001)  # simulated work: acks land while the consumer waits for more

    async with app:
        await step.delay_many([()] * 1_000)
        with anyio.fail_after(30):
            await Worker(app, concurrency=50, burst=True).run()
    assert done == 1_000
    assert set(prefetches) == {50}  # set when consuming started, never lowered for an ack


async def test_a_dead_letter_queue_made_without_a_cap_is_used_as_it_is(
    url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead-letter queue an older aqueue declared has no x-max-length-bytes: it still works."""
    settings = parse_amqp_url(url)
    async with aiormq.connect(settings.aiormq_url("older")) as connection:
        channel = await connection.channel()
        await channel.queue_declare(f"{settings.prefix}aqueue.dead.{queue}", durable=True)
    async with create_broker(url, {"dead_letter_max_bytes": 1000}) as broker:
        with caplog.at_level(logging.WARNING, "aqueue.amqp"):
            await broker.publish([OutgoingMessage(id="m1", queue=queue, body=b"x" * 2000)])
        assert "inequivalent arg 'x-max-length-bytes'" in caplog.text
        assert "rabbitmqctl set_policy aqueue-dead" in caplog.text
        (delivery,) = await drain(broker, [queue])
        await delivery.dead_letter("undecodable", "no cap here")
        (letter,) = await broker.dead_letters(queue)  # over 1000 bytes, and kept
        assert (letter.id, letter.body) == ("m1", b"x" * 2000)
