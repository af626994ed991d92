"""Time limits: soft ones raise inside the coroutine, hard ones cancel it or stop waiting."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.lowlevel
import pytest

from aqueue import App, SoftTimeLimitExceeded, TaskError, TimeLimitExceeded, Worker
from aqueue.limits import run_coroutine
from tests.helpers.drivers import MakeApp

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)

LIMIT = "aqueue.exceptions.TimeLimitExceeded"


async def burst(app: App) -> None:
    with anyio.fail_after(30):
        await Worker(app, burst=True).run()


async def test_soft_limit_raises_inside_and_lets_the_task_clean_up(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(soft_time_limit=0.05)
    async def careful() -> str:
        try:
            await anyio.sleep(30)  # simulated work, interrupted by the soft limit
        except SoftTimeLimitExceeded:
            await anyio.lowlevel.checkpoint()  # the clean-up may await: it is not cancelled
            return "cleaned up"
        return "finished"

    result = await careful.delay()
    await burst(app)
    assert await result.get(timeout=5) == "cleaned up"


async def test_hard_limit_cancels_and_fails_the_task(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(time_limit=0.05)
    async def stubborn() -> None:
        await anyio.Event().wait()

    result = await stubborn.delay()
    started = time.monotonic()
    await burst(app)
    assert time.monotonic() - started < 10
    with pytest.raises(TaskError, match="passed its time limit") as info:
        await result.get(timeout=5)
    assert info.value.type_name == LIMIT


async def test_a_coroutine_that_never_awaits_past_its_limit_fails(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(time_limit=0.05)
    async def crunch() -> str:
        time.sleep(0.3)  # CPU-bound work: nothing on the loop can interrupt it  # noqa: ASYNC251
        return "done"

    result = await crunch.delay()
    await burst(app)
    with pytest.raises(TaskError, match="could not be cancelled") as info:
        await result.get(timeout=5)
    assert info.value.type_name == LIMIT
    assert "passed its time limit (0.05s) by" in info.value.message


async def test_soft_then_hard(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[str] = []

    @app.task(soft_time_limit=0.02, time_limit=0.2)
    async def ignores_soft() -> None:
        try:
            await anyio.Event().wait()
        except SoftTimeLimitExceeded:
            seen.append("soft")
            await anyio.Event().wait()  # ignores it: the hard limit must still end it

    result = await ignores_soft.delay()
    await burst(app)
    assert seen == ["soft"]
    with pytest.raises(TaskError) as info:
        await result.get(timeout=5)
    assert info.value.type_name == LIMIT


async def test_default_limits_come_from_settings(make_app: MakeApp) -> None:
    app = make_app(task_time_limit=0.05)

    @app.task
    async def forever() -> None:
        await anyio.Event().wait()

    result = await forever.delay()
    await burst(app)
    with pytest.raises(TaskError) as info:
        await result.get(timeout=5)
    assert info.value.type_name == LIMIT


async def test_sync_task_past_its_limit_fails_and_frees_the_slot(make_app: MakeApp) -> None:
    app = make_app()
    release = threading.Event()

    @app.task(time_limit=0.05)
    def blocked() -> None:
        release.wait(30)

    result = await blocked.delay()
    await burst(app)  # the worker stops waiting, though the thread runs on
    with pytest.raises(TaskError, match="cannot be stopped") as info:
        await result.get(timeout=5)
    assert info.value.type_name == LIMIT
    release.set()


async def test_a_task_within_its_limits_is_untouched() -> None:
    async def quick() -> int:
        await anyio.lowlevel.checkpoint()
        return 7

    assert await run_coroutine(quick(), soft=10, hard=20, name="quick") == 7


async def test_outside_cancellation_is_not_mistaken_for_the_soft_limit() -> None:
    caught: list[type[BaseException]] = []

    async def waits() -> None:
        try:
            await anyio.Event().wait()
        except BaseException as exc:
            caught.append(type(exc))
            raise

    with anyio.move_on_after(0.05):
        await run_coroutine(waits(), soft=30, hard=None, name="waits")
    assert caught == [anyio.get_cancelled_exc_class()]


def test_time_limit_exceeded_is_a_timeout() -> None:
    assert issubclass(TimeLimitExceeded, TimeoutError)
