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
from aqueue.beat.scheduler import CLAIM_PREFIX, LAST_PREFIX
from aqueue.beat.schedules import every
from aqueue.cli import main
from tests.helpers.consuming import take_envelopes
from tests.helpers.drivers import SERVICES, driver_url, require

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


async def run_seconds(beats: list[Beat], clock: ManualClock, seconds: int) -> None:
    """Run the beats while the clock moves `seconds` whole seconds, each handled by all."""
    async with anyio.create_task_group() as group:
        for beat in beats:
            await group.start(beat.run)
        for _ in range(seconds):
            await clock.advance(1)
            await clock.sleepers(len(beats))
        group.cancel_scope.cancel()


async def test_three_beats_send_each_due_time_once(apps: Apps) -> None:
    beats = [Beat(apps(beat_schedule=TICK), clock=(clock := ManualClock(START))) for _ in "abc"]
    for beat in beats:
        beat.clock = clock
    await run_seconds(beats, clock, 10)
    assert await dues(beats[0].app) == [START + 0.5 + i for i in range(10)]
    assert sum(beat.sent for beat in beats) == 10


async def test_a_run_claimed_by_a_beat_killed_before_it_sent_is_taken_over(apps: Apps) -> None:
    """The claim of a beat killed between claim and send: the others send that run, once."""
    clock = ManualClock(START)
    beats = [Beat(apps(beat_schedule=TICK), clock=clock) for _ in "ab"]
    dead = (await apps().broker()).mailbox()  # a beat of its own: claims the run, sends nothing
    assert await dead.claim(f"{CLAIM_PREFIX}tick.{round((START + 0.5) * 1000)}", 10.0)
    await run_seconds(beats, clock, 3)
    assert await dues(beats[0].app) == [START + 0.5 + i for i in range(3)]
    assert sum(beat.sent for beat in beats) == 3


async def test_a_taken_over_run_is_sent_though_a_later_run_was_recorded(apps: Apps) -> None:
    """A later run recorded by another beat before the check is no proof the lost one went out.

    The run due at START + 0.5 is claimed by a beat that dies; before the survivor checks it,
    another beat sends and records the next run: the survivor must still send the first.
    """
    clock = ManualClock(START)
    beat = Beat(apps(beat_schedule=TICK), clock=clock)
    other = (await apps().broker()).mailbox()
    first, second = START + 0.5, START + 1.5
    assert await other.claim(f"{CLAIM_PREFIX}tick.{round(first * 1000)}", 10.0)
    async with anyio.create_task_group() as group:
        await group.start(beat.run)
        await clock.advance(1)  # the first run is due: its claim is lost, a check is planned
        await clock.sleepers(1)
        assert await other.claim(f"{CLAIM_PREFIX}tick.{round(second * 1000)}", 10.0)
        await other.put(LAST_PREFIX + "tick", codec.pack(second))  # the other sent the second
        await clock.advance(1)  # the check is due, and the second run
        await clock.sleepers(1)
        group.cancel_scope.cancel()
    assert await dues(beat.app) == [first]
    assert beat.sent == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("one", [START - 0.5]), ("all", None), ("none", [START - 0.5])],  # 0.5 s late: on time
)
async def test_runs_missed_while_no_beat_ran(
    apps: Apps, policy: str, expected: list[float] | None
) -> None:
    app = apps(beat_schedule=TICK, beat_catch_up=policy)
    mailbox = (await app.broker()).mailbox()

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


# -- schedules, errors, housekeeping, the CLI (no broker needed, or SQLite) ------------------


def test_dst_gap_is_the_library_s_to_handle() -> None:
    # 02:30 does not exist in Paris on 2024-03-31 (clocks jump from 02:00 to 03:00).
    paris = dt.timezone(dt.timedelta(hours=1))
    before = dt.datetime(2024, 3, 31, 1, 0, tzinfo=paris).timestamp()
    from zoneinfo import ZoneInfo

    due = crontab(minute=30, hour=2).next_after(before, ZoneInfo("Europe/Paris"))
    assert dt.datetime.fromtimestamp(due, dt.UTC) == dt.datetime(2024, 3, 31, 1, 0, tzinfo=dt.UTC)


