"""The garbage collector's settings in a worker process (`aqueue.worker.gc_tuning`)."""

from __future__ import annotations

import gc

import anyio
import pytest

from aqueue import App, Worker
from aqueue.worker.gc_tuning import YOUNG, tuned_for_worker

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


def test_the_heap_is_frozen_and_the_young_collected_less_often_then_put_back() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with tuned_for_worker():
        assert gc.get_threshold() == (max(YOUNG, before[0]), *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_heap_the_process_froze_itself_stays_frozen() -> None:
    before = gc.get_threshold()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with tuned_for_worker():
            assert gc.get_threshold()[0] == max(YOUNG, before[0])
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_turned_off_it_changes_nothing() -> None:
    before = gc.get_threshold()
    with tuned_for_worker(enabled=False):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("tune", [True, False])
async def test_serve_tunes_the_collector_while_it_runs_and_run_never(tune: bool) -> None:
    app = App("gc", broker="memory://", backend=False, set_as_current=False)
    app.conf.worker_tune_gc = tune
    before = gc.get_threshold()
    seen: list[tuple[int, bool]] = []
    worker = Worker(app, concurrency=1)

    @app.task
    async def look() -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count() > 0))
        worker.stop()

    async with app:
        await look.delay()
        with anyio.fail_after(10):
            await worker.serve()
        await look.delay()
        with anyio.fail_after(10):
            await Worker(app, concurrency=1, burst=True).run()
    tuned = (max(YOUNG, before[0]), True)
    assert seen == [tuned if tune else (before[0], False), (before[0], False)]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
