"""Any loop, any thread, and sync code: one App from repeated `asyncio.run()`, from threads with
loops of their own, and from plain `def` through `.sync`, on every broker.

These tests are plain functions (no pytest-asyncio loop around them), as a Django view or a
script would be: each makes its own loops, or none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, SerializationError, Worker, states
from aqueue.sync import _Sender, _Waiter
from aqueue.testing import InProcessWorker
from tests.helpers import service_amqp, service_redis
from tests.helpers.drivers import SERVICES, require

#: (name, broker driver, result backend: None for the broker's own, or a driver name).
SETUPS = [
    ("memory", "memory", None),
    ("sqlite", "sqlite", None),
    ("redis", "redis", None),
    ("amqp-rpc", "amqp", None),
    ("amqp-redis", "amqp", "redis"),
]


def _url(driver: str, tmp_path: Path, unique: str) -> str:
    if driver == "memory":
        return "memory://"
    if driver == "sqlite":
        return f"sqlite:///{tmp_path / 'aqueue.db'}"
    if driver == "redis":
        return service_redis.make_url(unique)
    return service_amqp.make_url(unique)


@pytest.fixture(params=SETUPS, ids=[setup[0] for setup in SETUPS])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str | None]]:
    """(name, broker URL, backend URL or None), on servers cleaned up after the test."""
    name, broker, backend = request.param
    made: list[tuple[str, str]] = []
    for driver in {broker, backend} - {None, "memory", "sqlite"}:
        assert driver is not None
        asyncio.run(require(driver))
    unique = uuid.uuid4().hex[:10]
    broker_url = _url(broker, tmp_path, unique)
    made.append((broker, broker_url))
    backend_url = None
    if backend is not None:
        backend_url = _url(backend, tmp_path, unique)
        made.append((backend, backend_url))
    yield name, broker_url, backend_url
    for driver, url in made:
        if driver in SERVICES:
            asyncio.run(SERVICES[driver].cleanup(url))


@pytest.fixture
def app(setup: tuple[str, str, str | None]) -> Iterator[App]:
    _, broker, backend = setup
    made = App("tests", broker=broker, backend=backend, set_as_current=False)
    yield made
    made.sync.close()
    asyncio.run(made.close())


def _open_loops(app: App) -> list[Any]:
    return [here for here in app._loops.values() if here.broker is not None]


def test_repeated_asyncio_run_on_every_broker(app: App, setup: tuple[str, ...]) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async def round_trip(x: int) -> int:
        result = await add.delay(x, x)
        await Worker(app, burst=True).run()
        return await result.get(timeout=10)

    for x in range(3):
        assert asyncio.run(round_trip(x)) == 2 * x
        # The loop's connections closed when asyncio.run shut its async generators down.
        assert _open_loops(app) == []
    if setup[0] in ("memory", "amqp-rpc"):
        return  # results that live in the sending loop (memory) or its reply queue (rpc)
    # Sent in one loop, run in a second, waited for in a third.
    sent = asyncio.run(add.delay(20, 22))
    asyncio.run(Worker(app, burst=True).run())
    assert asyncio.run(sent.get(timeout=10)) == 42
    meta = asyncio.run(app.AsyncResult(sent.id).meta())
    assert meta.state == states.SUCCESS
    assert meta.result == 42
    assert meta.date_done is not None


def test_threads_with_loops_of_their_own_share_one_app(app: App) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async def round_trips(x: int) -> list[int]:
        results = [await add.delay(x, y) for y in range(10)]
        await Worker(app, burst=True).run()
        return [await result.get(timeout=20) for result in results]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda x: asyncio.run(round_trips(x)), range(4)))
    assert runs == [[x + y for y in range(10)] for x in range(4)]
    assert _open_loops(app) == []


def test_eight_threads_of_sync_calls_at_once(app: App) -> None:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    worker = InProcessWorker(app)
    worker.start()
    try:

        def calls(x: int) -> list[int]:
            return [add.sync.delay(x, y).get(timeout=30) for y in range(100)]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            runs = list(pool.map(calls, range(8)))
    finally:
        worker.stop()
    assert runs == [[x + y for y in range(100)] for x in range(8)]
    assert worker.worker.runner is not None
    assert worker.worker.runner.succeeded == 800


def test_the_sync_api_with_celery_names(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise KeyError("nope")

    worker = InProcessWorker(app)
    worker.start()
    try:
        later = add.sync.apply_async((4, 4), countdown=60, queue="elsewhere")
        result = add.sync.delay(4, 4)
        assert result.get(timeout=10, propagate=True) == 8
        assert (result.state, result.status) == (states.SUCCESS, states.SUCCESS)
        assert result.ready()
        assert result.successful()
        assert not result.failed()
        assert result.result == result.info == 8
        assert result.traceback is None
        assert result.date_done is not None
        assert result.task_id == result.id
        by_name = app.sync.send_task(add.name, [1, 2])
        assert by_name.get(timeout=10) == 3
        assert app.sync.AsyncResult(by_name.id).get(timeout=10) == 3
        assert add.sync.AsyncResult(by_name.id) == by_name
        many = add.sync.delay_many([(1, 2), (3, 4)])
        assert [r.get(timeout=10) for r in many] == [3, 7]
        failed = fail.sync.delay()
        with pytest.raises(KeyError, match="nope"):
            failed.get(timeout=10)
        assert isinstance(failed.get(timeout=10, propagate=False), KeyError)
        assert failed.failed()
        assert failed.state == states.FAILURE
        assert isinstance(failed.result, KeyError)
        assert failed.traceback is not None
        assert "KeyError" in failed.traceback
        failed.forget()
        assert failed.state == states.PENDING
        later.revoke()
        assert later.state == states.REVOKED
    finally:
        worker.stop()


def test_app_close_stops_the_io_thread_and_it_starts_again(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    add.sync.delay(1, 2)
    io = app._io
    assert io is not None
    assert io.running
    thread = io._thread
    asyncio.run(app.close())
    assert app._io is None
    assert not io.running
    assert thread is not None
    assert not thread.is_alive()
    add.sync.delay(1, 2)  # a new I/O thread
    assert app._io is not None
    assert app._io is not io


def test_a_sync_call_inside_a_running_loop_is_a_one_line_error(tmp_path: Path) -> None:
    app = App("tests", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async def inside() -> None:
        with pytest.raises(RuntimeError) as raised:
            add.sync.delay(1, 2)
        assert str(raised.value) == (
            "add.sync.delay() blocks, and this thread runs an event loop: "
            "use `await add.delay(...)` here"
        )
        with pytest.raises(RuntimeError, match=r"use `await app.send_task\(\.\.\.\)` here$"):
            app.sync.send_task("x")
        with pytest.raises(RuntimeError, match=r"use `await result.get\(\)` here$"):
            app.sync.AsyncResult("some-id").get()
        with pytest.raises(RuntimeError, match=r"use `await app.close\(\)` here$"):
            app.sync.close()
        await app.close()

    asyncio.run(inside())
    assert app._io is None  # never started


def test_an_unawaited_delay_warns_naming_the_task(tmp_path: Path) -> None:
    app = App("tests", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    expected = (
        r"add\.delay\(\) was never awaited, so task 'tests\.test_sync\.add' was not sent: "
        r"write `await add\.delay\(\.\.\.\)`, or `add\.sync\.delay\(\.\.\.\)` in sync code"
    )
    with pytest.warns(RuntimeWarning, match=expected):
        add.delay(1, 2)  # dropped at once (CPython counts references)
    with pytest.warns(RuntimeWarning, match=r"add\.apply_async\(\) was never awaited"):
        add.apply_async((1, 2))

    async def awaited() -> list[int]:
        # Still a coroutine to asyncio: tasks, gather.
        task = asyncio.create_task(add.delay(1, 2))
        first, second = await asyncio.gather(task, add.delay(3, 4))
        closed = add.delay(5, 6)
        closed.close()  # closed explicitly: nothing sent, nothing to warn about
        worker = Worker(app, burst=True)
        await worker.run()
        values = [await first.get(timeout=10), await second.get(timeout=10)]
        assert worker.runner is not None
        assert worker.runner.succeeded == 2
        await app.close()
        return values

    assert asyncio.run(awaited()) == [3, 7]


def test_a_call_that_cannot_be_sent_fails_alone_in_its_batch(tmp_path: Path) -> None:
    app = App("tests", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)

    @app.task
    def echo(value: object) -> object:
        return value

    sender = _Sender(app, app._io_thread().loop())
    calls = [(echo.name, (value,), {}, _Waiter()) for value in (1, object(), 3)]
    app.run_blocking(sender._send(echo.name, calls))
    waiters = [call[3] for call in calls]
    assert all(waiter.lock.acquire(blocking=False) for waiter in waiters)  # each was settled
    assert waiters[0].error is None
    assert waiters[2].error is None
    assert waiters[0].result.id != waiters[2].result.id
    assert isinstance(waiters[1].error, SerializationError)
    worker = InProcessWorker(app)
    worker.start()
    try:
        ids = [waiters[i].result.id for i in (0, 2)]
        assert [app.sync.AsyncResult(task_id).get(timeout=10) for task_id in ids] == [1, 3]
    finally:
        worker.stop()
        app.sync.close()


def test_sync_delay_under_task_always_eager(tmp_path: Path) -> None:
    app = App(
        "tests",
        broker=f"sqlite:///{tmp_path / 'q.db'}",
        task_always_eager=True,
        set_as_current=False,
    )

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.sync.delay(1, 2).get(timeout=5) == 3
    app.sync.close()


SCRIPT = """
import sys
import threading