def test_crontab_follows_the_time_zone() -> None:
    from zoneinfo import ZoneInfo

    midnight_utc = dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()
    due = crontab(minute=0, hour=3).next_after(midnight_utc, ZoneInfo("Asia/Tokyo"))
    assert dt.datetime.fromtimestamp(due, dt.UTC) == dt.datetime(2024, 1, 1, 18, tzinfo=dt.UTC)


def test_intervals_are_due_on_multiples_of_their_period() -> None:
    assert every(1).next_after(10.5, dt.UTC) == 11.0
    assert every(dt.timedelta(minutes=1)).next_after(60.0, dt.UTC) == 120.0
    assert str(crontab.from_string("*/5 * * * mon-fri")) == "crontab '*/5 * * * mon-fri'"


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (-1, "more than 0 seconds"),
        (crontab, "malformed crontab"),
        ("61 * * * *", "malformed crontab"),
        ("* * *", "five fields"),
        (object(), "a schedule is seconds"),
    ],
)
async def test_bad_entries_are_one_line_errors(schedule: Any, message: str) -> None:
    if schedule is crontab:
        with pytest.raises(ConfigurationError, match=message):
            crontab(minute="61")
        return
    app = App("tests", broker="memory://", set_as_current=False)
    app.conf.beat_schedule = {"bad": {"task": "shop.tick", "schedule": schedule}}
    with pytest.raises(ConfigurationError, match=message) as info:
        await Beat(app).load()
    assert "\n" not in str(info.value)


async def test_an_unknown_task_is_an_error_at_start() -> None:
    app = App("tests", broker="memory://", set_as_current=False, beat_schedule=TICK)
    with pytest.raises(NotRegistered, match=r"shop\.tick"):
        await Beat(app).load()


async def test_housekeeping_purges_expired_results_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    async with App("tests", broker=url, set_as_current=False) as app:
        backend = await app.result_backend()
        assert backend is not None
        await backend.store("old", "SUCCESS", b"x", 0.0)
        await backend.store("new", "SUCCESS", b"x", 60.0)
        clock = ManualClock(3600.0 * 1000 - 1)
        beat = Beat(app, clock=clock)
        assert "aqueue.purge-expired-results" in await beat.load()
        async with anyio.create_task_group() as group:
            await group.start(beat.run)
            await clock.advance(2)
            await clock.sleepers(1)
            group.cancel_scope.cancel()
        assert beat.sent == 1
        assert await backend.purge_expired() == 0  # the beat purged "old" already
        assert await backend.fetch("new") is not None
    off = App("tests", broker=url, set_as_current=False, beat_housekeeping=False)
    async with off:
        assert await Beat(off).load() == {}


PROJECT = """
from aqueue import App
app = App("tasks")
app.conf.beat_schedule = {"tick": {"task": "tasks.tick", "schedule": 1.0}}
@app.task
async def tick(*args):
    return None
"""


def test_cli_edits(
    chdir_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    (chdir_tmp / "tasks.py").write_text(PROJECT)
    monkeypatch.syspath_prepend(str(chdir_tmp))
    name = f"tasks_{uuid.uuid4().hex[:6]}"
    (chdir_tmp / f"{name}.py").write_text(PROJECT.replace('"tasks.tick"', f'"{name}.tick"'))
    app = f"{name}:app"
    assert main(["beat", app, "add", "five", f"{name}.tick", "*/5 * * * *", "--args", "[1]"]) == 0
    assert main(["beat", app, "disable", "tick"]) == 0
    assert main(["beat", app, "list"]) == 0
    out = capsys.readouterr().out
    assert "five: " in out
    assert "[runtime]" in out
    assert "tick: " in out
    assert "(disabled) [runtime (overrides settings)]" in out
    assert main(["beat", app, "remove", "five"]) == 0
    assert main(["beat", app, "reset", "tick"]) == 0
    capsys.readouterr()
    assert main(["beat", app, "list"]) == 0
    assert capsys.readouterr().out.strip() == f"tick: {name}.tick every 1s [settings]"
    assert main(["beat", app, "remove", "nope"]) == 2
    assert main(["beat", app, "add", "x", "tasks.nope", "1"]) == 2
    assert main(["beat", app, "add", "x", f"{name}.tick", "-3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3
    assert err.count("aqueue: error:") == 3
