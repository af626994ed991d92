"""The database scheduler: `PeriodicTask` rows drive a beat, and an edit saved through the ORM
(as the admin saves it) reaches the running beat through the broker; on a clock the test moves."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from aqueue import App
from aqueue.beat import Beat, ManualClock
from tests.helpers.consuming import take_envelopes

START = 1_700_000_000.5


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    from django.core.management import call_command

    await anyio.to_thread.run_sync(
        lambda: call_command("migrate", "aqueue_beat", database="default", verbosity=0)
    )
    # Current: the model's signals tell the beats through the current app (as in a project).
    made = App("dbbeat", broker=f"sqlite:///{tmp_path / 'beat.db'}", beat_scheduler="django")
    yield made
    await made.close()  # and the I/O thread the signals used


async def test_rows_drive_a_beat_and_an_admin_edit_reaches_it(app: App) -> None:
    from aqueue.contrib.django.beat.models import PeriodicTask
    from aqueue.contrib.django.beat.source import DjangoSource

    once_at = dt.datetime.fromtimestamp(START + 1.75, dt.UTC)
    tick = await PeriodicTask.objects.acreate(name="tick", task="shop.tick", interval_seconds=1)
    await PeriodicTask.objects.acreate(
        name="once", task="shop.report", clocked_time=once_at, args=[1], kwargs={"k": "v"}
    )
    await PeriodicTask.objects.acreate(name="nightly", task="shop.report", crontab="0 3 * * *")
    await PeriodicTask.objects.acreate(name="broken", task="shop.tick")  # no schedule: skipped
    try:
        clock = ManualClock(START)
        beat = Beat(app, clock=clock)
        assert isinstance(beat.source, DjangoSource)
        async with anyio.create_task_group() as group:
            await group.start(beat.run)
            rows = {name for name in beat.entries if not name.startswith("aqueue.")}
            assert rows == {"tick", "once", "nightly"}  # and the built-in housekeeping
            for _ in range(3):
                await clock.advance(1)
                await clock.sleepers(1)
            tick.enabled = False
            await tick.asave()  # what the admin does: post_save tells the running beat
            with anyio.fail_after(10):
                await beat.reloaded(1)
            for _ in range(2):
                await clock.advance(1)
                await clock.sleepers(1)
            group.cancel_scope.cancel()
        sent = await take_envelopes(app)
        dues = sorted((e.headers["beat-entry"], e.headers["beat-due"]) for e in sent)
        assert dues == [
            ("once", START + 1.75),
            ("tick", START + 0.5),
            ("tick", START + 1.5),
            ("tick", START + 2.5),
        ]
        (once,) = [e for e in sent if e.headers["beat-entry"] == "once"]
        assert (once.task, once.args, once.kwargs) == ("shop.report", [1], {"k": "v"})
        await tick.arefresh_from_db()
        assert tick.total_run_count == 3
        assert tick.last_run_at == dt.datetime.fromtimestamp(START + 2.5, dt.UTC)
    finally:
        await PeriodicTask.objects.all().adelete()


def test_a_row_needs_exactly_one_schedule() -> None:
    from django.core.exceptions import ValidationError

    from aqueue.contrib.django.beat.models import PeriodicTask

    with pytest.raises(ValidationError, match="exactly one of"):
        PeriodicTask(name="x", task="t", interval_seconds=1, crontab="* * * * *").clean()
    with pytest.raises(ValidationError, match="kwargs must be a JSON object"):
        PeriodicTask(name="x", task="t", interval_seconds=1, kwargs=[1]).clean()
    PeriodicTask(name="x", task="t", crontab="*/5 * * * *").clean()


def test_the_admin_lists_periodic_tasks() -> None:
    from django.contrib import admin

    from aqueue.contrib.django.beat.models import PeriodicTask

    model_admin = admin.site._registry[PeriodicTask]
    assert "enabled" in model_admin.list_filter
    assert {"enable", "disable"} <= set(model_admin.actions)
