"""Redis, with real worker processes: kill -9, long tasks, a Redis restart, secrets in output.

Workers are `python -m aqueue worker tasks:app` in a temporary directory whose `tasks.py` names
the test's Redis URL. Tests that restart Redis, or need a password, start their own
`redis-server` on a free port. Everything synchronises on lines a process prints (`ready.`,
`succeeded`, `Ready to accept connections`), never on a clock.
"""

from __future__ import annotations

import secrets
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, BrokerError, Worker
from tests.helpers.processes import STEP, Lines, RedisServer, child_env, spawn

pytestmark = pytest.mark.slow

TASKS = """
    import os
    import pathlib

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App("tasks", broker={url!r}, broker_visibility_timeout={visibility!r})


    @app.task
    async def add(x, y):
        return x + y


    @app.task
    async def work(i, seconds):
        await anyio.sleep(seconds)  # simulated work
        fd = os.open(HERE / "ran.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"%d\\n" % i)
        finally:
            os.close(fd)
        return i


    @app.task
    async def boom():
        raise RuntimeError("forced failure")
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write `tasks.py` for a broker URL and visibility timeout into tmp_path."""
    monkeypatch.chdir(tmp_path)

    def write(url: str, visibility: float = 30.0) -> Path:
        text = textwrap.dedent(TASKS).format(url=url, visibility=float(visibility))
        (tmp_path / "tasks.py").write_text(text)
        return tmp_path

    return write


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start worker processes in tmp_path; every one is killed and reaped at the end."""
    started: list[Lines] = []

    async def start(*args: str) -> Lines:
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", *args]
        worker = spawn(command, cwd=tmp_path, env=child_env())
        started.append(worker)
        await worker.wait_line("ready.")
        return worker

    yield start
    for worker in started:
        worker.stop()


def ran(cwd: Path) -> list[int]:
    """The task indexes `work` recorded, one per completed run."""
    path = cwd / "ran.log"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def test_kill_9_twice_loses_no_task(
    shared_url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    total = 2000
    cwd = project(shared_url, visibility=1.0)
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        results = await caller.send_many("tasks.work", [((i, 0.01), {}) for i in range(total)])
        for victim in range(2):
            worker = await workers("-c", "50")
            done_before = len(ran(cwd))
            await worker.wait_line("succeeded in", count=300)
            assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
            assert len(ran(cwd)) > done_before, f"victim {victim} did no work"
        await workers("-c", "50")
        with anyio.fail_after(120):
            values = [await result.get(timeout=60) for result in results]
        assert values == list(range(total))
        broker = await caller.broker()
        assert await broker.dead_letters("default") == []
    runs = ran(cwd)
    assert sorted(set(runs)) == list(range(total))  # none lost
    duplicates = len(runs) - total
    print(
        f"\nkill -9 twice, {total} tasks: {duplicates} ran twice (completed, then killed "
        "before the acknowledgement), none lost"
    )
    assert duplicates < 200  # at most what was in flight (2 x concurrency 50)


async def test_a_task_longer_than_the_lease_runs_once(
    shared_url: str, project: Callable[..., Path], workers: Callable[..., Any]
) -> None:
    cwd = project(shared_url, visibility=1.0)
    first = await workers("-c", "2")
    second = await workers("-c", "2")  # would reclaim it, if the heartbeat did not renew it
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        result = await caller.send_task("tasks.work", [7, 3.0])  # 3 s, visibility 1 s
        assert await result.get(timeout=STEP) == 7
    assert ran(cwd) == [7]
    assert first.count("received") + second.count("received") == 1
    assert "lease ran out" not in first.output + second.output


async def test_worker_resumes_after_redis_restarts(
    redis_servers: Callable[..., RedisServer],
    project: Callable[..., Path],
    workers: Callable[..., Any],
) -> None:
    server = redis_servers()
    await server.start()
    project(server.url)
    worker = await workers()
    async with App("caller", broker=server.url, set_as_current=False) as caller:
        assert await (await caller.send_task("tasks.add", [1, 2])).get(timeout=STEP) == 3

        server.kill()  # nothing persisted: the streams and groups are gone too
        await worker.wait_line("trying again in")
        await server.start()
        back = time.perf_counter()
        result = await caller.send_task("tasks.add", [2, 3])
        assert await result.get(timeout=10) == 5  # the bound: within 10 s
        elapsed = time.perf_counter() - back
    print(f"\nRedis restarted: a task sent afterwards ran {elapsed:.2f} s after Redis was back")
    assert worker.proc.poll() is None
    assert worker.stop(signal.SIGTERM) == 0


async def test_the_password_never_shows(
    redis_servers: Callable[..., RedisServer],
    project: Callable[..., Path],
    workers: Callable[..., Any],
) -> None:
    password = f"pw-{secrets.token_hex(12)}"
    server = redis_servers(password=password)
    await server.start()
    project(server.url)
    # On asyncio: its "Using selector" line shows DEBUG took effect (uvloop logs none).
    worker = await workers("-l", "DEBUG", "--loop", "asyncio")
    seen: list[str] = []
    async with App("caller", broker=server.url, set_as_current=False) as caller:
        failed = await caller.send_task("tasks.boom")
        with pytest.raises(RuntimeError, match="forced failure"):
            await failed.get(timeout=STEP)
        server.kill()  # connection errors on the worker's side
        await worker.wait_line("trying again in")
        with pytest.raises(BrokerError) as caught:
            await caller.send_task("tasks.add", [1, 1])
        seen += [str(caught.value), repr(caught.value)]
        await server.start()
        assert await (await caller.send_task("tasks.add", [1, 1])).get(timeout=STEP) == 2
        seen += [repr(caller), repr(await caller.broker())]
    wrong = App("wrong", broker=server.url.replace(password, f"{password}x"), set_as_current=False)
    with pytest.raises(BrokerError) as refused:
        await wrong.broker()
    seen += [str(refused.value), repr(wrong)]
    assert worker.stop(signal.SIGTERM) == 0
    output = worker.output
    assert ".> transport:   redis://:***@127.0.0.1" in output  # the banner
    assert "DEBUG" in output
    assert "trying again in" in output
    everything = "\n".join([output, *seen])
    assert password not in everything


async def test_a_unix_socket_url(redis_servers: Callable[..., RedisServer], tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    server = redis_servers(unix_socket=path)
    await server.start()
    async with App("unix", broker=f"unix://{path}?db=2", set_as_current=False) as app:

        @app.task
        async def add(x: int, y: int) -> int:
            return x + y

        result = await add.delay(20, 22)
        await Worker(app, burst=True).run()
        assert await result.get(timeout=STEP) == 42
