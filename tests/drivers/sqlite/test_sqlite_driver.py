"""The SQLite broker and result backend beyond the contract: leases, fencing, wake-ups."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from aqueue import (
    BrokerError,
    ConfigurationError,
    DeadLetterStats,
    Delivery,
    OutgoingMessage,
    states,
)
from aqueue.drivers.base import UNSTARTED_FACTOR, StoredResult
from aqueue.drivers.sqlite import broker as sqlite_broker
from aqueue.drivers.sqlite import results as sqlite_backend
from aqueue.drivers.sqlite import wake as _wake
from aqueue.drivers.sqlite.broker import SQLiteBroker
from aqueue.drivers.sqlite.database import parse_sqlite_url
from aqueue.drivers.sqlite.results import SQLiteBackend
from aqueue.message import DeadLetterReason

QUEUE = "default"


class Credit:
    def __init__(self, free: int = 100) -> None:
        self.free = free

    async def wait(self) -> int:
        return self.free


def message(body: bytes = b"x", queue: str = QUEUE, **fields: Any) -> OutgoingMessage:
    return OutgoingMessage(id=uuid.uuid4().hex, queue=queue, body=body, **fields)


async def drain(broker: SQLiteBroker, queues: list[str] | None = None) -> list[Delivery]:
    """Every delivery ready now (burst mode), unsettled."""
    with anyio.fail_after(10):
        return [d async for d in broker.consume(queues or [QUEUE], Credit(), burst=True)]


async def next_delivery(broker: SQLiteBroker, bound: float = 5.0) -> Delivery:
    """The next delivery of an idle (non-burst) consumer, within `bound` seconds."""
    consumer = broker.consume([QUEUE], Credit())
    try:
        with anyio.fail_after(bound):
            async for delivery in consumer:
                return delivery
    finally:
        await consumer.aclose()  # type: ignore[attr-defined]
    raise AssertionError("consume ended")


def wake_files(db: Path, channel: str) -> list[str]:
    directory = _wake.wake_dir(str(db), channel)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


async def count_rows(db: Path, table: str) -> int:
    def count() -> int:
        with sqlite3.connect(db) as conn:
            value: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        conn.close()
        return value

    return await anyio.to_thread.run_sync(count)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    """The database file; at the end, no socket file may be left, and the wake dir goes."""
    path = tmp_path / "aqueue.db"
    yield path
    assert wake_files(path, "queue") == []
    assert wake_files(path, "results") == []
    shutil.rmtree(os.path.dirname(_wake.wake_dir(str(path), "queue")), ignore_errors=True)


@pytest.fixture
def url(db: Path) -> str:
    return f"sqlite:///{db}"


MakeBroker = Callable[..., Awaitable[SQLiteBroker]]
MakeBackend = Callable[[], Awaitable[SQLiteBackend]]


@pytest.fixture
async def make_broker(url: str) -> AsyncIterator[MakeBroker]:
    made: list[SQLiteBroker] = []

    async def make(**options: Any) -> SQLiteBroker:
        options = {"visibility_timeout": 30.0, "max_deliveries": 3, **options}
        broker = SQLiteBroker(url, options)
        made.append(broker)
        await broker.open()
        return broker

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def broker(make_broker: MakeBroker) -> SQLiteBroker:
    return await make_broker()


@pytest.fixture
async def make_backend(url: str) -> AsyncIterator[MakeBackend]:
    made: list[SQLiteBackend] = []

    async def make() -> SQLiteBackend:
        backend = SQLiteBackend(url, {})
        made.append(backend)
        await backend.open()
        return backend

    yield make
    for backend in made:
        await backend.close()


@pytest.fixture
async def backend(make_backend: MakeBackend) -> SQLiteBackend:
    return await make_backend()


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [("sqlite:///aqueue.db", "aqueue.db"), ("sqlite:////var/q.db", "/var/q.db")],
)
def test_url_paths(url: str, path: str) -> None:
    assert parse_sqlite_url(url) == path


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("sqlite://", "sqlite:///aqueue.db"),
        ("sqlite:///", "sqlite:///aqueue.db"),
        ("sqlite://host/x.db", "sqlite:///aqueue.db"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///q.db?mode=ro", "transport options"),
    ],
)
def test_bad_urls_say_what_to_write(url: str, hint: str) -> None:
    with pytest.raises(ConfigurationError, match=hint.replace("?", r"\?")):
        SQLiteBroker(url, {})
    with pytest.raises(ConfigurationError):
        SQLiteBackend(url, {})


def test_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        SQLiteBroker("sqlite:///q.db", {"visibility_timeout": 0})
    with pytest.raises(ConfigurationError, match="max_deliveries"):
        SQLiteBroker("sqlite:///q.db", {"max_deliveries": 0})
    for bad in (0, "many", True):
        with pytest.raises(ConfigurationError, match="message_max_bytes must be a number"):
            SQLiteBroker("sqlite:///q.db", {"message_max_bytes": bad})


async def test_relative_path_resolves_at_open(chdir_tmp: Path, db: Path) -> None:
    broker = SQLiteBroker("sqlite:///aqueue.db", {"visibility_timeout": 9})
    assert broker.path is None
    assert broker.renew_interval == 3
    async with broker:
        await broker.open()  # idempotent
        assert broker.path == str(chdir_tmp / "aqueue.db") == str(db)
    await broker.close()  # idempotent


async def test_unopened_or_unopenable(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="not open"):
        await SQLiteBroker(f"sqlite:///{tmp_path}/q.db", {}).publish([message()])
    with pytest.raises(BrokerError, match="cannot open"):
        await SQLiteBroker(f"sqlite:///{tmp_path}/missing/dir/q.db", {}).open()


# -- broker ----------------------------------------------------------------------------------


async def test_publish_consume_ack_is_durable(
    broker: SQLiteBroker, make_broker: MakeBroker
) -> None:
    await broker.publish([message(b"one"), message(b"two")])
    await broker.close()
    reopened = await make_broker()  # the messages survived the connection
    got = await drain(reopened)
    assert [(d.body, d.queue, d.delivery_count) for d in got] == [
        (b"one", QUEUE, 1),
        (b"two", QUEUE, 1),
    ]
    for delivery in got:
        await delivery.ack()
        await delivery.ack()  # settled once: a no-op
    assert await drain(reopened) == []
    assert await reopened.purge(QUEUE) == 0


async def test_priority_nine_first_across_queues(broker: SQLiteBroker) -> None:
    await broker.publish(
        [
            message(b"low-a", priority=0),
            message(b"high-b", queue="b", priority=9),
            message(b"low-b", queue="b", priority=0),
            message(b"mid-a", priority=5),
        ]
    )
    got = await drain(broker, [QUEUE, "b"])
    assert [d.body for d in got] == [b"high-b", b"mid-a", b"low-a", b"low-b"]


async def test_delayed_message_is_not_early(broker: SQLiteBroker) -> None:
    due = time.time() + 0.2
    await broker.publish([message(b"later", eta=due)])
    assert await drain(broker) == []
    delivery = await next_delivery(broker)
    arrived = time.time()
    assert delivery.body == b"later"
    assert arrived >= due  # not early ...
    assert arrived - due < 1.0  # ... and woken by its timer, not by the safety net


async def test_nack_returns_it_and_nack_with_delay_holds_it(broker: SQLiteBroker) -> None:
    await broker.publish([message(b"again")])
    (first,) = await drain(broker)
    await first.nack()
    await first.nack()  # no-op
    (second,) = await drain(broker)
    assert (second.body, second.delivery_count) == (b"again", 2)
    due = time.time() + 0.2
    await second.nack(delay=0.2)
    assert await drain(broker) == []
    third = await next_delivery(broker)
    assert time.time() >= due
    assert third.delivery_count == 3


async def test_an_expired_lease_goes_to_another_consumer_and_fences_the_first(
    make_broker: MakeBroker, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = await make_broker(visibility_timeout=0.3)
    second = await make_broker()  # another connection to the same file: another worker
    await first.publish([message(b"slow")])
    (stale,) = await drain(first)  # claimed, never acked: its worker "died"
    claimed = time.time()
    assert await drain(second) == []  # leased
    taken = await next_delivery(second)  # woken when the lease runs out, not by a poll
    assert time.time() >= claimed + 0.3 - 0.01
    assert (taken.body, taken.delivery_count) == (b"slow", 2)
    with caplog.at_level(logging.WARNING, logger="aqueue.drivers.sqlite.broker"):
        await stale.ack()  # refused: the lease is the second consumer's now
        await stale.dead_letter("too-late")
    assert "another consumer holds it" in caplog.text
    assert await count_rows(db, "aqueue_messages") == 1
    assert await count_rows(db, "aqueue_dead_letters") == 0
    await taken.ack()
    assert await count_rows(db, "aqueue_messages") == 0


async def test_renew_keeps_the_lease(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.time()]
    monkeypatch.setattr(sqlite_broker, "time", SimpleNamespace(time=lambda: now[0]))
    first = await make_broker(visibility_timeout=0.3)
    second = await make_broker()
    await first.publish([message()])
    (held,) = await drain(first)
    for _ in range(3):
        now[0] += 0.2
        await held.renew()
        assert await drain(second) == []  # past the first lease, but renewed
    now[0] += 0.31
    (taken,) = await drain(second)
    assert taken.delivery_count == 2
    await held.renew()  # lost: logged, changes nothing
    now[0] += 0.31
    assert await drain(first) == []  # the second consumer's lease was not touched
    await taken.ack()
    await taken.renew()  # settled: a no-op


async def test_max_deliveries_dead_letters(make_broker: MakeBroker) -> None:
    broker = await make_broker(max_deliveries=2)
    await broker.publish([message(b"poison")])
    for attempt in (1, 2):
        (delivery,) = await drain(broker)
        assert delivery.delivery_count == attempt
        await delivery.nack()
    await broker.publish([message(b"fine")])
    (fine,) = await drain(broker)  # claimed with the poison message, which went to the DLQ
    assert (fine.body, fine.delivery_count) == (b"fine", 1)
    await fine.ack()
    assert await drain(broker) == []
    (letter,) = await broker.dead_letters(QUEUE)
    assert (letter.body, letter.reason) == (b"poison", DeadLetterReason.MAX_DELIVERIES)
    assert "2 times" in letter.detail


async def test_an_oversized_message_is_dead_lettered_at_the_claim_unread(
    make_broker: MakeBroker, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A claim rewrites the row, its body with it: an oversized message (which the worker
    # would only refuse) is copied to the dead letters in SQL and never leased or read.
    broker = await make_broker(message_max_bytes=1000)
    big = os.urandom(5000)
    await broker.publish([message(b"a" * 1000), message(big), message(b"b")])
    with caplog.at_level(logging.ERROR, logger="aqueue"):
        deliveries = await drain(broker)
    assert [delivery.body for delivery in deliveries] == [b"a" * 1000, b"b"]
    for delivery in deliveries:
        await delivery.ack()
    (letter,) = await broker.dead_letters(QUEUE)
    assert (letter.reason, letter.body) == (DeadLetterReason.OVERSIZED, big)
    assert letter.detail == "5000 bytes, over message_max_bytes (1000)"
    assert (await broker.dead_letter_stats(QUEUE)).kept == 1
    assert await count_rows(db, "aqueue_messages") == 0
    assert "Refused 1 message(s) from default: oversized" in caplog.text
    unlimited = await make_broker()  # no limit given: the worker refuses it instead
    await broker.publish([message(big)])
    (delivery,) = await drain(unlimited)
    assert delivery.body == big
    await delivery.ack()


async def test_runs_count_begun_and_nacked_deliveries_not_held_ones(
    make_broker: MakeBroker, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.time()]
    monkeypatch.setattr(sqlite_broker, "time", SimpleNamespace(time=lambda: now[0]))
    broker = await make_broker(visibility_timeout=0.3, max_deliveries=3)
    await broker.publish([message(b"poison")])
    (held,) = await drain(broker)
    now[0] += 0.31  # its worker died holding it: no run recorded
    (begun,) = await drain(broker)
    assert (begun.delivery_count, begun.runs) == (2, 0)
    await begun.begin()
    await begun.begin()  # once per delivery
    await begun.nack()  # counted by begin already
    (nacked,) = await drain(broker)
    assert nacked.runs == 1
    await nacked.nack()  # a give-back is a run
    (third,) = await drain(broker)
    assert third.runs == 2
    await third.begin()
    now[0] += 0.31  # it started, and its worker died
    assert await drain(broker) == []
    (letter,) = await broker.dead_letters(QUEUE)
    assert letter.detail == "started 3 times without being acknowledged"
    assert await count_rows(db, "aqueue_runs") == 0
    await held.begin()  # its lease is long gone: logged, changes nothing
    assert await count_rows(db, "aqueue_runs") == 0


async def test_a_begun_message_acked_leaves_no_runs(make_broker: MakeBroker, db: Path) -> None:
    broker = await make_broker()
    await broker.publish([message(b"job")])
    (first,) = await drain(broker)
    await first.nack()
    (second,) = await drain(broker)
    await second.begin()
    assert await count_rows(db, "aqueue_runs") == 1
    await second.ack()
    assert await count_rows(db, "aqueue_runs") == 0


async def test_a_message_held_by_dying_workers_is_dead_lettered_only_as_a_backstop(
    make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [time.time()]
    monkeypatch.setattr(sqlite_broker, "time", SimpleNamespace(time=lambda: now[0]))
    broker = await make_broker(visibility_timeout=0.3, max_deliveries=2)
    await broker.publish([message(b"held")])
    for attempt in range(1, 2 * UNSTARTED_FACTOR + 1):
        (delivery,) = await drain(broker)
        assert (delivery.delivery_count, delivery.runs) == (attempt, 0)
        now[0] += 0.31
    assert await drain(broker) == []
    (letter,) = await broker.dead_letters(QUEUE)
    assert letter.detail == f"delivered {2 * UNSTARTED_FACTOR} times without a recorded start"


async def test_dead_letter_reason_detail_oldest_first(broker: SQLiteBroker) -> None:
    await broker.publish([message(b"a"), message(b"b"), message(b"c", queue="other")])
    a, b = await drain(broker)
    await b.dead_letter(DeadLetterReason.UNKNOWN_TASK, "no task named x")
    await a.dead_letter("undecodable", "not msgpack")
    await a.ack()  # settled already
    letters = await broker.dead_letters(QUEUE)
    assert [(x.body, x.reason, x.detail) for x in letters] == [
        (b"b", "unknown-task", "no task named x"),
        (b"a", "undecodable", "not msgpack"),
    ]
    assert letters[0].at == pytest.approx(time.time(), abs=60)
    assert [x.body for x in await broker.dead_letters(QUEUE, limit=1)] == [b"b"]
    assert await broker.dead_letters("other") == []


async def test_purge_deletes_waiting_and_delayed_not_leased(broker: SQLiteBroker) -> None:
    await broker.publish([message(b"held")])
    (held,) = await drain(broker)
    await broker.publish([message(), message(), message(eta=time.time() + 60)])
    assert await broker.purge(QUEUE) == 3
    assert await broker.purge(QUEUE) == 0
    await held.nack()
    assert [d.body for d in await drain(broker)] == [b"held"]


async def test_closing_the_consumer_gives_back_what_it_did_not_yield(
    broker: SQLiteBroker, make_broker: MakeBroker
) -> None:
    await broker.publish([message(str(i).encode()) for i in range(4)])
    consumer = broker.consume([QUEUE], Credit(3))
    with anyio.fail_after(5):
        first = await consumer.__anext__()  # three claimed, one yielded
    await consumer.aclose()  # type: ignore[attr-defined]
    other = await make_broker()
    got = await drain(other)  # at once, not after the 30 s lease
    assert [(d.body, d.delivery_count) for d in got] == [(b"1", 1), (b"2", 1), (b"3", 1)]
    await first.ack()


async def test_cancelled_consumer_closes_its_socket(broker: SQLiteBroker, db: Path) -> None:
    with anyio.move_on_after(0.05):
        await next_delivery(broker)
    assert wake_files(db, "queue") == []


async def test_closing_the_broker_stops_an_idle_consumer(broker: SQLiteBroker, db: Path) -> None:
    async def consume() -> None:
        async for _ in broker.consume([QUEUE], Credit()):
            raise AssertionError("nothing was published")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert len(wake_files(db, "queue")) == 1
            await broker.close()
    assert wake_files(db, "queue") == []


async def test_idle_consumer_wakes_on_publish(make_broker: MakeBroker) -> None:
    consumer, producer = await make_broker(), await make_broker()
    latencies = []
    for i in range(5):
        async with anyio.create_task_group() as group:
            group.start_soon(next_delivery, consumer)
            await anyio.wait_all_tasks_blocked()
            sent = time.perf_counter()
            await producer.publish([message(str(i).encode())])
        latencies.append(time.perf_counter() - sent)
    print(f"in-process publish -> yield: {[round(x * 1000, 1) for x in latencies]} ms")
    assert statistics.median(latencies) < 0.05, latencies


async def test_a_dead_process_socket_is_removed(broker: SQLiteBroker, db: Path) -> None:
    directory = _wake.wake_dir(str(db), "queue")
    os.makedirs(directory, exist_ok=True)
    dead = os.path.join(directory, "1-dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(dead)  # closed without unlinking, as a killed process leaves it
    await broker.publish([message()])
    assert not await anyio.Path(dead).exists()


async def test_a_full_socket_buffer_is_not_an_error(broker: SQLiteBroker, db: Path) -> None:
    directory = _wake.wake_dir(str(db), "queue")
    os.makedirs(directory, exist_ok=True)
    asleep = os.path.join(directory, "1-asleep.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(asleep)  # a live listener that never reads: its buffer fills up
        for _ in range(50):
            await broker.publish([message()])
        assert await anyio.Path(asleep).exists()  # kept: its process is alive
    await anyio.Path(asleep).unlink()
    assert await broker.purge(QUEUE) == 50


async def test_a_failed_publish_writes_nothing(broker: SQLiteBroker) -> None:
    bad = OutgoingMessage(id="bad", queue=QUEUE, body=None)  # type: ignore[arg-type]
    with pytest.raises(BrokerError, match="NOT NULL"):
        await broker.publish([message(b"good"), bad])
    assert await drain(broker) == []


async def test_without_unix_sockets_consumers_look_again_on_a_timer(
    broker: SQLiteBroker, make_broker: MakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_wake, "SOCKETS", False)  # as on Windows
    monkeypatch.setattr(_wake, "FALLBACK_WAIT", 0.05)
    producer = await make_broker()
    async with anyio.create_task_group() as group:
        group.start_soon(next_delivery, broker)
        await anyio.wait_all_tasks_blocked()
        await producer.publish([message()])


PUBLISH = """
import sys, time, anyio
from aqueue import OutgoingMessage
from aqueue.drivers.sqlite.broker import SQLiteBroker

