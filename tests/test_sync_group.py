"""Sync `delay()` calls published in batches by a writer thread (`sync._WriterSender`).

On SQLite and Redis (plain URLs), `add.sync.delay()` does not hop to the app's I/O loop: the
calling threads build their messages and queue them, and a writer thread publishes each batch
on a connection of the sync path's own. These tests check that nothing is lost or sent twice
from 8 threads at once, that each error reaches the caller it belongs to, and that the path
survives the I/O thread stopping and starting again, and other loops using the same app.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, BrokerError, SerializationError
from aqueue import sync as sync_module
from aqueue.drivers.base import BlockingPublisher
from aqueue.message import Envelope, OutgoingMessage
from aqueue.sync import _Waiter, _WriterSender
from aqueue.testing import InProcessWorker
from tests.helpers import service_redis
from tests.helpers.drivers import SERVICES, require

THREADS = 8
CALLS = 150  # per thread


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A broker URL of the test's own (a new SQLite file, or a Redis key prefix)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'q.db'}"
    else:
        yield request.getfixturevalue("redis_url")


@pytest.fixture
def app(url: str) -> Iterator[App]:
    made = App("tests", broker=url, set_as_current=False)
    yield made
    made.sync.close()
    asyncio.run(made.close())


async def _purge(app: App, queue: str) -> int:
    broker = await app.broker()
    return await broker.purge(queue)


def _queued(app: App, queue: str | None = None) -> int:
    """How many messages `queue` holds (on the I/O loop's connection), emptying it."""
    return app.run_blocking(_purge(app, queue or app.conf.task_default_queue))


def _at_once(call: Any, count: int = THREADS) -> list[Any]:
    """Run `call(index)` in `count` threads that start together; return their returns."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        return call(index)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_eight_threads_lose_nothing_and_send_nothing_twice(app: App) -> None:
    @app.task
    def noop(x: int, y: int) -> None:
        return None

    noop.sync.delay(-1, -1)  # opens the app on the I/O thread
    assert isinstance(app._io_thread()._sender, _WriterSender)
    assert _queued(app) == 1
    runs = _at_once(lambda x: [noop.sync.delay(x, y).id for y in range(CALLS)])
    ids = [task_id for run in runs for task_id in run]
    assert len(set(ids)) == THREADS * CALLS
    assert _queued(app) == THREADS * CALLS


def test_messages_sent_in_groups_run_with_their_own_arguments(app: App) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    worker = InProcessWorker(app)
    worker.start()
    try:
        runs = _at_once(lambda x: [add.sync.delay(x, y) for y in range(20)])
        values = [[result.get(timeout=30) for result in run] for run in runs]
    finally:
        worker.stop()
    assert values == [[x + y for y in range(20)] for x in range(THREADS)]


def test_a_call_that_cannot_be_encoded_fails_its_caller_alone(app: App) -> None:
    @app.task
    def echo(value: object) -> None:
        return None

    def calls(x: int) -> list[str]:
        outcomes = []
        for y in range(50):
            try:
                echo.sync.delay(object() if (x + y) % 3 == 0 else y)
            except SerializationError:
                outcomes.append("refused")
            else:
                outcomes.append("sent")
        return outcomes

    runs = _at_once(calls)
    expected = [["refused" if (x + y) % 3 == 0 else "sent" for y in range(50)] for x in range(8)]
    assert runs == expected
    assert _queued(app) == sum(run.count("sent") for run in runs)


def test_a_failed_sqlite_publish_fails_every_caller_of_its_group(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    app = App("tests", broker=f"sqlite:///{path}", set_as_current=False)

    @app.task
    def noop(x: int) -> None:
        return None

    try:
        noop.sync.delay(0)
        assert _queued(app) == 1
        with sqlite3.connect(path) as conn:  # the database itself refuses every insert
            conn.execute(
                "CREATE TRIGGER syncpub_refuse BEFORE INSERT ON aqueue_messages "
                "BEGIN SELECT RAISE(ABORT, 'refused by syncpub'); END"
            )

        def calls(x: int) -> list[str]:
            errors = []
            for y in range(20):
                with pytest.raises(BrokerError) as caught:
                    noop.sync.delay(y)
                errors.append(str(caught.value))
            return errors

        runs = _at_once(calls)
        assert all("refused by syncpub" in error for run in runs for error in run)
        assert _queued(app) == 0
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER syncpub_refuse")
        _at_once(lambda x: [noop.sync.delay(y) for y in range(20)])
        assert _queued(app) == THREADS * 20
    finally:
        app.sync.close()
        asyncio.run(app.close())


@pytest.fixture
def redis_url() -> Iterator[str]:
    asyncio.run(require("redis"))
    made = service_redis.make_url(f"syncpub-{uuid.uuid4().hex[:10]}")
    yield made
    asyncio.run(SERVICES["redis"].cleanup(made))


def test_a_redis_error_reply_fails_the_callers_of_that_message_only(redis_url: str) -> None:
    import redis

    url = redis_url
    app = App("tests", broker=url, set_as_current=False)

    @app.task(queue="syncpub-broken")
    def broken(x: int) -> None:
        return None

    @app.task
    def fine(x: int) -> None:
        return None

    async def stream_of(queue: str) -> str:
        broker: Any = await app.broker()
        return str(broker.keys(queue).stream(app.conf.task_default_priority))

    client = redis.Redis.from_url(url.partition("?")[0])
    try:
        fine.sync.delay(0)
        assert _queued(app) == 1
        client.set(app.run_blocking(stream_of("syncpub-broken")), "not a stream")

        def calls(x: int) -> list[str]:  # each group mixes both tasks
            outcomes = []
            for y in range(40):
                try:
                    (broken if (x + y) % 2 else fine).sync.delay(y)
                except BrokerError as exc:
                    outcomes.append("WRONGTYPE" if "WRONGTYPE" in str(exc) else str(exc))
                else:
                    outcomes.append("sent")
            return outcomes

        runs = _at_once(calls)
        assert runs == [
            ["WRONGTYPE" if (x + y) % 2 else "sent" for y in range(40)] for x in range(THREADS)
        ]
        assert _queued(app) == THREADS * 20
    finally:
        client.close()
        app.sync.close()
        asyncio.run(app.close())


def test_a_redis_publish_short_of_its_replicas_fails_and_the_connection_stays_in_step(
    redis_url: str,
) -> None:
    # `?wait=1` against a Redis without replicas: WAIT (sent with the XADDs, in one write)
    # answers 0, so each call fails saying so; its message is on the primary all the same,
    # and the replies stay in step with the commands from one publish to the next.
    app = App("tests", broker=f"{redis_url}&wait=1&wait_timeout=0.01", set_as_current=False)

    @app.task
    def add(x: int) -> None:
        return None

    try:
        for _ in range(3):
            with pytest.raises(BrokerError, match="only 0 of 1 replica"):
                add.sync.delay(1)
        assert _queued(app) == 3
    finally:
        app.sync.close()
        asyncio.run(app.close())


def test_the_group_path_across_loops_and_restarts_of_the_io_thread(app: App) -> None:
    @app.task
    def noop(x: int) -> None:
        return None

    async def from_a_loop_of_its_own(x: int) -> str:
        return (await noop.delay(x)).id

    ids = [noop.sync.delay(0).id]
    ids.append(asyncio.run(from_a_loop_of_its_own(1)))  # its own loop, its own connection
    asyncio.run(app.close())  # closes that loop's connections and stops the I/O thread
    assert not app._io_thread().running
    ids += [noop.sync.delay(2).id]  # a new I/O thread, a new sender and publisher
    assert isinstance(app._io_thread()._sender, _WriterSender)
    app.sync.close()
    runs = _at_once(lambda x: [noop.sync.delay(x).id, asyncio.run(from_a_loop_of_its_own(x))])
    ids += [task_id for run in runs for task_id in run]
    assert len(set(ids)) == 3 + 2 * THREADS
    assert _queued(app) == 3 + 2 * THREADS


def test_calls_the_group_path_cannot_take_go_through_the_io_loop(url: str) -> None:
    app = App("tests", broker=url, task_send_sent_event=True, set_as_current=False)

    @app.task
    def noop(x: int) -> None:
        return None

    try:
        runs = _at_once(lambda x: [noop.sync.delay(y).id for y in range(10)])
        assert isinstance(app._io_thread()._sender, _WriterSender)
        assert len({task_id for run in runs for task_id in run}) == THREADS * 10
        assert _queued(app) == THREADS * 10
    finally:
        app.sync.close()
        asyncio.run(app.close())


class _Gated(BlockingPublisher):
    """A publisher that holds each publish at a gate until the test opens it."""

    def __init__(self, real: BlockingPublisher) -> None:
        self.real = real
        self.started = threading.Event()
        self.gate = threading.Event()
        self.batches: list[list[bytes]] = []

    def publish(self, messages: Sequence[OutgoingMessage]) -> Sequence[Any]:
        self.started.set()
        assert self.gate.wait(10)
        self.batches.append([message.body for message in messages])
        return self.real.publish(messages)

    def close(self) -> None:
        self.real.close()


class _Lock:
    """A waiter's lock that says when its caller waits, and may interrupt the wait."""

    def __init__(self, waits: threading.Event, interrupt: bool) -> None:
        self.real = threading.Lock()
        self.real.acquire()
        self.waits = waits
        self.interrupt = interrupt

    def acquire(self) -> bool:
        self.waits.set()  # the call is queued: `send` queues it, then waits
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C while waiting
        return self.real.acquire()

    def release(self) -> None:
        self.real.release()


def _waiting(waits: threading.Event, *, interrupt: bool = False) -> None:
    """Give the calling thread's next sync call a waiter whose waiting sets `waits`."""
    waiter = _Waiter()
    waiter.lock = _Lock(waits, interrupt)  # type: ignore[assignment]
    sync_module._waiters.waiter = waiter


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[App, Any, _Gated]]:
    """A SQLite app whose sync path publishes through `_Gated`, and its task `noop`."""
    app = App("tests", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)

    @app.task
    def noop(x: int) -> None:
        return None

    try:
        noop.sync.delay(0)
        assert _queued(app) == 1
        sender = app._io_thread()._sender
        assert isinstance(sender, _WriterSender)
        gate = sender._publisher = _Gated(sender._publisher)
        yield app, noop, gate
    finally:
        sync_module._waiters.waiter = None
        app.sync.close()
        asyncio.run(app.close())


