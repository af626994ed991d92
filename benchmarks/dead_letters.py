"""What dead letters cost Redis: N refused messages of SIZE bytes, under each cap.

    python benchmarks/dead_letters.py [--url redis://127.0.0.1:6379/15] [--messages 200]
        [--size 275000] [--caps 0,16777216]

For each cap (0: the default, `broker_dead_letter_max_bytes` unset), it publishes N messages
naming a task no worker has (each carrying SIZE bytes of arguments), lets a burst worker refuse
them all (each is dead-lettered, `unknown-task`), then prints the entries the dead-letter stream
kept, what aqueue counts they hold, and `MEMORY USAGE` of the stream. Its keys live under a
prefix of its own, deleted at the end; nothing else on the server is touched.
"""

from __future__ import annotations

import argparse
import logging
import time
import uuid

import anyio
import redis.asyncio as aioredis

from aqueue import App, DeadLetterStats, OutgoingMessage, Worker
from aqueue.message import Envelope


async def run(url: str, messages: int, size: int, cap: int) -> None:
    prefix = f"deadbench{uuid.uuid4().hex[:8]}"
    settings = {"broker_dead_letter_max_bytes": cap} if cap else {}
    app = App("bench", broker=f"{url}?prefix={prefix}", set_as_current=False, **settings)
    client = aioredis.Redis.from_url(url)
    try:
        async with app:
            broker = await app.broker()
            payload = "x" * size
            for _ in range(messages):
                body = Envelope(id=uuid.uuid4().hex, task="bench.gone", args=[payload]).encode(
                    2 * size + 1024
                )
                await broker.publish([OutgoingMessage(id="m", queue="default", body=body)])
            started = time.perf_counter()
            await Worker(app, burst=True, concurrency=10).run()
            took = time.perf_counter() - started
            stream = f"{prefix}:{{default}}:dead"
            used = await client.memory_usage(stream, samples=0) or 0
            if hasattr(broker, "dead_letter_stats"):
                stats = await broker.dead_letter_stats("default")
            else:  # an aqueue from before the cap (to compare): the stream's length alone
                stats = DeadLetterStats(await client.xlen(stream), None, None)
            shown = f"{cap / 2**20:g} MiB" if cap else "default (64 MiB)"
            print(
                f"cap {shown:>16}: kept {stats.kept:>4} of {messages}, "
                f"counted {stats.bytes or 0:>12,} bytes, dropped {stats.dropped or 0:>4}, "
                f"MEMORY USAGE {used:>12,} bytes ({used / 2**20:.1f} MiB); refused in {took:.1f}s"
            )
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=275_000)
    parser.add_argument("--caps", default="0,16777216", help="bytes, comma-separated; 0: default")
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # the worker logs every refusal
    for cap in (int(c) for c in args.caps.split(",")):
        anyio.run(run, args.url, args.messages, args.size, cap)


if __name__ == "__main__":
    main()
