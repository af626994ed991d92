"""The two child processes: `compare.py --worker JSON` and `compare.py --producer JSON`.

Each runs in the system's own environment, with that system's adapter (`comparing.peers`).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from comparing.common import FANOUT, Producer, Tally, chunks, run_on
from comparing.peers import SERVE, open_producer


def worker_main(cfg: dict[str, Any]) -> None:
    """`compare.py --worker JSON`: run one system's worker until killed."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    tally = Tally(cfg["target"], cfg.get("profile"))
    SERVE[cfg["system"]](cfg, tally)


def producer_main(job: dict[str, Any]) -> None:
    """`compare.py --producer JSON`: enqueue, or time round trips; print one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    outcome: dict[str, Any] = {}

    async def main() -> None:
        outcome.update(await produce(job))

    run_on(job["cfg"]["loop"], main)  # the producer runs on the loop its worker runs on
    print("@@bench " + json.dumps(outcome), flush=True)


async def produce(job: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(60):  # in this task: streaq's client must close where it opened
        producer = await open_producer(job["cfg"])
    try:
        if job["action"] == "enqueue":
            return {"rate": await enqueue(producer, job["kind"], job["n"], job["how"])}
        return await round_trips(producer, job["samples"], job["budget"])
    finally:
        await producer.aclose()


async def enqueue(producer: Producer, kind: str, n: int, how: str) -> float:
    """Send n tasks one call at a time, in bulk, or FANOUT calls at a time; tasks per second."""
    started = time.perf_counter()
    if how == "one":
        for _ in range(n):
            await producer.one(kind)
    elif how == "bulk" and producer.bulk is not None:
        await producer.bulk(kind, n)
    else:
        for size in chunks(n, FANOUT):
            await asyncio.gather(*(producer.one(kind) for _ in range(size)))
    return n / (time.perf_counter() - started)


async def round_trips(producer: Producer, samples: int, budget: float) -> dict[str, Any]:
    """Warm up, then time up to `samples` round trips (and at most `budget` seconds of them)."""
    deadline = time.monotonic() + 60
    while True:  # the worker is up once a round trip succeeds
        try:
            await asyncio.wait_for(producer.round_trip(), 10)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                return {"error": "timeout: no round trip succeeded in 60 s"}
    for _ in range(3):
        await asyncio.wait_for(producer.round_trip(), 35)
    producer.missed = 0
    times: list[float] = []
    budget_end = time.monotonic() + budget
    for _ in range(samples):
        started = time.perf_counter()
        try:
            await asyncio.wait_for(producer.round_trip(), 35)
        except TimeoutError:
            return {"error": f"timeout: round trip {len(times) + 1} took over 35 s"}
        times.append((time.perf_counter() - started) * 1000)
        if time.monotonic() > budget_end:
            break
    return {"samples": times, "missed": producer.missed}
