"""How exact is a global rate limit? N worker processes offered 4x the rate, on Redis.

    python benchmarks/rate_limit.py [--rate 50] [--seconds 60] [--workers 4] [--redis URL]

The tasks (a no-op that records its start time in a Redis list) carry `rate_limit`; the
script pre-enqueues 4x what the window admits, starts the workers, and reads the start times
with blocking pops until one falls past the window. It reports how many started in the window
against R*T, and the spacing of the starts (median and p99 gap, against 1/R). Celery's
`rate_limit` is per worker: N workers would admit N*R*T.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import redis.asyncio as aioredis

from aqueue import App

TASKS = """
    import time

    import redis.asyncio as aioredis

    from aqueue import App

    app = App("tasks", broker={url!r})
    client = None


    @app.task(rate_limit="{rate}/s", ignore_result=True)
    async def tick(n):
        global client
        client = client or aioredis.from_url({plain!r})
        await client.rpush({key!r}, repr(time.time()))
"""


def main(args: argparse.Namespace) -> None:
    prefix = f"aqueue-bench-{uuid.uuid4().hex[:8]}"
    url = f"{args.redis}?prefix={prefix}"
    key = f"{prefix}-starts"
    with tempfile.TemporaryDirectory() as folder:
        source = TASKS.format(url=url, plain=args.redis, rate=args.rate, key=key)
        Path(folder, "tasks.py").write_text(textwrap.dedent(source))
        asyncio.run(offer(url, int(4 * args.rate * args.seconds)))
        command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-c", "50"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        workers = [
            subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL)
            for _ in range(args.workers)
        ]
        try:
            starts = asyncio.run(measure(args.redis, key, args.seconds))
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGKILL)
                worker.wait()
            asyncio.run(clean(args.redis, prefix))
    report(args, starts)


async def offer(url: str, count: int) -> None:
    async with App("offer", broker=url, set_as_current=False) as producer:
        await producer.send_many("tasks.tick", [((n,), {}) for n in range(count)])


async def measure(redis_url: str, key: str, seconds: float) -> list[float]:
    # Its blocking pops wait up to 60 s: longer than redis-py 8's default socket timeout (5 s),
    # which a busy machine's workers can take to start.
    client = aioredis.from_url(redis_url, socket_timeout=90)
    try:
        return await collect(client, key, seconds)
    finally:
        await client.aclose()


async def clean(redis_url: str, prefix: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def collect(client: aioredis.Redis, key: str, seconds: float) -> list[float]:
    popped = await client.blpop([key], timeout=60)
    assert popped is not None, "no task started within 60 s"
    starts = [float(popped[1])]
    while starts[-1] <= starts[0] + seconds:
        popped = await client.blpop([key], timeout=60)
        assert popped is not None, "the workers stopped starting tasks"
        starts.append(float(popped[1]))
    return starts


def report(args: argparse.Namespace, starts: list[float]) -> None:
    window = args.seconds
    admitted = sum(1 for start in starts if start <= starts[0] + window)
    expected = args.rate * window
    inside = sorted(start for start in starts if start <= starts[0] + window)
    gaps = sorted(b - a for a, b in itertools.pairwise(inside))
    p99 = gaps[int(len(gaps) * 0.99)] if gaps else 0.0
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    print(f"{args.workers} workers, rate {args.rate}/s, offered 4x for {window:g} s\n")
    print("| admitted | R*T | admitted / R*T | median gap | p99 gap | 1/R |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {admitted} | {expected:g} | {admitted / expected:.2%} | "
        f"{statistics.median(gaps) * 1000:.1f} ms | {p99 * 1000:.1f} ms | "
        f"{1000 / args.rate:.1f} ms |"
    )
    print(f"\nA per-worker limit (Celery's) would have admitted about {args.workers * expected:g}.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    main(parser.parse_args())