from aqueue import App

app = App("script", broker=sys.argv[1])


@app.task
def add(x: int, y: int) -> int:
    return x + y


print(add.sync.delay(1, 2).state)
print(sorted(t.name for t in threading.enumerate() if t.name.startswith("aqueue-io")))
"""


def test_a_script_exits_without_closing_the_app(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    process = subprocess.run(
        [sys.executable, "-W", "error", str(script), f"sqlite:///{tmp_path / 'q.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines() == [
        "PENDING",
        "['aqueue-io-script', 'aqueue-io-script writer']",
    ]
    assert process.stderr == ""


FORKING = """
import os
import signal
import sys

from aqueue import App

app = App("forked", broker=sys.argv[1], backend=False)


@app.task
def add(x: int, y: int) -> int:
    return x + y


add.sync.delay(1, 2)  # the I/O thread (and the sync path's writer) start
held = sys.argv[2] == "held"
if held:  # as if another thread held the app's lock at the fork
    app._loops_lock.acquire()
pid = os.fork()
if held and pid:
    app._loops_lock.release()
if pid == 0:  # the child: those threads are not in it
    signal.alarm(20)  # a call that hangs ends the child (SIGALRM)
    try:
        add.sync.delay(3, 4)
        app.sync.close()
    except BaseException as exc:
        print(f"child: {exc!r}", file=sys.stderr)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
