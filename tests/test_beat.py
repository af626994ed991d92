"""Periodic tasks in one process, on a clock the test moves: no sleeping a minute.

Beats share a broker (each with an app of its own, as separate processes would); every due
time is recorded in the message headers (`beat-due`) and must be sent exactly once.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, ConfigurationError, NotRegistered, codec, crontab
from aqueue.beat import Beat, ManualClock
from aqueue.beat.scheduler import LAST_PREFIX
from aqueue.beat.schedules import every
from aqueue.cli import main

from .conftest import SERVICES, driver_url, require
from .consuming import take_envelopes

START = 1_700_000_000.5  # half a second past a whole second

SHARED = ["sqlite", *SERVICES]


@pytest.fixture(params=SHARED)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    driver: str = request.param
    await require(driver)
    made = driver_url(driver, tmp_path)
    yield made
    if driver in SERVICES:
        await SERVICES[driver].cleanup(made)


Apps = Callable[..., App]


@pytest.fixture
async def apps(url: str) -> AsyncIterator[Apps]:
    made: list[App] = []

    def make(**settings: Any) -> App:
        app = App("tests", broker=url, set_as_current=False, **settings)

        @app.task(name="shop.tick")
        async def tick(*args: Any) -> None:
            return None

        made.append(app)
        return app

    yield make
    for app in made:
        await app.close()


TICK = {"tick": {"task": "shop.tick", "schedule": 1.0}}


async def dues(app: App, entry: str = "tick") -> list[float]:
    envelopes = await take_envelopes(app)
    return sorted(e.headers["beat-due"] for e in envelopes if e.headers["beat-entry"] == entry)


async def dues_kept(app: App, entry: str) -> list[float]:
    """Like `dues`, but puts the other entries' messages back."""
    envelopes = await take_envelopes(app)
    others = [e for e in envelopes if e.headers["beat-entry"] != entry]
    for e in others:
        await app.send_task(e.task, e.args, e.kwargs, headers=e.headers)
    return sorted(e.headers["beat-due"] for e in envelopes if e.headers["beat-entry"] == entry)


async def test_three_beats_send_each_due_time_once(apps: Apps) -> None:
    beats = [Beat(apps(beat_schedule=TICK), clock=(clock := ManualClock(START))) for _ in "abc"]
    for beat in beats:
        beat.clock = clock
    async with anyio.create_task_group() as group:
        for beat in beats:
            await group.start(beat.run)
        for _ in range(10):
            await clock.advance(1)
            await clock.sleepers(3)
        group.cancel_scope.cancel()
    assert await dues(beats[0].app) == [START + 0.5 + i for i in range(10)]
    assert sum(beat.sent for beat in beats) == 10


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("one", [START - 0.5]), ("all", None), ("none", [START - 0.5])],  # 0.5 s late: on time
)
async def test_runs_missed_while_no_beat_ran(
    apps: Apps, policy: str, expected: list[float] | None
) -> None:
    app = apps(beat_schedule=TICK, beat_catch_up=policy)
    mailbox = (await app.connection()).mailbox()
    from aqueue import codec

    await mailbox.put(LAST_PREFIX + "tick", codec.pack(START - 10.5))  # 10 runs ago
    clock = ManualClock(START)
    beat = Beat(app, clock=clock)
    async with anyio.create_task_group() as group:
        await group.start(beat.run)
        await clock.sleepers(1)
        group.cancel_scope.cancel()
    missed = [START - 9.5 + i for i in range(10)]
    assert await dues(app) == (missed if expected is None else expected)


async def test_runtime_edits_reach_a_running_beat(apps: Apps) -> None:
    app, editor = apps(beat_schedule=TICK), apps(beat_schedule=TICK)
    clock = ManualClock(START)
    beat = Beat(app, clock=clock)
    async with anyio.create_task_group() as group:
        await group.start(beat.run)
        await editor.beat.add("fast", "shop.tick", 0.5, args=[7])
        await beat.reloaded(1)
        await editor.beat.disable("tick")
        await beat.reloaded(2)
        for _ in range(4):
            await clock.advance(0.5)
            await clock.sleepers(1)
        await editor.beat.remove("fast")
        await beat.reloaded(3)
        await editor.beat.enable("tick")
        await beat.reloaded(4)
        await clock.advance(1)
        await clock.sleepers(1)
        group.cancel_scope.cancel()
    assert await dues_kept(app, "fast") == [START + 0.5 * i for i in range(1, 5)]
    tick = await take_envelopes(app)  # what is left: tick's one run since enabled again
    assert [e.headers["beat-due"] for e in tick] == [START + 2.5]
    listed = {entry.name: entry.source for entry in await editor.beat.list()}
    assert listed == {"tick": "runtime (overrides settings)"}


async def test_crontab_in_a_time_zone_on_a_moved_clock(apps: Apps) -> None:
    every_quarter = {"q": {"task": "shop.tick", "schedule": crontab(minute="*/15", hour="9")}}
    app = apps(beat_schedule=every_quarter, timezone="America/New_York")
    start = dt.datetime(2024, 7, 1, 8, 50, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    clock = ManualClock(start.timestamp())
    beat = Beat(app, clock=clock)
    async with anyio.create_task_group() as group:
        await group.start(beat.run)
        for _ in range(24):  # two hours, five minutes at a time
            await clock.advance(300)
            await clock.sleepers(1)
        group.cancel_scope.cancel()
    times = [dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M") for t in await dues(app, "q")]
    assert times == ["13:00", "13:15", "13:30", "13:45"]  # 9:xx in New York, EDT
