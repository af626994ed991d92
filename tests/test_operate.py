"""Operator commands against a real worker process on the SQLite default."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue.cli import main

pytestmark = pytest.mark.slow


async def aqueue(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `aqueue ARGV` in-process (in a thread: it runs its own event loop)."""
    code = await anyio.to_thread.run_sync(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_inspect_a_live_worker(
    project: Callable[..., Path], workers: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project()
    await workers("-n", "w1@test")
    code, out, _ = await aqueue(capsys, "inspect", "tasks:app", "ping", "-d", "w1@test")
    assert (code, out) == (0, "w1@test: pong\n")
    code, out, _ = await aqueue(capsys, "inspect", "tasks:app", "registered", "-d", "w1@test")
    assert code == 0
    assert '"tasks.add"' in out
    code, out, _ = await aqueue(capsys, "inspect", "tasks:app", "stats", "-d", "w1@test")
    assert code == 0
    assert '"hostname": "w1@test"' in out


async def test_inspect_active_shows_a_running_task(
    project: Callable[..., Path], workers: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = project()
    worker = await workers("-n", "w1@test")
    code, out, _ = await aqueue(capsys, "call", "tasks:app", "tasks.block", "--args", '["go-file"]')
    task_id = out.strip()
    assert code == 0
    await worker.wait_line(f"[{task_id}] received")
    code, out, _ = await aqueue(capsys, "inspect", "tasks:app", "active", "-d", "w1@test")
    assert code == 0
    assert task_id in out
    (root / "go-file").touch()
    await worker.wait_line(f"[{task_id}] succeeded")
    code, out, _ = await aqueue(capsys, "result", "tasks:app", task_id)
    assert (code, out) == (0, "state: SUCCESS\n1\n")


async def test_no_reply_is_one_line_and_exit_2(
    project: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project()
    code, out, err = await aqueue(
        capsys, "inspect", "tasks:app", "ping", "-d", "nobody@x", "--timeout", "0.2"
    )
    assert (code, out) == (2, "")
    assert err == "aqueue: error: no reply from nobody@x within 0.2s\n"
    code, _, err = await aqueue(capsys, "inspect", "tasks:app", "ping", "--timeout", "0.2")
    assert code == 2
    assert err.startswith("aqueue: error: no worker replied within 0.2s")


async def test_control_rate_limit_revoke_and_shutdown(
    project: Callable[..., Path], workers: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project()
    worker = await workers("-n", "w1@test")
    code, out, _ = await aqueue(
        capsys, "control", "tasks:app", "-d", "w1@test", "rate_limit", "tasks.add", "10/m"
    )
    assert (code, out) == (0, "w1@test: rate limit of tasks.add set to 10/m (local)\n")
    code, out, _ = await aqueue(
        capsys, "control", "tasks:app", "--timeout", "0.5", "revoke", "some-id"
    )
    assert (code, out) == (0, "w1@test: revoked some-id\n")
    # Named with -d: it returns once w1 answered, not after its (generous) timeout.
    started = time.monotonic()
    code, out, _ = await aqueue(
        capsys, "control", "tasks:app", "-d", "w1@test", "--timeout", "10", "revoke", "other-id"
    )
    assert (code, out) == (0, "w1@test: revoked other-id\n")
    assert time.monotonic() - started < 5
    code, _, _ = await aqueue(capsys, "control", "tasks:app", "-d", "w1@test", "shutdown")
    assert code == 0
    assert await worker.wait_exit() == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["control", "tasks:app", "rate_limit", "tasks.add", "10/x"], "'10/x' is not a rate"),
        (["control", "tasks:app", "rate_limit", "tasks.nope", "1/s"], "no task named 'tasks.nope'"),
        (["call", "tasks:app", "tasks.nope"], "no task named 'tasks.nope'"),
        (["call", "tasks:app", "tasks.add", "--args", "[4,"], "--args is not JSON"),
        (["call", "tasks:app", "tasks.add", "--args", "{}"], "--args must be a JSON list"),
        (["purge", "tasks:app"], "nothing purged; pass --force"),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(
    project: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    project()
    code, out, err = await aqueue(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("aqueue: error: ")
    assert message in err
    assert err.count("\n") == 1


async def test_call_then_purge(
    project: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project()
    for _ in range(3):
        code, out, _ = await aqueue(capsys, "call", "tasks:app", "tasks.add", "--args", "[1, 2]")
        assert code == 0
    code, out, _ = await aqueue(capsys, "result", "tasks:app", out.strip())
    assert (code, out) == (0, "state: PENDING\n")
    code, out, _ = await aqueue(capsys, "purge", "tasks:app", "--force")
    assert (code, out) == (0, "default: 3 message(s) deleted\n")


async def test_inspect_scheduled_lists_countdown_tasks_held_by_the_broker(
    project: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    project()
    argv = ["call", "tasks:app", "tasks.add", "--args", "[4, 5]", "--countdown", "3600"]
    code, out, _ = await aqueue(capsys, *argv)
    assert code == 0
    task_id = out.strip()
    code, out, _ = await aqueue(capsys, "inspect", "tasks:app", "scheduled", "--timeout", "0.2")
    assert code == 0
    assert "default (in the broker, not due yet): 1" in out
    assert task_id in out
    assert '"task": "tasks.add"' in out
    assert "no worker replied" in out