async def main():
    async with SQLiteBroker(sys.argv[1], {}) as broker:
        await broker.publish([OutgoingMessage("id", "default", repr(time.time()).encode())])

anyio.run(main)
"""


async def test_a_publish_from_another_process_wakes_the_consumer(
    broker: SQLiteBroker, url: str
) -> None:
    latencies: list[float] = []

    async def consume() -> None:
        delivery = await next_delivery(broker, bound=30)
        latencies.append(time.time() - float(delivery.body))  # the publisher's clock
        await delivery.ack()

    for _ in range(3):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            await anyio.run_process([sys.executable, "-c", PUBLISH, url])
    print(f"cross-process publish -> yield: {[round(x * 1000, 1) for x in latencies]} ms")
    assert statistics.median(latencies) < 0.5, latencies


# -- result backend --------------------------------------------------------------------------


async def test_store_fetch_forget_expiry(backend: SQLiteBackend, db: Path) -> None:
    assert await backend.fetch("t") is None
    await backend.store("t", states.STARTED, b"running", ttl=60)
    await backend.store("t", states.SUCCESS, b"done", ttl=60)
    assert await backend.fetch("t") == StoredResult(states.SUCCESS, b"done")
    await backend.forget("t")
    assert await backend.fetch("t") is None
    await backend.store("old", states.SUCCESS, b"", ttl=0)
    assert await backend.fetch("old") is None
    assert await count_rows(db, "aqueue_results") == 1  # swept now and then, not every store


async def test_expired_rows_are_swept(
    backend: SQLiteBackend, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "SWEEP_EVERY", 3)
    for task_id in ("a", "b"):
        await backend.store(task_id, states.SUCCESS, b"", ttl=0)
    await backend.store("kept", states.SUCCESS, b"", ttl=60)
    assert await count_rows(db, "aqueue_results") == 1


async def test_wait_wakes_on_a_ready_store_by_another_connection(
    make_backend: MakeBackend,
) -> None:
    waiting, storing = await make_backend(), await make_backend()
    got: list[StoredResult] = []

    async def wait() -> None:
        got.append(await waiting.wait("t"))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await anyio.wait_all_tasks_blocked()
            await storing.store("t", states.STARTED, b"", ttl=60)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            await storing.store("t", states.SUCCESS, b"done", ttl=60)
    assert got == [StoredResult(states.SUCCESS, b"done")]
    with anyio.fail_after(5):  # ready already: at once
        assert await waiting.wait("t") == got[0]


STORE = """
import sys, anyio
from aqueue.drivers.sqlite.results import SQLiteBackend

