"""The chaos scenarios, each sized by its arguments: small in CI, full in benchmarks/chaos.py.

Each returns an `Outcome`: the ledger's report, the scenario's pass line and whether it held.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import anyio

from .harness import Outcome, Run, Settings, durations


async def kill_storm(
    directory: Path,
    tasks: int = 300,
    workers: int = 3,
    concurrency: int = 5,
    kills: int = 2,
    seed: int = 1,
) -> Outcome:
    """kill -9 a random worker `kills` times, spread over the run (by the ledger's count of
    finished tasks), each started again at once."""
    run = Run(directory)
    rng = random.Random(seed)
    try:
        url = await run.redis_broker()
        run.write_tasks(url)
        fleet = await run.workers(workers, concurrency)
        producer = run.producer(url)
        started = time.monotonic()
        ids = await run.publish(producer, durations(tasks, seed))
        for kill in range(kills):
            await run.drain((kill + 1) * len(ids) // (kills + 1), within=120)
            index = rng.randrange(workers)
            pid = fleet.pid(index)
            run.ledger.fault("kill -9", f"worker {index} pid {pid}")
            await fleet.kill(index)
            await fleet.start(index)
        await run.drain(len(ids), within=run.settings.lease + 120)
        seconds = time.monotonic() - started
        report = run.ledger.check()
        in_flight = kills * concurrency
        passed = report.ok and report.duplicated <= in_flight
        return Outcome(
            "kill -9 storm",
            "redis",
            tasks,
            f"{kills} x kill -9 of 1 of {workers} workers",
            report,
            seconds,
            passed,
            f"lost 0; duplicated <= in flight at the kills ({in_flight})",
        )
    finally:
        await run.close()


async def kill_after_claim(directory: Path, kills: int = 10, others: int = 20) -> Outcome:
    """`kills` tasks kill their worker right after the claim, before any work, once each."""
    run = Run(directory, Settings(lease=3.0, heartbeat=1.5))
    try:
        url = await run.redis_broker()
        run.write_tasks(url)
        fleet = await run.workers(2, 1)
        producer = run.producer(url)
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(fleet.supervise)
            ids = await run.publish(producer, [10] * kills, task="tasks.die_on_claim")
            ids += await run.publish(producer, [10] * others)
            await run.drain(len(ids), within=60 + kills * 10)
            group.cancel_scope.cancel()
        report = run.ledger.check()
        passed = report.ok and report.recovered == kills and fleet.restarts == kills
        return Outcome(
            "killed right after a claim",
            "redis",
            kills + others,
            f"{fleet.restarts} workers killed after a claim",
            report,
            time.monotonic() - started,
            passed,
            f"lost 0; each of the {kills} killed attempts recovered",
            {"worker restarts": fleet.restarts},
        )
    finally:
        await run.close()
