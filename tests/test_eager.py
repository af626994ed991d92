"""Running tasks in-process for tests: `apply()`, `task_always_eager`, `r.meta()`, and the
pytest plugin as a user's own test suite would load it (a pytest run in a subprocess)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, SerializationError, TaskError, Worker, states
from aqueue.eager import EagerResult


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App("tests", broker=f"sqlite:///{tmp_path / 'q.db'}", set_as_current=False)


async def test_apply_runs_through_the_runner_and_round_trips_the_codec(app: App) -> None:
    seen: list[Any] = []

    @app.task
    def echo(value: Any) -> Any:
        seen.append(value)
        return {"got": value}

    sent = {"a": [1, 2]}
    result = await echo.apply((sent,))
    assert isinstance(result, EagerResult)
    assert seen == [sent]
    assert seen[0] is not sent  # decoded from the message body, as a worker would
    got = await result.get(timeout=5)
    assert got == {"got": seen[0]}
    assert got["got"] is not seen[0]  # and the result from the stored bytes
    meta = await result.meta()
    assert meta.state == states.SUCCESS
    assert meta.date_done is not None
    assert meta.date_done.tzinfo is dt.UTC
    assert await result.date_done() == meta.date_done
    with pytest.raises(SerializationError):
        await echo.apply((object(),))
    with pytest.raises(TypeError):
        await echo.apply((1, 2))  # the task takes one argument
    await result.revoke()  # nothing to stop
    await result.forget()
    assert await result.state() == states.PENDING
    # Nothing was sent.
    worker = Worker(app, burst=True)
    await worker.run()
    assert worker.runner is not None
    assert worker.runner.succeeded == 0
    await app.close()


async def test_apply_retries_as_the_worker_does(app: App) -> None:
    runs: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> int:
        runs.append(self.request.retries)
        if len(runs) < 3:
            raise self.retry(countdown=3600)  # not waited for by apply()
        return len(runs)

    @app.task(autoretry_for=(ValueError,), max_retries=2, retry_backoff=True)
    def hopeless() -> None:
        raise ValueError("always")

    result = await flaky.apply()
    assert await result.get(timeout=5) == 3
    assert runs == [0, 1, 2]
    assert (await result.meta()).retries == 2
    failed = await hopeless.apply()
    with pytest.raises(ValueError, match="always"):
        await failed.get(timeout=5)
    meta = await failed.meta()
    assert meta.state == states.FAILURE
    assert isinstance(meta.result, ValueError)
    assert meta.traceback is not None
    assert "ValueError: always" in meta.traceback


async def test_apply_holds_time_limits(app: App) -> None:
    @app.task(time_limit=0.2)
    async def stuck() -> None:
        await anyio.Event().wait()  # never set: only the hard limit ends it

    result = await stuck.apply()
    with pytest.raises(TaskError) as raised:
        await result.get(timeout=5)
    assert raised.value.type_name == "aqueue.exceptions.TimeLimitExceeded"


def test_sync_apply(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.sync.apply((2, 3))
    assert result.get(timeout=5) == 5
    assert result.state == states.SUCCESS
    assert result.successful()
    assert result.date_done is not None
    app.sync.close()


async def test_task_always_eager_runs_at_once_through_the_codec(tmp_path: Path) -> None:
    app = App(
        "tests",
        broker=f"sqlite:///{tmp_path / 'q.db'}",
        task_always_eager=True,
        set_as_current=False,
    )

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    result = await add.delay(1, 2)
    assert isinstance(result, EagerResult)
    assert await result.get() == 3
    assert await (await add.apply_async((2, 2), countdown=60)).get() == 4
    assert [await r.get() for r in await add.delay_many([(1, 1), (2, 2)])] == [2, 4]
    with pytest.raises(SerializationError):
        await add.delay(object(), 1)  # type: ignore[arg-type]
    worker = Worker(app, burst=True)
    await worker.run()
    assert worker.runner is not None
    assert worker.runner.succeeded == 0  # nothing was sent
    await app.close()


async def test_meta_of_a_task_not_run_yet(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = await add.delay(1, 2)
    meta = await result.meta()
    assert (meta.state, meta.result, meta.traceback, meta.date_done) == (
        states.PENDING,
        None,
        None,
        None,
    )
    await Worker(app, burst=True).run()
    assert (await result.meta()).result == 3
    await app.close()


USER_TESTS = """

import pytest

from aqueue import App

app = App("plugged", broker="memory://")
ran = []


@app.task
def add(x: int, y: int) -> int:
    ran.append(x)
    return x + y


@app.task
async def fan_out(n: int) -> None:
    await add.delay_many([(i, i) for i in range(n)])


@pytest.fixture
def aqueue_app():
    return app


def test_results_come_back(aqueue_worker):
    assert add.sync.delay(2, 2).get(timeout=10) == 4


def test_join_waits_for_everything_queued(aqueue_worker):
    ran.clear()
    fan_out.sync.delay(50)
    aqueue_worker.join()
    assert sorted(ran) == list(range(50))
"""


def test_the_pytest_plugin_in_a_users_own_test_run(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    assert "2 passed" in process.stdout