async def main():
    async with SQLiteBackend(sys.argv[1], {}) as backend:
        await backend.store("t", "SUCCESS", b"from afar", ttl=60)

anyio.run(main)
"""


async def test_wait_wakes_on_a_store_by_another_process(backend: SQLiteBackend, url: str) -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.run_process, [sys.executable, "-c", STORE, url])
            assert (await backend.wait("t")).payload == b"from afar"


async def test_a_thousand_waits_share_one_socket(make_backend: MakeBackend, db: Path) -> None:
    waiting, storing = await make_backend(), await make_backend()
    ids = [f"task-{i}" for i in range(1000)]
    got: dict[str, bytes] = {}

    async def wait(task_id: str) -> None:
        got[task_id] = (await waiting.wait(task_id)).payload

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for task_id in ids:
                group.start_soon(wait, task_id)
            await anyio.wait_all_tasks_blocked()
            for task_id in ids:
                await storing.store(task_id, states.SUCCESS, task_id.encode(), ttl=60)
    assert got == {task_id: task_id.encode() for task_id in ids}
    assert len(wake_files(db, "results")) == 1  # one socket for the thousand waits
    await waiting.close()
    assert wake_files(db, "results") == []


async def test_a_cancelled_reader_hands_over(make_backend: MakeBackend) -> None:
    waiting, storing = await make_backend(), await make_backend()
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            first = anyio.CancelScope()

            async def give_up() -> None:
                with first:
                    await waiting.wait("first")  # the reader: it waited first

            group.start_soon(give_up)
            while not waiting._waiters._reading:  # the first wait reads for everyone
                await anyio.wait_all_tasks_blocked()
            group.start_soon(waiting.wait, "second")
            await anyio.wait_all_tasks_blocked()
            first.cancel()
            await anyio.wait_all_tasks_blocked()
            await storing.store("second", states.SUCCESS, b"", ttl=60)


async def test_closed_backend_refuses(backend: SQLiteBackend) -> None:
    await backend.close()
    with pytest.raises(BrokerError, match="not open"):
        await backend.wait("t")
    await backend.close()


async def test_dead_letters_an_older_aqueue_kept_are_counted(tmp_path: Path) -> None:
    """A file from before the byte count: its dead letters are counted when it is opened."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE aqueue_dead_letters (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "queue TEXT NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL, "
            "detail TEXT NOT NULL, at REAL NOT NULL)"
        )
        conn.executemany(
            "INSERT INTO aqueue_dead_letters (queue, body, reason, detail, at) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                ("q", b"a" * 100, "undecodable", "d", 1.0),
                ("q", b"b" * 100, "undecodable", "d", 2.0),
            ],
        )
    conn.close()
    async with SQLiteBroker(f"sqlite:///{path}", {}) as broker:
        assert await broker.dead_letter_stats("q") == DeadLetterStats(2, 224, 0)
        first, _ = await broker.dead_letters("q")
        assert await broker.purge_dead_letters("q", [first.id]) == 1
        assert await broker.dead_letter_stats("q") == DeadLetterStats(1, 112, 0)
    async with SQLiteBroker(f"sqlite:///{path}", {}) as broker:  # counted once, not again
        assert await broker.dead_letter_stats("q") == DeadLetterStats(1, 112, 0)


def test_many_threads_open_one_new_database_at_once(tmp_path: Path) -> None:
    """Switching a new file to WAL takes an exclusive lock that SQLite refuses at once (no busy
    handler) while another connection opens it: every opener must still get its connection."""
    import concurrent.futures
    import threading

    from aqueue.drivers.sqlite.database import connect

    schema = ("CREATE TABLE IF NOT EXISTS t (x INTEGER)",)
    for round_ in range(30):
        path = str(tmp_path / f"new-{round_}.db")
        start = threading.Barrier(8)

        def open_it(path: str = path, start: threading.Barrier = start) -> str:
            start.wait()
            conn = connect(path, schema)
            try:
                return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
            finally:
                conn.close()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            modes = list(pool.map(lambda _: open_it(), range(8)))
        assert modes == ["wal"] * 8
