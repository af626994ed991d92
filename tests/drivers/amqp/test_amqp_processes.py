"""Worker processes on a real RabbitMQ: kill -9, restarts, poison messages, dropped connections.

Every worker is `python -m aqueue worker tasks:app` in its own process (see `test_processes`),
with `tasks.py` naming this test's RabbitMQ URL (a name prefix of its own). The tests
synchronise on what the worker logs and on results, never on a clock. Connections are closed
from the broker's side with `rabbitmqctl close_connection`, found by their connection name;
the restart test stops and starts a RabbitMQ node of its own (`service_amqp.PrivateNode`).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App
from tests.helpers import service_amqp
from tests.helpers import worker_project as test_processes
from tests.helpers.drivers import service_unavailable
from tests.helpers.worker_project import STEP, WorkerProcess

pytestmark = pytest.mark.slow

#: Worker processes in tmp_path, killed and reaped afterwards (the fixture of `test_processes`).
workers = test_processes.workers

TASKS = """
    import os
    import pathlib
    import signal
    import time

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App(
        "tasks",
        broker={url!r},
        broker_max_deliveries={max_deliveries},
        worker_quarantine_processes={quarantine},
    )


    def note(name, line):
        # One O_APPEND write per line: lines of concurrent tasks never mix.
        fd = os.open(HERE / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{{line}}\\n".encode())
        finally:
            os.close(fd)


    @app.task
    async def record(i):
        note("runs.log", i)
        return i


    @app.task
    async def stamp():
        note("stamps.log", "ran")
        return time.time()


    @app.task
    async def add(x, y):
        return x + y


    @app.task(bind=True)
    async def block(self, name):
        path = HERE / name
        while not path.exists():
            await anyio.sleep(0.01)  # task body: waits for a file the test creates
        return self.request.delivery_count


    @app.task
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_amqp.cleanup(url)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write `tasks.py` for a broker URL into tmp_path, the current directory."""
    monkeypatch.chdir(tmp_path)

    def write(url: str, max_deliveries: int = 5, quarantine: int = 2) -> Path:
        text = textwrap.dedent(TASKS).format(
            url=url, max_deliveries=max_deliveries, quarantine=quarantine
        )
        (tmp_path / "tasks.py").write_text(text)
        return tmp_path

    return write


async def stop(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0, worker.output


def close_connection(name: str) -> bool:
    """Close the connection named `name` from RabbitMQ's side; False if there is none."""
    tool = shutil.which("rabbitmqctl")
    assert tool is not None
    listing = subprocess.run(
        [tool, "list_connections", "pid", "client_properties", "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=STEP,
        check=True,
    ).stdout
    needle = f'{{"connection_name","{name}"}}'
    pids = [line.split("\t")[0] for line in listing.splitlines() if needle in line]
    for pid in pids:
        subprocess.run(
            [tool, "close_connection", pid, "closed by the test"],
            capture_output=True,
            timeout=STEP,
            check=True,
        )
    return bool(pids)


async def test_kill_9_under_2000_tasks_loses_none(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    cwd = project(url)
    async with App("caller", broker=url, set_as_current=False) as caller:
        results = await caller.send_many("tasks.record", [((i,), {}) for i in range(2000)])
        first = await workers("-c", "50")
        await first.wait_line(" succeeded in ", count=300)
        first.proc.kill()
        assert await first.wait_exit() == -signal.SIGKILL
        second = await workers("-c", "50")
        with anyio.fail_after(120):
            values = [await result.get(timeout=STEP) for result in results]
        await stop(second)
    assert values == list(range(2000))
    runs = collections.Counter(int(line) for line in (cwd / "runs.log").read_text().split())
    assert set(runs) == set(range(2000))
    duplicates = sum(runs.values()) - 2000
    print(f"\nkill -9 of a worker under 2,000 tasks: none lost, {duplicates} ran twice")
    assert max(runs.values()) <= 2
    assert duplicates <= 50  # at most what was running (-c 50) when it died


async def test_a_countdown_survives_a_worker_restart_and_runs_once(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    cwd = project(url)
    first = await workers()
    async with App("caller", broker=url, set_as_current=False) as caller:
        sent = time.time()
        result = await caller.send_task("tasks.stamp", countdown=3)
        first.proc.kill()  # RabbitMQ holds the delayed message, not the worker
        await first.wait_exit()
        second = await workers()
        value = await result.get(timeout=STEP)
        await stop(second)
    assert value >= sent + 3
    assert (cwd / "stamps.log").read_text() == "ran\n"


@pytest.mark.parametrize("quarantine", [2, 0], ids=["quarantine", "alone"])
async def test_a_message_that_kills_every_worker_is_dead_lettered(
    project: Callable[..., Path], workers: Callable[..., Any], quarantine: int
) -> None:
    """On a quorum queue. Its first delivery kills a worker; its second kills a quarantine
    process (the worker lives on and dead-letters it), or, run alone in the worker
    (`worker_quarantine_processes = 0`), a second worker, and RabbitMQ's count of deliveries
    dead-letters it on the third."""
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10], queue_type="quorum")
    try:
        project(url, max_deliveries=2, quarantine=quarantine)
        caller = App("caller", broker=url, broker_max_deliveries=2, set_as_current=False)
        async with caller:
            await caller.send_task("tasks.die")
            for _ in range(1 if quarantine else 2):  # each delivery run here kills its worker
                doomed = await workers("-c", "1")
                assert await doomed.wait_exit() == -signal.SIGKILL
            survivor = await workers("-c", "1")
            assert await (await caller.send_task("tasks.add", [1, 2])).get(timeout=STEP) == 3
            await survivor.wait_line("dead-lettered")
            letters = await (await caller.broker()).dead_letters("default")
            await stop(survivor)
        assert [letter.reason for letter in letters] == ["max-deliveries"]
        if quarantine:
            assert "the process running this task died 2 times" in letters[0].detail
            assert "killed its quarantine process" in survivor.output
        else:
            assert "delivered 2 times" in letters[0].detail
        assert "dead-lettered" in survivor.output
    finally:
        await service_amqp.cleanup(url)


async def test_a_worker_resumes_after_rabbitmq_closed_its_connection(
    url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("needs rabbitmqctl to close a connection from the broker's side")
    name = f"aqueue-test-worker-{uuid.uuid4().hex[:8]}"
    cwd = project(f"{url}&name={name}")
    worker = await workers("-c", "5")
    async with App("caller", broker=url, set_as_current=False) as caller:
        assert await (await caller.send_task("tasks.add", [1, 1])).get(timeout=STEP) == 2
        running = await caller.send_task("tasks.block", ["go"])
        await worker.wait_line(f"Task tasks.block[{running.id}] received")
        dropped = time.perf_counter()
        if not await anyio.to_thread.run_sync(close_connection, name):
            pytest.skip("the worker's connection is not on the local RabbitMQ node")
        after = await caller.send_task("tasks.add", [2, 2])
        assert await after.get(timeout=STEP) == 4
        resumed = time.perf_counter() - dropped
        print(f"\nworker consuming again {resumed:.2f} s after rabbitmqctl close_connection began")
        assert resumed < 10
        # The task that was running: its delivery went stale; RabbitMQ gave the message again.
        await worker.wait_line(f"Task tasks.block[{running.id}] received", count=2)
        (cwd / "go").touch()
        # Both runs finish; the redelivered one counts as delivery 2 (aqueue counts runs on
        # classic queues), and whichever stores last is the result.
        assert await running.get(timeout=STEP) in (1, 2)
        await worker.wait_line("consuming again")
        await stop(worker)


async def test_a_worker_resumes_after_rabbitmq_restarted(
    project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    """A node of the test's own is stopped and started again under a running worker."""
    if reason := service_amqp.PrivateNode.missing():
        pytest.skip(reason)
    node = service_amqp.PrivateNode()
    try:
        await anyio.to_thread.run_sync(node.start)
        cwd = project(node.url)
        worker = await workers("-c", "5")
        async with App("caller", broker=node.url, backend=False, set_as_current=False) as caller:
            for _ in range(5):  # every slot busy: what follows waits in RabbitMQ
                await caller.send_task("tasks.block", ["go"])
            await worker.wait_line("Task tasks.block[", count=5)
            # Confirmed, so RabbitMQ holds them (durable queue, persistent messages).
            await caller.send_many("tasks.record", [((i,), {}) for i in range(500)])
            await anyio.to_thread.run_sync(node.stop)
            await anyio.to_thread.run_sync(node.start)
            back = time.perf_counter()
            (cwd / "go").touch()
            after = await caller.send_task("tasks.record", [500])
            await worker.wait_line(f"Task tasks.record[{after.id}] succeeded")
            resumed = time.perf_counter() - back
            print(f"\nworker consuming again {resumed:.2f} s after RabbitMQ was back")
            assert resumed < 10
            # 501 records, and the five blocked tasks twice: their acks went to the stopped
            # node, so RabbitMQ gave them again.
            await worker.wait_line(" succeeded in ", count=511)
            await stop(worker)
        runs = collections.Counter(int(line) for line in (cwd / "runs.log").read_text().split())
        assert set(runs) == set(range(501))  # nothing confirmed was lost
    finally:
        await anyio.to_thread.run_sync(node.remove)
