"""A failover under load, as the Sentinel and Cluster tests run it: count what was lost.

`fail_over_under_load(producer, cwd, kill)` sends `tasks.work` (which appends `index pid time`
to `cwd/ran.log`) in a loop, calls `kill()` once 300 sends were confirmed (it kills a primary
and returns once the failover is done), goes on until 600 were confirmed after the kill, waits
for every confirmed result, and reports what the ledger shows.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from aqueue import App, BrokerError


async def fail_over_under_load(
    producer: App, cwd: Path, kill: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Run the failover; return confirmed, refused, producer/worker resume times, lost, twice."""
    confirmed: dict[int, Any] = {}
    refused: list[int] = []
    before, after = anyio.Event(), anyio.Event()
    killed_at: list[float] = []
    resumed_at: list[float] = []
    phases: dict[str, float] = {}

    async def produce() -> None:
        index = 0
        while not after.is_set():
            started = time.time()
            try:
                confirmed[index] = await producer.send_task("tasks.work", [index, 0.005])
                if killed_at and started > killed_at[0] and not resumed_at:
                    resumed_at.append(time.time())  # sent wholly after the kill
            except BrokerError:
                refused.append(index)
                await anyio.sleep(0.05)  # the producer's own pause before the next try
            index += 1
            if len(confirmed) >= 300:
                before.set()
            if resumed_at and len(confirmed) >= 600:
                after.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(produce)
        await before.wait()
        killed_at.append(time.time())
        await kill()
        phases["failover"] = time.time() - killed_at[0]
        with anyio.fail_after(60):
            await after.wait()
        phases["after"] = time.time() - killed_at[0]
    with anyio.fail_after(120):
        for result in confirmed.values():
            await result.get(timeout=60)
    phases["results"] = time.time() - killed_at[0]
    runs = [line.split() for line in (cwd / "ran.log").read_text().splitlines()]
    done = [int(index) for index, _, _ in runs]
    after_kill = [
        float(t) for index, _, t in runs if int(index) in confirmed and float(t) > resumed_at[0]
    ]
    return {
        "confirmed": len(confirmed),
        "refused": len(refused),
        "producer": resumed_at[0] - killed_at[0],
        "worker": min(after_kill) - killed_at[0],
        "lost": len(set(confirmed) - set(done)),
        "duplicated": len(done) - len(set(done)),
        "phases": phases,
    }
