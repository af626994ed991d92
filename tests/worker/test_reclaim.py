"""Heartbeats: a worker killed with `kill -9` has its messages reclaimed long before their lease
runs out, and a live worker whose event loop is blocked keeps its messages (SQLite and Redis).
RabbitMQ needs no heartbeat of ours: it redelivers a dead connection's messages at once.

Workers are `python -m aqueue worker tasks:app` in a temporary directory; everything waits on
lines they log (`ready.`, `received`, `reclaiming`) and on results, never on a clock. The lease
(`broker_visibility_timeout`) is 30 s throughout, so a message back sooner came back by the
heartbeat.
"""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, AsyncResult
from tests.helpers.drivers import SERVICES, driver_url, require
from tests.helpers.worker_project import WorkerProcess

pytestmark = pytest.mark.slow

#: The longest any single step may take before the test fails.
STEP = 30.0
LEASE = 30.0

TASKS = """
    import pathlib

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App(
        "tasks",
        broker={url!r},
        broker_visibility_timeout={lease!r},
        broker_heartbeat_interval={interval!r},
        broker_heartbeat_timeout={timeout!r},
        worker_quarantine_processes={quarantine!r},
    )


    @app.task(bind=True)
    async def block(self, name):
        # Wait until the test creates the file `name`; return this delivery's count.
        path = HERE / name
        while not path.exists():
            await anyio.sleep(0.01)  # task body: waits for a file the test creates
        return self.request.delivery_count


    @app.task(bind=True)
    async def hog(self, name):
        # CPU-bound, in a coroutine: blocks the worker's event loop until the file exists.
        path = HERE / name
        while not path.exists():
            sum(range(10_000))
        return self.request.delivery_count
"""