def _sent(gate: _Gated) -> list[list[Any]]:
    """The arguments of the messages of each batch the writer published."""
    return [[Envelope.decode(body).args for body in batch] for batch in gate.batches]


def _call_queued(noop: Any, x: int) -> threading.Thread:
    """Call `noop.sync.delay(x)` in a thread; return once the call is queued and waits."""
    waits = threading.Event()

    def call() -> None:
        _waiting(waits)
        noop.sync.delay(x)

    thread = threading.Thread(target=call)
    thread.start()
    assert waits.wait(10)
    return thread


def _joined(*threads: threading.Thread) -> None:
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


def test_an_interrupted_caller_is_not_sent_and_the_next_one_is(
    gated: tuple[App, Any, _Gated],
) -> None:
    """A caller interrupted while it waits (Ctrl-C in the main thread) is dropped from the
    batch if the writer had not taken it yet; the callers queued with it are still sent."""
    app, noop, gate = gated
    first = _call_queued(noop, 1)
    assert gate.started.wait(10)  # the writer took [1] and holds it at the gate
    interrupted = threading.Event()
    _waiting(interrupted, interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        noop.sync.delay(2)  # queued, then interrupted while it waits
    assert interrupted.is_set()
    last = _call_queued(noop, 3)
    gate.gate.set()
    _joined(first, last)
    assert _sent(gate) == [[[1]], [[3]]]  # the interrupted caller's message was not sent
    assert _queued(app) == 2


def test_a_stopped_writer_sends_what_was_queued_and_refuses_new_calls(
    gated: tuple[App, Any, _Gated],
) -> None:
    """Calls queued when the sender stops (the I/O thread stopping) are still published,
    each caller answered; a call after that is refused, and nothing is left running."""
    app, noop, gate = gated
    sender = app._io_thread()._sender
    assert isinstance(sender, _WriterSender)
    first = _call_queued(noop, 1)
    assert gate.started.wait(10)
    second, third = _call_queued(noop, 2), _call_queued(noop, 3)
    sender.fail_waiting(RuntimeError("the app's I/O thread stopped"))  # as `IOThread.stop`
    with pytest.raises(RuntimeError, match="I/O thread stopped"):
        sender.send(noop.name, (4,), {})
    closing = threading.Thread(target=sender.close)  # waits for the writer to finish
    closing.start()
    gate.gate.set()
    _joined(first, second, third, closing)
    assert not sender._writer.is_alive()
    assert _sent(gate) == [[[1]], [[2], [3]]]
    assert _queued(app) == 3


def _exits(messages: Sequence[OutgoingMessage]) -> Sequence[Any]:
    raise SystemExit(3)  # not expected in the writer's thread


def _miscounts(messages: Sequence[OutgoingMessage]) -> Sequence[Any]:
    return [BrokerError("refused")] * (len(messages) + 1)  # one outcome too many: a bug


@pytest.mark.parametrize("publish", [_exits, _miscounts])
def test_a_writer_whose_publish_goes_wrong_fails_its_batch_and_goes_on(
    gated: tuple[App, Any, _Gated], publish: Callable[[Sequence[OutgoingMessage]], Any]
) -> None:
    """A publisher that raises a BaseException, or gives outcomes that do not match the
    batch: its callers fail (the task may or may not have been sent), the writer lives on."""
    app, noop, gate = gated
    sender = app._io_thread()._sender
    assert isinstance(sender, _WriterSender)
    real = gate.real

    class Broken(BlockingPublisher):
        def publish(self, messages: Sequence[OutgoingMessage]) -> Sequence[Any]:
            return publish(messages)

        def close(self) -> None:
            real.close()

    sender._publisher = Broken()
    with pytest.raises(RuntimeError, match="may or may not have been sent"):
        noop.sync.delay(1)
    sender._publisher = real
    noop.sync.delay(2)  # the writer lives on
    assert _queued(app) == 1
