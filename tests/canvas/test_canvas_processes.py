"""A chord whose header outlives two kill -9 of its worker: the callback runs exactly once.

On Redis, on SQLite, and on RabbitMQ with Redis results; workers are `python -m aqueue worker
tasks:app` processes (the helpers of tests/helpers/processes.py). Each header member is a
chain of two tasks, so chain continuations are cut by the kills too. The callback appends its
argument to a ledger file, so a second run, or a run with a partial list, would show.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, chord, signature
from tests.helpers.drivers import SERVICES, driver_url, require
from tests.helpers.processes import Lines, child_env, spawn

pytestmark = pytest.mark.slow

TASKS = """
    import json
    import os
    import pathlib

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App(
        "tasks", broker={url!r}, result_backend={backend!r}, broker_visibility_timeout=1.0
    )


    @app.task
    async def work(i):
        await anyio.sleep(0.005)  # simulated work
        return i


    @app.task
    async def double(i):
        return 2 * i


    @app.task
    def collect(values):
        fd = os.open(HERE / "ledger.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, json.dumps(values).encode() + b"\\n")
        finally:
            os.close(fd)
        return len(values)
"""


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Any]]:
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


@pytest.fixture(params=["redis", "sqlite", "amqp"])
async def urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """The broker's URL and the result store's: Redis, SQLite, or RabbitMQ with Redis."""
    driver: str = request.param
    await require(driver)
    await require("redis")
    made = [driver_url(driver, tmp_path)]
    if driver == "amqp":
        made.append(driver_url("redis", tmp_path))
    yield made[0], made[-1]
    for url in made:
        scheme = url.split("://")[0]
        if scheme in SERVICES:
            await SERVICES[scheme].cleanup(url)


async def test_chord_callback_runs_once_after_two_kill_9(
    urls: tuple[str, str], tmp_path: Path, start_worker: Callable[..., Any]
) -> None:
    total = 1000
    broker, backend = urls
    text = textwrap.dedent(TASKS).format(url=broker, backend=backend)
    (tmp_path / "tasks.py").write_text(text)
    settings = {"result_backend": backend}
    async with App("caller", broker=broker, set_as_current=False, **settings) as caller:
        # Each header member is a chain of two: continuations are redelivered too.
        header = [
            signature("tasks.work", (i,), app=caller) | signature("tasks.double", app=caller)
            for i in range(total)
        ]
        result = await chord(header, signature("tasks.collect", app=caller)).delay()
        for _ in range(2):
            worker = await start_worker("-c", "20")
            await worker.wait_line("succeeded in", count=300)
            assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
            assert not (tmp_path / "ledger.log").exists()  # killed mid-header
        fresh = await start_worker("-c", "20")
        with anyio.fail_after(120):
            assert await result.get(timeout=100) == total
    again = fresh.count("redelivered after it finished")
    print(f"\nchord of {total}, kill -9 twice: {again} finished header tasks came back")
    ledger = (tmp_path / "ledger.log").read_text().splitlines()
    assert len(ledger) == 1, f"the callback ran {len(ledger)} times"
    assert json.loads(ledger[0]) == [2 * i for i in range(total)]
