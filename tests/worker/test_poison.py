"""A task that kills its worker (`os._exit`) among good ones, with worker processes restarted
by the test: every good task succeeds, none is dead-lettered, the poison one is dead-lettered
after `broker_max_deliveries` runs and its caller gets a `WorkerLostError` failure.

On every durable broker (the memory broker does not outlive its process); on RabbitMQ with
classic queues, whose deliveries RabbitMQ does not count. See `benchmarks/poison.py` for the
full-size probe.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aqueue import App, TaskError
from tests.helpers import service_amqp, service_redis
from tests.helpers.drivers import SERVICES, require
from tests.helpers.processes import child_env

pytestmark = pytest.mark.slow

DURABLE = ["sqlite", *(name for name, mod in SERVICES.items() if mod.ENABLED)]
GOOD = 60

TASKS = """
    import os
    import sys

    from aqueue import App

    if {broken!r} and sys.argv[-1] == "--quarantine":
        raise RuntimeError("this app does not load in a quarantine process")

    app = App(
        "tasks",
        broker={broker!r},
        result_backend={backend!r},
        broker_visibility_timeout=1.0,
        broker_max_deliveries=2,
        worker_quarantine_processes={quarantine!r},
    )


    @app.task
    async def good(i):
        return i


    @app.task
    async def poison():
        os._exit(1)
"""


@pytest.fixture(params=DURABLE)
async def urls(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    driver: str = request.param
    await require(driver)
    unique = uuid.uuid4().hex[:10]
    if driver == "sqlite":
        broker = backend = f"sqlite:///{tmp_path / 'aqueue.db'}"
    elif driver == "redis":
        broker = backend = service_redis.make_url(unique)
    else:
        await require("redis")
        broker, backend = service_amqp.make_url(unique), service_redis.make_url(unique)
    yield broker, backend
    if driver != "sqlite":
        await service_redis.cleanup(backend)
    if driver == "amqp":
        await service_amqp.cleanup(broker)


async def supervise(cwd: Path, crashes: list[int]) -> None:
    """Keep one worker process running; count the ones that die (until cancelled)."""
    command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-c", "10", "-l", "INFO"]
    while True:
        with (cwd / "worker.log").open("ab") as log:
            proc = await anyio.open_process(
                command, cwd=cwd, env=child_env(), stdout=log, stderr=log
            )
        async with proc:  # cancelled: the worker is killed and reaped
            code = await proc.wait()
        if code != 0:
            crashes.append(code)


@pytest.mark.parametrize("mode", ["quarantine", "alone", "broken"])
async def test_a_task_that_kills_its_worker_takes_no_good_task_with_it(
    urls: tuple[str, str], tmp_path: Path, mode: str
) -> None:
    """Its redelivery runs in a quarantine process (the worker dies once), or alone in the
    worker (`worker_quarantine_processes = 0`: it dies twice), or, where no quarantine
    process can start (the app does not load there), alone in the worker too."""
    broker, backend = urls
    quarantine = 0 if mode == "alone" else 2
    (tmp_path / "tasks.py").write_text(
        textwrap.dedent(TASKS).format(
            broker=broker, backend=backend, quarantine=quarantine, broken=mode == "broken"
        )
    )
    crashes: list[int] = []
    caller = App("caller", broker=broker, result_backend=backend, set_as_current=False)
    async with caller, anyio.create_task_group() as group:
        good = [await caller.send_task("tasks.good", [i]) for i in range(GOOD // 2)]
        doomed = await caller.send_task("tasks.poison")
        good += [await caller.send_task("tasks.good", [i]) for i in range(GOOD // 2, GOOD)]
        group.start_soon(supervise, tmp_path, crashes)
        with pytest.raises(TaskError, match="the process running this task died 2 times") as caught:
            await doomed.get(timeout=60)
        assert caught.value.type_name == "aqueue.exceptions.WorkerLostError"
        values = [await result.get(timeout=60) for result in good]
        group.cancel_scope.cancel()
    assert sorted(values) == list(range(GOOD))
    # The poison task's two runs: the first kills the worker; the second, recorded, kills a
    # quarantine process, or the worker again where it ran alone.
    assert crashes == ([1] if mode == "quarantine" else [1, 1])
    async with App("reader", broker=broker, set_as_current=False) as reader:
        letters = await (await reader.broker()).dead_letters("default")
    assert [letter.reason for letter in letters] == ["max-deliveries"]
    log = (tmp_path / "worker.log").read_text()
    if mode == "quarantine":
        assert "running it in a quarantine process" in log
        assert "killed its quarantine process (start 2 of at most 2)" in log
    else:
        assert "running it alone" in log
    if mode == "broken":
        assert "No quarantine process could start" in log
        assert "this app does not load in a quarantine process" in log
