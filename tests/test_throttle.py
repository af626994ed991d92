"""Rate limits and per-task concurrency: booked, held outside the slots, changed at runtime."""

from __future__ import annotations

import itertools
import time
from typing import Any

import anyio
import pytest

from aqueue import App, ConfigurationError, Worker
from aqueue.throttle import LocalRateLimiter, LocalSemaphore, parse_rate
from tests.helpers.drivers import MakeApp

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("10/s", 10.0),
        ("10/m", 10 / 60),
        ("36/h", 0.01),
        ("2.5/s", 2.5),
        ("5", 5.0),
        (3, 3.0),
        (" 1 / m ", 1 / 60),
        (None, None),
        ("0", None),
        (0, None),
    ],
)
def test_parse_rate(text: Any, per_second: float | None) -> None:
    assert parse_rate(text) == pytest.approx(per_second) if per_second else parse_rate(text) is None


@pytest.mark.parametrize(
    "text",
    [
        *("10/x", "ten/s", "", "/s", "-1/s", True, "1/s/m"),
        *(float("nan"), float("inf"), -float("inf"), "9" * 400, "nan/s", [1], {"r": 1}, b"10/s"),
    ],
)
def test_malformed_rates_are_one_line_errors(text: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_rate(text)
    assert "\n" not in str(info.value)


async def test_local_limiter_rescales_its_backlog_when_the_rate_changes() -> None:
    limiter = LocalRateLimiter()
    for _ in range(3):
        await limiter.reserve("k", rate=1 / 3600)  # two starts booked an hour apart
    assert await limiter.reserve("k", rate=100) < 0.1  # the backlog shrinks to 1/100 s steps


def test_bad_task_options_fail_where_they_are_written() -> None:
    app = App("t", broker="memory://", set_as_current=False)
    with pytest.raises(ConfigurationError, match="is not a rate"):
        app.task(rate_limit="10/x")
    with pytest.raises(ConfigurationError, match="concurrency must be"):
        app.task(concurrency=0)


async def test_local_limiter_spaces_starts_and_honours_burst() -> None:
    limiter = LocalRateLimiter()
    waits = [await limiter.reserve("k", rate=10) for _ in range(4)]
    assert waits[0] == pytest.approx(0, abs=0.01)
    assert [b - a for a, b in itertools.pairwise(waits)] == pytest.approx([0.1] * 3, abs=0.01)
    burst = [await limiter.reserve("b", rate=10, burst=3) for _ in range(4)]
    assert burst[:3] == pytest.approx([0, 0, 0], abs=0.01)
    assert burst[3] == pytest.approx(0.1, abs=0.01)


async def test_local_semaphore_counts_and_wakes() -> None:
    semaphore = LocalSemaphore()
    first = await semaphore.acquire("k", 1, 30)
    assert first is not None
    assert await semaphore.acquire("k", 1, 30) is None
    async with anyio.create_task_group() as group:
        group.start_soon(semaphore.wait, "k", 30)
        await anyio.wait_all_tasks_blocked()
        await semaphore.release("k", first)
    assert await semaphore.acquire("k", 1, 30) is not None


async def test_a_rate_limited_task_leaves_the_slots_to_others(make_app: MakeApp) -> None:
    # Timing is the point of a rate limit: the limited task may start at most 5 times a
    # second, so its 6 runs take at least 1 s, while 40 free tasks need no wait at all (at
    # 20/s, 0.25 s was too short for 40 round trips to RabbitMQ on a loaded machine).
    # The worker has 2 slots: if held tasks kept them, the free tasks would queue behind.
    app = make_app()
    limited_starts: list[float] = []
    free_done: list[float] = []

    @app.task(rate_limit="5/s")
    async def limited() -> None:
        limited_starts.append(time.monotonic())

    @app.task
    async def free() -> None:
        free_done.append(time.monotonic())

    for _ in range(6):
        await limited.delay()
    for _ in range(40):
        await free.delay()
    with anyio.fail_after(30):
        await Worker(app, burst=True, concurrency=2).run()  # burst waits for held tasks too
    assert len(limited_starts) == 6
    assert len(free_done) == 40
    # Starts are booked 1/5 s apart; each waits on its own timer, so one late wake-up can
    # shorten the next gap, but 6 starts can never fit in less than 5 intervals (20 ms slack
    # for timers and, on Redis, the booking's round trip).
    assert limited_starts[-1] - limited_starts[0] >= 5 * 0.2 - 0.02
    assert max(free_done) < limited_starts[-1]  # the free tasks did not wait for the limited


async def test_concurrency_limit_holds_the_rest(make_app: MakeApp) -> None:
    app = make_app()
    running = 0
    peak = 0
    free_ran = anyio.Event()
    release = anyio.Event()

    @app.task(concurrency=1)
    async def single(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return n

    @app.task
    async def free() -> None:
        free_ran.set()

    results = [await single.delay(n) for n in range(3)]
    await free.delay()
    async with anyio.create_task_group() as group:
        # Two slots: `free` can only run in the slot the held ones left, after both of them
        # (whatever a Redis worker claims ahead of its slots).
        worker: Worker = await group.start(Worker(app, concurrency=2).run)
        with anyio.fail_after(10):
            await free_ran.wait()  # the held ones left their slots to it
        await anyio.wait_all_tasks_blocked()
        assert len(worker.held()) == 2
        assert worker.slots.held == 2  # held outside the slots (free's may still be settling)
        release.set()
        assert [await r.get(timeout=10) for r in results] == [0, 1, 2]
        worker.stop()
    assert peak == 1


async def test_held_tasks_go_back_at_shutdown(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(rate_limit="1/h")
    async def rare() -> None: ...

    await rare.delay()
    await rare.delay()  # booked an hour away: held
    async with anyio.create_task_group() as group:
        worker: Worker = await group.start(Worker(app).run)
        with anyio.fail_after(10):
            while not worker.held():
                await anyio.wait_all_tasks_blocked()
        worker.stop()
    assert await (await app.broker()).purge("default") == 1


async def test_runtime_override_and_annotations(make_app: MakeApp) -> None:
    app = make_app(task_annotations={"*": {"rate_limit": "1/h"}, "tests.plain": {"time_limit": 5}})

    @app.task(name="tests.plain")
    async def plain() -> None: ...

    assert plain.options.rate_limit == "1/h"
    assert plain.options.time_limit == 5
    assert plain.declared.rate_limit is None
    app.conf.task_annotations = {"tests.plain": {"max_retry": 1}}
    with pytest.raises(ConfigurationError, match="did you mean 'max_retries'"):
        plain.options  # noqa: B018 - the property applies the annotations
    app.conf.task_annotations = None
    async with anyio.create_task_group() as group:
        worker: Worker = await group.start(Worker(app).run)
        expected = "global" if app.broker_url.startswith("redis") else "local"
        assert worker.set_rate_limit(plain.name, "1/h") == expected
        assert worker.admission is not None
        assert worker.admission.rate_of(plain) == pytest.approx(1 / 3600)
        worker.set_rate_limit(plain.name, None)
        assert worker.admission.rate_of(plain) is None
        worker.stop()


async def test_held_tasks_are_capped(make_app: MakeApp) -> None:
    app = make_app(worker_held_limit=2)

    @app.task(rate_limit="1/h")
    async def rare() -> None: ...

    for _ in range(8):
        await rare.delay()
    async with anyio.create_task_group() as group:
        worker: Worker = await group.start(Worker(app, concurrency=2).run)
        with anyio.fail_after(10):
            while len(worker.held()) < 2:
                await anyio.wait_all_tasks_blocked()
        await anyio.wait_all_tasks_blocked()
        held = len(worker.held())
        # At the cap the worker takes nothing more; a fetch already under way may add at most
        # one batch (the credit it was given, here 2) beyond it.
        assert 2 <= held <= 2 + 2
        worker.stop()
    # The first ran at once; the held ones came back at shutdown, the rest were never taken.
    assert await (await app.broker()).purge("default") == 8 - 1
