"""`aqueue worker --workers N`: the supervisor, with real processes on Redis.

Each test runs `python -m aqueue worker tasks:app --workers N` in a temporary directory whose
`tasks.py` names the test's Redis URL (the shared server, under a key prefix of the test's
own), and synchronises on the lines the supervisor and its children print (`ready.`,
`started`, `retired`, `restarting`), never on a clock. `work` records `index pid` per run in
`ran.log`, which tells lost and duplicated tasks apart and which child ran what.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App
from aqueue.exceptions import ConfigurationError
from aqueue.sizes import parse_memory
from aqueue.worker.recycle import Recycle
from aqueue.worker.standby import STANDBY_FD, Assignment, standby_pipe, wait_for_assignment
from aqueue.worker.supervisor import child_name, describe_status
from tests.helpers.processes import STEP, Lines, child_env, spawn

pytestmark = pytest.mark.slow

TASKS = """
    import os
    import pathlib

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App(
        "tasks",
        broker={url!r},
        broker_heartbeat_interval=0.2,
        broker_heartbeat_timeout=1.0,
        # `crash` must kill the serving worker each time it is sent: not suspected (then its
        # first deliveries would wait for, and run in, a quarantine process).
        worker_suspect_window=0,
    )


    @app.task
    async def work(i, seconds):
        await anyio.sleep(seconds)  # simulated work
        fd = os.open(HERE / "ran.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"%d %d\\n" % (i, os.getpid()))
        finally:
            os.close(fd)
        return i


    @app.task
    async def crash():
        os._exit(3)  # a task that kills its worker (once it is serving)
"""


@pytest.fixture
def supervised(shared_url: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start `aqueue worker --workers ...` in tmp_path; every one is killed at the end."""
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=shared_url))
    started: list[Lines] = []

    async def start(*args: str, ready: int) -> Lines:
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", *args]
        supervisor = spawn(command, cwd=tmp_path, env=child_env())
        started.append(supervisor)
        await supervisor.wait_line("ready.", count=ready)
        return supervisor

    yield start
    for supervisor in started:
        try:  # warm, as an operator would (and coverage gets written)
            supervisor.stop(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            supervisor.stop(signal.SIGKILL)  # its children see their stdin close and stop
            for pid in child_pids(supervisor):
                _reap(pid)


def child_pids(supervisor: Lines) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \S+ \(pid (\d+)\)", supervisor.output)]


def _reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def runs(cwd: Path) -> list[tuple[int, int]]:
    """(task index, pid) for each completed run of `work`."""
    path = cwd / "ran.log"
    if not path.exists():
        return []
    return [
        (int(i), int(pid)) for i, pid in (line.split() for line in path.read_text().splitlines())
    ]


async def send(url: str, total: int, seconds: float) -> list[Any]:
    async with App("caller", broker=url, set_as_current=False) as caller:
        results = await caller.send_many("tasks.work", [((i, seconds), {}) for i in range(total)])
        with anyio.fail_after(120):
            return [await result.get(timeout=60) for result in results]


def assert_exactly_once(cwd: Path, total: int) -> None:
    indexes = sorted(i for i, _ in runs(cwd))
    assert indexes == list(range(total)), "lost or duplicated tasks"


# -- the processes -----------------------------------------------------------------------------


async def test_n_children_share_the_work_and_sigterm_drains(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    supervisor = await supervised("--workers", "2", "-c", "10", ready=2)
    assert "aqueue@" in supervisor.output
    assert "-1 ready." in supervisor.output
    assert await send(shared_url, 200, 0.01) == list(range(200))
    assert_exactly_once(tmp_path, 200)
    assert len({pid for _, pid in runs(tmp_path)}) == 2  # both children ran tasks

    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        results = await caller.send_many("tasks.work", [((1000 + i, 1.0), {}) for i in range(6)])
        await supervisor.wait_line("received", count=206)  # all six started somewhere
        assert supervisor.stop(signal.SIGTERM) == 0  # warm: they finish first
        assert [await r.get(timeout=STEP) for r in results] == [1000 + i for i in range(6)]
    assert supervisor.count("warm shutdown of 2 worker(s)") == 1
    assert supervisor.count("exited with status 0") == 2


async def test_a_child_killed_by_sigkill_is_restarted_and_nothing_is_lost(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    supervisor = await supervised("--workers", "2", "-c", "20", ready=2)
    total = 600
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        results = await caller.send_many("tasks.work", [((i, 0.02), {}) for i in range(total)])
        await supervisor.wait_line("succeeded in", count=100)
        victim = child_pids(supervisor)[0]
        os.kill(victim, signal.SIGKILL)
        await supervisor.wait_line("was killed by SIGKILL")
        await supervisor.wait_line("ready.", count=3)  # its replacement
        with anyio.fail_after(120):
            assert [await r.get(timeout=60) for r in results] == list(range(total))
    assert re.search(
        r"-1 \(pid \d+\) was killed by SIGKILL after [\d.]+ s; restarting in", supervisor.output
    )
    done = [i for i, _ in runs(tmp_path)]
    assert sorted(set(done)) == list(range(total))  # none lost
    assert len(done) - total <= 20  # at most what the victim had in flight ran twice


async def test_a_child_a_task_killed_restarts_without_backing_off(
    shared_url: str, supervised: Callable[..., Any]
) -> None:
    # It had said it was ready: a task killed it, not its start. Before, each death in a row
    # doubled the wait (0.25, 0.5, 1 s ... up to 30 s), as for an app that cannot start.
    supervisor = await supervised("--workers", "1", "-c", "5", ready=1)
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        for death in range(1, 4):
            await caller.send_task("tasks.crash")  # a new one each time: it kills the worker
            await supervisor.wait_line("exited with status 3 after", count=death)
            await supervisor.wait_line("ready.", count=death + 1)
    assert supervisor.count("exited with status 3 after") == 3
    assert supervisor.count("restarting in 0.25 s") == 3, supervisor.output


async def test_a_child_that_dies_before_it_is_ready_backs_off(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    supervisor = await supervised("--workers", "1", ready=1)
    # The app stops loading: each new child dies at start, and the waits double.
    (tmp_path / "tasks.py").write_text("raise SystemExit(4)\n")
    os.kill(child_pids(supervisor)[0], signal.SIGKILL)
    await supervisor.wait_line("restarting in 0.25 s")  # it was serving when it was killed
    await supervisor.wait_line("restarting in 0.50 s")
    await supervisor.wait_line("restarting in 1.00 s")
    assert supervisor.count("ready.") == 1


def standby_pids(supervisor: Lines) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \S+-standby \(pid (\d+)\)", supervisor.output)]


async def test_a_standby_takes_the_place_of_a_child_a_task_killed(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    # Loaded ahead of need: no restart wait and no process start between a death and the
    # next task; another standby is started behind it. Before, each death waited 0.25 s
    # and then a whole process start (0.3-0.8 s of imports).
    supervisor = await supervised("--workers", "1", "--standby", "1", "-c", "5", ready=1)
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        for death in range(1, 3):
            await supervisor.wait_line("-standby (pid", count=death)  # the one to promote
            waiting = standby_pids(supervisor)[-1]
            await caller.send_task("tasks.crash")
            await supervisor.wait_line(f"standby pid {waiting} takes its place")
            await supervisor.wait_line("-1 ready.", count=death + 1)
        assert await send(shared_url, 20, 0.0) == list(range(20))
    assert supervisor.count("exited with status 3 after") == 2
    assert "restarting in" not in supervisor.output
    assert {pid for _, pid in runs(tmp_path)} == {standby_pids(supervisor)[1]}
    assert supervisor.stop(signal.SIGTERM) == 0
    assert len(standby_pids(supervisor)) == 3  # the two promoted, and the last one
    assert "Traceback" not in supervisor.output, supervisor.output
    # The waiting standby was let go (its pipe closed): it exits 0 without connecting.
    assert re.search(
        rf"-standby \(pid {standby_pids(supervisor)[-1]}\) exited with status 0", supervisor.output
    )


async def test_a_promoted_standby_runs_the_beat_of_slot_one(
    shared_url: str, supervised: Callable[..., Any]
) -> None:
    supervisor = await supervised("--workers", "1", "--standby", "1", "--beat", ready=1)
    assert supervisor.count("aqueue beat tasks:app") == 1
    await supervisor.wait_line("-standby (pid")
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        await caller.send_task("tasks.crash")  # killed while serving (a SIGKILL could come
        await supervisor.wait_line("takes its place")  # between its "ready." and its byte)
    await supervisor.wait_line("-1 ready.", count=2)
    assert supervisor.count("aqueue beat tasks:app") == 2  # the standby's, now slot 1's


async def test_a_standby_that_cannot_load_backs_off_and_serving_goes_on(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    supervisor = await supervised("--workers", "1", "--standby", "1", ready=1)
    await supervisor.wait_line("-standby (pid")
    (tmp_path / "tasks.py").write_text("raise SystemExit(4)\n")  # new processes cannot load
    os.kill(standby_pids(supervisor)[0], signal.SIGKILL)
    await supervisor.wait_line("restarting in 0.25 s")
    await supervisor.wait_line("restarting in 0.50 s")  # the next one died loading: backs off
    assert supervisor.count("-standby (pid") >= 2
    assert supervisor.count("-1 ready.") == 1  # the serving child went on alone


async def test_sighup_reloads_without_losing_or_repeating_a_task(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    supervisor = await supervised("--workers", "2", "-c", "10", ready=2)
    total = 600
    async with App("caller", broker=shared_url, set_as_current=False) as caller:
        results = await caller.send_many("tasks.work", [((i, 0.01), {}) for i in range(total)])
        await supervisor.wait_line("succeeded in", count=100)
        first = set(child_pids(supervisor))
        supervisor.proc.send_signal(signal.SIGHUP)
        await supervisor.wait_line("ready.", count=4)  # the new generation
        with anyio.fail_after(120):
            assert [await r.get(timeout=60) for r in results] == list(range(total))
    await supervisor.wait_line("exited with status 0", count=2)  # the old ones, warm
    assert_exactly_once(tmp_path, total)
    pids = {pid for _, pid in runs(tmp_path)}
    assert pids & first
    assert pids - first


async def test_max_tasks_per_child_recycles_without_losing_a_task(
    shared_url: str, supervised: Callable[..., Any], tmp_path: Path
) -> None:
    supervisor = await supervised(
        "--workers", "1", "-c", "5", "--max-tasks-per-child", "25", ready=1
    )
    assert await send(shared_url, 100, 0.005) == list(range(100))
    assert_exactly_once(tmp_path, 100)
    assert supervisor.count("retiring (warm shutdown)") >= 3
    assert supervisor.count("retired; starting a replacement") >= 3
    assert len({pid for _, pid in runs(tmp_path)}) >= 4
    assert "Traceback" not in supervisor.output


async def test_children_stop_when_the_supervisor_is_killed(supervised: Callable[..., Any]) -> None:
    supervisor = await supervised("--workers", "2", ready=2)
    pids = child_pids(supervisor)
    supervisor.proc.send_signal(signal.SIGKILL)
    await supervisor.wait_line("stopped.", count=2)  # stdin closed: each warm-stops
    for pid in pids:
        _wait_gone(pid)


async def test_a_standby_stops_when_the_supervisor_is_killed(
    supervised: Callable[..., Any],
) -> None:
    supervisor = await supervised("--workers", "1", "--standby", "1", ready=1)
    await supervisor.wait_line("-standby (pid")
    pids = child_pids(supervisor)
    supervisor.proc.send_signal(signal.SIGKILL)
    for pid in pids:  # the worker warm-stops; the standby's pipe ended: it exits
        _wait_gone(pid)


def _wait_gone(pid: int) -> None:
    """Wait for a process that is not ours to reap to exit (a pidfd turns readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], STEP)
        assert readable, f"pid {pid} still runs"
    finally:
        os.close(fd)


# -- the parts ---------------------------------------------------------------------------------


def test_child_names() -> None:
    assert child_name("aqueue@host", 2) == "aqueue@host-2"
    assert child_name("w%i@host", 3) == "w3@host"


def test_a_standby_reads_its_assignment_from_its_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    readable, writable = os.pipe()
    monkeypatch.setenv(STANDBY_FD, str(readable))
    assert standby_pipe() == readable
    assert STANDBY_FD not in os.environ  # no process it starts sees it
    os.write(writable, Assignment("w@host-1", beat=True).encode())
    assert wait_for_assignment(readable) == Assignment("w@host-1", True)
    os.close(writable)
    for written in (b"", b"not json\n", b'{"beat": true}\n'):  # ended, garbage, no name
        readable, writable = os.pipe()
        os.write(writable, written)
        os.close(writable)
        assert wait_for_assignment(readable) is None
    with open(os.devnull) as stray:  # a variable that names no pipe of ours
        monkeypatch.setenv(STANDBY_FD, str(stray.fileno()))
        assert standby_pipe() is None
    monkeypatch.setenv(STANDBY_FD, "x")
    assert standby_pipe() is None


def test_preload_imports_the_drivers_and_leaves_errors_to_the_open() -> None:
    from aqueue import drivers

    drivers.preload("sqlite:///x.db", "sqlite:///x.db")
    assert "aqueue.drivers.sqlite.broker" in sys.modules
    drivers.preload("nosuchscheme://x", None)  # raises nothing: the open says it in one line


def test_exit_statuses_are_described() -> None:
    assert describe_status(0) == "exited with status 0"
    assert describe_status(-9) == "was killed by SIGKILL"


def test_memory_sizes() -> None:
    assert parse_memory("200000") == 200000  # KiB, as Celery's
    assert parse_memory("200MB") == 200 * 1024
    assert parse_memory("1.5GiB") == int(1.5 * 1024 * 1024)
    assert parse_memory(512) == 512
    with pytest.raises(ConfigurationError, match="not a memory size"):
        parse_memory("lots")


def test_recycle_counts_tasks_and_memory() -> None:
    by_count = Recycle(3, None)
    assert [by_count.after_task() is None for _ in range(3)] == [True, True, False]
    by_memory = Recycle(None, 1)  # 1 KiB: any process is past it
    assert "resident" in (by_memory.after_task() or "")
    assert not Recycle(None, None)


def test_the_settings_take_celery_names_and_units() -> None:
    from aqueue import Settings

    conf = Settings(worker_max_tasks_per_child=100, worker_max_memory_per_child="200MB")
    assert (conf.worker_max_tasks_per_child, conf.worker_max_memory_per_child) == (100, 204800)
    with pytest.raises(ConfigurationError, match="memory size"):
        Settings(worker_max_memory_per_child=1.5)


def test_worker_counts_and_limits_are_checked_on_the_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aqueue.cli import main

    for bad in (
        ["--workers", "0"],
        ["--workers", "many"],
        ["--max-memory-per-child", "lots"],
        ["--standby", "-1"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(["worker", "tasks:app", *bad])
        assert exited.value.code == 2
        assert "Traceback" not in capsys.readouterr().err
