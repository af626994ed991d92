"""`aqueue.worker.verdicts`: when the first deliveries held for a suspect's verdict go on.

The worker's use of it (a held first delivery runs in quarantine after its suspect killed a
child, or in the worker after it lived) is in `test_quarantine`.
"""

from __future__ import annotations

import anyio
import pytest

from aqueue.worker import verdicts
from aqueue.worker.verdicts import Verdicts


async def test_the_held_go_on_at_the_first_verdict() -> None:
    pending = Verdicts()
    first = pending.expect("tasks.x")
    assert pending.expect("tasks.x") is first  # two suspects of one task: one verdict
    assert pending.pending("tasks.x") is first
    assert pending.pending("tasks.y") is None
    went: list[str] = []
    async with anyio.create_task_group() as group:

        async def held(name: str) -> None:
            await first.wait()
            went.append(name)

        group.start_soon(held, "a")
        group.start_soon(held, "b")
        await anyio.wait_all_tasks_blocked()
        assert went == []
        assert first.held == 2
        pending.given("tasks.x")  # a suspect lived its grace in quarantine
    assert sorted(went) == ["a", "b"]
    assert not pending  # a later first delivery waits for nothing
    assert pending.expect("tasks.x") is not first  # a new suspect: a new verdict


async def test_suspects_that_never_run_give_no_verdict_until_the_last_goes() -> None:
    pending = Verdicts()
    verdict = pending.expect("tasks.x")
    pending.expect("tasks.x")
    verdict.withdraw()  # refused, revoked or settled already: no run, no verdict
    assert pending.pending("tasks.x") is verdict
    verdict.withdraw()
    assert pending.pending("tasks.x") is None
    with anyio.fail_after(1):
        await verdict.wait()  # given: it returns at once


async def test_a_late_verdict_of_an_old_suspect_leaves_a_new_one_pending() -> None:
    pending = Verdicts()
    old = pending.expect("tasks.x")
    old.give()
    new = pending.expect("tasks.x")
    old.give()  # the old suspect's run ends now: the new suspect's verdict still pends
    assert pending.pending("tasks.x") is new


async def test_no_first_delivery_waits_past_the_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(verdicts, "WAIT", 0.05)
    pending = Verdicts()
    verdict = pending.expect("tasks.x")
    with anyio.fail_after(5):
        await verdict.wait()  # no verdict comes: it goes on after WAIT
    assert not pending
    assert "Task tasks.x: no verdict on its redelivered message after 0.05 s" in caplog.text
