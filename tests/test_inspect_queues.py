"""`Broker.queue_stats` on every driver, `app.control.queues()` / `aqueue inspect queues`,
and the runtime percentiles of `inspect stats` (`worker_runtime_stats`)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from aqueue import Worker
from aqueue.cli import main
from aqueue.worker.runtimes import percentile
from tests.helpers.drivers import MakeApp


async def test_queue_stats_count_waiting_delayed_and_dead(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    broker = await app.broker()
    await add.delay(1, 2)
    await add.delay(3, 4)
    await add.apply_async((5, 6), countdown=3600)
    before = await broker.queue_stats("default")
    assert (before.waiting, before.delayed, before.dead) == (2, 1, 0)
    assert before.running in (0, None)
    await app.send_task("nobody.knows")
    with anyio.fail_after(20):
        await Worker(app, burst=True).run()
    after = await broker.queue_stats("default")
    assert (after.waiting, after.delayed, after.dead) == (0, 1, 1)
    assert after.running in (0, None)
    empty = await broker.queue_stats("never-used")
    assert (empty.waiting, empty.delayed, empty.dead) == (0, 0, 0)
    await broker.purge("default")


async def test_control_queues_names_the_consumers_and_stats_has_percentiles(
    make_app: MakeApp,
) -> None:
    app = make_app(worker_runtime_stats=True)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, queues=["default", "other"], hostname="q@t").run)
        results = [await add.delay(i, i) for i in range(5)]
        for result in results:
            await result.get(timeout=10)
        await add.apply_async((0, 0), countdown=3600)
        # Naming the worker, the replies are gathered as soon as it answered.
        found = await app.control.queues(destination=["q@t"], timeout=10.0)
        stats = await app.control.inspect(destination=["q@t"], timeout=10.0).stats()
        worker.stop()
    assert found["default"]["consumers"] == 1
    assert found["default"]["workers"] == ["q@t"]
    assert found["default"]["delayed"] == 1
    assert found["other"]["waiting"] == 0
    runtimes = stats["q@t"]["runtimes"][add.name]
    assert runtimes["runs"] == 5
    assert 0 <= runtimes["p50"] <= runtimes["p90"] <= runtimes["p99"] <= runtimes["max"]
    await (await app.broker()).purge("default")


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.9), percentile(values, 0.99)) == (
        50.0,
        90.0,
        99.0,
    )
    assert percentile([3.0], 0.99) == 3.0


def test_aqueue_inspect_queues_prints_a_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "qmod_table.py").write_text(
        "from aqueue import App\n"
        f"app = App('qmod', broker='sqlite:///{tmp_path}/q.db', set_as_current=False)\n"
    )
    code = main(["inspect", "qmod_table:app", "queues", "-Q", "default,slow", "--timeout", "0.2"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["queue", "waiting", "delayed", "running", "dead", "consumers"]
    assert lines[1].split() == ["default", "0", "0", "0", "0", "0"]
    assert lines[2].split()[0] == "slow"