add.sync.delay(5, 6)  # the parent's own threads still serve it
app.sync.close()
"""


@pytest.mark.parametrize(
    ("driver", "lock"),
    [("sqlite", "free"), ("redis", "free"), ("amqp", "free"), ("sqlite", "held")],
)
def test_sync_calls_in_a_child_forked_after_sync_calls(
    tmp_path: Path, driver: str, lock: str
) -> None:
    """A process forked after sync calls (`multiprocessing`'s fork, a preloading server) has
    none of its parent's threads: its sync calls start threads of its own, never hang (nor
    on a lock of the app's that another thread of the parent held at the fork)."""
    if driver != "sqlite":
        asyncio.run(require(driver))
    url = _url(driver, tmp_path, uuid.uuid4().hex[:10])
    script = tmp_path / "forking.py"
    script.write_text(FORKING)
    try:
        process = subprocess.run(
            [sys.executable, str(script), url, lock],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert process.returncode == 0, process.stderr
        assert process.stdout.split() == ["0"], process.stderr  # the child's exit code
        app = App("forked", broker=url, backend=False, set_as_current=False)
        try:
            assert app.run_blocking(_purge_default(app)) == 3
        finally:
            app.sync.close()
            asyncio.run(app.close())
    finally:
        if driver in SERVICES:
            asyncio.run(SERVICES[driver].cleanup(url))


async def _purge_default(app: App) -> int:
    broker = await app.broker()
    return await broker.purge(app.conf.task_default_queue)
