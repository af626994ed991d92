"""Real processes on the SQLite default: producer, worker and caller apart, and no server.

Every worker here is `python -m aqueue worker tasks:app` in its own process, started in a
temporary directory where `tasks.py` and the default `aqueue.db` live. The tests synchronise on
what the worker logs (`ready.`, `received`, `warm shutdown`) and on files they create for the
tasks to see, never on a clock.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, OutgoingMessage, TaskError
from tests.helpers.processes import STEP, child_env
from tests.helpers.worker_project import PRODUCER

pytestmark = pytest.mark.slow


@pytest.fixture
async def caller(project: Callable[..., Path]) -> AsyncIterator[App]:
    """The test process's own app: a third process, on the same SQLite default."""
    async with App("caller", set_as_current=False) as app:
        yield app


async def test_producer_worker_and_caller_are_three_processes(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers()
    produced = await anyio.run_process(
        [sys.executable, "-c", PRODUCER], cwd=cwd, env=child_env(), check=False
    )
    assert produced.returncode == 0, produced.stderr.decode()
    add_id, mul_id = produced.stdout.decode().split()

    assert await caller.AsyncResult(add_id).get(timeout=STEP) == 8
    assert await caller.AsyncResult(mul_id).get(timeout=STEP) == 42
    assert await caller.AsyncResult(add_id).state() == "SUCCESS"

    # The banner on stdout; Celery's log lines on stderr.
    assert "  . tasks.add" in worker.stdout
    assert ".> transport:   sqlite:///aqueue.db" in worker.stdout
    await worker.wait_line(f"Task tasks.add[{add_id}] received")
    (done,) = await worker.wait_line(f"Task tasks.add[{add_id}] succeeded in ")
    assert done.endswith("s: 8")
    (done,) = await worker.wait_line(f"Task tasks.mul[{mul_id}] succeeded in ")
    assert done.endswith("s: 42")
    assert (cwd / "aqueue.db").exists()

    # The caller can send by name too, without the task's code.
    again = await caller.send_task("tasks.add", [20, 22])
    assert await again.get(timeout=STEP) == 42

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
    await worker.wait_line("stopped.")


async def test_kill_9_mid_task_loses_nothing(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project(visibility=1.0)
    first = await workers()
    result = await caller.send_task("tasks.block", ["go"])
    await first.wait_line(f"Task tasks.block[{result.id}] received")

    first.signal(signal.SIGKILL)
    assert await first.wait_exit() == -signal.SIGKILL
    (cwd / "go").touch()  # the task finishes, the next time it runs

    # A fresh worker claims the message once the dead worker's lease (1 s) runs out. It is a
    # serving worker, not --burst: a burst worker would leave at once, seeing a leased message.
    second = await workers()
    assert await result.get(timeout=STEP) == 2  # the second delivery of the same message
    await second.wait_line(f"Task tasks.block[{result.id}] succeeded in ")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit() == 0

    broker = await caller.broker()
    assert await broker.dead_letters("default") == []
    assert pending_messages(cwd) == 0


async def test_sigint_lets_a_running_task_finish_within_the_timeout(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers("--shutdown-timeout", "60")
    result = await caller.send_task("tasks.block", ["go"])
    await worker.wait_line(f"Task tasks.block[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT: warm shutdown")
    await worker.wait_line("Waiting up to 60.0s for 1 running task(s)")
    assert worker.proc.poll() is None  # still finishing its task
    (cwd / "go").touch()

    assert await worker.wait_exit() == 0
    assert await result.get(timeout=STEP) == 1
    assert await result.state() == "SUCCESS"
    assert "interrupted by shutdown" not in worker.output
    assert pending_messages(cwd) == 0


async def test_sigint_past_the_timeout_returns_the_message_at_once(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project(visibility=60.0)
    worker = await workers("--shutdown-timeout", "0.5")
    result = await caller.send_task("tasks.block", ["go"])
    await worker.wait_line(f"Task tasks.block[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT: warm shutdown")
    assert await worker.wait_exit() == 0
    await worker.wait_line(f"Task tasks.block[{result.id}] interrupted by shutdown")
    assert await result.state() == "PENDING"

    # The message is back now, not when its 60 s lease would have run out: a burst worker,
    # which only takes ready messages, runs it, well within the lease.
    (cwd / "go").touch()
    with anyio.fail_after(STEP):  # STEP is half the visibility timeout
        burst = await workers("--burst", ready=False)
        assert await burst.wait_exit() == 0
        # Delivery 1 again: a shutdown is no crash, the interrupted delivery is not counted.
        assert await result.get(timeout=1) == 1
    await burst.wait_line(f"Task tasks.block[{result.id}] succeeded in ")
    assert pending_messages(cwd) == 0


async def test_sigint_past_the_timeout_does_not_wait_for_a_blocked_thread(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    """A plain def task cannot be cancelled: the worker abandons its thread and still exits."""
    cwd = project()
    worker = await workers("--shutdown-timeout", "0.5")
    result = await caller.send_task("tasks.block_sync", ["go"])
    await worker.wait_line(f"Task tasks.block_sync[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line(f"Task tasks.block_sync[{result.id}] interrupted by shutdown")
    await worker.wait_line("stopped.")
    assert await worker.wait_exit(within=10) == 0  # the thread is still blocked, and abandoned

    (cwd / "go").touch()
    burst = await workers("--burst", ready=False)
    assert await burst.wait_exit() == 0
    assert await result.get(timeout=1) == "done"


async def test_second_sigint_stops_at_once(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers("--shutdown-timeout", "60")
    result = await caller.send_task("tasks.block", ["go"])
    await worker.wait_line(f"Task tasks.block[{result.id}] received")

    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT: warm shutdown")
    worker.signal(signal.SIGINT)
    await worker.wait_line("SIGINT again: stopping now")
    assert await worker.wait_exit(within=10) == 0  # not the 60 s grace period
    await worker.wait_line(f"Task tasks.block[{result.id}] interrupted by shutdown")

    # And the message went back: it runs to completion on the next worker.
    (cwd / "go").touch()
    burst = await workers("--burst", ready=False)
    assert await burst.wait_exit() == 0
    assert await result.get(timeout=1) == 1  # as it was: not counted (no crash)


async def test_refused_messages_are_dead_lettered_and_the_worker_goes_on(
    project: Callable[..., Path], workers: Callable[..., Any], caller: App
) -> None:
    cwd = project()
    worker = await workers()
    broker = await caller.broker()

    missing = await caller.send_task("nope.missing", [1, 2])
    await broker.publish(
        [OutgoingMessage(id="garbage-1", queue="default", body=b"\xc1 this is not msgpack")]
    )
    wrong_args = await caller.send_task("tasks.add", [1])
    good = await caller.send_task("tasks.add", [4, 4])

    with pytest.raises(TaskError) as raised:
        await missing.get(timeout=STEP)
    assert "nope.missing" in str(raised.value)
    assert "NotRegistered" in raised.value.type_name
    with pytest.raises(TypeError, match="missing a required argument"):
        await wrong_args.get(timeout=STEP)
    assert await good.get(timeout=STEP) == 8
    assert worker.proc.poll() is None  # it carried on

    # Still taking work after refusing.
    later = await caller.send_task("tasks.mul", [3, 3])
    assert await later.get(timeout=STEP) == 9

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0  # every delivery settled before it exits
    letters = await broker.dead_letters("default")
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == ["bad-arguments", "undecodable", "unknown-task"]
    by_reason = {letter.reason: letter for letter in letters}
    assert "nope.missing" in by_reason["unknown-task"].detail
    assert by_reason["undecodable"].body == b"\xc1 this is not msgpack"
    assert by_reason["bad-arguments"].detail.startswith("tasks.add:")
    assert len([line for line in worker.lines if "Refused message" in line]) == 3
    assert pending_messages(cwd) == 0


def pending_messages(cwd: Path) -> int:
    """Messages still in the queue table of the SQLite default in `cwd`."""
    with sqlite3.connect(cwd / "aqueue.db") as db:
        (count,) = db.execute("SELECT count(*) FROM aqueue_messages").fetchone()
    db.close()
    return int(count)
