"""Retries: `self.retry`, `autoretry_for`, backoff, and the states a caller sees."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from aqueue import App, MaxRetriesExceeded, Retry, Worker, states
from aqueue.task import Task
from tests.helpers.drivers import MakeApp

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


async def burst(app: App) -> Worker:
    worker = Worker(app, burst=True)
    with anyio.fail_after(30):
        await worker.run()
    return worker


async def test_retry_runs_again_with_retries_counted(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[int] = []

    @app.task(bind=True)
    async def flaky(self: Task[Any, Any]) -> int:
        seen.append(self.request.retries)
        if self.request.retries < 2:
            self.retry(exc=ConnectionError("down"), countdown=0)
        return self.request.retries

    result = await flaky.delay()
    worker = await burst(app)
    assert await result.get(timeout=5) == 2
    assert seen == [0, 1, 2]
    assert worker.stats()["retried"] == 2


async def test_state_is_retry_while_waiting(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(bind=True)
    async def later(self: Task[Any, Any]) -> None:
        self.retry(exc=ValueError("not yet"), countdown=3600)

    result = await later.delay()
    await burst(app)  # runs once; the retry is an hour away
    assert await result.state() == states.RETRY
    assert not await result.ready()
    assert "ValueError: not yet" in (await result.traceback() or "")
    assert await (await app.broker()).purge("default") == 1


async def test_out_of_retries_fails_with_the_last_exception(make_app: MakeApp) -> None:
    app = make_app()
    attempts: list[int] = []

    @app.task(bind=True, max_retries=2)
    async def hopeless(self: Task[Any, Any]) -> None:
        attempts.append(self.request.retries)
        self.retry(exc=KeyError(f"attempt {self.request.retries}"), countdown=0)

    result = await hopeless.delay()
    await burst(app)
    assert attempts == [0, 1, 2]
    with pytest.raises(KeyError, match="attempt 2"):
        await result.get(timeout=5)
    assert await result.state() == states.FAILURE


async def test_out_of_retries_without_an_exception(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(bind=True, max_retries=0)
    def once(self: Task[Any, Any]) -> None:
        self.retry(countdown=0)

    result = await once.delay()
    await burst(app)
    with pytest.raises(Exception, match="gave up after 0 retries") as info:
        await result.get(timeout=5)
    assert type(info.value).__name__ == "TaskError"
    assert getattr(info.value, "type_name", "") == "aqueue.exceptions.MaxRetriesExceeded"


async def test_autoretry_for_listed_exceptions_only(make_app: MakeApp) -> None:
    app = make_app()
    calls: dict[str, int] = {"listed": 0, "other": 0}

    @app.task(autoretry_for=(ConnectionError,), max_retries=3, default_retry_delay=0)
    async def listed() -> str:
        calls["listed"] += 1
        if calls["listed"] < 3:
            raise ConnectionError("blip")
        return "ok"

    @app.task(autoretry_for=(ConnectionError,), default_retry_delay=0)
    async def other() -> None:
        calls["other"] += 1
        raise ValueError("not retried")

    first, second = await listed.delay(), await other.delay()
    await burst(app)
    assert await first.get(timeout=5) == "ok"
    assert calls == {"listed": 3, "other": 1}
    with pytest.raises(ValueError, match="not retried"):
        await second.get(timeout=5)


async def test_retry_keeps_arguments_and_queue(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(bind=True)
    async def echo(self: Task[Any, Any], value: Any, *, key: str) -> list[Any]:
        if not self.request.retries:
            self.retry(countdown=0)
        return [value, key, self.request.queue]

    result = await echo.apply_async(({"a": (1, 2)},), {"key": "k"}, queue="side")
    worker = Worker(app, burst=True, queues=["side"])
    with anyio.fail_after(30):
        await worker.run()
    assert await result.get(timeout=5) == [{"a": (1, 2)}, "k", "side"]


def test_retry_outside_a_worker_raises_the_exception() -> None:
    app = App("t", broker="memory://", set_as_current=False)

    @app.task(bind=True)
    def direct(self: Task[Any, Any]) -> None:
        self.retry(exc=OSError("direct"))

    with pytest.raises(OSError, match="direct"):
        direct()


def test_backoff_doubles_up_to_the_cap_and_jitters_below_it() -> None:
    app = App("t", broker="memory://", set_as_current=False)

    @app.task(retry_backoff=2, retry_backoff_max=10, retry_jitter=False)
    async def exact() -> None: ...

    @app.task(retry_backoff=True, retry_jitter=True)
    async def jittered() -> None: ...

    @app.task(default_retry_delay=7)
    async def flat() -> None: ...

    assert [exact.backoff(n) for n in range(5)] == [2, 4, 8, 10, 10]
    assert all(0 <= jittered.backoff(3) <= 8 for _ in range(50))
    assert flat.backoff(4) == 7


def test_retry_is_control_flow_carrying_its_countdown() -> None:
    retry = Retry(5, ValueError("x"))
    assert (retry.countdown, type(retry.exc)) == (5, ValueError)
    assert str(retry) == "retry in 5s: ValueError('x')"
    assert issubclass(MaxRetriesExceeded, Exception)


def test_unknown_task_option_names_the_closest() -> None:
    app = App("t", broker="memory://", set_as_current=False)
    with pytest.raises(
        ValueError, match="unknown task option 'max_retry'; did you mean 'max_retries'"
    ):
        app.task(max_retry=3)  # type: ignore[call-overload]