@pytest.fixture(params=["sqlite", "redis", "amqp"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A broker URL of this test's own, on SQLite, Redis and RabbitMQ."""
    driver: str = request.param
    await require(driver)
    made = driver_url(driver, tmp_path)
    yield made
    if driver in SERVICES:
        await SERVICES[driver].cleanup(made)


@pytest.fixture
def project(tmp_path: Path, url: str) -> Callable[..., Path]:
    """Write `tasks.py` for the broker and heartbeat settings into tmp_path."""

    def write(interval: float = 1.0, timeout: float = 5.0, quarantine: int = 2) -> Path:
        text = textwrap.dedent(TASKS).format(
            url=url,
            lease=LEASE,
            interval=float(interval),
            timeout=float(timeout),
            quarantine=quarantine,
        )
        (tmp_path / "tasks.py").write_text(text)
        return tmp_path

    return write


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start worker processes in tmp_path; every one is killed and reaped afterwards."""
    started: list[WorkerProcess] = []

    async def start(*args: str) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, list(args))
        started.append(worker)
        await worker.wait_line("ready.")
        return worker

    yield start
    for worker in started:
        worker.stop()


async def held_by_a_dead_worker(
    caller: App, workers: Callable[..., Any], count: int, live: Callable[[], Awaitable[Any]]
) -> tuple[list[AsyncResult[Any]], Any]:
    """`count` blocked tasks received by a worker that `live` workers see killed (-9).

    `live()` starts the workers that will take them, before the kill; returns the results
    and what `live()` returned.
    """
    doomed = await workers("-c", str(count))
    results = [await caller.send_task("tasks.block", ["go"]) for _ in range(count)]
    for result in results:
        await doomed.wait_line(f"Task tasks.block[{result.id}] received")
    started = await live()
    doomed.signal(signal.SIGKILL)
    assert await doomed.wait_exit() == -signal.SIGKILL
    return results, started


async def test_kill_9_messages_come_back_by_heartbeat_not_lease(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    cwd = project()  # the defaults: a beat a second, dead after 5 s
    async with App("caller", broker=url, set_as_current=False) as caller:
        first = await workers("-c", "3")
        results = [await caller.send_task("tasks.block", ["go"]) for _ in range(3)]
        for result in results:
            await first.wait_line(f"Task tasks.block[{result.id}] received")
        second = await workers("-c", "3")  # idle: the three are leased to the first

        killed = time.monotonic()
        first.signal(signal.SIGKILL)
        assert await first.wait_exit() == -signal.SIGKILL
        (cwd / "go").touch()  # they finish, the next time they run
        counts = [await result.get(timeout=STEP) for result in results]
        recovered = time.monotonic() - killed

        print(f"\nkill -9, a {LEASE:g} s lease: its 3 messages were done {recovered:.1f} s later")
        if url.startswith("amqp"):  # the server redelivers them as the connection drops
            assert recovered < 5.0
        else:
            assert counts == [2, 2, 2]  # the second delivery of each, on the second worker
            if url.startswith("redis"):  # one at a time: each runs alone (see below)
                await second.wait_line("reclaiming 1 message(s) of 1 consumer(s)", count=3)
            else:
                await second.wait_line("reclaiming 3 message(s) of 1 consumer(s)")
            assert recovered < LEASE / 2
        broker = await caller.broker()
        assert await broker.dead_letters("default") == []


@pytest.mark.parametrize("url", ["sqlite", "redis"], indirect=True)  # RabbitMQ: no leases
async def test_a_blocked_loop_is_not_a_dead_worker(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    # A 5 s timeout: the busy worker's heartbeat thread must beat while its loop is blocked, on
    # a machine that may be loaded (at 2 s, a loaded CI machine starved it now and then).
    cwd = project(interval=0.2, timeout=5.0)
    async with App("caller", broker=url, set_as_current=False) as caller:
        busy = await workers("-c", "1")
        hog = await caller.send_task("tasks.hog", ["done"])
        await busy.wait_line(f"Task tasks.hog[{hog.id}] received")  # its loop is blocked now

        # A worker that dies holding a message, with the busy worker's loop still blocked.
        doomed = await workers("-c", "1")
        lost = await caller.send_task("tasks.block", ["go"])
        await doomed.wait_line(f"Task tasks.block[{lost.id}] received")
        doomed.signal(signal.SIGKILL)
        assert await doomed.wait_exit() == -signal.SIGKILL
        (cwd / "go").touch()

        # The judge starts after the busy worker's loop was blocked, and judges once its own
        # heartbeat has run for the timeout (5 s): by then that loop has been blocked for
        # longer than the timeout, and only the dead worker's message is taken.
        judge = await workers("-c", "2")
        assert await lost.get(timeout=STEP) == 2
        await judge.wait_line("reclaiming 1 message(s) of 1 consumer(s)")
        assert busy.proc.poll() is None

        (cwd / "done").touch()
        assert await hog.get(timeout=STEP) == 1  # never taken from the busy worker
        assert f"tasks.hog[{hog.id}] received" not in judge.output
        assert "lease ran out" not in busy.output
        judge.signal(signal.SIGTERM)
        assert await judge.wait_exit() == 0
        assert judge.output.count("reclaiming") == 1


@pytest.mark.parametrize("url", ["redis"], indirect=True)
async def test_a_dead_workers_messages_spread_over_the_live_workers(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    # Without quarantine processes a redelivered message runs alone in its worker
    # (`aqueue.worker.isolation`), so a worker takes one at a time and none while it holds
    # one: the dead worker's messages run side by side on the live workers. Before (issue 19,
    # the kill -9 storm), the first claim took as many as it had free slots: here all four
    # went to one worker and ran one after the other.
    cwd = project(interval=0.2, timeout=1.0, quarantine=0)
    async with App("caller", broker=url, set_as_current=False) as caller:

        async def two() -> list[WorkerProcess]:
            return [await workers("-c", "4"), await workers("-c", "4")]

        results, live = await held_by_a_dead_worker(caller, workers, 4, two)
        for worker in live:  # each runs one of them (blocked until the file exists) ...
            await worker.wait_line("redelivered")
        (cwd / "go").touch()
        assert [await result.get(timeout=STEP) for result in results] == [2, 2, 2, 2]
        for worker in live:  # ... and never took more than one at a time
            assert "reclaiming 1 message(s) of 1 consumer(s)" in worker.output
            for count in range(2, 5):
                assert f"reclaiming {count} message(s)" not in worker.output


@pytest.mark.parametrize("url", ["redis"], indirect=True)
async def test_a_worker_takes_the_next_orphan_once_a_long_one_has_run_alone_a_moment(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    # Issue 19, the kill -9 storm: a worker took no redelivery while it held one, until that
    # one finished, so a 2-5 s orphan held back every other orphan it could have run: the
    # last orphan of a kill finished 11-16 s after it (lease 3 s). Now a suspect stops
    # holding the next one back once its window of running alone is over (`isolation`):
    # here the first one runs until the test lets it, and the second still comes. (Without
    # quarantine processes: with them, suspects do not run alone in the worker.)
    cwd = project(interval=0.2, timeout=1.0, quarantine=0)
    async with App("caller", broker=url, set_as_current=False) as caller:
        results, live = await held_by_a_dead_worker(caller, workers, 2, lambda: workers("-c", "4"))
        # Before: the second never came while the first was blocked (timed out here).
        await live.wait_line("redelivered", count=2, within=15)
        (cwd / "go").touch()
        assert [await result.get(timeout=STEP) for result in results] == [2, 2]
        assert live.output.count("reclaiming 1 message(s) of 1 consumer(s)") == 2


@pytest.mark.parametrize("url", ["redis"], indirect=True)
async def test_a_dead_workers_messages_run_at_once_in_quarantine_processes(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    # With quarantine processes (the default) a worker takes the dead worker's messages as it
    # takes any, all four at once (not one at a time, as alone), each to run in a child of its
    # own (two start at once, the next ones as each has run 0.5 s).
    cwd = project(interval=0.2, timeout=1.0)
    async with App("caller", broker=url, set_as_current=False) as caller:
        results, live = await held_by_a_dead_worker(caller, workers, 4, lambda: workers("-c", "4"))
        await live.wait_line("running it in a quarantine process", count=4)
        (cwd / "go").touch()
        assert [await result.get(timeout=STEP) for result in results] == [2, 2, 2, 2]
